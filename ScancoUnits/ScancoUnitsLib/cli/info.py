"""Human-readable summary of a header (``scanco-units info``), the data range and thresholds in every unit.

:func:`format_thresholds` (a :class:`~ScancoUnitsLib.core.thresholds.ResolvedThresholds` in every unit) and
:func:`thresholds_text` (what given thresholds mean for one file, refusals included) are the one place
where thresholds are written out for people: ``info --low/--high`` and a batch's plan use them.
"""

from __future__ import annotations

from ..errors import CalibrationMissingError, RequestError
from .. import defaults
from ..core.header import Calibration, ScancoHeader, printable
from ..core.quantities import UNIT_LABELS, threshold_unit_label
from ..core.thresholds import VALUE_UNITS, ResolvedThresholds, ThresholdSpec, permille_of_native, resolve_thresholds
from ..core.units import UnitConverter

# the data range of ``info``: the four units (per mille, native, HU, mg HA/ccm)
_RANGE_UNITS = ("permille", "native", "hu", "density_mg_ha_ccm")


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "not available"
    if isinstance(value, float):
        text = f"{value:.10g}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _density_unit_line(c: Calibration) -> str:
    factor = c.density_mg_per_unit
    if c.density_unit_assumed:
        return f"not in the file (taken as {defaults.FILE_DENSITY_UNIT_WHEN_ABSENT})"
    if factor is None:
        return f"{c.density_unit!r} (not a density unit: no density output)"
    return f"{c.density_unit} ({factor:g} mg HA/ccm per unit)"


def format_header_summary(header: ScancoHeader) -> str:
    h, c, s = header, header.calibration, header.scanner
    x, y, z = h.dimensions
    lines = [
        f"File:            {h.path}",
        f"Format:          {h.format} ({h.version}), {h.data_type_name}"
        + (f", {h.compression} compressed" if h.compression else ""),
        f"Dimensions:      {x} x {y} x {z} voxels (x, y, z)",
        "Voxel size:      " + " x ".join(f"{v:.8g}" for v in h.voxel_size_mm) + " mm",
        "Position:        " + " ".join(str(p) for p in h.position_voxels) + " voxels",
        "Origin:          " + " ".join(f"{v:.8g}" for v in h.origin_mm) + " mm (ITK convention)",
        f"Voxel type:      {h.voxel_type}, data at byte {h.data_offset} ({h.data_size} bytes)",
    ]
    if any(h.border_voxels):
        lines.append("Border (off):    " + " ".join(str(b) for b in h.border_voxels) + " voxels")
    lines += [
        "Calibration:",
        f"  mu scaling:        {_fmt(c.mu_scaling)}",
        f"  mu water:          {_fmt(c.mu_water_per_cm, '1/cm')}",
        f"  density slope:     {_fmt(c.density_slope, (c.density_unit or 'density') + ' per 1/cm')}",
        f"  density intercept: {_fmt(c.density_intercept, c.density_unit or '')}",
        f"  density unit:      {_density_unit_line(c)}",
        f"  calibration type:  {_fmt(c.calibration_type)}",
        f"  calibration text:  {_fmt(c.calibration_text)}",
    ]
    for conflict in c.conflicts:
        if conflict.refuses:
            lines.append(f"  CONFLICT: {conflict.describe()} (no {', '.join(conflict.quantities)} output)")
        else:
            lines.append(f"  WARNING: {conflict.describe()} (not used: {h.voxel_type} voxels are not rescaled "
                         f"by it)")
    for quantity, label in (("hu", "HU"), ("density", "density")):
        missing = c.missing_for(quantity)
        if missing:
            lines.append(f"  WARNING: no {label} output possible: missing {', '.join(missing)}")
    lines += [
        "Scanner:",
        f"  scanner id / type: {_fmt(s.scanner_id)} / {_fmt(s.scanner_type)}",
        f"  energy:            {_fmt(s.energy_v, 'V')}",
        f"  intensity:         {_fmt(s.intensity_ua, 'uA')}",
        f"  site:              {_fmt(s.site)}",
        f"  sample holder:     {_fmt(s.sample_holder)}",
        f"  patient:           {_fmt(s.patient_name)} (index {_fmt(s.patient_index)})",
        f"  measurement index: {_fmt(s.measurement_index)}",
        f"  created:           {_fmt(s.creation_date)}",
        f"  modified:          {_fmt(s.modification_date)}",
    ]
    if h.processing_log_items:
        lines.append(f"Processing log:  {len(h.processing_log_items)} entries (--json shows them all)")
    # the strings come from the file (and its name): no raw control character or escape sequence;
    # the data range is our own multi-line text of numbers
    return "\n".join([printable(line) for line in lines] + [format_data_range(h)])


