"""Which voxels of a file a load takes (full resolution, every n-th voxel, a region) and where they are.

Geometry. SCANCO files, like ITK, live in LPS: voxel (i, j, k) is at ``origin_mm + (i, j, k) * voxel_size_mm``
(``header.origin_mm``: AIM position x voxel size, ISQ 0). Slicer nodes are in RAS = diag(-1, -1, 1) LPS, so

    IJKToRAS = diag(-sx, -sy, sz) with origin (-ox, -oy, oz)

which is exactly where Slicer's own ITK-based reader puts the same file. A sub-region starting at voxel
(x0, y0, z0) and a subsampling step (nx, ny, nz) keep the same physical frame: the first loaded voxel is at
``origin + start * size`` and the spacing becomes ``size * step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..core.header import ScancoHeader


@dataclass(frozen=True)
class SamplingPlan:
    """Which voxels of the file are loaded: ``file[z0:z1:sz, y0:y1:sy, x0:x1:sx]``.

    ``start_xyz``/``stop_xyz`` are voxel indices of the file (stop exclusive), ``step_xyz`` >= 1.
    """

    start_xyz: Tuple[int, int, int]
    stop_xyz: Tuple[int, int, int]
    step_xyz: Tuple[int, int, int]

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        counts = [len(range(a, b, s)) for a, b, s in zip(self.start_xyz, self.stop_xyz, self.step_xyz)]
        return (counts[2], counts[1], counts[0])

    @property
    def voxel_count(self) -> int:
        z, y, x = self.shape_zyx
        return x * y * z

    @property
    def is_full(self) -> bool:
        return self.step_xyz == (1, 1, 1) and self.start_xyz == (0, 0, 0)

    def z_indices(self) -> range:
        return range(self.start_xyz[2], self.stop_xyz[2], self.step_xyz[2])

    def yx_slices(self) -> Tuple[slice, slice]:
        (x0, y0, _), (x1, y1, _), (sx, sy, _) = self.start_xyz, self.stop_xyz, self.step_xyz
        return slice(y0, y1, sy), slice(x0, x1, sx)


def _as_step_xyz(subsample_step) -> Tuple[int, int, int]:
    """An int (same step on every axis) or a (z, y, x) triple -> (x, y, z)."""
    if isinstance(subsample_step, (int, np.integer)) and not isinstance(subsample_step, bool):
        steps_zyx = (int(subsample_step),) * 3
    else:
        try:
            steps_zyx = tuple(int(s) for s in subsample_step)
        except TypeError:
            raise ValueError(f"subsample_step must be an int or a (z, y, x) triple, not {subsample_step!r}") from None
        if len(steps_zyx) != 3 or any(isinstance(s, bool) for s in subsample_step):
            raise ValueError(f"subsample_step must be an int or a (z, y, x) triple, not {subsample_step!r}")
    if any(s < 1 for s in steps_zyx):
        raise ValueError(f"subsample_step must be >= 1, got {subsample_step!r}")
    return (steps_zyx[2], steps_zyx[1], steps_zyx[0])


def _region_axis(item, size: int, axis: str) -> Tuple[int, int]:
    if item is None:
        return 0, size
    if isinstance(item, slice):
        if item.step not in (None, 1):
            raise ValueError(f"region {axis}: use subsample_step for steps, not a slice step ({item})")
        start, stop = item.start, item.stop
    else:
        try:
            start, stop = item
        except (TypeError, ValueError):
            raise ValueError(f"region {axis} must be a slice or a (start, stop) pair, not {item!r}") from None
    start = 0 if start is None else int(start)
    stop = size if stop is None else int(stop)
    if start < 0:
        start += size
    if stop < 0:
        stop += size
    if not 0 <= start < stop <= size:
        raise ValueError(f"region {axis} {start}:{stop} is empty or outside the image (0:{size})")
    return start, stop


def plan_sampling(header: ScancoHeader, *, subsample_step=1, region=None) -> SamplingPlan:
    """Resolve ``region`` (three slices or (start, stop) pairs in (z, y, x) order, None = whole axis;
    negative indices count from the end) and ``subsample_step`` against the header's dimensions."""
    nx, ny, nz = header.dimensions
    if region is None:
        region = (None, None, None)
    if len(region) != 3:
        raise ValueError(f"region must hold three (z, y, x) slices, got {region!r}")
    z0, z1 = _region_axis(region[0], nz, "z")
    y0, y1 = _region_axis(region[1], ny, "y")
    x0, x1 = _region_axis(region[2], nx, "x")
    return SamplingPlan((x0, y0, z0), (x1, y1, z1), _as_step_xyz(subsample_step))


def ijk_to_ras_matrix(header: ScancoHeader, plan: Optional[SamplingPlan] = None) -> np.ndarray:
    """4x4 IJK-to-RAS of the loaded voxels (see module docstring)."""
    spacing = np.asarray(header.voxel_size_mm, dtype=np.float64)
    origin = np.asarray(header.origin_mm, dtype=np.float64)
    if plan is not None:
        origin = origin + np.asarray(plan.start_xyz, dtype=np.float64) * spacing
        spacing = spacing * np.asarray(plan.step_xyz, dtype=np.float64)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(lps_to_ras * spacing)
    matrix[:3, 3] = lps_to_ras * origin
    return matrix
