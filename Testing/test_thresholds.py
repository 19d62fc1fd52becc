"""Thresholds: IPL's per-mille rule, IPL's printed logs, the mask rule, refusals, properties."""

import json
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ScancoUnitsLib import thresholds
from ScancoUnitsLib.errors import CalibrationMissingError
from ScancoUnitsLib.header import Calibration
from ScancoUnitsLib.thresholds import (ThresholdSpec, mask_from_char, permille_to_native,
                                       resolve_thresholds)

XCT2 = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                   density_intercept=-391.209015, density_unit="mg HA/ccm")
BHS = Calibration(mu_scaling=8192, mu_water_per_cm=0.2366, density_slope=1652.92004,
                  density_intercept=-396.799988, density_unit="mg HA/ccm")


# ---- per-mille rule -------------------------------------------------------------------------------
def test_permille_rule_known_values():
    assert permille_to_native(250) == (8191.75, 8192)
    assert permille_to_native(300) == (pytest.approx(9830.1, abs=1e-9), 9830)
    assert permille_to_native(1000) == (32767.0, 32767)
    assert permille_to_native(0) == (0.0, 0)
    assert permille_to_native(130)[1] == 4260          # 4259.71 rounds up (ORMIR's 4259 truncates)
    assert permille_to_native(-250) == (-8191.75, -8192)
    assert permille_to_native(1200)[1] == 39320         # not clipped here; resolve_thresholds clips


def test_permille_rounds_half_away_from_zero():
    assert permille_to_native(500, reference=5) == (2.5, 3)     # half-to-even would give 2
    assert permille_to_native(-500, reference=5) == (-2.5, -3)
    assert permille_to_native(500, reference=3) == (1.5, 2)
    assert permille_to_native(0.5, reference=1000) == (0.5, 1)


def test_permille_product_is_exact():
    # in float64, 145 / 1000 * 100 is 14.499999999999998, which would round to 14
    assert 145 / 1000 * 100 < 14.5
    assert permille_to_native(145, reference=100) == (14.5, 15)
    assert permille_to_native(72.5, reference=200) == (14.5, 15)
    assert permille_to_native(2.5, reference=1000) == (2.5, 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "300", None, True])
def test_permille_bad_input(bad):
    with pytest.raises(ValueError):
        permille_to_native(bad)


def test_permille_bad_reference():
    for ref in (0, -5, float("nan"), None):
        with pytest.raises(ValueError):
            permille_to_native(300, reference=ref)


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=-2000, max_value=2000, places=3, allow_nan=False))
def test_permille_against_decimal_reference(value):
    exact = value * Decimal(32767) / Decimal(1000)
    expected = int(exact.to_integral_value(rounding=ROUND_HALF_UP))  # ROUND_HALF_UP: away from 0
    product, native = permille_to_native(float(value))
    assert native == expected
    assert product == float(exact)


# ---- IPL logs -------------------------------------------------------------------------------------
def test_xtremect2_ipl_log():
    """Bonelab test log: 'Setting input unit 0 to 6: Permille', thresholds 300 / 1000."""
    r = resolve_thresholds(ThresholdSpec(300, 1000, "permille"), XCT2)
    assert (r.native_low, r.native_high) == (9830, 32767)
    assert r.clipped == (False, False)
    v = r.values
    assert round(v["mu"][0], 4) == 1.2000 and v["mu"][0] == pytest.approx(1.19995, abs=5e-6)
    assert round(v["mu"][1], 3) == 4.000
    assert v["density_mg_ha_ccm"][0] == pytest.approx(1532.9355, abs=1e-4)
    assert v["density_mg_ha_ccm"][1] == pytest.approx(6022.671, abs=1e-3)
    assert v["hu"][0] == pytest.approx(3981.1174, abs=1e-4)
    assert v["hu"][1] == pytest.approx(15603.894, abs=2e-3)   # IPL printed ...894, float64 ...8934
    assert v["density_g_cc"][0] == pytest.approx(1.5329355, abs=1e-7)
    assert v["permille"][1] == 1000.0
    assert v["native"] == (9830.0, 32767.0)


def test_bhs_ipl_log_density_thresholds():
    """BHS /seg_gauss -unit 2: lower 125, upper 100000 mg HA/ccm."""
    r = resolve_thresholds(ThresholdSpec(125, 100000, "density"), BHS, path="bhs.AIM")
    assert (r.native_low, r.native_high) == (2586, 32767)
    assert r.clipped == (False, True)
    assert r.exact_low == pytest.approx(2586.08, abs=0.01)
    assert r.exact_high > 32767
    assert round(r.values["permille"][0], 2) == 78.92
    assert round(r.values["permille"][0] + 0.01, 3) == 78.931   # IPL's printed value carries +0.01
    assert r.values["permille"][1] == 1000.0
    assert r.values["density_mg_ha_ccm"][0] == pytest.approx(124.9836, abs=1e-4)
    assert r.values["density_mg_ha_ccm"][1] == pytest.approx(6214.679, abs=1e-3)
    assert r.values["hu"][0] == pytest.approx(334.2089, abs=1e-4)
    assert r.values["hu"][1] == pytest.approx(15905.655, abs=1e-3)
    assert r.values["mu"][0] == pytest.approx(0.3157, abs=1e-4)


