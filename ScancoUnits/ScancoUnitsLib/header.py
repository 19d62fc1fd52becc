"""The immutable header object every reader returns.

Units live in the field names: ``voxel_size_mm``, ``origin_mm``, ``mu_water_per_cm``, ``energy_v``...
A value the file does not carry is ``None``; nothing is filled in with a default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Tuple

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


@dataclass(frozen=True)
class Calibration:
    """Calibration constants exactly as the file stores them (``None`` where absent).

    * ``mu_scaling``: native units per 1/cm (µ = native / mu_scaling).
    * ``mu_water_per_cm``: linear attenuation of water in 1/cm (for HU).
    * ``density_slope`` / ``density_intercept``: density = slope · µ + intercept, in ``density_unit``
      (almost always ``mg HA/ccm``); the slope is per 1/cm.
    * ``calibration_type``: SCANCO "Calib. default unit type" (2 = density).
    * ``calibration_text``: free text such as ``45 kVp, 0.5mm Al, BH: 1200mg HA/ccm, Scaling 4096``.
    """

    mu_scaling: Optional[float] = None
    mu_water_per_cm: Optional[float] = None
    density_slope: Optional[float] = None
    density_intercept: Optional[float] = None
    density_unit: Optional[str] = None
    calibration_type: Optional[int] = None
    calibration_text: Optional[str] = None

    # ---- what can be computed -------------------------------------------------------------------
    def missing_for(self, quantity: str) -> Tuple[str, ...]:
        """Names of the fields that are absent or unusable for ``quantity``.

        ``quantity`` is one of ``"mu"``, ``"hu"``, ``"density"``. An empty tuple means it can be
        computed. Unusable: mu_scaling <= 1, mu_water <= 0, non-finite slope or intercept, and
        physically absurd magnitudes (see ``PLAUSIBLE_*``) that would turn real voxel values into
        infinities or NaN in a float32 output (e.g. mu_water 1e-300 1/cm, slope 1e300).
        """
        missing = []
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
        elif quantity != "mu":
            raise ValueError(f"unknown calibrated quantity {quantity!r}")
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
        out = {f.name: _json_safe(getattr(self, f.name)) for f in fields(self)}
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
