"""Thresholds: IPL's per-mille rule, IPL's printed logs, the mask rule, refusals, properties."""

import json
import os
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ScancoUnitsLib.core import thresholds
from ScancoUnitsLib.errors import CalibrationMissingError
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.core.thresholds import (ThresholdSpec, mask_from_char, permille_to_native,
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


# ---- char (mask) AIMs with the thresholds of a study (issue 20) ----------------------------------
def _cli(capsys, *argv):
    from ScancoUnitsLib.cli import main as cli

    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture()
def quiet_cli(monkeypatch):
    from ScancoUnitsLib.io import transaction as atomic_output

    monkeypatch.setattr(atomic_output, "install_signal_cleanup", lambda *a, **k: {})


def test_real_char_aim_with_study_thresholds_gives_its_mask_and_a_note(real_data, tmp_path, capsys, quiet_cli):
    """TRAB_1240_SEG.AIM --low 120 ended in 'internal error (ValueError: permille thresholds are not
    defined for char ...)'. Now: its non-zero voxels, and the thresholds recorded as not applied."""
    nrrd = pytest.importorskip("nrrd")

    from ScancoUnitsLib.formats.reader import read_volume

    seg = real_data / "TRAB_1240_SEG.AIM"
    status, out, err = _cli(capsys, "convert", seg, real_data / "CALLUS_1237.AIM", "-o", tmp_path,
                            "--low", "120", "--high", "1000", "--summary", tmp_path / "s.csv")
    assert status == 0, err
    assert "internal error" not in out + err
    mask = nrrd.read(str(tmp_path / "TRAB_1240_SEG_mask.nrrd"), index_order="C")[0]
    assert np.array_equal(mask, (read_volume(seg) != 0).astype(np.uint8)) and mask.any()
    meta = json.loads((tmp_path / "TRAB_1240_SEG_metadata.json").read_text())
    assert meta["thresholds"] is None
    assert any("120..1000 per mille not applied" in n for n in meta["notes"])
    assert not any("not applied" in w for w in meta["warnings"])          # a note, not a warning
    import csv
    rows = {os.path.basename(r["input"]): r for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert "not applied" in rows["TRAB_1240_SEG.AIM"]["notes"]
    assert rows["CALLUS_1237.AIM"]["threshold_low_permille"] != ""        # the grey image is thresholded
    assert "not applied" not in rows["CALLUS_1237.AIM"]["notes"]


def test_char_aim_plans_its_mask_for_slicer_with_any_thresholds(tmp_path):
    from ScancoUnitsLib import write_aim
    from ScancoUnitsLib.formats.reader import read_header
    from ScancoUnitsLib.pipeline.request import ConversionRequest, plan_request

    path = write_aim(tmp_path / "seg.aim", np.array([[[0, 127, 0, 1]]], np.int8), voxel_size_mm=(0.06,) * 3)
    for spec in (ThresholdSpec(120, 1000), ThresholdSpec(3000, 32767, "native"), ThresholdSpec(0.4, 3, "g/cc")):
        request = ConversionRequest(thresholds=spec)
        for plan in (plan_request(read_header(path), request),
                     plan_request(read_header(path), request, adapt_defaults=True)):
            assert [o.quantity for o in plan.outputs if "mask" in o.role] == ["char_mask"]
            assert plan.thresholds is None
            assert any("not applied" in n for n in plan.notes)


def test_real_char_aim_loads_into_a_scene_with_thresholds(real_data):
    slicer = pytest.importorskip("slicer")
    from ScancoUnitsLib.formats.reader import read_volume
    from ScancoUnitsLib.slicer.scene import load_scan_into_scene
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    nodes = load_scan_into_scene(scene, real_data / "TRAB_1240_SEG.AIM", thresholds=(120, 1000))
    image = nodes["mask_labelmap"].GetImageData()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    expected = (read_volume(real_data / "TRAB_1240_SEG.AIM") != 0).astype(np.uint8).reshape(-1)
    assert np.array_equal(values, expected)


# ---- thresholds in the data's own type (issue 19 point 5, issue 20) --------------------------------
def test_uint16_thresholds_are_not_clipped_to_int16(tmp_path):
    """uint16 native 40000..65535 gave 1 voxel (both clipped to 32767) instead of 25536."""
    from ScancoUnitsLib import convert_file, write_aim
    nrrd = pytest.importorskip("nrrd")

    volume = np.arange(65536, dtype=np.uint16).reshape(16, 64, 64)
    path = write_aim(tmp_path / "u16.aim", volume, voxel_size_mm=(0.06,) * 3)
    r = resolve_thresholds(ThresholdSpec(40000, 65535, "native"), None, voxel_type="uint16")
    assert (r.native_low, r.native_high) == (40000, 65535) and r.clipped == (False, False)
    written = convert_file(path, tmp_path / "o", outputs=("mask",),
                           thresholds=ThresholdSpec(40000, 65535, "native"))
    mask = nrrd.read(str(written["mask"]), index_order="C")[0]
    assert int(mask.sum()) == 25536
    assert np.array_equal(mask, (volume >= 40000).astype(np.uint8))


def test_int32_thresholds_in_the_int32_range(tmp_path):
    from ScancoUnitsLib import convert_file, write_aim
    nrrd = pytest.importorskip("nrrd")

    volume = (np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 12) * 10000
    path = write_aim(tmp_path / "i32.aim", volume, voxel_size_mm=(0.06,) * 3)
    written = convert_file(path, tmp_path / "o", outputs=("mask",),
                           thresholds=ThresholdSpec(-50000, 40000, "native"))
    mask = nrrd.read(str(written["mask"]), index_order="C")[0]
    assert np.array_equal(mask, ((volume >= -50000) & (volume <= 40000)).astype(np.uint8))


def test_float_thresholds_are_not_rounded(tmp_path):
    """float native 0.5..1.5 gave the mask of 1.0..2.0 (the bounds were rounded to integers)."""
    from ScancoUnitsLib import convert_file, write_aim
    nrrd = pytest.importorskip("nrrd")

    volume = np.array([0.25, 0.4999, 0.5, 1.0, 1.5, 1.5001, 1.75, 2.0], np.float32).reshape(1, 2, 4)
    path = write_aim(tmp_path / "f.aim", volume, version=30, voxel_size_mm=(0.06,) * 3)
    written = convert_file(path, tmp_path / "o", outputs=("native", "mask"),
                           thresholds=ThresholdSpec(0.5, 1.5, "native"))
    mask = nrrd.read(str(written["mask"]), index_order="C")[0]
    assert mask.ravel().tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    meta = json.loads(written["metadata"].read_text())["thresholds"]
    assert meta["native"] == [0.5, 1.5] and meta["voxel_type"] == "float32"


def test_float32_bounds_select_exactly_the_float64_interval():
    # 0.1 is not a float32: the bounds must be the float32s that keep exact_low <= v <= exact_high
    for low, high in ((0.1, 0.3), (1 / 3, 2 / 3), (-0.7, -0.1), (1e-8, 1e-7)):
        r = resolve_thresholds(ThresholdSpec(low, high, "native"), None, voxel_type="float32")
        assert r.native_low >= low and r.native_high <= high
        below = np.nextafter(np.float32(r.native_low), np.float32(-np.inf))
        above = np.nextafter(np.float32(r.native_high), np.float32(np.inf))
        assert float(below) < low and float(above) > high
        values = np.array([below, r.native_low, r.native_high, above], np.float32)
        assert r.mask(values).tolist() == [0, 1, 1, 0]
    r = resolve_thresholds(ThresholdSpec(0.1, 0.3, "native"), None, voxel_type="float64")
    assert (r.native_low, r.native_high) == (0.1, 0.3)


def test_threshold_beyond_the_type_is_refused_with_both_units(tmp_path, capsys, quiet_cli):
    """--low 450 --high 3000 --threshold-unit density (g/cc by default) became native 32767..32767."""
    from ScancoUnitsLib import write_aim

    volume = np.array([[[0, 4000, 9000, 20000]]], np.int16)
    path = write_aim(tmp_path / "grey.aim", volume, voxel_size_mm=(0.06,) * 3, calibration=XCT2)
    status, out, err = _cli(capsys, "convert", path, "-o", tmp_path / "o", "--low", "450", "--high", "3000",
                            "--threshold-unit", "density")
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("scanco-units: error:")]
    assert len(lines) == 1, err
    line = lines[0]
    assert "grey.aim" in line and "450 g HA/cc" in line and "(--low)" in line
    assert "native 2" in line                                   # the threshold as a native value
    assert "-32768..32767" in line and "int16" in line         # the range the type holds, native ...
    assert "g HA/cc)" in line                                  # ... and in the unit asked
    assert "--threshold-unit density follows --density-unit" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_threshold_beyond_the_type_in_python_names_parameters(tmp_path):
    from ScancoUnitsLib.errors import ThresholdRangeError

    with pytest.raises(ThresholdRangeError) as info:
        resolve_thresholds(ThresholdSpec(-50, -10, "native"), None, voxel_type="uint16", path="u.aim")
    text = str(info.value)
    assert "u.aim" in text and "upper threshold -10 native (ThresholdSpec.high)" in text and "0..65535" in text
    assert "--" not in text
    with pytest.raises(ThresholdRangeError, match="ThresholdSpec unit 'density' is mg HA/ccm"):
        resolve_thresholds(ThresholdSpec(45000, 300000, "density"), XCT2, voxel_type="int16")
    # a negative density slope swaps the natives: the message still names the bound that was asked
    flipped = Calibration(mu_scaling=8192, mu_water_per_cm=0.24, density_slope=-1600, density_intercept=100,
                          density_unit="mg HA/ccm")
    with pytest.raises(ThresholdRangeError, match=r"upper threshold -100000 mg HA/ccm"):
        resolve_thresholds(ThresholdSpec(-200000, -100000, "mgHA/ccm"), flipped)


def test_open_ended_bound_is_the_types_end_and_noted(tmp_path):
    """IPL's upper 100000 mg HA/ccm (its default) selects the same voxels as native 32767: taken as
    that end, and said in the metadata notes (not a silent clip)."""
    from ScancoUnitsLib import convert_file, write_aim

    volume = np.array([[[0, 2585, 2586, 32767]]], np.int16)
    path = write_aim(tmp_path / "bhs.aim", volume, voxel_size_mm=(0.06,) * 3, calibration=BHS)
    written = convert_file(path, tmp_path / "o", outputs=("mask",), thresholds=ThresholdSpec(125, 100000, "density"))
    meta = json.loads(written["metadata"].read_text())
    assert meta["thresholds"]["native"] == [2586, 32767] and meta["thresholds"]["clipped"] == [False, True]
    assert any("upper threshold 100000 mg HA/ccm is above what int16 data can hold" in n for n in meta["notes"])
    r = resolve_thresholds(ThresholdSpec(-5000, 100, "native"), None, voxel_type="uint16")
    assert (r.native_low, r.native_high, r.clipped) == (0, 100, (True, False))


# ---- every input kind x threshold unit x output set: a conversion or a one-line refusal ----------
GRID_UNITS = {"permille": ("250", "1000"), "native": ("3000", "32767"), "mu": ("1", "3"), "hu": ("500", "3000"),
              "density": ("0.4", "2"), "mgHA/ccm": ("400", "2000"), "g/cc": ("0.4", "2"),
              "beyond": ("2000", "3000")}   # per mille above the int16 range: refused for grey images
GRID_OUTPUTS = (None, "hu", "density", "mu", "native", "mask", "native,mask", "hu,density,mask,mu,native")


@pytest.fixture(scope="module")
def input_kinds(tmp_path_factory):
    from ScancoUnitsLib import write_aim, write_isq

    folder = tmp_path_factory.mktemp("kinds")
    grey = (np.arange(3 * 5 * 7, dtype=np.int16).reshape(3, 5, 7) * 300 - 1000)
    size = (0.06,) * 3
    return {
        "short ISQ": write_isq(folder / "grey.isq", grey, voxel_size_mm=size, calibration=XCT2),
        "short AIM": write_aim(folder / "grey.aim", grey, voxel_size_mm=size, calibration=XCT2),
        "char AIM": write_aim(folder / "seg.aim", np.where(grey > 8000, 127, 0).astype(np.int8),
                              voxel_size_mm=size, compression="binCmp"),
        "float AIM": write_aim(folder / "dens.aim", (grey / 7.0).astype(np.float32), version=30,
                               voxel_size_mm=size),
        "uncalibrated": write_isq(folder / "raw.isq", grey, voxel_size_mm=size),
    }


def _assert_converted_or_refused(status, out, err, context):
    assert "internal error" not in out + err, context
    assert "Traceback" not in err, context
    errors = [line for line in err.splitlines() if line.startswith("scanco-units: error:")]
    if status == 0:
        assert not errors, context
    else:
        assert status in (1, 2) and len(errors) == 1, (context, err)


@pytest.mark.parametrize("kind", ["short ISQ", "short AIM", "char AIM", "float AIM", "uncalibrated"])
def test_every_input_kind_threshold_unit_and_output_set(kind, input_kinds, tmp_path, capsys, quiet_cli):
    outcomes = {}
    for unit, (low, high) in GRID_UNITS.items():
        for outputs in GRID_OUTPUTS:
            out_dir = tmp_path / f"{unit.replace('/', '_')}-{outputs}"
            argv = ["convert", input_kinds[kind], "-o", out_dir, "--low", low, "--high", high,
                    "--threshold-unit", "permille" if unit == "beyond" else unit]
            argv += ["--outputs", outputs] if outputs else []
            status, out, err = _cli(capsys, *argv)
            context = f"{kind} {unit} {outputs}: {err}"
            _assert_converted_or_refused(status, out, err, context)
            if status == 0:
                assert any(out_dir.glob("*_metadata.json")), context
            else:
                assert not out_dir.exists() or not any(out_dir.iterdir()), context
            outcomes[unit, outputs] = status
    # what must convert: the default set of a char AIM (its mask) with any thresholds, native values always
    if kind == "char AIM":
        assert all(outcomes[u, None] == 0 and outcomes[u, "mask"] == 0 for u in GRID_UNITS)
    if kind in ("short ISQ", "short AIM"):
        assert all(outcomes[u, o] == 0 for u in GRID_UNITS if u != "beyond" for o in GRID_OUTPUTS)
        assert outcomes["beyond", "mask"] == 1 and outcomes["beyond", "native"] == 0
    assert all(outcomes[u, "native"] == 0 for u in GRID_UNITS)


@pytest.mark.parametrize("unit", sorted(GRID_UNITS))
def test_every_real_file_with_every_threshold_unit(unit, real_data, tmp_path, capsys, quiet_cli):
    files = sorted(p for p in real_data.iterdir() if p.suffix.upper() in (".AIM", ".ISQ"))
    low, high = GRID_UNITS[unit]
    for outputs in (None, "native,mask", "hu,density,mask,mu,native"):
        out_dir = tmp_path / str(outputs)
        argv = ["convert", *files, "-o", out_dir, "--low", low, "--high", high,
                "--threshold-unit", "permille" if unit == "beyond" else unit]
        argv += ["--outputs", outputs] if outputs else []
        status, out, err = _cli(capsys, *argv)
        assert "internal error" not in out + err and "Traceback" not in err, (unit, outputs, err)
        failed = [line for line in err.splitlines() if line.startswith("scanco-units: error:")]
        assert status != 0 or not failed, (unit, outputs, err)
        # the masks (char AIMs) always give their mask, whatever the thresholds
        for mask_file in ("TRAB_1240_SEG", "DB_07_DNN_DR_T1_TRAB_MASK"):
            assert not any(mask_file in line for line in failed) or outputs == "hu,density,mask,mu,native", \
                (unit, outputs, err)
