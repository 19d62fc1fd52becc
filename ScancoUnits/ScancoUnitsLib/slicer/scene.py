"""Put a SCANCO file into a 3D Slicer MRML scene as calibrated volumes, a mask labelmap and a segmentation.

:func:`load_scan_into_scene` is the one entry point the Slicer module (widget, logic, file reader)
calls; everything it does is testable headless with the ``slicer-core`` wheel (``slicer.vtkMRMLScene()``).
Slicer and VTK are imported inside the functions only, so ``import ScancoUnitsLib.slicer.scene`` works
anywhere.

Flow: the same :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` and :func:`~ScancoUnitsLib.pipeline.request.plan_request`
as the command line decide what is made; the same :func:`~ScancoUnitsLib.pipeline.engine.run_engine` fills the
nodes' own arrays (converting straight into them at full resolution, or through a sampling sink for
every n-th voxel or a region); with ``export_dir`` the same pass also writes the files
(:func:`~ScancoUnitsLib.pipeline.convert.convert_header`), so the file is read once. Geometry: see
:mod:`~ScancoUnitsLib.pipeline.sampling`. Node units, suffixes and labels come from :mod:`~ScancoUnitsLib.core.quantities`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..pipeline.convert import convert_header, mask_coverage_warning, output_stem, plan_files
from ..pipeline.engine import EngineOutput, run_engine, slab_slices_for
from ..errors import ConversionCancelled
from ..core.header import ScancoHeader
from . import memory_fit
from ..pipeline.histogram import NativeHistogram
from .. import defaults
from ..core.quantities import NODE_ROLES, QUANTITIES, canonical_density_unit
from ..formats.reader import open_voxels, read_header, sniff_format  # noqa: F401 - sniff_format: public here
from ..pipeline.request import ConversionRequest, RequestPlan, normalise_roles, plan_request, threshold_spec_from
from ..pipeline.sampling import SamplingPlan, ijk_to_ras_matrix, plan_sampling  # noqa: F401 - public here
from ..core.units import UnitConverter
from ..pipeline.summaries import (  # noqa: F401 - the panel helpers have always been importable from here
    _fmt,
    calibration_warning,
    display_range,
    format_threshold_number,
    header_summary_html,
    memory_estimate_text,
    scene_memory_bytes,
    segment_name,
    threshold_equivalents,
    threshold_equivalents_html,
)

logger = logging.getLogger(__name__)

#: every role :func:`load_scan_into_scene` can create, in creation order
ROLES = NODE_ROLES
#: what a load creates for a calibrated grey-value file: the command line's default plus the segmentation

_ATTRIBUTE_PREFIX = "ScancoUnits."
MASK_COLOR_RGB = (0.90, 0.85, 0.55)   # bone-ivory segment and label colour

ProgressCallback = Callable[[float], None]


def is_scanco_file_name(path) -> bool:
    """True for the names SCANCO files have: ``.isq`` / ``.aim`` in any case, VMS versions (``;1``) too
    (:data:`~ScancoUnitsLib.formats.reader.SCANCO_NAME`, the command line's rule), or no extension at all
    (files copied off the scanner without one). The Slicer file reader checks the name first and the
    magic only for these names, so a ``.nrrd`` or ``.dcm`` is never opened, let alone claimed."""
    from ..formats.reader import SCANCO_NAME

    name = os.path.basename(os.fspath(path))
    if SCANCO_NAME.search(name):
        return True
    stem = name.split(";", 1)[0]
    return bool(stem) and "." not in stem


def file_reader_confidence(path) -> float:
    """The Slicer file reader's ``canLoadFileConfidence``: 0.8 for a SCANCO name (see
    :func:`is_scanco_file_name`) whose first bytes are SCANCO magic, else 0.0. Slicer's core Volumes
    reader claims such files with 0.5 (only through its "All Files (*)" filter), so 0.8 wins there and
    leaves every other file to the readers made for it."""
    if not is_scanco_file_name(path):
        return 0.0
    return 0.8 if sniff_format(path) else 0.0


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return bool(is_set())
    return bool(cancel())


def _vtk_matrix(matrix: np.ndarray):
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(matrix[r, c]))
    return out


def _new_volume_node(scene, class_name: str, name: str, dtype: np.dtype, shape_zyx, ijk_to_ras: np.ndarray):
    """A volume node with allocated (uninitialised) image data and its numpy (z, y, x) view."""
    import vtk
    from vtk.util import numpy_support

    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    image = vtk.vtkImageData()
    z, y, x = (int(v) for v in shape_zyx)
    image.SetDimensions(x, y, z)
    image.AllocateScalars(numpy_support.get_vtk_array_type(np.dtype(dtype)), 1)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras))
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z, y, x)
    if array.dtype != np.dtype(dtype):  # e.g. VTK_CHAR mapped differently: never silently convert
        raise RuntimeError(f"VTK gave {array.dtype} for {np.dtype(dtype)} voxels")
    return node, array


def _set_attributes(node, attributes: Dict[str, object]) -> None:
    for key, value in attributes.items():
        if value is None:
            continue
        node.SetAttribute(_ATTRIBUTE_PREFIX + key, str(value))


def _calibration_attributes(header: ScancoHeader) -> Dict[str, object]:
    c = header.calibration
    return {
        "SourceFile": os.path.basename(header.path),
        "SourcePath": os.path.abspath(header.path),
        "Format": f"{header.format} {header.version}",
        "DataType": header.data_type_name,
        "MuScaling": _fmt(c.mu_scaling, 17) if c.mu_scaling is not None else None,
        "MuWater_per_cm": _fmt(c.mu_water_per_cm, 17) if c.mu_water_per_cm is not None else None,
        "DensitySlope": _fmt(c.density_slope, 17) if c.density_slope is not None else None,
        "DensityIntercept": _fmt(c.density_intercept, 17) if c.density_intercept is not None else None,
        "DensityUnitInFile": c.density_unit,
        "CalibrationText": c.calibration_text,
        "VoxelSize_mm": " ".join(_fmt(v, 17) for v in header.voxel_size_mm),
        "Origin_mm_LPS": " ".join(_fmt(v, 17) for v in header.origin_mm),
    }


def _sampling_attributes(plan: SamplingPlan, header: ScancoHeader) -> Dict[str, object]:
    if plan.is_full and plan.stop_xyz == tuple(header.dimensions):
        return {"Sampling": "full resolution"}
    return {
        "Sampling": "sub-region/subsampled",
        "RegionStart_xyz": " ".join(str(v) for v in plan.start_xyz),
        "RegionStop_xyz": " ".join(str(v) for v in plan.stop_xyz),
        "SubsampleStep_xyz": " ".join(str(v) for v in plan.step_xyz),
    }


def _set_voxel_value_units(node, quantity: str) -> None:
    import slicer

    q = QUANTITIES[quantity]
    code, scheme, meaning = q.ucum, "UCUM", q.ucum_meaning
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(code, scheme, meaning)
    node.SetVoxelValueUnits(entry)


def _configure_scalar_display(node, window: Optional[Tuple[float, float]]) -> None:
    """The display node ``vtkMRMLScalarVolumeNode::CreateDefaultDisplayNodes`` makes (a scalar volume
    display node with the default colour map), but with our window set BEFORE the node observes it: with
    automatic window/level on, observing computes a histogram of every voxel (5 s for 512 Mi voxels),
    which our known bone window makes useless. Without a window (float images) Slicer's automatic one."""
    if window is None:
        node.CreateDefaultDisplayNodes()
        return
    scene = node.GetScene()
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.AutoWindowLevelOff()
    if not display.GetColorNodeID():
        display.SetDefaultColorMap()
    low, high = window
    if not high > low:
        high = low + 1.0
    display.SetWindowLevelMinMax(low, high)
    node.SetAndObserveDisplayNodeID(display.GetID())


