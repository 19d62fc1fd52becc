"""Parallel gzip: ONE gzip member compressed by several threads, pigz-style.

The data is cut into chunks (:data:`GZIP_CHUNK_BYTES`); each chunk becomes raw deflate blocks closed by
a sync flush (byte-aligned, not final), so compressed chunks can simply be concatenated; one final empty
block ends the stream, and the CRC-32 of the whole data is combined from the chunks' CRCs
(:func:`crc32_combine`, or python-isal's own). The result is a single standard gzip member that gzip,
zlib, Teem (3D Slicer, ITK) and pynrrd read.

python-isal (``isal.isal_zlib``, the ``fast`` extra) is used when installed, the standard ``zlib``
otherwise; both release the GIL, so chunks compress in parallel on a thread pool. :class:`RawStream`
is the uncompressed counterpart with the same calls. Used by the NRRD and NIfTI writers; nothing here
knows about either format.
"""

from __future__ import annotations

import collections
import functools
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

try:  # optional speed-up
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _isal_zlib = None

__all__ = ["crc32_combine", "gzip_backend", "default_threads", "GZIP_CHUNK_BYTES", "GzipStream", "RawStream",
           "write_all"]

GZIP_CHUNK_BYTES = 1 << 20      # uncompressed bytes per independently compressed chunk (1 MiB)
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # deflate: final fixed-Huffman block holding only end-of-block
_MAX_THREADS = 16


# ---------------------------------------------------------------------------------------------------
# CRC-32 combination (pigz-style stitching needs the CRC of the concatenation)
# ---------------------------------------------------------------------------------------------------

_CRC32_POLY_REFLECTED = 0xEDB88320


def _gf2_apply(operator, vector: int) -> int:
    """Multiply the 32x32 GF(2) matrix *operator* (tuple of column images) by *vector*."""
    result = 0
    bit = 0
    while vector:
        if vector & 1:
            result ^= operator[bit]
        vector >>= 1
        bit += 1
    return result


def _gf2_compose(outer, inner):
    return tuple(_gf2_apply(outer, column) for column in inner)


# Advancing the (reflected) CRC register over one zero bit: shift right, xor the polynomial when the
# bit shifted out was 1. Column i is the image of register bit i.
_ONE_ZERO_BIT = (_CRC32_POLY_REFLECTED,) + tuple(1 << (i - 1) for i in range(1, 32))
_IDENTITY = tuple(1 << i for i in range(32))


@functools.lru_cache(maxsize=None)
def _one_zero_byte():
    op = _IDENTITY
    for _ in range(8):
        op = _gf2_compose(_ONE_ZERO_BIT, op)
    return op


