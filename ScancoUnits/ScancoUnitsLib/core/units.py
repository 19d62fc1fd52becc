"""Exact conversion of SCANCO native voxel values into physical units.

Quantities and output units:

==================== ============== ===================================================
quantity             unit           reference formula (float64, evaluated in this order)
==================== ============== ===================================================
``mu``               1/cm           ``native / mu_scaling``
``hu``               HU             ``native * 1000 / (mu_scaling * mu_water) - 1000``
``density_mg_ha_ccm`` mg HA/ccm     ``((native / mu_scaling) * slope + intercept) * unit_factor``
``density_g_cc``     g HA/cc        ``((native / mu_scaling) * slope + intercept) * unit_factor / 1000``
==================== ============== ===================================================

``unit_factor`` is ``Calibration.density_mg_per_unit``: mg HA/ccm per unit of the file's own density
unit (1 for ``mg HA/ccm`` or no unit, 1000 for ``g HA/ccm``). The multiplication is skipped when it
is 1, so mg files give exactly the values they gave before the unit was read.

``mu_scaling * mu_water`` is one float64 product computed first; every other step is one IEEE
float64 operation on the native value taken as float64. The "reference" value of a voxel is that
float64 result. Outputs:

* ``mu`` and both densities: float32 = the float64 reference cast once to float32 (round to nearest).
* ``hu``: int16 by default = ``np.rint`` of the reference (round half to even), clipped to
  [-32768, 32767]; the number of clipped voxels is counted (``hu_clipped_voxels``). With
  ``hu_dtype="float32"`` the reference cast to float32, never clipped.

Native int8/uint8/int16/uint16 slabs go through a lookup table holding the output for every
possible native value, built with the reference formula, so the result is bit-identical to the
reference. Other dtypes (int32, float32, float64...) are evaluated in float64 chunks. Integer
arithmetic in the native dtype is never used (``native * 1000`` overflows int16).

Nothing is defaulted: asking for a quantity whose constants are absent or unusable
(``Calibration.missing_for``) raises :class:`~ScancoUnitsLib.errors.CalibrationMissingError`.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from ..errors import CalibrationMissingError
from .. import defaults
from .header import Calibration
from .quantities import (CALIBRATED_QUANTITIES, HU_DTYPES, USUALLY_ONE, CalibrationConstants, affine_of_steps,
                         steps_text)
from .quantities import QUANTITIES as _Q

#: the quantities a calibration converts to (defined in :mod:`quantities`)
QUANTITIES = CALIBRATED_QUANTITIES
#: physical unit of each quantity
QUANTITY_UNITS = {key: _Q[key].unit_label for key in QUANTITIES}

INT16_MIN, INT16_MAX = -32768, 32767

# voxels per chunk for the float64 path and for the lookup-table index buffer (2 MiB of float64 or
# intp: small enough to stay in the CPU cache while a slab is converted)
_CHUNK_VOXELS = 1 << 18
#: native dtypes small enough for a lookup table over every value (the converter and the slab kernels)
LUT_DTYPES = ("int8", "uint8", "int16", "uint16")


def _check_quantity(quantity: str) -> str:
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {', '.join(QUANTITIES)}")
    return quantity


class UnitConverter:
    """Turn native voxel values into µ, HU or density using one file's :class:`Calibration`.

    ``path`` only names the file in error messages. The converter can be built for any
    calibration; a quantity is refused (``CalibrationMissingError``) when it is asked for and the
    constants it needs are unusable. ``hu_clipped_voxels`` accumulates, over every
    :meth:`convert` call, the voxels whose int16 HU had to be clipped; ``last_hu_clipped_voxels``
    holds the count of the latest call.
    """

    def __init__(self, calibration: Optional[Calibration], *, path=None):
        self.calibration = calibration if calibration is not None else Calibration()
        self.path = path
        self.hu_clipped_voxels = 0
        self.last_hu_clipped_voxels = 0
        self._luts: Dict[tuple, tuple] = {}

    # ---- availability ---------------------------------------------------------------------------
    def missing_for(self, quantity: str):
        """Names of the unusable calibration fields for ``quantity`` (empty tuple: available)."""
        return self.calibration.missing_for(_Q[_check_quantity(quantity)].requires)

    def can_convert(self, quantity: str) -> bool:
        return not self.missing_for(quantity)

    def require(self, quantity: str) -> None:
        """Raise CalibrationMissingError when ``quantity`` cannot be computed."""
        missing = self.missing_for(quantity)
        if missing:
            raise CalibrationMissingError(self.path, quantity, missing)

    @staticmethod
    def output_dtype(quantity: str, *, hu_dtype: str = defaults.HU_DTYPE) -> np.dtype:
        """Dtype :meth:`convert` returns for ``quantity``."""
        _check_quantity(quantity)
        if quantity == "hu":
            if hu_dtype not in HU_DTYPES:
                raise ValueError(f"hu_dtype must be one of {HU_DTYPES}, not {hu_dtype!r}")
            return np.dtype(hu_dtype)
        return np.dtype("float32")

    # ---- reference formulas (float64, scalars or arrays) ----------------------------------------
    def constants(self) -> CalibrationConstants:
        """The float64 constants of the formulas (NaN where the file has none)."""
        return calibration_constants(self.calibration)

    def _reference(self, native, quantity: str):
        """The float64 reference value(s) of ``quantity`` for native value(s) (already float64)."""
        return _Q[quantity].forward(native, self.constants())

    def native_to(self, native, quantity: str):
        """Reference value of ``quantity`` (float64) for native value(s); no rounding."""
        self.require(quantity)
        return self._reference(np.asarray(native, dtype=np.float64)[()], quantity)

    def to_native(self, value, quantity: str):
        """Fractional native value (float64) that the reference formula maps to ``value``.

        Inverses: ``mu * mu_scaling``; ``(hu + 1000) * (mu_scaling * mu_water) / 1000``;
        ``(density_mg / unit_factor - intercept) / slope * mu_scaling``; g/cc is multiplied by 1000
        first (the division by ``unit_factor`` is skipped when it is 1).
        """
        self.require(quantity)
        value = np.asarray(value, dtype=np.float64)[()]
        return _Q[quantity].inverse(value, self.constants())

    def native_to_mu(self, native):
        return self.native_to(native, "mu")

    def native_to_hu(self, native):
        return self.native_to(native, "hu")

    def native_to_density(self, native):
        """Density in mg HA/ccm."""
        return self.native_to(native, "density_mg_ha_ccm")

    def mu_to_native(self, mu):
        return self.to_native(mu, "mu")

    def hu_to_native(self, hu):
        return self.to_native(hu, "hu")

    def density_to_native(self, density_mg_ha_ccm):
        return self.to_native(density_mg_ha_ccm, "density_mg_ha_ccm")

    # ---- slab conversion ------------------------------------------------------------------------
    def convert(self, native_slab, quantity: str, out=None, *, hu_dtype: str = defaults.HU_DTYPE) -> np.ndarray:
        """Convert a slab of native values; returns ``out`` (allocated when None).

        ``out`` must have the slab's shape, dtype :meth:`output_dtype` and be C-contiguous.
        A slab that is not C-contiguous is copied first. For int16 HU the clipped-voxel count of
        this call is in ``last_hu_clipped_voxels`` and is added to ``hu_clipped_voxels``.
        """
        self.require(quantity)
        out_dtype = self.output_dtype(quantity, hu_dtype=hu_dtype)
        native = np.asarray(native_slab)
        kind = native.dtype.kind
        if kind not in "iuf":
            raise ValueError(f"native voxels must be integers or floats, not {native.dtype}")
        if not native.dtype.isnative:  # the lookup table indexes native-order bit patterns
            native = native.astype(native.dtype.newbyteorder("="))
        if out is None:
            out = np.empty(native.shape, dtype=out_dtype)
        elif not isinstance(out, np.ndarray) or out.shape != native.shape or out.dtype != out_dtype:
            raise ValueError(
                f"out must be an ndarray of shape {native.shape} and dtype {out_dtype}, got "
                f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out).__name__)}")
        elif not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        src = np.ascontiguousarray(native).reshape(-1)
        dst = out.reshape(-1)
        clip = quantity == "hu" and out_dtype == np.int16
        if native.dtype.name in LUT_DTYPES:
            clipped = self._convert_lut(src, dst, quantity, out_dtype)
        else:
            clipped = self._convert_float64(src, dst, quantity, clip)
        self.last_hu_clipped_voxels = clipped
        self.hu_clipped_voxels += clipped
        return out

    def _lookup_table(self, native_dtype: np.dtype, quantity: str, out_dtype: np.dtype):
        """(table, index dtype, clipped natives low/high) for a small native dtype, cached.

        The table is indexed by the native bit pattern read as unsigned (int16 -1 -> index 65535).
        """
        key = (native_dtype.name, quantity, out_dtype.name)
        if key not in self._luts:
            index_dtype = np.dtype(f"u{native_dtype.itemsize}")
            natives = np.arange(2 ** (8 * native_dtype.itemsize), dtype=np.int64)
            natives = natives.astype(index_dtype).view(native_dtype)  # bit pattern -> native
            reference = self._reference(natives.astype(np.float64), quantity)
            below = above = None
            if quantity == "hu" and out_dtype == np.int16:
                reference = np.rint(reference)
                # HU grows with native (positive scale), so clipped natives are both range ends
                low_clip, high_clip = reference < INT16_MIN, reference > INT16_MAX
                below = int(natives[low_clip].max()) if low_clip.any() else None
                above = int(natives[high_clip].min()) if high_clip.any() else None
                reference = np.clip(reference, INT16_MIN, INT16_MAX)
            self._luts[key] = (reference.astype(out_dtype), index_dtype, below, above)
        return self._luts[key]

    def _convert_lut(self, src, dst, quantity, out_dtype) -> int:
        table, index_dtype, below, above = self._lookup_table(src.dtype, quantity, out_dtype)
        indices = src.view(index_dtype)
        buffer = np.empty(min(_CHUNK_VOXELS, src.size), dtype=np.intp)  # np.take wants intp
        clipped = 0
        for start in range(0, src.size, _CHUNK_VOXELS):
            stop = min(start + _CHUNK_VOXELS, src.size)
            idx = buffer[: stop - start]
            idx[...] = indices[start:stop]
            # the indices are a bit pattern, always inside the table: "wrap" never wraps (and, unlike
            # "clip", needs no bounds check per voxel)
            np.take(table, idx, out=dst[start:stop], mode="wrap")
            if below is not None:
                clipped += int(np.count_nonzero(src[start:stop] <= below))
            if above is not None:
                clipped += int(np.count_nonzero(src[start:stop] >= above))
        return clipped

    def _convert_float64(self, src, dst, quantity, clip: bool) -> int:
        clipped = 0
        for start in range(0, src.size, _CHUNK_VOXELS):
            stop = min(start + _CHUNK_VOXELS, src.size)
            values = self._reference(src[start:stop].astype(np.float64), quantity)
            if clip:
                if np.isnan(values).any():
                    raise ValueError("native voxels contain NaN, which int16 HU cannot hold; "
                                     "ask for hu_dtype='float32'")
                np.rint(values, out=values)
                clipped += int(np.count_nonzero(values < INT16_MIN))
                clipped += int(np.count_nonzero(values > INT16_MAX))
                np.clip(values, INT16_MIN, INT16_MAX, out=values)
            dst[start:stop] = values  # one cast float64 -> output dtype
        return clipped

    # ---- metadata -------------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-safe description of the constants and formulas (for output metadata).

        For each quantity: unit, whether it is available (and the missing fields otherwise), the
        reference formula, and the equivalent affine map ``value = scale * native + offset``.
        The affine form is for metadata (e.g. NRRD/DICOM rescale fields); voxel values come from
        the reference formula, which can differ from it in the last float64 bit.
        """
        return describe_calibration(self.calibration)


