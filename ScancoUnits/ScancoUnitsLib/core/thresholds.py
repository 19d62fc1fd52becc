"""Threshold masks the way IPL makes them.

IPL turns every threshold into a native integer first, then compares native voxel values:
``mask = native_low <= v <= native_high`` (inclusive; uint8 0/1 here).

* Per mille (IPL's default unit): 1000 ‰ is native 32767, the int16 maximum, for every short
  image, whatever mu_scaling or the data maximum.
  ``native = round(permille / 1000 * 32767)``.
* µ [1/cm], HU, density [mg HA/ccm]: the exact fractional native value from the inverse of the
  reference formula (``units.UnitConverter.to_native``), then rounded.
* ``native``: the value itself, rounded.

Thresholds are resolved in the data's own type (``voxel_type``; int16 when not given):

* integers (int16, uint16, int32...): rounded to the nearest integer with halves away from zero
  (8191.5 -> 8192, -2.5 -> -3). IPL is verified to round to nearest for density thresholds; for per
  mille the rounding is not verified (a truncating reading also exists), which is why the exact
  product is always recorded next to the integer.
* floats: not rounded. For float32 data the bounds are the float32 values that select exactly the
  voxels ``exact_low <= v <= exact_high`` (the smallest float32 >= low, the largest <= high).

A bound beyond the type's range on its *open* side (an upper bound above the type's maximum, a lower
bound below its minimum) selects the same voxels as the type's end, and is taken as that end, as IPL
takes 100000 mg HA/ccm as native 32767; ``ResolvedThresholds.open_ended`` records it (a note in the
metadata). A bound beyond the range on its *closed* side (a lower bound above the maximum, an upper
bound below the minimum) leaves nothing the type can hold inside the thresholds: that is refused
(:class:`~ScancoUnitsLib.errors.ThresholdRangeError`, one line: the threshold in the unit asked and in
native values, the range the type holds in both, and what ``density`` meant), never clipped.

``permille_reference="header-max"`` takes the file's "Maximum data value" instead of 32767 as
1000 ‰. That reading is wrong in general; it exists to reproduce results that were computed with it.

Char (int8) images are SCANCO masks: what 1000 ‰ means for them is not verified, so they are not
thresholded by a conversion; :func:`mask_from_char` turns them into 0/1 (non-zero -> 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import Dict, Optional, Tuple

import numpy as np

from .. import defaults
from ..errors import CalibrationMissingError, RequestError, ThresholdRangeError
from .header import Calibration
from .option_names import command_line_names, option_name
from .quantities import THRESHOLD_UNIT_QUANTITY, THRESHOLD_UNITS, THRESHOLD_VALUE_UNITS, threshold_unit_label
from .units import UnitConverter

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


def _round_float(value: float):
    """:func:`_round_half_away` of a float's exact value; +-inf stays +-inf (beyond every integer type)."""
    if math.isinf(value):
        return value
    return _round_half_away(Fraction(value))  # Fraction(float) is exact: no added error


def _ipl_permille(native) -> float:
    """native / 32.767, correctly rounded (32767 -> exactly 1000.0); float natives too."""
    if isinstance(native, float):
        if not math.isfinite(native):
            return native
        native = Fraction(native)
    return float(Fraction(native * 1000) / PERMILLE_FULL_SCALE)


#: public name: the per-mille value IPL prints for a native value
permille_of_native = _ipl_permille


def native_range_of(voxel_type) -> Tuple[object, object]:
    """The values a native type can hold: ``(min, max)`` as ints (integers) or floats (finite floats)."""
    dtype = np.dtype(voxel_type)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return float(info.min), float(info.max)
    raise ValueError(f"native voxels must be integers or floats, not {dtype}")


