"""Compressed AIM voxel payloads: D1TbinCmp, D1TcharCmp and D3Tbit8 (scanco-format.md §2.5, §2.6).

Decoding is incremental: a :class:`CompressedVoxelDecoder` hands out whole z-slices, slab by slab, and
reads only as much of the compressed block as those slices need. Memory stays proportional to the
slab, never to the numbers in the header. Encoders produce the byte blocks our AIM writer stores.

Payload layouts (all little-endian; ``H`` = 4 bytes in AIM v020, 8 in v030):

* **D1TbinCmp** (0x00150001): ``[length (H bytes, counts itself)][value1][value2][run bytes...]``.
  Start with value1. A run byte ``L`` = 255 gives 254 voxels and keeps the value; any other ``L``
  gives ``L`` voxels and then switches to the other value (``L`` = 0 switches without output).
* **D1TcharCmp** (0x00080002): ``[length (H bytes)]`` then pairs ``(value int8, count uint8)``.
* **D3Tbit8** (0x00060001): no header; one byte per 2x2x2 cell, ``cx*cy*cz`` bytes (``c = ceil(dim/2)``)
  then one value byte. Voxel (x, y, z) is bit ``(z%2)*4 + (y%2)*2 + (x%2)`` of byte
  ``x//2 + cx*(y//2 + cy*(z//2))``. A set bit gives the value byte (127 when that byte is 0).

AIM ``off`` border: binCmp and charCmp payloads hold only the interior ``dim - 2*off``; the decoder
pastes it at ``off`` into zero-filled full-size slices. bit8 payloads always cover the full ``dim``.

Decoded voxels are int8, values as stored (a uint8 value byte 200 comes back as -56).
"""

from __future__ import annotations

import io
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import InputReadError, ScancoFormatError

__all__ = [
    "D1T_BIN_CMP",
    "D1T_CHAR_CMP",
    "D3T_BIT8",
    "COMPRESSED_TYPE_CODES",
    "CompressedVoxelDecoder",
    "decode_all",
    "encode_bin_cmp",
    "encode_char_cmp",
    "encode_bit8",
    "BinCmpStreamEncoder",
    "normalise_kind",
]

D1T_BIN_CMP = 0x00150001
D1T_CHAR_CMP = 0x00080002
D3T_BIT8 = 0x00060001

#: AIM data-type code -> kind name used by this module.
COMPRESSED_TYPE_CODES = {D1T_BIN_CMP: "binCmp", D1T_CHAR_CMP: "charCmp", D3T_BIT8: "bit8"}

_KIND_ALIASES = {
    "bincmp": "binCmp",
    "d1tbincmp": "binCmp",
    "charcmp": "charCmp",
    "d1tcharcmp": "charCmp",
    "bit8": "bit8",
    "d3tbit8": "bit8",
}

_BIN_KEEP_BYTE = 255  # run byte meaning "254 voxels, keep the value"
_BIN_KEEP_RUN = 254  # voxels produced by that byte; also the longest run a switching byte can hold
_CHAR_MAX_RUN = 255
_BIT8_EMPTY_VALUE = 127  # value used when the bit8 value byte is 0

_MIN_CHUNK_BYTES = 64
_MAX_CHUNK_BYTES = 1 << 20  # compressed bytes decoded per numpy pass (bounds the temporaries)
_PIECE_VOXELS = 1 << 22  # voxels decoded per numpy pass
_SKIP_VOXELS = 1 << 26  # voxels per produce() call when skipping forward
_ENCODE_CHUNK_VOXELS = 1 << 24
_INT32_MAX = 2**31 - 1


def normalise_kind(kind) -> str:
    """``"binCmp"``, ``"charCmp"`` or ``"bit8"`` for a kind name (any case, with or without the
    ``D1T``/``D3T`` prefix) or an AIM data-type code; ValueError otherwise."""
    if isinstance(kind, (int, np.integer)) and not isinstance(kind, bool):
        name = COMPRESSED_TYPE_CODES.get(int(kind))
        if name is None:
            raise ValueError(f"AIM data type 0x{int(kind):08x} is not a compressed type")
        return name
    if isinstance(kind, str):
        name = _KIND_ALIASES.get(kind.strip().lower())
        if name is not None:
            return name
    raise ValueError(f"unknown compression kind {kind!r} (expected binCmp, charCmp or bit8)")


def _check_length_field_bytes(length_field_bytes) -> int:
    if length_field_bytes not in (4, 8):
        raise ValueError(f"length_field_bytes must be 4 (AIM v020) or 8 (AIM v030), not {length_field_bytes!r}")
    return int(length_field_bytes)


