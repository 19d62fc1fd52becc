"""Every quantity ScancoUnits makes, defined once.

A :class:`Quantity` says what a volume holds: its unit (label and UCUM code), the calibration it
needs, the float64 formula and its inverse (thresholds), the formula text (metadata, help), the file
suffix, the node-name suffix and the output voxel type. Units, thresholds, metadata, the QC report,
the histogram chart, Slicer node units, panel labels and the command line's choices read it from
here. The lookup-table arithmetic in :mod:`units` evaluates these same formulas.

Roles are what a user asks for (``hu``, ``density``, ``mask`` ...); ``density`` becomes one of the
two density quantities by the density unit of the request. Adding a quantity: one entry in
:data:`QUANTITIES` (and its role in :data:`ROLES` if users can ask for it), plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from .. import defaults
from .header import density_mg_per_unit


@dataclass(frozen=True)
class CalibrationConstants:
    """The float64 constants the formulas use (``mg_per_unit``: mg HA/ccm per unit of the file's
    density calibration, 1 for mg HA/ccm files, 1000 for g HA/ccm files)."""

    mu_scaling: float
    mu_water_per_cm: float = float("nan")
    density_slope: float = float("nan")
    density_intercept: float = float("nan")
    mg_per_unit: float = 1.0


def _density_mg(native, c: CalibrationConstants):
    density = (native / c.mu_scaling) * c.density_slope + c.density_intercept
    return density if c.mg_per_unit == 1.0 else density * c.mg_per_unit


def _density_mg_inverse(value, c: CalibrationConstants):
    if c.mg_per_unit != 1.0:
        value = value / c.mg_per_unit
    return (value - c.density_intercept) / c.density_slope * c.mu_scaling


@dataclass(frozen=True)
class Quantity:
    """One physical (or stored) quantity.

    ``requires``: the :meth:`Calibration.missing_for` key it needs (None: no calibration).
    ``forward(native_float64, constants)`` / ``inverse(value, constants)``: the float64 reference
    formula, evaluated in exactly this order everywhere. ``dtype``: output voxel type (None: the
    file's own type).
    """

    key: str
    title: str
    unit_label: str
    ucum: str
    ucum_meaning: str
    requires: Optional[str]
    formula: str
    file_suffix: str
    node_suffix: str
    dtype: Optional[str]
    axis_title: str = ""
    forward: Optional[Callable] = None
    inverse: Optional[Callable] = None
    #: the storage rule, in one place: ``stores_as`` is the quantity a format must hold to write this
    #: one (a char file's mask is stored as a mask, a float AIM as native values; None: itself),
    #: ``label`` marks a mask (label intent in NIfTI, "any" pyramid levels, AIM mask), ``pass_through``
    #: an output that is the native slab itself (no kernel, no buffer)
    stores_as: Optional[str] = None
    label: bool = False
    pass_through: bool = False

    @property
    def is_calibrated(self) -> bool:
        return self.requires is not None

    @property
    def storage_key(self) -> str:
        """The quantity a writer sees when it decides whether and how it can hold this one."""
        return self.stores_as or self.key

    def axis_label(self, short: bool = False) -> str:
        """E.g. ``density [g HA/cc]`` (report and chart axes); ``short``: ``HU`` rather than ``HU [HU]``."""
        if short and self.axis_title == self.unit_label:
            return self.unit_label
        return f"{self.axis_title} [{self.unit_label}]"


_MU = Quantity("mu", "linear attenuation", "1/cm", "/cm", "1/cm", "mu", "native / mu_scaling", "_MU", "mu",
               "float32", "linear attenuation", lambda n, c: n / c.mu_scaling, lambda v, c: v * c.mu_scaling)
_HU = Quantity("hu", "Hounsfield units", "HU", "[hnsf'U]", "Hounsfield unit", "hu",
               "native * 1000 / (mu_scaling * mu_water) - 1000", "_HU", "HU", "int16", "HU",
               lambda n, c: n * 1000.0 / (c.mu_scaling * c.mu_water_per_cm) - 1000.0,
               lambda v, c: (v + 1000.0) * (c.mu_scaling * c.mu_water_per_cm) / 1000.0)
_DENSITY_MG = Quantity("density_mg_ha_ccm", "bone mineral density", "mg HA/ccm", "mg/cm3", "mg HA/ccm",
                       "density", "(native / mu_scaling) * slope + intercept", "_RHO", "density", "float32",
                       "density", _density_mg, _density_mg_inverse)
_DENSITY_G = Quantity("density_g_cc", "bone mineral density", "g HA/cc", "g/cm3", "g HA/cc", "density",
                      "((native / mu_scaling) * slope + intercept) / 1000", "_RHO", "density", "float32",
                      "density", lambda n, c: _density_mg(n, c) / 1000.0,
                      lambda v, c: _density_mg_inverse(v * 1000.0, c))
_NATIVE = Quantity("native", "native SCANCO values", "native", "1", "native SCANCO value", None, "native",
                   "_native", "native", None, "native values", pass_through=True)
_MASK = Quantity("mask", "binary threshold mask", "1", "1", "inside the thresholds", None,
                 "native_low <= native <= native_high", "_BWmask", "mask", "uint8", "mask", label=True)
_CHAR_MASK = Quantity("char_mask", "mask from SCANCO char image (non-zero -> 1)", "1", "1", "SCANCO mask", None,
                      "native != 0", "_mask", "mask", "uint8", "char mask as stored", stores_as="mask", label=True)
_FLOAT = Quantity("float", "float image as stored in the AIM", "as stored", "1", "as stored", None,
                  "as stored", "_float", "native", None, "float image as stored", stores_as="native",
                  pass_through=True)

#: every quantity by key, in output order
QUANTITIES: Dict[str, Quantity] = {q.key: q for q in (_HU, _DENSITY_MG, _DENSITY_G, _MU, _NATIVE, _MASK,
                                                        _CHAR_MASK, _FLOAT)}


def storage_key(key: str) -> str:
    """The quantity a writer must hold to store ``key`` (the storage rule; a name outside the registry
    is itself)."""
    known = QUANTITIES.get(key)
    return known.storage_key if known is not None else key


def is_label(key: str) -> bool:
    """Whether a volume of ``key`` is a mask (label intent, "any" pyramid levels, AIM mask)."""
    known = QUANTITIES.get(key)
    return known is not None and known.label


#: the calibrated quantities (those with a formula)
CALIBRATED_QUANTITIES = tuple(k for k, q in QUANTITIES.items() if q.is_calibrated)

# ---- roles: what a user asks for ---------------------------------------------------------------
#: roles of output files (command line, convert_file)
FILE_ROLES = ("hu", "density", "mask", "mu", "native")
#: roles of Slicer nodes (load_scan_into_scene), in creation order
NODE_ROLES = ("hu", "density", "mu", "native", "mask_labelmap", "mask_segmentation")
#: the roles that need a calibration
CALIBRATED_ROLES = ("hu", "density", "mu")
#: words users may type for a role
ROLE_ALIASES = {"labelmap": "mask_labelmap", "segmentation": "mask_segmentation", "attenuation": "mu",
                "rho": "density", "bwmask": "mask"}
#: node role -> the file role that holds the same voxels
FILE_ROLE_OF_NODE_ROLE = {"hu": "hu", "density": "density", "mu": "mu", "native": "native",
                          "mask_labelmap": "mask", "mask_segmentation": "mask"}

# ---- density units ------------------------------------------------------------------------------
#: canonical density unit names (command line choices) -> quantity key
DENSITY_UNITS = {"g/cc": "density_g_cc", "mgHA/ccm": "density_mg_ha_ccm"}
#: mg HA/ccm per unit -> canonical name
_DENSITY_UNIT_OF_FACTOR = {1.0: "mgHA/ccm", 1000.0: "g/cc"}


def canonical_density_unit(name) -> str:
    """The canonical name (``"g/cc"``, ``"mgHA/ccm"``) of a density unit given as a canonical name, a
    quantity key or any unit text a SCANCO file may carry (``"mg HA/ccm"``, ``"g HA/cm3"``: the one
    spelling table, :data:`core.header.DENSITY_UNIT_MG_PER_UNIT`); ValueError otherwise."""
    text = name.strip() if isinstance(name, str) else ""
    for canonical, key in DENSITY_UNITS.items():
        if text in (canonical, key):
            return canonical
    factor = density_mg_per_unit(text) if text else None
    if factor not in _DENSITY_UNIT_OF_FACTOR:
        raise ValueError(f"unknown density unit {name!r}; use one of {', '.join(DENSITY_UNITS)}")
    return _DENSITY_UNIT_OF_FACTOR[factor]


def density_quantity(density_unit: str) -> str:
    """Quantity key of a density unit in any accepted spelling."""
    return DENSITY_UNITS[canonical_density_unit(density_unit)]


def role_quantity(role: str, density_unit: str = defaults.DENSITY_UNIT) -> str:
    """Quantity key a role holds (``density`` follows the density unit; both mask roles: ``mask``)."""
    if role == "density":
        return density_quantity(density_unit)
    role = FILE_ROLE_OF_NODE_ROLE.get(role, role)
    if role not in QUANTITIES:
        raise ValueError(f"unknown output {role!r}")
    return role


# ---- thresholds ---------------------------------------------------------------------------------
#: threshold units a user can name; "density" follows the request's density unit
THRESHOLD_UNITS = ("permille", "native", "mu", "hu", "density", "mgHA/ccm", "g/cc")
#: threshold unit -> quantity key (density resolved separately)
THRESHOLD_UNIT_QUANTITY = {"mu": "mu", "hu": "hu", "mgHA/ccm": "density_mg_ha_ccm", "g/cc": "density_g_cc"}
#: the units a resolved threshold is given in (metadata, report, panel)
THRESHOLD_VALUE_UNITS = ("permille", "native", "mu", "hu", "density_mg_ha_ccm", "density_g_cc")
#: readable names of threshold units and value units
UNIT_LABELS = {"permille": "per mille", "native": "native", "mu": "1/cm", "hu": "HU",
               "mgHA/ccm": "mg HA/ccm", "g/cc": "g HA/cc",
               "density_mg_ha_ccm": "mg HA/ccm", "density_g_cc": "g HA/cc"}
HU_DTYPES = ("int16", "float32")


def threshold_unit_label(unit: str, density_unit: str = defaults.DENSITY_UNIT) -> str:
    if unit == "density":
        unit = canonical_density_unit(density_unit)
    return UNIT_LABELS.get(unit, unit)


def output_dtype(quantity: str, native_dtype, hu_dtype: str = defaults.HU_DTYPE) -> np.dtype:
    """Voxel type of a quantity's output for a file of ``native_dtype``."""
    q = QUANTITIES[quantity]
    if quantity == "hu":
        if hu_dtype not in HU_DTYPES:
            raise ValueError(f"HU dtype must be one of {', '.join(HU_DTYPES)}, not {hu_dtype!r}")
        return np.dtype(hu_dtype)
    return np.dtype(q.dtype if q.dtype is not None else native_dtype)
