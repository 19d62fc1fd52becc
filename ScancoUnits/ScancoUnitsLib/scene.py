"""Put a SCANCO file into a 3D Slicer MRML scene as calibrated volumes, a mask labelmap and a segmentation.

:func:`load_scan_into_scene` is the one entry point the Slicer module (widget, logic, file reader)
calls; everything it does is testable headless with the ``slicer-core`` wheel (``slicer.vtkMRMLScene()``).
Slicer and VTK are imported inside the functions only, so ``import ScancoUnitsLib.scene`` works
anywhere.

Geometry. SCANCO files, like ITK, live in LPS: voxel (i, j, k) is at ``origin_mm + (i, j, k) * voxel_size_mm``
(``header.origin_mm``: AIM position x voxel size, ISQ 0). Slicer nodes are in RAS = diag(-1, -1, 1) LPS, so

    IJKToRAS = diag(-sx, -sy, sz) with origin (-ox, -oy, oz)

which is exactly where Slicer's own ITK-based reader puts the same file. A sub-region starting at voxel
(x0, y0, z0) and a subsampling step (nx, ny, nz) keep the same physical frame: the first loaded voxel is at
``origin + start * size`` and the spacing becomes ``size * step``.

Values. Voxels go through the same :class:`~ScancoUnitsLib.units.UnitConverter` and
:func:`~ScancoUnitsLib.thresholds.resolve_thresholds` as the NRRD export, slab by slab, straight into the
node's own array, so a node holds bit-for-bit what the export writes for those voxels.
"""

from __future__ import annotations

import html
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import ScancoError
from .header import ScancoHeader

logger = logging.getLogger(__name__)

#: every role :func:`load_scan_into_scene` can create, in creation order
ROLES = ("hu", "density", "mu", "native", "mask_labelmap", "mask_segmentation")
#: what a drag-and-drop load creates for a calibrated grey-value file
DEFAULT_OUTPUTS = ("hu", "density", "mask_labelmap", "mask_segmentation")
#: per mille, IPL's default unit; 1000 per mille = native 32767
DEFAULT_THRESHOLDS_PERMILLE = (250.0, 1000.0)

#: density unit names accepted by ``density_unit`` -> UnitConverter quantity
DENSITY_UNITS = {
    "mg HA/ccm": "density_mg_ha_ccm",
    "mg/cm3": "density_mg_ha_ccm",
    "mg/ccm": "density_mg_ha_ccm",
    "mgHA/ccm": "density_mg_ha_ccm",
    "density_mg_ha_ccm": "density_mg_ha_ccm",
    "g/cc": "density_g_cc",
    "g HA/cc": "density_g_cc",
    "g/cm3": "density_g_cc",
    "density_g_cc": "density_g_cc",
}

#: quantity -> (UCUM code, coding scheme, meaning) for ``SetVoxelValueUnits``
VOXEL_VALUE_UNITS = {
    "hu": ("[hnsf'U]", "UCUM", "Hounsfield unit"),
    "density_mg_ha_ccm": ("mg/cm3", "UCUM", "mg HA/ccm"),
    "density_g_cc": ("g/cm3", "UCUM", "g HA/cc"),
    "mu": ("/cm", "UCUM", "1/cm"),
    "native": ("1", "UCUM", "native SCANCO value"),
}

#: quantity -> readable unit (node attribute ScancoUnits.Unit, node names)
QUANTITY_LABELS = {
    "hu": "HU",
    "density_mg_ha_ccm": "mg HA/ccm",
    "density_g_cc": "g HA/cc",
    "mu": "1/cm",
    "native": "native",
}

_NAME_SUFFIX = {"hu": "HU", "density_mg_ha_ccm": "density", "density_g_cc": "density", "mu": "mu",
                "native": "native", "mask_labelmap": "mask", "mask_segmentation": "mask"}
_THRESHOLD_UNIT_LABELS = {"permille": "per mille", "native": "native", "mu": "1/cm", "hu": "HU",
                          "density": "mg HA/ccm"}
_ATTRIBUTE_PREFIX = "ScancoUnits."
MASK_COLOR_RGB = (0.90, 0.85, 0.55)   # bone-ivory segment and label colour
_SLAB_VOXELS = 4 << 20   # about 4 Mi voxels read and converted at a time (8 MB of int16)

ProgressCallback = Callable[[float], None]


class LoadCancelled(ScancoError):
    """The caller's ``cancel`` check said stop; every node created so far has been removed."""

    def __init__(self, path=None):
        self.path = os.fspath(path) if path is not None else "<memory>"
        super().__init__(f"{self.path}: loading cancelled")


# ------------------------------------------------------------------------------------------------
# File sniffing (used by the Slicer file reader's canLoadFileConfidence)
# ------------------------------------------------------------------------------------------------
def sniff_format(path) -> Optional[str]:
    """``"ISQ"``, ``"AIM v030"``, ``"AIM v020"`` from the first 16 bytes, or None (never raises).

    ISQ: ``CTDATA-HEADER_V1``; AIM v030: ``AIMDATA_V030``; AIM v020: little-endian int32 20 and 140
    at bytes 0 and 4. Only the magic is checked; :func:`~ScancoUnitsLib.reader.read_header` does the rest.
    """
    from .aim_format import detect_aim_version
    from .isq_format import ISQ_MAGIC

    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(16)
    except (OSError, TypeError, ValueError):
        return None
    if head[:16] == ISQ_MAGIC:
        return "ISQ"
    version = detect_aim_version(head)
    if version == 30:
        return "AIM v030"
    if version == 20:
        return "AIM v020"
    return None