def _float_bounds(exact_low: float, exact_high: float, dtype: np.dtype) -> Tuple[float, float]:
    """The bounds in ``dtype`` that select exactly ``exact_low <= v <= exact_high`` (no rounding)."""
    if dtype.itemsize >= 8:
        return float(exact_low), float(exact_high)
    low, high = dtype.type(exact_low), dtype.type(exact_high)
    with np.errstate(over="ignore"):
        if float(low) < exact_low:
            low = np.nextafter(low, dtype.type(np.inf))
        if float(high) > exact_high:
            high = np.nextafter(high, dtype.type(-np.inf))
    return float(low), float(high)


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
    permille_reference: str = defaults.PERMILLE_REFERENCE

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
    """Thresholds as native values of the data's type, with how they were obtained.

    ``exact_low``/``exact_high``: the fractional native values before rounding (in ascending
    order: a negative density slope swaps them, so the mask still selects the asked-for range);
    ``native_low``/``native_high``: the values the mask uses (integers for integer data, rounded;
    floats for float data, not rounded); ``clipped``: whether each bound lay beyond the type's range
    on its open side and was taken as the type's end (the same voxels); ``permille_reference``: the
    value taken as 1000 ‰ (only meaningful for per-mille specs); ``values``: the natives expressed in
    every unit of :data:`VALUE_UNITS` as ``(low, high)``, ``None`` where the calibration cannot give
    that unit (and for float data, whose values are not rescaled). ``values["permille"]`` always
    follows IPL (native / 32.767). ``voxel_type``: the native type they were resolved for.
    """

    spec: ThresholdSpec
    exact_low: float
    exact_high: float
    native_low: int
    native_high: int
    clipped: Tuple[bool, bool]
    permille_reference: float
    values: Dict[str, Optional[Tuple[float, float]]]
    voxel_type: str = "int16"

    @property
    def type_range(self):
        """``(min, max)`` of the native type the thresholds were resolved for."""
        return native_range_of(self.voxel_type)

    def notes(self) -> Tuple[str, ...]:
        """Sentences for the metadata: a bound taken as the end of the type's range."""
        unit = threshold_unit_label(self.spec.unit, "mgHA/ccm")  # a bare "density" spec is mg HA/ccm
        lo, hi = self.type_range
        out = []
        if self.clipped[0]:
            out.append(f"lower threshold {self.spec.low:g} {unit} is below what {self.voxel_type} data can hold "
                       f"(native {_fmt_native(self.exact_low)}): taken as native {lo}, the same voxels (no lower limit)")
        if self.clipped[1]:
            out.append(f"upper threshold {self.spec.high:g} {unit} is above what {self.voxel_type} data can hold "
                       f"(native {_fmt_native(self.exact_high)}): taken as native {hi}, the same voxels (no upper limit)")
        return tuple(out)

    def to_dict(self) -> dict:
        return {
            "spec": {"low": float(self.spec.low), "high": float(self.spec.high),
                     "unit": self.spec.unit, "permille_reference": self.spec.permille_reference},
            "exact_native": [self.exact_low, self.exact_high],
            "native": [self.native_low, self.native_high],
            "clipped": list(self.clipped),
            "permille_reference_value": self.permille_reference,
            "voxel_type": self.voxel_type,
            "type_range": list(self.type_range),
            "rounding": ("not rounded (float data): the bounds select exact_low <= native <= exact_high"
                         if np.dtype(self.voxel_type).kind == "f" else
                         "nearest integer, halves away from zero; a bound beyond the type's range on its "
                         "open side is taken as the type's end (clipped), on its closed side refused"),
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
            low, high = math.ceil(low), math.floor(high)
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


def _fmt_native(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def density_unit_sentence(unit: str) -> str:
    """What a density threshold unit means here (on the command line ``density`` is the --density-unit;
    in Python ``"density"`` is mg HA/ccm), or "" for other units."""
    if unit not in ("density", "mgHA/ccm", "g/cc"):
        return ""
    label = threshold_unit_label(unit, "mgHA/ccm")
    if command_line_names():
        why = "--threshold-unit density follows --density-unit, g/cc unless set"
    else:
        why = "ThresholdSpec unit 'density' is mg HA/ccm; 'g/cc' and 'mgHA/ccm' name the unit"
    return f"; density here is {label} ({why}; 1 g/cc = 1000 mg HA/ccm)"


def _range_in_unit(converter: UnitConverter, unit: str, low, high) -> str:
    """The native range ``low..high`` in the threshold unit, when the calibration can say it."""
    if unit == "native":
        return ""
    if unit == "permille":
        return f" = {_ipl_permille(low):.6g}..{_ipl_permille(high):.6g} per mille"
    quantity = _QUANTITY[unit]
    if not converter.can_convert(quantity):
        return ""
    ends = sorted(float(converter.native_to(v, quantity)) for v in (low, high))
    return f" = {ends[0]:.6g}..{ends[1]:.6g} {threshold_unit_label(unit, 'mgHA/ccm')}"


def resolve_thresholds(spec: ThresholdSpec, calibration: Optional[Calibration], *,
                       header_max_data_value=None, path=None, voxel_type="int16") -> ResolvedThresholds:
    """Turn ``spec`` into the native values IPL would use for ``voxel_type`` data, plus their value in
    every unit.

    ``header_max_data_value`` is only used (and then required) with
    ``permille_reference="header-max"``. µ/HU/density specs need the matching calibration
    (``CalibrationMissingError`` naming the missing fields otherwise); per-mille and native specs
    work without one. ``voxel_type``: the file's native type (int16 when not given): integers are
    rounded, floats are not; a bound that leaves nothing of the type's range inside the thresholds is
    a :class:`~ScancoUnitsLib.errors.ThresholdRangeError` (module docstring). ``path`` only names the
    file in errors.
    """
    if not isinstance(spec, ThresholdSpec):
        raise ValueError(f"spec must be a ThresholdSpec, not {type(spec).__name__}")
    dtype = np.dtype(voxel_type)
    type_low, type_high = native_range_of(dtype)
    converter = UnitConverter(calibration, path=path)
    reference = float(PERMILLE_FULL_SCALE)
    if spec.unit == "permille" and spec.permille_reference == "header-max":
        value = header_max_data_value
        if value is None or isinstance(value, bool) or not isinstance(value, Real) \
                or not math.isfinite(value) or value <= 0:
            raise RequestError(path, f"{option_name('permille_reference')} header-max needs the header's "
                                     f"'Maximum data value' (a positive number), and this file has {value!r}; use "
                                     "the default reference (1000 per mille = native 32767)")
        reference = float(value)

    swapped = False  # which asked bound gives which native end (a negative density slope swaps them)
    if spec.unit == "permille":
        exact_low, rounded_low = permille_to_native(spec.low, reference)
        exact_high, rounded_high = permille_to_native(spec.high, reference)
        if dtype.kind == "f":
            product = (_exact(spec.low) * _exact(reference) / 1000, _exact(spec.high) * _exact(reference) / 1000)
            rounded_low, rounded_high = float(product[0]), float(product[1])
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
        swapped = exact_low > exact_high
        exact_low, exact_high = min(exact_low, exact_high), max(exact_low, exact_high)
        if dtype.kind == "f":
            rounded_low, rounded_high = exact_low, exact_high
        else:
            rounded_low, rounded_high = _round_float(exact_low), _round_float(exact_high)

    if rounded_low > type_high or rounded_high < type_low:
        beyond_low = rounded_low > type_high
        native_value = exact_low if beyond_low else exact_high
        which_spec = ("high" if swapped else "low") if beyond_low else ("low" if swapped else "high")
        asked = spec.low if which_spec == "low" else spec.high
        where = "above the maximum" if beyond_low else "below the minimum"
        unit_label = threshold_unit_label(spec.unit, "mgHA/ccm")
        raise ThresholdRangeError(
            path, f"{'lower' if which_spec == 'low' else 'upper'} threshold {asked:g} {unit_label} "
                  f"({option_name(which_spec)}) is native "
                  f"{_fmt_native(native_value)}, {where} of what {dtype.name} data can hold (native "
                  f"{_fmt_native(type_low)}..{_fmt_native(type_high)}"
                  f"{_range_in_unit(converter, spec.unit, type_low, type_high)}): no voxel could be inside the "
                  f"thresholds {spec.low:g}..{spec.high:g} {unit_label}{density_unit_sentence(spec.unit)}")

    if dtype.kind == "f":
        native_low, native_high = _float_bounds(max(rounded_low, type_low), min(rounded_high, type_high), dtype)
    else:
        native_low, native_high = max(rounded_low, type_low), min(rounded_high, type_high)
    values = {"permille": (_ipl_permille(native_low), _ipl_permille(native_high)),
              "native": (float(native_low), float(native_high))}
    for unit in VALUE_UNITS[2:]:
        if dtype.kind != "f" and converter.can_convert(unit):
            values[unit] = (float(converter.native_to(native_low, unit)),
                            float(converter.native_to(native_high, unit)))
        else:  # float data holds values already converted: they are not rescaled
            values[unit] = None
    return ResolvedThresholds(
        spec=spec, exact_low=exact_low, exact_high=exact_high,
        native_low=native_low, native_high=native_high,
        clipped=(rounded_low < type_low, rounded_high > type_high),
        permille_reference=reference, values=values, voxel_type=dtype.name)
