"""Run-length machinery shared by binCmp and charCmp: the sequential decoding stream over an H-byte
length field (chunked reads, pieces of voxels, skipping forward) and the encoders' run helpers."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ....errors import ScancoFormatError
from .common import BIN_KEEP_RUN, INT32_MAX, BlockBytes

_MIN_CHUNK_BYTES = 64
_MAX_CHUNK_BYTES = 1 << 20  # compressed bytes decoded per numpy pass (bounds the temporaries)
_PIECE_VOXELS = 1 << 22  # voxels decoded per numpy pass
_SKIP_VOXELS = 1 << 26  # voxels per produce() call when skipping forward
_ENCODE_CHUNK_VOXELS = 1 << 24


# ---------------------------------------------------------------------------------------------------
# Run-length streams (binCmp, charCmp): sequential voxel producers
# ---------------------------------------------------------------------------------------------------


class RunStream:
    """Sequential reader of a run-length payload that starts with an H-byte length field."""

    extra_header_bytes = 0  # bytes after the length field that belong to the header
    unit_bytes = 1  # bytes per run record
    max_run = BIN_KEEP_RUN  # most voxels one run record can produce
    name = ""

    def __init__(self, block: BlockBytes, data_size, length_field_bytes: int, voxel_count: int, warnings: List[str]):
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


def split_at_need(counts: np.ndarray, need: int):
    """Runs of ``counts`` consumed to produce ``need`` voxels: (used runs, voxels produced,
    voxels of the last used run left over)."""
    csum = np.cumsum(counts)
    total = int(csum[-1]) if csum.size else 0
    if total < need:
        return counts.size, total, 0
    index = int(np.searchsorted(csum, need, side="left"))
    return index + 1, need, int(csum[index]) - need


def run_lengths_of(flat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
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


def length_prefixed(payload: np.ndarray, length_field_bytes: int, what: str) -> bytes:
    total = length_field_bytes + payload.size
    if length_field_bytes == 4 and total > INT32_MAX:
        raise ValueError(f"{what} data of {total} bytes does not fit a 4-byte length field; write AIM v030")
    return total.to_bytes(length_field_bytes, "little") + payload.tobytes()


def split_runs(lengths: np.ndarray, max_run: int) -> Tuple[np.ndarray, np.ndarray]:
    """Records per run (ceil(length / max_run)) and the length of each run's last record."""
    full = (lengths - 1) // max_run
    return full + 1, lengths - full * max_run