# ------------------------------------------------------------------------------------------------
# Geometry and sampling (numpy only)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingPlan:
    """Which voxels of the file are loaded: ``file[z0:z1:sz, y0:y1:sy, x0:x1:sx]``.

    ``start_xyz``/``stop_xyz`` are voxel indices of the file (stop exclusive), ``step_xyz`` >= 1.
    """

    start_xyz: Tuple[int, int, int]
    stop_xyz: Tuple[int, int, int]
    step_xyz: Tuple[int, int, int]

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        counts = [len(range(a, b, s)) for a, b, s in zip(self.start_xyz, self.stop_xyz, self.step_xyz)]
        return (counts[2], counts[1], counts[0])

    @property
    def voxel_count(self) -> int:
        z, y, x = self.shape_zyx
        return x * y * z

    @property
    def is_full(self) -> bool:
        return self.step_xyz == (1, 1, 1) and self.start_xyz == (0, 0, 0)

    def z_indices(self) -> range:
        return range(self.start_xyz[2], self.stop_xyz[2], self.step_xyz[2])

    def yx_slices(self) -> Tuple[slice, slice]:
        (x0, y0, _), (x1, y1, _), (sx, sy, _) = self.start_xyz, self.stop_xyz, self.step_xyz
        return slice(y0, y1, sy), slice(x0, x1, sx)


def _as_step_xyz(subsample_step) -> Tuple[int, int, int]:
    """An int (same step on every axis) or a (z, y, x) triple -> (x, y, z)."""
    if isinstance(subsample_step, (int, np.integer)) and not isinstance(subsample_step, bool):
        steps_zyx = (int(subsample_step),) * 3
    else:
        try:
            steps_zyx = tuple(int(s) for s in subsample_step)
        except TypeError:
            raise ValueError(f"subsample_step must be an int or a (z, y, x) triple, not {subsample_step!r}") from None
        if len(steps_zyx) != 3 or any(isinstance(s, bool) for s in subsample_step):
            raise ValueError(f"subsample_step must be an int or a (z, y, x) triple, not {subsample_step!r}")
    if any(s < 1 for s in steps_zyx):
        raise ValueError(f"subsample_step must be >= 1, got {subsample_step!r}")
    return (steps_zyx[2], steps_zyx[1], steps_zyx[0])


def _region_axis(item, size: int, axis: str) -> Tuple[int, int]:
    if item is None:
        return 0, size
    if isinstance(item, slice):
        if item.step not in (None, 1):
            raise ValueError(f"region {axis}: use subsample_step for steps, not a slice step ({item})")
        start, stop = item.start, item.stop
    else:
        try:
            start, stop = item
        except (TypeError, ValueError):
            raise ValueError(f"region {axis} must be a slice or a (start, stop) pair, not {item!r}") from None
    start = 0 if start is None else int(start)
    stop = size if stop is None else int(stop)
    if start < 0:
        start += size
    if stop < 0:
        stop += size
    if not 0 <= start < stop <= size:
        raise ValueError(f"region {axis} {start}:{stop} is empty or outside the image (0:{size})")
    return start, stop


def plan_sampling(header: ScancoHeader, *, subsample_step=1, region=None) -> SamplingPlan:
    """Resolve ``region`` (three slices or (start, stop) pairs in (z, y, x) order, None = whole axis;
    negative indices count from the end) and ``subsample_step`` against the header's dimensions."""
    nx, ny, nz = header.dimensions
    if region is None:
        region = (None, None, None)
    if len(region) != 3:
        raise ValueError(f"region must hold three (z, y, x) slices, got {region!r}")
    z0, z1 = _region_axis(region[0], nz, "z")
    y0, y1 = _region_axis(region[1], ny, "y")
    x0, x1 = _region_axis(region[2], nx, "x")
    return SamplingPlan((x0, y0, z0), (x1, y1, z1), _as_step_xyz(subsample_step))


def ijk_to_ras_matrix(header: ScancoHeader, plan: Optional[SamplingPlan] = None) -> np.ndarray:
    """4x4 IJK-to-RAS of the loaded voxels (see module docstring)."""
    spacing = np.asarray(header.voxel_size_mm, dtype=np.float64)
    origin = np.asarray(header.origin_mm, dtype=np.float64)
    if plan is not None:
        origin = origin + np.asarray(plan.start_xyz, dtype=np.float64) * spacing
        spacing = spacing * np.asarray(plan.step_xyz, dtype=np.float64)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(lps_to_ras * spacing)
    matrix[:3, 3] = lps_to_ras * origin
    return matrix


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------
def density_quantity(density_unit: str) -> str:
    """UnitConverter quantity for a density unit name ("mg HA/ccm", "g/cc", "mg/cm3", ...)."""
    try:
        return DENSITY_UNITS[density_unit]
    except (KeyError, TypeError):
        raise ValueError(f"unknown density unit {density_unit!r}; use 'mg HA/ccm' or 'g/cc'") from None


def _role_quantity(role: str, density_unit: str) -> str:
    if role == "density":
        return density_quantity(density_unit)
    return role


