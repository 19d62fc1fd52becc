"""Regions in 3D Slicer: region files become segments on their scan's grid, and segments get the
command line's region statistics (vBMD, BV/TV, TMD), digit for digit.

* **A dropped region** (:func:`load_dropped_region`, the file reader's first step): a GOBJ file or a
  char mask AIM is placed by position (:func:`~ScancoUnitsLib.formats.regions.read_region` with
  ``like=`` the scan's header) on a *loaded scan*: a scalar volume node a ScancoUnits load made (it
  carries ``ScancoUnits.SourcePath`` and ``ScancoUnits.Quantity``; masks are not scans). When several
  scans fit (same element size, overlap), the most recently loaded one wins (the last in the scene).
  When none fits, a GOBJ is refused in one line (no scan loaded: "load its scan first"; else why the
  newest scan refused it) and a char mask AIM is left to the ordinary load (its own mask nodes).
* **Where it goes**: one segmentation node per scan, ``<scan stem> regions`` (attribute
  ``ScancoUnits.RegionsOf`` = the scan's path), one segment per file named after the file's stem,
  without the scan's stem in front (``C1_TRAB_MASK.AIM`` on ``C1.AIM``: ``TRAB_MASK``); a name already
  there gets ``_2``, ``_3``. The segment's binary labelmap is its own uint8 array (issue 21: two nodes
  never share voxel memory) covering the region's box, on the scan's own full-resolution grid (the
  segmentation's reference geometry), even when the scan was loaded subsampled.
* **Statistics** (:func:`segment_statistics`): each segment's *current* binary labelmap
  (``vtkMRMLSegmentationNode::GetBinaryLabelmapRepresentation``: 0/1 of its label value over its own
  extent, edits included) is placed on the scan's grid by the Save mask as AIM rule
  (:func:`~ScancoUnitsLib.slicer.mask_aim.node_grid_offset`), cropped to the scan, and handed as a
  :class:`~ScancoUnitsLib.formats.regions.PlacedRegion` to
  :func:`~ScancoUnitsLib.pipeline.region_measures.region_statistics`, which reads the native values from
  the scan's file. ``outside_voxels`` = segment voxels outside the scan + the voxels its file had outside
  the scan when it was dropped (a segment tag). :func:`statistics_rows` / :func:`write_table_node`
  give the panel's table (units in the column titles) and a savable ``vtkMRMLTableNode``.

Slicer and VTK are imported inside the functions only.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..core.header import ScancoHeader
from ..core.quantities import QUANTITIES
from ..errors import RequestError, ScancoError
from ..formats.regions import GOBJ_KIND, PlacedRegion, read_region, region_kind
from ..pipeline.region_measures import RegionStatisticsResult, region_statistics
from ..pipeline.sampling import ijk_to_ras_matrix
from .node_attributes import QUANTITY, SOURCE_PATH, attribute_name, set_attributes
from .nodes import vtk_matrix

logger = logging.getLogger(__name__)

#: the segmentation node attribute naming the scan (absolute path) whose regions it holds
REGIONS_OF = attribute_name("RegionsOf")
#: segment tags written when a region file becomes a segment
TAG_FILE, TAG_KIND, TAG_OFFSET, TAG_OUTSIDE = (attribute_name(k) for k in
                                               ("RegionFile", "RegionKind", "RegionOffsetVoxels", "RegionOutsideVoxels"))
#: the kind of a region read from a segment (RegionStatistics.kind)
SEGMENT_KIND = "segment"
REGIONS_NODE_SUFFIX = " regions"
GOBJ_NAME = re.compile(r"\.gobj(;\d*)?$", re.IGNORECASE)
_COLORS = ((0.95, 0.45, 0.30), (0.30, 0.65, 0.95), (0.45, 0.85, 0.40), (0.90, 0.75, 0.25), (0.75, 0.45, 0.90))


def file_stem(path) -> str:
    """File name without VMS version and extension: ``C1_TRAB_MASK.AIM;1`` -> ``C1_TRAB_MASK``."""
    name = os.path.basename(os.fspath(path)).split(";", 1)[0]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def region_segment_name(region_path, scan_path) -> str:
    """The segment name of a region file: its stem, without ``<scan stem>_`` in front."""
    stem, scan = file_stem(region_path), file_stem(scan_path)
    return stem[len(scan) + 1:] if stem.startswith(scan + "_") and len(stem) > len(scan) + 1 else stem


def reader_confidence(path) -> float:
    """The file reader's ``canLoadFileConfidence``: a ``.gobj`` name (any case, ``;N``) with GOBJ
    magic 0.8, else :func:`~ScancoUnitsLib.slicer.scene.file_reader_confidence`. The name first, as
    Slicer's SlicerScriptedFileReaderWriterTest.py reader does (supportedNameFilters), then the magic, so
    no other file is opened; 0.8 beats the core Volumes reader's 0.5 for "All Files (*)"
    (qSlicerFileReader::canLoadFileConfidence: 0.5 + 0.01 x matched extension length, 0 for "*")."""
    from ..formats.gobj import is_gobj
    from .scene import file_reader_confidence

    if GOBJ_NAME.search(os.path.basename(os.fspath(path))):
        try:
            with open(os.fspath(path), "rb") as f:
                return 0.8 if is_gobj(f.read(20)) else 0.0
        except OSError:
            return 0.0
    return file_reader_confidence(path)


# ---- the loaded scans ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedScan:
    """A scan loaded in the scene: its SCANCO file and the newest volume node made from it."""
    path: str
    node: object


def loaded_scans(scene) -> List[LoadedScan]:
    """Scans loaded by ScancoUnits (grey volumes with SourcePath and Quantity), oldest first, one per file."""
    by_path = {}
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        path = node.GetAttribute(SOURCE_PATH)
        if node.IsA("vtkMRMLLabelMapVolumeNode") or not path or not node.GetAttribute(QUANTITY):
            continue
        by_path.pop(path, None)
        by_path[path] = LoadedScan(path, node)
    return list(by_path.values())


def place_on_loaded_scan(scene, path) -> Optional[Tuple[LoadedScan, ScancoHeader, PlacedRegion]]:
    """The newest loaded scan the region file fits, its header and the placed region; None for a char
    mask AIM no loaded scan fits (and for a grey AIM); a GOBJ nothing fits: :class:`RequestError`."""
    from ..formats.reader import read_header

    path = os.path.abspath(os.fspath(path))
    kind = region_kind(path)
    if kind != GOBJ_KIND and not read_header(path).is_mask:
        return None
    reasons = []
    for scan in reversed(loaded_scans(scene)):
        if os.path.abspath(scan.path) == path:
            continue
        try:
            like = read_header(scan.path)
            return scan, like, read_region(path, like=like, name=region_segment_name(path, scan.path))
        except (OSError, ScancoError) as exc:
            reasons.append(f"{os.path.basename(scan.path)}: {' '.join(str(exc).split())}")
    if kind != GOBJ_KIND:
        return None
    if not reasons:
        raise RequestError(path, "a GOBJ region is placed on its scan: load its scan (ISQ or AIM) first")
    raise RequestError(path, f"fits no loaded scan (newest first: {reasons[0]})")


# ---- region -> segment ---------------------------------------------------------------------------
def regions_segmentation(scene, scan: LoadedScan, like: ScancoHeader):
    """The segmentation holding ``scan``'s regions (made on first use, on the scan's full grid)."""
    import slicer
    import vtk

    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(REGIONS_OF) == os.path.abspath(scan.path):
            return node
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                   scene.GenerateUniqueName(file_stem(scan.path) + REGIONS_NODE_SUFFIX))
    node.CreateDefaultDisplayNodes()
    matrix = vtk_matrix(ijk_to_ras_matrix(like))
    x, y, z = (int(v) for v in like.dimensions)
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(matrix, [0, x - 1, 0, y - 1, 0, z - 1])
    node.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry)
    scan_matrix = vtk.vtkMatrix4x4()
    scan.node.GetIJKToRASMatrix(scan_matrix)
    if _same_matrix(scan_matrix, matrix) and scan.node.GetImageData() is not None \
            and tuple(scan.node.GetImageData().GetDimensions()) == (x, y, z):
        node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), scan.node.GetID())
    set_attributes(node, {"SourceFile": os.path.basename(scan.path), "SourcePath": os.path.abspath(scan.path),
                          "RegionsOf": os.path.abspath(scan.path)})
    _beside(scene, node, scan.node)
    return node


def add_region_segment(segmentation, region: PlacedRegion, like: ScancoHeader) -> str:
    """Add ``region`` as a segment (own uint8 labelmap on the scan's grid); returns the segment id."""
    import slicer
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    z0, y0, x0 = region.start_zyx
    dz, dy, dx = region.mask.shape
    image.SetExtent(x0, x0 + dx - 1, y0, y0 + dy - 1, z0, z0 + dz - 1)
    image.AllocateScalars(numpy_support.get_vtk_array_type(np.dtype(np.uint8)), 1)
    if region.mask.size:
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(region.mask.shape)[...] = region.mask
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras_matrix(like)))
    segments = segmentation.GetSegmentation()
    used = {segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())}
    name, n = region.name, 2
    while name in used:
        name, n = f"{region.name}_{n}", n + 1
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*_COLORS[segments.GetNumberOfSegments() % len(_COLORS)])
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(), image)
    for tag, value in ((TAG_FILE, region.path), (TAG_KIND, region.kind),
                       (TAG_OFFSET, " ".join(str(v) for v in region.offset_voxels)),
                       (TAG_OUTSIDE, str(region.outside_voxels))):
        segment.SetTag(tag, value)
    segment_id = segments.GenerateUniqueSegmentID(name)
    segments.AddSegment(segment, segment_id)
    return segment_id


