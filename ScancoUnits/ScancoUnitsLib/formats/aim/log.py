"""The AIM processing log: latin-1 text of ``key  value`` lines written by SCANCO IPL.

A key ends at the first run of two or more spaces; the value is the rest, trimmed. Lines starting
with ``!`` are comments. Keys repeat: each IPL step appends its own parameters and statistics.

Calibration keys (``Mu_Scaling``, ``HU: mu water``, ``Density: slope``, ``Density: intercept``,
``Density: unit``) occur once in SCANCO logs. The first occurrence is the value; a later occurrence
with a different value (numbers compared as numbers, so ``0.23660`` equals ``0.2366``; units compared
as units, so ``mgHA/ccm`` equals ``mg HA/ccm``) is recorded as a refusing
:class:`~ScancoUnitsLib.core.header.CalibrationConflict`. Two more cross-checks of ``Mu_Scaling``:

* ``Scaled by factor`` (statistics blocks: the factor that turned the data into the µ statistics).
  Only the **last** one is compared: each IPL step appends a statistics block, and earlier ones may
  describe a parent image. For an integer grey image (int16, uint16, int32) a different factor is a
  refusing conflict: the voxels were scaled by a factor other than the one the log gives. For char
  masks and float images it is only a warning (``refuses=False``): their voxels are never rescaled
  (masks) or no longer native units (floats), and their statistics routinely describe the grey parent
  (TRAB_1240_SEG, a binary mask, carries the grey image's statistics). In every real file seen so far
  (three AIMs) the factor equals Mu_Scaling.
* ``Calibration Data`` text naming ``Scaling N`` (``68 kVp, BH: 200 mg HA/ccm, Scaling 8192``): the
  scaling the calibration was made for. A different Mu_Scaling is a refusing conflict.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, List, Optional, Tuple

from ...core.header import (Calibration, CalibrationConflict, ScannerInfo, density_mg_per_unit, printable,
                     scaling_in_calibration_text)
from ..vms import log_date_to_iso

_KEY_VALUE = re.compile(r"^(\S(?:.*?\S)?)\s{2,}(.*?)\s*$")
KEY_COLUMN_WIDTH = 42

# log keys that carry calibration and scanner fields
MU_SCALING = "Mu_Scaling"
MU_WATER = "HU: mu water"
DENSITY_SLOPE = "Density: slope"
DENSITY_INTERCEPT = "Density: intercept"
DENSITY_UNIT = "Density: unit"
CALIBRATION_TYPE = "Calib. default unit type"
CALIBRATION_TEXT = "Calibration Data"
MAX_DATA_VALUE = "Maximum data value"
MIN_DATA_VALUE = "Minimum data value"
SCALED_BY_FACTOR = "Scaled by factor"

# voxel types whose native values are the scaled µ (Mu_Scaling vs Scaled by factor refuses for them)
_SCALED_INTEGER_TYPES = ("int16", "uint16", "int32")


def decode_log(raw: bytes) -> str:
    """Bytes of the log block -> text (up to the first NUL, latin-1, line ends normalised)."""
    text = raw.split(b"\x00", 1)[0].decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_log(text: str) -> Tuple[Tuple[str, str], ...]:
    """Ordered (key, value) pairs; comment and blank lines are skipped; a line without a double
    space becomes (line, "")."""
    items: List[Tuple[str, str]] = []
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped or stripped.startswith("!"):
            continue
        match = _KEY_VALUE.match(line.rstrip())
        if match and not line[:1].isspace():
            items.append((match.group(1), match.group(2)))
        else:
            items.append((stripped, ""))
    return tuple(items)


def _first(items, key) -> Optional[str]:
    for k, v in items:
        if k == key:
            return v
    return None


def _last(items, key) -> Optional[str]:
    found = None
    for k, v in items:
        if k == key:
            found = v
    return found


def _number(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    token = text.split()[0] if text.split() else ""
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _integer(text: Optional[str]) -> Optional[int]:
    value = _number(text)
    if value is None or value != int(value):
        return None
    return int(value)


def _stated_value(key: str, text: str):
    """The value a calibration line states, for comparison: a number, else the trimmed text."""
    if key == DENSITY_UNIT:
        return text.strip()
    number = _number(text)
    return number if number is not None else text.strip()


def _comparison_key(key: str, value):
    if key == DENSITY_UNIT:
        factor = density_mg_per_unit(value)
        return ("factor", factor) if factor is not None else ("text", "".join(value.split()).lower())
    return value


def _repeated_key_conflict(items, key: str, field: str) -> Optional[CalibrationConflict]:
    values, seen = [], set()
    for k, v in items:
        if k != key or not v.strip():
            continue
        value = _stated_value(key, v)
        token = _comparison_key(key, value)
        if token not in seen:
            seen.add(token)
            values.append(value)
    if len(values) < 2:
        return None
    return CalibrationConflict(field, tuple(values), (key,) * len(values))


def calibration_conflicts(items, mu_scaling: Optional[float], calibration_text: Optional[str],
                          voxel_type: Optional[str] = None) -> Tuple[CalibrationConflict, ...]:
    """Contradictions between the log's calibration statements (rules in the module docstring).
    ``voxel_type`` (numpy dtype name of the voxels; None: treated as an integer grey image) decides
    whether Mu_Scaling vs Scaled by factor refuses or only warns."""
    conflicts = []
    for key, field in ((MU_SCALING, "mu_scaling"), (MU_WATER, "mu_water_per_cm"),
                       (DENSITY_SLOPE, "density_slope"), (DENSITY_INTERCEPT, "density_intercept"),
                       (DENSITY_UNIT, "density_unit")):
        conflict = _repeated_key_conflict(items, key, field)
        if conflict is not None:
            conflicts.append(conflict)
    if mu_scaling is not None:
        factor = _number(_last(items, SCALED_BY_FACTOR))
        if factor is not None and factor != mu_scaling:
            conflicts.append(CalibrationConflict(
                "mu_scaling", (mu_scaling, factor), (MU_SCALING, f"last {SCALED_BY_FACTOR}"),
                refuses=voxel_type is None or voxel_type in _SCALED_INTEGER_TYPES))
        text_scaling = scaling_in_calibration_text(calibration_text)
        if text_scaling is not None and text_scaling != mu_scaling:
            conflicts.append(CalibrationConflict(
                "mu_scaling", (mu_scaling, text_scaling), (MU_SCALING, f"{CALIBRATION_TEXT} text")))
    return tuple(conflicts)


def calibration_from_log(items, voxel_type: Optional[str] = None) -> Calibration:
    """The first occurrence of each calibration key is its value; contradicting statements are
    recorded in ``conflicts`` (see the module docstring)."""
    mu_scaling = _number(_first(items, MU_SCALING))
    calibration_text = _first(items, CALIBRATION_TEXT) or None
    return Calibration(
        mu_scaling=mu_scaling,
        mu_water_per_cm=_number(_first(items, MU_WATER)),
        density_slope=_number(_first(items, DENSITY_SLOPE)),
        density_intercept=_number(_first(items, DENSITY_INTERCEPT)),
        density_unit=_first(items, DENSITY_UNIT) or None,
        calibration_type=_integer(_first(items, CALIBRATION_TYPE)),
        calibration_text=calibration_text,
        conflicts=calibration_conflicts(items, mu_scaling, calibration_text, voxel_type),
    )


def scanner_from_log(items) -> ScannerInfo:
    def date(key):
        value = _first(items, key)
        return log_date_to_iso(value) if value else None

    return ScannerInfo(
        scanner_id=_integer(_first(items, "Scanner ID")),
        scanner_type=_integer(_first(items, "Scanner type")),
        energy_v=_number(_first(items, "Energy [V]")),
        intensity_ua=_number(_first(items, "Intensity [uA]")),
        site=_integer(_first(items, "Site")),
        sample_holder=None,
        measurement_index=_integer(_first(items, "Index Measurement")),
        patient_index=_integer(_first(items, "Index Patient")),
        patient_name=_first(items, "Patient Name") or None,
        creation_date=date("Original Creation-Date"),
        modification_date=date("Time"),
    )


def data_range_from_log(items) -> Tuple[Optional[float], Optional[float]]:
    """(min, max) native data values of the most recent statistics block in the log."""
    return _number(_last(items, MIN_DATA_VALUE)), _number(_last(items, MAX_DATA_VALUE))


# ---- writing -----------------------------------------------------------------------------------------
def format_line(key: str, value) -> str:
    if isinstance(value, float):
        value = repr(value)
    # a value from a file or its name (a line break, ESC) is written visibly: one log line a key
    value = printable(str(value))
    if "\n" in key or "  " in key:
        raise ValueError(f"log key cannot contain newlines or double spaces: {key!r}")
    return f"{key:<{KEY_COLUMN_WIDTH - 1}}  {value}"


def calibration_lines(calibration: Calibration) -> List[Tuple[str, object]]:
    pairs: List[Tuple[str, object]] = []
    c = calibration
    if c.mu_scaling is not None:
        pairs.append((MU_SCALING, int(c.mu_scaling) if float(c.mu_scaling).is_integer() else c.mu_scaling))
    if c.calibration_text is not None:
        pairs.append((CALIBRATION_TEXT, c.calibration_text))
    if c.calibration_type is not None:
        label = " (Density)" if c.calibration_type == 2 else ""
        pairs.append((CALIBRATION_TYPE, f"{c.calibration_type}{label}"))
    if c.density_unit is not None or c.density_slope is not None:
        pairs.append((DENSITY_UNIT, c.density_unit or "mg HA/ccm"))
    if c.density_slope is not None:
        pairs.append((DENSITY_SLOPE, float(c.density_slope)))
    if c.density_intercept is not None:
        pairs.append((DENSITY_INTERCEPT, float(c.density_intercept)))
    if c.mu_water_per_cm is not None:
        pairs.append((MU_WATER, float(c.mu_water_per_cm)))
    return pairs


def scanner_lines(scanner: ScannerInfo) -> List[Tuple[str, object]]:
    s = scanner
    fields = [("Patient Name", s.patient_name), ("Index Patient", s.patient_index),
              ("Index Measurement", s.measurement_index), ("Site", s.site), ("Scanner ID", s.scanner_id),
              ("Scanner type", s.scanner_type),
              ("Energy [V]", None if s.energy_v is None else round(s.energy_v)),
              ("Intensity [uA]", None if s.intensity_ua is None else round(s.intensity_ua))]
    return [(k, v) for k, v in fields if v is not None]


def build_log(pairs: Iterable[Tuple[str, object]], *, created_by: str, time_text: str) -> str:
    lines = ["!", "! Processing Log", "!", "!" + "-" * 79,
             format_line("Created by", created_by), format_line("Time", time_text)]
    lines += [format_line(k, v) for k, v in pairs]
    lines.append("!" + "-" * 79)
    return "\n".join(lines) + "\n"


def replace_calibration(text: str, calibration: Calibration) -> str:
    """Return ``text`` with every calibration line replaced by the given calibration (appended
    where the log had none)."""
    keys = {MU_SCALING, CALIBRATION_TEXT, CALIBRATION_TYPE, DENSITY_UNIT, DENSITY_SLOPE,
            DENSITY_INTERCEPT, MU_WATER}
    kept = []
    for line in text.rstrip("\n").split("\n") if text else []:
        match = _KEY_VALUE.match(line.rstrip())
        if match and not line[:1].isspace() and match.group(1) in keys:
            continue
        kept.append(line)
    kept += [format_line(k, v) for k, v in calibration_lines(calibration)]
    return "\n".join(kept) + "\n"
