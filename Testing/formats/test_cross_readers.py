"""Cross-reader checks against two independent SCANCO implementations, ITKIOScanco and AimIO.

Files written by ITK and by AimIO read back bit-identically by us (voxels, spacing, origin,
calibration); files we write read back the same by both of them. Each oracle runs in its own
subprocess (Testing/support/oracles.py); cases are random (fixed seed), batched to keep the suite fast.
Known oracle bugs (scanco-format.md section 4, .agent notes) decide what is compared:
ITK truncates HU (compared through its exact replica), cannot read our VAX float AIMs or charCmp;
AimIO always writes v030, cannot read IEEE float AIMs.
"""

from __future__ import annotations

import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.core.header import Calibration

import oracles

RNG = np.random.default_rng(20261124)


def _random_case(i):
    # odd sizes and single slices included
    dims = [(1, 1, 1), (1, 5, 3), (7, 1, 9), (3, 8, 5), (11, 6, 13), (2, 9, 4)][i]
    vol = RNG.integers(-32768, 32768, size=dims, dtype=np.int16)
    spacing = tuple(float(v) for v in RNG.choice([0.0082, 0.0105, 0.0303, 0.0607, 0.082, 0.125], 3))
    position = tuple(int(v) for v in RNG.integers(-200, 3000, 3))
    cal = Calibration(mu_scaling=int(RNG.choice([4096, 8192])),
                      mu_water_per_cm=float(np.round(RNG.uniform(0.2, 0.7), 5)),
                      density_slope=float(np.round(RNG.uniform(300, 1700), 5)),
                      density_intercept=float(np.round(RNG.uniform(-400, -100), 5)),
                      density_unit="mg HA/ccm", calibration_type=2,
                      calibration_text=f"case {i}, 68 kVp, BH: 200 mg HA/ccm")
    return vol, spacing, position, cal


CASES = [_random_case(i) for i in range(6)]


def _assert_calibration(ours: Calibration, given: Calibration, rel=0.0):
    assert ours.mu_scaling == given.mu_scaling
    for name in ("mu_water_per_cm", "density_slope", "density_intercept"):
        assert getattr(ours, name) == pytest.approx(getattr(given, name), rel=rel, abs=0 if rel == 0 else 1e-9), name
    assert ours.density_unit == given.density_unit


def test_itk_written_files_read_identically(tmp_path):
    ops, expect = [], []
    for i, (vol, spacing, position, cal) in enumerate(CASES):
        isq = tmp_path / f"itk_{i}.isq"
        ops.append({"op": "itk_write_isq", "path": isq, "array": vol, "spacing_mm": spacing, "calibration": cal,
                    "creation_date": oracles.DEFAULT_CREATION_DATE})
        ops.append({"op": "itk_info", "path": isq})
        expect.append(("isq", isq, vol, cal, (0, 0, 0)))
        for version in (20, 30):
            aim = tmp_path / f"itk_{i}_v{version}.aim"
            ops.append({"op": "itk_write_aim", "path": aim, "array": vol, "spacing_mm": spacing,
                        "position_voxels": list(position), "version": version, "calibration": cal,
                        "metadata": {}, "calibration_mode": "native", "origin_mm": None, "mu_scaling": None})
            ops.append({"op": "itk_info", "path": aim})
            expect.append(("aim", aim, vol, cal, position))
    results = oracles.itk_batch(ops)
    assert all(r["ok"] for _, r in results), [r.get("error") for _, r in results if not r["ok"]]
    infos = [r["info"] for _, r in results[1::2]]
    for (kind, path, vol, cal, position), info in zip(expect, infos):
        h = S.read_header(path)
        assert np.array_equal(S.read_volume(h), vol), path
        assert h.position_voxels == tuple(position)
        np.testing.assert_allclose(h.voxel_size_mm, info["io_spacing"], rtol=1e-12)
        np.testing.assert_allclose(h.origin_mm, info["io_origin"], rtol=1e-6, atol=1e-5)  # ITK origin is float32
        # ISQ calibration doubles are exact (VAX G); ITK prints AIM log numbers with fewer digits
        _assert_calibration(h.calibration, cal, rel=0.0 if kind == "isq" else 1e-6)
        assert h.calibration.calibration_text == cal.calibration_text