def _mask_color_node(scene, base_name: str, label_name: str):
    color = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(base_name + " colors"))
    color.SetTypeToUser()
    color.SetNumberOfColors(2)
    color.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    color.SetColor(1, label_name, *MASK_COLOR_RGB, 1.0)
    color.SetAttribute(_ATTRIBUTE_PREFIX + "MaskColors", "1")   # ours: removed with its labelmap
    return color


def remove_loaded_nodes(scene, nodes) -> None:
    """Remove nodes made by :func:`load_scan_into_scene` with their display and storage nodes and the
    mask colour table it created (``nodes``: the returned dict or any iterable of nodes)."""
    if isinstance(nodes, dict):
        nodes = list(nodes.values())
    doomed = []
    for node in nodes:
        if node is None:
            continue
        helpers = []
        for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                              ("GetNthStorageNode", "GetNumberOfStorageNodes")):
            if hasattr(node, count):
                helpers += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
        for helper in helpers:
            color = helper.GetColorNode() if helper is not None and hasattr(helper, "GetColorNode") else None
            if color is not None and color.GetAttribute(_ATTRIBUTE_PREFIX + "MaskColors"):
                doomed.append(color)
        doomed += [h for h in helpers if h is not None] + [node]
    folders = _our_folders(scene, nodes)
    _remove_hierarchy_items(scene, doomed)
    for node in doomed:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
    _remove_empty_folders(scene, folders)


