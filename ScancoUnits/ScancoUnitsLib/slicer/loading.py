"""Load a SCANCO file into a MRML scene: :func:`load_scan_into_scene` and :func:`load_scan`.

The same :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` and
:func:`~ScancoUnitsLib.pipeline.request.plan_request` as the command line decide what is made; the same
:func:`~ScancoUnitsLib.pipeline.engine.run_engine` fills the nodes' own arrays (converting straight into them
at full resolution, or through a sampling sink for every n-th voxel or a region); with ``export_dir`` the same
pass also writes the files (:func:`~ScancoUnitsLib.pipeline.convert.convert_header`), so the file is read once.
The steps: plan the load (:class:`_LoadJob`, before any node exists), make the nodes
(:mod:`~ScancoUnitsLib.slicer.nodes`), fill them in one pass, record what the pass found, then display,
colours and segmentation; any failure removes every node made so far. Slicer is imported inside the
functions only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import defaults
from ..core.header import ScancoHeader
from ..core.quantities import NODE_ROLES, QUANTITIES
from ..core.units import UnitConverter
from ..errors import ConversionCancelled
from ..formats.reader import open_voxels, read_header
from ..pipeline.convert import convert_header, mask_coverage_warning
from ..pipeline.engine import EngineOutput, run_engine, slab_slices_for
from ..pipeline.histogram import NativeHistogram
from ..pipeline.request import ConversionRequest, RequestPlan, normalise_roles, plan_request, threshold_spec_from
from ..pipeline.sampling import SamplingPlan, ijk_to_ras_matrix, plan_sampling
from ..pipeline.summaries import _fmt, display_range, segment_name
from . import memory_fit
from .node_attributes import attribute_name, set_attributes
from .nodes import (
    calibration_attributes,
    configure_scalar_display,
    mask_color_node,
    new_segment_image,
    new_volume_node,
    place_in_subject_hierarchy,
    remove_loaded_nodes,
    sampling_attributes,
    segmentation_from_labelmap,
    set_voxel_value_units,
    threshold_attributes,
)

logger = logging.getLogger(__name__)

#: every role :func:`load_scan_into_scene` can create, in creation order
ROLES = NODE_ROLES

ProgressCallback = Callable[[float], None]


def is_cancelled(cancel) -> bool:
    """True when ``cancel`` (None, a callable or a threading.Event) asks to stop."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return bool(is_set())
    return bool(cancel())


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


class _SecondArraySink:
    """Engine sink for a second full-resolution array of one output (the segment's own copy of the mask):
    the conversion workers copy each slab, or piece of rows, in at its place while it is still in their
    cache (``write_at``, as they write raw files), instead of one copy of the whole array after the pass."""

    accepts_rows = True

    def __init__(self, array: np.ndarray, z_first: int):
        self.array = array
        self.z_first = z_first

    def write_at(self, z, slab, row0: int = 0) -> None:
        first = z.start - self.z_first
        np.copyto(self.array[first:first + len(z), row0:row0 + slab.shape[1]], slab)

    def write(self, z, slab) -> None:
        self.write_at(z, slab)

    def write_rows(self, z, y0, slab) -> None:
        self.write_at(z, slab, row0=y0)


