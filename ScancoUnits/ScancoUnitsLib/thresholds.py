"""Threshold masks the way IPL makes them.

IPL turns every threshold into a native integer first, then compares native voxel values:
``mask = native_low <= v <= native_high`` (inclusive; uint8 0/1 here).

* Per mille (IPL's default unit): 1000 ‰ is native 32767, the int16 maximum, for every short
  image, whatever mu_scaling or the data maximum (docs: scanco-format.md 3.3, peers.md 5).
  ``native = round(permille / 1000 * 32767)``.
* µ [1/cm], HU, density [mg HA/ccm]: the exact fractional native value from the inverse of the
  reference formula (``units.UnitConverter.to_native``), then rounded.
* ``native``: the value itself, rounded.

Rounding is to the nearest integer with halves away from zero (8191.5 -> 8192, -2.5 -> -3). IPL is
verified to round to nearest for density thresholds; for per mille the rounding is not verified
(a truncating reading also exists), which is why the exact product is always recorded next to the
integer. The integer is then clipped to [-32768, 32767], as IPL clips 100000 mg HA/ccm to 32767.

``permille_reference="header-max"`` takes the file's "Maximum data value" instead of 32767 as
1000 ‰. That is the reading of an earlier notebook and is wrong in general; it is kept only to
reproduce old results.

Char (int8) images are SCANCO masks: what 1000 ‰ means for them is not verified, so they are not
thresholded here; :func:`mask_from_char` turns them into 0/1 (non-zero -> 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import Dict, Optional, Tuple

import numpy as np

from .errors import CalibrationMissingError, RequestError
from .header import Calibration
from .quantities import THRESHOLD_UNIT_QUANTITY, THRESHOLD_UNITS, THRESHOLD_VALUE_UNITS
from .units import INT16_MAX, INT16_MIN, UnitConverter

PERMILLE_FULL_SCALE = 32767
#: threshold units (``density``: mg HA/ccm here; the command line maps it to its --density-unit)
UNITS = THRESHOLD_UNITS
PERMILLE_REFERENCES = ("32767", "header-max")

# threshold unit -> UnitConverter quantity ("density" without a unit is IPL's mg HA/ccm)
_QUANTITY = dict(THRESHOLD_UNIT_QUANTITY, density="density_mg_ha_ccm")
# every unit a resolved threshold is expressed in
VALUE_UNITS = THRESHOLD_VALUE_UNITS

_MASK_CHUNK_VOXELS = 1 << 20


def _exact(value) -> Fraction:
    """The number the user wrote: ints exactly, floats through their shortest decimal repr."""
    if isinstance(value, (int, np.integer)):
        return Fraction(int(value))
    return Fraction(repr(float(value)))


def _round_half_away(value: Fraction) -> int:
    """Nearest integer, halves away from zero."""
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def _round_float(value: float) -> int:
    """:func:`_round_half_away` of a float's exact value; +-inf -> just outside int16."""
    if math.isinf(value):
        return INT16_MAX + 1 if value > 0 else INT16_MIN - 1
    return _round_half_away(Fraction(value))  # Fraction(float) is exact: no added error


def _ipl_permille(native: int) -> float:
    """native / 32.767, correctly rounded (32767 -> exactly 1000.0)."""
    return float(Fraction(native * 1000, PERMILLE_FULL_SCALE))


#: public name: the per-mille value IPL prints for a native value
permille_of_native = _ipl_permille


def _clip_int16(native: int) -> int:
    return min(max(native, INT16_MIN), INT16_MAX)


def permille_to_native(permille, reference=PERMILLE_FULL_SCALE) -> Tuple[float, int]:
    """IPL's per-mille rule: ``(exact_product, native)``.

    ``exact_product = permille / 1000 * reference`` (computed exactly in rational arithmetic from
    the decimal value of ``permille``, returned as the nearest float); ``native`` is it rounded to
    the nearest integer, halves away from zero (250 ‰ -> 8191.75 -> 8192). Not clipped.
    """
    if isinstance(permille, bool) or not isinstance(permille, Real) or not math.isfinite(permille):
        raise ValueError(f"per-mille value must be a finite number, not {permille!r}")
    if isinstance(reference, bool) or not isinstance(reference, Real) \
            or not math.isfinite(reference) or reference <= 0:
        raise ValueError(f"per-mille reference must be a finite positive number, not {reference!r}")
    product = _exact(permille) * _exact(reference) / 1000
    return float(product), _round_half_away(product)