def _remove_hierarchy_items(scene, nodes) -> None:
    """Drop the subject-hierarchy items of ``nodes`` (not the nodes): headless, nobody else does it."""
    try:
        import slicer

        if scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
            return
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for node in nodes:
            item = sh.GetItemByDataNode(node)
            if item:
                sh.RemoveItem(item, False, False)
    except Exception as exc:  # pragma: no cover - best effort
        logger.debug("subject hierarchy clean-up skipped: %s", exc)


def _our_folders(scene, nodes):
    """Subject-hierarchy folders made by :func:`_place_in_subject_hierarchy` that hold ``nodes``."""
    try:
        import slicer

        if scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
            return set()   # never create the hierarchy just to look into it
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        folders = set()
        for node in nodes:
            item = sh.GetItemByDataNode(node) if node is not None else 0
            parent = sh.GetItemParent(item) if item else 0
            if parent and sh.GetItemAttribute(parent, _ATTRIBUTE_PREFIX + "Folder"):
                folders.add(parent)
        return folders
    except Exception:  # pragma: no cover - best effort
        return set()


def _remove_empty_folders(scene, folders) -> None:
    if not folders:
        return
    try:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for folder in folders:
            if sh.GetNumberOfItemChildren(folder) == 0:
                sh.RemoveItem(folder)
    except Exception as exc:  # pragma: no cover - best effort
        logger.debug("subject hierarchy clean-up skipped: %s", exc)


def _place_in_subject_hierarchy(scene, folder_name: str, nodes) -> None:
    """Group the new nodes in one subject-hierarchy folder (best effort; never fails the load)."""
    try:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if sh is None:
            return
        folder = sh.CreateFolderItem(sh.GetSceneItemID(), folder_name)
        sh.SetItemAttribute(folder, _ATTRIBUTE_PREFIX + "Folder", "1")
        for node in nodes:
            item = sh.GetItemByDataNode(node)
            if not item:
                item = sh.CreateItem(folder, node)
            else:
                sh.SetItemParent(item, folder)
    except Exception as exc:  # pragma: no cover - depends on the Slicer build
        logger.debug("subject hierarchy grouping skipped: %s", exc)


@dataclass
class LoadResult:
    """What :func:`load_scan` made: nodes by role, the exported files (or None), the native histogram of
    the pass (or None) and the warnings given."""

    nodes: Dict[str, object]
    exported: Optional[object] = None
    histogram: Optional[object] = None
    warnings: List[str] = field(default_factory=list)
    plan: Optional[RequestPlan] = None


