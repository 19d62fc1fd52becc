"""One SCANCO file -> calibrated NRRD volumes, a threshold mask and a metadata JSON, streamed.

Data flow: header + :class:`~ScancoUnitsLib.reader.VoxelSource` -> slabs of native values ->
per-output conversion into reused buffers -> one :class:`~ScancoUnitsLib.nrrd_writer.NrrdVolumeWriter`
per output, all inside one :class:`~ScancoUnitsLib.atomic_output.AtomicOutputSet` (every output of a
file appears together, or none does). Reading, converting and writing overlap in threads: numpy and
file I/O release the GIL.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .atomic_output import AtomicOutputSet
from .errors import CalibrationMissingError, ScancoError
from .header import ScancoHeader
from .nrrd_writer import NrrdVolumeWriter
from .reader import open_voxels, read_header
from .scan_statistics import ScanStatistics
from .thresholds import ResolvedThresholds, ThresholdSpec, mask_from_char, resolve_thresholds
from .units import UnitConverter, describe_calibration

# role -> (file suffix, what it holds)
OUTPUT_SUFFIXES = {
    "hu": "_HU",
    "density": "_RHO",
    "mask": "_BWmask",
    "mu": "_MU",
    "native": "_native",
    "char_mask": "_mask",
    "float": "_float",
}
CALIBRATED_ROLES = ("hu", "density", "mu")
SELECTABLE_ROLES = ("hu", "density", "mask", "mu", "native")
DEFAULT_OUTPUTS = ("hu", "density", "mask")
DENSITY_UNITS = {"g/cc": "density_g_cc", "mgHA/ccm": "density_mg_ha_ccm"}
_DENSITY_LABEL = {"g/cc": "g HA/ccm", "mgHA/ccm": "mg HA/ccm"}
_TARGET_SLAB_VOXELS = 1 << 20  # ~1 Mi voxels a slab (2 MB of int16, 4 MB of float32): stays in the CPU cache


class ConversionCancelled(ScancoError):
    """The progress callback asked to stop; nothing was written."""


@dataclass(frozen=True)
class ConversionOptions:
    """What to write. Defaults follow the seed notebook: HU, density in g/cc, 250-1000 per mille mask."""

    outputs: Tuple[str, ...] = DEFAULT_OUTPUTS
    thresholds: ThresholdSpec = ThresholdSpec(250, 1000, "permille")
    density_unit: str = "g/cc"              # or "mgHA/ccm"
    hu_dtype: str = "int16"                 # or "float32"
    compress: bool = False                  # gzip NRRD
    detached: bool = False                  # .nhdr + .raw
    overwrite: bool = False
    slab_slices: Optional[int] = None       # None: about 1 Mi voxels a slab
    threads: int = 2                        # gzip threads per output
    output_stem: Optional[str] = None       # default: input name without extension and ;N
    report: bool = False                    # QC picture <stem>_report.png (needs matplotlib)

    def __post_init__(self):
        outputs = tuple(dict.fromkeys(self.outputs))
        unknown = [o for o in outputs if o not in SELECTABLE_ROLES]
        if unknown or not outputs:
            raise ValueError(f"unknown output(s) {', '.join(unknown) or '(none)'}; "
                             f"choose from {', '.join(SELECTABLE_ROLES)}")
        object.__setattr__(self, "outputs", outputs)
        if self.density_unit not in DENSITY_UNITS:
            raise ValueError(f"density unit must be one of {', '.join(DENSITY_UNITS)}, not {self.density_unit!r}")
        if self.hu_dtype not in ("int16", "float32"):
            raise ValueError(f"HU dtype must be int16 or float32, not {self.hu_dtype!r}")
        if self.slab_slices is not None and self.slab_slices < 1:
            raise ValueError("slab_slices must be at least 1")
        if not isinstance(self.thresholds, ThresholdSpec):
            raise ValueError("thresholds must be a ThresholdSpec")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outputs"] = list(self.outputs)
        return d


@dataclass
class OutputPlan:
    role: str
    path: Path
    dtype: np.dtype
    quantity: Optional[str]      # units.py quantity, or None
    unit_label: str
    description: str
    key_values: Dict[str, str] = field(default_factory=dict)


@dataclass
class ConversionResult:
    input_path: Path
    outputs: Dict[str, Path]
    metadata: dict
    seconds: float
    input_bytes: int
    warnings: List[str]


def output_stem(path) -> str:
    """``C0004255.ISQ;1`` -> ``C0004255``."""
    name = Path(os.fspath(path)).name
    name = re.sub(r";\d*$", "", name)
    stem, dot, ext = name.rpartition(".")
    return stem if dot and stem else name


def _slab_slices(header: ScancoHeader, options: ConversionOptions) -> int:
    if options.slab_slices:
        return options.slab_slices
    x, y, z = header.dimensions
    return max(1, min(z, _TARGET_SLAB_VOXELS // max(1, x * y)))


def plan_outputs(header: ScancoHeader, options: ConversionOptions, out_dir: Path,
                 stem: Optional[str] = None) -> Tuple[List[OutputPlan], Optional[ResolvedThresholds], List[str]]:
    """Decide the output files for one header; raise CalibrationMissingError when a calibrated unit
    is asked of a file that cannot give it. Returns (plans, resolved thresholds or None, notes)."""
    stem = stem or options.output_stem or output_stem(header.path)
    ext = ".nhdr" if options.detached else ".nrrd"
    notes: List[str] = []
    cal = header.calibration
    converter = UnitConverter(cal, path=header.path)
    common = _calibration_key_values(header)

    def plan(role, dtype, quantity, unit_label, description, extra=None):
        kv = dict(common)
        kv.update({"ScancoUnits_quantity": description, "ScancoUnits_unit": unit_label})
        kv.update(extra or {})
        return OutputPlan(role, out_dir / f"{stem}{OUTPUT_SUFFIXES[role]}{ext}", np.dtype(dtype), quantity,
                          unit_label, description, kv)

    if header.voxel_type in ("int8", "uint8"):
        notes.append("char AIM: written as a 0/1 mask (non-zero -> 1), never rescaled to physical units")
        return [plan("char_mask", "uint8", None, "1", "mask from SCANCO char image (non-zero -> 1)")], None, notes
    if header.voxel_type.startswith("float"):
        notes.append("float AIM: written as stored (already converted by IPL), never rescaled")
        return [plan("float", header.voxel_type, None, "as stored", "float image as stored in the AIM")], None, notes

    missing = {}
    for role in options.outputs:
        if role in CALIBRATED_ROLES:
            quantity = _quantity(role, options)
            gaps = converter.missing_for(quantity)
            if gaps:
                missing.update(dict.fromkeys(gaps))
    if missing:
        wanted = ", ".join(r for r in options.outputs if r in CALIBRATED_ROLES)
        raise CalibrationMissingError(
            header.path, f"{wanted} (no usable calibration; native and mask outputs still work: "
                         f"--outputs native,mask)", list(missing))

    resolved = None
    if "mask" in options.outputs:
        resolved = resolve_thresholds(options.thresholds, cal,
                                      header_max_data_value=header.raw_field("max_data_value"),
                                      path=header.path)

    plans = []
    for role in options.outputs:
        if role == "hu":
            plans.append(plan("hu", options.hu_dtype, "hu", "HU", "Hounsfield units"))
        elif role == "density":
            label = _DENSITY_LABEL[options.density_unit]
            plans.append(plan("density", "float32", DENSITY_UNITS[options.density_unit], label,
                              f"bone mineral density ({cal.density_unit or 'mg HA/ccm'} calibration)"))
        elif role == "mu":
            plans.append(plan("mu", "float32", "mu", "1/cm", "linear attenuation"))
        elif role == "native":
            plans.append(plan("native", header.voxel_type, None, "native", "native SCANCO values"))
        elif role == "mask":
            r = resolved
            extra = {"ScancoUnits_threshold_native": f"{r.native_low} {r.native_high}",
                     "ScancoUnits_threshold_spec": f"{r.spec.low:g} {r.spec.high:g} {r.spec.unit}",
                     "ScancoUnits_mask_rule": "native_low <= native <= native_high"}
            plans.append(plan("mask", "uint8", None, "1", "binary threshold mask", extra))
    return plans, resolved, notes


def _quantity(role: str, options: ConversionOptions) -> str:
    return DENSITY_UNITS[options.density_unit] if role == "density" else role


def _calibration_key_values(header: ScancoHeader) -> Dict[str, str]:
    c = header.calibration
    kv = {"ScancoUnits_source_file": os.path.basename(header.path),
          "ScancoUnits_source_format": f"{header.format} {header.version}",
          "ScancoUnits_version": __version__}
    for key, value in (("mu_scaling", c.mu_scaling), ("mu_water_per_cm", c.mu_water_per_cm),
                       ("density_slope", c.density_slope), ("density_intercept", c.density_intercept),
                       ("density_unit", c.density_unit), ("calibration_text", c.calibration_text)):
        if value is not None:
            kv[f"ScancoUnits_{key}"] = repr(value) if isinstance(value, float) else str(value)
    kv["ScancoUnits_position_voxels"] = " ".join(str(p) for p in header.position_voxels)
    return kv


def _buffers(count: int, shape, dtype) -> "queue.Queue[np.ndarray]":
    pool: "queue.Queue[np.ndarray]" = queue.Queue()
    for _ in range(count):
        pool.put(np.empty(shape, dtype=dtype))
    return pool


SlabObserver = Callable[[int, np.ndarray, Dict[str, np.ndarray]], None]


def convert_header(header: ScancoHeader, out_dir, options: Optional[ConversionOptions] = None, *,
                   stem: Optional[str] = None,
                   progress: Optional[Callable[[int, int], Optional[bool]]] = None,
                   observers: Sequence[SlabObserver] = ()) -> ConversionResult:
    """Convert the file ``header`` describes. ``progress(done_slices, total_slices)`` is called after
    each slab; returning False cancels (nothing is left on disk). Each observer is called once per
    slab as ``observer(z0, native_slab, {role: converted_slab})`` (read-only views, valid only during
    the call): this is how the QC report sees the data without a second pass."""
    options = options or ConversionOptions()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or options.output_stem or output_stem(header.path)
    plans, resolved, notes = plan_outputs(header, options, out_dir, stem)
    observers = list(observers)
    report_builder = None
    if options.report:
        from .report import ReportBuilder  # optional: needs matplotlib

        report_builder = ReportBuilder(header, options, resolved)
        observers.append(report_builder.observe)
    statistics = ScanStatistics(header, resolved, options.thresholds)
    observers.append(statistics.observe)
    nz, ny, nx = header.shape_zyx
    slab = _slab_slices(header, options)
    caught: List[str] = []
    lanes = {p.role: _OutputLane(p, header, options, resolved) for p in plans}
    ranges = _RangeShortcut(header, options, [p.quantity for p in plans if p.quantity])

    with AtomicOutputSet(overwrite=options.overwrite) as outputs, \
            open_voxels(header) as source:
        for p in plans:
            lanes[p.role].writer = NrrdVolumeWriter(
                p.path, header.shape_zyx, p.dtype, spacing_mm=header.voxel_size_mm, origin_mm=header.origin_mm,
                key_values=p.key_values, encoding="gzip" if options.compress else "raw",
                detached=options.detached, threads=options.threads, atomic=outputs)
        _stream_slabs(source, lanes, ranges, slab, observers, progress, header.path)

        hu_clipped = sum(lane.converter.hu_clipped_voxels for lane in lanes.values())
        nan_voxels = sum(lane.nan_voxels for lane in lanes.values())
        mask_voxels = sum(lane.mask_voxels for lane in lanes.values())
        stats = {role: lane.stats for role, lane in lanes.items()}
        if hu_clipped:
            msg = (f"{header.path}: {hu_clipped} voxels were clipped to the int16 HU range "
                   f"(use --hu-dtype float32 to keep them)")
            warnings.warn(msg, stacklevel=2)
            caught.append(msg)
        if nan_voxels:
            msg = f"{header.path}: the float image holds {nan_voxels} NaN or infinite voxels (written as stored)"
            warnings.warn(msg, stacklevel=2)
            caught.append(msg)
        metadata = _metadata(header, options, plans, resolved, notes, caught, stats, mask_voxels, hu_clipped)
        metadata["statistics"] = statistics.to_dict()
        meta_path = out_dir / f"{stem}_metadata.json"
        report_path = None
        if report_builder is not None:
            report_path = out_dir / f"{stem}_report.png"
            with outputs.add(report_path, "wb") as f:
                report_builder.save(f, metadata)
        with outputs.add(meta_path, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, allow_nan=False)
            f.write("\n")
        written = outputs.commit()
    result_outputs = {p.role: p.path for p in plans}
    result_outputs["metadata"] = meta_path
    if report_path is not None:
        result_outputs["report"] = report_path
    return ConversionResult(Path(header.path), result_outputs, metadata, time.perf_counter() - started,
                            header.data_size, caught)


# Threads of one conversion (2 cores are the design point; more are used when there):
#   reader            reads slab k+1 into one of _NATIVE_BUFFERS buffers, and its native min/max
#   main thread       hands slab k to every output, runs observers, reports progress
#   per output: one converter thread (slab k -> one of the output's two buffers) and one writer
#   thread (writes the previous slab of that output meanwhile).
# Conversions of different outputs overlap each other and the writes; a native buffer goes back
# to the reader as soon as every output has converted it. Memory: _NATIVE_BUFFERS native slabs
# plus two slabs per output, whatever the file size.
_NATIVE_BUFFERS = 4
_OUTPUT_BUFFERS = 2


class _OutputLane:
    """One output: its converter, buffers, writer, statistics and threads."""

    def __init__(self, plan: OutputPlan, header: ScancoHeader, options: ConversionOptions,
                 resolved: Optional[ResolvedThresholds]):
        self.plan = plan
        self.role = plan.role
        self.options = options
        self.resolved = resolved
        # one converter per output: its clipped-voxel counter is only touched by this output's thread
        self.converter = UnitConverter(header.calibration, path=header.path)
        self.writer: Optional[NrrdVolumeWriter] = None
        self.buffers: Optional["queue.Queue[np.ndarray]"] = None
        self.stats = {"min": None, "max": None}
        self.mask_voxels = 0
        self.nan_voxels = 0
        self.convert_pool: Optional[ThreadPoolExecutor] = None
        self.write_pool: Optional[ThreadPoolExecutor] = None

    def start(self, slab_shape) -> None:
        if self.role != "native":
            self.buffers = _buffers(_OUTPUT_BUFFERS, slab_shape, self.plan.dtype)
        self.convert_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scanco-{self.role}")
        self.write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scanco-{self.role}-write")

    def convert(self, native: np.ndarray, native_range, ranges: "_RangeShortcut"):
        """Convert ``native`` into a free buffer of this output; return (slab view, buffer or None)."""
        role = self.role
        if role == "native":
            data, buf = native, None
        else:
            buf = self.buffers.get()
            try:
                data = self._convert_into(buf[: native.shape[0]], native)
            except BaseException:
                self.buffers.put(buf)
                raise
        if role in ("mask", "char_mask"):
            count = int(np.count_nonzero(data))
            self.mask_voxels += count
            _merge_range(self.stats, 0 if count < data.size else 1, 1 if count else 0)
        else:
            known = ranges.output_range(self.plan, native_range)
            if known is None:
                _track_range(self.stats, data)
            else:
                _merge_range(self.stats, *known)
        return data, buf

    def _convert_into(self, data: np.ndarray, native: np.ndarray) -> np.ndarray:
        role = self.role
        if role == "mask":
            self.resolved.mask(native, out=data)
        elif role == "char_mask":
            mask_from_char(native, out=data)
        elif role == "float":
            np.copyto(data, native)
            self.nan_voxels += int(np.count_nonzero(~np.isfinite(data)))
        else:
            self.converter.convert(native, self.plan.quantity, out=data, hu_dtype=self.options.hu_dtype)
        return data

    def write(self, data: np.ndarray, buf, native_done: Optional["_Countdown"]) -> None:
        """Writer thread: write one slab, then give its buffer back (and the native one, for 'native')."""
        try:
            self.writer.write_slab(data)
        finally:
            if buf is not None:
                self.buffers.put(buf)
            if native_done is not None:
                native_done.release()

    def convert_then_write(self, native, native_range, ranges, native_done: "_Countdown", pending) -> None:
        """Converter thread, no observers: convert, queue the write, free the native slab."""
        handed_over = False
        try:
            data, buf = self.convert(native, native_range, ranges)
            if self.role == "native":  # the native slab is the data: freed once written
                pending.append(self.write_pool.submit(self.write, data, None, native_done))
                handed_over = True
            else:
                pending.append(self.write_pool.submit(self.write, data, buf, None))
        finally:
            if not handed_over:
                native_done.release()

    def stop(self) -> None:
        # converters first: a running conversion may wait for a buffer that a write will free
        for name in ("convert_pool", "write_pool"):
            pool = getattr(self, name)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                setattr(self, name, None)


class _Countdown:
    """Calls ``action`` once ``count`` releases have happened (from any thread)."""

    def __init__(self, count: int, action: Callable[[], None]):
        self._count = count
        self._action = action
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            fire = self._count == 0
        if fire:
            self._action()


def _stream_slabs(source, lanes: Dict[str, _OutputLane], ranges: "_RangeShortcut", slab: int,
                  observers, progress, path) -> None:
    nz, ny, nx = source.shape
    native_buffers = _buffers(_NATIVE_BUFFERS, (slab, ny, nx), source.dtype)
    stop = threading.Event()
    pending: "collections.deque" = collections.deque()  # futures of conversions and writes
    reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanco-read")

    def read(z0):
        buf = native_buffers.get()
        if stop.is_set():
            return None
        z1 = min(z0 + slab, nz)
        try:
            native = source.read_slab(z0, z1, out=buf[: z1 - z0])
            return native, buf, ranges.native_range(native)
        except BaseException:
            native_buffers.put(buf)
            raise

    try:
        for lane in lanes.values():
            lane.start((slab, ny, nx))
        future = reader_pool.submit(read, 0)
        for z0 in range(0, nz, slab):
            native, buf, native_range = future.result()
            if z0 + slab < nz:
                future = reader_pool.submit(read, z0 + slab)
            native_done = _Countdown(len(lanes), lambda b=buf: native_buffers.put(b))
            if observers:
                # every output of the slab must exist at once for the observers: convert, observe, write
                converting = {role: lane.convert_pool.submit(lane.convert, native, native_range, ranges)
                              for role, lane in lanes.items()}
                try:
                    results = {role: f.result() for role, f in converting.items()}
                except BaseException:
                    for f in converting.values():
                        f.cancel()
                    raise
                for observe in observers:
                    observe(z0, native, {role: data for role, (data, _buf) in results.items()})
                for role, lane in lanes.items():
                    data, out_buf = results[role]
                    if role == "native":
                        pending.append(lane.write_pool.submit(lane.write, data, None, native_done))
                    else:
                        pending.append(lane.write_pool.submit(lane.write, data, out_buf, None))
                        native_done.release()
            else:
                for lane in lanes.values():
                    pending.append(lane.convert_pool.submit(lane.convert_then_write, native, native_range,
                                                            ranges, native_done, pending))
            while pending and pending[0].done():
                pending.popleft().result()  # raises an output's error
            for f in list(pending):
                if f.done() and f.exception() is not None:
                    raise f.exception()
            if progress is not None and progress(min(z0 + slab, nz), nz) is False:
                raise ConversionCancelled(f"{path}: conversion cancelled")
        while pending:
            pending.popleft().result()
        for lane in lanes.values():
            lane.writer.close()
    finally:
        stop.set()
        for lane in lanes.values():
            lane.stop()
        # a read waiting for a buffer that a cancelled task would have returned: wake it up
        native_buffers.put(np.empty((0, ny, nx), dtype=source.dtype))
        reader_pool.shutdown(wait=True, cancel_futures=True)


def _merge_range(stat: dict, lo, hi) -> None:
    stat["min"] = lo if stat["min"] is None else min(stat["min"], lo)
    stat["max"] = hi if stat["max"] is None else max(stat["max"], hi)


class _RangeShortcut:
    """Exact min/max of converted slabs without scanning them.

    For small integer native types a conversion is a lookup table. When that table is monotone in
    the native value (it is for every real calibration: each step of the formula, and the final
    rounding, preserves order) and finite, the smallest and largest output of a slab are the
    outputs of its smallest and largest native values, which are in the slab. One cheap min/max
    pass over the native slab then gives every output's range exactly.
    """

    def __init__(self, header: ScancoHeader, options: ConversionOptions, quantities: Sequence[str] = ()):
        self._dtype = np.dtype(header.voxel_type)
        self._options = options
        self._enabled = self._dtype.name in ("int8", "uint8", "int16", "uint16")
        # a converter of its own: probing must not add to the real ones' clipped-voxel counts
        self._probe = UnitConverter(header.calibration, path=header.path) if self._enabled else None
        self._lock = threading.Lock()  # output lanes ask from their own threads
        self._monotone: Dict[str, bool] = {}
        if self._enabled:
            for quantity in dict.fromkeys(quantities):
                self._monotone[quantity] = self._check_monotone(quantity)

    def native_range(self, native: np.ndarray):
        if not self._enabled or native.size == 0:
            return None
        return native.min(), native.max()

    def _check_monotone(self, quantity: str) -> bool:
        info = np.iinfo(self._dtype)
        natives = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64).astype(self._dtype)
        values = self._probe.convert(natives, quantity, hu_dtype=self._options.hu_dtype)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            return False
        step = np.diff(values.astype(np.float64))
        return bool(np.all(step >= 0) or np.all(step <= 0))

    def output_range(self, plan: OutputPlan, native_range):
        """(min, max) of this slab's output for ``plan``, or None when it must be scanned."""
        if native_range is None:
            return None
        lo, hi = native_range
        if plan.role == "native":
            return int(lo), int(hi)
        if plan.quantity is None or not self._monotone.get(plan.quantity, False):
            return None
        with self._lock:
            ends = self._probe.convert(np.array([lo, hi], dtype=self._dtype), plan.quantity,
                                       hu_dtype=self._options.hu_dtype)
        if ends.dtype.kind == "f":
            return float(ends.min()), float(ends.max())
        return int(ends.min()), int(ends.max())


