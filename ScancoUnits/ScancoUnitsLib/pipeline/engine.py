"""The streaming engine: slabs of native values -> every requested quantity in one pass -> sinks.

::

    file -> VoxelSource.read_slab -> native slab -> convert every output -> observers -> sinks
            (reader thread)                        (worker threads)         (writer thread, in z order)

Raw files are written by the workers themselves at the slab's offset (``write_at``); gzip files are
compressed by the workers (``encode_slab``) and appended by the writer thread in z order
(``write_encoded``): on two cores the workers do all the heavy work and no thread waits on a pool.

One engine serves the command line (sinks: volume writers), Slicer (sinks: node arrays, full
resolution, every n-th voxel or a region) and both at once (Apply with export reads the file once).
Memory is a few slabs per output whatever the file size. A sink is anything with
``write(z, slab)``: ``z`` is the ``range`` of file slice indices the slab's slices come from, the
slab is read-only and valid only during the call (its buffer is reused).

Threads (2 cores are the design point): one reader fills native buffers ahead; workers each take a
whole slab through every output in one pass of the fused :class:`~ScancoUnitsLib.pipeline.kernels.SlabKernel`
(numba when installed, numpy otherwise; ``SCANCO_UNITS_KERNEL`` chooses) into a buffer set taken from a
pool; one writer hands the converted slabs to observers and sinks in z order. Every buffer is
allocated once, page-aligned, and reused; nothing is allocated per slab but small Python objects.
The kernel, file reads and writes release the GIL. Statistics (min/max, mask and clipped voxels, the
exact native histogram of 8/16-bit data) come from the kernel: for 8/16-bit data they are computed
once, from the histogram, at the end.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from .. import defaults
from ..errors import ConversionCancelled
from ..core.header import ScancoHeader
from ..core.quantities import QUANTITIES
from .kernels import KERNEL_ENV, KernelOutput, SlabKernel
from ..core.thresholds import ResolvedThresholds

#: about 1 Mi voxels a slab (2 MB of int16, 4 MB of float32): stays in the CPU cache
TARGET_SLAB_VOXELS = 1 << 20
#: the most bytes one slab set (the native slab and the engine's buffer of every output) may take; a
#: slice larger than that is read, converted and written in pieces of whole rows (``SlabLayout``)
SLAB_SET_MAX_BYTES = 32 << 20
_PAGE_BYTES = 4096


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
    """``native_histogram``: int64 count per native value (bin 0 = the dtype's minimum, the layout of
    :class:`~ScancoUnitsLib.pipeline.histogram.NativeHistogram`) for 8/16-bit integer data, else None."""

    statistics: Dict[str, OutputStatistics]
    slices_read: int
    native_min: Optional[float] = None
    native_max: Optional[float] = None
    native_histogram: Optional[np.ndarray] = None
    #: what the source found odd in the voxel data (``VoxelSource.warnings``): every caller reports them
    warnings: List[str] = field(default_factory=list)


def slab_slices_for(header: ScancoHeader, slab_slices: Optional[int] = None) -> int:
    if slab_slices:
        return int(slab_slices)
    x, y, z = header.dimensions
    return max(1, min(z, TARGET_SLAB_VOXELS // max(1, x * y)))


@dataclass(frozen=True)
class SlabLayout:
    """How the engine cuts a volume: ``slices`` whole slices a slab, or, when one slice is over the
    byte budget (``slices`` = 1, ``rows`` < y), pieces of ``rows`` whole rows of one slice."""

    slices: int
    rows: int
    ny: int

    @property
    def splits_slices(self) -> bool:
        return self.rows < self.ny


def slab_layout(header: ScancoHeader, bytes_per_voxel: int, slab_slices: Optional[int] = None,
                max_bytes: Optional[int] = None) -> SlabLayout:
    """Slabs of ``slab_slices`` (default about :data:`TARGET_SLAB_VOXELS` voxels), never more than
    ``max_bytes`` (default :data:`SLAB_SET_MAX_BYTES`) for ``bytes_per_voxel`` (the native value and
    every output buffer); a slice over the budget is split into pieces of rows of about
    :data:`TARGET_SLAB_VOXELS` voxels (at least one row: a row has at most 2^20 voxels)."""
    max_bytes = SLAB_SET_MAX_BYTES if max_bytes is None else int(max_bytes)
    nx, ny, nz = header.dimensions
    bytes_per_voxel = max(1, int(bytes_per_voxel))
    slice_bytes = nx * ny * bytes_per_voxel
    if slice_bytes > max_bytes:
        rows = max(1, min(ny, TARGET_SLAB_VOXELS // nx, max_bytes // (nx * bytes_per_voxel)))
        return SlabLayout(1, rows, ny)
    slices = slab_slices_for(header, slab_slices)
    return SlabLayout(max(1, min(slices, max_bytes // slice_bytes)), ny, ny)


@dataclass(frozen=True)
class _Piece:
    """What one task reads, converts and delivers: file slices ``z``, rows ``y0 <= y < y1`` of each."""

    z: range
    y0: int
    y1: int


class _SliceAssembler:
    """Whole slices, put together from row pieces, for the sinks and observers that take only whole
    slices (when the engine splits slices). Used in the writer thread only, pieces in order."""

    def __init__(self, ny: int, nx: int, native_dtype, outputs: Sequence[EngineOutput]):
        self.native = np.empty((1, ny, nx), dtype=native_dtype)
        self.views = {o.role: np.empty((1, ny, nx), dtype=o.dtype) for o in outputs}
        self.ny = ny

    def add(self, y0: int, native: np.ndarray, views: Dict[str, np.ndarray]) -> bool:
        """Copy a piece in; True when it completes its slice."""
        rows = native.shape[1]
        self.native[:, y0:y0 + rows] = native
        for role, view in views.items():
            self.views[role][:, y0:y0 + rows] = view
        return y0 + rows == self.ny


def page_aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a page boundary (whole pages are
    copied to the page cache by write(2), and O_DIRECT-style writers need it)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _PAGE_BYTES, dtype=np.uint8)
    skip = (-raw.ctypes.data) % _PAGE_BYTES
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


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
    """Takes a native slab through every output with the shared kernel; its statistics are its own
    (no locks), merged at the end."""

    def __init__(self, kernel: Optional[SlabKernel], outputs: Sequence[EngineOutput]):
        self.kernel = kernel
        self.outputs = outputs
        self.kernel_stats = kernel.new_stats() if kernel is not None else None
        self.stats = {o.role: OutputStatistics() for o in outputs}  # pass-through outputs
        self.native = OutputStatistics()
        self.exact_native = kernel is not None and kernel.uses_tables  # native range from the histogram

    def convert(self, native: np.ndarray, buffers: Dict[str, np.ndarray], row0: int = 0,
                y0: int = 0) -> Dict[str, np.ndarray]:
        """``row0``: the slab's first slice in the outputs' ``target`` arrays; ``y0``: its first row
        (``native`` is (n, rows, x): whole slices, or rows of one slice)."""
        n, rows = native.shape[0], native.shape[1]
        views = {}
        if self.kernel is not None:
            for out in self.outputs:
                if not QUANTITIES[out.quantity].pass_through:
                    views[out.role] = buffers[out.role][:n, :rows] if out.target is None \
                        else out.target[row0:row0 + n, y0:y0 + rows]
            self.kernel.run(native, views, self.kernel_stats)
        if not self.exact_native and native.dtype.kind in "iu":
            _scan_range(self.native, native)
        for out in self.outputs:
            if QUANTITIES[out.quantity].pass_through:
                data = native
                if out.target is not None:
                    data = out.target[row0:row0 + n, y0:y0 + rows]
                    np.copyto(data, native)
                views[out.role] = data
                stat = self.stats[out.role]
                if out.quantity == "float":
                    stat.nonfinite_voxels += int(np.count_nonzero(~np.isfinite(data)))
                if not self.exact_native:
                    _scan_range(stat, data)
        return views


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def run_engine(header: ScancoHeader, source, outputs: Sequence[EngineOutput], *,
               thresholds: Optional[ResolvedThresholds] = None, hu_dtype: str = defaults.HU_DTYPE,
               slab_slices: Optional[int] = None, z_selection: Optional[range] = None,
               observers: Sequence[SlabObserver] = (),
               progress: Optional[Callable[[int, int], Optional[bool]]] = None,
               cancel=None, workers: int = 2, histogram: bool = False) -> EngineResult:
    """Stream ``source`` (a :class:`~ScancoUnitsLib.formats.reader.VoxelSource` of ``header``) through every output.

    ``z_selection``: the file slices to read (default all; a step reads only the kept slices).
    ``progress(done, total)`` after each slab (returning False cancels); ``cancel`` (a callable or an
    Event) is checked before each slab. ``histogram``: True to compute the exact native histogram of
    8/16-bit data (``EngineResult.native_histogram``). The kernel (``SCANCO_UNITS_KERNEL`` overrides):
    without a histogram the numpy one (it needs no compilation and no extra resident memory; README.md's
    performance section compares the two); with a histogram numba when installed (it counts in the same
    loop, numpy needs a bincount pass).
    Cancelling raises
    :class:`ConversionCancelled`; any error
    stops every thread before it propagates. Observers are called as
    ``observer(z0, native_slab, {role: converted slab})`` in z order. An observer with
    ``observe_unordered(z0, y0, native, views)`` (rows ``y0 ...`` of slices ``z0 ...``) is called instead
    in the conversion worker that made the slab, in any order and from several threads at once (it
    accumulates what does not depend on the order, like counts).

    Memory is bounded by bytes (:func:`slab_layout`): a slice over :data:`SLAB_SET_MAX_BYTES` with every
    output's buffer is cut into pieces of whole rows. Sinks then get pieces through ``write_rows(z, y0,
    slab)`` (writers: ``write_at(z, slab, row0)`` and ``encode_slab`` where they ``accepts_rows``),
    observers through ``observe_rows(z0, y0, native, views)``; a sink or observer without them gets
    whole slices put together from the pieces (memory: one slice of each output for them).
    """
    nx, ny, nz = header.dimensions
    z_selection = range(nz) if z_selection is None else z_selection
    native_dtype = np.dtype(header.voxel_type)
    buffered = [o for o in outputs if not QUANTITIES[o.quantity].pass_through and o.target is None]
    layout = slab_layout(header, native_dtype.itemsize + sum(np.dtype(o.dtype).itemsize for o in buffered),
                         slab_slices)
    slab, piece_rows, split = layout.slices, layout.rows, layout.splits_slices
    step = z_selection.step
    if split:
        blocks = [_Piece(range(zi, zi + 1), y0, min(y0 + piece_rows, ny))
                  for zi in z_selection for y0 in range(0, ny, piece_rows)]
    else:
        blocks = [_Piece(z_selection[i:i + slab], 0, ny) for i in range(0, len(z_selection), slab)]
    total = len(z_selection)
    workers = max(1, min(int(workers), len(blocks) or 1))
    kernel_outputs = [KernelOutput(o.role, o.quantity, o.dtype) for o in outputs if not QUANTITIES[o.quantity].pass_through]
    kernel = None
    if kernel_outputs or (histogram and native_dtype.kind in "iu" and native_dtype.itemsize <= 2):
        if any(o.quantity == "mask" for o in kernel_outputs):
            thresholds.mask(np.zeros(0, dtype=native_dtype))  # the mask's own refusals (char data...)
        mask_range = thresholds if any(o.quantity == "mask" for o in kernel_outputs) else None
        backend = "auto" if histogram or os.environ.get(KERNEL_ENV, "").strip() else "numpy"
        kernel = SlabKernel(header.calibration, kernel_outputs, native_dtype=native_dtype,
                            mask_native_range=mask_range, histogram=bool(histogram), backend=backend,
                            path=header.path)
    worker_states = [_Worker(kernel, outputs) for _ in range(workers)]

    # buffers: native slabs in flight, and one set of converted slabs per slab in flight
    in_flight = workers + 2
    native_pool: "queue.Queue[np.ndarray]" = queue.Queue()
    buffer_pool: "queue.Queue[Dict[str, np.ndarray]]" = queue.Queue()
    for _ in range(in_flight):
        native_pool.put(page_aligned_empty((slab, piece_rows, nx), native_dtype))
        buffer_pool.put({o.role: page_aligned_empty((slab, piece_rows, nx), o.dtype) for o in buffered})

    stop = threading.Event()
    failure: List[BaseException] = []
    first_error = threading.Lock()

    def fail(exc: BaseException) -> None:
        with first_error:
            if not failure:
                failure.append(exc)
        stop.set()

    def read(piece: _Piece) -> np.ndarray:
        buf = native_pool.get()
        z = piece.z
        target = buf[:len(z), :piece.y1 - piece.y0]
        if split:
            source.read_rows(z.start, piece.y0, piece.y1, out=target)
        elif step == 1:
            source.read_slab(z.start, z.stop, out=target)
        else:
            for i, zi in enumerate(z):
                source.read_slab(zi, zi + 1, out=target[i:i + 1])
        return buf

    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanco-read")
    convert_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scanco-convert")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanco-write")

    def takes_pieces(sink) -> bool:
        return not split or bool(getattr(sink, "accepts_rows", False))

    # sinks that write at known offsets (raw files of a contiguous z range), each with its own lock
    positional_sinks = [(o.role, sink, threading.Lock()) for o in outputs for sink in o.sinks
                        if hasattr(sink, "write_at") and takes_pieces(sink)] if step == 1 else []
    positional_ids = {id(sink) for _, sink, _ in positional_sinks}

    def _write_positional(piece: _Piece, views) -> None:
        # A file takes one write at a time (the kernel's inode lock: the other core spun on it while
        # both workers wrote into the same file). Each worker writes first into a file nobody is
        # writing, and waits only when every file it has left is busy.
        pending = list(positional_sinks)
        while pending:
            for i, (_, _, lock) in enumerate(pending):
                if lock.acquire(blocking=False):
                    break
            else:
                i = 0
                pending[0][2].acquire()
            role, sink, lock = pending.pop(i)
            try:
                if split:
                    sink.write_at(piece.z, views[role], row0=piece.y0)
                else:
                    sink.write_at(piece.z, views[role])
            finally:
                lock.release()

    # sinks that compress (gzip): each worker compresses its own slab, the writer appends in z order
    encoding = [(o, sink) for o in outputs for sink in o.sinks
                if hasattr(sink, "encode_slab") and takes_pieces(sink)]
    encoding_ids = {id(sink) for _, sink in encoding}
    # with split slices: who takes row pieces, and who gets whole slices put together from them
    whole_slice_sinks = [(o.role, sink) for o in outputs for sink in o.sinks
                         if split and id(sink) not in positional_ids and id(sink) not in encoding_ids
                         and not hasattr(sink, "write_rows")]
    whole_slice_ids = {id(sink) for _, sink in whole_slice_sinks}
    unordered_observers = [obs for obs in observers if hasattr(obs, "observe_unordered")]
    observers = [obs for obs in observers if not hasattr(obs, "observe_unordered")]
    whole_slice_observers = [obs for obs in observers if split and not hasattr(obs, "observe_rows")]
    assembler = None
    if whole_slice_sinks or whole_slice_observers:
        roles = {role for role, _ in whole_slice_sinks}
        assembler = _SliceAssembler(ny, nx, native_dtype,
                                    outputs if whole_slice_observers else [o for o in outputs if o.role in roles])
    free_workers: "queue.Queue[_Worker]" = queue.Queue()
    for state in worker_states:
        free_workers.put(state)

    def convert(piece: _Piece, read_future):
        native_buf = read_future.result()
        z = piece.z
        native = native_buf[:len(z), :piece.y1 - piece.y0]
        state = free_workers.get()
        try:
            if stop.is_set():
                raise _Stopped()
            buffers = buffer_pool.get()
            row0 = (z.start - z_selection.start) // step
            views = state.convert(native, buffers, row0, piece.y0)
        finally:
            free_workers.put(state)
        for observe in unordered_observers:
            observe.observe_unordered(z.start, piece.y0, native, views)
        # sinks that write at known offsets take the slab here, in this worker, so the copies into the
        # page cache run in every worker instead of one writer thread; the rest go in z order below
        if positional_sinks:
            _write_positional(piece, views)
        encoded = {id(sink): sink.encode_slab(views[out.role]) for out, sink in encoding}
        return native_buf, native, buffers, views, encoded

    def deliver(piece: _Piece, convert_future):
        native_buf, native, buffers, views, encoded = convert_future.result()
        z = piece.z
        try:
            if stop.is_set():
                raise _Stopped()
            for observe in observers:
                if not split:
                    observe(z.start, native, views)
                elif hasattr(observe, "observe_rows"):
                    observe.observe_rows(z.start, piece.y0, native, views)
            for out in outputs:
                data = views[out.role]
                for sink in out.sinks:
                    if id(sink) in encoded:
                        sink.write_encoded(encoded[id(sink)])
                    elif id(sink) in positional_ids or id(sink) in whole_slice_ids:
                        continue
                    elif split:
                        sink.write_rows(z, piece.y0, data)
                    else:
                        sink.write(z, data)
            if assembler is not None and assembler.add(piece.y0, native, {r: views[r] for r in assembler.views}):
                for observe in whole_slice_observers:
                    observe(z.start, assembler.native, assembler.views)
                for role, sink in whole_slice_sinks:
                    sink.write(z, assembler.views[role])
        finally:
            buffer_pool.put(buffers)
            native_pool.put(native_buf)

    done_slices = [0]   # a list: retire_oldest moves it on

    def retire_oldest(pending) -> None:
        """Wait for the oldest piece in flight; a piece that ends its slices moves the progress on."""
        done_piece, fut = pending.pop(0)
        fut.result()
        if done_piece.y1 == ny:
            done_slices[0] += len(done_piece.z)
            if progress is not None and progress(done_slices[0], total) is False:
                raise ConversionCancelled(header.path)

    try:
        pending = []
        reads = {}
        # prime: keep the reader ahead by the number of buffers
        next_read = 0
        for i, piece in enumerate(blocks):
            if _is_cancelled(cancel):
                raise ConversionCancelled(header.path)
            while next_read < len(blocks) and next_read < i + in_flight - 1:
                reads[next_read] = reader.submit(read, blocks[next_read])
                next_read += 1
            converted = convert_pool.submit(convert, piece, reads.pop(i))
            pending.append((piece, writer.submit(deliver, piece, converted)))
            # wait for the oldest slab once enough are in flight (bounded memory, ordered progress)
            while pending and (len(pending) >= in_flight - 1 or pending[0][1].done()):
                retire_oldest(pending)
        while pending:
            retire_oldest(pending)
    except _Stopped:
        raise failure[0] if failure else RuntimeError("engine stopped")
    except BaseException as exc:
        fail(exc)
        raise
    finally:
        stop.set()
        # wake a read or conversion waiting for a buffer a cancelled task would have returned
        for _ in range(in_flight):
            native_pool.put(np.empty((0, piece_rows, nx), dtype=native_dtype))
            buffer_pool.put({o.role: np.empty((0, piece_rows, nx), dtype=o.dtype) for o in outputs})
        for pool in (reader, convert_pool, writer):
            pool.shutdown(wait=True, cancel_futures=True)

    result = _result(worker_states, outputs, done_slices[0])
    result.warnings = list(getattr(source, "warnings", ()) or ())
    return result


def _result(worker_states: Sequence[_Worker], outputs: Sequence[EngineOutput], done_slices: int) -> EngineResult:
    """The workers' statistics together."""
    kernel_stats = None
    for state in worker_states:
        if state.kernel_stats is not None:
            kernel_stats = state.kernel_stats if kernel_stats is None else kernel_stats.merge(state.kernel_stats)
    native = OutputStatistics()
    exact_native = worker_states[0].exact_native if worker_states else False
    if exact_native:
        if kernel_stats.native_min is not None:
            native.merge_range(kernel_stats.native_min, kernel_stats.native_max)
    else:
        for state in worker_states:
            if state.native.min is not None:
                native.merge_range(state.native.min, state.native.max)
    stats = {o.role: OutputStatistics() for o in outputs}
    for out in outputs:
        total = stats[out.role]
        if QUANTITIES[out.quantity].pass_through:
            for state in worker_states:
                s = state.stats[out.role]
                if s.min is not None:
                    total.merge_range(s.min, s.max)
                total.nonfinite_voxels += s.nonfinite_voxels
            if exact_native and native.min is not None:
                total.merge_range(native.min, native.max)
            continue
        if kernel_stats.min[out.role] is not None:
            total.merge_range(kernel_stats.min[out.role], kernel_stats.max[out.role])
        total.mask_voxels = kernel_stats.mask_voxels_of[out.role]
        total.nonfinite_voxels = kernel_stats.nonfinite_voxels[out.role]
        total.hu_clipped_voxels = kernel_stats.hu_clipped_voxels_of[out.role]
    histogram = kernel_stats.native_histogram if kernel_stats is not None else None
    return EngineResult(stats, done_slices, native.min, native.max, histogram)


class _Stopped(Exception):
    """Another stage failed first; this task gave up."""
