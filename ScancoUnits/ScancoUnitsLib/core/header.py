"""The immutable header object every reader returns.

Units live in the field names: ``voxel_size_mm``, ``origin_mm``, ``mu_water_per_cm``, ``energy_v``...
A value the file does not carry is ``None``; nothing is filled in with a default.

Never a silent wrong number:

* **Density unit.** The file's density unit text (ISQ calibration block +648, AIM log
  ``Density: unit``) is read case- and space-insensitively (:func:`density_mg_per_unit`):
  ``mg HA/ccm``, ``mg HA/cm3``, ``mgHA/ccm``, ``mg/cm3``, ``mg/ccm``, ``mg/cc`` are 1 mg HA/ccm per
  unit; ``g HA/ccm``, ``g HA/cm3``, ``g/cm3``, ``g/ccm``, ``g/cc`` are 1000 (``cm^3``, ``cm³`` and
  ``ml`` are accepted for the cubic centimetre too). An absent unit is taken as mg HA/ccm (what
  every SCANCO file seen so far states, and what this library assumed before).
  Any other text (``1/cm``, ``HU``, ``kg/m3``...) refuses density with a message naming the text;
  µ, HU, native values and masks do not depend on it.
* **Contradictory calibration.** When the header states one constant twice with different values
  the readers record a :class:`CalibrationConflict` in ``Calibration.conflicts`` instead of picking
  one; ``missing_for`` then refuses every quantity that needs the constant, with one line naming
  the field and the values (native values and masks need no calibration and still work). The rules
  (what is compared, and what is only a warning) are in the docstrings of ``aim_log`` and
  ``isq_format``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Tuple

from .. import defaults

Triple = Tuple[int, int, int]
FloatTriple = Tuple[float, float, float]


# Physically plausible calibration magnitudes. Real scanners: mu_scaling 1000-8192, mu_water
# 0.2-0.6 1/cm, slope a few hundred to a few thousand mg HA/ccm per 1/cm, intercept -1000..0.
# The bounds are wide (orders of magnitude beyond any scanner) and keep every output finite in
# float32 for any int32 native value: |HU| <= 2**31 * 1000 / 1e-4, |density| <= 2**31 * 1e9 + 1e9.
PLAUSIBLE_MU_SCALING_MAX = 1e12
PLAUSIBLE_MU_WATER_PER_CM = (1e-4, 1e4)
PLAUSIBLE_DENSITY_SLOPE = (1e-6, 1e9)
PLAUSIBLE_DENSITY_INTERCEPT_MAX = 1e9


def _is_finite_number(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


#: mg HA/ccm per unit of each recognised density unit, keyed by the unit text in lower case without
#: spaces ("mg HA/ccm" -> "mgha/ccm"). "ccm", "cc", "cm3", "cm^3", "cm³" and "ml" all mean cubic centimetre.
DENSITY_UNIT_MG_PER_UNIT = {
    f"{mass}{ha}/{volume}": factor
    for mass, factor in (("mg", 1.0), ("g", 1000.0))
    for ha in ("ha", "")
    for volume in ("ccm", "cc", "cm3", "cm^3", "cm\u00b3", "ml")
}

#: C0 controls, DEL and C1 controls (ESC [ and CSI start terminal escape sequences)
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1; newlines and tabs too) written as a visible
    ``\\xNN``: header strings (calibration text, names, units) come from the file and may hold
    anything, and a terminal must never receive a raw escape sequence from them."""
    return _CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def density_mg_per_unit(unit_text: Optional[str]) -> Optional[float]:
    """mg HA/ccm per unit of a density unit text; 1.0 for an absent (None or blank) unit
    (taken as mg HA/ccm); None for text that is not a recognised density unit."""
    if unit_text is None or not unit_text.strip():
        return 1.0
    return DENSITY_UNIT_MG_PER_UNIT.get("".join(unit_text.split()).lower())


_TEXT_SCALING = re.compile(r"\bscaling\s*[:=]?\s*(\d+(?:\.\d*)?)(?![\d.])", re.IGNORECASE)