def _number(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _pair(pair) -> str:
    return "not available" if pair is None else f"{_number(pair[0])} .. {_number(pair[1])}"


def _unit_name(unit: str) -> str:
    return {"permille": "per mille", "native": "native"}.get(unit, UNIT_LABELS.get(unit, unit))


def native_range_in_units(header: ScancoHeader, low, high, units=_RANGE_UNITS) -> dict:
    """``{unit: (low, high) or None}``: native values in per mille (IPL: native / 32.767), native and
    the calibrated units the file can give (None where it cannot, and for char and float data)."""
    converter = UnitConverter(header.calibration, path=header.path)
    rescaled = not header.voxel_type.startswith("float") and header.voxel_type not in ("int8", "uint8")
    out = {}
    for unit in units:
        if unit == "native":
            out[unit] = (low, high)
        elif not rescaled:
            out[unit] = None
        elif unit == "permille":
            out[unit] = (permille_of_native(low), permille_of_native(high))
        elif converter.can_convert(unit):
            out[unit] = tuple(float(converter.native_to(v, unit)) for v in (low, high))
        else:
            out[unit] = None
    return out


def format_data_range(header: ScancoHeader) -> str:
    """The header's data range (its Minimum/Maximum data value) in per mille, native, HU and mg HA/ccm."""
    low, high = header.raw_field("min_data_value"), header.raw_field("max_data_value")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
        return "Data range:      not in the header"
    lines = ["Data range:      from the header's Minimum/Maximum data value"]
    if header.voxel_type in ("int8", "uint8"):
        lines[0] += (" (a SCANCO mask: its voxels are 0 / non-zero; the range is the grey image's it was "
                     "made from)")
    elif header.voxel_type.startswith("float"):
        lines[0] += " (float data: values as stored, not rescaled)"
    for unit, pair in native_range_in_units(header, low, high).items():
        if pair is None and unit != "native":
            continue
        lines.append(f"  {_unit_name(unit) + ':':18s} {_pair(pair)}")
    return "\n".join(lines)


def format_thresholds(resolved: ResolvedThresholds, indent: str = "  ") -> str:
    """Resolved thresholds in every unit, e.g. for ``info --low/--high`` and a batch's plan::

        Thresholds:      120 .. 1000 per mille -> mask native 3932 <= native <= 32767 (int16)
          per mille:         119.996 .. 1000
          native:            3932 .. 32767
          ...
    """
    spec = resolved.spec
    unit = threshold_unit_label(spec.unit, "mgHA/ccm")  # a bare "density" spec is mg HA/ccm
    lines = [f"Thresholds:      {_number(float(spec.low))} .. {_number(float(spec.high))} {unit} -> mask "
             f"{_number(resolved.native_low)} <= native <= {_number(resolved.native_high)} ({resolved.voxel_type})"]
    floats = resolved.voxel_type.startswith("float")  # values as stored: no per mille, no rescaling
    for value_unit in VALUE_UNITS:
        pair = resolved.values.get(value_unit)
        if (pair is None or (floats and value_unit == "permille")) and value_unit != "native":
            continue
        lines.append(f"{indent}{_unit_name(value_unit) + ':':18s} {_pair(pair)}")
    for note in resolved.notes():
        lines.append(f"{indent}note: {note}")
    return "\n".join(lines)


def thresholds_text(header: ScancoHeader, spec: ThresholdSpec) -> str:
    """What ``spec`` means for this file, in every unit (:func:`format_thresholds`); or, in one line, why
    it is not applied (a char mask) or refused (beyond the data type, no calibration, a float image)."""
    unit = threshold_unit_label(spec.unit, "mgHA/ccm")  # a bare "density" spec is mg HA/ccm
    asked = f"{_number(float(spec.low))} .. {_number(float(spec.high))} {unit}"
    if header.voxel_type in ("int8", "uint8"):
        return (f"Thresholds:      {asked} not applied: a SCANCO mask ({header.voxel_type}) gives its non-zero "
                "voxels")
    if header.voxel_type.startswith("float") and spec.unit != "native":
        return (f"Thresholds:      {asked} refused: a {header.voxel_type} image can only be thresholded in native "
                "units (its values are stored as they are)")
    try:
        resolved = resolve_thresholds(spec, header.calibration, voxel_type=header.voxel_type,
                                      header_max_data_value=header.raw_field("max_data_value"), path=header.path)
    except (RequestError, CalibrationMissingError) as exc:
        problem = getattr(exc, "problem", None) or str(exc).split(": ", 1)[-1]
        return f"Thresholds:      {asked} refused: {' '.join(str(problem).split())}"
    return format_thresholds(resolved)