def load_dropped_region(scene, path, warn: Optional[Callable[[str], None]] = None):
    """The file reader's step for a region file: ``{"region_segmentation": node}`` when ``path`` (GOBJ or
    char mask AIM) fits a loaded scan and became a segment; None when it is for the ordinary load;
    :class:`RequestError` (one line) for a GOBJ no loaded scan fits."""
    placed = place_on_loaded_scan(scene, path)
    if placed is None:
        return None
    scan, like, region = placed
    segmentation = regions_segmentation(scene, scan, like)
    add_region_segment(segmentation, region, like)
    if region.outside_voxels:
        (warn or logger.warning)(f"{path}: {region.outside_voxels} of its {region.voxels + region.outside_voxels} "
                                 f"voxels lie outside the scan {os.path.basename(scan.path)} and are left out")
    return {"region_segmentation": segmentation}


# ---- segment -> region -> statistics ---------------------------------------------------------------
def scan_of_segmentation(segmentation) -> str:
    """The SCANCO file a segmentation is on: its SourcePath, else its reference volume's."""
    path = segmentation.GetAttribute(SOURCE_PATH)
    if not path:
        reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        path = reference.GetAttribute(SOURCE_PATH) if reference is not None else None
    if not path:
        raise RequestError(segmentation.GetName(), "the segmentation is not on a scan loaded by ScancoUnits (no "
                                                   "ScancoUnits.SourcePath on it or on its reference volume)")
    if not os.path.exists(path):
        raise RequestError(segmentation.GetName(), f"its scan {path} is not there any more")
    return path