def scaling_in_calibration_text(text: Optional[str]) -> Optional[float]:
    """The ``Scaling N`` a SCANCO calibration text names (``68 kVp, BH: 200 mg HA/ccm, Scaling
    8192, 0.2 CU`` -> 8192.0), or None when the text names none (or names several different ones)."""
    if not text:
        return None
    found = {float(m.group(1)) for m in _TEXT_SCALING.finditer(text)}
    return found.pop() if len(found) == 1 else None


# which calibrated quantities need each calibration field (for conflicts)
_FIELD_QUANTITIES = {
    "mu_scaling": ("mu", "hu", "density"),
    "mu_water_per_cm": ("hu",),
    "density_slope": ("density",),
    "density_intercept": ("density",),
    "density_unit": ("density",),
}


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class CalibrationConflict:
    """One calibration constant stated more than once with different values.

    ``field`` is the :class:`Calibration` field name (``mu_scaling``, ``mu_water_per_cm``,
    ``density_slope``, ``density_intercept``, ``density_unit``); ``values`` the distinct values in
    file order (numbers as floats, text as str); ``sources`` where each value was found, e.g.
    ``("Mu_Scaling", "Scaled by factor")``. ``refuses`` False marks a difference that is normal in
    real files and only warned about (it does not make ``missing_for`` refuse anything).
    """

    field: str
    values: Tuple[Any, ...]
    sources: Tuple[str, ...]
    refuses: bool = True

    @property
    def quantities(self) -> Tuple[str, ...]:
        """The calibrated quantities this conflict makes unusable (when it refuses)."""
        return _FIELD_QUANTITIES.get(self.field, ("mu", "hu", "density"))

    def values_text(self) -> str:
        """``Mu_Scaling 8192 vs Scaled by factor 4096``."""
        return " vs ".join(f"{source} {_format_value(value)}" for source, value in zip(self.sources, self.values))

    def describe(self) -> str:
        """One line: ``mu_scaling: Mu_Scaling 8192 vs Scaled by factor 4096``."""
        return f"{self.field}: {self.values_text()}"

    def to_dict(self) -> dict:
        return {"field": self.field, "values": [_json_safe(v) for v in self.values],
                "sources": list(self.sources), "refuses": self.refuses, "text": self.describe()}


