"""SCANCO AIM output (aim_writer.py): native values and masks, streamed through the writer seam.

References, independent of the code under test: aimio-py (AimIO) and ITKIOScanco reading the written
files in subprocesses (Testing/support/oracles.py), the real IPL-written masks in ../shared/data/real (our
binCmp run bytes must equal IPL's), and convert_file on the written AIM against convert_file on the
source (a native AIM must convert like a scanner file).
"""

from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ScancoUnitsLib import Calibration, convert_file, read_header, read_volume, write_aim, write_isq
from ScancoUnitsLib.formats.aim.compression import encode_bin_cmp
from ScancoUnitsLib.formats.aim.writer import AimVolumeWriter, aim_position_for, derived_log_text
from ScancoUnitsLib.io.transaction import AtomicOutputSet, live_partials
from ScancoUnitsLib.formats.writers import VolumeSpec, get_format

TESTING = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(TESTING))
import oracles  # noqa: E402
from cli_harness import run_cli  # noqa: E402

nrrd = pytest.importorskip("nrrd")

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm", calibration_type=2,
                  calibration_text="68 kVp, BH: 200 mg HA/ccm, Scaling 8192")
SIZE = (0.0607, 0.0607, 0.0607)
DERIVATION = ("Threshold low [per mille]                     250.000",
              "Threshold high [per mille]                   1000.000",
              "Threshold native                             8192 32767")


def _grey(shape=(9, 11, 13), seed=1240):
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1500, 16000, size=shape).astype(np.int16)
    volume.flat[:4] = (-32768, 32767, 8192, 8191)
    return volume


def _spec(base, volume, quantity, source, **kw):
    return VolumeSpec(base_path=Path(base), shape_zyx=volume.shape, dtype=volume.dtype,
                      spacing_mm=kw.pop("spacing", source.voxel_size_mm),
                      origin_mm=kw.pop("origin", source.origin_mm), quantity=quantity,
                      unit_label="", description=quantity, source=source, derivation=DERIVATION, **kw)


def _write(spec, volume, slab=4):
    fmt = get_format("aim")
    with AtomicOutputSet() as atomic:
        writer = fmt.open(spec, atomic)
        for z in range(0, volume.shape[0], slab):
            writer.write_slab(volume[z:z + slab])
        writer.close()
    (path,) = fmt.paths(spec)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aim_sources")
    grey = _grey()
    return {
        "grey": grey,
        "isq": read_header(write_isq(folder / "C0001240.ISQ", grey, voxel_size_mm=SIZE, calibration=CAL)),
        "aim": read_header(write_aim(folder / "GREY.AIM", grey, version=20, voxel_size_mm=SIZE,
                                     position_voxels=(1000, 748, 209), calibration=CAL)),
        "aim30": read_header(write_aim(folder / "GREY30.AIM", grey, version=30, voxel_size_mm=(0.082,) * 3,
                                       position_voxels=(567, 630, 0), calibration=CAL)),
    }


def test_registered_for_native_and_mask_only():
    fmt = get_format("aim")
    assert fmt.quantities == ("native", "mask")
    assert fmt.accepts("mask") and fmt.accepts("native")
    assert not any(fmt.accepts(q) for q in ("hu", "density_g_cc", "density_mg_ha_ccm", "mu"))


@pytest.mark.parametrize("source_key", ["aim", "aim30", "isq"])
def test_mask_is_bincmp_127_with_source_position_and_log(tmp_path, sources, source_key):
    source = sources[source_key]
    mask = (sources["grey"] >= 8192).astype(np.uint8)
    path = _write(_spec(tmp_path / "scan_BWmask", mask, "mask", source), mask)
    assert path.name == "scan_BWmask.AIM"
    header = read_header(path)
    assert header.version == "AIMDATA_V020" and header.data_type_name == "D1TbinCmp"
    np.testing.assert_array_equal(read_volume(header), mask.astype(np.int8) * 127)
    expected_pos = (0, 0, 0) if source_key == "isq" else source.position_voxels
    assert header.position_voxels == expected_pos
    np.testing.assert_allclose(header.voxel_size_mm, source.voxel_size_mm, rtol=1e-7)  # VAX F (float32)
    assert header.calibration == source.calibration
    log = header.processing_log
    if source_key != "isq":
        assert log.startswith(source.processing_log.rstrip("\n"))
    else:
        assert "Original file" in log and "C0001240.ISQ" in log
    assert all(line in log for line in DERIVATION)
    assert "Processed by" in log and "ScancoUnits" in log
    # the stream equals the whole-volume encoder's block
    raw = path.read_bytes()
    assert raw[header.data_offset:header.data_offset + header.data_size] == encode_bin_cmp(mask * 127)
    assert len(raw) % 512 == 0


