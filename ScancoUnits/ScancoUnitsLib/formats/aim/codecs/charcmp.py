"""D1TcharCmp (0x00080002): ``[length (H bytes)]`` then pairs ``(value int8, count uint8)``. The
slab-wise decoder stream and the encoder."""

from __future__ import annotations

import numpy as np

from .common import CHAR_MAX_RUN, byte_volume, check_length_field_bytes
from .runs import length_prefixed, run_lengths_of, RunStream, split_at_need, split_runs

class CharCmpStream(RunStream):
    extra_header_bytes = 0
    unit_bytes = 2
    max_run = CHAR_MAX_RUN
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
        used, produced, leftover = split_at_need(counts, need)
        if out is not None and produced:
            run_counts = counts[:used]
            run_counts[-1] -= leftover
            out[filled : filled + produced] = np.repeat(values[:used], run_counts)
        if leftover:
            self._pending = leftover
            self._pending_value = values[used - 1]
        self._unread(chunk.size - 2 * used)
        return produced


def encode_char_cmp(volume, length_field_bytes: int = 4) -> bytes:
    """D1TcharCmp block (length field included): pairs (value, count 1..255) for an int8/uint8/bool
    (z, y, x) volume."""
    length_field_bytes = check_length_field_bytes(length_field_bytes)
    flat = byte_volume(volume, "charCmp").reshape(-1)
    values, lengths = run_lengths_of(flat)
    records, last = split_runs(lengths, CHAR_MAX_RUN)
    pairs = np.empty((int(records.sum()), 2), dtype=np.uint8)
    pairs[:, 0] = np.repeat(values.view(np.uint8), records)
    pairs[:, 1] = CHAR_MAX_RUN
    pairs[np.cumsum(records) - 1, 1] = last
    return length_prefixed(pairs.reshape(-1), length_field_bytes, "charCmp")