@dataclass(frozen=True)
class Calibration:
    """Calibration constants exactly as the file stores them (``None`` where absent).

    * ``mu_scaling``: native units per 1/cm (µ = native / mu_scaling).
    * ``mu_water_per_cm``: linear attenuation of water in 1/cm (for HU).
    * ``density_slope`` / ``density_intercept``: density = slope · µ + intercept, in ``density_unit``
      (almost always ``mg HA/ccm``; see :attr:`density_mg_per_unit`); the slope is per 1/cm.
    * ``calibration_type``: SCANCO "Calib. default unit type" (2 = density).
    * ``calibration_text``: free text such as ``45 kVp, 0.5mm Al, BH: 1200mg HA/ccm, Scaling 4096``.
    * ``conflicts``: constants the header states twice with different values
      (:class:`CalibrationConflict`); the field itself holds the first value read.
    """

    mu_scaling: Optional[float] = None
    mu_water_per_cm: Optional[float] = None
    density_slope: Optional[float] = None
    density_intercept: Optional[float] = None
    density_unit: Optional[str] = None
    calibration_type: Optional[int] = None
    calibration_text: Optional[str] = None
    conflicts: Tuple[CalibrationConflict, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "conflicts", tuple(self.conflicts))  # immutable, whatever was given

    # ---- density unit ---------------------------------------------------------------------------
    @property
    def density_mg_per_unit(self) -> Optional[float]:
        """mg HA/ccm in one unit of the file's density (1.0 for mg, 1000.0 for g HA/ccm; 1.0 when
        the file states no unit); None when ``density_unit`` is not a recognised density unit."""
        return density_mg_per_unit(self.density_unit)

    @property
    def density_unit_assumed(self) -> bool:
        """True when the file states no density unit and mg HA/ccm is assumed."""
        return self.density_unit is None or not self.density_unit.strip()

    @property
    def refusing_conflicts(self) -> Tuple[CalibrationConflict, ...]:
        return tuple(c for c in self.conflicts if c.refuses)

    # ---- what can be computed -------------------------------------------------------------------
    def missing_for(self, quantity: str) -> Tuple[str, ...]:
        """Names of the fields that are absent or unusable for ``quantity``.

        ``quantity`` is one of ``"mu"``, ``"hu"``, ``"density"``. An empty tuple means it can be
        computed. Unusable: mu_scaling <= 1, mu_water <= 0, non-finite slope or intercept, and
        physically absurd magnitudes (see ``PLAUSIBLE_*``) that would turn real voxel values into
        infinities or NaN in a float32 output (e.g. mu_water 1e-300 1/cm, slope 1e300); a density
        unit that is not a recognised density unit; a constant the header contradicts
        (``conflicts``), named with its values.
        """
        if quantity not in ("mu", "hu", "density"):
            raise ValueError(f"unknown calibrated quantity {quantity!r}")
        missing = [f"{c.field} (contradictory: {c.values_text()})" for c in self.conflicts
                   if c.refuses and quantity in c.quantities]
        if not (_is_finite_number(self.mu_scaling) and self.mu_scaling > 1):
            missing.append("mu_scaling (must be > 1)")
        elif self.mu_scaling > PLAUSIBLE_MU_SCALING_MAX:
            missing.append(f"mu_scaling ({self.mu_scaling:g} is implausible, expected at most "
                           f"{PLAUSIBLE_MU_SCALING_MAX:g})")
        if quantity == "hu":
            if not (_is_finite_number(self.mu_water_per_cm) and self.mu_water_per_cm > 0):
                missing.append("mu_water (must be > 0)")
            elif not PLAUSIBLE_MU_WATER_PER_CM[0] <= self.mu_water_per_cm <= PLAUSIBLE_MU_WATER_PER_CM[1]:
                lo, hi = PLAUSIBLE_MU_WATER_PER_CM
                missing.append(f"mu_water ({self.mu_water_per_cm:g} 1/cm is implausible, expected {lo:g} to {hi:g})")
        elif quantity == "density":
            if not (_is_finite_number(self.density_slope) and self.density_slope != 0):
                missing.append("density slope (finite, non-zero)")
            elif not PLAUSIBLE_DENSITY_SLOPE[0] <= abs(self.density_slope) <= PLAUSIBLE_DENSITY_SLOPE[1]:
                lo, hi = PLAUSIBLE_DENSITY_SLOPE
                missing.append(f"density slope ({self.density_slope:g} is implausible, expected a magnitude "
                               f"of {lo:g} to {hi:g})")
            if not _is_finite_number(self.density_intercept):
                missing.append("density intercept (finite)")
            elif abs(self.density_intercept) > PLAUSIBLE_DENSITY_INTERCEPT_MAX:
                missing.append(f"density intercept ({self.density_intercept:g} is implausible, expected a "
                               f"magnitude of at most {PLAUSIBLE_DENSITY_INTERCEPT_MAX:g})")
            if self.density_mg_per_unit is None:
                missing.append(f"density unit ({self.density_unit!r} is not a density unit; expected "
                               f"mg HA/ccm or g HA/ccm)")
        return tuple(missing)

    @property
    def has_mu(self) -> bool:
        return not self.missing_for("mu")

    @property
    def has_hu(self) -> bool:
        return not self.missing_for("hu")

    @property
    def has_density(self) -> bool:
        return not self.missing_for("density")

    @property
    def is_calibrated(self) -> bool:
        """True when HU and density can both be computed."""
        return self.has_hu and self.has_density

    def to_dict(self) -> dict:
        out = {f.name: _json_safe(getattr(self, f.name)) for f in fields(self) if f.name != "conflicts"}
        out["density_mg_per_unit"] = self.density_mg_per_unit
        out["density_unit_assumed"] = (f"no density unit in the file: taken as {defaults.FILE_DENSITY_UNIT_WHEN_ABSENT}"
                                       if self.density_unit_assumed else None)
        out["conflicts"] = [c.to_dict() for c in self.conflicts]
        out["usable"] = {q: not self.missing_for(q) for q in ("mu", "hu", "density")}
        return out