class _SampledArraySink:
    """Engine sink that copies the kept voxels of each slab into a node array (every n-th voxel, a region)."""

    def __init__(self, array: np.ndarray, plan: SamplingPlan):
        self.array = array
        self.rows = {z: i for i, z in enumerate(plan.z_indices())}
        self.yx = plan.yx_slices()

    def write(self, z, slab) -> None:
        for i, zi in enumerate(z):
            row = self.rows.get(zi)
            if row is not None:
                self.array[row] = slab[i][self.yx]


class _DirectArraySink:
    """Engine sink for a full-resolution node array: rows are the slab's file slices."""

    def __init__(self, array: np.ndarray, z_first: int):
        self.array = array
        self.z_first = z_first

    def write(self, z, slab) -> None:
        rows = slice(z.start - self.z_first, z.start - self.z_first + len(z))
        target = self.array[rows]
        if target.__array_interface__["data"][0] != slab.__array_interface__["data"][0]:
            np.copyto(target, slab)


def load_scan_into_scene(scene, path, *, outputs=None, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
                         hu_dtype: str = "int16", subsample_step=1, region=None, name: Optional[str] = None,
                         progress: Optional[ProgressCallback] = None, cancel=None,
                         warn: Optional[Callable[[str], None]] = None, slab_slices: Optional[int] = None,
                         header: Optional[ScancoHeader] = None, check_memory: bool = True) -> Dict[str, object]:
    """Read a SCANCO ISQ/AIM file into ``scene``; returns ``{role: node}``.

    Roles (see :data:`ROLES`): ``hu`` (scalar volume, int16 HU or float32 with ``hu_dtype="float32"``),
    ``density`` (float32, ``density_unit`` "g/cc" (default, as the command line) or "mg HA/ccm"),
    ``mu`` (float32 1/cm), ``native`` (the stored values, file dtype), ``mask_labelmap`` (uint8 labelmap,
    1 = inside the thresholds), ``mask_segmentation`` (segmentation node with one segment named like
    ``Bone 250-1000 per mille``).

    * ``outputs``: roles to create; None = the command line's default set (HU, density, mask) plus the
      segmentation (see :mod:`~ScancoUnitsLib.pipeline.request` for char masks, float and uncalibrated files).
    * ``thresholds``: a ThresholdSpec, (low, high) in per mille, (low, high, unit), a dict or "low high unit";
      None = 250..1000 per mille. The mask is ``native_low <= native <= native_high`` (IPL rule). Char files
      without explicit thresholds: non-zero voxels.
    * ``subsample_step`` (int or (z, y, x)) and ``region`` ((z, y, x) slices or (start, stop) pairs): load
      ``file[z0:z1:sz, y0:y1:sy, x0:x1:sx]`` with matching geometry.
    * ``slab_slices``: slices read and converted at a time (default: the engine's, about 1 Mi voxels).
    * ``progress(fraction)`` is called after every slab; ``cancel`` (callable or threading.Event) is checked
      before every slab. On cancel (:class:`ConversionCancelled`) or any error every node created here is removed.
    * ``warn(text)``: where non-fatal problems go (default ``logging.warning``).
    * ``check_memory``: refuse a load that does not fit in the memory available (see :func:`load_scan`).
    """
    return load_scan(scene, path, outputs=outputs, thresholds=thresholds, density_unit=density_unit,
                     hu_dtype=hu_dtype, subsample_step=subsample_step, region=region, name=name,
                     progress=progress, cancel=cancel, warn=warn, slab_slices=slab_slices, header=header,
                     check_memory=check_memory).nodes


