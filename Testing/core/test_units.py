"""UnitConverter against float64 references computed here, over the whole int16 range."""

import json
import math
import struct

import numpy as np
import pytest

from ScancoUnitsLib.core import units
from ScancoUnitsLib.errors import CalibrationMissingError
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.core.units import UnitConverter, describe_calibration

CALIBRATIONS = {
    # XtremeCT II (Bonelab IPL log)
    "xct2": Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                        density_intercept=-391.209015, density_unit="mg HA/ccm"),
    # BHS transcript
    "bhs": Calibration(mu_scaling=8192, mu_water_per_cm=0.2366, density_slope=1652.92004,
                       density_intercept=-396.799988),
    # scanco-format.md 3.5 worked example
    "ucT": Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52,
                       density_intercept=-196.6),
    # HU exceeds int16 at both ends of the native range
    "overflow": Calibration(mu_scaling=4096, mu_water_per_cm=0.2366, density_slope=1200.0,
                            density_intercept=-250.0),
    # odd, non-integer constants
    "odd": Calibration(mu_scaling=1.75, mu_water_per_cm=3.1, density_slope=-17.25,
                       density_intercept=1e4),
}

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int64)


def reference(native, cal, quantity):
    """Independent float64 reference, written out per quantity."""
    x = np.asarray(native).astype(np.float64)
    ms, mw = float(cal.mu_scaling), float(cal.mu_water_per_cm)
    if quantity == "mu":
        return x / ms
    if quantity == "hu":
        return x * 1000.0 / (ms * mw) - 1000.0
    rho = (x / ms) * float(cal.density_slope) + float(cal.density_intercept)
    return rho / 1000.0 if quantity == "density_g_cc" else rho


def python_hu(native, cal):
    """Same formula with plain Python floats (no numpy)."""
    return native * 1000.0 / (cal.mu_scaling * cal.mu_water_per_cm) - 1000.0


def bits32(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("name", sorted(CALIBRATIONS))
@pytest.mark.parametrize("quantity", ["mu", "density_mg_ha_ccm", "density_g_cc"])
def test_float_quantities_bit_exact_over_int16(name, quantity):
    cal = CALIBRATIONS[name]
    native = ALL_INT16.astype(np.int16)
    got = UnitConverter(cal).convert(native, quantity)
    assert got.dtype == np.float32 and got.shape == native.shape
    expected = reference(ALL_INT16, cal, quantity).astype(np.float32)
    np.testing.assert_array_equal(bits32(got), bits32(expected))
    # the ends of the range explicitly
    assert got[0] == np.float32(reference(np.array([-32768]), cal, quantity)[0])
    assert got[-1] == np.float32(reference(np.array([32767]), cal, quantity)[0])


@pytest.mark.parametrize("name", sorted(CALIBRATIONS))
def test_hu_int16_rint_and_clip_over_int16(name):
    cal = CALIBRATIONS[name]
    conv = UnitConverter(cal)
    got = conv.convert(ALL_INT16.astype(np.int16), "hu")
    assert got.dtype == np.int16
    ref = reference(ALL_INT16, cal, "hu")
    rounded = np.rint(ref)
    expected_clipped = int(np.sum(rounded > 32767) + np.sum(rounded < -32768))
    np.testing.assert_array_equal(got, np.clip(rounded, -32768, 32767).astype(np.int16))
    assert conv.last_hu_clipped_voxels == expected_clipped
    assert conv.hu_clipped_voxels == expected_clipped
    # spot check against Python floats and Python's own round (also half to even)
    for n in (-32768, -1, 0, 1, 2105, 8192, 32767):
        value = round(python_hu(n, cal))
        assert got[n + 32768] == min(max(value, -32768), 32767)


def test_hu_overflow_calibration_really_clips_and_counter_accumulates():
    cal = CALIBRATIONS["overflow"]
    conv = UnitConverter(cal)
    native = np.array([-32768, 0, 32767], dtype=np.int16)
    out = conv.convert(native, "hu")
    assert python_hu(32767, cal) > 32767 and python_hu(-32768, cal) < -32768
    assert out.tolist() == [-32768, -1000, 32767]
    assert conv.last_hu_clipped_voxels == 2
    conv.convert(native[1:], "hu")
    assert conv.last_hu_clipped_voxels == 1 and conv.hu_clipped_voxels == 3
    # float32 HU is never clipped
    f = conv.convert(native, "hu", hu_dtype="float32")
    assert f[-1] == np.float32(python_hu(32767, cal)) and f[-1] > 32767
    assert conv.last_hu_clipped_voxels == 0


def test_hu_rounds_half_to_even():
    # mu_scaling * mu_water = 2000 exactly -> HU = native / 2 - 1000: odd natives land on .5
    cal = Calibration(mu_scaling=4000, mu_water_per_cm=0.5)
    native = np.array([1, 3, 5, -1, -3], dtype=np.int16)
    # -999.5 -> -1000, -998.5 -> -998, -997.5 -> -998, -1000.5 -> -1000, -1001.5 -> -1002
    assert UnitConverter(cal).convert(native, "hu").tolist() == [-1000, -998, -998, -1000, -1002]
    assert UnitConverter(cal).convert(native.astype(np.int32), "hu").tolist() == \
        [-1000, -998, -998, -1000, -1002]


@pytest.mark.parametrize("name", ["xct2", "overflow", "odd"])
def test_hu_float32_bit_exact(name):
    cal = CALIBRATIONS[name]
    got = UnitConverter(cal).convert(ALL_INT16.astype(np.int16), "hu", hu_dtype="float32")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(bits32(got), bits32(reference(ALL_INT16, cal, "hu")))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "uint16", "int32", "int64", "float32", "float64"])