@dataclass(frozen=True)
class ScannerInfo:
    """Acquisition and subject fields. Dates are ISO 8601 strings (local scanner time)."""

    scanner_id: Optional[int] = None
    scanner_type: Optional[int] = None
    energy_v: Optional[float] = None
    intensity_ua: Optional[float] = None
    site: Optional[int] = None
    sample_holder: Optional[int] = None
    measurement_index: Optional[int] = None
    patient_index: Optional[int] = None
    patient_name: Optional[str] = None
    creation_date: Optional[str] = None
    modification_date: Optional[str] = None

    def to_dict(self) -> dict:
        return {f.name: _json_safe(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class ScancoHeader:
    """Everything a SCANCO file says about itself.

    Geometry follows ITKIOScanco so outputs overlay files opened in Slicer: ``origin_mm`` is
    ``position_voxels * voxel_size_mm`` for AIM and 0 for ISQ (which stores no x/y position).
    Voxel arrays are indexed (z, y, x); ``dimensions`` are (x, y, z).
    """

    path: str
    format: str                      # "ISQ" or "AIM"
    version: str                     # "CTDATA-HEADER_V1", "AIMDATA_V020", "AIMDATA_V030"
    dimensions: Triple               # voxels (x, y, z)
    voxel_size_mm: FloatTriple
    position_voxels: Triple
    origin_mm: FloatTriple
    voxel_type: str                  # numpy dtype name of decoded voxels: int16, int8, uint8, float32...
    data_type_code: int              # AIM type code (e.g. 0x00020002) or ISQ data_type (3)
    data_type_name: str              # e.g. "D1Tshort", "D1TbinCmp", "ISQ int16"
    data_offset: int                 # byte offset of the voxel block in the file
    data_size: int                   # bytes of the stored voxel block (compressed size if compressed)
    compression: Optional[str]       # None, "binCmp", "charCmp" or "bit8"
    border_voxels: Triple            # AIM "off": invalid margin in voxels
    file_size: int
    calibration: Calibration = field(default_factory=Calibration)
    scanner: ScannerInfo = field(default_factory=ScannerInfo)
    processing_log: str = ""
    processing_log_items: Tuple[Tuple[str, str], ...] = ()
    raw_fields: Tuple[Tuple[str, Any], ...] = ()   # every other decoded header field, in file order

    @property
    def shape_zyx(self) -> Triple:
        x, y, z = self.dimensions
        return (z, y, x)

    @property
    def voxel_count(self) -> int:
        x, y, z = self.dimensions
        return x * y * z

    @property
    def is_mask(self) -> bool:
        """Char data (compressed or not): SCANCO masks; never rescaled to physical units."""
        return self.voxel_type in ("int8", "uint8")

    def log_value(self, key: str) -> Optional[str]:
        """First value of ``key`` in the AIM processing log, or None."""
        for k, v in self.processing_log_items:
            if k == key:
                return v
        return None

    def raw_field(self, name: str, default=None):
        for k, v in self.raw_fields:
            if k == name:
                return v
        return default

    def to_dict(self) -> dict:
        """A JSON-safe, complete dictionary of the header."""
        return {
            "path": self.path,
            "format": self.format,
            "version": self.version,
            "dimensions": list(self.dimensions),
            "voxel_size_mm": list(self.voxel_size_mm),
            "position_voxels": list(self.position_voxels),
            "origin_mm": list(self.origin_mm),
            "voxel_type": self.voxel_type,
            "data_type_code": self.data_type_code,
            "data_type_name": self.data_type_name,
            "data_offset": self.data_offset,
            "data_size": self.data_size,
            "compression": self.compression,
            "border_voxels": list(self.border_voxels),
            "file_size": self.file_size,
            "calibration": self.calibration.to_dict(),
            "scanner": self.scanner.to_dict(),
            "processing_log": self.processing_log,
            "processing_log_items": [[k, v] for k, v in self.processing_log_items],
            "raw_fields": {k: _json_safe(v) for k, v in self.raw_fields},
        }


def _json_safe(value):
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return str(value)  # "nan", "inf": JSON has no such numbers
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _json_safe(value.item())
    return value