def load_scan(scene, path, *, outputs=None, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
              hu_dtype: str = "int16", subsample_step=1, region=None, name: Optional[str] = None,
              progress: Optional[ProgressCallback] = None, cancel=None,
              warn: Optional[Callable[[str], None]] = None, slab_slices: Optional[int] = None,
              header: Optional[ScancoHeader] = None, export_dir=None, compress: bool = True,
              overwrite: bool = False, histogram: bool = False, check_memory: bool = True) -> LoadResult:
    """:func:`load_scan_into_scene`, plus: ``export_dir`` writes the full-resolution files of the same
    outputs in the same pass (one read of the file; the nodes may still be subsampled), ``histogram``
    collects the exact native histogram of the pass (for the panel's chart). ``check_memory``: before
    any node is made, refuse (:class:`~ScancoUnitsLib.slicer.memory_fit.InsufficientMemoryError`, with the
    figures and the ways out) a load whose nodes need more memory than is available."""
    import slicer  # noqa: F401 - fail early and clearly when Slicer is absent

    given_warnings: List[str] = []

    def warning(text: str) -> None:
        given_warnings.append(text)
        (warn or logger.warning)(text)

    if header is None:
        header = read_header(path)
    path = header.path
    if slab_slices is not None and slab_slices < 1:
        raise ValueError("slab_slices must be >= 1")
    explicit_thresholds = thresholds is not None
    request = ConversionRequest(thresholds=threshold_spec_from(thresholds), density_unit=density_unit,
                                hu_dtype=hu_dtype, slab_slices=slab_slices, compress=bool(compress),
                                overwrite=bool(overwrite))
    node_outputs = None if outputs is None else normalise_roles(outputs, NODE_ROLES)
    plan = plan_request(header, request, node_outputs=node_outputs, adapt_defaults=True, warn=warning)
    roles = plan.node_roles
    sampling = plan_sampling(header, subsample_step=subsample_step, region=region)
    if check_memory:
        memory_fit.require_memory_fit(header, roles, subsample_step=subsample_step, region=region,
                                      hu_dtype=hu_dtype)
    if slab_slices is None:   # the engine's slab (about 1 Mi voxels of whole file slices, whatever the sampling)
        slab_slices = max(1, min(sampling.shape_zyx[0], slab_slices_for(header)))
    resolved = plan.thresholds
    char_mask = plan.output("mask") is not None and plan.output("mask").quantity == "char_mask"
    spec = request.threshold_spec
    label_name = "Mask (non-zero voxels)" if char_mask else segment_name(spec)

    base = name or os.path.splitext(os.path.basename(path).split(";")[0])[0] or "SCANCO"
    ijk_to_ras = ijk_to_ras_matrix(header, sampling)
    shape = sampling.shape_zyx
    common = _calibration_attributes(header)
    common.update(_sampling_attributes(sampling, header))
    threshold_attributes = {}
    if resolved is not None and (explicit_thresholds or not header.is_mask):
        info = resolved.to_dict()
        threshold_attributes = {
            "ThresholdUnit": spec.unit,
            "ThresholdLow": format_threshold_number(spec.low),
            "ThresholdHigh": format_threshold_number(spec.high),
            "ThresholdNative": f"{resolved.native_low} {resolved.native_high}",
            "MaskRule": info["mask_rule"],
            "ThresholdRounding": info["rounding"],
        }
    elif char_mask:
        threshold_attributes = {"MaskRule": "non-zero -> 1 (SCANCO char mask)"}

    full = sampling.is_full and sampling.stop_xyz == tuple(header.dimensions)
    z_first = sampling.start_xyz[2]
    created = []      # every node added to the scene, for clean-up
    nodes: Dict[str, object] = {}
    engine_outputs: Dict[str, EngineOutput] = {}
    try:
        # ---- allocate the nodes; each node array is a sink of its output ------------------------
        for out in plan.outputs:
            quantity = QUANTITIES[out.quantity]
            if out.role == "mask":
                node, array = _new_volume_node(scene, "vtkMRMLLabelMapVolumeNode", f"{base} mask",
                                               np.uint8, shape, ijk_to_ras)
                attributes = dict(common)
                attributes.update(threshold_attributes)
                attributes["SegmentName"] = label_name
            else:
                node, array = _new_volume_node(scene, "vtkMRMLScalarVolumeNode", f"{base} {quantity.node_suffix}",
                                               out.dtype, shape, ijk_to_ras)
                attributes = dict(common)
                attributes.update({"Quantity": out.quantity, "Unit": quantity.unit_label})
                if quantity.is_calibrated:
                    entry = UnitConverter(header.calibration).describe()["quantities"][out.quantity]
                    attributes.update({"Formula": entry["formula"], "Scale": _fmt(entry["scale"], 17),
                                       "Offset": _fmt(entry["offset"], 17)})
            created.append(node)
            _set_attributes(node, attributes)
            if out.role != "mask":
                _set_voxel_value_units(node, out.quantity)
            nodes[out.role] = node
            sink = _DirectArraySink(array, z_first) if full else _SampledArraySink(array, sampling)
            engine_outputs[out.role] = EngineOutput(out.role, out.quantity, out.dtype, [sink],
                                                    target=array if full else None)

        # ---- fill them in one pass (with the export files when asked) ----------------------------
        observers = []
        native_histogram = None
        if histogram:
            native_histogram = NativeHistogram(header.voxel_type)
            observers.append(lambda z0, native, views: native_histogram.accumulate(native))
        total_fraction = 0.95

        def on_progress(done: int, total: int):
            if progress is not None:
                progress(done / max(total, 1) * total_fraction)
            return not _is_cancelled(cancel)

        if _is_cancelled(cancel):
            raise ConversionCancelled(path)
        exported = None
        if export_dir is not None:
            extra = {role: o.sinks for role, o in engine_outputs.items()}
            exported = convert_header(header, export_dir, request, progress=on_progress, observers=observers,
                                      cancel=cancel, extra_sinks=extra,
                                      plan=plan_request(header, request, node_outputs=node_outputs,
                                                        adapt_defaults=True))
            stats = None
        else:
            z_selection = range(z_first, sampling.stop_xyz[2], sampling.step_xyz[2])
            with open_voxels(header) as source:
                result = run_engine(header, source, list(engine_outputs.values()), thresholds=resolved,
                                    hu_dtype=hu_dtype, slab_slices=slab_slices, z_selection=z_selection,
                                    observers=observers, progress=on_progress, cancel=cancel)
            stats = result.statistics
            for text in result.warnings:  # the voxel data is not what the header says (over-long stream...)
                warning(text)
        clipped = stats["hu"].hu_clipped_voxels if stats and "hu" in stats else 0
        if exported is not None:
            clipped = exported.metadata.get("hu_clipped_voxels") or 0
        if "hu" in nodes and hu_dtype == "int16" and clipped:
            nodes["hu"].SetAttribute(_ATTRIBUTE_PREFIX + "HUClippedVoxels", str(clipped))
            warning(f"{os.path.basename(path)}: {clipped} voxels were clipped to the int16 HU "
                    "range; load with hu_dtype='float32' to keep them")
        mask_voxels = stats["mask"].mask_voxels if stats and "mask" in stats else None
        if exported is not None and "mask" in nodes:
            mask_voxels = exported.metadata.get("mask_voxels")
        if mask_voxels is not None and resolved is not None and not char_mask and full:
            native_range = (result.native_min, result.native_max) if stats else \
                tuple(exported.metadata.get("native_range") or (None, None))
            text = mask_coverage_warning(header, plan, mask_voxels, *native_range)
            if text:
                nodes["mask"].SetAttribute(_ATTRIBUTE_PREFIX + "MaskWarning", text)
                warning(text)

        # ---- display, labelmap colours, segmentation --------------------------------------------
        for role in ("hu", "density", "mu", "native"):
            if role in nodes:
                nodes[role].GetImageData().Modified()
                _configure_scalar_display(nodes[role], display_range(header, plan.output(role).quantity, resolved))
        mask_node = nodes.pop("mask", None)
        if mask_node is not None:
            mask_node.GetImageData().Modified()
            color = _mask_color_node(scene, f"{base} mask", label_name)
            created.append(color)
            display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
            created.append(display)
            display.SetAndObserveColorNodeID(color.GetID())
            mask_node.SetAndObserveDisplayNodeID(display.GetID())
            if "mask_segmentation" in roles:
                segmentation = _segmentation_from_labelmap(scene, mask_node, f"{base} mask segmentation",
                                                           label_name, common, threshold_attributes,
                                                           own_copy="mask_labelmap" in roles)
                created.append(segmentation)
                nodes["mask_segmentation"] = segmentation
            if "mask_labelmap" in roles:
                nodes["mask_labelmap"] = mask_node
            else:  # only needed as the segmentation's source
                remove_loaded_nodes(scene, [mask_node])
                created = [n for n in created if n not in (mask_node, display, color)]
        if progress is not None:
            progress(1.0)
        _place_in_subject_hierarchy(scene, f"{base} (SCANCO)", [nodes[r] for r in ROLES if r in nodes])
    except BaseException:
        remove_loaded_nodes(scene, list(reversed(created)))
        raise
    ordered = {role: nodes[role] for role in ROLES if role in nodes}
    return LoadResult(ordered, exported, native_histogram, given_warnings, plan)