def test_native_from_isq_converts_like_the_scanner_file(tmp_path, sources):
    source = sources["isq"]
    grey = sources["grey"]
    path = _write(_spec(tmp_path / "C0001240_native", grey, "native", source), grey, slab=2)
    header = read_header(path)
    assert header.data_type_name == "D1Tshort" and header.position_voxels == (0, 0, 0)
    np.testing.assert_array_equal(read_volume(header), grey)
    assert header.calibration.mu_scaling == CAL.mu_scaling
    assert header.calibration.is_calibrated
    a = convert_file(source.path, tmp_path / "from_isq", outputs=("hu", "density", "mask"))
    b = convert_file(path, tmp_path / "from_aim", outputs=("hu", "density", "mask"))
    for role in ("hu", "density", "mask"):
        va, fa = nrrd.read(os.fspath(a[role]), index_order="C")
        vb, fb = nrrd.read(os.fspath(b[role]), index_order="C")
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_allclose(fb["space directions"], fa["space directions"], rtol=1e-7)


def test_sub_region_shifts_the_position_and_half_voxels_are_refused(tmp_path, sources):
    source = sources["aim"]
    grey = sources["grey"][2:, 3:, 4:]
    origin = tuple(o + s * n for o, s, n in zip(source.origin_mm, source.voxel_size_mm, (4, 3, 2)))
    path = _write(_spec(tmp_path / "sub", grey, "native", source, origin=origin), grey)
    assert read_header(path).position_voxels == (1004, 751, 211)
    with pytest.raises(ValueError, match="whole number of voxels"):
        aim_position_for(source, source.voxel_size_mm,
                         (source.origin_mm[0] + 0.5 * SIZE[0],) + tuple(source.origin_mm[1:]))


def test_version_30_when_position_needs_it_and_float_native(tmp_path):
    volume = np.linspace(-1, 5, 60, dtype=np.float32).reshape(3, 4, 5)
    for version, expected in ((None, "D1Tfloat"), (30, "D1Ti3efloat")):
        path = tmp_path / f"f{version}.AIM"
        with AimVolumeWriter(path, volume.shape, np.float32, voxel_size_mm=SIZE, version=version,
                             processing_log=derived_log_text(None)) as writer:
            writer.write_slab(volume[:1])
            writer.write_slab(volume[1:])
        header = read_header(path)
        assert header.data_type_name == expected
        np.testing.assert_array_equal(read_volume(header), volume)
    path = tmp_path / "far.AIM"
    with AimVolumeWriter(path, (2, 2, 2), np.uint8, voxel_size_mm=SIZE, position_voxels=(0, 0, 1 << 32),
                         mask=True) as writer:
        writer.write_slab(np.ones((2, 2, 2), np.uint8))
    header = read_header(path)
    assert header.version == "AIMDATA_V030" and header.position_voxels == (0, 0, 1 << 32)
    with pytest.raises(ValueError, match="needs AIM v030"):
        AimVolumeWriter(tmp_path / "v20.AIM", (2, 2, 2), np.uint8, voxel_size_mm=SIZE, version=20,
                        position_voxels=(0, 0, 1 << 32), mask=True)
    with pytest.raises(ValueError, match="VAX"):
        with AimVolumeWriter(tmp_path / "inf.AIM", (1, 2, 2), np.float32, voxel_size_mm=SIZE) as writer:
            writer.write_slab(np.full((1, 2, 2), np.inf, np.float32))
    assert not (tmp_path / "v20.AIM").exists() and not (tmp_path / "inf.AIM").exists()
    np.testing.assert_array_equal(read_volume(header), np.full((2, 2, 2), 127, np.int8))


def test_abort_incomplete_and_wrong_quantity_leave_nothing(tmp_path, sources):
    grey = sources["grey"]
    spec = _spec(tmp_path / "x", grey, "native", sources["aim"])
    atomic = AtomicOutputSet()
    writer = get_format("aim").open(spec, atomic)
    writer.write_slab(grey[:3])
    writer.abort()
    atomic = AtomicOutputSet()
    writer = get_format("aim").open(_spec(tmp_path / "m", grey, "mask", sources["aim"]), atomic)
    writer.write_slab((grey[:3] > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="only 3 of 9 slices"):
        atomic.commit()
    with pytest.raises(ValueError, match="native values or masks only"):
        get_format("aim").open(_spec(tmp_path / "h", grey, "hu", sources["aim"]), AtomicOutputSet())
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in live_partials() if p.parent == tmp_path]


