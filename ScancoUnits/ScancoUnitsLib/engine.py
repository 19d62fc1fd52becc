"""The streaming engine: slabs of native values -> every requested quantity in one pass -> sinks.

::

    file -> VoxelSource.read_slab -> native slab -> convert every output -> observers -> sinks
            (reader thread)                        (worker threads)         (writer thread, in z order)

One engine serves the command line (sinks: volume writers), Slicer (sinks: node arrays, full
resolution, every n-th voxel or a region) and both at once (Apply with export reads the file once).
Memory is a few slabs per output whatever the file size. A sink is anything with
``write(z, slab)``: ``z`` is the ``range`` of file slice indices the slab's slices come from, the
slab is read-only and valid only during the call (its buffer is reused).

Threads (2 cores are the design point): one reader fills native buffers ahead; workers each take a
whole slab through every output into a buffer set of their own; one writer hands the converted
slabs to observers and sinks in z order. Numpy, file reads and writes release the GIL.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from .errors import ConversionCancelled
from .header import ScancoHeader
from .quantities import QUANTITIES
from .thresholds import ResolvedThresholds, mask_from_char
from .units import UnitConverter

#: about 1 Mi voxels a slab (2 MB of int16, 4 MB of float32): stays in the CPU cache
TARGET_SLAB_VOXELS = 1 << 20
_LUT_DTYPES = ("int8", "uint8", "int16", "uint16")


class Sink(Protocol):
    def write(self, z: range, slab: np.ndarray) -> None: ...


SlabObserver = Callable[[int, np.ndarray, Dict[str, np.ndarray]], None]


@dataclass
class EngineOutput:
    """One volume the engine computes: ``role`` names it for observers and results; ``quantity`` is a
    :mod:`quantities` key; every sink receives each of its slabs."""

    role: str
    quantity: str
    dtype: np.dtype
    sinks: List[Sink] = field(default_factory=list)
    #: an array of (len(z_selection), ny, nx) to convert straight into (a Slicer node's own voxels)
    target: Optional[np.ndarray] = None


@dataclass
class OutputStatistics:
    """Exact statistics of one output, accumulated slab by slab."""

    min: Optional[float] = None
    max: Optional[float] = None
    mask_voxels: int = 0
    nonfinite_voxels: int = 0
    hu_clipped_voxels: int = 0

    def merge_range(self, lo, hi) -> None:
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max}


@dataclass
class EngineResult:
    statistics: Dict[str, OutputStatistics]
    slices_read: int
    native_min: Optional[float] = None
    native_max: Optional[float] = None


def slab_slices_for(header: ScancoHeader, slab_slices: Optional[int] = None) -> int:
    if slab_slices:
        return int(slab_slices)
    x, y, z = header.dimensions
    return max(1, min(z, TARGET_SLAB_VOXELS // max(1, x * y)))


class _RangeShortcut:
    """Exact min/max of converted slabs without scanning them.

    For small integer native types a conversion is a lookup table. When that table is monotone in
    the native value (it is for every real calibration: each step of the formula, and the final
    rounding, preserves order) and finite, the smallest and largest output of a slab are the
    outputs of its smallest and largest native values, which are in the slab. One cheap min/max
    pass over the native slab then gives every output's range exactly.
    """

    def __init__(self, header: ScancoHeader, hu_dtype: str, quantities: Sequence[str] = ()):
        self._dtype = np.dtype(header.voxel_type)
        self._hu_dtype = hu_dtype
        self._enabled = self._dtype.name in _LUT_DTYPES
        # a converter of its own: probing must not add to the real ones' clipped-voxel counts
        self._probe = UnitConverter(header.calibration, path=header.path) if self._enabled else None
        self._lock = threading.Lock()
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
        values = self._probe.convert(natives, quantity, hu_dtype=self._hu_dtype)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            return False
        step = np.diff(values.astype(np.float64))
        return bool(np.all(step >= 0) or np.all(step <= 0))

    def output_range(self, quantity: str, native_range):
        """(min, max) of this slab's output, or None when it must be scanned."""
        if native_range is None:
            return None
        lo, hi = native_range
        if quantity in ("native", "float"):
            return int(lo), int(hi)
        if not self._monotone.get(quantity, False):
            return None
        with self._lock:
            ends = self._probe.convert(np.array([lo, hi], dtype=self._dtype), quantity, hu_dtype=self._hu_dtype)
        if ends.dtype.kind == "f":
            return float(ends.min()), float(ends.max())
        return int(ends.min()), int(ends.max())