def _segmentation_from_labelmap(scene, labelmap, name: str, label_name: str, common, threshold_attributes,
                                own_copy: bool = True):
    """A segmentation with one segment whose binary labelmap holds the labelmap node's voxels.

    With ``own_copy`` (the labelmap node stays in the scene) the segment gets its own copy of the voxels
    (``vtkOrientedImageData::DeepCopy``): two nodes never share one buffer, so Segment Editor's edits
    of the segment (merge modes write into the segment's image) do not reach the labelmap node behind
    its back, and zeroing the labelmap's array does not empty the segment. Without it (the labelmap is
    only the segmentation's source and is removed right after) the buffer is handed over with
    ``ShallowCopy``: no copy, and after the removal the segment is its only owner.
    ``vtkSegment::AddRepresentation`` keeps the given ``vtkOrientedImageData`` (a smart pointer). The
    segment's label value is vtkSegment's default, 1, the mask's foreground. An empty mask gives a
    named, empty segment on the same grid.
    """
    import slicer
    import vtk

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    try:
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        image = slicer.vtkOrientedImageData()
        if own_copy:
            image.DeepCopy(labelmap.GetImageData())
        else:
            image.ShallowCopy(labelmap.GetImageData())
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetIJKToRASMatrix(matrix)
        image.SetImageToWorldMatrix(matrix)
        segment = slicer.vtkSegment()
        segment.SetName(label_name)
        segment.SetColor(*MASK_COLOR_RGB)
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(),
                                  image)
        segmentation.GetSegmentation().AddSegment(segment)
        attributes = dict(common)
        attributes.update(threshold_attributes)
        attributes["SegmentName"] = label_name
        _set_attributes(segmentation, attributes)
    except BaseException:
        remove_loaded_nodes(scene, [segmentation])
        raise
    return segmentation


