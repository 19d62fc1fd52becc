"""One request: what to make of a SCANCO file, with one set of defaults and one set of rules.

The command line, :func:`~ScancoUnitsLib.pipeline.convert.convert_file`, :func:`~ScancoUnitsLib.slicer.scene.load_scan_into_scene`,
the Slicer logic and the Slicer file reader's properties all build a :class:`ConversionRequest`, and
:func:`plan_request` turns it into the outputs of one file (a :class:`RequestPlan`). They cannot
disagree: the defaults (the seed notebook's: HU, density in g/cc, mask 250-1000 per mille), the
rules for char and float AIMs and uncalibrated files, and the messages live here.

Rules (``plan_request``):

* Grey-value (integer) files: ``outputs=None`` gives HU, density and the mask (Slicer adds the
  segmentation). When the calibration cannot give HU or density, the file is refused, on the command
  line and in Slicer alike (a batch must not silently change what it writes for one file; the message
  names the missing fields and the outputs that still work). Slicer's drop asks for native values
  of such a file explicitly (``scene.reader_options_from_properties``).
* A char file (int8/uint8: a SCANCO mask) is a mask: its mask is its non-zero voxels unless
  thresholds are given explicitly; by default it gives that mask (Slicer: also the native values).
* A float file holds values IPL already converted: written or loaded as stored, never rescaled.
* Explicit outputs are strict everywhere: HU, density or µ of a char or float file, or of a file
  without the calibration they need, is a :class:`~ScancoUnitsLib.errors.RequestError` /
  :class:`~ScancoUnitsLib.errors.CalibrationMissingError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .. import defaults
from ..errors import CalibrationMissingError, RequestError
from ..core.header import ScancoHeader
from ..core.option_names import option_name, outputs_phrase, value_phrase
from ..core.quantities import (
    CALIBRATED_ROLES,
    DENSITY_UNITS,
    FILE_ROLE_OF_NODE_ROLE,
    FILE_ROLES,
    HU_DTYPES,
    NODE_ROLES,
    QUANTITIES,
    ROLE_ALIASES,
    canonical_density_unit,
    output_dtype,
    role_quantity,
    threshold_unit_label,
)
from ..core.thresholds import ResolvedThresholds, ThresholdSpec, resolve_thresholds
from ..core.units import UnitConverter
from ..formats.writers import FORMAT_NAMES, get_format

DEFAULT_THRESHOLDS = ThresholdSpec(*defaults.THRESHOLDS_PERMILLE, unit=defaults.THRESHOLD_UNIT,
                                   permille_reference=defaults.PERMILLE_REFERENCE)


def threshold_spec_from(thresholds=None) -> ThresholdSpec:
    """A :class:`ThresholdSpec` from None (250..1000 per mille), a spec, ``(low, high)`` (per mille),
    ``(low, high, unit)``, a dict with low/high/unit or the text ``"low high [unit]"``."""
    if thresholds is None:
        return DEFAULT_THRESHOLDS
    if isinstance(thresholds, ThresholdSpec):
        return thresholds
    if isinstance(thresholds, dict):
        return ThresholdSpec(**thresholds)
    if isinstance(thresholds, str):
        parts = thresholds.replace(",", " ").split()
        if len(parts) not in (2, 3):
            raise ValueError(f"thresholds text must be 'low high [unit]', got {thresholds!r}")
        try:
            numbers = [float(p) for p in parts[:2]]
        except ValueError:
            raise ValueError(f"thresholds text must be 'low high [unit]', got {thresholds!r}") from None
        return ThresholdSpec(numbers[0], numbers[1], *(parts[2:] or ["permille"]))
    try:
        items = tuple(thresholds)
    except TypeError:
        raise ValueError(f"cannot make thresholds from {thresholds!r}") from None
    if len(items) not in (2, 3):
        raise ValueError(f"thresholds must be (low, high) or (low, high, unit), got {thresholds!r}")
    return ThresholdSpec(*items) if len(items) == 3 else ThresholdSpec(items[0], items[1], "permille")


def normalise_roles(outputs, allowed: Sequence[str], *, strict: bool = False) -> Tuple[str, ...]:
    """Roles from a list or a comma/space separated string, aliases resolved, in ``allowed`` order;
    ValueError naming unknown ones. ``strict`` (what a user typed: the command line and the Python
    API's ``outputs``): an empty item (``",hu"``, ``"hu,,mask"``) or a role named twice (``"hu,hu"``,
    ``"density,rho"``) is a ValueError too; otherwise duplicates are dropped."""
    if isinstance(outputs, str):
        text = outputs
        outputs = [part for part in outputs.replace(",", " ").split() if part]
        if strict and (any(not part.strip() for part in text.split(",")) or not outputs):
            raise ValueError(f"{option_name('outputs')} {text!r} has an empty item; name each output once, "
                             f"separated by commas: {', '.join(allowed)}")
    result = []
    for given in outputs:
        role = ROLE_ALIASES.get(str(given).lower(), str(given).lower())
        if role == "mask" and "mask" not in allowed:
            role = "mask_labelmap"
        if role not in allowed:
            raise ValueError(f"unknown output {role!r}; choose from {', '.join(allowed)}")
        if role in result and strict:
            raise ValueError(f"{option_name('outputs')}: {role} is named twice; name each output once")
        if role not in result:
            result.append(role)
    if not result:
        raise ValueError(f"no output selected; choose from {', '.join(allowed)}")
    return tuple(r for r in allowed if r in result)


@dataclass(frozen=True)
class ConversionRequest:
    """What to make of a file. Defaults follow the seed notebook: HU, density in g/cc, 250-1000 per
    mille mask.

    ``outputs``: file roles (hu, density, mask, mu, native); None = the default set for this file
    (see the module rules). ``thresholds``: a :class:`ThresholdSpec` (anything
    :func:`threshold_spec_from` takes; None = the default 250-1000 per mille, which for a char file
    means its non-zero voxels). ``density_unit``: "g/cc" or "mgHA/ccm" (other spellings
    are accepted and made canonical). The rest says how files are written.
    """

    outputs: Optional[Tuple[str, ...]] = None
    thresholds: ThresholdSpec = DEFAULT_THRESHOLDS
    density_unit: str = defaults.DENSITY_UNIT
    hu_dtype: str = defaults.HU_DTYPE
    formats: Tuple[str, ...] = (defaults.OUTPUT_FORMAT,)
    compress: bool = False                  # gzip NRRD / .nii.gz
    detached: bool = False                  # .nhdr + .raw
    overwrite: bool = False
    slab_slices: Optional[int] = None       # None: about 1 Mi voxels a slab
    threads: int = 2                        # gzip threads per output
    output_stem: Optional[str] = None       # default: input name without extension and ;N
    report: bool = False                    # QC picture <stem>_report.png (needs matplotlib)
    statistics: bool = False                # per-scan statistics in _metadata.json (exact, one pass)
    fsync: bool = True                      # files and folder on disk before the metadata (commit record)
    regions: tuple = ()                     # RegionSource / "NAME=PATH" / (name, path): per-region statistics
    regions_optional: bool = False          # a missing region file: a warning, not a failure of the input
    region_files: bool = False              # --outputs roi: each region also written on the scan's grid

    def __post_init__(self):
        from .regions import split_roi_role

        outputs, asked_roi = split_roi_role(self.outputs)
        if asked_roi or self.region_files:
            if not self.regions:
                raise ValueError(f"{option_name('outputs')} roi writes the regions on the scan's grid: name them "
                                 f"with {option_name('roi')} NAME=PATH or {option_name('roi_pattern')} NAME=PATTERN")
            object.__setattr__(self, "region_files", True)
        if outputs is not None and not (asked_roi and not outputs):   # "roi" alone: no volume besides them
            outputs = normalise_roles(outputs, FILE_ROLES, strict=True)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "density_unit", canonical_density_unit(self.density_unit))
        if self.hu_dtype not in HU_DTYPES:
            raise ValueError(f"HU dtype must be int16 or float32, not {self.hu_dtype!r}")
        if self.slab_slices is not None and self.slab_slices < 1:
            raise ValueError("slab_slices must be at least 1")
        if self.regions:
            from .regions import region_sources

            object.__setattr__(self, "regions", region_sources(self.regions))
            object.__setattr__(self, "statistics", True)
        if not isinstance(self.thresholds, ThresholdSpec):
            object.__setattr__(self, "thresholds", threshold_spec_from(self.thresholds))
        formats = self.formats.replace(",", " ").split() if isinstance(self.formats, str) else self.formats
        formats = tuple(dict.fromkeys(str(f).strip().lower() for f in formats if str(f).strip()))
        unknown = [f for f in formats if f not in FORMAT_NAMES]
        if unknown or not formats:
            raise ValueError(f"unknown output format(s) {', '.join(unknown) or '(none)'}; "
                             f"choose from {', '.join(FORMAT_NAMES)}")
        object.__setattr__(self, "formats", formats)
        # a format that cannot hold an output (AIM: native and mask only, what IPL evaluates) skips it
        # when another requested format holds it; an output no requested format holds is refused
        asked = self.outputs if self.outputs is not None else defaults.FILE_ROLES
        nowhere = [r for r in asked if not any(_format_holds(f, r) for f in formats)]
        if nowhere:
            holding = [r for r in asked if r not in nowhere]
            only = "; ".join(f"{f} holds only {' and '.join(get_format(f).quantities)}" for f in formats
                             if get_format(f).quantities)
            raise ValueError(f"{', '.join(nowhere)} cannot be written as {' or '.join(formats)} ({only}, what "
                             f"IPL evaluates): use {outputs_phrase(holding or ['native', 'mask'])} or add "
                             f"another format ({value_phrase('formats', ','.join(['nrrd', *formats]))})")
        if self.detached and "nrrd" not in formats:
            raise ValueError(f"{option_name('detached')} writes NRRD as .nhdr + .raw; the format(s) "
                             f"{', '.join(formats)} have no detached form: drop {option_name('detached')} or "
                             f"add nrrd to {option_name('formats')}")
        if int(self.threads) < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads!r}")

    @property
    def threshold_spec(self) -> ThresholdSpec:
        return self.thresholds

    @property
    def default_thresholds(self) -> bool:
        """True when the thresholds are the defaults (a char file then gives its non-zero voxels)."""
        return self.thresholds == DEFAULT_THRESHOLDS

    @property
    def density_quantity(self) -> str:
        return DENSITY_UNITS[self.density_unit]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outputs"] = None if self.outputs is None else list(self.outputs)
        d["formats"] = list(self.formats)
        d["regions"] = [asdict(r) for r in self.regions]  # as JSON gives it back (skip-existing compares)
        d["thresholds"] = asdict(self.threshold_spec)
        d["thresholds"]["unit_label"] = threshold_unit_label(self.threshold_spec.unit, self.density_unit)
        return d


def require_formats(formats: Sequence[str]) -> None:
    """Raise the first missing extra of the formats (one line naming it: ``pip install scanco-units[nifti]``),
    before any file is read."""
    for name in formats:
        get_format(name).check_available()


def _format_holds(format_name: str, role: str) -> bool:
    """Whether a format can hold a file role (a char file's mask and a float file's values count as
    mask and native)."""
    quantities = get_format(format_name).quantities
    return quantities is None or role in quantities


def skipped_by_format(roles: Sequence[str], formats: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """``(role, format)`` pairs a request does not write because the format cannot hold the role
    (another requested format holds it)."""
    return tuple((r, f) for f in formats for r in roles if not _format_holds(f, r))


def format_skip_note(roles: Sequence[str], formats: Sequence[str]) -> Optional[str]:
    """``hu, density not written as aim (aim holds only native and mask); written as nrrd`` or None."""
    pairs = skipped_by_format(roles, formats)
    if not pairs:
        return None
    parts = []
    for f in dict.fromkeys(f for _, f in pairs):
        skipped = [r for r, g in pairs if g == f]
        held = " and ".join(get_format(f).quantities or ())
        parts.append(f"{', '.join(skipped)} not written as {f} ({f} holds only {held})")
    return "; ".join(parts)


@dataclass(frozen=True)
class PlannedOutput:
    """One volume the engine makes: ``role`` (file role: hu, density, mask, mu, native, char_mask,
    float), the quantity key it holds and its voxel type."""

    role: str
    quantity: str
    dtype: np.dtype

    @property
    def definition(self):
        return QUANTITIES[self.quantity]


@dataclass(frozen=True)
class RequestPlan:
    """What one file gives for one request: the volumes (in order), the resolved thresholds (None
    without a threshold mask), notes (what was decided for this file) and warnings."""

    header: ScancoHeader
    request: ConversionRequest
    outputs: Tuple[PlannedOutput, ...]
    thresholds: Optional[ResolvedThresholds]
    notes: Tuple[str, ...] = ()
    warnings: Tuple[str, ...] = ()
    node_roles: Tuple[str, ...] = ()

    def output(self, role: str) -> Optional[PlannedOutput]:
        return next((o for o in self.outputs if o.role == role), None)

    @property
    def roles(self) -> Tuple[str, ...]:
        return tuple(o.role for o in self.outputs)


def _file_kind(header: ScancoHeader) -> str:
    if header.voxel_type in ("int8", "uint8"):
        return "char"
    if header.voxel_type.startswith("float"):
        return "float"
    return "grey"


def _refuse_for_kind(header: ScancoHeader, kind: str, roles: Sequence[str]) -> None:
    asked = [r for r in roles if r in CALIBRATED_ROLES]
    if not asked or kind == "grey":
        return
    if kind == "char":
        raise RequestError(header.path, f"{header.voxel_type} data is a SCANCO mask; {', '.join(asked)} is not "
                                        "defined for it (ask for native or mask)")
    raise RequestError(header.path, f"{header.voxel_type} image holds values already converted by IPL; "
                                    f"{', '.join(asked)} is not computed from it (ask for native)")


def plan_request(header: ScancoHeader, request: Optional[ConversionRequest] = None, *,
                 node_outputs=None, adapt_defaults: bool = False,
                 warn: Optional[Callable[[str], None]] = None) -> RequestPlan:
    """Apply the rules (module docstring) to one file.

    ``node_outputs``: Slicer node roles (hu, density, mu, native, mask_labelmap, mask_segmentation)
    instead of ``request.outputs``; None with ``adapt_defaults`` = the default set for the file.
    ``warn(text)`` receives every warning as it is decided (they are also in the plan).
    """
    request = request or ConversionRequest()
    warnings: List[str] = []
    notes: List[str] = []

    def warning(text: str) -> None:
        warnings.append(text)
        if warn is not None:
            warn(text)

    kind = _file_kind(header)
    converter = UnitConverter(header.calibration, path=header.path)
    name = os.path.basename(header.path)
    for_nodes = node_outputs is not None or adapt_defaults
    explicit = node_outputs if for_nodes else request.outputs
    if for_nodes and node_outputs is not None:
        node_roles = normalise_roles(node_outputs, NODE_ROLES)
    elif for_nodes:
        node_roles = None
    else:
        node_roles = ()

    # ---- the roles of this file ------------------------------------------------------------------
    if explicit is None or (for_nodes and node_roles is None):
        if kind == "char":
            roles = ["native", "mask"] if for_nodes else ["mask"]
            node_roles = ("native", "mask_labelmap", "mask_segmentation") if for_nodes else ()
        elif kind == "float":
            roles = ["native"]
            node_roles = ("native",) if for_nodes else ()
            if for_nodes:
                warning(f"{name}: {header.voxel_type} image (already converted by IPL): loaded as stored, "
                        "without rescaling or mask")
        else:
            roles = list(defaults.FILE_ROLES)
            node_roles = defaults.NODE_ROLES if for_nodes else ()
            # no calibration: refused below, in Slicer as on the command line (one rule)
    else:
        roles = list(dict.fromkeys(FILE_ROLE_OF_NODE_ROLE[r] for r in node_roles)) if for_nodes else list(explicit)
        _refuse_for_kind(header, kind, roles)

    # ---- calibration -----------------------------------------------------------------------------
    missing = {}
    for role in roles:
        if role in CALIBRATED_ROLES:
            missing.update(dict.fromkeys(converter.missing_for(role_quantity(role, request.density_unit))))
    if missing:
        wanted = ", ".join(r for r in roles if r in CALIBRATED_ROLES)
        still = "outputs native, mask_labelmap" if for_nodes else outputs_phrase(["native", "mask"])
        raise CalibrationMissingError(
            header.path, f"{wanted} (no usable calibration; native and mask outputs still work: "
                         f"{still})", list(missing))

    # ---- the mask --------------------------------------------------------------------------------
    resolved = None
    char_mask = kind == "char"  # a SCANCO mask gives its non-zero voxels, whatever the thresholds
    spec = request.threshold_spec
    if "mask" in roles and char_mask and not request.default_thresholds:
        notes.append(f"thresholds {spec.low:g}..{spec.high:g} "
                     f"{threshold_unit_label(spec.unit, request.density_unit)} not applied: {name} holds "
                     f"{header.voxel_type} data (a SCANCO mask); its mask is its non-zero voxels")
    if "mask" in roles and not char_mask:
        if kind == "float" and spec.unit != "native":
            raise RequestError(header.path, f"a {header.voxel_type} image can only be thresholded in native "
                                            f"units (its values are stored as they are), not "
                                            f"{threshold_unit_label(spec.unit, request.density_unit)}")
        resolved = resolve_thresholds(spec, header.calibration, voxel_type=header.voxel_type,
                                      header_max_data_value=header.raw_field("max_data_value"), path=header.path)
        notes.extend(resolved.notes())
    elif for_nodes and not char_mask:
        # without a mask the thresholds only centre the display window: any problem is not fatal
        try:
            resolved = resolve_thresholds(spec, header.calibration, voxel_type=header.voxel_type,
                                          header_max_data_value=header.raw_field("max_data_value"),
                                          path=header.path)
        except (ValueError, CalibrationMissingError):
            resolved = None

    # ---- the volumes -----------------------------------------------------------------------------
    outputs = []
    if kind == "char" and not for_nodes:
        notes.append("char AIM: written as a 0/1 mask (non-zero -> 1), never rescaled to physical units")
    if kind == "float" and not for_nodes:
        notes.append("float AIM: written as stored (already converted by IPL), never rescaled")
    skip_note = None if for_nodes else format_skip_note(roles, request.formats)
    if skip_note:
        notes.append(skip_note)
    for role in roles:
        if role == "mask":
            quantity = "char_mask" if char_mask else "mask"
            outputs.append(PlannedOutput("char_mask" if char_mask and not for_nodes else "mask", quantity,
                                         np.dtype("uint8")))
        elif role == "native":
            quantity = "float" if kind == "float" and not for_nodes else "native"
            outputs.append(PlannedOutput("float" if quantity == "float" else "native", quantity,
                                         np.dtype(header.voxel_type)))
        else:
            quantity = role_quantity(role, request.density_unit)
            outputs.append(PlannedOutput(role, quantity,
                                         output_dtype(quantity, header.voxel_type, request.hu_dtype)))
    return RequestPlan(header, request, tuple(outputs), resolved, tuple(notes), tuple(warnings),
                       tuple(node_roles or ()))