@pytest.mark.parametrize("quantity", ["mu", "hu", "density_mg_ha_ccm", "density_g_cc"])
def test_other_native_dtypes_match_reference(dtype, quantity):
    cal = CALIBRATIONS["overflow"]
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None and info.bits <= 16:
        values = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)
    else:
        values = np.concatenate([ALL_INT16, [-10**6, 10**6]])
    native = values.astype(dtype)
    ref = reference(native, cal, quantity)
    conv = UnitConverter(cal)
    got = conv.convert(native, quantity)
    if quantity == "hu":
        rounded = np.rint(ref)
        np.testing.assert_array_equal(got, np.clip(rounded, -32768, 32767).astype(np.int16))
        assert conv.last_hu_clipped_voxels == int(np.sum(rounded > 32767) + np.sum(rounded < -32768))
    else:
        np.testing.assert_array_equal(bits32(got), bits32(ref))


def test_fractional_float_natives():
    cal = CALIBRATIONS["ucT"]
    native = np.array([0.25, -7.5, 8191.75, 1e-3], dtype=np.float64)
    got = UnitConverter(cal).convert(native, "density_mg_ha_ccm")
    expected = [np.float32((v / 4096.0) * 355.52 + -196.6) for v in native.tolist()]
    assert got.tolist() == [float(e) for e in expected]


def test_chunked_paths_with_ragged_last_chunk(monkeypatch):
    monkeypatch.setattr(units, "_CHUNK_VOXELS", 1000)
    cal = CALIBRATIONS["overflow"]
    rng = np.random.default_rng(1)
    slab = rng.integers(-32768, 32768, size=(3, 37, 41)).astype(np.int16)  # 4551 voxels
    conv = UnitConverter(cal)
    lut = conv.convert(slab, "hu")
    ref = np.rint(reference(slab.astype(np.int64), cal, "hu"))
    np.testing.assert_array_equal(lut, np.clip(ref, -32768, 32767))
    assert conv.last_hu_clipped_voxels == int(np.sum((ref > 32767) | (ref < -32768)))
    f64 = conv.convert(slab.astype(np.int32), "hu")
    np.testing.assert_array_equal(lut, f64)
    assert conv.last_hu_clipped_voxels == int(np.sum((ref > 32767) | (ref < -32768)))