def _normalise_outputs(outputs) -> Tuple[str, ...]:
    if isinstance(outputs, str):
        outputs = [part for part in outputs.replace(",", " ").split() if part]
    result = []
    for role in outputs:
        role = {"mask": "mask_labelmap", "labelmap": "mask_labelmap", "segmentation": "mask_segmentation",
                "attenuation": "mu"}.get(role, role)
        if role not in ROLES:
            raise ValueError(f"unknown output {role!r}; expected some of {', '.join(ROLES)}")
        if role not in result:
            result.append(role)
    if not result:
        raise ValueError("no output selected")
    return tuple(r for r in ROLES if r in result)


def choose_outputs(header: ScancoHeader, outputs=None, *, density_unit: str = "mg HA/ccm",
                   warn: Optional[Callable[[str], None]] = None) -> Tuple[str, ...]:
    """The roles to create.

    ``outputs=None`` (drag and drop): HU, density, mask labelmap and segmentation; a char file (a SCANCO
    mask) gives native + masks; a quantity the calibration cannot give is dropped with a warning and the
    native values are loaded instead when no calibrated volume is left. Explicit ``outputs`` are checked
    strictly: a missing calibration raises :class:`CalibrationMissingError`, a calibrated quantity of a
    char file raises ValueError.
    """
    from .units import UnitConverter

    warn = warn or logger.warning
    converter = UnitConverter(header.calibration, path=header.path)
    if outputs is None:
        if header.is_mask:
            return ("native", "mask_labelmap", "mask_segmentation")
        if header.voxel_type.startswith("float"):
            warn(f"{os.path.basename(header.path)}: {header.voxel_type} image (already converted by IPL): "
                 "loaded as stored, without rescaling or mask")
            return ("native",)
        chosen = []
        for role in DEFAULT_OUTPUTS:
            if role in ("hu", "density"):
                quantity = _role_quantity(role, density_unit)
                missing = converter.missing_for(quantity)
                if missing:
                    warn(f"{os.path.basename(header.path)}: no {QUANTITY_LABELS[quantity]} volume: the header "
                         f"lacks {', '.join(missing)}")
                    continue
            chosen.append(role)
        if not any(r in chosen for r in ("hu", "density")):
            chosen.insert(0, "native")
        return _normalise_outputs(chosen)
    roles = _normalise_outputs(outputs)
    for role in roles:
        if role in ("hu", "density", "mu"):
            if header.is_mask:
                raise ValueError(f"{header.path}: {header.voxel_type} data is a SCANCO mask; "
                                 f"{role} is not defined for it (load 'native' or the mask)")
            if header.voxel_type.startswith("float"):
                raise ValueError(f"{header.path}: {header.voxel_type} image holds values already converted by "
                                 f"IPL; {role} is not computed from it (load 'native')")
            converter.require(_role_quantity(role, density_unit))
    return roles


def make_threshold_spec(thresholds=None):
    """A :class:`~ScancoUnitsLib.thresholds.ThresholdSpec` from None (250..1000 per mille), a spec,
    a ``(low, high)`` pair (per mille), a ``(low, high, unit)`` triple, or a dict with low/high/unit."""
    from .thresholds import ThresholdSpec

    if thresholds is None:
        return ThresholdSpec(*DEFAULT_THRESHOLDS_PERMILLE, unit="permille")
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


def format_threshold_number(value: float) -> str:
    """Short text for a threshold: integers without decimals, others with up to 6 significant digits."""
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def segment_name(spec) -> str:
    """E.g. ``Bone 250-1000 per mille`` for the default thresholds."""
    unit = _THRESHOLD_UNIT_LABELS.get(spec.unit, spec.unit)
    return f"Bone {format_threshold_number(spec.low)}-{format_threshold_number(spec.high)} {unit}"


def display_range(header: ScancoHeader, quantity: str, resolved=None) -> Optional[Tuple[float, float]]:
    """Window for bone: from native 0 (air black) to twice the lower threshold's native value, so the
    lower threshold is mid-grey and denser bone saturates towards white. Without thresholds (or when the
    lower one is <= 0) the upper end is native 16384 (500 per mille). In ``quantity`` units."""
    from .units import UnitConverter

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


