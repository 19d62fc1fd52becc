"""Histogram of native voxel values, accumulated slab by slab (numpy only).

Integer voxels of at most 16 bits (int16 ISQ/AIM, char masks, uint16) get one bin per possible value:
``np.bincount`` of the value's bit pattern with the sign bit flipped (int16 -32768 -> bin 0, 0 -> 32768,
32767 -> 65535), int64 counts. Counting is exact, so the number of voxels with
``native_low <= v <= native_high`` (:meth:`NativeHistogram.counts_between`) is exactly the voxel count of
the threshold mask built with the same integers.

Wider types (int32, float32, float64...) cannot have a bin per value; they go into at most
:data:`MAX_ADAPTIVE_BINS` bins of width ``w`` (a power of two), bin ``k`` holding ``[k*w, (k+1)*w)``.
When new values fall outside the current bins, ``w`` doubles and neighbouring bins merge, so one pass
is enough whatever the range. NaN and infinite values are counted apart (:attr:`NativeHistogram.nonfinite`).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

#: most bins of the adaptive (wide dtype) histogram
MAX_ADAPTIVE_BINS = 8192
_CHUNK_VOXELS = 1 << 20


class NativeHistogram:
    """Counts of native voxel values, built one slab at a time.

    ``dtype``: the voxel dtype of the file (``header.voxel_type``). :attr:`exact` is True for integer
    dtypes of 1 or 2 bytes (one bin per value) and for wider integers while every bin is one value wide.
    """

    def __init__(self, dtype="int16"):
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "iuf":
            raise ValueError(f"a histogram needs integer or float voxels, not {self.dtype}")
        self.total = 0          # every voxel seen, non-finite included
        self.nonfinite = 0      # NaN and +-inf (float data only)
        self._per_value = self.dtype.kind in "iu" and self.dtype.itemsize <= 2
        if self._per_value:
            bits = 8 * self.dtype.itemsize
            self._index_dtype = np.dtype(f"u{self.dtype.itemsize}")
            self._flip = (1 << (bits - 1)) if self.dtype.kind == "i" else 0
            self._offset = -int(np.iinfo(self.dtype).min)  # bin index = value + offset
            self._counts = np.zeros(1 << bits, dtype=np.int64)
        else:
            self._width: Optional[float] = None   # bin width, a power of two
            self._first_bin = 0                   # bin k covers [k*w, (k+1)*w); counts[0] is k = first_bin
            self._counts = np.zeros(0, dtype=np.int64)

    # ---- accumulation ---------------------------------------------------------------------------
    def accumulate(self, slab) -> None:
        """Add every voxel of ``slab`` (any shape, this histogram's dtype or one that casts safely)."""
        values = np.asarray(slab)
        if values.size == 0:
            return
        if values.dtype != self.dtype:
            if not np.can_cast(values.dtype, self.dtype, casting="safe"):
                raise ValueError(f"slab dtype {values.dtype} does not fit a {self.dtype} histogram")
            values = values.astype(self.dtype)
        if not values.dtype.isnative:
            values = values.astype(values.dtype.newbyteorder("="))
        flat = np.ascontiguousarray(values).reshape(-1)
        self.total += flat.size
        if self._per_value:
            bins = self._counts.size
            for start in range(0, flat.size, _CHUNK_VOXELS):
                index = flat[start:start + _CHUNK_VOXELS].view(self._index_dtype)
                if self._flip:
                    index = index ^ self._index_dtype.type(self._flip)
                self._counts += np.bincount(index, minlength=bins)
        else:
            for start in range(0, flat.size, _CHUNK_VOXELS):
                self._accumulate_wide(flat[start:start + _CHUNK_VOXELS].astype(np.float64))

    def _accumulate_wide(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():
            self.nonfinite += int(values.size - np.count_nonzero(finite))
            values = values[finite]
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if self._width is None:
            span = max(hi - lo, 0.0)
            if span > 0:
                width = 2.0 ** math.ceil(math.log2(span / (MAX_ADAPTIVE_BINS // 2)))
            else:  # one value so far (often a background of zeros): start fine, merge later
                width = 2.0 ** (math.floor(math.log2(max(abs(lo), 1.0))) - 20)
            if self.dtype.kind in "iu":
                width = max(width, 1.0)
            self._width = width
            self._first_bin = math.floor(lo / width)
            self._counts = np.zeros(1, dtype=np.int64)
        first = min(self._first_bin, math.floor(lo / self._width))
        last = max(self._first_bin + self._counts.size - 1, math.floor(hi / self._width))
        while last - first + 1 > MAX_ADAPTIVE_BINS:
            self._merge_pairs()
            first = min(self._first_bin, math.floor(lo / self._width))
            last = max(self._first_bin + self._counts.size - 1, math.floor(hi / self._width))
        if first < self._first_bin or last >= self._first_bin + self._counts.size:
            grown = np.zeros(last - first + 1, dtype=np.int64)
            start = self._first_bin - first
            grown[start:start + self._counts.size] = self._counts
            self._counts, self._first_bin = grown, first
        # dividing by a power of two is exact, so floor() puts every value in its true bin
        index = np.floor(values / self._width).astype(np.int64) - self._first_bin
        self._counts += np.bincount(index, minlength=self._counts.size)

    def _merge_pairs(self) -> None:
        """Double the bin width: bin k of the new width holds old bins 2k and 2k+1."""
        old_bins = np.arange(self._first_bin, self._first_bin + self._counts.size)
        new_first = self._first_bin // 2
        merged = np.zeros(self._counts.size // 2 + 2, dtype=np.int64)
        np.add.at(merged, old_bins // 2 - new_first, self._counts)
        last = np.flatnonzero(merged).max() + 1 if merged.any() else 1
        self._counts, self._first_bin, self._width = merged[:last], new_first, self._width * 2

    # ---- queries --------------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """True when every bin holds a single integer value (counts per value are exact)."""
        return self._per_value or (self.dtype.kind in "iu" and (self._width or 1.0) == 1.0)

    @property
    def bin_width(self) -> float:
        return 1.0 if self._per_value else float(self._width or 1.0)

    def _bin_lows(self) -> np.ndarray:
        """Lower edge (= value, for exact bins) of every stored bin, float64."""
        if self._per_value:
            return np.arange(self._counts.size, dtype=np.float64) - self._offset
        return (np.arange(self._counts.size, dtype=np.float64) + self._first_bin) * self.bin_width

    @property
    def counts(self) -> np.ndarray:
        """Read-only view of the stored counts (int64); see :meth:`values_and_counts` for the values."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    @property
    def finite_count(self) -> int:
        return self.total - self.nonfinite

    def _occupied(self) -> Tuple[int, int]:
        """First and last stored bin index holding a voxel; (0, -1) when empty."""
        nonzero = np.flatnonzero(self._counts)
        if nonzero.size == 0:
            return 0, -1
        return int(nonzero[0]), int(nonzero[-1])

    @property
    def min_value(self) -> Optional[float]:
        """Smallest value seen (exact bins) or the lower edge of its bin; None when empty."""
        first, last = self._occupied()
        return None if last < first else float(self._bin_lows()[first])

    @property
    def max_value(self) -> Optional[float]:
        """Largest value seen (exact bins) or the upper edge of its bin; None when empty."""
        first, last = self._occupied()
        if last < first:
            return None
        low = float(self._bin_lows()[last])
        return low if self.exact else low + self.bin_width

    def values_and_counts(self) -> Tuple[np.ndarray, np.ndarray]:
        """(bin lower edges as float64, counts int64) over the occupied range; exact bins: the values."""
        first, last = self._occupied()
        return self._bin_lows()[first:last + 1], self._counts[first:last + 1].copy()

    def counts_between(self, low, high) -> int:
        """Voxels with ``low <= value <= high`` (both inclusive).

        Exact for exact bins (the threshold-mask rule on integers). For wide bins it sums the bins
        whose whole range ``[k*w, (k+1)*w)`` lies inside ``[low, high]``: a lower bound.
        """
        if low > high:
            return 0
        if self._per_value:
            lo_index = max(math.ceil(low) + self._offset, 0)
            hi_index = min(math.floor(high) + self._offset, self._counts.size - 1)
            return int(self._counts[lo_index:hi_index + 1].sum()) if hi_index >= lo_index else 0
        if self._width is None:
            return 0
        lows = self._bin_lows()
        if self.exact:
            inside = (lows >= low) & (lows <= high)
        else:
            inside = (lows >= low) & (lows + self.bin_width <= high)
        return int(self._counts[inside].sum())

    def quantile(self, q: float) -> Optional[float]:
        """Smallest bin value (lower edge) at which the cumulative count reaches ``q`` of the finite voxels."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, not {q!r}")
        finite = self.finite_count
        if finite == 0:
            return None
        cumulative = np.cumsum(self._counts)
        index = int(np.searchsorted(cumulative, max(1, math.ceil(q * finite)), side="left"))
        return float(self._bin_lows()[min(index, self._counts.size - 1)])

    def rebinned(self, n: int = 512, low=None, high=None) -> Tuple[np.ndarray, np.ndarray]:
        """At most ``n`` equal bins over ``[low, high]`` (default: the occupied range): ``(edges, counts)``.

        ``edges`` (float64, one more than ``counts``) fall between stored bins, so each stored bin (each
        integer value, for exact bins) lands in exactly one new bin; for exact bins they are half-integers.
        Stored bins outside ``[low, high]`` are left out.
        """
        if n < 1:
            raise ValueError("rebinned needs at least one bin")
        first, last = self._occupied()
        if last < first:
            return np.zeros(1, dtype=np.float64), np.zeros(0, dtype=np.int64)
        lows = self._bin_lows()
        step = self.bin_width
        if low is not None:
            first = max(first, int(np.searchsorted(lows, float(low) - (0.5 if self._per_value else 0.0),
                                                   side="left")))
        if high is not None:
            last = min(last, int(np.searchsorted(lows, float(high), side="right")) - 1)
        if last < first:
            return np.zeros(1, dtype=np.float64), np.zeros(0, dtype=np.int64)
        stored = self._counts[first:last + 1]
        group = max(1, math.ceil(stored.size / n))
        padded = np.zeros(math.ceil(stored.size / group) * group, dtype=np.int64)
        padded[:stored.size] = stored
        counts = padded.reshape(-1, group).sum(axis=1)
        start = lows[first] - (0.5 if self.exact else 0.0)
        edges = start + np.arange(counts.size + 1, dtype=np.float64) * group * step
        return edges, counts

    @classmethod
    def of(cls, volume) -> "NativeHistogram":
        """Histogram of a whole array (for tests and small volumes)."""
        volume = np.asarray(volume)
        hist = cls(volume.dtype)
        hist.accumulate(volume)
        return hist


def histogram_of_file(path_or_header, slices: int = 16) -> NativeHistogram:
    """Histogram of every native voxel of a SCANCO file, read slab by slab (memory: one slab).

    For callers that did not see the voxels stream past (e.g. the Slicer panel after a load);
    a conversion gets the same histogram for free from :class:`~ScancoUnitsLib.pipeline.report.ReportBuilder`.
    """
    from ..formats.reader import open_voxels

    from .engine import SLAB_SET_MAX_BYTES

    with open_voxels(path_or_header) as source:
        hist = NativeHistogram(source.dtype)
        nz, ny, nx = source.shape
        if slices * ny * nx * source.dtype.itemsize <= SLAB_SET_MAX_BYTES:
            slabs = source.iter_slabs(slices)
        else:  # memory bounded by bytes: fewer slices, or rows of a slice over the budget
            slabs = source.iter_pieces(max(1, SLAB_SET_MAX_BYTES // source.dtype.itemsize))
        for slab in slabs:
            hist.accumulate(slab)
    return hist