def test_worked_example_250_permille():
    cal = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52,
                      density_intercept=-196.6)
    r = resolve_thresholds(ThresholdSpec(250, 1000), cal)
    assert r.exact_low == 8191.75 and r.native_low == 8192
    assert r.values["mu"] == (2.0, 32767 / 4096)
    assert r.values["hu"][0] == pytest.approx(2891.05, abs=0.01)
    assert r.values["density_mg_ha_ccm"][0] == pytest.approx(514.44, abs=0.01)
    assert r.values["hu"][1] == pytest.approx(14563.73, abs=0.01)
    assert r.values["density_mg_ha_ccm"][1] == pytest.approx(2647.47, abs=0.01)


# ---- header-max reading (seed notebook) ------------------------------------------------------------
def notebook_native(fraction, max_val):
    """The seed notebook: mu_low = mu_threshold_low * max_val (native, not rounded)."""
    return fraction * max_val


def test_header_max_with_32767_equals_ipl():
    spec = ThresholdSpec(250, 1000, permille_reference="header-max")
    r = resolve_thresholds(spec, XCT2, header_max_data_value=32767.0)
    ipl = resolve_thresholds(ThresholdSpec(250, 1000), XCT2)
    assert r.exact_low == notebook_native(0.250, 32767.0)
    assert (r.native_low, r.native_high) == (ipl.native_low, ipl.native_high) == (8192, 32767)
    assert r.permille_reference == 32767.0


def test_header_max_with_8806_differs():
    spec = ThresholdSpec(250, 1000, permille_reference="header-max")
    r = resolve_thresholds(spec, XCT2, header_max_data_value=8806)
    assert r.exact_low == notebook_native(0.250, 8806) == 2201.5
    assert (r.native_low, r.native_high) == (2202, 8806)
    assert r.native_low != resolve_thresholds(ThresholdSpec(250, 1000), XCT2).native_low
    assert r.to_dict()["permille_reference_value"] == 8806.0
    # the per-mille expression stays IPL's (native / 32.767)
    assert r.values["permille"][1] == pytest.approx(8806 / 32.767)


def test_header_max_missing_is_an_error():
    spec = ThresholdSpec(250, 1000, permille_reference="header-max")
    for bad in (None, 0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="Maximum data value"):
            resolve_thresholds(spec, XCT2, header_max_data_value=bad)


# ---- other units --------------------------------------------------------------------------------
def test_mu_and_hu_and_native_specs():
    r = resolve_thresholds(ThresholdSpec(0.5, 4.0, "mu"), XCT2)
    assert (r.native_low, r.native_high) == (4096, 32767)   # 4 * 8192 = 32768 -> clipped
    assert r.clipped == (False, True)
    hu = resolve_thresholds(ThresholdSpec(-1000, 0, "hu"), XCT2)
    assert hu.native_low == 0 and hu.native_high == round(8192 * 0.2409)  # 1973.45 -> 1973
    nat = resolve_thresholds(ThresholdSpec(-40000, 4259.5, "native"), None)
    assert (nat.native_low, nat.native_high) == (-32768, 4260)
    assert nat.clipped == (True, False)
    assert nat.values["hu"] is None and nat.values["mu"] is None


def test_negative_slope_keeps_the_range():
    cal = Calibration(mu_scaling=1000, density_slope=-100.0, density_intercept=0.0)
    r = resolve_thresholds(ThresholdSpec(-200, -100, "density"), cal)
    assert (r.native_low, r.native_high) == (1000, 2000)


def test_uncalibrated_refused_with_fields_named():
    for unit, field in (("hu", "mu_water"), ("density", "density slope"), ("mu", "mu_scaling")):
        with pytest.raises(CalibrationMissingError) as info:
            resolve_thresholds(ThresholdSpec(1, 2, unit), Calibration(), path="x.AIM")
        assert any(field in m for m in info.value.missing_fields)
        assert "x.AIM" in str(info.value)
    with pytest.raises(CalibrationMissingError) as info:
        resolve_thresholds(ThresholdSpec(1, 2, "hu"), Calibration(mu_scaling=8192))
    assert info.value.missing_fields == ("mu_water (must be > 0)",)
    with pytest.raises(CalibrationMissingError):
        resolve_thresholds(ThresholdSpec(1, 2, "density"), None)


