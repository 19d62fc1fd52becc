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
from typing import Dict, Optional, Tuple

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

    @property
    def mu_scaling_times_mu_water(self) -> float:
        """One float64 product, computed before the HU formula uses it."""
        return self.mu_scaling * self.mu_water_per_cm


#: the operations a formula step may take, in float64, one IEEE operation each
STEP_OPERATIONS = ("+", "-", "*", "/")
#: how a constant is written in formula text
_CONSTANT_TEXT = {"mu_scaling": "mu_scaling", "mu_water_per_cm": "mu_water",
                  "mu_scaling_times_mu_water": "(mu_scaling * mu_water)", "density_slope": "slope",
                  "density_intercept": "intercept", "mg_per_unit": "unit_factor"}
#: constants that are 1 for most files: the formula text leaves them out (describe_calibration names
#: them where a file's value is not 1); the step is taken anyway (times 1.0 is exact)
USUALLY_ONE = ("mg_per_unit",)
_INVERSE_OPERATION = {"+": "-", "-": "+", "*": "/", "/": "*"}


@dataclass(frozen=True)
class Step:
    """``value = value <op> operand``: ``operand`` a number or a :class:`CalibrationConstants` name."""

    op: str
    operand: object

    def __post_init__(self):
        if self.op not in STEP_OPERATIONS:
            raise ValueError(f"formula step {self.op!r}: expected one of {' '.join(STEP_OPERATIONS)}")

    def value(self, c: CalibrationConstants) -> float:
        return float(getattr(c, self.operand)) if isinstance(self.operand, str) else float(self.operand)

    def text(self) -> str:
        if isinstance(self.operand, str):
            return _CONSTANT_TEXT.get(self.operand, self.operand)
        return f"{self.operand:g}"


def _apply(op: str, value, operand):
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    return value / operand


def evaluate_steps(steps, native, c: CalibrationConstants):
    """The float64 reference: ``native`` through ``steps``, left to right."""
    value = native
    for step in steps:
        value = _apply(step.op, value, step.value(c))
    return value


def invert_steps(steps, value, c: CalibrationConstants):
    """The fractional native a value comes from: the steps undone, right to left."""
    for step in reversed(steps):
        value = _apply(_INVERSE_OPERATION[step.op], value, step.value(c))
    return value


def steps_text(steps, *, include_usually_one: bool = False) -> str:
    """``native * 1000 / (mu_scaling * mu_water) - 1000`` from the steps (parentheses where a sum is
    multiplied or divided)."""
    text, is_sum = "native", False
    for step in steps:
        if not include_usually_one and step.operand in USUALLY_ONE:
            continue
        if step.op in "*/" and is_sum:
            text = f"({text})"
        text, is_sum = f"{text} {step.op} {step.text()}", step.op in "+-"
    return text


def affine_of_steps(steps, c: CalibrationConstants) -> Tuple[float, float]:
    """``(scale, offset)`` with ``value = scale * native + offset`` (metadata, e.g. rescale fields; the
    voxels come from the steps themselves, which can differ from it in the last bit)."""
    scale, offset = 1.0, 0.0
    for step in steps:
        v = step.value(c)
        if step.op in "+-":
            offset = _apply(step.op, offset, v)
        else:
            scale, offset = _apply(step.op, scale, v), _apply(step.op, offset, v)
    return scale, offset


@dataclass(frozen=True)
class Quantity:
    """One physical (or stored) quantity: everything about it is read from here.

    ``role``: the output a user asks for (``--outputs``, node roles; the two densities share
    ``density``, picked by the density unit); None: made only by the engine's own rules (char masks,
    float AIMs). ``requires``: the :meth:`Calibration.missing_for` key it needs (None: no calibration).
    ``steps``: the float64 reference formula as one IEEE operation after another on the native value;
    the numpy and numba kernels, the inverse (thresholds), the formula text, the affine form in the
    metadata all derive from them. ``dtype``: output voxel type (None: the file's own type); an
    integer type is the reference rounded to nearest (half to even) and clipped to the type.
    """

    key: str
    title: str
    unit_label: str
    ucum: str
    ucum_meaning: str
    requires: Optional[str]
    file_suffix: str
    node_suffix: str
    dtype: Optional[str]
    axis_title: str = ""
    steps: Tuple[Step, ...] = ()
    role: Optional[str] = None
    #: formula text of a quantity without steps
    rule: str = ""
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
    def formula(self) -> str:
        return steps_text(self.steps) if self.steps else self.rule

    def forward(self, native, c: CalibrationConstants):
        return evaluate_steps(self.steps, native, c)

    def inverse(self, value, c: CalibrationConstants):
        return invert_steps(self.steps, value, c)

    @property
    def storage_key(self) -> str:
        """The quantity a writer sees when it decides whether and how it can hold this one."""
        return self.stores_as or self.key

    def axis_label(self, short: bool = False) -> str:
        """E.g. ``density [g HA/cc]`` (report and chart axes); ``short``: ``HU`` rather than ``HU [HU]``."""
        if short and self.axis_title == self.unit_label:
            return self.unit_label
        return f"{self.axis_title} [{self.unit_label}]"


