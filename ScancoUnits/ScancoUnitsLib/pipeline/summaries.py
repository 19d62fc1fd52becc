"""Short texts about a file for people: the panel's header summary, calibration warnings, threshold
equivalents, memory estimates, segment names and display windows. Plain text and HTML, no Qt.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import defaults
from ..errors import ScancoError
from ..core.header import ScancoHeader
from ..core.quantities import NODE_ROLES, threshold_unit_label
from .request import normalise_roles, threshold_spec_from
from .sampling import plan_sampling
from ..core.thresholds import resolve_thresholds
from ..core.units import UnitConverter


def format_threshold_number(value: float) -> str:
    """Short text for a threshold: integers without decimals, others with up to 6 significant digits."""
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def segment_name(spec) -> str:
    """E.g. ``Bone 250-1000 per mille`` for the default thresholds."""
    unit = threshold_unit_label(spec.unit, "mgHA/ccm")  # bare "density" thresholds are mg HA/ccm
    return f"Bone {format_threshold_number(spec.low)}-{format_threshold_number(spec.high)} {unit}"


def display_range(header: ScancoHeader, quantity: str, resolved=None) -> Optional[Tuple[float, float]]:
    """Window for bone: from native 0 (air black) to twice the lower threshold's native value, so the
    lower threshold is mid-grey and denser bone saturates towards white. Without thresholds (or when the
    lower one is <= 0) the upper end is native 16384 (500 per mille). In ``quantity`` units."""
    high_native = 16384.0
    if resolved is not None and resolved.native_low > 0:
        high_native = float(min(2 * resolved.native_low, 32767))
    low_native = 0.0
    if header.is_mask:
        return (0.0, 127.0)
    if quantity == "native":
        if header.voxel_type.startswith("float"):
            return None   # values as stored by IPL: let Slicer's automatic window/level pick
        return (low_native, high_native)
    converter = UnitConverter(header.calibration, path=header.path)
    lo, hi = (float(converter.native_to(v, quantity)) for v in (low_native, high_native))
    return (min(lo, hi), max(lo, hi))


# ------------------------------------------------------------------------------------------------
# Panel helpers (plain text / HTML for the module widget; no Qt)
# ------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _fixed(value: float, decimals: int) -> str:
    """``decimals`` places, trailing zeros dropped (1000.00 -> 1000, 3.99990 -> 3.9999)."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class HeaderSummary:
    """The one short description of a file, shown by the panel, the QC report title and ``info``."""

    name: str
    format: str
    scanner: str
    dimensions: str
    data_size: str
    voxel_size: str
    origin: str
    calibration: str

    def rows(self) -> Tuple[Tuple[str, str], ...]:
        return (("Format", self.format), ("Scanner", self.scanner),
                ("Dimensions", f"{self.dimensions} ({self.data_size})"),
                ("Voxel size", self.voxel_size), ("Origin", self.origin), ("Calibration", self.calibration))

    def one_line(self) -> str:
        """Scanner, voxel size, dimensions and format on one line (the report title)."""
        parts = [] if self.scanner == "not in header" else [self.scanner]
        return "   ·   ".join(parts + [f"voxel {self.voxel_size}", self.dimensions, self.format])


def header_summary(header: ScancoHeader) -> HeaderSummary:
    h, c, s = header, header.calibration, header.scanner
    x, y, z = h.dimensions
    voxel = " x ".join(_fmt(v * 1000.0, 5) for v in h.voxel_size_mm) + " µm"
    scanner = []
    if s.scanner_type is not None or s.scanner_id is not None:
        scanner.append(f"type {_fmt(s.scanner_type)}, id {_fmt(s.scanner_id)}")
    if s.energy_v:
        scanner.append(f"{_fmt(s.energy_v / 1000.0, 4)} kV")
    if s.intensity_ua:
        scanner.append(f"{_fmt(s.intensity_ua, 4)} µA")
    if s.measurement_index is not None:
        scanner.append(f"measurement {s.measurement_index}")
    if s.creation_date:
        scanner.append(str(s.creation_date)[:10])
    cal = [f"mu scaling {_fmt(c.mu_scaling)}", f"mu water {_fmt(c.mu_water_per_cm)} 1/cm"]
    if c.density_slope is not None or c.density_intercept is not None:
        intercept = c.density_intercept
        sign = "-" if intercept is not None and intercept < 0 else "+"
        cal.append(f"density = {_fmt(c.density_slope)} mu {sign} "
                   f"{_fmt(abs(intercept) if intercept is not None else None)} {c.density_unit or 'mg HA/ccm'}")
    if c.calibration_text:
        cal.append(c.calibration_text.strip())
    return HeaderSummary(
        name=os.path.basename(h.path),
        format=f"{h.format} ({h.version}), {h.data_type_name}" + (f", {h.compression}" if h.compression else ""),
        scanner=", ".join(scanner) if scanner else "not in header",
        dimensions=f"{x} x {y} x {z} voxels (x, y, z)",
        data_size=_human_bytes(h.voxel_count * np.dtype(h.voxel_type).itemsize),
        voxel_size=voxel,
        origin=" ".join(_fmt(v, 6) for v in h.origin_mm) + " mm (LPS)",
        calibration="; ".join(cal))


