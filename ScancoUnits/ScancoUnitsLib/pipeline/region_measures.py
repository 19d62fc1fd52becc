"""Per-region numbers a paper reports, accumulated while a scan streams: vBMD, BV/TV, TMD.

For each region R (:class:`~ScancoUnitsLib.formats.regions.PlacedRegion`) and the threshold mask M of the
conversion (``native_low <= native <= native_high``; for a char scan: non-zero):

* ``voxels`` = |R| (inside the scan), ``volume_mm3``, ``outside_voxels`` (the part of R dropped);
* ``vbmd_mg_ha_ccm`` = mean density over R and its SD;
* ``bone_voxels`` = |M ∩ R|, ``bv_tv`` = |M ∩ R| / |R|;
* ``tmd_mg_ha_ccm`` = mean density over M ∩ R and its SD.

:class:`RegionStatisticsObserver` is a slab observer of the engine (``observer(z0, native, views)``):
per region it keeps one int64 count per native value of the voxels inside R (``np.bincount`` of the
unsigned view of ``native[R]``), so nothing is rounded while streaming. M ∩ R is read from the same
counts (M is a range of native values). At the end every mean is ``sum(count * density(native)) / n``
correctly rounded (:func:`~ScancoUnitsLib.pipeline.statistics.exact_dot`, Dekker products and
:func:`math.fsum`), which equals ``math.fsum`` over the float64 densities of the whole array; SDs are
population SDs (ddof 0) around that mean, the same way. Same rules as
:class:`~ScancoUnitsLib.pipeline.statistics.ScanStatistics`.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict, dataclass, replace
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import RequestError
from ..core.header import ScancoHeader
from ..formats.regions import PlacedRegion, read_region
from .statistics import exact_dot
from ..core.thresholds import ResolvedThresholds, ThresholdSpec, resolve_thresholds
from ..core.units import UnitConverter

_DENSITY = "density_mg_ha_ccm"
#: per-region fields, in order; the summary CSV names its columns ``<region>_<field>``
REGION_FIELDS = ("voxels", "volume_mm3", "outside_voxels", "vbmd_mg_ha_ccm", "vbmd_sd_mg_ha_ccm",
                 "bone_voxels", "bv_tv", "tmd_mg_ha_ccm", "tmd_sd_mg_ha_ccm")
METHOD = "exact: int64 count per native value inside each region, correctly rounded sums (math.fsum)"


@dataclass(frozen=True)
class RegionStatistics:
    """One region's numbers; None where undefined (no density calibration, empty region or M ∩ R)."""
    name: str
    file: str
    kind: str
    offset_voxels: Tuple[int, int, int]
    voxels: int
    volume_mm3: float
    outside_voxels: int
    vbmd_mg_ha_ccm: Optional[float]
    vbmd_sd_mg_ha_ccm: Optional[float]
    bone_voxels: Optional[int]
    bv_tv: Optional[float]
    tmd_mg_ha_ccm: Optional[float]
    tmd_sd_mg_ha_ccm: Optional[float]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["offset_voxels"] = list(self.offset_voxels)
        return out


@dataclass(frozen=True)
class RegionStatisticsResult:
    """Every region of one scan; ``thresholds``: the native range of M (None for a char scan)."""
    scan: str
    native_range: Optional[Tuple[int, int]]
    regions: Tuple[RegionStatistics, ...]

    def __getitem__(self, name: str) -> RegionStatistics:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    def names(self) -> Tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def to_dict(self) -> dict:
        return {"method": METHOD, "mask_native_range": None if self.native_range is None else list(self.native_range),
                "regions": {r.name: r.to_dict() for r in self.regions}}

    def columns(self) -> Dict[str, object]:
        """One flat column group per region: ``<name>_<field>`` (the summary CSV)."""
        return {f"{r.name}_{f}": getattr(r, f) for r in self.regions for f in REGION_FIELDS}


def _counted_dtype(header: ScancoHeader) -> np.dtype:
    dtype = np.dtype(header.voxel_type)
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise RequestError(header.path, f"region statistics need 8- or 16-bit integer voxels, not {dtype.name}")
    return dtype