def test_mask_memory_stays_at_one_slab(tmp_path):
    ny = nx = 512
    nz = 48
    slab = np.zeros((1, ny, nx), np.uint8)
    tracemalloc.start()
    try:
        with AimVolumeWriter(tmp_path / "big.AIM", (nz, ny, nx), np.uint8, voxel_size_mm=SIZE, mask=True) as writer:
            for z in range(nz):
                slab[0] = 0
                slab[0, z:z + 100, 50:300] = 1
                writer.write_slab(slab)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * ny * nx + (4 << 20), peak   # a few slab-sized temporaries, never the 12 MB volume
    header = read_header(tmp_path / "big.AIM")
    volume = read_volume(header)
    assert volume[47, 47:147, 50:300].min() == 127 and int(volume.sum(dtype=np.int64)) == 127 * 250 * sum(
        min(100, ny - z) for z in range(nz))


def test_real_files_oracles_info_and_convert(tmp_path, real_data, capsys, in_process_cli):
    """Real IPL files through the writer: IPL's own binCmp bytes, aimio + ITK read-back, info, convert."""
    written = {}
    for name, quantity in (("TRAB_1240_SEG.AIM", "mask"), ("DB_07_DNN_DR_T1_TRAB_MASK.AIM", "mask"),
                           ("CALLUS_1237.AIM", "native"), ("test_isq_calibrated_binary_25.ISQ", "native")):
        source = read_header(real_data / name)
        native = read_volume(source)
        volume = (native != 0).astype(np.uint8) if quantity == "mask" else native
        path = _write(_spec(tmp_path / name.split(".")[0], volume, quantity, source), volume, slab=5)
        header = read_header(path)
        expected = volume.astype(np.int8) * 127 if quantity == "mask" else native
        np.testing.assert_array_equal(read_volume(header), expected)
        assert header.position_voxels == (source.position_voxels if source.format == "AIM" else (0, 0, 0))
        if quantity == "mask":  # the very run bytes IPL wrote (IPL's value pair may be 0/1; ours is 0/127)
            h_len = 8 if source.version == "AIMDATA_V030" else 4
            ipl = (real_data / name).read_bytes()[source.data_offset + h_len + 2:source.data_offset + source.data_size]
            ours = path.read_bytes()[header.data_offset + 4 + 2:header.data_offset + header.data_size]
            assert ours == ipl
        written[name] = (path, source, expected)

    aimio = oracles.aimio_batch([{"op": "aimio_read", "path": p} for p, _, _ in written.values()])
    itk = oracles.itk_batch([{"op": "itk_read", "path": p} for p, _, _ in written.values()])
    for (path, source, expected), (a_arr, a_res), (i_arr, i_res) in zip(written.values(), aimio, itk):
        assert a_res["ok"], a_res.get("error")
        assert i_res["ok"], i_res.get("error")
        np.testing.assert_array_equal(a_arr, expected)
        position = source.position_voxels if source.format == "AIM" else (0, 0, 0)
        assert tuple(a_res["info"]["position"]) == position
        spacing = np.asarray(read_header(path).voxel_size_mm)
        np.testing.assert_allclose(i_res["info"]["origin"], np.asarray(position) * spacing, atol=1e-4)
        cal = source.calibration
        if i_res["info"]["values_are"] == "hu_truncated":
            np.testing.assert_array_equal(i_arr, oracles.itk_hu_from_native(expected, cal.mu_scaling,
                                                                             cal.mu_water_per_cm))
        else:
            np.testing.assert_array_equal(i_arr, expected)

    for path, _, _ in written.values():
        status, out, err = run_cli(capsys, "info", path)
        assert status == 0, err
        assert path.name in out or "AIM" in out

    # a native AIM from a real scanner AIM converts like the scanner's file
    path, source, _ = written["CALLUS_1237.AIM"]
    a = convert_file(source.path, tmp_path / "c_src", outputs=("hu", "density"))
    b = convert_file(path, tmp_path / "c_aim", outputs=("hu", "density"))
    for role in ("hu", "density"):
        np.testing.assert_array_equal(nrrd.read(os.fspath(a[role]))[0], nrrd.read(os.fspath(b[role]))[0])