# ------------------------------------------------------------------------------------------------
# Full-resolution export with the scene's option names (the same request and engine as the command line)
# ------------------------------------------------------------------------------------------------
def export_request(header: ScancoHeader, outputs=None, *, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
                   hu_dtype: str = "int16", compress: bool = True, overwrite: bool = False):
    """The :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` and node-role plan matching scene options,
    so the files hold what the nodes hold, at full resolution."""
    request = ConversionRequest(thresholds=threshold_spec_from(thresholds), density_unit=density_unit,
                                hu_dtype=hu_dtype, compress=bool(compress), overwrite=bool(overwrite))
    node_outputs = None if outputs is None else normalise_roles(outputs, NODE_ROLES)
    plan = plan_request(header, request, node_outputs=node_outputs, adapt_defaults=True, warn=lambda _t: None)
    return request, plan


def planned_export_files(path, out_dir, outputs=None, *, header: Optional[ScancoHeader] = None, **options):
    """Paths :func:`export_scan` would write (to ask before overwriting), metadata JSON included."""
    header = header or read_header(path)
    _request, plan = export_request(header, outputs, **options)
    stem = output_stem(header.path)
    return [p for f in plan_files(plan, Path(out_dir), stem) for p in f.paths] + \
        [Path(out_dir) / f"{stem}_metadata.json"]


