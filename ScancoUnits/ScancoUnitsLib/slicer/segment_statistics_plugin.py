"""A Segment Statistics plugin (Slicer's SegmentStatistics module) reporting vBMD, BV/TV and TMD of a
segment by the same code as the command line (:func:`~ScancoUnitsLib.slicer.region_segments.segment_statistics`).

Written against Slicer's ``SegmentStatisticsPlugins.SegmentStatisticsPluginBase`` (name, title, keys,
defaultKeys, ``computeStatistics(segmentID) -> {key: value}``, ``getMeasurementInfo(key)``; the
segmentation is the logic's parameter ``Segmentation``; the ``ScalarVolume`` is not used: the native
values are read from the segmentation's SCANCO file). The bone mask's thresholds are the Scanco Units
panel's (its parameter node in the scene), else the library's defaults. :func:`register` adds the
plugin at startup when the SegmentStatistics module is present; the class is made from the base
given (:func:`plugin_class`), so importing this module needs neither Slicer nor Qt.
"""

from __future__ import annotations

import logging

from ..core.quantities import QUANTITIES

logger = logging.getLogger(__name__)

_DENSITY = QUANTITIES["density_mg_ha_ccm"].unit_label
#: key -> (RegionStatistics field, title, units)
MEASUREMENTS = {
    "vbmd_mg_ha_ccm": ("vbmd_mg_ha_ccm", "vBMD", _DENSITY),
    "vbmd_sd_mg_ha_ccm": ("vbmd_sd_mg_ha_ccm", "vBMD SD", _DENSITY),
    "bv_tv": ("bv_tv", "BV/TV", "1"),
    "tmd_mg_ha_ccm": ("tmd_mg_ha_ccm", "TMD", _DENSITY),
    "tmd_sd_mg_ha_ccm": ("tmd_sd_mg_ha_ccm", "TMD SD", _DENSITY),
    "bone_voxels": ("bone_voxels", "bone voxels", "voxels"),
}
DEFAULT_KEYS = ("vbmd_mg_ha_ccm", "bv_tv", "tmd_mg_ha_ccm")
MODULE_NAME = "ScancoUnits"


def panel_thresholds(scene):
    """``(low, high, unit)`` of the Scanco Units panel's parameter node in ``scene``, or None."""
    nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute("ModuleName") != MODULE_NAME:
            continue
        low, high, unit = (node.GetParameter(k) for k in ("lowerThreshold", "upperThreshold", "thresholdUnit"))
        if low and high and unit:
            from .panel import threshold_spec

            return threshold_spec(float(low), float(high), unit)
    return None


_CLASSES = {}


def plugin_class(base):
    """The plugin class derived from ``base`` (Slicer's SegmentStatisticsPluginBase), made once per base
    (registerPlugin refuses a class registered before)."""
    if base in _CLASSES:
        return _CLASSES[base]

    class ScancoUnitsSegmentStatisticsPlugin(base):
        """vBMD, BV/TV, TMD of segments on a SCANCO scan (the command line's numbers)."""

        def __init__(self):
            super().__init__()
            self.name = "SCANCO bone"
            self.title = "SCANCO bone"
            self.keys = list(MEASUREMENTS)
            self.defaultKeys = list(DEFAULT_KEYS)

        def computeStatistics(self, segmentID):  # noqa: N802 - Slicer's interface
            import slicer

            from ..errors import ScancoError
            from .region_segments import segment_statistics

            requested = self.getRequestedKeys()
            if not requested:
                return {}
            scene = slicer.mrmlScene
            segmentation = scene.GetNodeByID(self.getParameterNode().GetParameter("Segmentation"))
            try:
                result = segment_statistics(segmentation, [segmentID], thresholds=panel_thresholds(scene))
            except ScancoError as exc:   # not on a SCANCO scan, off its grid: no values, one line in the log
                logger.warning("ScancoUnits segment statistics: %s", " ".join(str(exc).split()))
                return {}
            region = result.regions[0]
            return {k: getattr(region, MEASUREMENTS[k][0]) for k in requested
                    if getattr(region, MEASUREMENTS[k][0]) is not None}

        def getMeasurementInfo(self, key):  # noqa: N802 - Slicer's interface
            if key not in MEASUREMENTS:
                return None
            _, title, units = MEASUREMENTS[key]
            return self.createMeasurementInfo(key, title, f"{title} of the segment on its SCANCO scan (thresholds "
                                                          "of the Scanco Units panel), as the command line's --roi",
                                              units)

    _CLASSES[base] = ScancoUnitsSegmentStatisticsPlugin
    return ScancoUnitsSegmentStatisticsPlugin


def register() -> bool:
    """Register the plugin with SegmentStatistics when that module is there (True when registered)."""
    try:
        from SegmentStatistics import SegmentStatisticsLogic
        from SegmentStatisticsPlugins import SegmentStatisticsPluginBase
    except ImportError:
        return False
    try:
        SegmentStatisticsLogic.registerPlugin(plugin_class(SegmentStatisticsPluginBase)())
    except Exception as exc:  # pragma: no cover - depends on the Slicer build
        logger.warning("ScancoUnits: Segment Statistics plugin not registered: %s", exc)
        return False
    return True