def segment_region(segmentation, segment_id: str, like: ScancoHeader) -> PlacedRegion:
    """The segment's current binary labelmap as a region on ``like``'s grid (cropped to the scan)."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    from .mask_aim import node_grid_offset

    node_name = segmentation.GetName()
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise RequestError(node_name, f"the segmentation has no segment {segment_id!r}")
    name = segment.GetName()
    if segmentation.GetParentTransformNode() is not None:
        raise RequestError(node_name, "the segmentation is under a transform; harden or remove it first")
    binary = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    image = slicer.vtkOrientedImageData()
    if not segmentation.GetSegmentation().ContainsRepresentation(binary) or \
            not segmentation.GetBinaryLabelmapRepresentation(segment_id, image):
        raise RequestError(node_name, f"segment {name!r} has no binary labelmap (its source representation "
                                      "is another); make binary labelmap the source representation first")
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    shape = (z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    scalars = image.GetPointData().GetScalars() if min(shape) > 0 else None
    voxels = np.zeros((0, 0, 0), bool) if scalars is None else \
        numpy_support.vtk_to_numpy(scalars).reshape(shape) != 0
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = _numpy_matrix(matrix)
    ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ np.array([x0, y0, z0], dtype=np.float64)
    try:
        offset = node_grid_offset(f"{node_name}: segment {name!r}", ijk_to_ras, like)
    except ScancoError as exc:
        raise RequestError(node_name, f"segment {name!r} is not on the grid of {like.path}: "
                                      f"{' '.join(str(exc).split())}") from None
    total = int(np.count_nonzero(voxels))
    lo = [max(0, -o) for o in reversed(offset)]                               # in the segment's array, z y x
    hi = [min(n, s - o) for n, s, o in zip(voxels.shape, like.shape_zyx, reversed(offset))]
    inside = voxels[tuple(slice(a, max(a, b)) for a, b in zip(lo, hi))] if voxels.size else voxels
    start = [o + a for o, a in zip(reversed(offset), lo)]
    count = int(np.count_nonzero(inside))
    if count:
        nz = [np.flatnonzero(inside.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
        inside = inside[tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nz)]
        start = [s + int(n[0]) for s, n in zip(start, nz)]
    else:
        inside, start = np.zeros((0, 0, 0), bool), [0, 0, 0]
    inside = np.ascontiguousarray(inside, dtype=bool)
    inside.flags.writeable = False
    dropped = int(_tag(segment, TAG_OUTSIDE) or 0)
    return PlacedRegion(name, _tag(segment, TAG_FILE), SEGMENT_KIND,
                        like.shape_zyx, tuple(start), inside, tuple(offset), count, total - count + dropped,
                        tuple(float(v) for v in like.voxel_size_mm))


def segment_ids_of(segmentation, segment_ids: Optional[Sequence[str]] = None) -> List[str]:
    """``segment_ids`` (ids or names), or every segment of the segmentation in order."""
    segments = segmentation.GetSegmentation()
    if segment_ids is None:
        return [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())]
    out = []
    for value in segment_ids:
        chosen = value if segments.GetSegment(value) is not None else segments.GetSegmentIdBySegmentName(value)
        if not chosen:
            raise RequestError(segmentation.GetName(), f"the segmentation has no segment with id or name {value!r}")
        out.append(chosen)
    return out


def segment_statistics(segmentation, segment_ids: Optional[Sequence[str]] = None, thresholds=None,
                       scan=None) -> RegionStatisticsResult:
    """vBMD, BV/TV, TMD (and SDs, voxels, volume) of segments, by the command line's
    :func:`~ScancoUnitsLib.pipeline.region_measures.region_statistics` on the scan's file.

    ``thresholds``: the bone mask (a ThresholdSpec, ``(low, high, unit)`` as the panel gives, resolved
    thresholds; None: the conversion's default). ``scan``: the SCANCO file or header (default: the
    segmentation's scan, :func:`scan_of_segmentation`)."""
    from ..formats.reader import read_header
    from ..pipeline.request import threshold_spec_from

    like = scan if isinstance(scan, ScancoHeader) else read_header(scan or scan_of_segmentation(segmentation))
    ids = segment_ids_of(segmentation, segment_ids)
    regions = [segment_region(segmentation, i, like) for i in ids]
    if isinstance(thresholds, (tuple, list, dict, str)):
        thresholds = threshold_spec_from(thresholds)
    return region_statistics(like, regions, thresholds=thresholds)


# ---- the panel's table ------------------------------------------------------------------------------
_DENSITY_UNIT = QUANTITIES["density_mg_ha_ccm"].unit_label
#: (RegionStatistics field, column title with its unit)
TABLE_COLUMNS = (("voxels", "Voxels"), ("volume_mm3", "Volume [mm³]"),
                 ("vbmd_mg_ha_ccm", f"vBMD [{_DENSITY_UNIT}]"), ("vbmd_sd_mg_ha_ccm", f"vBMD SD [{_DENSITY_UNIT}]"),
                 ("bv_tv", "BV/TV [1]"), ("tmd_mg_ha_ccm", f"TMD [{_DENSITY_UNIT}]"),
                 ("tmd_sd_mg_ha_ccm", f"TMD SD [{_DENSITY_UNIT}]"), ("bone_voxels", "Bone voxels"),
                 ("outside_voxels", "Outside voxels"))
SEGMENT_COLUMN = "Segment"


@dataclass(frozen=True)
class StatisticsRow:
    """One table row: the segment's name and its values in :data:`TABLE_COLUMNS` order (None: undefined)."""
    segment: str
    values: Tuple[Optional[float], ...]

    def texts(self) -> Tuple[str, ...]:
        return (self.segment,) + tuple("" if v is None else (str(v) if isinstance(v, int) else f"{v:.6g}")
                                       for v in self.values)


def statistics_rows(result: RegionStatisticsResult) -> Tuple[StatisticsRow, ...]:
    return tuple(StatisticsRow(r.name, tuple(getattr(r, f) for f, _ in TABLE_COLUMNS)) for r in result.regions)


def column_titles() -> Tuple[str, ...]:
    return (SEGMENT_COLUMN,) + tuple(t for _, t in TABLE_COLUMNS)


def write_table_node(scene, segmentation, result: RegionStatisticsResult, table=None):
    """The statistics in a ``vtkMRMLTableNode`` (``<segmentation> statistics``; reused when given): full
    precision doubles, units in the column titles, the mask's native range in an attribute."""
    import vtk

    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                        scene.GenerateUniqueName(f"{segmentation.GetName()} statistics"))
    data = table.GetTable()
    data.Initialize()
    names = vtk.vtkStringArray()
    names.SetName(SEGMENT_COLUMN)
    data.AddColumn(names)
    for _, title in TABLE_COLUMNS:
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        data.AddColumn(column)
    for row in statistics_rows(result):
        index = data.InsertNextBlankRow()
        names.SetValue(index, row.segment)
        for c, value in enumerate(row.values, start=1):
            data.GetColumn(c).SetValue(index, float("nan") if value is None else float(value))
    set_attributes(table, {"SourcePath": result.scan, "MaskNativeRange":
                           None if result.native_range is None else " ".join(map(str, result.native_range))})
    table.Modified()
    return table


