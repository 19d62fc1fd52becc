"""Statistics of the fused slab kernel (:class:`~ScancoUnitsLib.pipeline.kernels.SlabKernel`).

Each worker has one :class:`KernelStats`; :meth:`KernelStats.merge` adds the workers' together at the
end. What they hold: exact min/max of every output (NaN and +-inf excluded and counted in
``nonfinite_voxels``), int16 HU voxels that were clipped, mask voxels (ones), and for 8/16-bit natives
the exact native histogram (int64 count per native value, bin 0 = the dtype's minimum, the layout of
:class:`~ScancoUnitsLib.pipeline.histogram.NativeHistogram`). For 8/16-bit natives the statistics are
computed from that histogram and the kernel's tables when they are read; the numpy backend without a
histogram (``histogram=False``) takes them from each slab's native min/max instead.

The kernel adds to a :class:`StatsTally` (the running totals, :attr:`KernelStats.tally`); that is the
only state the kernel and the statistics share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["StatsTally", "KernelStats"]


@dataclass
class StatsTally:
    """The running totals of one worker, per output name: ``min``/``max`` (None while no finite value
    was seen), ``nonfinite`` voxels, mask ``ones``, ``clipped`` int16 HU voxels; ``voxels`` and the
    ``native_range`` (min, max) over every output; ``counts``: the native histogram (8/16-bit natives,
    else None)."""

    min: Dict[str, Optional[float]] = field(default_factory=dict)
    max: Dict[str, Optional[float]] = field(default_factory=dict)
    nonfinite: Dict[str, int] = field(default_factory=dict)
    ones: Dict[str, int] = field(default_factory=dict)
    clipped: Dict[str, int] = field(default_factory=dict)
    voxels: int = 0
    native_range: Tuple[Optional[int], Optional[int]] = (None, None)
    counts: Optional[np.ndarray] = None

    @classmethod
    def empty(cls, names: Sequence[str], counts: Optional[np.ndarray] = None) -> "StatsTally":
        return cls({n: None for n in names}, {n: None for n in names}, {n: 0 for n in names},
                   {n: 0 for n in names}, {n: 0 for n in names}, counts=counts)

    def add_range(self, name: str, lo, hi) -> None:
        """Widen output *name*'s min/max by ``lo``..``hi``."""
        mine = self.min[name]
        self.min[name] = lo if mine is None else min(mine, lo)
        mine = self.max[name]
        self.max[name] = hi if mine is None else max(mine, hi)

    def add_native_range(self, lo: int, hi: int) -> None:
        low, high = self.native_range
        self.native_range = (lo if low is None else min(low, lo), hi if high is None else max(high, hi))

    def merge(self, other: "StatsTally") -> None:
        """Add *other*'s totals into these."""
        for name, value in other.min.items():
            mine = self.min.get(name)
            self.min[name] = value if mine is None else mine if value is None else min(mine, value)
        for name, value in other.max.items():
            mine = self.max.get(name)
            self.max[name] = value if mine is None else mine if value is None else max(mine, value)
        for mine, theirs in ((self.nonfinite, other.nonfinite), (self.ones, other.ones),
                             (self.clipped, other.clipped)):
            for name, value in theirs.items():
                mine[name] = mine.get(name, 0) + value
        self.voxels += other.voxels
        lo = [v for v in (self.native_range[0], other.native_range[0]) if v is not None]
        hi = [v for v in (self.native_range[1], other.native_range[1]) if v is not None]
        self.native_range = (min(lo) if lo else None, max(hi) if hi else None)
        if other.counts is not None:
            if self.counts is None:
                self.counts = other.counts.copy()
            else:
                self.counts += other.counts


class KernelStats:
    """Statistics of the slabs one worker ran; see the module docstring.

    ``min``/``max``: per output name, Python int (integer outputs) or float, None while no finite
    value was seen. ``nonfinite_voxels``, ``mask_voxels_of``, ``hu_clipped_voxels_of``: per output
    name; ``mask_voxels`` and ``hu_clipped_voxels``: their sums over the outputs. ``native_histogram``:
    int64 counts per native value (bin 0 = dtype minimum) when the kernel was asked for it and the
    natives are 8/16-bit integers, else None; ``native_min``/``native_max`` come from it (None for
    wider natives). For 8/16-bit natives the statistics are computed from the histogram when they
    are read, not per slab.

    *derive*: ``derive(tally)`` recomputes the tally from its histogram (the kernel's tables); it runs
    before a read after :meth:`histogram_changed`. None: the tally is kept up to date as it is.
    """

    def __init__(self, names: Sequence[str] = (), *, counts: Optional[np.ndarray] = None,
                 histogram: bool = False, derive: Optional[Callable[[StatsTally], None]] = None):
        #: the totals the kernel adds to
        self.tally = StatsTally.empty(names, counts)  # counts: always kept for 8/16-bit natives
        self._histogram = histogram  # whether native_histogram shows it
        self._derive = derive
        self._stale = False

    def histogram_changed(self) -> None:
        """The kernel counted natives into ``tally.counts``: derive the rest when next read."""
        self._stale = True

    def _fresh(self) -> StatsTally:
        if self._stale and self._derive is not None:
            self._derive(self.tally)
        self._stale = False
        return self.tally

    min = property(lambda self: self._fresh().min)
    max = property(lambda self: self._fresh().max)
    nonfinite_voxels = property(lambda self: self._fresh().nonfinite)
    mask_voxels_of = property(lambda self: self._fresh().ones)
    hu_clipped_voxels_of = property(lambda self: self._fresh().clipped)
    mask_voxels = property(lambda self: sum(self._fresh().ones.values()))
    hu_clipped_voxels = property(lambda self: sum(self._fresh().clipped.values()))
    voxels = property(lambda self: self._fresh().voxels)
    native_min = property(lambda self: self._fresh().native_range[0])
    native_max = property(lambda self: self._fresh().native_range[1])

    @property
    def native_histogram(self) -> Optional[np.ndarray]:
        return self.tally.counts if self._histogram else None

    def merge(self, other: "KernelStats") -> "KernelStats":
        """Add ``other`` (another worker of the same kernel) into this object; returns self."""
        self._fresh().merge(other._fresh())
        if other.tally.counts is not None:
            self._histogram = self._histogram or other._histogram
        return self