def test_out_buffer_is_filled_and_returned():
    conv = UnitConverter(CALIBRATIONS["xct2"])
    slab = np.arange(-60, 60, dtype=np.int16).reshape(2, 3, 20)
    out = np.full(slab.shape, -1.0, dtype=np.float32)
    result = conv.convert(slab, "mu", out=out)
    assert result is out
    np.testing.assert_array_equal(out, (slab.astype(np.float64) / 8192).astype(np.float32))


def test_non_contiguous_input():
    conv = UnitConverter(CALIBRATIONS["bhs"])
    base = np.arange(-500, 500, dtype=np.int16).reshape(10, 100)
    view = base[:, ::3]
    got = conv.convert(view, "hu")
    np.testing.assert_array_equal(got, conv.convert(np.ascontiguousarray(view), "hu"))


@pytest.mark.parametrize("bad_out", [
    np.empty((2, 3), dtype=np.float64),            # wrong dtype
    np.empty((3, 2), dtype=np.float32),            # wrong shape
    np.empty((2, 6), dtype=np.float32)[:, ::2],    # not contiguous
])
def test_bad_out_refused(bad_out):
    with pytest.raises(ValueError):
        UnitConverter(CALIBRATIONS["xct2"]).convert(np.zeros((2, 3), np.int16), "mu", out=bad_out)


def test_bad_arguments_refused():
    conv = UnitConverter(CALIBRATIONS["xct2"])
    with pytest.raises(ValueError, match="unknown quantity"):
        conv.convert(np.zeros(3, np.int16), "bmd")
    with pytest.raises(ValueError, match="hu_dtype"):
        conv.convert(np.zeros(3, np.int16), "hu", hu_dtype="int32")
    with pytest.raises(ValueError, match="integers or floats"):
        conv.convert(np.zeros(3, np.complex64), "mu")
    with pytest.raises(ValueError, match="NaN"):
        conv.convert(np.array([1.0, np.nan]), "hu")
    assert np.isnan(conv.convert(np.array([1.0, np.nan]), "hu", hu_dtype="float32")[1])


@pytest.mark.parametrize("cal, quantity, field", [
    (Calibration(), "mu", "mu_scaling"),
    (Calibration(mu_scaling=1, mu_water_per_cm=0.24), "hu", "mu_scaling"),
    (Calibration(mu_scaling=8192), "hu", "mu_water"),
    (Calibration(mu_scaling=8192, mu_water_per_cm=0.0), "hu", "mu_water"),
    (Calibration(mu_scaling=8192, mu_water_per_cm=-0.2), "hu", "mu_water"),
    (Calibration(mu_scaling=8192, density_intercept=-3.0), "density_mg_ha_ccm", "slope"),
    (Calibration(mu_scaling=8192, density_slope=float("nan"), density_intercept=-3.0),
     "density_g_cc", "slope"),
    (Calibration(mu_scaling=8192, density_slope=1600.0), "density_mg_ha_ccm", "intercept"),
    (Calibration(mu_scaling=float("nan"), mu_water_per_cm=0.2), "hu", "mu_scaling"),
])
def test_unusable_calibration_refused(cal, quantity, field):
    conv = UnitConverter(cal, path="scan.ISQ")
    assert not conv.can_convert(quantity)
    with pytest.raises(CalibrationMissingError) as info:
        conv.convert(np.zeros(4, np.int16), quantity)
    assert info.value.path == "scan.ISQ" and info.value.quantity == quantity
    assert any(field in m for m in info.value.missing_fields)
    with pytest.raises(CalibrationMissingError):
        conv.native_to(0, quantity)
    with pytest.raises(CalibrationMissingError):
        conv.to_native(0, quantity)


def test_none_calibration_means_nothing_available():
    conv = UnitConverter(None)
    assert not any(conv.can_convert(q) for q in units.QUANTITIES)


