"""The words and numbers of the QC report (:mod:`~ScancoUnitsLib.pipeline.report`): file names as a figure can
draw them, the calibration line, the threshold labels, the list of outputs. Plain strings, no matplotlib."""

from __future__ import annotations

import os

from ..core.quantities import UNIT_LABELS
from ..core.thresholds import ResolvedThresholds


def outputs_text(outputs: dict, limit: int = 200) -> str:
    """Every file written, in every format (``outputs[role]["files"]``), their common stem said once:
    ``outputs (C0001_*): HU.nrrd, RHO.nrrd, BWmask.nrrd, BWmask.AIM``."""
    names = [str(name) for entry in outputs.values()
             for name in (entry.get("files") or [entry.get("file")]) if name]
    stem = os.path.commonprefix(names)
    stem = stem[:stem.rfind("_") + 1] if "_" in stem else ""
    shown = [name[len(stem):] for name in names]
    head = f"outputs ({stem}*): " if stem and len(names) > 1 else "outputs: "
    text = head + ", ".join(shown)
    if len(text) > limit:
        text = shorten(text, limit - 12) + f" ({len(names)} files)"
    return text


def drawable(text: str) -> str:
    """Text as a figure can draw it: the bytes of a file name that is not UTF-8 (surrogate-escaped)
    shown as \\xNN."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shown_name(path) -> str:
    return drawable(os.path.basename(path))


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


UNIT_WORDS = dict(UNIT_LABELS, permille="‰", density=UNIT_LABELS["mgHA/ccm"])


def num(value) -> str:
    if value is None:
        return "?"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.4g}"


def calibration_text(c) -> str:
    if not c.has_mu:
        return "none usable (no mu_scaling): native values only"
    parts = [f"µ = native / {c.mu_scaling:g}"]
    if c.has_hu:
        parts.append(f"µ water {c.mu_water_per_cm:g} /cm")
    if c.has_density:
        sign = "−" if c.density_intercept < 0 else "+"
        parts.append(f"density = {c.density_slope:g} · µ {sign} {abs(c.density_intercept):g} "
                     f"{c.density_unit or 'mg HA/ccm'}")
    if c.calibration_text:
        parts.append(f"“{c.calibration_text.strip()}”")
    return "   ·   ".join(parts)


def spec_text(resolved: ResolvedThresholds) -> str:
    s = resolved.spec
    unit = UNIT_WORDS.get(s.unit, s.unit)
    return f"{s.low:g} … {s.high:g} {unit}" if unit != "‰" else f"{s.low:g} … {s.high:g} ‰"


def threshold_label(which: str, resolved: ResolvedThresholds, index: int) -> str:
    values = resolved.values
    native = resolved.native_low if which == "low" else resolved.native_high
    lines = [f"{which}: native {native}", f"{values['permille'][index]:.1f} ‰"]
    if values.get("hu") is not None:
        lines.append(f"{values['hu'][index]:.0f} HU")
    if values.get("density_mg_ha_ccm") is not None:
        lines.append(f"{values['density_mg_ha_ccm'][index]:.0f} mg HA/ccm")
    return "\n".join(lines)