def header_summary_html(header: ScancoHeader) -> str:
    """Scanner, dimensions, voxel size and calibration, as short rich text for the panel."""
    h, c, s = header, header.calibration, header.scanner
    e = html.escape
    x, y, z = h.dimensions
    size_um = " x ".join(_fmt(v * 1000.0, 5) for v in h.voxel_size_mm)
    scanner = []
    if s.scanner_type is not None or s.scanner_id is not None:
        scanner.append(f"type {_fmt(s.scanner_type)}, id {_fmt(s.scanner_id)}")
    if s.energy_v:
        scanner.append(f"{_fmt(s.energy_v / 1000.0, 4)} kV")
    if s.intensity_ua:
        scanner.append(f"{_fmt(s.intensity_ua, 4)} µA")
    if s.measurement_index is not None:
        scanner.append(f"measurement {s.measurement_index}")
    rows = [
        ("Format", f"{h.format} ({h.version}), {h.data_type_name}"
                   + (f", {h.compression}" if h.compression else "")),
        ("Scanner", ", ".join(scanner) if scanner else "not in header"),
        ("Dimensions", f"{x} x {y} x {z} voxels ({_human_bytes(h.voxel_count * np.dtype(h.voxel_type).itemsize)})"),
        ("Voxel size", f"{size_um} µm"),
        ("Origin", " ".join(_fmt(v, 6) for v in h.origin_mm) + " mm (LPS)"),
    ]
    cal = [f"mu scaling {_fmt(c.mu_scaling)}", f"mu water {_fmt(c.mu_water_per_cm)} 1/cm"]
    if c.density_slope is not None or c.density_intercept is not None:
        intercept = c.density_intercept
        sign = "-" if intercept is not None and intercept < 0 else "+"
        cal.append(f"density = {_fmt(c.density_slope)} mu {sign} "
                   f"{_fmt(abs(intercept) if intercept is not None else None)} {c.density_unit or 'mg HA/ccm'}")
    if c.calibration_text:
        cal.append(c.calibration_text)
    rows.append(("Calibration", "; ".join(cal)))
    text = "<table cellspacing='0' cellpadding='1'>" + "".join(
        f"<tr><td><b>{e(k)}</b>&nbsp;</td><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"
    return text


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
    from .thresholds import resolve_thresholds

    spec = make_threshold_spec(thresholds)
    return resolve_thresholds(spec, header.calibration, header_max_data_value=header.raw_field("max_data_value"),
                              path=header.path).to_dict()


def threshold_equivalents_html(header: ScancoHeader, thresholds) -> str:
    """A small table: the thresholds in per mille, native, 1/cm, HU, mg HA/ccm (what the mask uses)."""
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
                       hu_dtype: str = "int16") -> int:
    """Bytes the node arrays of ``outputs`` take (the segmentation keeps its own copy of the mask)."""
    plan = plan_sampling(header, subsample_step=subsample_step, region=region)
    per_voxel = 0
    for role in _normalise_outputs(outputs):
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
                         hu_dtype: str = "int16") -> str:
    try:
        plan = plan_sampling(header, subsample_step=subsample_step, region=region)
        needed = scene_memory_bytes(header, outputs, subsample_step=subsample_step, region=region,
                                    hu_dtype=hu_dtype)
    except ValueError as exc:
        return str(exc)
    z, y, x = plan.shape_zyx
    return f"{x} x {y} x {z} voxels loaded, {_human_bytes(needed)} in the scene"


# ------------------------------------------------------------------------------------------------
# Scene loading
# ------------------------------------------------------------------------------------------------
def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return bool(is_set())
    return bool(cancel())


def _vtk_matrix(matrix: np.ndarray):
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(matrix[r, c]))
    return out


def _new_volume_node(scene, class_name: str, name: str, dtype: np.dtype, shape_zyx, ijk_to_ras: np.ndarray):
    """A volume node with allocated (uninitialised) image data and its numpy (z, y, x) view."""
    import vtk
    from vtk.util import numpy_support

    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    image = vtk.vtkImageData()
    z, y, x = (int(v) for v in shape_zyx)
    image.SetDimensions(x, y, z)
    image.AllocateScalars(numpy_support.get_vtk_array_type(np.dtype(dtype)), 1)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras))
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z, y, x)
    if array.dtype != np.dtype(dtype):  # e.g. VTK_CHAR mapped differently: never silently convert
        raise RuntimeError(f"VTK gave {array.dtype} for {np.dtype(dtype)} voxels")
    return node, array


def _set_attributes(node, attributes: Dict[str, object]) -> None:
    for key, value in attributes.items():
        if value is None:
            continue
        node.SetAttribute(_ATTRIBUTE_PREFIX + key, str(value))


def _calibration_attributes(header: ScancoHeader) -> Dict[str, object]:
    c = header.calibration
    return {
        "SourceFile": os.path.basename(header.path),
        "Format": f"{header.format} {header.version}",
        "DataType": header.data_type_name,
        "MuScaling": _fmt(c.mu_scaling, 17) if c.mu_scaling is not None else None,
        "MuWater_per_cm": _fmt(c.mu_water_per_cm, 17) if c.mu_water_per_cm is not None else None,
        "DensitySlope": _fmt(c.density_slope, 17) if c.density_slope is not None else None,
        "DensityIntercept": _fmt(c.density_intercept, 17) if c.density_intercept is not None else None,
        "DensityUnitInFile": c.density_unit,
        "CalibrationText": c.calibration_text,
        "VoxelSize_mm": " ".join(_fmt(v, 17) for v in header.voxel_size_mm),
        "Origin_mm_LPS": " ".join(_fmt(v, 17) for v in header.origin_mm),
    }


def _sampling_attributes(plan: SamplingPlan, header: ScancoHeader) -> Dict[str, object]:
    if plan.is_full and plan.stop_xyz == tuple(header.dimensions):
        return {"Sampling": "full resolution"}
    return {
        "Sampling": "sub-region/subsampled",
        "RegionStart_xyz": " ".join(str(v) for v in plan.start_xyz),
        "RegionStop_xyz": " ".join(str(v) for v in plan.stop_xyz),
        "SubsampleStep_xyz": " ".join(str(v) for v in plan.step_xyz),
    }


def _set_voxel_value_units(node, quantity: str) -> None:
    import slicer

    code, scheme, meaning = VOXEL_VALUE_UNITS[quantity]
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(code, scheme, meaning)
    node.SetVoxelValueUnits(entry)


def _configure_scalar_display(node, window: Optional[Tuple[float, float]]) -> None:
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None or window is None:
        return
    display.AutoWindowLevelOff()
    low, high = window
    if not high > low:
        high = low + 1.0
    display.SetWindowLevelMinMax(low, high)


