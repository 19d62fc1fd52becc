"""Self-check of the reference implementations in Testing/support/oracles.py (ITKIOScanco and aimio-py).

Everything runs in three worker subprocesses (ITK write+read, aimio write+read, ITK read), shared by
the tests through one module fixture. Byte-level checks use small independent decoders written here
(VAX-G per scanco-format.md section 0), never ScancoUnitsLib.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

import oracles
from oracles import itk_hu_from_native, itk_native_from_hu_write, vax_g_to_float

CAL = dict(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
           density_unit="mg HA/ccm", calibration_type=2, calibration_text="45 kVp, oracle test")
BINCMP, CHARCMP, D1TCHAR, D1TSHORT, D1TFLOAT_VAX = 0x00150001, 0x00080002, 0x00010001, 0x00020002, 0x00040004
CAL_XCT2 = dict(mu_scaling=8192, mu_water_per_cm=0.2366, density_slope=1662.52405, density_intercept=-398.609009)
FULL_RANGE = np.arange(-32768, 32768, dtype=np.int16).reshape(16, 64, 64)
REAL = oracles.real_data_dir()
REAL_FILES = ("CALLUS_1237.AIM", "TRAB_1240_SEG.AIM", "DB_07_DNN_DR_T1_TRAB_MASK.AIM",
              "test_isq_calibrated_binary_25.ISQ", "test_isq_native_only_binary_25.ISQ")


def _volume():
    rng = np.random.default_rng(20261124)
    vol = rng.integers(-500, 9000, size=(5, 6, 7)).astype(np.int16)   # (z, y, x)
    vol[0, 0, :7] = [0, 1, 8191, 8192, 8193, 32767, -1]
    vol[4, 5, 6] = 2105
    return vol


def _masks():
    rng = np.random.default_rng(7)
    two = (rng.random((8, 10, 12)) > 0.5).astype(np.int8) * 127
    three = (rng.integers(0, 3, size=(8, 10, 12)) * 50).astype(np.int8)
    three0 = three.copy()
    three0.flat[0] = 0
    three1 = three.copy()
    three1.flat[0] = 50
    return two, three0, three1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("oracles")
    vol = _volume()
    two, three0, three1 = _masks()
    flt = np.linspace(-1.5, 2.5, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    p = {name: d / name for name in (
        "nat.isq", "cal.isq", "cal_plain.isq", "hu.isq", "v20.aim", "v30.aim",
        "a_short.aim", "a_bin.aim", "a_char0.aim", "a_char1.aim", "a_off.aim", "a_float.aim", "a_tiny.aim",
        "full.isq")}
    vms = d / "FIXTURE.ISQ;1"
    if REAL:
        shutil.copy(REAL / "test_isq_native_only_binary_25.ISQ", vms)

    # 1) ITK writes and reads back
    itk_ops = [
        dict(op="itk_write_isq", path=p["nat.isq"], array=vol, spacing_mm=(0.02, 0.02, 0.02), mu_scaling=4096,
             aimio_compatible=True),
        dict(op="itk_write_isq", path=p["cal.isq"], array=vol, spacing_mm=(0.02, 0.025, 0.05), calibration=CAL,
             aimio_compatible=True, metadata={"PatientName": "ORACLE", "Energy": 45.0, "DataRange": [-500, 32767]}),
        dict(op="itk_write_isq", path=p["cal_plain.isq"], array=vol, spacing_mm=(0.02, 0.02, 0.02), calibration=CAL),
        dict(op="itk_write_isq", path=p["hu.isq"], array=vol, spacing_mm=(0.02, 0.02, 0.02), calibration=CAL,
             calibration_mode="itk_hu", aimio_compatible=True),
        dict(op="itk_write_aim", path=p["v20.aim"], array=vol, spacing_mm=(0.0607, 0.0607, 0.0607),
             position_voxels=(1300, -3, 64), version=20, calibration=CAL),
        dict(op="itk_write_aim", path=p["v30.aim"], array=vol, spacing_mm=(0.082, 0.082, 0.082),
             position_voxels=(567, 630, 1), version=30),
    ]
    itk_ops.append(dict(op="itk_write_isq", path=p["full.isq"], array=FULL_RANGE, spacing_mm=(0.0607,) * 3,
                        calibration=CAL_XCT2))
    itk_ops += [dict(op="itk_read", path=p[n])
                for n in ("nat.isq", "cal.isq", "hu.isq", "v20.aim", "v30.aim", "full.isq")]
    if REAL:
        itk_ops += [dict(op="itk_read", path=vms), dict(op="itk_read", path=vms, extension=".isq")]
    itk1 = oracles.itk_batch(itk_ops)

    # 2) aimio writes, reads its own files, ITK's files and the real files
    aim_ops = [
        dict(op="aimio_write_aim", path=p["a_short.aim"], array=vol, spacing_mm=(0.082, 0.082, 0.041),
             position=(10, -2, 3), calibration=CAL),
        dict(op="aimio_write_aim", path=p["a_bin.aim"], array=two, spacing_mm=(0.05, 0.05, 0.05), position=(5, 6, 7)),
        dict(op="aimio_write_aim", path=p["a_char0.aim"], array=three0, spacing_mm=(0.05, 0.05, 0.05)),
        dict(op="aimio_write_aim", path=p["a_char1.aim"], array=three1, spacing_mm=(0.05, 0.05, 0.05)),
        dict(op="aimio_write_aim", path=p["a_off.aim"], array=two, spacing_mm=(0.05, 0.05, 0.05), offset=(1, 1, 1),
             calibration=CAL),
        dict(op="aimio_write_aim", path=p["a_float.aim"], array=flt, spacing_mm=(0.05, 0.05, 0.05)),
        dict(op="aimio_write_aim", path=p["a_tiny.aim"], array=two[:2, :2, :2], spacing_mm=(0.05, 0.05, 0.05)),
    ]
    aim_reads = ["a_short.aim", "a_bin.aim", "a_char0.aim", "a_char1.aim", "a_off.aim", "a_float.aim", "a_tiny.aim",
                 "nat.isq", "cal.isq", "cal_plain.isq", "hu.isq", "v20.aim", "v30.aim"]
    aim_ops += [dict(op="aimio_read", path=p[n]) for n in aim_reads]
    if REAL:
        aim_ops += [dict(op="aimio_read", path=REAL / f) for f in REAL_FILES]
        aim_ops += [dict(op="aimio_read", path=REAL / "test_isq_calibrated_binary_25.ISQ", unit=u)
                    for u in ("hu", "density")]
    aim = oracles.aimio_batch(aim_ops)

    # 3) ITK reads aimio's files and the real files
    itk2_names = ["a_short.aim", "a_bin.aim", "a_char0.aim", "a_off.aim", "a_float.aim", "a_tiny.aim"]
    itk2_ops = [dict(op="itk_read", path=p[n]) for n in itk2_names]
    if REAL:
        itk2_ops += [dict(op="itk_read", path=REAL / f) for f in REAL_FILES]
    itk2 = oracles.itk_batch(itk2_ops)

    out = {"paths": p, "vol": vol, "two": two, "three0": three0, "three1": three1, "flt": flt}
    out["itk_write"] = {op["path"].name: res for op, (_, res) in zip(itk_ops, itk1) if op["op"].startswith("itk_write")}
    out["itk_read"] = {op["path"].name + (op.get("extension") or ""): (a, r)
                       for op, (a, r) in zip(itk_ops, itk1) if op["op"] == "itk_read"}
    out["itk_read"].update({op["path"].name: (a, r) for op, (a, r) in zip(itk2_ops, itk2)})
    out["aimio_write"] = {op["path"].name: res for op, (_, res) in zip(aim_ops, aim) if op["op"] == "aimio_write_aim"}
    out["aimio_read"] = {}
    for op, (a, r) in zip(aim_ops, aim):
        if op["op"] == "aimio_read":
            out["aimio_read"][op["path"].name + ("" if op.get("unit", "native") == "native" else ":" + op["unit"])] = (a, r)
    return out


def _ok(pair):
    arr, res = pair
    assert res["ok"], res.get("error")
    return arr, res["info"]


# ---------------------------------------------------------------------------------------------------
# pure replicas (no subprocess)

def test_itk_hu_replica_matches_documented_values():
    # scanco-format.md section 4 #1 (T-we) and 3.5 at 4096 / 0.514
    raw = np.array([0, 1, 2, 2105, 2106, 8191, 8192, 8193, 32767], np.int16)
    assert itk_hu_from_native(raw, 4096, 0.514).tolist() == [-1000, -999, -999, 0, 0, 2890, 2891, 2891, 14563]
    # truncation toward zero, not floor: -0.6 HU -> 0 ; raw 2104 gives -0.60 HU
    assert itk_hu_from_native(np.array([2104], np.int16), 4096, 0.514)[0] == 0
    with pytest.raises(ValueError):
        itk_hu_from_native(np.array([32767], np.int16), 4096, 0.2366)  # 32811 HU: overflow (#19)


def test_vax_g_decoder():
    assert vax_g_to_float(bytes([0x20, 0x40, 0, 0, 0, 0, 0, 0])) == 2.0


# ---------------------------------------------------------------------------------------------------
# ITK writes


def test_itk_isq_native_only_roundtrip(run):
    arr, info = _ok(run["itk_read"]["nat.isq"])
    assert np.array_equal(arr, run["vol"])
    assert info["values_are"] == "native" and not info["itk_rescaled_to_hu"]
    assert info["spacing"] == [0.02, 0.02, 0.02] and info["origin"] == [0.0, 0.0, 0.0]
    assert info["metadata"]["MuScaling"] == 4096.0
    # ITK's invented defaults (section 4 #3): slope 1, intercept 0, mu water 0.7033 as float
    assert info["metadata"]["RescaleSlope"] == 1.0 and info["metadata"]["RescaleIntercept"] == 0.0
    assert abs(info["metadata"]["MuWater"] - 0.7033) < 1e-6
    assert info["metadata_unreadable"] == ["PixelDimensions"]


def test_itk_isq_calibrated_bytes_and_hu(run):
    path = run["paths"]["cal.isq"]
    raw = path.read_bytes()
    vol = run["vol"]
    assert raw[:16] == b"CTDATA-HEADER_V1"
    assert struct.unpack_from("<i", raw, 88)[0] == 4096          # patched mu_scaling
    assert struct.unpack_from("<i", raw, 508)[0] == 4              # data at 2560
    assert raw[1564:1564 + 19] == b"45 kVp, oracle test"
    assert raw[2184:2193] == b"mg HA/ccm"
    assert struct.unpack_from("<i", raw, 2168)[0] == 2
    assert vax_g_to_float(raw[2200:2208]) == 355.52
    assert vax_g_to_float(raw[2208:2216]) == -196.6
    assert vax_g_to_float(raw[2224:2232]) == 0.514
    assert struct.unpack_from("<3i", raw, 56) == (140, 150, 250)  # dim_um = int(spacing*dim*1000)
    assert struct.unpack_from("<2i", raw, 80) == (-500, 32767)    # DataRange metadata
    stored = np.frombuffer(raw, "<i2", count=vol.size, offset=2560).reshape(vol.shape)
    assert np.array_equal(stored, vol)                            # native values on disk
    assert run["itk_write"]["cal.isq"]["info"]["byte_patches"][0] == ["mu_scaling", 88, 4096]

    arr, info = _ok(run["itk_read"]["cal.isq"])
    assert info["values_are"] == "hu_truncated"
    assert np.array_equal(arr, itk_hu_from_native(vol, 4096, 0.514))
    md = info["metadata"]
    assert (md["MuScaling"], md["MuWater"], md["RescaleSlope"], md["RescaleIntercept"]) == (4096.0, 0.514, 355.52, -196.6)
    assert (md["RescaleUnits"], md["CalibrationData"], md["RescaleType"]) == ("mg HA/ccm", "45 kVp, oracle test", 2)
    assert md["PatientName"] == "ORACLE" and md["Energy"] == 45.0
    assert md["CreationDate"] == "23-NOV-2026 10:11:12.340"      # written 24-NOV: one day early (#10b)
    assert info["spacing"] == [0.14 / 7, 0.15 / 6, 0.25 / 5]            # (dim_um * 1e-3) / dim_p


def test_itk_hu_replica_over_whole_int16_range(run):
    arr, info = _ok(run["itk_read"]["full.isq"])
    assert info["values_are"] == "hu_truncated"
    assert np.array_equal(arr, itk_hu_from_native(FULL_RANGE, 8192, 0.2366))
    # spacing 0.0607 mm x 64 voxels = 3884.8 um -> stored 3884 -> read back 0.0606875 (#14)
    assert info["spacing"] == [3.884 / 64, 3.884 / 64, 0.971 / 16]


def test_itk_isq_hu_mode_converts_input(run):
    vol = run["vol"]
    arr, info = _ok(run["aimio_read"]["hu.isq"])                  # stored native values
    assert np.array_equal(arr, itk_native_from_hu_write(vol, 4096, 0.514))
    assert arr.flat[5] != vol.flat[5]                             # 32767 "HU" wrapped (#5)
    itk_arr, _ = _ok(run["itk_read"]["hu.isq"])
    assert np.array_equal(itk_arr, itk_hu_from_native(arr, 4096, 0.514))


def test_aimio_reading_itk_isq(run):
    vol = run["vol"]
    arr, info = _ok(run["aimio_read"]["cal.isq"])
    assert np.array_equal(arr, vol)
    assert info["mu_scaling"] == 4096 and info["dimensions_um"] == [140, 150, 250]
    assert info["spacing_as_reported"] == pytest.approx([20.0, 25.0, 50.0]) and info["spacing_as_reported_unit"] == "um"
    # aimio-py does not find ITK's calibration block: zeros (section 1.3, T-isqw)
    assert info["calibration_block"] == {"rescale_type": 0, "rescale_units": "", "rescale_slope": 0.0,
                                         "rescale_intercept": 0.0, "mu_water": 0.0}
    # without the nr_of_bytes patch AimIO cannot read ITK's ISQ at all (section 4 #14)
    assert not run["aimio_read"]["cal_plain.isq"][1]["ok"]


def test_itk_aim_writes(run):
    vol = run["vol"]
    a20, i20 = _ok(run["aimio_read"]["v20.aim"])
    a30, i30 = _ok(run["aimio_read"]["v30.aim"])
    assert np.array_equal(a20, vol) and np.array_equal(a30, vol)
    assert (i20["version"], i20["position"], i20["aim_type"]) == (2, [1300, -3, 64], D1TSHORT)
    assert (i30["version"], i30["position"]) == (3, [567, 630, 1])
    assert i20["calibration"]["from_log"] == {"mu_scaling": 4096, "mu_water_per_cm": 0.514, "mu_air_per_cm": 0,
                                              "density_slope": 355.52, "density_intercept": -196.6}
    assert "Created by                    ITKIOScanco" in i20["processing_log_text"]
    h20, hi20 = _ok(run["itk_read"]["v20.aim"])
    assert np.array_equal(h20, itk_hu_from_native(vol, 4096, 0.514))
    h30, hi30 = _ok(run["itk_read"]["v30.aim"])
    assert np.array_equal(h30, vol) and hi30["values_are"] == "native"
    assert hi30["spacing"] == [0.08199999999999999] * 3                 # 82000 nm * 1e-6
    assert hi30["origin"] == pytest.approx([567 * 0.082, 630 * 0.082, 0.082], abs=1e-5)


def test_itk_extension_rule(run):
    if not REAL:
        pytest.skip("real data folder missing")
    assert not run["itk_read"]["FIXTURE.ISQ;1"][1]["ok"]                 # ';1' suffix: ITK fails (#9)
    arr, info = _ok(run["itk_read"]["FIXTURE.ISQ;1.isq"])
    assert arr.shape == (25, 25, 25)


# ---------------------------------------------------------------------------------------------------
# aimio writes


def test_aimio_short_with_log(run):
    vol = run["vol"]
    written = run["aimio_write"]["a_short.aim"]["info"]["written"]
    assert written["version"] == 3 and written["aim_type"] == D1TSHORT
    arr, info = _ok(run["aimio_read"]["a_short.aim"])
    assert np.array_equal(arr, vol)
    assert info["position"] == [10, -2, 3]
    assert info["processing_log_dict"]["Mu_Scaling"] == 4096
    assert info["processing_log_dict"]["HU: mu water"] == 0.514
    assert info["calibration"]["density_equation"] == [355.52 / 4096, -196.6]
    itk_arr, itk_info = _ok(run["itk_read"]["a_short.aim"])
    assert np.array_equal(itk_arr, itk_hu_from_native(vol, 4096, 0.514))
    assert itk_info["metadata"]["RescaleSlope"] == 355.52
    assert itk_info["origin"] == pytest.approx([0.82, -0.164, 0.123], abs=1e-6)


def test_aimio_masks(run):
    two, three0 = run["two"], run["three0"]
    assert run["aimio_write"]["a_bin.aim"]["info"]["written"]["aim_type"] == BINCMP
    assert run["aimio_write"]["a_char0.aim"]["info"]["written"]["aim_type"] == CHARCMP
    assert run["aimio_write"]["a_off.aim"]["info"]["written"]["aim_type"] == D1TCHAR
    arr, info = _ok(run["aimio_read"]["a_bin.aim"])
    assert np.array_equal(arr, two) and arr.dtype == np.int8
    itk_arr, itk_info = _ok(run["itk_read"]["a_bin.aim"])
    assert np.array_equal(itk_arr, two) and itk_info["file_component_type"] == "char"
    arr, _ = _ok(run["aimio_read"]["a_char0.aim"])
    assert np.array_equal(arr, three0)
    # ITK reads charCmp pairs in the wrong order (#11): not the data
    itk_arr, _ = _ok(run["itk_read"]["a_char0.aim"])
    assert not np.array_equal(itk_arr, three0)
    # AimIO's charCmp writer emits a (0, 0) pair when the first voxel is not 0; its reader then fails
    assert not run["aimio_read"]["a_char1.aim"][1]["ok"]
    # uncompressed D1Tchar + density log: ITK rescales the mask to HU in char (#2), wrapping
    arr, info = _ok(run["aimio_read"]["a_off.aim"])
    assert np.array_equal(arr, two) and info["offset"] == [1, 1, 1]
    assert info["origin"] == pytest.approx([0.05, 0.05, 0.05])          # aimio: (pos + off) * el_size
    itk_arr, itk_info = _ok(run["itk_read"]["a_off.aim"])
    expected = itk_hu_from_native(two, 4096, 0.514, out_dtype=np.int8, on_overflow="wrap")
    assert np.array_equal(itk_arr, expected) and set(np.unique(itk_arr).tolist()) == {24, 85}
    assert itk_info["origin"] == [0.0, 0.0, 0.0]


def test_aimio_float(run):
    assert run["aimio_write"]["a_float.aim"]["info"]["written"]["aim_type"] == D1TFLOAT_VAX
    arr, _ = _ok(run["aimio_read"]["a_float.aim"])
    assert np.array_equal(arr, run["flt"])
    res = run["itk_read"]["a_float.aim"][1]
    assert not res["ok"] and "Unrecognized data type" in res["error"]


def test_tiny_aim_itk_fails_aimio_reads(run):
    # ITK cannot read AIMs shorter than 512 bytes (section 4 #12); AimIO can
    assert run["paths"]["a_tiny.aim"].stat().st_size < 512
    arr, _ = _ok(run["aimio_read"]["a_tiny.aim"])
    assert np.array_equal(arr, run["two"][:2, :2, :2])
    res = run["itk_read"]["a_tiny.aim"][1]
    assert not res["ok"] and "pre-header" in res["error"]


# ---------------------------------------------------------------------------------------------------
# real files (facts from ../shared/data/real/README.md)

needs_real = pytest.mark.skipif(REAL is None, reason="real data folder missing")


@needs_real
def test_real_callus(run):
    arr, info = _ok(run["aimio_read"]["CALLUS_1237.AIM"])
    assert info["dimensions_xyz"] == [43, 28, 32] and arr.shape == (32, 28, 43) and arr.dtype == np.int16
    assert info["position"] == [1300, 960, 64] and info["version"] == 2
    assert info["element_size"] == pytest.approx([0.06069965, 0.06069965, 0.06069643], abs=5e-9)
    assert (int(arr.min()), int(arr.max())) == (112, 7875)
    assert info["calibration"]["from_log"] == {"mu_scaling": 8192, "mu_water_per_cm": 0.2366, "mu_air_per_cm": 0,
                                               "density_slope": 1662.52405, "density_intercept": -398.609009}
    itk_arr, itk_info = _ok(run["itk_read"]["CALLUS_1237.AIM"])
    assert itk_info["values_are"] == "hu_truncated"
    assert np.array_equal(itk_arr, itk_hu_from_native(arr, 8192, 0.2366))
    assert itk_info["metadata"]["DataRange"] == [112.0, 7875.0]         # raw units next to HU voxels (#4)
    assert itk_info["origin"] == pytest.approx(info["origin"], abs=1e-5)  # ITK float32 origin (#16)
    assert itk_info["origin"] != info["origin"]


@needs_real
def test_real_trab_seg(run):
    arr, info = _ok(run["aimio_read"]["TRAB_1240_SEG.AIM"])
    assert info["dimensions_xyz"] == [108, 108, 126] and info["position"] == [1000, 748, 209]
    assert info["aim_type"] == BINCMP and set(np.unique(arr).tolist()) == {0, 1}
    itk_arr, itk_info = _ok(run["itk_read"]["TRAB_1240_SEG.AIM"])
    assert np.array_equal(itk_arr, arr) and itk_info["values_are"] == "native"


@needs_real
def test_real_db07_mask(run):
    arr, info = _ok(run["aimio_read"]["DB_07_DNN_DR_T1_TRAB_MASK.AIM"])
    assert info["dimensions_xyz"] == [294, 346, 110] and info["position"] == [567, 630, 0]
    assert info["version"] == 3 and info["aim_type"] == BINCMP
    assert info["element_size"] == pytest.approx([0.082] * 3, abs=1e-8)
    assert set(np.unique(arr).tolist()) == {0, 127}
    assert info["calibration"]["from_log"] == {"mu_scaling": 8192, "mu_water_per_cm": 0.2415, "mu_air_per_cm": 0,
                                               "density_slope": 1431.68396, "density_intercept": -349.852997}
    itk_arr, itk_info = _ok(run["itk_read"]["DB_07_DNN_DR_T1_TRAB_MASK.AIM"])
    assert np.array_equal(itk_arr, arr) and itk_info["spacing"] == [0.08199999999999999] * 3


@needs_real
def test_real_isq_fixtures(run):
    cal, cinfo = _ok(run["aimio_read"]["test_isq_calibrated_binary_25.ISQ"])
    nat, ninfo = _ok(run["aimio_read"]["test_isq_native_only_binary_25.ISQ"])
    assert np.array_equal(cal, nat) and set(np.unique(cal).tolist()) == {0, 1}
    assert cinfo["spacing"] == [0.06, 0.06, 0.06] and cinfo["mu_scaling"] == 1000
    assert cinfo["calibration_block"] == {"rescale_type": 0, "rescale_units": "mg HA/ccm", "rescale_slope": 2.0,
                                          "rescale_intercept": 3.0, "mu_water": 1.0}
    assert ninfo["calibration_block"] == {}
    hu, _ = _ok(run["aimio_read"]["test_isq_calibrated_binary_25.ISQ:hu"])
    dens, _ = _ok(run["aimio_read"]["test_isq_calibrated_binary_25.ISQ:density"])
    assert set(np.unique(hu).tolist()) == {-1000.0, -999.0}
    assert set(np.unique(dens).tolist()) == {3.0, 5.0}                 # native*slope+intercept (no /mu_scaling)
    itk_cal, icinfo = _ok(run["itk_read"]["test_isq_calibrated_binary_25.ISQ"])
    itk_nat, ininfo = _ok(run["itk_read"]["test_isq_native_only_binary_25.ISQ"])
    assert np.array_equal(itk_cal, itk_hu_from_native(cal, 1000, 1.0))
    assert set(np.unique(itk_cal).tolist()) == {-1000, -999}
    assert np.array_equal(itk_nat, nat) and ininfo["values_are"] == "native"
    assert icinfo["metadata"]["RescaleType"] == 1                        # ITK reads +632, aimio +636 -> 0
    assert icinfo["origin"] == [0.0, 0.0, 0.0] and icinfo["spacing"] == [0.06, 0.06, 0.06]