def fill_table_widget(table_widget, result: RegionStatisticsResult) -> None:
    """Fill a ``QTableWidget`` with :func:`statistics_rows` (what the panel's button does)."""
    import qt

    titles = column_titles()
    table_widget.clear()
    table_widget.setColumnCount(len(titles))
    table_widget.setHorizontalHeaderLabels(list(titles))
    rows = statistics_rows(result)
    table_widget.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row.texts()):
            table_widget.setItem(r, c, qt.QTableWidgetItem(text))


def compute_for_panel(segmentation, thresholds, table_widget=None):
    """The panel's Compute button: statistics of every segment, written to the segmentation's table node
    (made once, named ``<segmentation> statistics``) and to ``table_widget``. Returns (result, table node)."""
    if segmentation is None:
        raise ValueError("Select a segmentation on a scan loaded by ScancoUnits first.")
    result = segment_statistics(segmentation, thresholds=thresholds)
    scene = segmentation.GetScene()
    table = scene.GetNodeByID(segmentation.GetAttribute(attribute_name("StatisticsTable")) or "")
    table = write_table_node(scene, segmentation, result, table=table)
    segmentation.SetAttribute(attribute_name("StatisticsTable"), table.GetID())
    if table_widget is not None:
        fill_table_widget(table_widget, result)
    return result, table


# ---- helpers ---------------------------------------------------------------------------------------
def _numpy_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _tag(segment, key: str) -> str:
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else ""


def _same_matrix(a, b) -> bool:
    return all(abs(a.GetElement(r, c) - b.GetElement(r, c)) <= 1e-9 * max(1.0, abs(b.GetElement(r, c)))
               for r in range(4) for c in range(4))


def _beside(scene, node, scan_node) -> None:
    """Put ``node`` in the subject-hierarchy folder of ``scan_node`` (the load's "<stem> (SCANCO)")."""
    try:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        parent = sh.GetItemParent(sh.GetItemByDataNode(scan_node)) if sh is not None else 0
        item = sh.GetItemByDataNode(node) if parent else 0
        if item:
            sh.SetItemParent(item, parent)
    except Exception as exc:  # pragma: no cover - depends on the Slicer build
        logger.debug("subject hierarchy placement skipped: %s", exc)


__all__ = ["load_dropped_region", "segment_statistics", "segment_region", "compute_for_panel", "reader_confidence",
           "write_table_node", "statistics_rows", "loaded_scans"]