def test_permille_works_without_calibration_and_partial_values():
    r = resolve_thresholds(ThresholdSpec(300, 1000), Calibration(mu_scaling=8192))
    assert r.native_low == 9830
    assert r.values["mu"] == (9830 / 8192, 32767 / 8192)
    assert r.values["hu"] is None and r.values["density_mg_ha_ccm"] is None
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["values"]["hu"] is None and d["native"] == [9830, 32767]
    assert d["exact_native"] == [pytest.approx(9830.1), 32767.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(low=2, high=1), "above"),
    (dict(low=float("nan"), high=1), "finite"),
    (dict(low=0, high=float("inf")), "finite"),
    (dict(low="1", high=2), "finite"),
    (dict(low=True, high=2), "finite"),
    (dict(low=1, high=2, unit="bmd"), "unknown threshold unit"),
    (dict(low=1, high=2, permille_reference="max"), "per-mille reference"),
])
def test_spec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThresholdSpec(**kwargs)


def test_spec_is_frozen():
    spec = ThresholdSpec(1, 2)
    with pytest.raises(Exception):
        spec.low = 0


# ---- mask -----------------------------------------------------------------------------------------
def test_mask_inclusive_bounds():
    r = resolve_thresholds(ThresholdSpec(300, 1000), None)
    slab = np.array([[-32768, 9829, 9830, 9831], [20000, 32766, 32767, 0]], dtype=np.int16)
    m = r.mask(slab)
    assert m.dtype == np.uint8
    assert m.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    r2 = resolve_thresholds(ThresholdSpec(-5, 5, "native"), None)
    assert r2.mask(np.arange(-7, 8, dtype=np.int16)).tolist() == [0, 0] + [1] * 11 + [0, 0]


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "float32", "float64"])
def test_mask_against_reference(dtype, monkeypatch):
    monkeypatch.setattr(thresholds, "_MASK_CHUNK_VOXELS", 500)   # several chunks, ragged end
    rng = np.random.default_rng(7)
    slab = rng.integers(-32768, 32768, size=(3, 29, 31)).astype(dtype)
    r = resolve_thresholds(ThresholdSpec(125, 1500, "density"), BHS)
    expected = ((slab >= r.native_low) & (slab <= r.native_high)).astype(np.uint8)
    out = np.full(slab.shape, 9, dtype=np.uint8)
    assert r.mask(slab, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out)) <= {0, 1}


def test_mask_uint16_with_negative_low_and_out_of_range():
    r = resolve_thresholds(ThresholdSpec(-100, 10, "native"), None)
    assert r.mask(np.array([0, 10, 11, 65535], np.uint16)).tolist() == [1, 1, 0, 0]
    low = resolve_thresholds(ThresholdSpec(-30000, -20000, "native"), None)
    assert low.mask(np.array([0, 1, 65535], np.uint16)).tolist() == [0, 0, 0]


def test_mask_float_fractional_values():
    r = resolve_thresholds(ThresholdSpec(10, 20, "native"), None)
    slab = np.array([9.999, 10.0, 20.0, 20.001, np.nan], np.float32)
    assert r.mask(slab).tolist() == [0, 1, 1, 0, 0]


def test_mask_refuses_char_for_calibrated_units_and_bad_out():
    r = resolve_thresholds(ThresholdSpec(300, 1000), None)
    with pytest.raises(ValueError, match="char"):
        r.mask(np.zeros(4, np.int8))
    native = resolve_thresholds(ThresholdSpec(1, 127, "native"), None)
    assert native.mask(np.array([0, 127, -127], np.int8)).tolist() == [0, 1, 0]
    with pytest.raises(ValueError):
        r.mask(np.zeros(4, np.int16), out=np.zeros(4, np.int16))
    with pytest.raises(ValueError):
        r.mask(np.zeros(4, np.int16), out=np.zeros(5, np.uint8))


def test_mask_from_char():
    slab = np.array([[0, 127, -127], [1, 0, -1]], np.int8)
    out = np.full(slab.shape, 5, np.uint8)
    assert mask_from_char(slab, out=out) is out
    assert out.tolist() == [[0, 1, 1], [1, 0, 1]]
    assert mask_from_char(np.array([0, 255], np.uint8)).tolist() == [0, 1]


# ---- round-trip property ---------------------------------------------------------------------------
calibrations = st.builds(
    Calibration,
    mu_scaling=st.sampled_from([1024, 2048, 4096, 8192, 16384]) | st.floats(100, 20000),
    mu_water_per_cm=st.floats(0.1, 2.0),
    density_slope=st.floats(50, 5000),
    density_intercept=st.floats(-1000, 1000),
)


@settings(max_examples=300, deadline=None)
@given(cal=calibrations, native=st.integers(-32768, 32767),
       unit=st.sampled_from(["permille", "native", "mu", "hu", "density"]))
def test_threshold_in_any_unit_round_trips_to_same_native(cal, native, unit):
    key = {"density": "density_mg_ha_ccm"}.get(unit, unit)
    value = resolve_thresholds(ThresholdSpec(native, native, "native"), cal).values[key][0]
    r = resolve_thresholds(ThresholdSpec(value, value, unit), cal)
    assert r.native_low == r.native_high == native
    assert r.values[key][0] == value
