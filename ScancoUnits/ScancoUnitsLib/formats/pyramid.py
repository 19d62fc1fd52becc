"""The resolution pyramid of a multiscale output: its levels' geometry and 2x downsampling.

Downsampling (level k+1 from level k, 2x2x2 blocks): the mean computed in float64 for every quantity but
masks, then cast back to the level's voxel type (float32 rounded to nearest; integer types such as int16
HU or native values rounded half to even with :func:`numpy.rint` and clipped to the type's range); masks
(a quantity whose name contains ``mask``) take the maximum ("any"). Odd sizes: a level has
``ceil(n / 2)`` voxels along an axis of *n*, and the last block averages (or takes the maximum of) the
voxels that exist; its nominal centre stays on the regular grid of that level.

:func:`pyramid_levels` gives each level's shape, chunks and NGFF scale and translation;
:func:`downsample_2x` makes the next level's slices from a group of slices of a level, which lets
:class:`~ScancoUnitsLib.formats.ome_zarr.OmeZarrVolumeWriter` stream every level at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..core.quantities import QUANTITIES, is_label

__all__ = [
    "PyramidLevel",
    "pyramid_levels",
    "downsampling_method",
    "downsample_2x",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PYRAMID_TOP_SIZE",
]

#: chunk edge (voxels) of every level, capped by the level's shape
DEFAULT_CHUNK_SIZE = 64
#: the pyramid stops at the first level whose largest side is at most this
DEFAULT_PYRAMID_TOP_SIZE = 256


@dataclass(frozen=True)
class PyramidLevel:
    """One resolution level: its dataset ``path`` ("0", "1", ...), shape and chunks (z, y, x), and
    its NGFF ``scale_zyx`` (voxel size, mm) and ``translation_zyx`` (centre of voxel 0, mm)."""

    path: str
    shape_zyx: Tuple[int, int, int]
    chunks_zyx: Tuple[int, int, int]
    scale_zyx: Tuple[float, float, float]
    translation_zyx: Tuple[float, float, float]

    def coordinate_transformations(self) -> list:
        return [{"type": "scale", "scale": list(self.scale_zyx)},
                {"type": "translation", "translation": list(self.translation_zyx)}]


def pyramid_levels(shape_zyx, spacing_mm, origin_mm=(0.0, 0.0, 0.0), *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   top_size: int = DEFAULT_PYRAMID_TOP_SIZE) -> List[PyramidLevel]:
    """The levels of the pyramid of a (z, y, x) volume with SCANCO (x, y, z) ``spacing_mm``/``origin_mm``.

    Level k+1 halves level k in every axis (``ceil(n / 2)``) until the largest side is <= *top_size*.
    """
    shape = tuple(int(n) for n in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"the volume shape must be three positive sizes (z, y, x), not {shape_zyx!r}")
    if int(chunk_size) < 1 or int(top_size) < 1:
        raise ValueError("chunk_size and top_size must be at least 1")
    spacing_zyx = tuple(float(v) for v in reversed(tuple(spacing_mm)))
    origin_zyx = tuple(float(v) for v in reversed(tuple(origin_mm)))
    if len(spacing_zyx) != 3 or len(origin_zyx) != 3:
        raise ValueError("spacing_mm and origin_mm must hold three values (x, y, z)")
    levels = []
    k = 0
    while True:
        factor = 2 ** k
        levels.append(PyramidLevel(
            path=str(k),
            shape_zyx=shape,
            chunks_zyx=tuple(min(int(chunk_size), n) for n in shape),
            scale_zyx=tuple(s * factor for s in spacing_zyx),
            translation_zyx=tuple(o + (factor - 1) * s / 2.0 for o, s in zip(origin_zyx, spacing_zyx)),
        ))
        if max(shape) <= top_size:
            return levels
        shape = tuple((n + 1) // 2 for n in shape)
        k += 1


def downsampling_method(quantity: str) -> str:
    """``"max"`` ("any") for masks (the registry's ``label``), ``"mean"`` for every other quantity."""
    if str(quantity) in QUANTITIES:
        return "max" if is_label(str(quantity)) else "mean"
    return "max" if "mask" in str(quantity).lower() else "mean"  # a name outside the registry


def _cast_mean(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return mean.astype(dtype)
    if dtype.kind == "b":
        return mean >= 0.5
    info = np.iinfo(dtype)
    np.rint(mean, out=mean)
    np.clip(mean, info.min, info.max, out=mean)
    return mean.astype(dtype)


def _pair_reduce(arr: np.ndarray, axis: int, ufunc, dtype=None) -> np.ndarray:
    """Combine neighbours 2i and 2i+1 along *axis* with *ufunc* (add or maximum); an odd last element
    is kept as it is (a block of one)."""
    size = arr.shape[axis]
    even = size - size % 2

    def take(start, stop, step=1):
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start, stop, step)
        return arr[tuple(index)]

    shape = list(arr.shape)
    shape[axis] = (size + 1) // 2
    out = np.empty(shape, dtype=dtype or arr.dtype)
    index = [slice(None)] * arr.ndim
    index[axis] = slice(0, even // 2)
    ufunc(take(0, even, 2), take(1, even, 2), out=out[tuple(index)], dtype=out.dtype)
    if size % 2:
        index[axis] = slice(even // 2, None)
        out[tuple(index)] = take(even, None)
    return out


def downsample_2x(slices: np.ndarray, method: str) -> np.ndarray:
    """Downsample 2x in every axis: (n, y, x) -> (ceil(n/2), ceil(y/2), ceil(x/2)), same voxel type.

    ``method``: ``"mean"`` (float64 mean of each 2x2x2 block, cast back: floats rounded to nearest,
    integers :func:`numpy.rint` and clipped) or ``"max"``. The last block along an odd axis holds
    what exists (a 1-, 2- or 4-voxel block) and is averaged over those voxels.
    """
    arr = np.asarray(slices)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"expected a non-empty (n, y, x) array, not shape {arr.shape}")
    if method not in ("mean", "max"):
        raise ValueError(f"method must be 'mean' or 'max', not {method!r}")
    if method == "max":
        out = _pair_reduce(arr, 0, np.maximum)
        out = _pair_reduce(out, 1, np.maximum)
        return _pair_reduce(out, 2, np.maximum)
    # float64 sums of pairs along z, y, x (strided adds: memory speed), then one division by the count
    # of voxels in each block (8 inside, fewer in the last block of an odd axis)
    total = _pair_reduce(arr, 0, np.add, np.float64)
    total = _pair_reduce(total, 1, np.add)
    total = _pair_reduce(total, 2, np.add)
    counts = [np.full((size + 1) // 2, 2.0) for size in arr.shape]
    for size, count in zip(arr.shape, counts):
        if size % 2:
            count[-1] = 1.0
    total /= counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    return _cast_mean(total, arr.dtype)