def test_aimio_written_files_read_identically(tmp_path):
    ops, expect = [], []
    for i, (vol, spacing, position, cal) in enumerate(CASES):
        path = tmp_path / f"aimio_{i}.aim"
        ops.append({"op": "aimio_write_aim", "path": path, "array": vol, "spacing_mm": spacing,
                    "position": list(position), "offset": [0, 0, 0], "calibration": cal, "processing_log": None})
        ops.append({"op": "aimio_info", "path": path, "kind": None})
        expect.append((path, vol, cal, position))
        mask = (RNG.random(vol.shape) > 0.5).astype(np.int8) * 127
        mpath = tmp_path / f"aimio_mask_{i}.aim"
        ops.append({"op": "aimio_write_aim", "path": mpath, "array": mask, "spacing_mm": spacing,
                    "position": list(position), "offset": [0, 0, 0], "calibration": None, "processing_log": None})
        ops.append({"op": "aimio_info", "path": mpath, "kind": None})
        expect.append((mpath, mask, None, position))
    fl = RNG.normal(0, 300, size=(3, 4, 5)).astype(np.float32)
    fpath = tmp_path / "aimio_float.aim"
    ops.append({"op": "aimio_write_aim", "path": fpath, "array": fl, "spacing_mm": (0.06, 0.06, 0.06),
                "position": [1, 2, 3], "offset": [0, 0, 0], "calibration": None, "processing_log": None})
    ops.append({"op": "aimio_info", "path": fpath, "kind": None})
    expect.append((fpath, fl, None, (1, 2, 3)))
    results = oracles.aimio_batch(ops)
    assert all(r["ok"] for _, r in results), [r.get("error") for _, r in results if not r["ok"]]
    for (path, vol, cal, position), (_, res) in zip(expect, results[1::2]):
        info = res["info"]
        h = S.read_header(path)
        assert h.version == "AIMDATA_V030"
        assert np.array_equal(S.read_volume(h), vol), path
        assert list(h.position_voxels) == list(info["position"]) == list(position)
        np.testing.assert_allclose(h.voxel_size_mm, info["element_size"], rtol=1e-7)
        np.testing.assert_allclose(h.origin_mm, info["origin"], rtol=1e-7)
        if cal is not None:
            _assert_calibration(h.calibration, cal, rel=1e-8)  # AimIO logs print %.8e / %.5f


