"""Never a silent wrong number: the density unit, contradictory calibrations, tiny VAX G values.

* The density unit the file states (ISQ calibration block +648, AIM ``Density: unit``) scales
  density: the same physical calibration stored in mg HA/ccm and in g HA/ccm gives the same density;
  a unit that is not a density refuses density (naming the text) and leaves HU, µ, native and mask.
* A calibration constant stated twice with different values is recorded as a conflict and refuses
  every quantity that needs it, in one line naming the field and both values; ``info`` shows it.
* A calibration value VAX G cannot hold (a float64 subnormal such as -2.2e-311) is refused when an
  ISQ is written, never stored as a number that reads back as another one or as absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import nrrd
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.formats.aim.log import build_log
from ScancoUnitsLib.pipeline.convert import convert_file
from ScancoUnitsLib.errors import CalibrationMissingError
from ScancoUnitsLib.core.header import Calibration, CalibrationConflict, density_mg_per_unit, scaling_in_calibration_text
from ScancoUnitsLib.cli.info import format_header_summary
from ScancoUnitsLib.formats.isq import VAX_G_MIN_MAGNITUDE
from ScancoUnitsLib.core.thresholds import ThresholdSpec
from ScancoUnitsLib.core.units import UnitConverter, describe_calibration

from cli_harness import run_cli

MG = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                 density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp, Scaling 4096")
G = dataclasses.replace(MG, density_slope=0.35552, density_intercept=-0.1966, density_unit="g HA/ccm")
VOXEL = (0.01, 0.01, 0.01)


def _volume():
    rng = np.random.default_rng(11)
    vol = rng.integers(-3000, 32768, size=(4, 5, 6), dtype=np.int16)
    vol.flat[:4] = (-32768, 0, 1, 32767)
    return vol


def _reference_mg(vol, cal):
    n = vol.astype(np.float64)
    return (n / cal.mu_scaling) * cal.density_slope + cal.density_intercept


# ---- density unit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, factor", [
    ("mg HA/ccm", 1.0), ("mg HA/cm3", 1.0), ("mgHA/ccm", 1.0), ("MG ha / CCM", 1.0), (" mg  HA/cm3 ", 1.0),
    ("mg/cm3", 1.0), ("mg/ccm", 1.0), ("mg HA/cm³", 1.0), ("mg HA/cm^3", 1.0), ("g/ml", 1000.0),
    ("g HA/ccm", 1000.0), ("g HA/cm3", 1000.0), ("gHA/ccm", 1000.0),
    ("G HA/CCM", 1000.0), ("g/cm3", 1000.0), ("g/ccm", 1000.0), (None, 1.0), ("", 1.0), ("   ", 1.0),
    ("1/cm", None), ("HU", None), ("kg/m3", None), ("mg HA", None), ("mgHA/ccmx", None), ("per mille", None),
])
def test_density_unit_factor(text, factor):
    assert density_mg_per_unit(text) == factor
    cal = dataclasses.replace(MG, density_unit=text)
    assert cal.density_mg_per_unit == factor
    assert cal.has_mu and cal.has_hu
    if factor is None:
        (entry,) = cal.missing_for("density")
        assert repr(text) in entry and "density unit" in entry
        assert cal.to_dict()["usable"] == {"mu": True, "hu": True, "density": False}
    else:
        assert cal.has_density


def test_absent_unit_is_mg_and_says_so():
    cal = dataclasses.replace(MG, density_unit=None)
    assert cal.density_unit_assumed and cal.density_mg_per_unit == 1.0
    assert "taken as mg HA/ccm" in cal.to_dict()["density_unit_assumed"]
    described = describe_calibration(cal)
    assert described["density_unit_factor"] == 1.0 and "taken as mg HA/ccm" in described["density_unit_note"]
    assert not MG.density_unit_assumed and MG.to_dict()["density_unit_assumed"] is None


def test_mg_spellings_are_bit_identical_to_the_reference():
    natives = np.arange(-32768, 32768, dtype=np.int16)
    expected = _reference_mg(natives, MG)
    for unit in ("mg HA/ccm", None, "mgHA/ccm", "mg/cm3"):
        conv = UnitConverter(dataclasses.replace(MG, density_unit=unit))
        got = conv.convert(natives, "density_mg_ha_ccm")
        assert np.array_equal(got, expected.astype(np.float32)), unit
        assert np.array_equal(conv.convert(natives, "density_g_cc"), (expected / 1000.0).astype(np.float32))
        assert np.array_equal(conv.native_to(natives.astype(np.float64), "density_mg_ha_ccm"), expected)


def test_g_calibration_scales_by_1000_in_every_path():
    natives = np.arange(-32768, 32768, 7, dtype=np.int16)
    mg, g = UnitConverter(MG), UnitConverter(G)
    expected = ((natives / 4096.0) * 0.35552 - 0.1966) * 1000.0
    assert np.array_equal(g.native_to(natives.astype(np.float64), "density_mg_ha_ccm"), expected)
    for quantity in ("density_mg_ha_ccm", "density_g_cc"):
        np.testing.assert_allclose(g.convert(natives, quantity), mg.convert(natives, quantity), rtol=2e-7, atol=1e-4)
        # int32 natives take the float64 path, not the lookup table
        np.testing.assert_allclose(g.convert(natives.astype(np.int32), quantity), g.convert(natives, quantity),
                                   rtol=0, atol=0)
    # inverse and affine description
    for value in (-200.0, 0.0, 450.0, 1200.0):
        np.testing.assert_allclose(g.to_native(value, "density_mg_ha_ccm"), mg.to_native(value, "density_mg_ha_ccm"),
                                   rtol=1e-12)
        np.testing.assert_allclose(g.to_native(value / 1000, "density_g_cc"), mg.to_native(value, "density_mg_ha_ccm"),
                                   rtol=1e-12)
        n = g.to_native(value, "density_mg_ha_ccm")
        assert g.native_to(n, "density_mg_ha_ccm") == pytest.approx(value, rel=1e-12, abs=1e-9)
    dg, dmg = describe_calibration(G), describe_calibration(MG)
    assert dg["density_unit_in_file"] == "g HA/ccm" and dg["density_unit_factor"] == 1000.0
    assert dmg["density_unit_factor"] == 1.0
    for quantity in ("density_mg_ha_ccm", "density_g_cc"):
        assert dg["quantities"][quantity]["scale"] == pytest.approx(dmg["quantities"][quantity]["scale"], rel=1e-12)
        assert dg["quantities"][quantity]["offset"] == pytest.approx(dmg["quantities"][quantity]["offset"], rel=1e-12)


def _write(kind, folder: Path, name: str, vol, cal, **kw):
    if kind == "isq":
        return Path(S.write_isq(folder / f"{name}.ISQ", vol, voxel_size_mm=VOXEL, calibration=cal, **kw))
    return Path(S.write_aim(folder / f"{name}.AIM", vol, version=20 if kind == "aim20" else 30,
                            voxel_size_mm=VOXEL, calibration=cal, **kw))


@pytest.mark.parametrize("kind", ["isq", "aim20", "aim30"])
def test_same_physics_in_mg_and_g_gives_same_density_output(tmp_path, kind):
    vol = _volume()
    mg_path = _write(kind, tmp_path, "inmg", vol, MG)
    g_path = _write(kind, tmp_path, "ing", vol, G)
    assert S.read_header(g_path).calibration.density_unit == "g HA/ccm"
    assert S.read_header(g_path).calibration.density_mg_per_unit == 1000.0
    expected = _reference_mg(vol, MG)
    for density_unit, scale in (("mgHA/ccm", 1.0), ("g/cc", 1000.0)):
        out = {}
        for label, path in (("mg", mg_path), ("g", g_path)):
            written = convert_file(path, tmp_path / f"out-{label}-{scale:g}", outputs=("density",),
                                   density_unit=density_unit)
            out[label] = nrrd.read(str(written["density"]), index_order="C")[0]
        assert np.array_equal(out["mg"], (expected / scale).astype(np.float32))  # mg file: unchanged
        np.testing.assert_allclose(out["g"], out["mg"], rtol=2e-7, atol=1e-4 / scale)
    # a density threshold means the same voxels in both files
    masks = []
    for path in (mg_path, g_path):
        written = convert_file(path, tmp_path / f"mask-{path.stem}", outputs=("mask",),
                               thresholds=ThresholdSpec(400, 3000, "density"))
        masks.append(nrrd.read(str(written["mask"]), index_order="C")[0])
    assert np.array_equal(masks[0], masks[1])
    meta = json.loads(written["metadata"].read_text())
    assert meta["header"]["calibration"]["density_mg_per_unit"] == 1000.0


@pytest.mark.parametrize("kind", ["isq", "aim20"])
def test_a_unit_that_is_not_a_density_refuses_density_only(tmp_path, kind):
    vol = _volume()
    path = _write(kind, tmp_path, "percm", vol, dataclasses.replace(MG, density_unit="1/cm"))
    cal = S.read_header(path).calibration
    assert cal.density_unit == "1/cm" and cal.density_mg_per_unit is None
    with pytest.raises(CalibrationMissingError) as info:
        convert_file(path, tmp_path / "d", outputs=("density",))
    assert "'1/cm'" in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
    written = convert_file(path, tmp_path / "rest", outputs=("hu", "mu", "native", "mask"))
    assert set(written) == {"hu", "mu", "native", "mask", "metadata"}
    assert "not a density unit" in format_header_summary(S.read_header(path))


# ---- contradictory calibration ----------------------------------------------------------------------

LOG_LINES = [("Mu_Scaling", 8192), ("Calibration Data", "68 kVp, BH: 200 mg HA/ccm, Scaling 8192, 0.2 CU"),
             ("Calib. default unit type", "2 (Density)"), ("Density: unit", "mg HA/ccm"),
             ("Density: slope", "1.66252405e+03"), ("Density: intercept", "-3.98609009e+02"),
             ("HU: mu water", "0.23660"), ("Parameter units", "[1/cm]"), ("Scaled by factor", 8192)]


def _aim_with_log(tmp_path, pairs, vol=None, name="log.AIM", **kw):
    vol = _volume() if vol is None else vol
    text = build_log(pairs, created_by="test", time_text="14-SEP-2016 15:27:12.18")
    return Path(S.write_aim(tmp_path / name, vol, voxel_size_mm=VOXEL, processing_log=text, **kw))


def test_consistent_log_has_no_conflict(tmp_path):
    pairs = LOG_LINES + [("HU: mu water", "0.2366"), ("Mu_Scaling", "8192.0"), ("Density: unit", "mgHA/ccm"),
                         ("Scaled by factor", "4096"), ("Scaled by factor", 8192)]  # only the last factor counts
    cal = S.read_header(_aim_with_log(tmp_path, pairs)).calibration
    assert cal.conflicts == () and cal.is_calibrated and cal.has_mu
    assert cal.mu_scaling == 8192 and cal.mu_water_per_cm == 0.2366


@pytest.mark.parametrize("key, field, other, quantities, shown", [
    ("Mu_Scaling", "mu_scaling", "4096", ("mu", "hu", "density"), "Mu_Scaling 8192 vs Mu_Scaling 4096"),
    ("Density: slope", "density_slope", "1.5e+03", ("density",),
     "Density: slope 1662.52405 vs Density: slope 1500"),
    ("Density: intercept", "density_intercept", "-3.5e+02", ("density",),
     "Density: intercept -398.609009 vs Density: intercept -350"),
    ("HU: mu water", "mu_water_per_cm", "0.24150", ("hu",), "HU: mu water 0.2366 vs HU: mu water 0.2415"),
    ("Density: unit", "density_unit", "g HA/ccm", ("density",),
     "Density: unit 'mg HA/ccm' vs Density: unit 'g HA/ccm'"),
    ("Scaled by factor", "mu_scaling", "4096", ("mu", "hu", "density"),
     "Mu_Scaling 8192 vs last Scaled by factor 4096"),
])
def test_a_constant_stated_twice_differently_is_refused(tmp_path, capsys, key, field, other, quantities, shown):
    path = _aim_with_log(tmp_path, LOG_LINES + [(key, other)])
    header = S.read_header(path)
    cal = header.calibration
    (conflict,) = cal.conflicts
    assert conflict.field == field and conflict.refuses and len(conflict.values) == 2
    assert isinstance(cal.conflicts, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conflict.field = "other"
    assert conflict.describe() == f"{field}: {shown}"
    for quantity in ("mu", "hu", "density"):
        missing = cal.missing_for(quantity)
        if quantity in quantities:
            assert missing == (f"{field} (contradictory: {shown})",)
        else:
            assert missing == ()
    # conversion: one line naming the field and both values; native and mask still work
    wanted = {"mu": "mu", "hu": "hu", "density": "density"}[quantities[0]]
    with pytest.raises(CalibrationMissingError) as info:
        convert_file(path, tmp_path / "refused", outputs=(wanted,))
    message = str(info.value)
    assert "\n" not in message and f"{field} (contradictory: {shown})" in message and str(path) in message
    written = convert_file(path, tmp_path / "native", outputs=("native", "mask"))
    assert set(written) == {"native", "mask", "metadata"}
    meta = json.loads(written["metadata"].read_text())
    assert meta["header"]["calibration"]["conflicts"][0]["field"] == field
    # info and info --json show it
    status, out, _ = run_cli(capsys, "info", path)
    assert status == 0 and f"CONFLICT: {field}:" in out
    status, out, _ = run_cli(capsys, "info", "--json", path)
    data = json.loads(out)
    data = data[0] if isinstance(data, list) else data
    data = data.get("header", data)
    (shown,) = data["calibration"]["conflicts"]
    assert shown["field"] == field and shown["refuses"] is True and len(shown["values"]) == 2


def test_calibration_text_scaling_against_mu_scaling(tmp_path):
    pairs = [(k, v) for k, v in LOG_LINES if k not in ("Mu_Scaling", "Scaled by factor")]
    path = _aim_with_log(tmp_path, [("Mu_Scaling", 4096)] + pairs)
    (conflict,) = S.read_header(path).calibration.conflicts
    assert conflict.field == "mu_scaling" and conflict.values == (4096.0, 8192.0) and conflict.refuses
    assert not S.read_header(path).calibration.has_mu


@pytest.mark.parametrize("voxels, compression", [("int8", "binCmp"), ("uint8", None), ("float32", None)])
def test_scaled_by_factor_only_warns_for_masks_and_floats(tmp_path, voxels, compression):
    vol = (_volume() > 0).astype(voxels) * (127 if voxels != "float32" else 1.5)
    vol = vol.astype(voxels)
    path = _aim_with_log(tmp_path, LOG_LINES + [("Scaled by factor", 1)], vol=vol, compression=compression)
    header = S.read_header(path)
    (conflict,) = header.calibration.conflicts
    assert conflict.field == "mu_scaling" and not conflict.refuses and conflict.values == (8192.0, 1.0)
    assert header.calibration.is_calibrated and header.calibration.has_mu
    assert "WARNING: mu_scaling:" in format_header_summary(header)


def test_isq_header_scaling_against_calibration_text(tmp_path):
    vol = _volume()
    path = _write("isq", tmp_path, "c", vol, dataclasses.replace(MG, mu_scaling=8192))
    cal = S.read_header(path).calibration
    (conflict,) = cal.conflicts
    assert conflict.field == "mu_scaling" and conflict.values == (8192.0, 4096.0)
    assert conflict.sources == ("main header mu_scaling", "calibration text Scaling")
    for quantity in ("mu", "hu", "density"):
        (entry,) = cal.missing_for(quantity)
        assert "8192" in entry and "4096" in entry
    with pytest.raises(CalibrationMissingError, match="8192 vs calibration text Scaling 4096"):
        convert_file(path, tmp_path / "o", outputs=("hu",))
    assert set(convert_file(path, tmp_path / "n", outputs=("native", "mask"))) == {"native", "mask", "metadata"}
    consistent = _write("isq", tmp_path, "ok", vol, MG)
    assert S.read_header(consistent).calibration.conflicts == ()


@pytest.mark.parametrize("text, scaling", [
    ("68 kVp, BH: 200 mg HA/ccm, Scaling 8192, 0.2 CU", 8192.0), ("45 kVp, 0.5mm Al, BH: 1200mg HA/ccm, Scaling 4096",
                                                                 4096.0),
    ("scaling: 1000.", 1000.0), ("Scaling 4096 / scaling 4096", 4096.0), ("Scaling 4096, Scaling 8192", None),
    ("Rescaling 2", None), ("70 kVp", None), ("", None), (None, None), ("Scaling factor", None),
])
def test_scaling_in_calibration_text(text, scaling):
    assert scaling_in_calibration_text(text) == scaling


def test_conflicts_are_immutable_and_json_safe():
    cal = Calibration(mu_scaling=8192, conflicts=[CalibrationConflict("mu_scaling", (8192.0, 4096.0),
                                                                      ("Mu_Scaling", "Mu_Scaling"))])
    assert isinstance(cal.conflicts, tuple)
    json.dumps(cal.to_dict(), allow_nan=False)
    assert cal.to_dict()["conflicts"][0]["text"] == "mu_scaling: Mu_Scaling 8192 vs Mu_Scaling 4096"


def test_real_files_have_no_conflicts_and_mg_units(real_data):
    for path in sorted(real_data.iterdir()):
        if path.suffix.upper() not in (".AIM", ".ISQ"):
            continue
        cal = S.read_header(path).calibration
        assert cal.conflicts == (), path.name
        assert cal.density_mg_per_unit == 1.0, path.name


# ---- values VAX G cannot hold -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-2.2e-311, 2.2e-311, 5e-324, -VAX_G_MIN_MAGNITUDE / 2])
def test_isq_refuses_a_subnormal_calibration_value(tmp_path, value):
    cal = dataclasses.replace(MG, density_intercept=value)
    path = tmp_path / "tiny.ISQ"
    with pytest.raises(ValueError, match="density intercept"):
        S.write_isq(path, _volume(), voxel_size_mm=VOXEL, calibration=cal)
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [VAX_G_MIN_MAGNITUDE, -VAX_G_MIN_MAGNITUDE, 2.2250738585072014e-308,
                                   -1e-308, -0.0, 0.0, -196.6, 4e307])
def test_isq_round_trips_the_smallest_vax_g_values_exactly(tmp_path, value):
    cal = dataclasses.replace(MG, density_intercept=value)
    path = S.write_isq(tmp_path / "edge.ISQ", _volume(), voxel_size_mm=VOXEL, calibration=cal)
    got = S.read_header(path).calibration.density_intercept
    assert got == value and math.copysign(1, got) == math.copysign(1, value) or value == 0


@pytest.mark.parametrize("version", [20, 30])
def test_aim_round_trips_a_subnormal_intercept_exactly(tmp_path, version):
    cal = dataclasses.replace(MG, density_intercept=-2.2e-311)
    path = S.write_aim(tmp_path / "tiny.AIM", _volume(), version=version, voxel_size_mm=VOXEL, calibration=cal)
    assert S.read_header(path).calibration.density_intercept == -2.2e-311