def header_summary_html(header: ScancoHeader) -> str:
    """:func:`header_summary` as short rich text for the panel."""
    e = html.escape
    return "<table cellspacing='0' cellpadding='1'>" + "".join(
        f"<tr><td><b>{e(k)}</b>&nbsp;</td><td>{e(v)}</td></tr>" for k, v in header_summary(header).rows()) \
        + "</table>"


def calibration_warning(header: ScancoHeader) -> str:
    """Empty when HU and density can both be computed, else one line saying what is missing."""
    if header.is_mask:
        return ("This file is a SCANCO mask (char data): it is loaded as a labelmap / segmentation; "
                "HU and density are not defined for it.")
    c = header.calibration
    parts = []
    for quantity, label in (("hu", "HU"), ("density", "density")):
        missing = c.missing_for(quantity)
        if missing:
            parts.append(f"no {label} ({', '.join(missing)})")
    if not parts:
        return ""
    return ("Not calibrated: " + "; ".join(parts)
            + ". Native values and per mille / native thresholds are still available.")


def threshold_equivalents(header: ScancoHeader, thresholds) -> dict:
    """``resolve_thresholds(...).to_dict()`` for the header's calibration (raises on bad input)."""
    spec = threshold_spec_from(thresholds)
    # in the file's own type; a mask AIM is never thresholded: its numbers are those of a short image
    voxel_type = "int16" if header.is_mask else header.voxel_type
    return resolve_thresholds(spec, header.calibration, voxel_type=voxel_type,
                              header_max_data_value=header.raw_field("max_data_value"), path=header.path).to_dict()


def threshold_equivalents_html(header: ScancoHeader, thresholds) -> str:
    """A small table: the thresholds in per mille, native, 1/cm, HU, mg HA/ccm (what the mask uses)."""
    if header.is_mask:
        return ("<small>a SCANCO mask (char AIM): its mask is its non-zero voxels; thresholds are not "
                "applied to it</small>")
    try:
        info = threshold_equivalents(header, thresholds)
    except (ValueError, ScancoError) as exc:
        return f"<span style='color:#b00020'>{html.escape(str(exc))}</span>"
    values = info["values"]
    columns = (("permille", "‰", 2), ("native", "native", 0), ("mu", "1/cm", 4), ("hu", "HU", 1),
               ("density_mg_ha_ccm", "mg HA/ccm", 1))
    head = "".join(f"<th align='right'>&nbsp;{html.escape(label)}</th>" for _, label, _ in columns)
    rows = []
    for index, name in ((0, "lower"), (1, "upper")):
        cells = []
        for key, _, digits in columns:
            pair = values.get(key)
            cells.append("n/a" if pair is None else _fixed(float(pair[index]), digits))
        clipped = " (clipped)" if info["clipped"][index] else ""
        rows.append(f"<tr><td>{name}{clipped}</td>" + "".join(
            f"<td align='right'>&nbsp;{html.escape(c)}</td>" for c in cells) + "</tr>")
    return ("<table cellspacing='0' cellpadding='1'><tr><th></th>" + head + "</tr>" + "".join(rows)
            + "</table><small>mask: native "
            + f"{info['native'][0]} &le; v &le; {info['native'][1]}</small>")


def _human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024.0
    return f"{count:.1f} TiB"  # pragma: no cover


def scene_memory_bytes(header: ScancoHeader, outputs: Sequence[str], *, subsample_step=1, region=None,
                       hu_dtype: str = defaults.HU_DTYPE) -> int:
    """Bytes the node arrays of ``outputs`` take (the segmentation keeps its own copy of the mask)."""
    plan = plan_sampling(header, subsample_step=subsample_step, region=region)
    per_voxel = 0
    for role in normalise_roles(outputs, NODE_ROLES):
        if role == "hu":
            per_voxel += np.dtype(hu_dtype).itemsize
        elif role in ("density", "mu"):
            per_voxel += 4
        elif role == "native":
            per_voxel += np.dtype(header.voxel_type).itemsize
        else:
            per_voxel += 1
    return plan.voxel_count * per_voxel


def memory_estimate_text(header: ScancoHeader, outputs: Sequence[str], *, subsample_step=1, region=None,
                         hu_dtype: str = defaults.HU_DTYPE) -> str:
    try:
        plan = plan_sampling(header, subsample_step=subsample_step, region=region)
        needed = scene_memory_bytes(header, outputs, subsample_step=subsample_step, region=region,
                                    hu_dtype=hu_dtype)
    except ValueError as exc:
        return str(exc)
    z, y, x = plan.shape_zyx
    return f"{x} x {y} x {z} voxels loaded, {_human_bytes(needed)} in the scene"