def test_our_files_read_the_same_by_itk_and_aimio(tmp_path):
    written = []  # (path, vol, cal, position, itk?, aimio?)
    for i, (vol, spacing, position, cal) in enumerate(CASES):
        written.append((S.write_isq(tmp_path / f"ours_{i}.isq", vol, voxel_size_mm=spacing, calibration=cal),
                        vol, cal, (0, 0, 0), True, True))
        for version in (20, 30):
            written.append((S.write_aim(tmp_path / f"ours_{i}_v{version}.aim", vol, version=version,
                                        voxel_size_mm=spacing, position_voxels=position, calibration=cal),
                            vol, cal, position, True, True))
        mask = (RNG.random(vol.shape) > 0.4).astype(np.int8) * 127
        for version in (20, 30):
            written.append((S.write_aim(tmp_path / f"ours_bin_{i}_v{version}.aim", mask, version=version,
                                        voxel_size_mm=spacing, position_voxels=position, compression="binCmp"),
                            mask, None, position, True, True))
        grey = RNG.integers(-128, 128, size=vol.shape, dtype=np.int8)
        grey.flat[0] = 0  # AimIO's own charCmp reader asserts on some first pairs; keep to the common case
        written.append((S.write_aim(tmp_path / f"ours_char_{i}.aim", grey, version=30, voxel_size_mm=spacing,
                                    position_voxels=position, compression="charCmp"),
                        grey, None, position, False, True))  # ITK reads charCmp pairs swapped (its bug)
    fl = RNG.normal(0, 2, size=(3, 4, 5)).astype(np.float32)
    written.append((S.write_aim(tmp_path / "ours_float_v30.aim", fl, version=30, voxel_size_mm=(0.06,) * 3),
                    fl, None, (0, 0, 0), True, False))  # AimIO cannot read IEEE float AIMs
    written.append((S.write_aim(tmp_path / "ours_float_v20.aim", fl, version=20, voxel_size_mm=(0.06,) * 3),
                    fl, None, (0, 0, 0), False, True))  # ITK cannot read VAX float AIMs

    itk_items = [w for w in written if w[4]]
    itk_results = oracles.itk_batch([{"op": "itk_read", "path": w[0]} for w in itk_items])
    for (path, vol, cal, position, _, _), (arr, res) in zip(itk_items, itk_results):
        assert res["ok"], (path, res.get("error"))
        info = res["info"]
        h = S.read_header(path)
        if info["values_are"] == "hu_truncated":
            expected = oracles.itk_hu_from_native(vol, cal.mu_scaling, cal.mu_water_per_cm, on_overflow="wrap")
        else:
            expected = vol.astype(arr.dtype)
        assert np.array_equal(arr, expected), path
        np.testing.assert_allclose(info["spacing"], h.voxel_size_mm, rtol=1e-7)
        np.testing.assert_allclose(info["origin"], h.origin_mm, rtol=1e-6, atol=1e-5)
        if cal is not None:
            meta = info["metadata"]
            assert meta["MuScaling"] == cal.mu_scaling
            assert meta["MuWater"] == pytest.approx(cal.mu_water_per_cm, rel=1e-12)
            assert meta["RescaleSlope"] == pytest.approx(cal.density_slope, rel=1e-12)
            assert meta["RescaleIntercept"] == pytest.approx(cal.density_intercept, rel=1e-12)

    aimio_items = [w for w in written if w[5]]
    aimio_results = oracles.aimio_batch([{"op": "aimio_read", "path": w[0], "unit": "native", "kind": None}
                                         for w in aimio_items])
    for (path, vol, cal, position, _, _), (arr, res) in zip(aimio_items, aimio_results):
        assert res["ok"], (path, res.get("error"))
        info = res["info"]
        h = S.read_header(path)
        assert np.array_equal(arr, vol), path
        if h.format == "AIM":
            assert list(info["position"]) == list(position)
            np.testing.assert_allclose(info["element_size"], h.voxel_size_mm, rtol=1e-7)
            if cal is not None:
                c = info["calibration"]["from_log"]
                assert c["mu_scaling"] == cal.mu_scaling
                assert c["mu_water_per_cm"] == pytest.approx(cal.mu_water_per_cm, rel=1e-12)
                assert c["density_slope"] == pytest.approx(cal.density_slope, rel=1e-12)
                assert c["density_intercept"] == pytest.approx(cal.density_intercept, rel=1e-12)
        else:
            np.testing.assert_allclose(info["spacing"], h.voxel_size_mm, rtol=1e-6)
            assert info["mu_scaling"] == cal.mu_scaling
            block = info["calibration_block"]
            assert block["mu_water"] == pytest.approx(cal.mu_water_per_cm, rel=1e-12)
            assert block["rescale_slope"] == pytest.approx(cal.density_slope, rel=1e-12)
            assert block["rescale_intercept"] == pytest.approx(cal.density_intercept, rel=1e-12)


def test_real_files_agree_with_aimio(real_data):
    names = ["CALLUS_1237.AIM", "TRAB_1240_SEG.AIM", "DB_07_DNN_DR_T1_TRAB_MASK.AIM",
             "test_isq_calibrated_binary_25.ISQ", "test_isq_native_only_binary_25.ISQ"]
    results = oracles.aimio_batch([{"op": "aimio_read", "path": real_data / n, "unit": "native", "kind": None}
                                   for n in names])
    for name, (arr, res) in zip(names, results):
        assert res["ok"], res.get("error")
        h = S.read_header(real_data / name)
        assert np.array_equal(S.read_volume(h), arr), name
        if h.format == "AIM":
            assert list(h.position_voxels) == list(res["info"]["position"])
            np.testing.assert_allclose(h.voxel_size_mm, res["info"]["element_size"], rtol=1e-7)
            c = res["info"]["calibration"]["from_log"]
            assert (c["mu_scaling"], c["mu_water_per_cm"]) == (h.calibration.mu_scaling, h.calibration.mu_water_per_cm)
            assert c["density_slope"] == h.calibration.density_slope
        else:
            np.testing.assert_allclose(h.voxel_size_mm, res["info"]["spacing"], rtol=1e-7)