@dataclass(frozen=True)
class ThresholdSpec:
    """Lower and upper threshold (inclusive) in one unit.

    ``unit``: "permille", "native", "mu" (1/cm), "hu" or "density" (mg HA/ccm).
    ``permille_reference``: "32767" (IPL) or "header-max" (the file's Maximum data value).
    """

    low: float
    high: float
    unit: str = "permille"
    permille_reference: str = "32767"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unknown threshold unit {self.unit!r}; expected one of {', '.join(UNITS)}")
        if self.permille_reference not in PERMILLE_REFERENCES:
            raise ValueError(f"unknown per-mille reference {self.permille_reference!r}; "
                             f"expected one of {', '.join(PERMILLE_REFERENCES)}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"threshold {name} must be a finite number, not {value!r}")
        if self.low > self.high:
            raise ValueError(f"lower threshold {self.low} is above upper threshold {self.high}")


@dataclass(frozen=True)
class ResolvedThresholds:
    """Thresholds as native integers, with how they were obtained.

    ``exact_low``/``exact_high``: the fractional native values before rounding (in ascending
    order: a negative density slope swaps them, so the mask still selects the asked-for range);
    ``native_low``/``native_high``: the integers the mask uses (rounded, clipped to int16);
    ``clipped``: whether each bound was clipped; ``permille_reference``: the value taken as 1000 ‰
    (only meaningful for per-mille specs); ``values``: the integer natives expressed in every unit of
    :data:`VALUE_UNITS` as ``(low, high)``, ``None`` where the calibration cannot give that unit.
    ``values["permille"]`` always follows IPL (native / 32.767).
    """

    spec: ThresholdSpec
    exact_low: float
    exact_high: float
    native_low: int
    native_high: int
    clipped: Tuple[bool, bool]
    permille_reference: float
    values: Dict[str, Optional[Tuple[float, float]]]

    def to_dict(self) -> dict:
        return {
            "spec": {"low": float(self.spec.low), "high": float(self.spec.high),
                     "unit": self.spec.unit, "permille_reference": self.spec.permille_reference},
            "exact_native": [self.exact_low, self.exact_high],
            "native": [self.native_low, self.native_high],
            "clipped": list(self.clipped),
            "permille_reference_value": self.permille_reference,
            "rounding": "nearest integer, halves away from zero, then clipped to [-32768, 32767]",
            "mask_rule": "native_low <= native <= native_high -> 1, else 0",
            "values": {unit: (None if pair is None else [float(pair[0]), float(pair[1])])
                       for unit, pair in self.values.items()},
        }

    def mask(self, native_slab, out=None) -> np.ndarray:
        """uint8 0/1 mask ``native_low <= v <= native_high`` of a native slab (any shape).

        ``out``: optional uint8 array of the slab's shape, C-contiguous. Temporary memory is one
        bool buffer of at most 1 Mi voxels. Char (int8/uint8) slabs are refused unless the spec is
        in native units (use :func:`mask_from_char`).
        """
        native = np.asarray(native_slab)
        if native.dtype.kind not in "iuf":
            raise ValueError(f"native voxels must be integers or floats, not {native.dtype}")
        if native.dtype.itemsize == 1 and native.dtype.kind in "iu" and self.spec.unit != "native":
            raise ValueError(f"{self.spec.unit} thresholds are not defined for char ({native.dtype}) "
                             "data; use mask_from_char or native thresholds")
        out = _mask_output(native.shape, out)
        low, high = self.native_low, self.native_high
        if native.dtype.kind in "iu":  # compare in the slab's own dtype, bounds kept in its range
            info = np.iinfo(native.dtype)
            if low > info.max or high < info.min:
                out[...] = 0
                return out
            low, high = max(low, int(info.min)), min(high, int(info.max))
            return _integer_range_mask(np.ascontiguousarray(native).reshape(-1), low, high, out)
        low, high = native.dtype.type(low), native.dtype.type(high)
        src = np.ascontiguousarray(native).reshape(-1)
        dst = out.reshape(-1).view(np.bool_)
        above_low = np.empty(min(_MASK_CHUNK_VOXELS, src.size), dtype=np.bool_)
        for start in range(0, src.size, _MASK_CHUNK_VOXELS):
            stop = min(start + _MASK_CHUNK_VOXELS, src.size)
            part = above_low[: stop - start]
            np.greater_equal(src[start:stop], low, out=part)
            np.less_equal(src[start:stop], high, out=dst[start:stop])
            np.logical_and(dst[start:stop], part, out=dst[start:stop])
        return out


def _integer_range_mask(src: np.ndarray, low: int, high: int, out: np.ndarray) -> np.ndarray:
    """``low <= v <= high`` for integer voxels in two passes: ``v - low`` wraps around in the
    voxels' own width, so read as unsigned it is at most ``high - low`` exactly inside the range."""
    unsigned = np.dtype(f"u{src.dtype.itemsize}")
    offset = src.dtype.type(low)  # low is inside the dtype's range (clamped by the caller)
    span = unsigned.type(high - low)
    dst = out.reshape(-1).view(np.bool_)
    shifted = np.empty(min(_MASK_CHUNK_VOXELS, src.size), dtype=src.dtype)
    for start in range(0, src.size, _MASK_CHUNK_VOXELS):
        stop = min(start + _MASK_CHUNK_VOXELS, src.size)
        part = shifted[: stop - start]
        np.subtract(src[start:stop], offset, out=part)  # modular arithmetic, no overflow error for arrays
        np.less_equal(part.view(unsigned), span, out=dst[start:stop])
    return out


def _mask_output(shape, out):
    if out is None:
        return np.empty(shape, dtype=np.uint8)
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != np.uint8:
        raise ValueError(f"out must be a uint8 ndarray of shape {tuple(shape)}, got "
                         f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out).__name__)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def mask_from_char(slab, out=None) -> np.ndarray:
    """uint8 0/1 mask of a SCANCO char mask: non-zero (127, -127, 1...) -> 1, zero -> 0."""
    values = np.asarray(slab)
    out = _mask_output(values.shape, out)
    np.not_equal(values, 0, out=out.view(np.bool_))
    return out