def _mask_color_node(scene, base_name: str, label_name: str):
    color = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(base_name + " colors"))
    color.SetTypeToUser()
    color.SetNumberOfColors(2)
    color.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    color.SetColor(1, label_name, *MASK_COLOR_RGB, 1.0)
    color.SetAttribute(_ATTRIBUTE_PREFIX + "MaskColors", "1")   # ours: removed with its labelmap
    return color


def remove_loaded_nodes(scene, nodes) -> None:
    """Remove nodes made by :func:`load_scan_into_scene` with their display and storage nodes and the
    mask colour table it created (``nodes``: the returned dict or any iterable of nodes)."""
    if isinstance(nodes, dict):
        nodes = list(nodes.values())
    doomed = []
    for node in nodes:
        if node is None:
            continue
        helpers = []
        for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                              ("GetNthStorageNode", "GetNumberOfStorageNodes")):
            if hasattr(node, count):
                helpers += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
        for helper in helpers:
            color = helper.GetColorNode() if helper is not None and hasattr(helper, "GetColorNode") else None
            if color is not None and color.GetAttribute(_ATTRIBUTE_PREFIX + "MaskColors"):
                doomed.append(color)
        doomed += [h for h in helpers if h is not None] + [node]
    folders = _our_folders(scene, nodes)
    _remove_hierarchy_items(scene, doomed)
    for node in doomed:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
    _remove_empty_folders(scene, folders)


def _remove_hierarchy_items(scene, nodes) -> None:
    """Drop the subject-hierarchy items of ``nodes`` (not the nodes): headless, nobody else does it."""
    try:
        import slicer

        if scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
            return
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for node in nodes:
            item = sh.GetItemByDataNode(node)
            if item:
                sh.RemoveItem(item, False, False)
    except Exception as exc:  # pragma: no cover - best effort
        logger.debug("subject hierarchy clean-up skipped: %s", exc)


def _our_folders(scene, nodes):
    """Subject-hierarchy folders made by :func:`_place_in_subject_hierarchy` that hold ``nodes``."""
    try:
        import slicer

        if scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
            return set()   # never create the hierarchy just to look into it
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        folders = set()
        for node in nodes:
            item = sh.GetItemByDataNode(node) if node is not None else 0
            parent = sh.GetItemParent(item) if item else 0
            if parent and sh.GetItemAttribute(parent, _ATTRIBUTE_PREFIX + "Folder"):
                folders.add(parent)
        return folders
    except Exception:  # pragma: no cover - best effort
        return set()


def _remove_empty_folders(scene, folders) -> None:
    if not folders:
        return
    try:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for folder in folders:
            if sh.GetNumberOfItemChildren(folder) == 0:
                sh.RemoveItem(folder)
    except Exception as exc:  # pragma: no cover - best effort
        logger.debug("subject hierarchy clean-up skipped: %s", exc)


def _place_in_subject_hierarchy(scene, folder_name: str, nodes) -> None:
    """Group the new nodes in one subject-hierarchy folder (best effort; never fails the load)."""
    try:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if sh is None:
            return
        folder = sh.CreateFolderItem(sh.GetSceneItemID(), folder_name)
        sh.SetItemAttribute(folder, _ATTRIBUTE_PREFIX + "Folder", "1")
        for node in nodes:
            item = sh.GetItemByDataNode(node)
            if not item:
                item = sh.CreateItem(folder, node)
            else:
                sh.SetItemParent(item, folder)
    except Exception as exc:  # pragma: no cover - depends on the Slicer build
        logger.debug("subject hierarchy grouping skipped: %s", exc)


