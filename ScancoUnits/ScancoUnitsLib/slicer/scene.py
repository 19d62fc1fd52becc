"""Put a SCANCO file into a 3D Slicer MRML scene as calibrated volumes, a mask labelmap and a segmentation.

:func:`load_scan_into_scene` is the one entry point the Slicer module (widget, logic, file reader)
calls; everything it does is testable headless with the ``slicer-core`` wheel (``slicer.vtkMRMLScene()``).
Slicer and VTK are imported inside the functions only, so ``import ScancoUnitsLib.slicer.scene`` works
anywhere.

This module is the front of the scene code, which lives by concern in: :mod:`~ScancoUnitsLib.slicer.loading`
(the load: plan, nodes filled in one pass, clean-up), :mod:`~ScancoUnitsLib.slicer.nodes` (node creation,
attributes, display, removal), :mod:`~ScancoUnitsLib.slicer.node_attributes` (the attribute names),
:mod:`~ScancoUnitsLib.slicer.export` (full-resolution files), :mod:`~ScancoUnitsLib.slicer.reader_options` (the
file reader's properties) and :mod:`~ScancoUnitsLib.pipeline.summaries` (the panel's texts); every public name
of those stays importable from here. What the file reader claims (by name, then magic) is decided here.
Geometry: see :mod:`~ScancoUnitsLib.pipeline.sampling`. Node units, suffixes and labels come from
:mod:`~ScancoUnitsLib.core.quantities`.
"""

from __future__ import annotations

import os

from .. import defaults  # noqa: F401 - public here (tests read scene.defaults)
from ..errors import ConversionCancelled  # noqa: F401 - public here
from ..formats.reader import sniff_format
from ..pipeline.sampling import SamplingPlan, ijk_to_ras_matrix, plan_sampling  # noqa: F401 - public here
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
from .export import existing_export_files, export_request, export_scan, planned_export_files  # noqa: F401
from .loading import (  # noqa: F401 - public here
    ROLES,
    LoadResult,
    ProgressCallback,
    check_load,
    is_cancelled,
    load_scan,
    load_scan_into_scene,
)
from .node_attributes import ATTRIBUTE_PREFIX  # noqa: F401 - public here
from .nodes import MASK_COLOR_RGB, remove_loaded_nodes  # noqa: F401 - public here
from .reader_options import drop_calibration_problem, reader_options_from_properties  # noqa: F401


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
