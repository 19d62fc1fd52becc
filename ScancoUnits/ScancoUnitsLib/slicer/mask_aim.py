"""Save a mask edited in 3D Slicer back as a SCANCO char AIM that IPL can use.

:func:`save_mask_as_aim` takes a labelmap volume node or a segmentation node (one segment, or the one
named by ``segment_id``) and writes it, atomically, as D1TbinCmp with IPL's object value 127 (the
compression IPL writes for masks, see :mod:`ScancoUnitsLib.formats.aim.writer`). Non-zero voxels are object.

The AIM must sit on the source scan's grid, so that IPL overlays it on the grey image: its position
is the source's position plus the node's offset in whole voxels, and its element size is the
source's. The source is ``source=`` (a SCANCO file path) or the file named by the node's
``ScancoUnits.SourcePath`` attribute (set by :func:`scene.load_scan_into_scene`). The node's grid
must be axis-aligned with positive LPS axes (IJK-to-RAS = diag(-sx, -sy, sz) + translation), have
the source's voxel size and an integral voxel offset from the source's origin; anything else (a
rotated node, a resampled or subsampled one, a half-voxel shift, a node under a transform) is
refused with a :class:`~ScancoUnitsLib.errors.MaskExportError` saying why. The processing log is
the source's, followed by lines naming the Slicer node, the segment and the offset.

Needs Slicer (or the ``slicer-core`` wheel); imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

from ..errors import MaskExportError
from ..core.header import ScancoHeader
from .node_attributes import SOURCE_PATH, attribute_name

__all__ = ["save_mask_as_aim", "node_grid_offset"]

_ROTATION_TOLERANCE = 1e-6   # off-diagonal direction terms, relative to the voxel size
_SPACING_TOLERANCE = 1e-6    # relative difference from the source's voxel size
_OFFSET_TOLERANCE = 1e-3     # voxels: how far from a whole number an offset may be
_SLAB_SLICES = 16
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def node_grid_offset(name: str, ijk_to_ras: np.ndarray, source: ScancoHeader) -> Tuple[int, int, int]:
    """Whole-voxel offset (x, y, z) of a node's first voxel from the source's first voxel.

    ``ijk_to_ras``: the node's 4x4 IJK-to-RAS matrix (of voxel (0, 0, 0) of its array). Raises
    :class:`MaskExportError` when the grid is rotated or flipped, has another voxel size than the
    source, or sits a fraction of a voxel off the source's grid.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    lps = _LPS_FROM_RAS @ matrix[:3, :3]          # columns: LPS step of one voxel along i, j, k
    origin = _LPS_FROM_RAS @ matrix[:3, 3]
    spacing = np.diag(lps).copy()
    scale = np.abs(lps).max(axis=0)
    off_diagonal = lps - np.diag(spacing)
    if np.any(np.abs(off_diagonal) > _ROTATION_TOLERANCE * scale[np.newaxis, :]):
        raise MaskExportError(name, "the volume is rotated relative to the scan (its IJK-to-RAS matrix is not "
                                    "diagonal); an AIM is axis-aligned: resample it onto the scan's grid first")
    if np.any(spacing <= 0):
        axes = ", ".join(a for a, s in zip("xyz", spacing) if s <= 0)
        raise MaskExportError(name, f"the volume's {axes} axis is flipped relative to the scan (LPS); an AIM "
                                    "keeps the scan's axis directions")
    source_size = np.asarray(source.voxel_size_mm, dtype=np.float64)
    if np.any(np.abs(spacing - source_size) > _SPACING_TOLERANCE * source_size):
        given = " x ".join(f"{v:.6g}" for v in spacing)
        wanted = " x ".join(f"{v:.6g}" for v in source_size)
        raise MaskExportError(name, f"voxel size {given} mm differs from the scan's {wanted} mm (resampled or "
                                    "subsampled); an AIM must be on the scan's own grid")
    shift = (origin - np.asarray(source.origin_mm, dtype=np.float64)) / source_size
    whole = np.round(shift)
    if np.any(np.abs(shift - whole) > _OFFSET_TOLERANCE):
        text = ", ".join(f"{a} {v:.3f}" for a, v in zip("xyz", shift))
        raise MaskExportError(name, f"the volume is offset from the scan's grid by a fraction of a voxel "
                                    f"({text} voxels); AIM positions are whole voxels")
    return tuple(int(v) for v in whole)


def _source_header(node, name: str, source) -> ScancoHeader:
    from ..formats.reader import read_header

    if source is None:
        source = node.GetAttribute(SOURCE_PATH)
        if not source:
            raise MaskExportError(name, "the node does not say which scan it belongs to (no ScancoUnits.SourcePath "
                                        "attribute); pass source= the SCANCO file")
        if not os.path.exists(source):
            raise MaskExportError(name, f"its source scan {source} is not there any more; pass source= the SCANCO file")
    if isinstance(source, ScancoHeader):
        return source
    return read_header(source)


def _segment(segmentation_node, name: str, segment_id) -> Tuple[str, str]:
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise MaskExportError(name, "the segmentation has no segment")
    if segment_id is None:
        if len(ids) > 1:
            names = ", ".join(repr(segmentation.GetSegment(i).GetName()) for i in ids)
            raise MaskExportError(name, f"the segmentation has {len(ids)} segments ({names}); pass segment_id= "
                                        "the one to save")
        chosen = ids[0]
    elif segment_id in ids:
        chosen = segment_id
    else:
        chosen = segmentation.GetSegmentIdBySegmentName(str(segment_id))
        if not chosen:
            raise MaskExportError(name, f"the segmentation has no segment with id or name {segment_id!r}")
    return chosen, segmentation.GetSegment(chosen).GetName()