def load_scan_into_scene(scene, path, *, outputs=None, thresholds=None, density_unit: str = "mg HA/ccm",
                         hu_dtype: str = "int16", subsample_step=1, region=None, name: Optional[str] = None,
                         progress: Optional[ProgressCallback] = None, cancel=None,
                         warn: Optional[Callable[[str], None]] = None, slab_slices: Optional[int] = None,
                         header: Optional[ScancoHeader] = None) -> Dict[str, object]:
    """Read a SCANCO ISQ/AIM file into ``scene``; returns ``{role: node}``.

    Roles (see :data:`ROLES`): ``hu`` (scalar volume, int16 HU or float32 with ``hu_dtype="float32"``),
    ``density`` (float32, ``density_unit`` "mg HA/ccm" or "g/cc"), ``mu`` (float32 1/cm), ``native`` (the
    stored values, file dtype), ``mask_labelmap`` (uint8 labelmap, 1 = inside the thresholds),
    ``mask_segmentation`` (segmentation node with one segment named like ``Bone 250-1000 per mille``).

    * ``outputs``: roles to create; None = HU, density, mask labelmap and segmentation (see
      :func:`choose_outputs` for char masks and uncalibrated files).
    * ``thresholds``: a ThresholdSpec, (low, high) in per mille, (low, high, unit), a dict or "low high unit";
      None = 250..1000 per mille. The mask is ``native_low <= native <= native_high`` (IPL rule). Char files
      without explicit thresholds: non-zero voxels.
    * ``subsample_step`` (int or (z, y, x)) and ``region`` ((z, y, x) slices or (start, stop) pairs): load
      ``file[z0:z1:sz, y0:y1:sy, x0:x1:sx]`` with matching geometry.
    * ``slab_slices``: slices read and converted at a time (default: about 4 Mi voxels).
    * ``progress(fraction)`` is called after every slab; ``cancel`` (callable or threading.Event) is checked
      before every slab. On cancel (:class:`LoadCancelled`) or any error every node created here is removed.
    * ``warn(text)``: where non-fatal problems go (default ``logging.warning``).
    """
    import slicer  # noqa: F401 - fail early and clearly when Slicer is absent

    from .reader import open_voxels, read_header
    from .thresholds import mask_from_char, resolve_thresholds
    from .units import UnitConverter

    warn = warn or logger.warning
    if header is None:
        header = read_header(path)
    path = header.path
    if slab_slices is not None and slab_slices < 1:
        raise ValueError("slab_slices must be >= 1")
    roles = choose_outputs(header, outputs, density_unit=density_unit, warn=warn)
    if "hu" in roles and hu_dtype not in ("int16", "float32"):
        raise ValueError(f"hu_dtype must be 'int16' or 'float32', not {hu_dtype!r}")
    plan = plan_sampling(header, subsample_step=subsample_step, region=region)
    if slab_slices is None:   # whole file slices are read, whatever the x/y sampling
        file_x, file_y, _ = header.dimensions
        slab_slices = max(1, min(plan.shape_zyx[0], _SLAB_VOXELS // max(1, file_x * file_y)))
    converter = UnitConverter(header.calibration, path=path)

    want_mask = "mask_labelmap" in roles or "mask_segmentation" in roles
    spec = make_threshold_spec(thresholds)
    char_mask = header.is_mask and thresholds is None
    resolved = None
    if not char_mask:
        try:
            resolved = resolve_thresholds(spec, header.calibration,
                                          header_max_data_value=header.raw_field("max_data_value"), path=path)
        except (ValueError, ScancoError):
            if want_mask:
                raise
            # without a mask the thresholds only centre the display window: fall back to the default
    if want_mask and header.voxel_type.startswith("float") and spec.unit != "native":
        raise ValueError(f"{path}: a {header.voxel_type} image can only be thresholded in native units "
                         f"(its values are stored as they are), not {spec.unit}")
    label_name = "Mask (non-zero voxels)" if char_mask else segment_name(spec)

    base = name or os.path.splitext(os.path.basename(path).split(";")[0])[0] or "SCANCO"
    ijk_to_ras = ijk_to_ras_matrix(header, plan)
    shape = plan.shape_zyx
    common = _calibration_attributes(header)
    common.update(_sampling_attributes(plan, header))
    threshold_attributes = {}
    if resolved is not None:
        info = resolved.to_dict()
        threshold_attributes = {
            "ThresholdUnit": spec.unit,
            "ThresholdLow": format_threshold_number(spec.low),
            "ThresholdHigh": format_threshold_number(spec.high),
            "ThresholdNative": f"{resolved.native_low} {resolved.native_high}",
            "MaskRule": info["mask_rule"],
            "ThresholdRounding": info["rounding"],
        }
    elif char_mask:
        threshold_attributes = {"MaskRule": "non-zero -> 1 (SCANCO char mask)"}

    created = []      # every node added to the scene, for clean-up
    nodes: Dict[str, object] = {}
    arrays: Dict[str, np.ndarray] = {}
    try:
        # ---- allocate the volume nodes ---------------------------------------------------------
        for role in ("hu", "density", "mu", "native"):
            if role not in roles:
                continue
            quantity = _role_quantity(role, density_unit)
            if role == "native":
                dtype = np.dtype(header.voxel_type)
            else:
                dtype = converter.output_dtype(quantity, hu_dtype=hu_dtype)
            node, array = _new_volume_node(scene, "vtkMRMLScalarVolumeNode", f"{base} {_NAME_SUFFIX[quantity]}",
                                           dtype, shape, ijk_to_ras)
            created.append(node)
            attributes = dict(common)
            attributes.update({"Quantity": quantity, "Unit": QUANTITY_LABELS[quantity]})
            if role != "native":
                entry = converter.describe()["quantities"][quantity]
                attributes.update({"Formula": entry["formula"], "Scale": _fmt(entry["scale"], 17),
                                   "Offset": _fmt(entry["offset"], 17)})
            _set_attributes(node, attributes)
            _set_voxel_value_units(node, quantity)
            nodes[role], arrays[role] = node, array

        mask_node = None
        if want_mask:
            mask_node, mask_array = _new_volume_node(scene, "vtkMRMLLabelMapVolumeNode", f"{base} mask",
                                                     np.uint8, shape, ijk_to_ras)
            created.append(mask_node)
            attributes = dict(common)
            attributes.update(threshold_attributes)
            attributes["SegmentName"] = label_name
            _set_attributes(mask_node, attributes)
            arrays["mask"] = mask_array

        # ---- fill them slab by slab ----------------------------------------------------------
        _fill_arrays(header, plan, roles, arrays, converter, resolved, char_mask, density_unit, hu_dtype,
                     progress, cancel, slab_slices, open_voxels, mask_from_char)
        if "hu" in roles and hu_dtype == "int16" and converter.hu_clipped_voxels:
            nodes["hu"].SetAttribute(_ATTRIBUTE_PREFIX + "HUClippedVoxels", str(converter.hu_clipped_voxels))
            warn(f"{os.path.basename(path)}: {converter.hu_clipped_voxels} voxels were clipped to the int16 HU "
                 "range; load with hu_dtype='float32' to keep them")

        # ---- display, labelmap colours, segmentation --------------------------------------------
        for role in ("hu", "density", "mu", "native"):
            if role in nodes:
                nodes[role].GetImageData().Modified()
                quantity = _role_quantity(role, density_unit)
                _configure_scalar_display(nodes[role], display_range(header, quantity, resolved))
        if mask_node is not None:
            mask_node.GetImageData().Modified()
            color = _mask_color_node(scene, f"{base} mask", label_name)
            created.append(color)
            display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
            created.append(display)
            display.SetAndObserveColorNodeID(color.GetID())
            mask_node.SetAndObserveDisplayNodeID(display.GetID())
            if "mask_segmentation" in roles:
                segmentation = _segmentation_from_labelmap(scene, mask_node, f"{base} mask segmentation",
                                                           label_name, common, threshold_attributes)
                created.append(segmentation)
                nodes["mask_segmentation"] = segmentation
            if "mask_labelmap" in roles:
                nodes["mask_labelmap"] = mask_node
            else:  # only needed as the segmentation's source
                remove_loaded_nodes(scene, [mask_node])
                created = [n for n in created if n not in (mask_node, display, color)]
        if progress is not None:
            progress(1.0)
        _place_in_subject_hierarchy(scene, f"{base} (SCANCO)", [nodes[r] for r in ROLES if r in nodes])
    except BaseException:
        remove_loaded_nodes(scene, list(reversed(created)))
        raise
    return {role: nodes[role] for role in ROLES if role in nodes}


def _fill_arrays(header, plan, roles, arrays, converter, resolved, char_mask, density_unit, hu_dtype,
                 progress, cancel, slab_slices, open_voxels, mask_from_char) -> None:
    z_indices = plan.z_indices()
    total = len(z_indices)
    y_slice, x_slice = plan.yx_slices()
    step_z = plan.step_xyz[2]
    full_yx = (y_slice == slice(0, header.dimensions[1], 1)) and (x_slice == slice(0, header.dimensions[0], 1))
    done = 0
    with open_voxels(header) as source:
        while done < total:
            if _is_cancelled(cancel):
                raise LoadCancelled(header.path)
            count = min(slab_slices, total - done)
            z_first = z_indices[done]
            if step_z == 1:
                native = source.read_slab(z_first, z_first + count)
            else:  # read only the slices that are kept
                native = np.stack([source.read_slab(z, z + 1)[0] for z in z_indices[done:done + count]])
            if not full_yx:
                native = np.ascontiguousarray(native[:, y_slice, x_slice])
            rows = slice(done, done + count)
            for role in ("hu", "density", "mu"):
                if role in roles:
                    converter.convert(native, _role_quantity(role, density_unit), out=arrays[role][rows],
                                      hu_dtype=hu_dtype)
            if "native" in roles:
                arrays["native"][rows] = native
            if "mask" in arrays:
                if char_mask:
                    mask_from_char(native, out=arrays["mask"][rows])
                else:
                    resolved.mask(native, out=arrays["mask"][rows])
            done += count
            if progress is not None:
                progress(done / total * 0.95)


def _segmentation_from_labelmap(scene, labelmap, name: str, label_name: str, common, threshold_attributes):
    import slicer

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    try:
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise RuntimeError(f"could not import the mask labelmap into segmentation {name!r}")
        seg = segmentation.GetSegmentation()
        if seg.GetNumberOfSegments() == 0:  # empty mask: keep a named, empty segment (grid: reference geometry)
            # The empty binary labelmap vtkSegmentation::AddEmptySegment would take from the converter factory
            # (an image with no extent, unsigned char), made here: Python owns it (no leaked copy of the
            # mask), and it needs no conversion rules registered (slicer-core registers none).
            import vtk

            image = slicer.vtkOrientedImageData()
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            empty = slicer.vtkSegment()
            empty.SetName(label_name)
            empty.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(),
                                    image)
            if not seg.AddSegment(empty):
                raise RuntimeError(f"could not add an empty segment to segmentation {name!r}")
        segment = seg.GetNthSegment(0)
        segment.SetName(label_name)
        segment.SetColor(*MASK_COLOR_RGB)
        attributes = dict(common)
        attributes.update(threshold_attributes)
        attributes["SegmentName"] = label_name
        _set_attributes(segmentation, attributes)
    except BaseException:
        remove_loaded_nodes(scene, [segmentation])
        raise
    return segmentation


# ------------------------------------------------------------------------------------------------
# Full-resolution NRRD export (streamed by convert.py) with the scene's option names
# ------------------------------------------------------------------------------------------------
_EXPORT_ROLE = {"hu": "hu", "density": "density", "mu": "mu", "native": "native",
                "mask_labelmap": "mask", "mask_segmentation": "mask"}
_EXPORT_DENSITY_UNIT = {"density_mg_ha_ccm": "mgHA/ccm", "density_g_cc": "g/cc"}


def export_options(header: ScancoHeader, outputs=None, *, thresholds=None, density_unit: str = "mg HA/ccm",
                   hu_dtype: str = "int16", compress: bool = True, overwrite: bool = False):
    """The :class:`~ScancoUnitsLib.convert.ConversionOptions` matching scene options (same roles, same
    thresholds, same density unit), so the files hold what the nodes hold, at full resolution."""
    from .convert import ConversionOptions

    roles = choose_outputs(header, outputs, density_unit=density_unit, warn=lambda _text: None)
    export_roles = tuple(dict.fromkeys(_EXPORT_ROLE[r] for r in roles))
    return ConversionOptions(outputs=export_roles, thresholds=make_threshold_spec(thresholds),
                             density_unit=_EXPORT_DENSITY_UNIT[density_quantity(density_unit)],
                             hu_dtype=hu_dtype, compress=bool(compress), overwrite=bool(overwrite))


def planned_export_files(path, out_dir, outputs=None, *, header: Optional[ScancoHeader] = None, **options):
    """Paths :func:`export_scan` would write (to ask before overwriting), metadata JSON included."""
    from pathlib import Path

    from .convert import output_stem, plan_outputs
    from .reader import read_header

    header = header or read_header(path)
    conversion = export_options(header, outputs, **options)
    plans, _, _ = plan_outputs(header, conversion, Path(out_dir))
    return [p.path for p in plans] + [Path(out_dir) / f"{output_stem(header.path)}_metadata.json"]


def export_scan(path, out_dir, outputs=None, *, thresholds=None, density_unit: str = "mg HA/ccm",
                hu_dtype: str = "int16", compress: bool = True, overwrite: bool = False,
                progress: Optional[ProgressCallback] = None, cancel=None,
                header: Optional[ScancoHeader] = None) -> Dict[str, object]:
    """Write the outputs of ``path`` as NRRD files in ``out_dir`` at full resolution, streamed slab by slab
    (never the whole volume in memory): ``{role: Path}`` as returned by
    :func:`~ScancoUnitsLib.convert.convert_header` (roles hu, density, mu, native, mask, metadata...).

    Options have the meaning of :func:`load_scan_into_scene` (both mask roles map to the one mask file).
    ``progress(fraction)``; ``cancel`` as there: raises :class:`LoadCancelled` and leaves no file.
    """
    from .convert import ConversionCancelled, convert_header
    from .reader import read_header

    header = header or read_header(path)
    conversion = export_options(header, outputs, thresholds=thresholds, density_unit=density_unit,
                                hu_dtype=hu_dtype, compress=compress, overwrite=overwrite)

    def on_progress(done: int, total: int):
        if progress is not None:
            progress(done / max(total, 1))
        return not _is_cancelled(cancel)

    if _is_cancelled(cancel):
        raise LoadCancelled(header.path)
    try:
        result = convert_header(header, out_dir, conversion, progress=on_progress)
    except ConversionCancelled:
        raise LoadCancelled(header.path) from None
    return dict(result.outputs)


# ------------------------------------------------------------------------------------------------
# Options given to the Slicer file reader (slicer.util.loadNodeFromFile(path, "ScancoUnitsFile", props))
# ------------------------------------------------------------------------------------------------
def _as_bool(value) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a yes/no value, got {value!r}")
    return bool(value)


def reader_options_from_properties(properties, header: ScancoHeader) -> Dict[str, object]:
    """Keyword arguments for :func:`load_scan_into_scene` from a file reader's properties.

    Recognised keys (all optional): ``units`` / ``outputs`` (roles as a list or a space/comma separated
    string: hu density mu native mask_labelmap mask_segmentation; default HU, or native when the file has
    no HU calibration, or the labelmap for a SCANCO char mask), ``mask`` (True/"labelmap" adds the labelmap,
    "segmentation" the segmentation, "both" both), ``thresholds`` (``"250 1000 permille"``, a
    (low, high[, unit]) sequence or a dict), ``densityUnit`` ("mg HA/ccm" or "g/cc"), ``huDtype``,
    ``subsampleStep`` and ``name`` (base node name; Slicer's ``name`` property).
    """
    properties = dict(properties or {})
    units = properties.get("units", properties.get("outputs"))
    if units is None or units == "" or units == []:
        if header.is_mask:
            roles = ["mask_labelmap"]
        elif header.voxel_type.startswith("float"):
            roles = ["native"]
        else:
            roles = ["hu"] if header.calibration.has_hu else ["native"]
    else:
        roles = list(_normalise_outputs(units))
    mask = properties.get("mask")
    if mask is not None and mask != "":
        choice = str(mask).strip().lower() if isinstance(mask, str) else mask
        if choice in ("labelmap", "segmentation", "both"):
            roles += {"labelmap": ["mask_labelmap"], "segmentation": ["mask_segmentation"],
                      "both": ["mask_labelmap", "mask_segmentation"]}[choice]
        elif _as_bool(choice):
            roles.append("mask_labelmap")
        else:
            roles = [r for r in roles if not r.startswith("mask_")] or roles
    options: Dict[str, object] = {"outputs": _normalise_outputs(roles)}
    if properties.get("thresholds") not in (None, ""):
        options["thresholds"] = make_threshold_spec(properties["thresholds"])
    if properties.get("densityUnit"):
        density_quantity(properties["densityUnit"])  # validate
        options["density_unit"] = properties["densityUnit"]
    if properties.get("huDtype"):
        options["hu_dtype"] = str(properties["huDtype"])
    if properties.get("subsampleStep") not in (None, ""):
        options["subsample_step"] = int(properties["subsampleStep"])
    if properties.get("name"):
        options["name"] = str(properties["name"])
    return options