def resolve_thresholds(spec: ThresholdSpec, calibration: Optional[Calibration], *,
                       header_max_data_value=None, path=None) -> ResolvedThresholds:
    """Turn ``spec`` into the native integers IPL would use, plus their value in every unit.

    ``header_max_data_value`` is only used (and then required) with
    ``permille_reference="header-max"``. µ/HU/density specs need the matching calibration
    (``CalibrationMissingError`` naming the missing fields otherwise); per-mille and native specs
    work without one. ``path`` only names the file in errors.
    """
    if not isinstance(spec, ThresholdSpec):
        raise ValueError(f"spec must be a ThresholdSpec, not {type(spec).__name__}")
    converter = UnitConverter(calibration, path=path)
    reference = float(PERMILLE_FULL_SCALE)
    if spec.unit == "permille" and spec.permille_reference == "header-max":
        value = header_max_data_value
        if value is None or isinstance(value, bool) or not isinstance(value, Real) \
                or not math.isfinite(value) or value <= 0:
            raise RequestError(path, "--permille-reference header-max needs the header's 'Maximum data "
                                     f"value' (a positive number), and this file has {value!r}; use the "
                                     "default reference (1000 per mille = native 32767)")
        reference = float(value)

    if spec.unit == "permille":
        exact_low, rounded_low = permille_to_native(spec.low, reference)
        exact_high, rounded_high = permille_to_native(spec.high, reference)
    else:
        if spec.unit == "native":
            exact_low, exact_high = float(spec.low), float(spec.high)
        else:
            quantity = _QUANTITY[spec.unit]
            missing = converter.missing_for(quantity)
            if missing:
                raise CalibrationMissingError(path, quantity, missing)
            exact_low = float(converter.to_native(spec.low, quantity))
            exact_high = float(converter.to_native(spec.high, quantity))
        # a negative density slope reverses the order; the mask keeps the same set of voxels
        exact_low, exact_high = min(exact_low, exact_high), max(exact_low, exact_high)
        rounded_low, rounded_high = _round_float(exact_low), _round_float(exact_high)

    native_low, native_high = _clip_int16(rounded_low), _clip_int16(rounded_high)
    values = {"permille": (_ipl_permille(native_low), _ipl_permille(native_high)),
              "native": (float(native_low), float(native_high))}
    for unit in VALUE_UNITS[2:]:
        if converter.can_convert(unit):
            values[unit] = (float(converter.native_to(native_low, unit)),
                            float(converter.native_to(native_high, unit)))
        else:
            values[unit] = None
    return ResolvedThresholds(
        spec=spec, exact_low=exact_low, exact_high=exact_high,
        native_low=native_low, native_high=native_high,
        clipped=(native_low != rounded_low, native_high != rounded_high),
        permille_reference=reference, values=values)