class RegionStatisticsObserver:
    """Slab observer accumulating every region's counts; :meth:`result` gives the statistics."""

    def __init__(self, header: ScancoHeader, regions: Sequence[PlacedRegion],
                 thresholds: Optional[ResolvedThresholds]):
        self.header = header
        self.dtype = _counted_dtype(header)
        self.char = self.dtype.itemsize == 1
        self.regions = tuple(regions)
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            raise RequestError(header.path, f"region names must differ: {', '.join(names)}")
        for region in self.regions:
            if tuple(region.scan_shape_zyx) != tuple(header.shape_zyx):
                raise RequestError(region.path, f"region {region.name!r} was placed on another grid "
                                                f"{list(region.scan_shape_zyx)}, not {header.path}'s")
        self.thresholds = None if self.char else thresholds
        self._unsigned = np.dtype(f"u{self.dtype.itemsize}")
        self.counts = [np.zeros(1 << (8 * self.dtype.itemsize), dtype=np.int64) for _ in self.regions]
        self._local = threading.local()
        self._thread_counts: list = []
        self._threads_lock = threading.Lock()
        self._count_in_mask = _numba_count_in_mask() if self.dtype.itemsize <= 2 else None

    def observe(self, z0: int, native: np.ndarray, outputs=None) -> None:
        """Count the whole slices ``native`` (scan slices ``z0 ...``)."""
        self._count(z0, 0, native, self.counts)

    __call__ = observe

    def observe_unordered(self, z0: int, y0: int, native: np.ndarray, outputs=None) -> None:
        """Count rows ``y0 ...`` of scan slices ``z0 ...``, from any conversion worker, in any order:
        each thread adds into its own counts (integers: the sum does not depend on the order), which
        :meth:`result` adds up."""
        counts = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = [np.zeros_like(c) for c in self.counts]
            with self._threads_lock:
                self._thread_counts.append(counts)
        self._count(z0, y0, native, counts)

    def _count(self, z0: int, y0: int, native: np.ndarray, into) -> None:
        z1, y1 = z0 + native.shape[0], y0 + native.shape[1]
        for region, counts in zip(self.regions, into):
            part = region.slab(z0, z1, y0, y1)
            if part is None:
                continue
            (a, b), mask, (ys, xs) = part
            inside = native[a:b, ys.start - y0:ys.stop - y0, xs]
            if self._count_in_mask is not None:   # numba: one pass over the slab, no gathered copy
                self._count_in_mask(inside.view(self._unsigned), mask, counts)
                continue
            values = inside[mask]
            if values.size:   # only up to the largest bit pattern present (not all 65536 bins per slab)
                found = np.bincount(values.view(self._unsigned))
                counts[:found.size] += found

    def result(self) -> RegionStatisticsResult:
        converter = UnitConverter(self.header.calibration, path=self.header.path)
        density_ok = not self.char and converter.can_convert(_DENSITY)
        voxel_mm3 = float(np.prod(np.asarray(self.header.voxel_size_mm, dtype=np.float64)))
        out = []
        totals = [sum((counts[i] for counts in self._thread_counts), own.copy()) for i, own in enumerate(self.counts)]
        for region, all_counts in zip(self.regions, totals):
            present = np.flatnonzero(all_counts)
            counts = all_counts[present]
            natives = present.astype(self._unsigned).view(self.dtype).astype(np.int64)
            n = int(counts.sum())
            if self.char:
                bone = natives != 0
            elif self.thresholds is not None:
                bone = (natives >= self.thresholds.native_low) & (natives <= self.thresholds.native_high)
            else:
                bone = None
            bone_n = None if bone is None else int(counts[bone].sum())
            vbmd = vbmd_sd = tmd = tmd_sd = None
            if density_ok and n:
                density = converter.native_to(natives, _DENSITY)
                vbmd, vbmd_sd = _mean_sd(counts, density, n)
                if bone is not None and bone_n:
                    tmd, tmd_sd = _mean_sd(counts[bone], density[bone], bone_n)
            out.append(RegionStatistics(
                region.name, region.path, region.kind, tuple(region.offset_voxels), n, n * voxel_mm3,
                region.outside_voxels, vbmd, vbmd_sd, bone_n,
                None if bone_n is None or not n else bone_n / n, tmd, tmd_sd))
        native_range = None if self.thresholds is None else (self.thresholds.native_low, self.thresholds.native_high)
        return RegionStatisticsResult(self.header.path, native_range, tuple(out))


def _numba_count_in_mask():
    """The numba counting kernel when the engine would use numba (the ``fast`` extra installed and
    ``SCANCO_UNITS_KERNEL`` not ``numpy``), else None: the counts are integers, the same either way."""
    from .kernels import choose_backend, numba_kernels

    return numba_kernels().count_in_mask if choose_backend("auto") == "numba" else None


def _mean_sd(counts: np.ndarray, values: np.ndarray, n: int) -> Tuple[float, float]:
    mean = exact_dot(counts, values) / n
    return mean, math.sqrt(exact_dot(counts, (values - mean) ** 2) / n)


RegionsArgument = Union[Mapping[str, Union[str, os.PathLike, PlacedRegion]],
                        Iterable[Union[str, os.PathLike, PlacedRegion]]]


def place_regions(regions: RegionsArgument, like: ScancoHeader) -> Tuple[PlacedRegion, ...]:
    """``{name: path or PlacedRegion}`` or a sequence of them -> regions on ``like``'s grid."""
    items = regions.items() if isinstance(regions, Mapping) else ((None, r) for r in regions)
    placed = []
    for name, region in items:
        if isinstance(region, PlacedRegion):
            placed.append(region if name is None or name == region.name else
                          replace(region, name=name))
        else:
            placed.append(read_region(region, like=like, name=name))
    return tuple(placed)


def region_statistics(scan: Union[str, os.PathLike, ScancoHeader], regions: RegionsArgument,
                      thresholds: Union[ThresholdSpec, ResolvedThresholds, None] = None,
                      slab_slices: int = 16) -> RegionStatisticsResult:
    """Statistics of every region of ``scan`` (a path or a header), streamed slab by slab.

    ``regions``: ``{name: path}`` (mask AIM or GOBJ, placed by position) or placed regions.
    ``thresholds``: the bone mask M (a :class:`ThresholdSpec`, resolved on the scan's calibration, or
    resolved integers); None: the conversion's default thresholds. Ignored for char scans (M = non-zero)."""
    from ..formats.reader import open_voxels, read_header

    header = scan if isinstance(scan, ScancoHeader) else read_header(scan)
    placed = place_regions(regions, header)
    resolved = thresholds
    if not header.is_mask and not isinstance(thresholds, ResolvedThresholds):
        if thresholds is None:
            from .request import DEFAULT_THRESHOLDS
            thresholds = DEFAULT_THRESHOLDS
        resolved = resolve_thresholds(thresholds, header.calibration,
                                      header_max_data_value=header.raw_field("max_data_value"), path=header.path)
    observer = RegionStatisticsObserver(header, placed, resolved)
    with open_voxels(header) as source:
        z0 = 0
        for slab in source.iter_slabs(slab_slices):
            observer.observe(z0, slab)
            z0 += slab.shape[0]
    return observer.result()