def load_scan_into_scene(scene, path, *, outputs=None, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
                         hu_dtype: str = defaults.HU_DTYPE, subsample_step=1, region=None, name: Optional[str] = None,
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


@dataclass
class _LoadJob:
    """What a load will make, decided before any node exists (the plan, the grid, names and attributes)."""

    header: ScancoHeader
    request: ConversionRequest
    node_outputs: Optional[Tuple[str, ...]]
    plan: RequestPlan
    sampling: SamplingPlan
    slab_slices: int
    char_mask: bool
    label_name: str
    base: str
    common: Dict[str, object]
    threshold_attributes: Dict[str, object]

    @property
    def roles(self):
        return self.plan.node_roles

    @property
    def resolved(self):
        return self.plan.thresholds

    @property
    def full(self) -> bool:
        """The nodes hold every voxel of the file (the engine converts straight into their arrays)."""
        return self.sampling.is_full and self.sampling.stop_xyz == tuple(self.header.dimensions)

    @property
    def z_first(self) -> int:
        return self.sampling.start_xyz[2]


def _plan_load(header: ScancoHeader, *, outputs, thresholds, density_unit, hu_dtype, slab_slices, compress,
               overwrite, subsample_step, region, name, check_memory, warning) -> _LoadJob:
    explicit_thresholds = thresholds is not None
    request = ConversionRequest(thresholds=threshold_spec_from(thresholds), density_unit=density_unit,
                                hu_dtype=hu_dtype, slab_slices=slab_slices, compress=bool(compress),
                                overwrite=bool(overwrite))
    node_outputs = None if outputs is None else normalise_roles(outputs, NODE_ROLES)
    plan = plan_request(header, request, node_outputs=node_outputs, adapt_defaults=True, warn=warning)
    sampling = plan_sampling(header, subsample_step=subsample_step, region=region)
    if check_memory:
        memory_fit.require_memory_fit(header, plan.node_roles, subsample_step=subsample_step, region=region,
                                      hu_dtype=hu_dtype)
    if slab_slices is None:   # the engine's slab (about 1 Mi voxels of whole file slices, whatever the sampling)
        slab_slices = max(1, min(sampling.shape_zyx[0], slab_slices_for(header)))
    char_mask = plan.output("mask") is not None and plan.output("mask").quantity == "char_mask"
    spec = request.threshold_spec
    label_name = "Mask (non-zero voxels)" if char_mask else segment_name(spec)
    base = name or os.path.splitext(os.path.basename(header.path).split(";")[0])[0] or "SCANCO"
    common = calibration_attributes(header)
    common.update(sampling_attributes(sampling, header))
    return _LoadJob(header, request, node_outputs, plan, sampling, slab_slices, char_mask, label_name, base, common,
                    threshold_attributes(spec, plan.thresholds, explicit=explicit_thresholds, header=header,
                                         char_mask=char_mask))


def _allocate_nodes(scene, job: _LoadJob, created: list):
    """One node per planned output, each node array a sink of its output: ``(nodes, engine outputs,
    segment image or None)``. With both mask nodes asked for, the segment's own image (its voxels never
    shared with the labelmap node) is a second sink of the mask, filled by the same pass."""
    header, sampling = job.header, job.sampling
    ijk_to_ras = ijk_to_ras_matrix(header, sampling)
    shape = sampling.shape_zyx
    nodes: Dict[str, object] = {}
    engine_outputs: Dict[str, EngineOutput] = {}
    segment_image = None
    for out in job.plan.outputs:
        quantity = QUANTITIES[out.quantity]
        if out.role == "mask":
            node, array = new_volume_node(scene, "vtkMRMLLabelMapVolumeNode", f"{job.base} mask",
                                          np.uint8, shape, ijk_to_ras)
            attributes = dict(job.common)
            attributes.update(job.threshold_attributes)
            attributes["SegmentName"] = job.label_name
        else:
            node, array = new_volume_node(scene, "vtkMRMLScalarVolumeNode", f"{job.base} {quantity.node_suffix}",
                                          out.dtype, shape, ijk_to_ras)
            attributes = dict(job.common)
            attributes.update({"Quantity": out.quantity, "Unit": quantity.unit_label})
            if quantity.is_calibrated:
                entry = UnitConverter(header.calibration).describe()["quantities"][out.quantity]
                attributes.update({"Formula": entry["formula"], "Scale": _fmt(entry["scale"], 17),
                                   "Offset": _fmt(entry["offset"], 17)})
        created.append(node)
        set_attributes(node, attributes)
        if out.role != "mask":
            set_voxel_value_units(node, out.quantity)
        nodes[out.role] = node
        sinks = [_DirectArraySink(array, job.z_first) if job.full else _SampledArraySink(array, sampling)]
        if out.role == "mask" and {"mask_labelmap", "mask_segmentation"} <= set(job.roles):
            segment_image, segment_array = new_segment_image(shape, ijk_to_ras)
            sinks.append(_SecondArraySink(segment_array, job.z_first) if job.full
                         else _SampledArraySink(segment_array, sampling))
        engine_outputs[out.role] = EngineOutput(out.role, out.quantity, out.dtype, sinks,
                                                target=array if job.full else None)
    return nodes, engine_outputs, segment_image


def _fill_nodes(job: _LoadJob, engine_outputs, *, hu_dtype, progress, cancel, export_dir, histogram, warning):
    """Fill the node arrays in one pass over the file (writing the export files too when asked).

    Returns ``(native histogram or None, exported result or None, engine result or None)``."""
    header, sampling = job.header, job.sampling
    observers = []
    native_histogram = None
    if histogram:
        native_histogram = NativeHistogram(header.voxel_type)
        observers.append(lambda z0, native, views: native_histogram.accumulate(native))
    total_fraction = 0.95

    def on_progress(done: int, total: int):
        if progress is not None:
            progress(done / max(total, 1) * total_fraction)
        return not is_cancelled(cancel)

    if is_cancelled(cancel):
        raise ConversionCancelled(header.path)
    if export_dir is not None:
        extra = {role: o.sinks for role, o in engine_outputs.items()}
        exported = convert_header(header, export_dir, job.request, progress=on_progress, observers=observers,
                                  cancel=cancel, extra_sinks=extra,
                                  plan=plan_request(header, job.request, node_outputs=job.node_outputs,
                                                    adapt_defaults=True))
        return native_histogram, exported, None
    z_selection = range(job.z_first, sampling.stop_xyz[2], sampling.step_xyz[2])
    with open_voxels(header) as source:
        result = run_engine(header, source, list(engine_outputs.values()), thresholds=job.resolved,
                            hu_dtype=hu_dtype, slab_slices=job.slab_slices, z_selection=z_selection,
                            observers=observers, progress=on_progress, cancel=cancel)
    for text in result.warnings:  # the voxel data is not what the header says (over-long stream...)
        warning(text)
    return native_histogram, None, result


def _record_pass_findings(job: _LoadJob, nodes, exported, result, *, hu_dtype, warning) -> None:
    """What the pass found, on the nodes and as warnings: HU voxels clipped to int16, a mask that covers
    little or everything."""
    stats = result.statistics if result is not None else None
    path = job.header.path
    clipped = stats["hu"].hu_clipped_voxels if stats and "hu" in stats else 0
    if exported is not None:
        clipped = exported.metadata.get("hu_clipped_voxels") or 0
    if "hu" in nodes and hu_dtype == "int16" and clipped:
        nodes["hu"].SetAttribute(attribute_name("HUClippedVoxels"), str(clipped))
        warning(f"{os.path.basename(path)}: {clipped} voxels were clipped to the int16 HU "
                "range; load with hu_dtype='float32' to keep them")
    mask_voxels = stats["mask"].mask_voxels if stats and "mask" in stats else None
    if exported is not None and "mask" in nodes:
        mask_voxels = exported.metadata.get("mask_voxels")
    if mask_voxels is not None and job.resolved is not None and not job.char_mask and job.full:
        native_range = (result.native_min, result.native_max) if stats else \
            tuple(exported.metadata.get("native_range") or (None, None))
        text = mask_coverage_warning(job.header, job.plan, mask_voxels, *native_range)
        if text:
            nodes["mask"].SetAttribute(attribute_name("MaskWarning"), text)
            warning(text)


def _finish_nodes(scene, job: _LoadJob, nodes, created: list, segment_image=None):
    """Display, labelmap colours and the segmentation (its segment ``segment_image`` when the pass
    filled one); the mask labelmap goes when only its segmentation was asked for. Returns the list of
    created nodes still in the scene."""
    header, roles = job.header, job.roles
    for role in ("hu", "density", "mu", "native"):
        if role in nodes:
            nodes[role].GetImageData().Modified()
            configure_scalar_display(nodes[role], display_range(header, job.plan.output(role).quantity, job.resolved))
    mask_node = nodes.pop("mask", None)
    if mask_node is None:
        return created
    mask_node.GetImageData().Modified()
    color = mask_color_node(scene, f"{job.base} mask", job.label_name)
    created.append(color)
    display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    created.append(display)
    display.SetAndObserveColorNodeID(color.GetID())
    mask_node.SetAndObserveDisplayNodeID(display.GetID())
    if "mask_segmentation" in roles:
        segmentation = segmentation_from_labelmap(scene, mask_node, f"{job.base} mask segmentation",
                                                  job.label_name, job.common, job.threshold_attributes,
                                                  own_copy="mask_labelmap" in roles, image=segment_image)
        created.append(segmentation)
        nodes["mask_segmentation"] = segmentation
    if "mask_labelmap" in roles:
        nodes["mask_labelmap"] = mask_node
    else:  # only needed as the segmentation's source
        remove_loaded_nodes(scene, [mask_node])
        created = [n for n in created if n not in (mask_node, display, color)]
    return created


def load_scan(scene, path, *, outputs=None, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
              hu_dtype: str = defaults.HU_DTYPE, subsample_step=1, region=None, name: Optional[str] = None,
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
    if slab_slices is not None and slab_slices < 1:
        raise ValueError("slab_slices must be >= 1")
    job = _plan_load(header, outputs=outputs, thresholds=thresholds, density_unit=density_unit, hu_dtype=hu_dtype,
                     slab_slices=slab_slices, compress=compress, overwrite=overwrite,
                     subsample_step=subsample_step, region=region, name=name, check_memory=check_memory,
                     warning=warning)
    created = []      # every node added to the scene, for clean-up
    try:
        nodes, engine_outputs, segment_image = _allocate_nodes(scene, job, created)
        native_histogram, exported, result = _fill_nodes(job, engine_outputs, hu_dtype=hu_dtype, progress=progress,
                                                         cancel=cancel, export_dir=export_dir,
                                                         histogram=histogram, warning=warning)
        _record_pass_findings(job, nodes, exported, result, hu_dtype=hu_dtype, warning=warning)
        created = _finish_nodes(scene, job, nodes, created, segment_image)
        if progress is not None:
            progress(1.0)
        place_in_subject_hierarchy(scene, f"{job.base} (SCANCO)", [nodes[r] for r in ROLES if r in nodes])
    except BaseException:
        remove_loaded_nodes(scene, list(reversed(created)))
        raise
    ordered = {role: nodes[role] for role in ROLES if role in nodes}
    return LoadResult(ordered, exported, native_histogram, given_warnings, job.plan)


def check_load(header: ScancoHeader, outputs=None, *, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
               subsample_step=1, region=None, hu_dtype: str = defaults.HU_DTYPE):
    """Raise when a load of ``header``'s file with these options would be refused, before anything is read:
    an output the calibration cannot give (as :func:`load_scan` would), or nodes that do not fit in the
    memory available (:class:`~ScancoUnitsLib.slicer.memory_fit.InsufficientMemoryError`). Returns
    :func:`~ScancoUnitsLib.slicer.memory_fit.require_memory_fit`'s answer."""
    request = ConversionRequest(thresholds=threshold_spec_from(thresholds), density_unit=density_unit,
                                hu_dtype=hu_dtype)
    node_outputs = None if outputs is None else normalise_roles(outputs, NODE_ROLES)
    plan = plan_request(header, request, node_outputs=node_outputs, adapt_defaults=True, warn=lambda _t: None)
    return memory_fit.require_memory_fit(header, plan.node_roles, subsample_step=subsample_step, region=region,
                                         hu_dtype=hu_dtype)
