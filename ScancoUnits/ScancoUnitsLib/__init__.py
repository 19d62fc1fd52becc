"""ScancoUnitsLib: read SCANCO ISQ/AIM files and turn them into calibrated volumes.

Numpy only; no Qt, CTK or Slicer imports. Public names are loaded on first use so that importing the
package stays cheap (``import ScancoUnitsLib`` does not import the NRRD writer or the scene code).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ScancoError": "errors",
    "ScancoFormatError": "errors",
    "CalibrationMissingError": "errors",
    "ScancoHeader": "core.header",
    "Calibration": "core.header",
    "ScannerInfo": "core.header",
    "read_header": "formats.reader",
    "iter_slabs": "formats.reader",
    "read_volume": "formats.reader",
    "open_voxels": "formats.reader",
    "write_isq": "formats.isq",
    "write_aim": "formats.aim.format",
    "UnitConverter": "core.units",
    "permille_to_native": "core.thresholds",
    "ThresholdSpec": "core.thresholds",
    "resolve_thresholds": "core.thresholds",
    "ResolvedThresholds": "core.thresholds",
    "NrrdVolumeWriter": "formats.nrrd",
    "write_nrrd": "formats.nrrd",
    "AtomicOutputSet": "io.transaction",
    "OutputError": "io.transaction",
    "OutputExistsError": "io.transaction",
    "convert_file": "pipeline.convert",
    "convert_header": "pipeline.convert",
    "ConversionRequest": "pipeline.request",
    "load_scan_into_scene": "slicer.scene",
    "NiftiVolumeWriter": "formats.nifti",
    "AimVolumeWriter": "formats.aim.writer",
    "save_mask_as_aim": "slicer.mask_aim",
    "FileResult": "batch.jobs",
    "Batch": "batch.jobs",
    "convert_one": "batch.jobs",
    "discover": "batch.discovery",
    "ScanStatistics": "pipeline.statistics",
    "write_summary_csv": "batch.summary",
    "run_on_dask": "batch.dask",
    "to_dask": "pipeline.lazy",
    "read_gobj": "formats.gobj",
    "read_region": "formats.regions",
    "PlacedRegion": "formats.regions",
    "region_statistics": "pipeline.region_measures",
    "RegionStatistics": "pipeline.region_measures",
    "RegionStatisticsResult": "pipeline.region_measures",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'ScancoUnitsLib' has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
