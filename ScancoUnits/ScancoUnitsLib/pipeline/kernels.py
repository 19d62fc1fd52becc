"""Fused slab kernel: one pass over a slab of native values writes every requested output.

::

    kernel = SlabKernel(calibration, [KernelOutput("hu", "hu", "int16"),
                                      KernelOutput("density", "density_g_cc", "float32"),
                                      KernelOutput("mask", "mask", "uint8")],
                        native_dtype="int16", mask_native_range=(8192, 32767))
    stats = kernel.new_stats()                       # one per worker thread
    for native in slabs:
        kernel.run(native, {"hu": hu_buf, "density": rho_buf, "mask": mask_buf}, stats)
    total = stats_a.merge(stats_b)                   # workers' statistics together

The values are bit-identical to the per-output reference functions:

* every quantity with formula steps (core.quantities): :meth:`units.UnitConverter.convert`. 8/16-bit
  natives go through a table over every native value built by it; wider natives through the steps,
  voxel by voxel (the numba kernel runs them as a step program).
* ``mask``: :meth:`thresholds.ResolvedThresholds.mask` with ``mask_native_range = (native_low,
  native_high)`` (inclusive; bounds outside an integer dtype's range are clamped the same way);
  ``char_mask``: :func:`~ScancoUnitsLib.core.thresholds.mask_from_char` (non-zero -> 1). Both uint8 0/1.
* ``native``: the native values themselves (the native dtype); ``float``: the natives cast to a float
  dtype (float32 or float64).

Statistics: :class:`~ScancoUnitsLib.pipeline.kernel_stats.KernelStats`, one object per worker (what
they hold is described there). The numpy backend without a histogram (``histogram=False``) takes them
from each slab's native min/max, which needs every table to be monotone; that is checked when the
kernel is built, with the histogram as fallback.

Backends: ``"numba"`` (the ``fast`` extra; compiled once and cached on disk, releases the GIL: the
whole slab, voxel by voxel, every output and the histogram count in one loop; it always counts the
histogram and derives the statistics from it) and ``"numpy"`` (no dependency: the index
array of a chunk is built once and serves every table lookup, masks are integer comparisons).
``"auto"`` takes numba when it can be imported; the environment variable
``SCANCO_UNITS_KERNEL=numpy|numba`` overrides ``"auto"``.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.quantities import QUANTITIES, STEP_OPERATIONS
from ..core.thresholds import mask_from_char
from ..core.units import INT16_MAX, INT16_MIN, LUT_DTYPES, UnitConverter, calibration_constants
from .kernel_stats import KernelStats, StatsTally

__all__ = ["KernelOutput", "KernelStats", "SlabKernel", "KERNEL_QUANTITIES", "numba_kernels",
           "numba_available"]

UNIT_QUANTITIES = tuple(k for k, q in QUANTITIES.items() if q.steps)  # a formula: computed by UnitConverter
KERNEL_QUANTITIES = UNIT_QUANTITIES + ("native", "mask", "char_mask", "float")
BACKENDS = ("auto", "numba", "numpy")
KERNEL_ENV = "SCANCO_UNITS_KERNEL"


_CHUNK_VOXELS = 1 << 18    # numpy path: index buffer of 2 MiB (intp), as in core/units.py
_NUMBA_MAX_VOXELS = (1 << 32) - 1  # numba path: uint32 counts per call


@dataclass(frozen=True)
class KernelOutput:
    """One output of the kernel: its name (the key in ``outs`` and in the statistics), quantity, dtype."""

    name: str
    quantity: str
    dtype: np.dtype

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"output name must be a non-empty string, not {self.name!r}")
        if self.quantity not in KERNEL_QUANTITIES:
            raise ValueError(f"unknown kernel quantity {self.quantity!r}; expected one of "
                             f"{', '.join(KERNEL_QUANTITIES)}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype).newbyteorder("="))


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def numba_kernels():
    """The compiled kernels module (imports numba); ImportError naming the extra when it is missing."""
    try:
        from . import kernels_numba as slab_kernel_numba
    except ImportError as exc:
        raise ImportError("the numba slab kernel needs numba: pip install 'scanco-units[fast]'") from exc
    return slab_kernel_numba


def choose_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        env = os.environ.get(KERNEL_ENV, "").strip().lower()
        if env in ("numba", "numpy"):
            backend = env
        elif env not in ("", "auto"):
            raise ValueError(f"{KERNEL_ENV} must be numba, numpy or auto, not {env!r}")
    if backend == "auto":
        return "numba" if numba_available() else "numpy"
    if backend == "numba":
        numba_kernels()
    return backend


def _as_bounds(mask_native_range, native_dtype: np.dtype) -> Optional[Tuple[float, float]]:
    """``(low, high)``: integers for integer natives (a fractional bound: the integers inside it),
    floats as they are for float natives (never rounded)."""
    if mask_native_range is None:
        return None
    if hasattr(mask_native_range, "native_low"):  # a ResolvedThresholds
        low, high = mask_native_range.native_low, mask_native_range.native_high
    else:
        low, high = mask_native_range
    if native_dtype.kind == "f":
        return float(low), float(high)
    return math.ceil(low), math.floor(high)


class SlabKernel:
    """Converts slabs of one native dtype into every output in one pass; see the module docstring.

    ``calibration``: a :class:`~ScancoUnitsLib.core.header.Calibration` (None: only native/mask/char_mask/float outputs).
    ``mask_native_range``: ``(native_low, native_high)`` or a ``ResolvedThresholds``; required by a
    ``mask`` output. One kernel may be shared by several threads (each with its own stats).
    """

    def __init__(self, calibration, outputs: Sequence[KernelOutput], *, native_dtype,
                 mask_native_range=None, histogram: bool = True, backend: str = "auto", path=None):
        self.outputs = tuple(outputs)
        if not self.outputs and not histogram:
            raise ValueError("the kernel needs at least one output or the histogram")
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        self.native_dtype = np.dtype(native_dtype).newbyteorder("=")
        if self.native_dtype.kind not in "iuf":
            raise ValueError(f"native voxels must be integers or floats, not {self.native_dtype}")
        self.converter = UnitConverter(calibration, path=path)
        self.bounds = _as_bounds(mask_native_range, self.native_dtype)
        self.histogram = bool(histogram)
        self.uses_tables = self.native_dtype.name in LUT_DTYPES
        for out in self.outputs:
            self._check_output(out)
        self.backend_name = choose_backend(backend)
        self._local = threading.local()
        if self.uses_tables:
            self._build_tables()
        else:
            self._build_wide()

    # ---- set-up ----------------------------------------------------------------------------------
    def _check_output(self, out: KernelOutput) -> None:
        q, dt = out.quantity, out.dtype
        if q in UNIT_QUANTITIES:
            self.converter.require(q)
            if q == "hu":
                ok = dt in (np.dtype("int16"), np.dtype("float32"))
            else:
                ok = dt == UnitConverter.output_dtype(q)
        elif q in ("mask", "char_mask"):
            ok = dt == np.uint8
            if q == "mask" and self.bounds is None:
                raise ValueError(f"output {out.name!r}: a mask needs mask_native_range")
        elif q == "native":
            ok = dt == self.native_dtype
        else:  # float
            ok = dt in (np.dtype("float32"), np.dtype("float64"))
        if not ok:
            raise ValueError(f"output {out.name!r}: quantity {q} cannot be written as {dt.name}")

    def _table_of(self, out: KernelOutput, natives: np.ndarray) -> np.ndarray:
        """The output for every native value (natives in ascending order), by the reference functions."""
        q = out.quantity
        if q in UNIT_QUANTITIES:
            converter = UnitConverter(self.converter.calibration)
            return converter.convert(natives, q, hu_dtype=out.dtype.name if q == "hu" else "int16")
        if q == "mask":
            return self._mask_numpy(natives, np.empty(natives.shape, np.uint8))
        if q == "char_mask":
            return mask_from_char(natives)
        return natives.astype(out.dtype)

    def _build_tables(self) -> None:
        dt = self.native_dtype
        info = np.iinfo(dt)
        bits = 8 * dt.itemsize
        self._index_dtype = np.dtype(f"u{dt.itemsize}")
        self._flip = (1 << (bits - 1)) if dt.kind == "i" else 0
        natives = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64).astype(dt)
        self._tables = {o.name: self._table_of(o, natives) for o in self.outputs}
        self._bit_order = np.arange(natives.size) ^ self._flip  # table index -> bit pattern, and back
        self._bit_tables = {name: table[self._bit_order] for name, table in self._tables.items()}
        self._clip_tables, self._clip_ends = {}, {}
        for o in self.outputs:
            if o.quantity == "hu" and o.dtype == np.int16:
                reference = np.rint(self.converter.native_to(natives, "hu"))
                below, above = reference < INT16_MIN, reference > INT16_MAX
                self._clip_tables[o.name] = below | above
                # HU grows with native: the clipped natives are the two ends of the range
                self._clip_ends[o.name] = (int(natives[below].max()) if below.any() else None,
                                           int(natives[above].min()) if above.any() else None)
        # numpy without a histogram: statistics from the slab's native min/max (tables are monotone:
        # every formula is a chain of monotone IEEE operations), unless a table breaks that assumption
        self._count_in_numpy = self.histogram or not all(
            self._monotone(t) for name, t in self._tables.items())
        if self.backend_name == "numba":
            groups = {1: [], 2: [], 4: []}
            self._numba_fallback = [o for o in self.outputs if o.dtype.itemsize not in groups]
            for o in self.outputs:
                if o.dtype.itemsize in groups:
                    groups[o.dtype.itemsize].append(o)
            self._groups = {}
            for size, members in groups.items():
                udt = np.dtype(f"u{size}")
                if members:
                    luts = np.stack([self._tables[o.name].view(udt) for o in members])
                else:
                    luts = np.zeros((1, 1), udt)
                self._groups[size] = ([o.name for o in members], luts, np.zeros(0, udt))

    @staticmethod
    def _monotone(table: np.ndarray) -> bool:
        if table.dtype.kind == "f" and not np.isfinite(table).all():
            return False
        steps = np.diff(table.astype(np.float64))
        return bool((steps >= 0).all() or (steps <= 0).all())

    def _stats_from_native_range(self, src, flat, stats: KernelStats) -> None:
        """Statistics of a table kernel without a histogram (numpy backend, histogram=False)."""
        tally = stats.tally
        lo_native, hi_native = src.min(), src.max()
        ends = np.array([lo_native, hi_native], dtype=src.dtype)
        for o in self.outputs:
            table = self._tables[o.name]
            if o.quantity in ("mask", "char_mask"):
                ones = int(np.count_nonzero(flat[o.name]))
                tally.ones[o.name] += ones
                tally.add_range(o.name, 0 if ones < src.size else 1, 1 if ones else 0)
                continue
            values = table[ends.astype(np.int64) - int(np.iinfo(src.dtype).min)]
            tally.add_range(o.name, values.min().item(), values.max().item())
            if o.name in self._clip_ends:
                below, above = self._clip_ends[o.name]
                if below is not None and lo_native <= below:
                    tally.clipped[o.name] += int(np.count_nonzero(src <= below))
                if above is not None and hi_native >= above:
                    tally.clipped[o.name] += int(np.count_nonzero(src >= above))
        tally.add_native_range(int(lo_native), int(hi_native))
        tally.voxels += src.size

    def _build_wide(self) -> None:
        self._constants = None
        if any(o.quantity in UNIT_QUANTITIES for o in self.outputs):
            self._constants = calibration_constants(self.converter.calibration)

    def _step_program(self, outputs) -> Tuple[np.ndarray, np.ndarray]:
        """The outputs' formula steps as the numba kernel's tables: op codes (1 + 2 - 3 * 4 /, 0 ends a
        row) and float64 operands, one row per output."""
        rows = [QUANTITIES[o.quantity].steps for o in outputs] or [()]
        width = max(1, max(len(r) for r in rows))
        ops = np.zeros((len(rows), width), np.int64)
        vals = np.zeros((len(rows), width), np.float64)
        for i, steps in enumerate(rows):
            for k, step in enumerate(steps):
                ops[i, k] = STEP_OPERATIONS.index(step.op) + 1
                vals[i, k] = step.value(self._constants)
        return ops, vals

    # ---- statistics ------------------------------------------------------------------------------
    def new_stats(self) -> KernelStats:
        """Statistics for one worker (merge the workers' at the end)."""
        counts = None
        if self.uses_tables:
            counts = np.zeros(1 << (8 * self.native_dtype.itemsize), dtype=np.int64)
        return KernelStats([o.name for o in self.outputs], counts=counts, histogram=self.histogram,
                           derive=self._derive if self.uses_tables else None)

    def _derive(self, tally: StatsTally) -> None:
        """Every statistic of a table kernel from the cumulative native histogram."""
        counts = tally.counts
        present = np.flatnonzero(counts)
        weights = counts[present]
        tally.voxels = int(weights.sum())
        low = int(np.iinfo(self.native_dtype).min)
        tally.native_range = (int(present[0]) + low, int(present[-1]) + low) if present.size else (None, None)
        for o in self.outputs:
            values = self._tables[o.name][present]
            if o.dtype.kind == "f":
                finite = np.isfinite(values)
                tally.nonfinite[o.name] = int(weights[~finite].sum())
                values = values[finite]
            if values.size:
                lo, hi = values.min(), values.max()
                tally.min[o.name], tally.max[o.name] = lo.item(), hi.item()
            else:
                tally.min[o.name] = tally.max[o.name] = None
            if o.name in self._clip_tables:
                tally.clipped[o.name] = int(weights[self._clip_tables[o.name][present]].sum())
            if o.quantity in ("mask", "char_mask"):
                tally.ones[o.name] = int(weights[values.astype(bool)].sum()) if values.size else 0

    # ---- running ---------------------------------------------------------------------------------
    def _prepare(self, native_slab, outs: Mapping[str, np.ndarray]):
        native = np.asarray(native_slab)
        if native.dtype.newbyteorder("=") != self.native_dtype:
            raise ValueError(f"slab dtype {native.dtype} is not the kernel's native dtype {self.native_dtype}")
        if not native.dtype.isnative:
            native = native.astype(self.native_dtype)
        src = np.ascontiguousarray(native).reshape(-1)
        flat = {}
        for o in self.outputs:
            arr = outs.get(o.name)
            if not isinstance(arr, np.ndarray) or arr.shape != native.shape or arr.dtype != o.dtype \
                    or not arr.flags.c_contiguous or not arr.flags.writeable:
                raise ValueError(
                    f"outs[{o.name!r}] must be a writeable C-contiguous array of shape {native.shape} and "
                    f"dtype {o.dtype}, got {getattr(arr, 'shape', None)} "
                    f"{getattr(arr, 'dtype', type(arr).__name__)}")
            flat[o.name] = arr.reshape(-1)
        return src, flat

    def run(self, native_slab, outs: Mapping[str, np.ndarray], stats: KernelStats) -> None:
        """Write every output of ``native_slab`` into ``outs[name]`` and add the slab to ``stats``."""
        src, flat = self._prepare(native_slab, outs)
        if src.size == 0:
            return
        if self.uses_tables:
            if self.backend_name == "numba":
                self._run_tables_numba(src, flat, stats.tally.counts)
            elif self._count_in_numpy:
                self._run_tables_numpy(src, flat, stats.tally.counts)
            else:
                self._run_tables_numpy(src, flat, None)
                self._stats_from_native_range(src, flat, stats)
                return
            stats.histogram_changed()  # the statistics are derived from the histogram when read
        elif self.backend_name == "numba":
            self._run_wide_numba(src, flat, stats.tally)
        else:
            self._run_wide_numpy(src, flat, stats.tally)

    def _scratch(self, name: str, size: int, dtype) -> np.ndarray:
        buf = getattr(self._local, name, None)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=dtype)
            setattr(self._local, name, buf)
        return buf[:size]

    # -- 8/16-bit natives --
    def _run_tables_numba(self, src, flat, counts) -> None:
        kernels = numba_kernels()
        index = src.view(self._index_dtype)
        small = self._scratch("numba_counts", counts.size, np.uint32)
        for start in range(0, src.size, _NUMBA_MAX_VOXELS):
            stop = min(start + _NUMBA_MAX_VOXELS, src.size)
            args = []
            for size in (1, 2, 4):
                names, luts, dummy = self._groups[size]
                udt = np.dtype(f"u{size}")
                arrays = tuple(flat[n][start:stop].view(udt) for n in names) or (dummy,)
                args += [luts, arrays, len(names)]
            small[...] = 0
            kernels.lut_slab(index[start:stop], self._flip, small, *args)
            counts += small
        for o in self._numba_fallback:
            np.take(self._tables[o.name], self._scratch_index(index), out=flat[o.name], mode="wrap")

    def _scratch_index(self, index):  # only for outputs whose item size is not 1, 2 or 4 bytes
        idx = index.astype(np.intp)
        if self._flip:
            idx ^= self._flip
        return idx

    def _run_tables_numpy(self, src, flat, counts) -> None:
        # numpy indexes by bit pattern (no extra pass to flip the sign bit): its tables and its
        # histogram are permuted, the histogram back to native order once per slab
        index = src.view(self._index_dtype)
        bins = 1 << (8 * src.dtype.itemsize)
        buffer = self._scratch("numpy_idx", min(_CHUNK_VOXELS, src.size), np.intp)
        bit_counts = self._scratch("numpy_counts", bins, np.int64) if counts is not None else None
        if bit_counts is not None:
            bit_counts[...] = 0
        gathers = [o for o in self.outputs if o.quantity in UNIT_QUANTITIES]
        for start in range(0, src.size, _CHUNK_VOXELS):
            stop = min(start + _CHUNK_VOXELS, src.size)
            idx = buffer[: stop - start]
            idx[...] = index[start:stop]
            if bit_counts is not None:
                bit_counts += np.bincount(idx, minlength=bins)
            for o in gathers:
                # indices are bit patterns, always inside the table: "wrap" never wraps (and is fast)
                np.take(self._bit_tables[o.name], idx, out=flat[o.name][start:stop], mode="wrap")
        if counts is not None:
            counts += bit_counts[self._bit_order]
        for o in self.outputs:
            if o.quantity not in UNIT_QUANTITIES:
                self._direct_numpy(o, src, flat[o.name])

    def _direct_numpy(self, o: KernelOutput, src, dst) -> None:
        """Outputs that need no table: masks by comparison, natives by copy or cast."""
        if o.quantity == "mask":
            self._mask_numpy(src, dst)
        elif o.quantity == "char_mask":
            mask_from_char(src, out=dst)
        else:
            np.copyto(dst, src, casting="unsafe")

    def _mask_numpy(self, src, dst) -> np.ndarray:
        """``ResolvedThresholds.mask`` with this kernel's bounds (same clamping, same comparisons)."""
        low, high = self.bounds
        flat_dst = dst.reshape(-1).view(np.bool_)
        flat_src = src.reshape(-1)
        if src.dtype.kind in "iu":
            info = np.iinfo(src.dtype)
            if low > info.max or high < info.min:
                flat_dst[...] = False
                return dst
            low, high = max(low, int(info.min)), min(high, int(info.max))
            unsigned = np.dtype(f"u{src.dtype.itemsize}")
            offset, span = src.dtype.type(low), unsigned.type(high - low)
            shifted = self._scratch(f"mask_{src.dtype.name}", min(_CHUNK_VOXELS, flat_src.size), src.dtype)
            for start in range(0, flat_src.size, _CHUNK_VOXELS):
                stop = min(start + _CHUNK_VOXELS, flat_src.size)
                part = shifted[: stop - start]
                np.subtract(flat_src[start:stop], offset, out=part)  # wraps: unsigned <= span inside
                np.less_equal(part.view(unsigned), span, out=flat_dst[start:stop])
            return dst
        low, high = src.dtype.type(low), src.dtype.type(high)
        above = self._scratch("mask_above", min(_CHUNK_VOXELS, flat_src.size), np.bool_)
        for start in range(0, flat_src.size, _CHUNK_VOXELS):
            stop = min(start + _CHUNK_VOXELS, flat_src.size)
            part = above[: stop - start]
            np.greater_equal(flat_src[start:stop], low, out=part)
            np.less_equal(flat_src[start:stop], high, out=flat_dst[start:stop])
            np.logical_and(flat_dst[start:stop], part, out=flat_dst[start:stop])
        return dst

    # -- wide natives --
    def _run_wide_numpy(self, src, flat, tally: StatsTally) -> None:
        converter = UnitConverter(self.converter.calibration)
        for o in self.outputs:
            dst = flat[o.name]
            if o.quantity in UNIT_QUANTITIES:
                converter.convert(src, o.quantity, out=dst, hu_dtype=o.dtype.name if o.quantity == "hu" else "int16")
                if o.quantity == "hu" and o.dtype == np.int16:
                    tally.clipped[o.name] += converter.last_hu_clipped_voxels
            else:
                self._direct_numpy(o, src, dst)
            if o.quantity in ("mask", "char_mask"):
                tally.ones[o.name] += int(np.count_nonzero(dst))
            self._track(tally, o, dst)
        tally.voxels += src.size

    @staticmethod
    def _track(tally: StatsTally, o: KernelOutput, dst: np.ndarray) -> None:
        if o.dtype.kind == "f":
            finite = np.isfinite(dst)
            bad = dst.size - int(np.count_nonzero(finite))
            if bad:
                tally.nonfinite[o.name] += bad
                dst = dst[finite]
        if dst.size:
            tally.add_range(o.name, dst.min().item(), dst.max().item())

    def _run_wide_numba(self, src, flat, tally: StatsTally) -> None:
        kernels = numba_kernels()
        f32 = [o for o in self.outputs if o.dtype == np.float32 and o.quantity in UNIT_QUANTITIES]
        h16 = [o for o in self.outputs if o.quantity in UNIT_QUANTITIES and o.dtype == np.int16][:1]
        masks = [o for o in self.outputs if o.quantity in ("mask", "char_mask")]
        masks = masks[:1]  # one mask in the loop (its statistics come from the loop's count)
        rest = [o for o in self.outputs if o not in f32 and o not in h16 and o not in masks]
        ops_f, vals_f = self._step_program(f32)
        ops_h, vals_h = self._step_program(h16)
        mins_f = np.full(max(1, len(f32)), np.inf)
        maxs_f = np.full(max(1, len(f32)), -np.inf)
        nonfinite_f = np.zeros(max(1, len(f32)), np.int64)
        mins_h = np.full(max(1, len(h16)), INT16_MAX + 1, np.int64)
        maxs_h = np.full(max(1, len(h16)), INT16_MIN - 1, np.int64)
        outs_f = tuple(flat[o.name] for o in f32) or (np.zeros(0, np.float32),)
        outs_h = tuple(flat[o.name] for o in h16) or (np.zeros(0, np.int16),)
        outs_m = tuple(flat[o.name] for o in masks) or (np.zeros(0, np.uint8),)
        mask_kind = 1 if masks and masks[0].quantity == "char_mask" else 0
        low, high = self._wide_bounds(src.dtype) if mask_kind == 0 and masks else (0, 0)
        if low is None:  # an empty range for this dtype: every mask voxel is 0
            low, high = 1, 0
        dt = src.dtype
        clipped, ones, nan_hu = kernels.float_slab(
            src, ops_f, vals_f, outs_f, len(f32), mins_f, maxs_f, nonfinite_f,
            ops_h, vals_h, outs_h, len(h16), mins_h, maxs_h, outs_m, len(masks), mask_kind,
            dt.type(low), dt.type(high))
        if nan_hu:
            raise ValueError("native voxels contain NaN, which int16 HU cannot hold; "
                             "ask for hu_dtype='float32'")
        if h16:
            tally.clipped[h16[0].name] += int(clipped)  # one int16 HU output at most in practice
        if masks:
            tally.ones[masks[0].name] += int(ones)
        for j, o in enumerate(f32):
            tally.nonfinite[o.name] += int(nonfinite_f[j])
            if mins_f[j] <= maxs_f[j]:
                tally.add_range(o.name, float(np.float32(mins_f[j])), float(np.float32(maxs_f[j])))
        for j, o in enumerate(h16):
            tally.add_range(o.name, int(mins_h[j]), int(maxs_h[j]))
        for j, o in enumerate(masks):
            if ones:
                tally.add_range(o.name, 0 if ones < src.size else 1, 1)
            else:
                tally.add_range(o.name, 0, 0)
        for o in rest:
            self._direct_numpy(o, src, flat[o.name])
            if o.quantity in ("mask", "char_mask"):
                tally.ones[o.name] += int(np.count_nonzero(flat[o.name]))
            self._track(tally, o, flat[o.name])
        tally.voxels += src.size

    def _wide_bounds(self, dtype):
        """Mask bounds in the native dtype (integers clamped to its range), None when the range is empty."""
        low, high = self.bounds
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if low > info.max or high < info.min:
                return None, None
            return max(low, int(info.min)), min(high, int(info.max))
        return low, high
