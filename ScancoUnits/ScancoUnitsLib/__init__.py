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
    "ScancoHeader": "header",
    "Calibration": "header",
    "ScannerInfo": "header",
    "read_header": "reader",
    "iter_slabs": "reader",
    "read_volume": "reader",
    "open_voxels": "reader",
    "write_isq": "isq_format",
    "write_aim": "aim_format",
    "UnitConverter": "units",
    "permille_to_native": "thresholds",
    "ThresholdSpec": "thresholds",
    "resolve_thresholds": "thresholds",
    "ResolvedThresholds": "thresholds",
    "NrrdVolumeWriter": "nrrd_writer",
    "write_nrrd": "nrrd_writer",
    "AtomicOutputSet": "atomic_output",
    "OutputError": "atomic_output",
    "OutputExistsError": "atomic_output",
    "convert_file": "convert",
    "convert_header": "convert",
    "ConversionOptions": "convert",
    "load_scan_into_scene": "scene",
    "NiftiVolumeWriter": "nifti_writer",
    "AimVolumeWriter": "aim_writer",
    "save_mask_as_aim": "mask_aim",
    "FileResult": "batch",
    "Batch": "batch",
    "convert_one": "batch",
    "discover": "discovery",
    "ScanStatistics": "scan_statistics",
    "write_summary_csv": "batch_summary",
    "run_on_dask": "dask_batch",
    "to_dask": "lazy_volume",
    "read_gobj": "gobj_format",
    "read_region": "regions",
    "PlacedRegion": "regions",
    "region_statistics": "region_measures",
    "RegionStatistics": "region_measures",
    "RegionStatisticsResult": "region_measures",
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