def export_scan(path, out_dir, outputs=None, *, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
                hu_dtype: str = "int16", compress: bool = True, overwrite: bool = False,
                progress: Optional[ProgressCallback] = None, cancel=None,
                header: Optional[ScancoHeader] = None) -> Dict[str, object]:
    """Write the outputs of ``path`` in ``out_dir`` at full resolution, streamed slab by slab (never the
    whole volume in memory): ``{role: Path}`` as returned by :func:`~ScancoUnitsLib.pipeline.convert.convert_header`.
    Options have the meaning of :func:`load_scan_into_scene` (both mask roles map to the one mask file).
    ``progress(fraction)``; ``cancel`` as there: raises :class:`ConversionCancelled` and leaves no file.
    """
    header = header or read_header(path)
    request, plan = export_request(header, outputs, thresholds=thresholds, density_unit=density_unit,
                                   hu_dtype=hu_dtype, compress=compress, overwrite=overwrite)

    def on_progress(done: int, total: int):
        if progress is not None:
            progress(done / max(total, 1))
        return not _is_cancelled(cancel)

    if _is_cancelled(cancel):
        raise ConversionCancelled(header.path)
    result = convert_header(header, out_dir, request, progress=on_progress, plan=plan)
    return dict(result.outputs)


# ------------------------------------------------------------------------------------------------
# Options given to the Slicer file reader (slicer.util.loadNodeFromFile(path, "ScancoUnitsFile", props))
# ------------------------------------------------------------------------------------------------
def _as_bool(value) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a yes/no value, got {value!r}")
    return bool(value)


def reader_options_from_properties(properties, header: ScancoHeader) -> Dict[str, object]:
    """Keyword arguments for :func:`load_scan_into_scene` from a file reader's properties.

    Recognised keys (all optional): ``units`` / ``outputs`` (roles as a list or a space/comma separated
    string: hu density mu native mask_labelmap mask_segmentation; default HU, or native when the file has
    no HU calibration, or the labelmap for a SCANCO char mask), ``mask`` (True/"labelmap" adds the labelmap,
    "segmentation" the segmentation, "both" both), ``thresholds`` (``"250 1000 permille"``, a
    (low, high[, unit]) sequence or a dict), ``densityUnit`` ("mg HA/ccm" or "g/cc"), ``huDtype``,
    ``subsampleStep`` and ``name`` (base node name; Slicer's ``name`` property).
    """
    properties = dict(properties or {})
    units = properties.get("units", properties.get("outputs"))
    if units is None or units == "" or units == []:
        if header.is_mask:
            roles = ["mask_labelmap"]
        elif header.voxel_type.startswith("float"):
            roles = ["native"]
        else:
            roles = ["hu"] if header.calibration.has_hu else ["native"]
    else:
        roles = list(normalise_roles(units, NODE_ROLES))
    mask = properties.get("mask")
    if mask is not None and mask != "":
        choice = str(mask).strip().lower() if isinstance(mask, str) else mask
        if choice in ("labelmap", "segmentation", "both"):
            roles += {"labelmap": ["mask_labelmap"], "segmentation": ["mask_segmentation"],
                      "both": ["mask_labelmap", "mask_segmentation"]}[choice]
        elif _as_bool(choice):
            roles.append("mask_labelmap")
        else:
            roles = [r for r in roles if not r.startswith("mask_")] or roles
    options: Dict[str, object] = {"outputs": normalise_roles(roles, NODE_ROLES)}
    if properties.get("thresholds") not in (None, ""):
        options["thresholds"] = threshold_spec_from(properties["thresholds"])
    if properties.get("densityUnit"):
        canonical_density_unit(properties["densityUnit"])  # validate
        options["density_unit"] = properties["densityUnit"]
    if properties.get("huDtype"):
        options["hu_dtype"] = str(properties["huDtype"])
    if properties.get("subsampleStep") not in (None, ""):
        options["subsample_step"] = int(properties["subsampleStep"])
    if properties.get("name"):
        options["name"] = str(properties["name"])
    return options
