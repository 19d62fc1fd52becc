"""Human-readable summary of a header (``scanco-units info``)."""

from __future__ import annotations

from .header import DEFAULT_DENSITY_UNIT, Calibration, ScancoHeader, printable


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
        return f"not in the file (taken as {DEFAULT_DENSITY_UNIT})"
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
    # the strings come from the file (and its name): no raw control character or escape sequence
    return "\n".join(printable(line) for line in lines)