def _track_range(stat: dict, data: np.ndarray) -> None:
    if data.size == 0:
        return
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)] if not np.all(np.isfinite(data)) else data
        if finite.size == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = int(data.min()), int(data.max())
    stat["min"] = lo if stat["min"] is None else min(stat["min"], lo)
    stat["max"] = hi if stat["max"] is None else max(stat["max"], hi)


def _metadata(header, options, plans, resolved, notes, caught, stats, mask_voxels, hu_clipped) -> dict:
    return {
        "software": {"name": "ScancoUnits", "version": __version__},
        "input": {"path": os.path.abspath(header.path), "bytes": header.file_size,
                  "size_bytes": os.stat(header.path).st_size, "mtime_ns": os.stat(header.path).st_mtime_ns},
        "header": header.to_dict(),
        "formulas": {
            "mu_per_cm": "native / mu_scaling",
            "hu": "native * 1000 / (mu_scaling * mu_water) - 1000",
            "density_mg_ha_ccm": "(native / mu_scaling) * density_slope + density_intercept",
            "density_g_cc": "density_mg_ha_ccm / 1000",
            "computed_in": "float64 from native values; HU int16 rounded to nearest (half to even) and clipped",
        },
        "calibration": describe_calibration(header.calibration),
        "thresholds": None if resolved is None else resolved.to_dict(),
        "options": options.to_dict(),
        "outputs": {p.role: {"file": p.path.name, "dtype": p.dtype.name, "unit": p.unit_label,
                             "quantity": p.description, "min": stats[p.role]["min"],
                             "max": stats[p.role]["max"]} for p in plans},
        "mask_voxels": mask_voxels if any(p.role in ("mask", "char_mask") for p in plans) else None,
        "hu_clipped_voxels": hu_clipped,
        "geometry": {"space": "left-posterior-superior", "origin_mm": list(header.origin_mm),
                     "spacing_mm": list(header.voxel_size_mm),
                     "origin_convention": "ITKIOScanco: AIM position * element size; ISQ 0"},
        "notes": notes,
        "warnings": caught,
    }


def convert_file(path, out_dir, options: Optional[ConversionOptions] = None, *,
                 progress: Optional[Callable[[int, int], Optional[bool]]] = None,
                 stem: Optional[str] = None, **option_values) -> Dict[str, Path]:
    """Convert one SCANCO file into ``out_dir``; return the written paths by role.

    Options are a :class:`ConversionOptions` or its fields as keywords, e.g.
    ``convert_file(p, "out", outputs=("hu", "mask"), thresholds=ThresholdSpec(300, 1000))``.
    """
    if options is None:
        options = ConversionOptions(**option_values)
    elif option_values:
        options = replace(options, **option_values)
    header = read_header(path)
    return convert_header(header, out_dir, options, stem=stem, progress=progress).outputs
