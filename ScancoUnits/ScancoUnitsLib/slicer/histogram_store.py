"""The native histograms the panel has seen, one per file, so Show histogram reads a file at most once.

A :class:`HistogramStore` keys each :class:`~ScancoUnitsLib.pipeline.histogram.NativeHistogram` by the file's
content identity (real path, size, modification time): the load pass records the histogram it accumulated,
and :meth:`HistogramStore.histogram_of` reads the file (slab by slab, with progress and cancel) only when the
store does not know it. A rewritten file is a different file.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from ..errors import ConversionCancelled
from ..pipeline.engine import slab_slices_for
from ..pipeline.histogram import NativeHistogram

#: ``progress(slices done, slices in all)`` after each slab of a histogram read
SliceProgress = Callable[[int, int], None]


def file_key(path):
    """Identity of a file's content for the store: real path, size and modification time."""
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def read_histogram(header, progress: Optional[SliceProgress] = None, cancel=None,
                   slab_slices: Optional[int] = None) -> NativeHistogram:
    """Native histogram of every voxel of ``header``'s file, read once in the engine's slabs (``slab_slices``
    slices a slab when given). ``cancel() -> True`` before a slab stops it with
    :class:`~ScancoUnitsLib.errors.ConversionCancelled`."""
    from ..formats import reader   # looked up when called: tests replace reader.open_voxels

    with reader.open_voxels(header) as source:
        histogram = NativeHistogram(source.dtype)
        depth = max(int(source.shape[0]), 1)
        done = 0
        for slab in source.iter_slabs(slab_slices_for(header, slab_slices)):
            if cancel is not None and cancel():
                raise ConversionCancelled(header.path)
            histogram.accumulate(slab)
            done += slab.shape[0]
            if progress is not None:
                progress(done, depth)
    return histogram


class HistogramStore:
    """File key (:func:`file_key`) -> NativeHistogram of every voxel of that file."""

    def __init__(self) -> None:
        self._histograms = {}

    def record(self, path, histogram) -> None:
        """Keep the histogram of every voxel of ``path`` (e.g. accumulated by the pass that loaded the nodes)."""
        self._histograms[file_key(path)] = histogram

    def known(self, header):
        """The stored histogram of ``header``'s file, or None when its voxels have not been seen yet."""
        try:
            return self._histograms.get(file_key(header.path))
        except OSError:
            return None

    def histogram_of(self, header, progress: Optional[SliceProgress] = None, cancel=None,
                     slab_slices: Optional[int] = None):
        """From the store when known; otherwise :func:`read_histogram`, stored for the next call."""
        histogram = self.known(header)
        if histogram is None:
            histogram = read_histogram(header, progress, cancel, slab_slices)
            self.record(header.path, histogram)
        return histogram