def test_scalar_helpers_and_inverses():
    cal = CALIBRATIONS["xct2"]
    conv = UnitConverter(cal)
    assert conv.native_to_mu(9830) == 9830 / 8192
    assert conv.native_to_hu(9830) == python_hu(9830, cal)
    assert conv.native_to_density(9830) == (9830 / 8192) * 1603.51904 + -391.209015
    assert conv.native_to(9830, "density_g_cc") == ((9830 / 8192) * 1603.51904 - 391.209015) / 1000
    for n in (-32768, -1, 0, 2586, 9830, 32767):
        assert conv.mu_to_native(conv.native_to_mu(n)) == pytest.approx(n, abs=1e-9)
        assert conv.hu_to_native(conv.native_to_hu(n)) == pytest.approx(n, abs=1e-9)
        assert conv.density_to_native(conv.native_to_density(n)) == pytest.approx(n, abs=1e-9)
        assert conv.to_native(conv.native_to(n, "density_g_cc"), "density_g_cc") == \
            pytest.approx(n, abs=1e-9)
    # inverse formulas written out
    assert conv.hu_to_native(0.0) == pytest.approx(8192 * 0.2409, rel=1e-15)
    assert conv.density_to_native(-391.209015) == 0.0
    # arrays work too
    np.testing.assert_allclose(conv.native_to_mu(np.array([8192, 16384])), [1.0, 2.0])


def test_describe_is_json_safe_and_affine_maps_agree():
    cal = CALIBRATIONS["xct2"]
    d = UnitConverter(cal).describe()
    json.dumps(d)
    assert d["mu_scaling"] == 8192 and d["mu_water_per_cm"] == 0.2409
    assert d["density_slope"] == 1603.51904 and d["density_intercept"] == -391.209015
    assert d["density_unit_in_file"] == "mg HA/ccm"
    native = ALL_INT16[::97]
    for quantity, entry in d["quantities"].items():
        assert entry["available"] and entry["missing"] == []
        affine = entry["scale"] * native.astype(np.float64) + entry["offset"]
        np.testing.assert_allclose(affine, reference(native, cal, quantity), rtol=1e-12, atol=1e-9)
    assert d["quantities"]["hu"]["unit"] == "HU"
    assert d["quantities"]["density_g_cc"]["unit"] == "g HA/cc"

    partial = describe_calibration(Calibration(mu_scaling=4096, density_slope=float("nan")))
    json.dumps(partial)
    assert partial["density_slope"] is None
    assert partial["quantities"]["mu"]["available"]
    assert partial["quantities"]["hu"]["scale"] is None
    assert not partial["quantities"]["density_mg_ha_ccm"]["available"]


def test_float32_cast_matches_struct_rounding():
    # float32 rounding done outside numpy: struct packs a double to the nearest float
    cal = CALIBRATIONS["odd"]
    got = UnitConverter(cal).convert(np.array([-32768, -3, 0, 7, 32767], np.int16), "density_g_cc")
    for n, g in zip((-32768, -3, 0, 7, 32767), got.tolist()):
        rho = ((n / 1.75) * -17.25 + 1e4) / 1000.0
        assert g == struct.unpack("<f", struct.pack("<f", rho))[0]
        assert math.isfinite(g)


@pytest.mark.parametrize("name", sorted(CALIBRATIONS))
@pytest.mark.parametrize("quantity", units.QUANTITIES)
def test_float64_helpers_follow_the_documented_operation_order(name, quantity):
    # float64 equality, bit for bit: a different operation order differs in the last bits
    cal = CALIBRATIONS[name]
    got = UnitConverter(cal).native_to(ALL_INT16, quantity)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got.view(np.uint64), reference(ALL_INT16, cal, quantity).view(np.uint64))


def test_big_endian_input():
    native = np.array([-32768, -1, 0, 9830, 32767], dtype=">i2")
    conv = UnitConverter(CALIBRATIONS["xct2"])
    np.testing.assert_array_equal(conv.convert(native, "hu"),
                                  conv.convert(native.astype(np.int16), "hu"))