_DENSITY_MG_STEPS = (Step("/", "mu_scaling"), Step("*", "density_slope"), Step("+", "density_intercept"),
                     Step("*", "mg_per_unit"))

_MU = Quantity("mu", "linear attenuation", "1/cm", "/cm", "1/cm", "mu", "_MU", "mu", "float32",
               "linear attenuation", (Step("/", "mu_scaling"),), role="mu")
_HU = Quantity("hu", "Hounsfield units", "HU", "[hnsf'U]", "Hounsfield unit", "hu", "_HU", "HU", "int16", "HU",
               (Step("*", 1000.0), Step("/", "mu_scaling_times_mu_water"), Step("-", 1000.0)), role="hu")
_DENSITY_MG = Quantity("density_mg_ha_ccm", "bone mineral density", "mg HA/ccm", "mg/cm3", "mg HA/ccm",
                       "density", "_RHO", "density", "float32", "density", _DENSITY_MG_STEPS, role="density")
_DENSITY_G = Quantity("density_g_cc", "bone mineral density", "g HA/cc", "g/cm3", "g HA/cc", "density",
                      "_RHO", "density", "float32", "density", _DENSITY_MG_STEPS + (Step("/", 1000.0),),
                      role="density")
_NATIVE = Quantity("native", "native SCANCO values", "native", "1", "native SCANCO value", None,
                   "_native", "native", None, "native values", role="native", rule="native", pass_through=True)
_MASK = Quantity("mask", "binary threshold mask", "1", "1", "inside the thresholds", None,
                 "_BWmask", "mask", "uint8", "mask", role="mask", rule="native_low <= native <= native_high",
                 label=True)
_CHAR_MASK = Quantity("char_mask", "mask from SCANCO char image (non-zero -> 1)", "1", "1", "SCANCO mask", None,
                      "_mask", "mask", "uint8", "char mask as stored", rule="native != 0", stores_as="mask",
                      label=True)
_FLOAT = Quantity("float", "float image as stored in the AIM", "as stored", "1", "as stored", None,
                  "_float", "native", None, "float image as stored", rule="as stored", stores_as="native",
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
#: the order roles are listed in (command line help, metadata); a role not named here follows them
_ROLE_ORDER = ("hu", "density", "mask", "mu", "native")
_ROLES_OF_QUANTITIES = tuple(dict.fromkeys(q.role for q in QUANTITIES.values() if q.role is not None))
#: roles of output files (command line, convert_file): one per quantity role
FILE_ROLES = tuple(sorted(_ROLES_OF_QUANTITIES, key=lambda r: (_ROLE_ORDER + (r,)).index(r)))
#: the mask is two kinds of Slicer node
_MASK_NODE_ROLES = ("mask_labelmap", "mask_segmentation")
#: roles of Slicer nodes (load_scan_into_scene), in creation order: the volumes, then the mask's nodes
NODE_ROLES = tuple(r for r in FILE_ROLES if r != "mask") + _MASK_NODE_ROLES
#: the roles that need a calibration
CALIBRATED_ROLES = tuple(r for r in FILE_ROLES
                         if any(q.is_calibrated for q in QUANTITIES.values() if q.role == r))
#: words users may type for a role
ROLE_ALIASES = {"labelmap": "mask_labelmap", "segmentation": "mask_segmentation", "attenuation": "mu",
                "rho": "density", "bwmask": "mask"}
#: node role -> the file role that holds the same voxels
FILE_ROLE_OF_NODE_ROLE = {**{r: r for r in FILE_ROLES if r != "mask"}, **{r: "mask" for r in _MASK_NODE_ROLES}}

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
    if role in QUANTITIES:
        return role
    keys = [k for k, q in QUANTITIES.items() if q.role == role]
    if len(keys) != 1:
        raise ValueError(f"unknown output {role!r}")
    return keys[0]


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