def _scan_range(stat: OutputStatistics, data: np.ndarray) -> None:
    if data.size == 0:
        return
    if data.dtype.kind == "f":
        finite = data if np.all(np.isfinite(data)) else data[np.isfinite(data)]
        if finite.size == 0:
            return
        stat.merge_range(float(finite.min()), float(finite.max()))
    else:
        stat.merge_range(int(data.min()), int(data.max()))


class _Worker:
    """Converts a native slab into every output (one converter per worker: its clipped-voxel
    count is only touched by this worker's thread)."""

    def __init__(self, header: ScancoHeader, outputs: Sequence[EngineOutput], thresholds, hu_dtype: str):
        self.outputs = outputs
        self.thresholds = thresholds
        self.hu_dtype = hu_dtype
        self.converter = UnitConverter(header.calibration, path=header.path)
        self.stats = {o.role: OutputStatistics() for o in outputs}
        self.native = OutputStatistics()

    def convert(self, native: np.ndarray, buffers: Dict[str, np.ndarray], native_range,
                ranges: _RangeShortcut, row0: int = 0) -> Dict[str, np.ndarray]:
        n = native.shape[0]
        views = {}
        if native_range is not None:
            self.native.merge_range(int(native_range[0]), int(native_range[1]))
        elif native.dtype.kind in "iu":
            _scan_range(self.native, native)
        for out in self.outputs:
            stat = self.stats[out.role]
            q = out.quantity
            if q in ("native", "float"):
                data = native
                if out.target is not None:
                    data = out.target[row0:row0 + n]
                    np.copyto(data, native)
                if q == "float":
                    stat.nonfinite_voxels += int(np.count_nonzero(~np.isfinite(data)))
            else:
                data = buffers[out.role][:n] if out.target is None else out.target[row0:row0 + n]
                if q == "mask":
                    self.thresholds.mask(native, out=data)
                elif q == "char_mask":
                    mask_from_char(native, out=data)
                else:
                    before = self.converter.hu_clipped_voxels
                    self.converter.convert(native, q, out=data, hu_dtype=self.hu_dtype)
                    stat.hu_clipped_voxels += self.converter.hu_clipped_voxels - before
            if q in ("mask", "char_mask"):
                count = int(np.count_nonzero(data))
                stat.mask_voxels += count
                if data.size:
                    stat.merge_range(0 if count < data.size else 1, 1 if count else 0)
            else:
                known = ranges.output_range(q, native_range)
                if known is None:
                    _scan_range(stat, data)
                else:
                    stat.merge_range(*known)
            views[out.role] = data
        return views


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def run_engine(header: ScancoHeader, source, outputs: Sequence[EngineOutput], *,
               thresholds: Optional[ResolvedThresholds] = None, hu_dtype: str = "int16",
               slab_slices: Optional[int] = None, z_selection: Optional[range] = None,
               observers: Sequence[SlabObserver] = (),
               progress: Optional[Callable[[int, int], Optional[bool]]] = None,
               cancel=None, workers: int = 2) -> EngineResult:
    """Stream ``source`` (a :class:`~ScancoUnitsLib.reader.VoxelSource` of ``header``) through every output.

    ``z_selection``: the file slices to read (default all; a step reads only the kept slices).
    ``progress(done, total)`` after each slab (returning False cancels); ``cancel`` (a callable or an
    Event) is checked before each slab. Cancelling raises :class:`ConversionCancelled`; any error
    stops every thread before it propagates. Observers are called as
    ``observer(z0, native_slab, {role: converted slab})`` in z order.
    """
    nx, ny, nz = header.dimensions
    z_selection = range(nz) if z_selection is None else z_selection
    slab = slab_slices_for(header, slab_slices)
    step = z_selection.step
    blocks = [z_selection[i:i + slab] for i in range(0, len(z_selection), slab)]
    total = len(z_selection)
    ranges = _RangeShortcut(header, hu_dtype, [o.quantity for o in outputs if QUANTITIES[o.quantity].is_calibrated])
    workers = max(1, min(int(workers), len(blocks) or 1))
    native_dtype = np.dtype(header.voxel_type)
    worker_states = [_Worker(header, outputs, thresholds, hu_dtype) for _ in range(workers)]

    # buffers: native slabs in flight, and one set of converted slabs per slab in flight
    in_flight = workers + 2
    native_pool: "queue.Queue[np.ndarray]" = queue.Queue()
    buffer_pool: "queue.Queue[Dict[str, np.ndarray]]" = queue.Queue()
    for _ in range(in_flight):
        native_pool.put(np.empty((slab, ny, nx), dtype=native_dtype))
        buffer_pool.put({o.role: np.empty((slab, ny, nx), dtype=o.dtype) for o in outputs
                         if o.quantity not in ("native", "float") and o.target is None})

    stop = threading.Event()
    failure: List[BaseException] = []
    done_slices = 0
    first_error = threading.Lock()

    def fail(exc: BaseException) -> None:
        with first_error:
            if not failure:
                failure.append(exc)
        stop.set()

    def read(z: range) -> np.ndarray:
        buf = native_pool.get()
        target = buf[:len(z)]
        if step == 1:
            source.read_slab(z.start, z.stop, out=target)
        else:
            for i, zi in enumerate(z):
                source.read_slab(zi, zi + 1, out=target[i:i + 1])
        return buf

    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanco-read")
    convert_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scanco-convert")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanco-write")
    free_workers: "queue.Queue[_Worker]" = queue.Queue()
    for state in worker_states:
        free_workers.put(state)

    def convert(z: range, read_future):
        native_buf = read_future.result()
        native = native_buf[:len(z)]
        state = free_workers.get()
        try:
            if stop.is_set():
                raise _Stopped()
            buffers = buffer_pool.get()
            row0 = (z.start - z_selection.start) // step
            views = state.convert(native, buffers, ranges.native_range(native), ranges, row0)
        finally:
            free_workers.put(state)
        return native_buf, native, buffers, views

    def deliver(z: range, convert_future):
        native_buf, native, buffers, views = convert_future.result()
        try:
            if stop.is_set():
                raise _Stopped()
            for observe in observers:
                observe(z.start, native, views)
            for out in outputs:
                data = views[out.role]
                for sink in out.sinks:
                    sink.write(z, data)
        finally:
            buffer_pool.put(buffers)
            native_pool.put(native_buf)

    try:
        pending = []
        reads = {}
        # prime: keep the reader ahead by the number of buffers
        next_read = 0
        for i, z in enumerate(blocks):
            if _is_cancelled(cancel):
                raise ConversionCancelled(header.path)
            while next_read < len(blocks) and next_read < i + in_flight - 1:
                reads[next_read] = reader.submit(read, blocks[next_read])
                next_read += 1
            converted = convert_pool.submit(convert, z, reads.pop(i))
            pending.append((z, writer.submit(deliver, z, converted)))
            # wait for the oldest slab once enough are in flight (bounded memory, ordered progress)
            while pending and (len(pending) >= in_flight - 1 or pending[0][1].done()):
                zdone, fut = pending.pop(0)
                fut.result()
                done_slices += len(zdone)
                if progress is not None and progress(done_slices, total) is False:
                    raise ConversionCancelled(header.path)
        while pending:
            zdone, fut = pending.pop(0)
            fut.result()
            done_slices += len(zdone)
            if progress is not None and progress(done_slices, total) is False:
                raise ConversionCancelled(header.path)
    except _Stopped:
        raise failure[0] if failure else RuntimeError("engine stopped")
    except BaseException as exc:
        fail(exc)
        raise
    finally:
        stop.set()
        # wake a read or conversion waiting for a buffer a cancelled task would have returned
        for _ in range(in_flight):
            native_pool.put(np.empty((0, ny, nx), dtype=native_dtype))
            buffer_pool.put({o.role: np.empty((0, ny, nx), dtype=o.dtype) for o in outputs})
        for pool in (reader, convert_pool, writer):
            pool.shutdown(wait=True, cancel_futures=True)

    stats = {o.role: OutputStatistics() for o in outputs}
    for state in worker_states:
        for role, s in state.stats.items():
            total_stat = stats[role]
            if s.min is not None:
                total_stat.merge_range(s.min, s.max)
            total_stat.mask_voxels += s.mask_voxels
            total_stat.nonfinite_voxels += s.nonfinite_voxels
            total_stat.hu_clipped_voxels += s.hu_clipped_voxels
    native = OutputStatistics()
    for state in worker_states:
        if state.native.min is not None:
            native.merge_range(state.native.min, state.native.max)
    return EngineResult(stats, done_slices, native.min, native.max)


class _Stopped(Exception):
    """Another stage failed first; this task gave up."""