@functools.lru_cache(maxsize=128)
def _zero_bytes_operator(count: int):
    """Operator advancing the CRC register over *count* zero bytes (binary powering, cached)."""
    result = _IDENTITY
    power = _one_zero_byte()
    while count:
        if count & 1:
            result = _gf2_compose(power, result)
        count >>= 1
        if count:
            power = _gf2_compose(power, power)
    return result


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (same result as zlib's)."""
    if length2 < 0:
        raise ValueError("length2 must not be negative")
    if length2 == 0:
        return crc1 & 0xFFFFFFFF
    return (_gf2_apply(_zero_bytes_operator(length2), crc1 & 0xFFFFFFFF) ^ crc2) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------
# gzip stream: one member, chunks deflated in parallel
# ---------------------------------------------------------------------------------------------------


def gzip_backend(compress_level: int = 1):
    """``(module, level, name)`` used for *compress_level* (0..9, zlib scale).

    With python-isal, levels 1-2 map to isal level 1, 3-5 to 2, 6-9 to 3; level 0 (stored blocks) always
    uses zlib.
    """
    level = int(compress_level)
    if not 0 <= level <= 9:
        raise ValueError(f"compress_level must be 0..9, not {compress_level!r}")
    if _isal_zlib is not None and level > 0:
        return _isal_zlib, (1 if level <= 2 else 2 if level <= 5 else 3), "isal"
    return zlib, level, "zlib"


def _deflate_chunk(module, level, data):
    """Raw deflate of *data* closed by a sync flush (byte-aligned, not final) + CRC-32 + length."""
    compressor = module.compressobj(level, module.DEFLATED, -15)
    head = compressor.compress(data)
    tail = compressor.flush(module.Z_SYNC_FLUSH)
    return head, tail, module.crc32(data), len(data)


def default_threads() -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(1, min(count, _MAX_THREADS))


class GzipStream:
    """Write one gzip member to *fileobj*, deflating chunks on a thread pool.

    Memory handed to :meth:`write` is only read until :meth:`write` returns; chunks copied into the
    internal buffer may still be compressing afterwards.
    """

    def __init__(self, fileobj, write_all, compress_level: int, threads: int,
                 chunk_bytes: int | None = None):
        self._file = fileobj
        self._write_all = write_all
        self._module, self._level, self.backend = gzip_backend(compress_level)
        self._combine = getattr(self._module, "crc32_combine", None) or crc32_combine
        self._chunk = int(chunk_bytes or GZIP_CHUNK_BYTES)
        self._threads = max(1, int(threads))
        self._in_flight = collections.deque()  # futures, in stream order
        self._pending = bytearray()
        self._crc = 0
        self._size = 0
        xfl = 4 if self._level <= 1 else 0  # "fastest algorithm" flag, informative only
        # magic, deflate, no flags, mtime 0 (reproducible output), extra flags, OS unknown
        self._write_all(self._file, b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, 255)))
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="nrrd-gzip") if self._threads > 1 else None

    @property
    def uncompressed_bytes(self) -> int:
        return self._size

    def _emit(self, result):
        head, tail, crc, length = result
        if head:
            self._write_all(self._file, head)
        self._write_all(self._file, tail)
        self._crc = self._combine(self._crc, crc, length) if self._size else crc
        self._size += length

    def _submit(self, data):
        if self._pool is None:
            self._emit(_deflate_chunk(self._module, self._level, data))
            return
        self._in_flight.append(self._pool.submit(_deflate_chunk, self._module, self._level, data))

    def _drain(self, keep: int = 0):
        while len(self._in_flight) > keep:
            self._emit(self._in_flight.popleft().result())

    def write(self, view: memoryview) -> None:
        chunk = self._chunk
        borrowed = False  # did we submit views of the caller's memory?
        if self._pending:
            take = view[: chunk - len(self._pending)]
            self._pending += take
            view = view[len(take):]
            if len(self._pending) == chunk:
                owned, self._pending = self._pending, bytearray()
                self._submit(owned)
        while len(view) >= chunk:
            self._submit(view[:chunk])
            borrowed = True
            view = view[chunk:]
            self._drain(keep=2 * self._threads)
        if len(view):
            self._pending += view
        if borrowed:
            self._drain()  # the caller may reuse its buffer once we return
        else:
            self._drain(keep=2 * self._threads)

    def encode(self, view: memoryview) -> tuple:
        """Deflate *view* now, in the calling thread, into the pieces :meth:`write_encoded` appends
        later. Touches no state of the stream: any thread, any order (the engine's workers compress
        their own slabs, so no thread waits for a pool; chunk boundaries need not line up)."""
        chunk = self._chunk
        return tuple(_deflate_chunk(self._module, self._level, view[start:start + chunk])
                     for start in range(0, len(view), chunk))

    def write_encoded(self, pieces) -> None:
        """Append pieces made by :meth:`encode`, after everything written before (in stream order)."""
        self._submit_pending()
        self._drain()
        for piece in pieces:
            self._emit(piece)

    def _submit_pending(self) -> None:
        """Compress the bytes written so far that do not fill a chunk, as a chunk of their own."""
        if self._pending:
            owned, self._pending = self._pending, bytearray()
            self._submit(owned)

    def finish(self) -> None:
        self._submit_pending()
        self._drain()
        self._write_all(self._file, _FINAL_EMPTY_BLOCK)
        self._write_all(self._file, struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        self.shutdown()

    def shutdown(self) -> None:
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RawStream:
    """The uncompressed counterpart of :class:`GzipStream`: the same ``write`` / ``finish`` /
    ``shutdown`` calls, each ``write`` going straight to *fileobj* through *write_all*."""

    def __init__(self, fileobj, write_all):
        self._file = fileobj
        self._write_all = write_all

    def write(self, view: memoryview) -> None:
        self._write_all(self._file, view)

    def finish(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def write_all(fileobj, data) -> None:
    """Write every byte of *data* (raw file objects may write less than asked)."""
    view = memoryview(data)
    while len(view):
        written = fileobj.write(view)
        if written is None:  # non-blocking raw stream: not expected for files
            raise BlockingIOError("the output could not take data")
        view = view[written:]
