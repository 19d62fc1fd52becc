"""Options given to the Slicer file reader (``slicer.util.loadNodeFromFile(path, "ScancoUnitsFile", props)``).

:func:`reader_options_from_properties` turns the reader's properties into keyword arguments of
:func:`~ScancoUnitsLib.slicer.loading.load_scan_into_scene`: a drop gives one volume (HU, or native values for
an uncalibrated file, a labelmap for a SCANCO char mask), scripting asks for more.
:func:`drop_calibration_problem` says when such a load gives native values of a file that has no calibration.
"""

from __future__ import annotations

from typing import Dict

from ..core.header import ScancoHeader
from ..core.quantities import CALIBRATED_ROLES, NODE_ROLES, canonical_density_unit
from ..pipeline.request import normalise_roles, threshold_spec_from
from ..pipeline.summaries import calibration_warning


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
    """Keyword arguments for :func:`~ScancoUnitsLib.slicer.loading.load_scan_into_scene` from a file reader's properties.

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


def drop_calibration_problem(header: ScancoHeader, options) -> str:
    """What is missing from the calibration of a grey-value file loaded without any calibrated output
    (``options``: as :func:`reader_options_from_properties` gives them), or "" (calibrated, a mask, or a
    calibrated output was asked for, which fails on its own)."""
    problem = calibration_warning(header)
    if problem and not header.is_mask and not any(r in CALIBRATED_ROLES for r in options["outputs"]):
        return problem
    return ""