def _triple(values, name: str) -> Tuple[int, int, int]:
    try:
        items = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three integers, got {values!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must be three integers, got {values!r}")
    return items  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Byte access
# ---------------------------------------------------------------------------------------------------


class _BlockBytes:
    """Random access to the bytes of one data block in a file object or a bytes-like object."""

    def __init__(self, source, data_offset: int, path):
        self.path = path
        self._file = None
        self._buffer = None
        try:  # buffer protocol first: an mmap also has read/seek, but slicing it is cheaper
            self._buffer = np.frombuffer(source, dtype=np.uint8)
        except (TypeError, ValueError, BufferError, AttributeError):
            if not (hasattr(source, "read") and hasattr(source, "seek")):
                raise ValueError(
                    f"source must be a binary file object or a bytes-like object, not {type(source).__name__}"
                ) from None
            self._file = source
            total = self._file_size(source)
        else:
            total = self._buffer.size
        if data_offset < 0:
            raise ScancoFormatError(path, f"data block offset {data_offset} is negative")
        self.start = int(data_offset)
        #: bytes of the block that physically exist (the file may be truncated)
        self.available = max(0, total - self.start)

    @staticmethod
    def _file_size(fileobj) -> int:
        try:
            return os.fstat(fileobj.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            here = fileobj.tell()
            try:
                fileobj.seek(0, io.SEEK_END)
                return fileobj.tell()
            finally:
                fileobj.seek(here)

    def read(self, rel_offset: int, count: int) -> np.ndarray:
        """Up to ``count`` bytes at ``rel_offset`` from the block start (shorter at the end of the data)."""
        count = max(0, min(count, self.available - rel_offset))
        if count == 0:
            return np.zeros(0, dtype=np.uint8)
        if self._buffer is not None:
            begin = self.start + rel_offset
            return self._buffer[begin : begin + count]
        try:
            self._file.seek(self.start + rel_offset)
            data = self._file.read(count)
        except OSError as exc:  # EIO of a failing disk: one line naming the file
            raise InputReadError(self.path, exc) from None
        return np.frombuffer(data, dtype=np.uint8)

    def release(self):
        self._buffer = None
        self._file = None


# ---------------------------------------------------------------------------------------------------
# Run-length streams (binCmp, charCmp): sequential voxel producers
# ---------------------------------------------------------------------------------------------------


class _RunStream:
    """Sequential reader of a run-length payload that starts with an H-byte length field."""

    extra_header_bytes = 0  # bytes after the length field that belong to the header
    unit_bytes = 1  # bytes per run record
    max_run = _BIN_KEEP_RUN  # most voxels one run record can produce
    name = ""

    def __init__(self, block: _BlockBytes, data_size, length_field_bytes: int, voxel_count: int, warnings: List[str]):
        self.block = block
        self.path = block.path
        self.voxel_count = voxel_count
        self.warnings = warnings
        header_bytes = length_field_bytes + self.extra_header_bytes
        block_size = block.available if data_size is None else int(data_size)
        if block_size < header_bytes:
            raise ScancoFormatError(
                self.path,
                f"{self.name} data block is {block_size} bytes, too short for its {header_bytes}-byte header",
            )
        if block.available < header_bytes:
            raise ScancoFormatError(
                self.path,
                f"file ends {block.available} bytes into the {self.name} data block "
                f"(its header alone needs {header_bytes})",
            )
        head = block.read(0, header_bytes)
        length = int.from_bytes(head[:length_field_bytes].tobytes(), "little")
        if length < header_bytes:
            raise ScancoFormatError(
                self.path, f"{self.name} length field says {length} bytes, less than its own {header_bytes}-byte header"
            )
        if data_size is not None and length > block_size:
            raise ScancoFormatError(
                self.path,
                f"{self.name} length field says {length} bytes but the pre-header gives the data block "
                f"as {block_size} bytes",
            )
        if length > block.available:
            raise ScancoFormatError(
                self.path,
                f"{self.name} length field says {length} bytes but the file ends after {block.available} "
                "bytes of the data block (truncated file?)",
            )
        if length < block_size:
            self.warnings.append(
                f"{self.name} length field says {length} bytes, the data block is {block_size} bytes; "
                f"the last {block_size - length} bytes are ignored"
            )
        self.header = head[length_field_bytes:].copy()  # no view of the caller's buffer
        self.payload_start = header_bytes
        self.stream_end = length
        capacity = (length - header_bytes) // self.unit_bytes * self.max_run
        if voxel_count > capacity:
            raise ScancoFormatError(
                self.path,
                f"{self.name} data of {length - header_bytes} bytes can hold at most {capacity} voxels, "
                f"but the image needs {voxel_count}",
            )
        self.reset()

    # -- state --------------------------------------------------------------------------------------
    def reset(self):
        self._file_pos = self.payload_start  # next unread byte of the block
        self._buf = np.zeros(0, dtype=np.uint8)
        self._buf_pos = 0
        self.emitted = 0  # voxels produced (or skipped) so far
        self._pending = 0  # voxels left of a run that straddles a slab boundary
        self._reset_runs()

    def _reset_runs(self):
        raise NotImplementedError

    def bytes_left(self) -> int:
        return (self._buf.size - self._buf_pos) + (self.stream_end - self._file_pos)

    def _consumed_bytes(self) -> int:
        return self._file_pos - (self._buf.size - self._buf_pos) - self.payload_start

    # -- byte chunks --------------------------------------------------------------------------------
    def _hint(self, voxels_needed: int) -> int:
        if self.emitted > 0:
            per_voxel = max(self._consumed_bytes(), 1) / self.emitted
        else:
            per_voxel = 1.0 / 16.0
        estimate = int(voxels_needed * per_voxel * 1.25) + _MIN_CHUNK_BYTES
        estimate = min(max(estimate, _MIN_CHUNK_BYTES), _MAX_CHUNK_BYTES)
        return estimate - estimate % self.unit_bytes

    def _next_chunk(self, want: int) -> np.ndarray:
        """At least ``want`` bytes (fewer only at the end of the stream); the chunk ends at the buffer
        position so :meth:`_unread` can give back its tail."""
        left = self._buf.size - self._buf_pos
        if left >= want:
            self._buf_pos += want
            return self._buf[self._buf_pos - want : self._buf_pos]
        fresh = self.block.read(self._file_pos, min(want - left, self.stream_end - self._file_pos))
        self._file_pos += fresh.size
        if left:
            chunk = np.concatenate((self._buf[self._buf_pos :], fresh))
        else:
            chunk = fresh
        self._buf = chunk
        self._buf_pos = chunk.size
        return chunk

    def _unread(self, count: int):
        self._buf_pos -= count

    def _under_run(self, produced: int):
        raise ScancoFormatError(
            self.path, f"{self.name} compressed data ends after {produced} of {self.voxel_count} voxels"
        )

    # -- voxels -------------------------------------------------------------------------------------
    def produce(self, count: int, out: Optional[np.ndarray]):
        """Write the next ``count`` voxels into the 1-D int8 array ``out`` (or skip them if None)."""
        if count < 0 or self.emitted + count > self.voxel_count:
            raise ValueError("internal error: voxel request beyond the image")
        filled = 0
        while filled < count:
            # at most _PIECE_VOXELS per pass keeps the temporaries of np.repeat small
            piece = min(count - filled, _PIECE_VOXELS)
            produced = self._produce_pending(piece, None if out is None else out[filled:])
            if not produced:
                produced = self._produce_from_chunk(piece, out, filled)
            filled += produced
            self.emitted += produced

    def skip(self, count: int):
        while count > 0:
            step = min(count, _SKIP_VOXELS)
            self.produce(step, None)
            count -= step

    def _produce_pending(self, count, out) -> int:
        raise NotImplementedError

    def _produce_from_chunk(self, need, out, filled) -> int:
        raise NotImplementedError

    def finish_check(self):
        """Record warnings about data left over once every voxel has been produced."""
        if self._pending:
            self.warnings.append(
                f"{self.name} last run reaches {self._pending} voxels beyond the end of the image (ignored)"
            )
        left = self.bytes_left()
        if left:
            self.warnings.append(
                f"{self.name} stream has {left} bytes after the last of the image's {self.voxel_count} voxels "
                "(ignored: the header's dimensions may be wrong)")


def _split_at_need(counts: np.ndarray, need: int):
    """Runs of ``counts`` consumed to produce ``need`` voxels: (used runs, voxels produced,
    voxels of the last used run left over)."""
    csum = np.cumsum(counts)
    total = int(csum[-1]) if csum.size else 0
    if total < need:
        return counts.size, total, 0
    index = int(np.searchsorted(csum, need, side="left"))
    return index + 1, need, int(csum[index]) - need


class _BinCmpStream(_RunStream):
    extra_header_bytes = 2
    unit_bytes = 1
    max_run = _BIN_KEEP_RUN
    name = "binCmp"

    def _reset_runs(self):
        self.values = np.array(self.header[:2], dtype=np.uint8).view(np.int8)
        self._value_index = 0
        self._switch_after_pending = False

    def _produce_pending(self, count, out) -> int:
        if not self._pending:
            return 0
        k = min(self._pending, count)
        if out is not None:
            out[:k] = self.values[self._value_index]
        self._pending -= k
        if self._pending == 0 and self._switch_after_pending:
            self._value_index ^= 1
        return k

    def _produce_from_chunk(self, need, out, filled) -> int:
        chunk = self._next_chunk(self._hint(need))
        if chunk.size == 0:
            self._under_run(self.emitted)
        keep = chunk == _BIN_KEEP_BYTE
        counts = chunk.astype(np.int64)
        counts[keep] = _BIN_KEEP_RUN
        used, produced, leftover = _split_at_need(counts, need)
        switch = ~keep[:used]
        switches_before = np.cumsum(switch, dtype=np.int64)
        switches_before -= switch
        value_index = (switches_before + self._value_index) & 1
        if out is not None and produced:
            run_counts = counts[:used]
            run_counts[-1] -= leftover
            out[filled : filled + produced] = np.repeat(self.values[value_index], run_counts)
        if used:
            last_index = int(value_index[-1])
            last_switches = bool(switch[-1])
            if leftover:
                self._value_index = last_index
                self._pending = leftover
                self._switch_after_pending = last_switches
            else:
                self._value_index = last_index ^ int(last_switches)
        self._unread(chunk.size - used)
        return produced


class _CharCmpStream(_RunStream):
    extra_header_bytes = 0
    unit_bytes = 2
    max_run = _CHAR_MAX_RUN
    name = "charCmp"

    def _reset_runs(self):
        self._pending_value = 0

    def _produce_pending(self, count, out) -> int:
        if not self._pending:
            return 0
        k = min(self._pending, count)
        if out is not None:
            out[:k] = self._pending_value
        self._pending -= k
        return k

    def _produce_from_chunk(self, need, out, filled) -> int:
        chunk = self._next_chunk(self._hint(need))
        pairs = chunk.size // 2
        if pairs == 0:
            self._under_run(self.emitted)
        records = chunk[: 2 * pairs]
        values = records[0::2].view(np.int8)
        counts = records[1::2].astype(np.int64)
        used, produced, leftover = _split_at_need(counts, need)
        if out is not None and produced:
            run_counts = counts[:used]
            run_counts[-1] -= leftover
            out[filled : filled + produced] = np.repeat(values[:used], run_counts)
        if leftover:
            self._pending = leftover
            self._pending_value = values[used - 1]
        self._unread(chunk.size - 2 * used)
        return produced


# ---------------------------------------------------------------------------------------------------
# bit8: random access by planes of 2x2x2 cells
# ---------------------------------------------------------------------------------------------------


class _Bit8Planes:
    def __init__(self, block: _BlockBytes, data_size, dims_xyz, warnings: List[str]):
        self.block = block
        self.path = block.path
        dx, dy, dz = dims_xyz
        self.dims_xyz = dims_xyz
        self.cells_xyz = ((dx + 1) // 2, (dy + 1) // 2, (dz + 1) // 2)
        cx, cy, cz = self.cells_xyz
        self.plane_bytes = cx * cy
        needed = cx * cy * cz + 1
        block_size = block.available if data_size is None else int(data_size)
        if block_size < needed:
            raise ScancoFormatError(
                self.path,
                f"bit8 data block is {block_size} bytes but dimensions {dx}x{dy}x{dz} need {needed}",
            )
        if block.available < needed:
            raise ScancoFormatError(
                self.path,
                f"bit8 data needs {needed} bytes but the file ends after {block.available} bytes of the data block "
                "(truncated file?)",
            )
        if block_size > needed:
            warnings.append(f"bit8 data block is {block_size} bytes, {block_size - needed} more than needed (ignored)")
        stored = int(block.read(needed - 1, 1)[0])
        self.value_byte = stored
        value = stored if stored else _BIT8_EMPTY_VALUE
        if not stored:
            warnings.append(
                f"bit8 value byte is 0; set voxels get {_BIT8_EMPTY_VALUE} (as ITK does; AimIO would return all zeros)"
            )
        self.value = np.array([value], dtype=np.uint8).view(np.int8)[0]

    def read(self, z0: int, z1: int, out: np.ndarray):
        dx, dy, _ = self.dims_xyz
        cx, cy, _ = self.cells_xyz
        plane0 = z0 // 2
        plane1 = (z1 + 1) // 2  # exclusive
        raw = self.block.read(plane0 * self.plane_bytes, (plane1 - plane0) * self.plane_bytes)
        planes = raw.reshape(plane1 - plane0, cy, cx)
        bits = np.unpackbits(planes[..., np.newaxis], axis=-1, bitorder="little")
        bits = bits.reshape(plane1 - plane0, cy, cx, 2, 2, 2)  # bit index = zbit*4 + ybit*2 + xbit
        voxels = bits.transpose(0, 3, 1, 4, 2, 5).reshape(2 * (plane1 - plane0), 2 * cy, 2 * cx)
        first = z0 - 2 * plane0
        np.multiply(voxels[first : first + (z1 - z0), :dy, :dx].view(np.int8), self.value, out=out)


    def read_rows(self, z: int, y0: int, y1: int, out: np.ndarray):
        """Rows y0..y1-1 of slice z: only the cell rows that hold them are read and unpacked."""
        dx = self.dims_xyz[0]
        cx = self.cells_xyz[0]
        c0, c1 = y0 // 2, (y1 + 1) // 2
        raw = self.block.read((z // 2) * self.plane_bytes + c0 * cx, (c1 - c0) * cx)
        bits = np.unpackbits(raw.reshape(c1 - c0, cx)[..., np.newaxis], axis=-1, bitorder="little")
        bits = bits.reshape(c1 - c0, cx, 2, 2, 2)  # bit index = zbit*4 + ybit*2 + xbit
        voxels = bits[:, :, z % 2].transpose(0, 2, 1, 3).reshape(2 * (c1 - c0), 2 * cx)
        first = y0 - 2 * c0
        np.multiply(voxels[first : first + (y1 - y0), :dx].view(np.int8), self.value, out=out[0])


# ---------------------------------------------------------------------------------------------------
# Public decoder
# ---------------------------------------------------------------------------------------------------



def _int8_target(shape, out: Optional[np.ndarray]) -> np.ndarray:
    """``out`` checked to take ``shape`` int8 voxels, or a new array."""
    if out is None:
        return np.empty(shape, dtype=np.int8)
    if out.shape != shape or out.dtype != np.int8:
        raise ValueError(f"out must be int8 with shape {shape}, got {out.dtype} {out.shape}")
    return out

class CompressedVoxelDecoder:
    """Slab-wise decoder of one compressed AIM data block.

    Parameters
    ----------
    source:
        binary file object (seekable), bytes-like object (bytes, bytearray, memoryview, mmap), or a
        path (opened here and closed by :meth:`close` / the context manager).
    data_offset:
        byte offset of the data block in ``source``.
    data_size:
        block size from the AIM pre-header, or None for "up to the end of the source".
    dims_xyz, off_xyz:
        image dimensions (including the border) and AIM ``off`` border width, voxels.
    kind:
        ``"binCmp"``, ``"charCmp"``, ``"bit8"`` or the AIM type code.
    length_field_bytes:
        4 for AIM v020, 8 for v030 (not used by bit8).
    path:
        file name used in error messages.

    Slices come out in file order (z ascending) as int8 arrays shaped (n, y, x). Problems with the
    data raise :class:`ScancoFormatError`; tolerable oddities (padding after the stream, a length
    field shorter than the block...) are appended to :attr:`warnings` as one-line strings.

    Attributes: ``kind``, ``dims_xyz``, ``off_xyz``, ``interior_xyz`` (voxels the payload covers),
    ``shape_zyx``, ``next_slice``, ``values`` ((value1, value2) for binCmp, (0, value) for bit8,
    None for charCmp), ``warnings``.
    """

    def __init__(
        self,
        source,
        data_offset: int,
        data_size: Optional[int],
        dims_xyz: Sequence[int],
        kind,
        length_field_bytes: int = 4,
        off_xyz: Sequence[int] = (0, 0, 0),
        path=None,
    ):
        self.kind = normalise_kind(kind)
        self.dims_xyz = _triple(dims_xyz, "dims_xyz")
        self.off_xyz = _triple(off_xyz, "off_xyz")
        self._owned_file = None
        if isinstance(source, (str, os.PathLike)):
            if path is None:
                path = source
            try:
                self._owned_file = open(source, "rb")
            except OSError as exc:
                raise ScancoFormatError(path, f"cannot open: {exc.strerror or exc}") from None
            source = self._owned_file
        self.path = path
        self.warnings: List[str] = []
        dx, dy, dz = self.dims_xyz
        if min(self.dims_xyz) < 1:
            raise ScancoFormatError(path, f"image dimensions {dx}x{dy}x{dz} are not all positive")
        if data_size is not None and data_size < 0:
            raise ScancoFormatError(path, f"data block size {data_size} is negative")
        try:
            block = _BlockBytes(source, int(data_offset), path)
            self._next_z = 0
            if self.kind == "bit8":
                self._bit8: Optional[_Bit8Planes] = _Bit8Planes(block, data_size, self.dims_xyz, self.warnings)
                self._runs: Optional[_RunStream] = None
                self.interior_xyz = self.dims_xyz
                self.values = (0, int(self._bit8.value))
            else:
                ox, oy, oz = self.off_xyz
                if min(self.off_xyz) < 0:
                    raise ScancoFormatError(path, f"AIM off border ({ox}, {oy}, {oz}) is negative")
                interior = (dx - 2 * ox, dy - 2 * oy, dz - 2 * oz)
                if min(interior) < 1:
                    raise ScancoFormatError(
                        path, f"AIM off border ({ox}, {oy}, {oz}) leaves no interior in dimensions {dx}x{dy}x{dz}"
                    )
                self.interior_xyz = interior
                count = interior[0] * interior[1] * interior[2]
                lfb = _check_length_field_bytes(length_field_bytes)
                stream_class = _BinCmpStream if self.kind == "binCmp" else _CharCmpStream
                self._runs = stream_class(block, data_size, lfb, count, self.warnings)
                self._bit8 = None
                self._finished = False
                if self.kind == "binCmp":
                    self.values = tuple(int(v) for v in self._runs.values)
                else:
                    self.values = None
        except BaseException:
            self.close()
            raise

    # -- housekeeping ------------------------------------------------------------------------------
    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        dx, dy, dz = self.dims_xyz
        return (dz, dy, dx)

    @property
    def next_slice(self) -> int:
        """Index of the slice :meth:`read_slices` returns next."""
        return self._next_z

    def close(self):
        if self._owned_file is not None:
            self._owned_file.close()
            self._owned_file = None
        # drop every view of a caller's buffer so that, e.g., an mmap can be closed afterwards
        runs = getattr(self, "_runs", None)
        if runs is not None:
            runs.block.release()
            runs._buf = np.zeros(0, dtype=np.uint8)
        bit8 = getattr(self, "_bit8", None)
        if bit8 is not None:
            bit8.block.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- reading -----------------------------------------------------------------------------------
    def read_slices(self, n_slices: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The next ``n_slices`` slices, shape (n, y, x) int8. Raises ValueError past the last slice."""
        n_slices = int(n_slices)
        if n_slices < 0 or self._next_z + n_slices > self.dims_xyz[2]:
            raise ValueError(
                f"cannot read {n_slices} slices from slice {self._next_z}: the image has {self.dims_xyz[2]}"
            )
        return self.read_slab(self._next_z, self._next_z + n_slices, out=out)

    def read_slab(self, z0: int, z1: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Slices ``z0 <= z < z1`` as (z1-z0, y, x) int8.

        Sequential calls are cheapest. For run-length kinds, a jump forward decodes and discards the
        slices in between, a jump backward starts again at the beginning of the stream.
        """
        dx, dy, dz = self.dims_xyz
        z0, z1 = int(z0), int(z1)
        if not 0 <= z0 <= z1 <= dz:
            raise ValueError(f"slab {z0}:{z1} is outside the image's {dz} slices")
        shape = (z1 - z0, dy, dx)
        out = _int8_target(shape, out)
        if z1 > z0:
            if self._bit8 is not None:
                self._bit8.read(z0, z1, out)
            else:
                self._read_runs(z0, z1, out)
        self._next_z = z1
        return out

    def iter_slabs(self, slices: int = 16) -> Iterator[np.ndarray]:
        """Slabs of ``slices`` slices (the last one may be shorter) from the current position on."""
        if slices < 1:
            raise ValueError("slices must be at least 1")
        while self._next_z < self.dims_xyz[2]:
            yield self.read_slices(min(slices, self.dims_xyz[2] - self._next_z))

    def read_all(self) -> np.ndarray:
        """The whole volume (z, y, x) int8."""
        return self.read_slab(0, self.dims_xyz[2])

    def read_rows(self, z: int, y0: int, y1: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``y0 <= y < y1`` of slice ``z`` as (1, y1-y0, x) int8: a piece of a slice too large to
        hold whole. Pieces read in file order (z, then y ascending) cost no more than whole slabs."""
        dx, dy, dz = self.dims_xyz
        z, y0, y1 = int(z), int(y0), int(y1)
        if not (0 <= z < dz and 0 <= y0 <= y1 <= dy):
            raise ValueError(f"rows {y0}:{y1} of slice {z} are outside the image's {dx}x{dy}x{dz} voxels")
        shape = (1, y1 - y0, dx)
        out = _int8_target(shape, out)
        if y1 > y0:
            if self._bit8 is not None:
                self._bit8.read_rows(z, y0, y1, out)
            else:
                self._read_runs(z, z + 1, out, y0, y1)
        self._next_z = z + 1 if y1 == dy else z
        return out

    def _read_runs(self, z0: int, z1: int, out: np.ndarray, y0: int = 0, y1: Optional[int] = None):
        """Slices z0..z1-1, rows y0..y1-1 into ``out``: whole slices, or rows of a single slice (either
        way one contiguous run of the interior stream)."""
        runs = self._runs
        dx, dy, dz = self.dims_xyz
        y1 = dy if y1 is None else y1
        ox, oy, oz = self.off_xyz
        ix, iy, iz = self.interior_xyz
        slice_voxels = ix * iy
        first = max(z0, oz) - oz  # interior slice range of this slab
        stop = min(z1, oz + iz) - oz
        row0 = max(y0, oy) - oy  # interior row range
        row1 = min(y1, oy + iy) - oy
        bordered = ox or oy or oz
        if bordered:
            out[...] = 0
        if stop > first and row1 > row0:
            if (row0, row1) != (0, iy) and stop - first != 1:
                raise ValueError("rows of several slices are not one run of the stream: read whole slices")
            start = first * slice_voxels + row0 * ix  # voxels of the stream before this piece
            if start < runs.emitted:
                runs.reset()  # warnings about the end of the stream were recorded the first time
            if start > runs.emitted:
                runs.skip(start - runs.emitted)
            count = (stop - first) * (row1 - row0) * ix
            target = out[first + oz - z0 : stop + oz - z0, row0 + oy - y0 : row1 + oy - y0]
            if not bordered and target.flags.c_contiguous:
                runs.produce(count, target.reshape(-1))
            else:
                decoded = np.empty(count, dtype=np.int8)
                runs.produce(count, decoded)
                target[:, :, ox : ox + ix] = decoded.reshape(stop - first, row1 - row0, ix)
            if runs.emitted == iz * slice_voxels and not self._finished:
                self._finished = True
                runs.finish_check()


def decode_all(
    buffer,
    dims_xyz: Sequence[int],
    kind,
    length_field_bytes: int = 4,
    off_xyz: Sequence[int] = (0, 0, 0),
    path=None,
) -> np.ndarray:
    """Decode a whole compressed block held in memory (exactly the data block) to (z, y, x) int8."""
    size = np.frombuffer(buffer, dtype=np.uint8).size
    with CompressedVoxelDecoder(buffer, 0, size, dims_xyz, kind, length_field_bytes, off_xyz, path) as decoder:
        return decoder.read_all()


# ---------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------


def _byte_volume(volume, what: str) -> np.ndarray:
    """C-ordered int8 view of an int8 / uint8 / bool volume (uint8 reinterpreted as two's complement)."""
    array = np.asarray(volume)
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    if array.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise ValueError(f"{what} needs an int8, uint8 or bool volume, got {array.dtype}")
    if array.ndim != 3:
        raise ValueError(f"{what} needs a 3-D (z, y, x) volume, got {array.ndim} dimensions")
    if array.size == 0:
        raise ValueError(f"{what} cannot encode an empty volume {array.shape}")
    return np.ascontiguousarray(array).view(np.int8)


def _runs(flat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(values int8, lengths int64) of the runs of equal values in a 1-D array."""
    size = flat.size
    boundaries = []
    for start in range(0, size, _ENCODE_CHUNK_VOXELS):
        segment = flat[start : start + _ENCODE_CHUNK_VOXELS]
        if start and segment[0] != flat[start - 1]:
            boundaries.append(np.array([start], dtype=np.int64))
        inner = np.flatnonzero(segment[1:] != segment[:-1])
        if inner.size:
            boundaries.append(inner.astype(np.int64) + (start + 1))
    starts = np.concatenate([np.zeros(1, dtype=np.int64)] + boundaries)
    lengths = np.diff(np.append(starts, size))
    return flat[starts], lengths


def _length_prefixed(payload: np.ndarray, length_field_bytes: int, what: str) -> bytes:
    total = length_field_bytes + payload.size
    if length_field_bytes == 4 and total > _INT32_MAX:
        raise ValueError(f"{what} data of {total} bytes does not fit a 4-byte length field; write AIM v030")
    return total.to_bytes(length_field_bytes, "little") + payload.tobytes()


def _split_runs(lengths: np.ndarray, max_run: int) -> Tuple[np.ndarray, np.ndarray]:
    """Records per run (ceil(length / max_run)) and the length of each run's last record."""
    full = (lengths - 1) // max_run
    return full + 1, lengths - full * max_run


def encode_bin_cmp(volume, length_field_bytes: int = 4) -> bytes:
    """D1TbinCmp block (length field included) for an int8/uint8/bool (z, y, x) volume with at most two
    distinct values.

    value1 is the first voxel's value and value2 the other one. A single-valued volume gets
    value2 = 0, or 127 when value1 is 0. Runs longer than 254 are split into 255-bytes (254 voxels,
    keep the value) followed by one byte of 1..254.
    """
    length_field_bytes = _check_length_field_bytes(length_field_bytes)
    flat = _byte_volume(volume, "binCmp").reshape(-1)
    values, lengths = _runs(flat)
    distinct = np.unique(values)
    if distinct.size > 2:
        raise ValueError(f"binCmp can hold at most two distinct values, the volume has {distinct.size}")
    value1 = int(values[0])
    if distinct.size == 2:
        value2 = int(distinct[0] if distinct[0] != value1 else distinct[1])
    else:
        value2 = 0 if value1 != 0 else 127
    records, last = _split_runs(lengths, _BIN_KEEP_RUN)
    payload = np.full(2 + int(records.sum()), _BIN_KEEP_BYTE, dtype=np.uint8)
    payload[:2] = np.array([value1, value2], dtype=np.int8).view(np.uint8)
    payload[2 + np.cumsum(records) - 1] = last
    return _length_prefixed(payload, length_field_bytes, "binCmp")


def encode_char_cmp(volume, length_field_bytes: int = 4) -> bytes:
    """D1TcharCmp block (length field included): pairs (value, count 1..255) for an int8/uint8/bool
    (z, y, x) volume."""
    length_field_bytes = _check_length_field_bytes(length_field_bytes)
    flat = _byte_volume(volume, "charCmp").reshape(-1)
    values, lengths = _runs(flat)
    records, last = _split_runs(lengths, _CHAR_MAX_RUN)
    pairs = np.empty((int(records.sum()), 2), dtype=np.uint8)
    pairs[:, 0] = np.repeat(values.view(np.uint8), records)
    pairs[:, 1] = _CHAR_MAX_RUN
    pairs[np.cumsum(records) - 1, 1] = last
    return _length_prefixed(pairs.reshape(-1), length_field_bytes, "charCmp")


def encode_bit8(volume) -> bytes:
    """D3Tbit8 block for an int8/uint8/bool (z, y, x) volume: non-zero voxels become set bits, and the
    value byte holds their common value (127 for an all-zero volume). ValueError when the non-zero
    voxels do not share one value."""
    array = _byte_volume(volume, "bit8")
    nonzero_values = np.unique(array[array != 0])
    if nonzero_values.size > 1:
        raise ValueError(f"bit8 holds one non-zero value, the volume has {nonzero_values.size}")
    value = int(nonzero_values[0]) if nonzero_values.size else _BIT8_EMPTY_VALUE
    dz, dy, dx = array.shape
    cx, cy, cz = (dx + 1) // 2, (dy + 1) // 2, (dz + 1) // 2
    bits = np.zeros((2 * cz, 2 * cy, 2 * cx), dtype=np.uint8)
    bits[:dz, :dy, :dx] = array != 0
    cells = bits.reshape(cz, 2, cy, 2, cx, 2).transpose(0, 2, 4, 1, 3, 5).reshape(cz, cy, cx, 8)
    packed = np.packbits(cells, axis=-1, bitorder="little").reshape(-1)
    value_byte = np.array([value], dtype=np.int8).view(np.uint8)
    return packed.tobytes() + value_byte.tobytes()


class BinCmpStreamEncoder:
    """D1TbinCmp run bytes for a two-valued volume that arrives slab by slab (z ascending).

    Voxels are "object" when non-zero (bool, 0/1 or 0/127 input alike) and are stored as
    ``object_value`` (IPL: 127), the others as ``background_value`` (0). :meth:`feed` returns the run
    bytes that are final so far (a run that reaches the end of the slab is held back: it may go on in
    the next slab); :meth:`finish` returns the last run. Memory is proportional to one slab.

    The block of the file is ``[length][value1][value2]`` + every byte returned, where
    :meth:`block_header` gives the first part once the total is known. value1 is the first voxel's
    value and value2 the other one, as :func:`encode_bin_cmp` writes them, so both produce the same
    bytes for the same volume.
    """

    def __init__(self, object_value: int = 127, background_value: int = 0):
        if object_value == background_value:
            raise ValueError("binCmp object and background values must differ")
        self._values = (int(background_value), int(object_value))  # indexed by "is object"
        for v in self._values:
            if not -128 <= v <= 255:
                raise ValueError(f"binCmp values must fit a byte, not {v}")
        self._first = None       # is the first voxel object?
        self._current = None     # value of the run being built
        self._pending = 0        # its length so far
        self.run_bytes = 0       # run bytes returned so far
        self.voxels = 0

    @property
    def values(self) -> Tuple[int, int]:
        """(value1, value2): the first voxel's value and the other one (int8 meaning)."""
        first = bool(self._first) if self._first is not None else False
        pair = (self._values[first], self._values[not first])
        return tuple(int(np.array(v).astype(np.uint8).view(np.int8)) for v in pair)

    @staticmethod
    def _encode(lengths: np.ndarray) -> bytes:
        if lengths.size == 0:
            return b""
        records, last = _split_runs(lengths, _BIN_KEEP_RUN)
        out = np.full(int(records.sum()), _BIN_KEEP_BYTE, dtype=np.uint8)
        out[np.cumsum(records) - 1] = last
        return out.tobytes()

    def feed(self, slab) -> bytes:
        flat = np.asarray(slab).reshape(-1)
        if flat.size == 0:
            return b""
        objects = flat != 0
        boundaries = np.flatnonzero(objects[1:] != objects[:-1]) + 1
        starts = np.concatenate((np.zeros(1, dtype=np.int64), boundaries.astype(np.int64)))
        lengths = np.diff(np.append(starts, objects.size))
        first = bool(objects[0])
        if self._first is None:
            self._first = self._current = first
        if first == self._current:
            lengths[0] += self._pending
        elif self._pending:
            lengths = np.concatenate((np.array([self._pending], dtype=np.int64), lengths))
        self._current = bool(objects[-1])
        self._pending = int(lengths[-1])
        self.voxels += objects.size
        out = self._encode(lengths[:-1])
        self.run_bytes += len(out)
        return out

    def finish(self) -> bytes:
        """The bytes of the last run (call once, after the last slab)."""
        if self._first is None:
            raise ValueError("binCmp: no voxel was given")
        out = self._encode(np.array([self._pending], dtype=np.int64)) if self._pending else b""
        self._pending = 0
        self.run_bytes += len(out)
        return out

    def block_header(self, length_field_bytes: int = 4) -> bytes:
        """``[length][value1][value2]`` for the run bytes returned so far."""
        length_field_bytes = _check_length_field_bytes(length_field_bytes)
        total = length_field_bytes + 2 + self.run_bytes
        if length_field_bytes == 4 and total > _INT32_MAX:
            raise ValueError(f"binCmp data of {total} bytes does not fit a 4-byte length field; write AIM v030")
        value1, value2 = self.values
        return total.to_bytes(length_field_bytes, "little") + np.array([value1, value2], dtype=np.int8).tobytes()