def _export_segment(segmentation_node, segment_id: str):
    """The segment as a temporary labelmap node on the segmentation's reference geometry."""
    import slicer
    import vtk

    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("mask export"))
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    reference = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, None, reference):
        scene.RemoveNode(labelmap)
        raise MaskExportError(segmentation_node.GetName(), f"Slicer could not export segment {segment_id!r} to a labelmap")
    return labelmap


def _labelmap_voxels(node, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(voxels (z, y, x), IJK-to-RAS of voxel (0, 0, 0) of that array) of a volume node."""
    import vtk
    from vtk.util import numpy_support

    if node.GetParentTransformNode() is not None:
        raise MaskExportError(name, "the volume is under a transform; harden or remove the transform first")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise MaskExportError(name, "the volume has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise MaskExportError(name, f"the volume has {image.GetNumberOfScalarComponents()} components per voxel, "
                                    "a mask has one")
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    shape = (z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    if min(shape) < 1:
        raise MaskExportError(name, "the volume is empty")
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
    if voxels.dtype.kind not in "biu":
        raise MaskExportError(name, f"the volume holds {voxels.dtype.name} values; a mask holds integer labels")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _matrix(matrix)
    if (x0, y0, z0) != (0, 0, 0):  # voxel (0, 0, 0) of the array is IJK (x0, y0, z0)
        ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ np.array([x0, y0, z0], dtype=np.float64)
    return voxels, ijk_to_ras


def save_mask_as_aim(node, path, *, source=None, segment_id=None, overwrite: bool = False) -> Path:
    """Save a labelmap volume node or one segment of a segmentation node as a SCANCO char AIM.

    * ``source``: the SCANCO file (path or :class:`ScancoHeader`) the mask belongs to; default: the
      node's ``ScancoUnits.SourcePath`` attribute.
    * ``segment_id``: for segmentations with several segments, the segment's id or name.
    * ``overwrite``: replace an existing file (otherwise it is an error).

    Returns the written path. Voxels: non-zero -> 127, zero -> 0, D1TbinCmp, AIM v020 (v030 when too
    large). Refusals (:class:`MaskExportError`): not a volume/segmentation node, no source, rotated,
    flipped or resampled grid, fractional voxel offset, node under a transform.
    """
    from ..formats.aim.writer import AimVolumeWriter, derived_log_text
    from ..io.transaction import AtomicOutputSet

    name = node.GetName() if hasattr(node, "GetName") else repr(node)
    temporary = None
    segment_name = None
    try:
        if node.IsA("vtkMRMLSegmentationNode"):
            chosen, segment_name = _segment(node, name, segment_id)
            if node.GetParentTransformNode() is not None:
                raise MaskExportError(name, "the segmentation is under a transform; harden or remove the transform first")
            header = _source_header(node, name, source)
            temporary = _export_segment(node, chosen)
            voxels, ijk_to_ras = _labelmap_voxels(temporary, name)
        elif node.IsA("vtkMRMLScalarVolumeNode"):
            if segment_id is not None:
                raise MaskExportError(name, "segment_id is for segmentation nodes; this is a volume node")
            header = _source_header(node, name, source)
            voxels, ijk_to_ras = _labelmap_voxels(node, name)
        else:
            raise MaskExportError(name, f"a {node.GetClassName()} is not a labelmap volume or segmentation node")
        offset = node_grid_offset(name, ijk_to_ras, header)
        position = tuple(int(p) + o for p, o in zip(header.position_voxels, offset))
        lines = [("Exported from", "3D Slicer (ScancoUnits save_mask_as_aim)"),
                 ("Slicer node", name)]
        if segment_name is not None:
            lines.append(("Segment", segment_name))
        low, high, unit, native = (node.GetAttribute(attribute_name(key)) for key in
                                   ("ThresholdLow", "ThresholdHigh", "ThresholdUnit", "ThresholdNative"))
        if low and high and unit:  # the thresholds the mask was made with when loaded (before any edit)
            lines.append((f"Loaded with threshold [{unit}]", f"{low} {high}"))
        if native:
            lines.append(("Loaded with threshold [native]", native))
        lines += [("Offset to source [voxels]", " ".join(str(v) for v in offset)),
                  ("Mask rule", "non-zero label -> 127")]
        log = derived_log_text(header, [(k, v.replace("  ", " ")) for k, v in lines])
        target = Path(os.path.abspath(os.fspath(path)))
        # the scan the mask belongs to is an input: never replaced, whatever ``overwrite`` says; an
        # existing mask file is replaced atomically (temporary file renamed over it at commit)
        with AtomicOutputSet(overwrite=overwrite, protected=(header.path,)) as outputs:
            with AimVolumeWriter(target, voxels.shape, voxels.dtype, voxel_size_mm=header.voxel_size_mm,
                                 position_voxels=position, processing_log=log, mask=True,
                                 atomic=outputs) as writer:
                for z in range(0, voxels.shape[0], _SLAB_SLICES):
                    writer.write_slab(voxels[z:z + _SLAB_SLICES])
        return target
    finally:
        if temporary is not None:
            temporary.GetScene().RemoveNode(temporary)
