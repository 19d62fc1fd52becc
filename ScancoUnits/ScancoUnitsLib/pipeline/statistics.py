"""Per-scan numbers for a paper, accumulated while a file streams: mask volume and fraction, mean
density (whole scan and inside the mask, i.e. tissue mineral density), its SD, mean HU, native range.

:class:`ScanStatistics` is a slab observer (``observer(z0, native_slab, {role: slab})``, see
:func:`~ScancoUnitsLib.pipeline.convert.convert_header`). For 8- and 16-bit natives it keeps one int64 count
per native value (``np.bincount`` of the unsigned view), so nothing is rounded while streaming; at
the end each statistic is ``sum(count * value(native)) / n`` with ``value`` the float64 reference
formula of :class:`~ScancoUnitsLib.core.units.UnitConverter`. Every product ``count * value`` is split
into two floats that add up to it exactly (Dekker's two-product) and :func:`math.fsum` rounds the
exact sum once, so each mean equals ``math.fsum(values) / n`` over the whole float64 array, and the
SD equals ``sqrt(math.fsum((values - mean) ** 2) / n)`` (population SD, ddof 0), whatever the slab
size. int32 and float natives (rare: float AIMs are already converted) keep float64 sums per slab
instead: close, not bit-exact.

The mask here is the conversion's rule ``native_low <= native <= native_high`` on native values,
so in-mask numbers come from the same counts. ``mask_fraction`` is the mask's share of *all*
voxels of the scan (background included): it is not BV/TV, which needs a region of interest.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from ..errors import ScancoError
from ..core.header import ScancoHeader
from ..core.thresholds import ResolvedThresholds, ThresholdSpec, resolve_thresholds
from ..core.units import UnitConverter

#: keys of :meth:`ScanStatistics.to_dict`, in order (the summary CSV uses the same names)
STATISTICS_FIELDS = (
    "voxel_count", "native_min", "native_max", "mask_voxels", "mask_volume_mm3", "mask_fraction",
    "density_mean_mg_ha_ccm", "density_mean_in_mask_mg_ha_ccm", "density_sd_in_mask_mg_ha_ccm", "hu_mean",
)
_DENSITY = "density_mg_ha_ccm"
_SPLIT = 134217729.0  # 2**27 + 1 (Veltkamp split of a float64)


def _split(a: np.ndarray):
    t = _SPLIT * a
    hi = t - (t - a)
    return hi, a - hi


def exact_dot(counts: np.ndarray, values: np.ndarray) -> float:
    """``sum(counts * values)`` correctly rounded to float64 (counts below 2**53, no overflow)."""
    a = np.asarray(counts, dtype=np.float64)
    b = np.asarray(values, dtype=np.float64)
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    err = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return math.fsum(np.concatenate([p, err]).tolist())


class ScanStatistics:
    """Slab observer that accumulates a scan's statistics; :meth:`to_dict` gives them.

    ``resolved``: the conversion's thresholds; when None (no mask asked for) the thresholds of
    ``spec`` are resolved here when the calibration allows, else in-mask numbers are None.
    """

    def __init__(self, header: ScancoHeader, resolved: Optional[ResolvedThresholds] = None,
                 spec: Optional[ThresholdSpec] = None):
        self.header = header
        self.dtype = np.dtype(header.voxel_type)
        self.converter = UnitConverter(header.calibration, path=header.path)
        self.char = self.dtype.kind in "iu" and self.dtype.itemsize == 1
        if resolved is None and spec is not None and not self.char:
            try:
                resolved = resolve_thresholds(spec, header.calibration, voxel_type=header.voxel_type,
                                              header_max_data_value=header.raw_field("max_data_value"),
                                              path=header.path)
            except (ScancoError, ValueError):
                resolved = None
        self.resolved = None if self.char else resolved
        self.counted = self.dtype.kind in "iu" and self.dtype.itemsize <= 2
        self.n = 0
        if self.counted:
            self.counts = np.zeros(1 << (8 * self.dtype.itemsize), dtype=np.int64)
        else:
            self._min = None
            self._max = None
            self._sums: Dict[str, list] = {"density": [], "density_mask": [], "hu": []}
            self._mask_n = 0
            self._density_mask_sq = []  # per slab (values, for the SD after the mean is known)

    # ---- the observer --------------------------------------------------------------------------
    def observe(self, z0: int, native: np.ndarray, outputs=None) -> None:
        if native.size == 0:
            return
        self.n += native.size
        if self.counted:
            unsigned = np.ascontiguousarray(native).reshape(-1).view(f"u{self.dtype.itemsize}")
            self.counts += np.bincount(unsigned, minlength=self.counts.size)
            return
        flat = np.asarray(native).reshape(-1)
        finite = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
        if finite.size:
            lo, hi = finite.min().item(), finite.max().item()
            self._min = lo if self._min is None else min(self._min, lo)
            self._max = hi if self._max is None else max(self._max, hi)
        if self._usable(_DENSITY) and flat.dtype.kind in "iu":
            density = self.converter.native_to(flat, _DENSITY)
            self._sums["density"].append(float(np.sum(density)))
            if self.resolved is not None:
                inside = (flat >= self.resolved.native_low) & (flat <= self.resolved.native_high)
                self._mask_n += int(np.count_nonzero(inside))
                self._sums["density_mask"].append(float(np.sum(density[inside])))
                self._density_mask_sq.append((float(np.sum(density[inside] ** 2))))
        elif self.resolved is not None and flat.dtype.kind in "iu":
            self._mask_n += int(np.count_nonzero((flat >= self.resolved.native_low)
                                                 & (flat <= self.resolved.native_high)))
        if self._usable("hu") and flat.dtype.kind in "iu":
            self._sums["hu"].append(float(np.sum(self.converter.native_to(flat, "hu"))))

    __call__ = observe

    def observe_rows(self, z0: int, y0: int, native: np.ndarray, outputs=None) -> None:
        """A piece of rows of one slice (the engine splits slices over its memory budget): every
        statistic here is a sum over voxels, so a piece counts as any slab does."""
        self.observe(z0, native, outputs)

    def add_histogram(self, histogram: np.ndarray) -> None:
        """Take a whole scan's exact native histogram at once (the engine's ``native_histogram``:
        bin 0 = the dtype's minimum) instead of observing its slabs: the same counts, no second bincount."""
        if not self.counted:
            raise ValueError("only 8- and 16-bit scans have a native histogram")
        counts = np.asarray(histogram, dtype=np.int64)
        if counts.size != self.counts.size:
            raise ValueError(f"a histogram of {counts.size} bins does not fit {self.dtype.name} data")
        if self.dtype.kind == "i":  # bin 0 is the minimum; here index = the value's unsigned bit pattern
            counts = np.roll(counts, -(self.counts.size // 2))
        self.counts += counts
        self.n += int(counts.sum())

    def _usable(self, quantity: str) -> bool:
        return not self.char and self.dtype.kind in "iu" and self.converter.can_convert(quantity)

    # ---- results -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The statistics (keys :data:`STATISTICS_FIELDS` plus ``"method"``); None where undefined."""
        return self._counted() if self.counted else self._summed()

    def _base(self, mask_voxels: Optional[int]) -> dict:
        voxel_mm3 = float(np.prod(np.asarray(self.header.voxel_size_mm, dtype=np.float64)))
        return {
            "voxel_count": self.n,
            "mask_voxels": mask_voxels,
            "mask_volume_mm3": None if mask_voxels is None else mask_voxels * voxel_mm3,
            "mask_fraction": None if mask_voxels is None or not self.n else mask_voxels / self.n,
        }

    def _counted(self) -> dict:
        present = np.flatnonzero(self.counts)
        counts = self.counts[present]
        natives = present.astype(f"u{self.dtype.itemsize}").view(self.dtype).astype(np.int64)
        if self.char:
            mask_voxels = int(counts[natives != 0].sum())
        elif self.resolved is not None:
            inside = (natives >= self.resolved.native_low) & (natives <= self.resolved.native_high)
            mask_voxels = int(counts[inside].sum())
        else:
            inside, mask_voxels = None, None
        out = self._base(mask_voxels)
        out["native_min"] = int(natives.min()) if natives.size else None
        out["native_max"] = int(natives.max()) if natives.size else None
        out["density_mean_mg_ha_ccm"] = out["density_mean_in_mask_mg_ha_ccm"] = None
        out["density_sd_in_mask_mg_ha_ccm"] = out["hu_mean"] = None
        if self.n and self._usable(_DENSITY):
            density = self.converter.native_to(natives, _DENSITY)
            out["density_mean_mg_ha_ccm"] = exact_dot(counts, density) / self.n
            if inside is not None and mask_voxels:
                mean = exact_dot(counts[inside], density[inside]) / mask_voxels
                deviation = (density[inside] - mean) ** 2
                out["density_mean_in_mask_mg_ha_ccm"] = mean
                out["density_sd_in_mask_mg_ha_ccm"] = math.sqrt(exact_dot(counts[inside], deviation) / mask_voxels)
        if self.n and self._usable("hu"):
            out["hu_mean"] = exact_dot(counts, self.converter.native_to(natives, "hu")) / self.n
        out["method"] = "exact: int64 count per native value, correctly rounded sums (math.fsum)"
        return {k: out[k] for k in STATISTICS_FIELDS + ("method",)}

    def _summed(self) -> dict:
        mask_voxels = self._mask_n if self.resolved is not None else None
        out = self._base(mask_voxels)
        out["native_min"], out["native_max"] = self._min, self._max
        density = self._sums["density"]
        out["density_mean_mg_ha_ccm"] = math.fsum(density) / self.n if density and self.n else None
        out["density_mean_in_mask_mg_ha_ccm"] = out["density_sd_in_mask_mg_ha_ccm"] = None
        if self._sums["density_mask"] and mask_voxels:
            mean = math.fsum(self._sums["density_mask"]) / mask_voxels
            var = max(0.0, math.fsum(self._density_mask_sq) / mask_voxels - mean * mean)
            out["density_mean_in_mask_mg_ha_ccm"] = mean
            out["density_sd_in_mask_mg_ha_ccm"] = math.sqrt(var)
        hu = self._sums["hu"]
        out["hu_mean"] = math.fsum(hu) / self.n if hu and self.n else None
        out["method"] = "float64 sums per slab (int32 or float natives): close, not exact"
        return {k: out[k] for k in STATISTICS_FIELDS + ("method",)}