def calibration_constants(calibration: Optional[Calibration]) -> CalibrationConstants:
    """:class:`~ScancoUnitsLib.core.quantities.CalibrationConstants` of a calibration (NaN where absent)."""
    cal = calibration if calibration is not None else Calibration()

    def number(value):
        return float(value) if isinstance(value, (int, float)) else float("nan")

    factor = getattr(cal, "density_mg_per_unit", None)
    return CalibrationConstants(number(cal.mu_scaling), number(cal.mu_water_per_cm), number(cal.density_slope),
                                number(cal.density_intercept), float(factor) if factor else 1.0)


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def describe_calibration(calibration: Optional[Calibration]) -> dict:
    """See :meth:`UnitConverter.describe`."""
    cal = calibration if calibration is not None else Calibration()
    out = {
        "mu_scaling": _finite_or_none(cal.mu_scaling),
        "mu_water_per_cm": _finite_or_none(cal.mu_water_per_cm),
        "density_slope": _finite_or_none(cal.density_slope),
        "density_intercept": _finite_or_none(cal.density_intercept),
        "density_unit_in_file": cal.density_unit,
        # mg HA/ccm per unit of the file's density (the formulas' unit_factor); None: not a density unit
        "density_unit_factor": cal.density_mg_per_unit,
        "density_unit_note": (f"no density unit in the file: taken as {defaults.FILE_DENSITY_UNIT_WHEN_ABSENT}"
                              if cal.density_unit_assumed else None),
        "conflicts": [c.to_dict() for c in cal.conflicts],
        "quantities": {},
    }
    constants = calibration_constants(cal)
    for quantity in QUANTITIES:
        q = _Q[quantity]
        missing = cal.missing_for(q.requires)
        formula = q.formula
        for step in q.steps:   # a constant the formula text leaves out because it is usually 1
            if step.operand in USUALLY_ONE and getattr(constants, step.operand) != 1.0:
                formula = (f"{steps_text(q.steps, include_usually_one=True)}, unit_factor "
                           f"{getattr(constants, step.operand):g} ({cal.density_unit} in the file)")
        entry = {"unit": q.unit_label, "formula": formula,
                 "available": not missing, "missing": list(missing), "scale": None, "offset": None}
        if not missing:
            entry["scale"], entry["offset"] = affine_of_steps(q.steps, constants)
        out["quantities"][quantity] = entry
    return out
