"""D1TbinCmp (0x00150001): two values and run bytes. The slab-wise decoder stream, the whole-volume
encoder and the streaming encoder the AIM writer uses.

Layout: ``[length (H bytes, counts itself)][value1][value2][run bytes...]``. Start with value1. A run
byte ``L`` = 255 gives 254 voxels and keeps the value; any other ``L`` gives ``L`` voxels and then
switches to the other value (``L`` = 0 switches without output).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .common import BIN_KEEP_BYTE, BIN_KEEP_RUN, INT32_MAX, byte_volume, check_length_field_bytes
from .runs import length_prefixed, run_lengths_of, RunStream, split_at_need, split_runs

class BinCmpStream(RunStream):
    extra_header_bytes = 2
    unit_bytes = 1
    max_run = BIN_KEEP_RUN
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
        keep = chunk == BIN_KEEP_BYTE
        counts = chunk.astype(np.int64)
        counts[keep] = BIN_KEEP_RUN
        used, produced, leftover = split_at_need(counts, need)
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


def encode_bin_cmp(volume, length_field_bytes: int = 4) -> bytes:
    """D1TbinCmp block (length field included) for an int8/uint8/bool (z, y, x) volume with at most two
    distinct values.

    value1 is the first voxel's value and value2 the other one. A single-valued volume gets
    value2 = 0, or 127 when value1 is 0. Runs longer than 254 are split into 255-bytes (254 voxels,
    keep the value) followed by one byte of 1..254.
    """
    length_field_bytes = check_length_field_bytes(length_field_bytes)
    flat = byte_volume(volume, "binCmp").reshape(-1)
    values, lengths = run_lengths_of(flat)
    distinct = np.unique(values)
    if distinct.size > 2:
        raise ValueError(f"binCmp can hold at most two distinct values, the volume has {distinct.size}")
    value1 = int(values[0])
    if distinct.size == 2:
        value2 = int(distinct[0] if distinct[0] != value1 else distinct[1])
    else:
        value2 = 0 if value1 != 0 else 127
    records, last = split_runs(lengths, BIN_KEEP_RUN)
    payload = np.full(2 + int(records.sum()), BIN_KEEP_BYTE, dtype=np.uint8)
    payload[:2] = np.array([value1, value2], dtype=np.int8).view(np.uint8)
    payload[2 + np.cumsum(records) - 1] = last
    return length_prefixed(payload, length_field_bytes, "binCmp")


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
        records, last = split_runs(lengths, BIN_KEEP_RUN)
        out = np.full(int(records.sum()), BIN_KEEP_BYTE, dtype=np.uint8)
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
        length_field_bytes = check_length_field_bytes(length_field_bytes)
        total = length_field_bytes + 2 + self.run_bytes
        if length_field_bytes == 4 and total > INT32_MAX:
            raise ValueError(f"binCmp data of {total} bytes does not fit a 4-byte length field; write AIM v030")
        value1, value2 = self.values
        return total.to_bytes(length_field_bytes, "little") + np.array([value1, value2], dtype=np.int8).tobytes()
