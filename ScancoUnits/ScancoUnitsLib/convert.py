"""One SCANCO file -> calibrated NRRD volumes, a threshold mask and a metadata JSON, streamed.

Data flow: header + :class:`~ScancoUnitsLib.reader.VoxelSource` -> slabs of native values ->
per-output conversion into reused buffers -> one :class:`~ScancoUnitsLib.nrrd_writer.NrrdVolumeWriter`
per output, all inside one :class:`~ScancoUnitsLib.atomic_output.AtomicOutputSet` (every output of a
file appears together, or none does). Reading, converting and writing overlap in threads: numpy and
file I/O release the GIL.
"""

from __future__ import annotations

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
_TARGET_SLAB_VOXELS = 4 << 20  # ~4 Mi voxels a slab: 8 MB of int16, 16 MB of float32


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
    slab_slices: Optional[int] = None       # None: about 4 Mi voxels a slab
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
    converter = UnitConverter(header.calibration, path=header.path)
    nz, ny, nx = header.shape_zyx
    slab = _slab_slices(header, options)
    caught: List[str] = []
    stats = {p.role: {"min": None, "max": None} for p in plans}
    mask_voxels = 0
    nan_voxels = 0

    with AtomicOutputSet(overwrite=options.overwrite) as outputs, \
            open_voxels(header) as source, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanco-read") as reader_pool:
        writers = {}
        for p in plans:
            writers[p.role] = NrrdVolumeWriter(
                p.path, header.shape_zyx, p.dtype, spacing_mm=header.voxel_size_mm, origin_mm=header.origin_mm,
                key_values=p.key_values, encoding="gzip" if options.compress else "raw",
                detached=options.detached, threads=options.threads, atomic=outputs)
        write_pools = {p.role: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scanco-{p.role}")
                       for p in plans}
        out_buffers = {p.role: _buffers(2, (slab, ny, nx), p.dtype) for p in plans if p.role != "native"}
        in_buffers = _buffers(2, (slab, ny, nx), source.dtype)
        pending_writes = []
        try:
            def read(z0):
                z1 = min(z0 + slab, nz)
                buf = in_buffers.get()
                return source.read_slab(z0, z1, out=buf[: z1 - z0]), buf

            future = reader_pool.submit(read, 0)
            for z0 in range(0, nz, slab):
                native, in_buf = future.result()
                if z0 + slab < nz:
                    future = reader_pool.submit(read, z0 + slab)
                n = native.shape[0]
                native_write = None
                slab_views = {}
                for p in plans:
                    if p.role == "native":
                        data, release = native, None
                    else:
                        buf = out_buffers[p.role].get()
                        data = buf[:n]
                        if p.role == "mask":
                            resolved.mask(native, out=data)
                            mask_voxels += int(np.count_nonzero(data))
                        elif p.role == "char_mask":
                            mask_from_char(native, out=data)
                            mask_voxels += int(np.count_nonzero(data))
                        elif p.role == "float":
                            np.copyto(data, native)
                            nan_voxels += int(np.count_nonzero(~np.isfinite(data)))
                        else:
                            converter.convert(native, p.quantity, out=data, hu_dtype=options.hu_dtype)
                        release = (out_buffers[p.role], buf)
                    slab_views[p.role] = data
                    _track_range(stats[p.role], data)
                    written = write_pools[p.role].submit(_write, writers[p.role], data, release)
                    pending_writes.append(written)
                    if p.role == "native":
                        native_write = written
                if observers:
                    for observe in observers:
                        observe(z0, native, slab_views)
                if native_write is not None:  # the input buffer is reused once it is on disk
                    native_write.result()
                in_buffers.put(in_buf)
                _raise_failed(pending_writes)
                pending_writes = [f for f in pending_writes if not f.done()]
                if progress is not None and progress(min(z0 + slab, nz), nz) is False:
                    raise ConversionCancelled(f"{header.path}: conversion cancelled")
            for f in pending_writes:
                f.result()
            for w in writers.values():
                w.close()
        finally:
            for pool in write_pools.values():
                pool.shutdown(wait=True)

        if converter.hu_clipped_voxels:
            msg = (f"{header.path}: {converter.hu_clipped_voxels} voxels were clipped to the int16 HU range "
                   f"(use --hu-dtype float32 to keep them)")
            warnings.warn(msg, stacklevel=2)
            caught.append(msg)
        if nan_voxels:
            msg = f"{header.path}: the float image holds {nan_voxels} NaN or infinite voxels (written as stored)"
            warnings.warn(msg, stacklevel=2)
            caught.append(msg)
        metadata = _metadata(header, options, plans, resolved, notes, caught, stats, mask_voxels,
                             converter.hu_clipped_voxels)
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


def _write(writer, data, release):
    try:
        writer.write_slab(data)
    finally:
        if release is not None:
            pool, buf = release
            pool.put(buf)


def _raise_failed(futures) -> None:
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


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
        "input": {"path": os.path.abspath(header.path), "bytes": header.file_size},
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
