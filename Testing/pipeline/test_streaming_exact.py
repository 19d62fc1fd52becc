"""Streaming conversion equals the whole-volume float64 reference, bit for bit, whatever the slab size.

Each case writes a small scan, converts it with several slab sizes (1 slice, sizes that do not divide
the depth, the whole volume in one slab, the default), reads every output back with pynrrd and
compares it with the reference computed here on the whole volume at once, in float64, straight from
the formulas (no ScancoUnitsLib conversion code): float outputs are compared as bit patterns, integer
outputs exactly. The per-output min/max and counts recorded in the metadata are checked too.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import nrrd
import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.pipeline.convert import ConversionRequest, convert_file
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.core.thresholds import ThresholdSpec

MICRO_CT = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                       density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp")
# small mu_scaling * mu_water: int16 HU clips at both ends; negative slope: density falls with native
EXTREME = Calibration(mu_scaling=100, mu_water_per_cm=0.2, density_slope=-512.25, density_intercept=37.5,
                      density_unit="mg HA/ccm", calibration_type=2, calibration_text="test")
INT16_MIN, INT16_MAX = -32768, 32767
SLABS = (1, 2, 5, None, 10_000)   # None: the converter's default slab size


def _volume(shape, dtype="int16", seed=0):
    info = np.iinfo(dtype)
    v = np.random.default_rng(seed).integers(int(info.min), int(info.max) + 1, size=shape, dtype=np.int64)
    v = v.astype(dtype)
    v.flat[0], v.flat[1] = info.min, info.max
    if info.min <= 8191 and 8192 <= info.max:
        v.flat[2], v.flat[3] = 8191, 8192      # both sides of the 250 per mille threshold
    v.flat[4] = 32767 if info.max >= 32767 else info.max
    return v


def _permille_native(permille) -> int:
    """IPL: 1000 per mille = native 32767, rounded to nearest, halves away from zero."""
    exact = Fraction(permille) / 1000 * 32767
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


def _references(native, cal, options: ConversionRequest):
    """role -> (expected array with the output's dtype, clipped HU voxel count)."""
    n = native.astype(np.float64)
    ms, mw = float(cal.mu_scaling), float(cal.mu_water_per_cm)
    slope, intercept = float(cal.density_slope), float(cal.density_intercept)
    hu = n * 1000.0 / (ms * mw) - 1000.0
    mu = n / ms
    rho = (n / ms) * slope + intercept
    if options.density_unit == "g/cc":
        rho = rho / 1000.0
    clipped = 0
    if options.hu_dtype == "int16":
        hu = np.rint(hu)
        clipped = int(np.count_nonzero((hu < INT16_MIN) | (hu > INT16_MAX)))
        hu = np.clip(hu, INT16_MIN, INT16_MAX).astype(np.int16)
    else:
        hu = hu.astype(np.float32)
    spec = options.thresholds
    low, high = _permille_native(spec.low), _permille_native(spec.high)
    mask = ((native.astype(np.int64) >= low) & (native.astype(np.int64) <= high)).astype(np.uint8)
    return {"hu": hu, "density": rho.astype(np.float32), "mu": mu.astype(np.float32), "mask": mask,
            "native": native.copy()}, clipped


def _same_bits(actual: np.ndarray, expected: np.ndarray) -> bool:
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    if expected.dtype.kind == "f":
        width = f"u{expected.dtype.itemsize}"
        return np.array_equal(actual.view(width), expected.view(width))
    return np.array_equal(actual, expected)


def _check_conversion(path, vol, cal, options: ConversionRequest, out: Path):
    written = convert_file(path, out, options)
    expected, clipped = _references(vol, cal, options)
    meta = json.loads(Path(written["metadata"]).read_text())
    for role in options.outputs:
        data, _header = nrrd.read(str(written[role]), index_order="C")
        data = data.astype(data.dtype.newbyteorder("="))
        want = expected[role]
        assert data.dtype == want.dtype, (role, data.dtype, want.dtype)
        assert data.shape == vol.shape, (role, data.shape)
        if not _same_bits(data, want):
            bad = np.argwhere(data != want)[0]
            raise AssertionError(f"{role} differs at z,y,x={tuple(bad)}: native {vol[tuple(bad)]} -> "
                                 f"{data[tuple(bad)]!r}, reference {want[tuple(bad)]!r} "
                                 f"(slab_slices={options.slab_slices})")
        recorded = meta["outputs"][role]
        lo, hi = want.min(), want.max()
        assert recorded["min"] == (float(lo) if want.dtype.kind == "f" else int(lo)), (role, recorded, lo)
        assert recorded["max"] == (float(hi) if want.dtype.kind == "f" else int(hi)), (role, recorded, hi)
    if "mask" in options.outputs:
        assert meta["mask_voxels"] == int(expected["mask"].sum())
    assert meta["hu_clipped_voxels"] == (clipped if "hu" in options.outputs else 0)


ALL_ROLES = ("hu", "density", "mask", "mu", "native")


@pytest.mark.parametrize("cal", [MICRO_CT, EXTREME], ids=["microct", "extreme"])
@pytest.mark.parametrize("variant", [
    dict(),
    dict(hu_dtype="float32", density_unit="mgHA/ccm", compress=True),
    dict(thresholds=ThresholdSpec(130, 612.5, "permille"), detached=True),
], ids=["raw-int16-gcc", "gzip-float32-mg", "detached-other-thresholds"])
def test_isq_streaming_equals_whole_volume_reference(tmp_path, cal, variant):
    vol = _volume((13, 17, 19), seed=1)
    path = S.write_isq(tmp_path / "S0000001.ISQ", vol, voxel_size_mm=(0.02, 0.02, 0.02), calibration=cal)
    for slab in SLABS:
        options = ConversionRequest(outputs=ALL_ROLES, slab_slices=slab, **variant)
        _check_conversion(path, vol, cal, options, tmp_path / f"out_{slab}")


def test_slabs_larger_than_the_converters_chunks(tmp_path):
    """Slabs of several chunks: the lookup-table and mask code work in chunks inside a slab."""
    from ScancoUnitsLib.core import thresholds
    from ScancoUnitsLib.core import units

    vol = _volume((5, 400, 1000), seed=2)
    assert 3 * 400 * 1000 > max(units._CHUNK_VOXELS, thresholds._MASK_CHUNK_VOXELS)
    path = S.write_isq(tmp_path / "S0000002.ISQ", vol, voxel_size_mm=(0.03, 0.03, 0.03), calibration=MICRO_CT)
    for slab in (3, None):
        options = ConversionRequest(outputs=ALL_ROLES, slab_slices=slab, compress=slab is None, threads=2)
        _check_conversion(path, vol, MICRO_CT, options, tmp_path / f"out_{slab}")


@pytest.mark.parametrize("dtype", ["uint16", "int32"])
def test_aim_streaming_equals_whole_volume_reference(tmp_path, dtype):
    """uint16 (lookup table, unsigned) and int32 (float64 path) AIMs."""
    vol = _volume((7, 11, 10), dtype=dtype, seed=3)
    if dtype == "int32":  # keep the mask thresholds meaningful and cover HU clipping at the top
        vol = np.clip(vol, -70000, 70000).astype(np.int32)
    path = S.write_aim(tmp_path / "A0000001.AIM", vol, version=30, voxel_size_mm=(0.02, 0.02, 0.02),
                       position_voxels=(3, 4, 5), calibration=EXTREME)
    for slab in (1, 3, None):
        options = ConversionRequest(outputs=ALL_ROLES, slab_slices=slab)
        _check_conversion(path, vol, EXTREME, options, tmp_path / f"out_{slab}")
