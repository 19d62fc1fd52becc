"""Core reader: real files, writer round trips, detection by content, bad input."""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ScancoUnitsLib as S
from ScancoUnitsLib.errors import ScancoFormatError
from ScancoUnitsLib.core.header import Calibration, ScannerInfo, scaling_in_calibration_text
from ScancoUnitsLib.formats.isq import VAX_G_MIN_MAGNITUDE

# ---- real files: facts AimIO reads from them (../shared/data/real/README.md) -----------------------


def test_callus_grey_image(real_data):
    h = S.read_header(real_data / "CALLUS_1237.AIM")
    assert (h.format, h.version, h.voxel_type) == ("AIM", "AIMDATA_V020", "int16")
    assert h.dimensions == (43, 28, 32)
    assert h.position_voxels == (1300, 960, 64)
    np.testing.assert_allclose(h.voxel_size_mm, (0.06069965, 0.06069965, 0.06069643), rtol=1e-7)
    np.testing.assert_allclose(h.origin_mm, np.array(h.position_voxels) * np.array(h.voxel_size_mm))
    c = h.calibration
    assert (c.mu_scaling, c.mu_water_per_cm) == (8192, 0.2366)
    assert (c.density_slope, c.density_intercept, c.density_unit) == (1662.52405, -398.609009, "mg HA/ccm")
    assert c.calibration_type == 2 and c.is_calibrated
    v = S.read_volume(real_data / "CALLUS_1237.AIM")
    assert v.shape == (32, 28, 43) and v.dtype == np.int16
    assert (int(v.min()), int(v.max())) == (112, 7875)
    assert h.scanner.patient_index == 1237 and h.scanner.energy_v == 68000
    assert h.scanner.modification_date == "2017-04-08T15:52:50.250000"
    assert h.processing_log.startswith("!") and ("Mu_Scaling", "8192") in [
        (k, v.split()[0]) for k, v in h.processing_log_items if v]


def test_binary_masks(real_data):
    seg = S.read_header(real_data / "TRAB_1240_SEG.AIM")
    assert (seg.version, seg.compression, seg.dimensions) == ("AIMDATA_V020", "binCmp", (108, 108, 126))
    assert seg.position_voxels == (1000, 748, 209)
    v = S.read_volume(seg)
    assert v.shape == (126, 108, 108) and set(np.unique(v)) == {0, 1}
    db = S.read_header(real_data / "DB_07_DNN_DR_T1_TRAB_MASK.AIM")
    assert (db.version, db.compression, db.dimensions) == ("AIMDATA_V030", "binCmp", (294, 346, 110))
    assert db.position_voxels == (567, 630, 0)
    np.testing.assert_allclose(db.voxel_size_mm, (0.082,) * 3, rtol=1e-12)
    c = db.calibration
    assert (c.mu_scaling, c.mu_water_per_cm, c.density_slope, c.density_intercept) == (
        8192, 0.2415, 1431.68396, -349.852997)
    assert set(np.unique(S.read_volume(db))) == {0, 127}


def test_isq_fixtures(real_data):
    cal = S.read_header(real_data / "test_isq_calibrated_binary_25.ISQ")
    nat = S.read_header(real_data / "test_isq_native_only_binary_25.ISQ")
    assert cal.dimensions == nat.dimensions == (25, 25, 25)
    assert cal.voxel_size_mm == (0.06, 0.06, 0.06) and cal.origin_mm == (0.0, 0.0, 0.0)
    assert cal.data_offset == 2560 and nat.data_offset == 512
    c = cal.calibration
    assert (c.mu_scaling, c.mu_water_per_cm, c.density_slope, c.density_intercept) == (1000, 1.0, 2.0, 3.0)
    assert c.density_unit == "mg HA/ccm"
    assert not nat.calibration.has_hu and nat.calibration.mu_scaling == 1000
    a, b = S.read_volume(cal), S.read_volume(nat)
    assert np.array_equal(a, b) and set(np.unique(a)) == {0, 1}


def test_info_cli_json_and_text(real_data):
    exe = shutil.which("scanco-units", path=os.path.dirname(sys.executable))
    command = [exe] if exe else [sys.executable, "-m", "ScancoUnitsLib.cli.main"]  # not installed: from the tree
    out = subprocess.run([*command, "info", "--json", str(real_data / "CALLUS_1237.AIM")],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    assert d["dimensions"] == [43, 28, 32] and d["calibration"]["mu_scaling"] == 8192
    assert d["scanner"]["patient_index"] == 1237 and len(d["processing_log_items"]) > 20
    text = subprocess.run([*command, "info", str(real_data / "test_isq_native_only_binary_25.ISQ")],
                          capture_output=True, text=True, check=True).stdout
    assert "25 x 25 x 25" in text and "WARNING: no HU output possible" in text


# ---- detection by content -----------------------------------------------------------------------------

def test_vms_suffix_and_wrong_extension(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    isq = S.write_isq(tmp_path / "C0004255.ISQ;1", vol, voxel_size_mm=(0.01, 0.01, 0.01))
    assert np.array_equal(S.read_volume(isq), vol)
    aim = S.write_aim(tmp_path / "mask.isq", vol, voxel_size_mm=(0.1, 0.1, 0.1))
    h = S.read_header(aim)
    assert h.format == "AIM" and np.array_equal(S.read_volume(h), vol)


# ---- writer round trips (hypothesis) -----------------------------------------------------------------

calibrations = st.builds(
    Calibration,
    mu_scaling=st.sampled_from([1000, 4096, 8192]),
    mu_water_per_cm=st.floats(0.1, 1.5),
    density_slope=st.floats(100, 3000),
    density_intercept=st.floats(-500, 500),
    density_unit=st.just("mg HA/ccm"),
    calibration_type=st.just(2),
    calibration_text=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip),
)
shapes = st.tuples(st.integers(1, 7), st.integers(1, 9), st.integers(1, 11))


def _vax_g_holds(value) -> bool:
    return value == 0 or abs(value) >= VAX_G_MIN_MAGNITUDE


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=shapes, cal=calibrations, seed=st.integers(0, 2**32 - 1),
       size=st.tuples(*[st.integers(2, 400)] * 3))
@example(shape=(1, 1, 1), seed=0, size=(2, 2, 2),  # once read back as None (VAX G has no subnormals)
         cal=Calibration(mu_scaling=4096, mu_water_per_cm=0.5, density_slope=300.0, density_intercept=-2.2e-311,
                         density_unit="mg HA/ccm", calibration_type=2, calibration_text=""))
def test_isq_round_trip(tmp_path, shape, cal, seed, size):
    rng = np.random.default_rng(seed)
    vol = rng.integers(-32768, 32768, size=shape, dtype=np.int16)
    voxel_um = [s / 2 for s in size]
    path = tmp_path / "rt.isq"
    write = functools.partial(
        S.write_isq, path, vol, voxel_size_mm=[u / 1000 for u in voxel_um], calibration=cal,
        scanner=ScannerInfo(scanner_id=3401, energy_v=68000, intensity_ua=1470, patient_name="Ø test"))
    if not all(_vax_g_holds(v) for v in (cal.mu_water_per_cm, cal.density_slope, cal.density_intercept)):
        with pytest.raises(ValueError, match="too small for a VAX G-float"):
            write()  # refused, never stored as a zero or a reserved operand
        assert not path.exists()
        return
    write()
    h = S.read_header(path)
    assert np.array_equal(S.read_volume(h), vol)
    z, y, x = shape
    expect = [round(u * n) / n / 1000 for u, n in zip(voxel_um, (x, y, z))]
    np.testing.assert_allclose(h.voxel_size_mm, expect, rtol=1e-12)
    c = h.calibration
    assert c.mu_scaling == cal.mu_scaling
    # VAX G holds every float64 of magnitude >= 2**-1024 exactly
    assert c.mu_water_per_cm == cal.mu_water_per_cm
    assert c.density_slope == cal.density_slope
    assert c.density_intercept == cal.density_intercept
    assert c.density_unit == cal.density_unit and c.density_mg_per_unit == 1.0
    text_scaling = scaling_in_calibration_text(cal.calibration_text)
    assert len(c.conflicts) == (0 if text_scaling in (None, cal.mu_scaling) else 1)
    assert c.calibration_text == (cal.calibration_text or None)
    assert h.scanner.patient_name == "Ø test" and h.scanner.energy_v == 68000
    assert h.raw_field("min_data_value") == vol.min() and h.raw_field("max_data_value") == vol.max()
    assert h.file_size % 512 == 0


dtypes = st.sampled_from(["int16", "int8", "uint8", "uint16", "int32", "float32"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=shapes, dtype=dtypes, version=st.sampled_from([20, 30]), cal=st.none() | calibrations,
       pos=st.tuples(*[st.integers(-5000, 5000)] * 3), seed=st.integers(0, 2**32 - 1),
       size_um=st.tuples(*[st.integers(1, 500)] * 3))
def test_aim_round_trip(tmp_path, shape, dtype, version, cal, pos, seed, size_um):
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        vol = rng.normal(0, 100, size=shape).astype(np.float32)
    else:
        info = np.iinfo(dtype)
        vol = rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    sizes = [u / 1000 for u in size_um]
    path = tmp_path / "rt.aim"
    S.write_aim(path, vol, version=version, voxel_size_mm=sizes, position_voxels=pos, calibration=cal)
    h = S.read_header(path)
    assert h.version == f"AIMDATA_V0{version}"
    assert h.voxel_type == dtype and h.position_voxels == pos
    assert np.array_equal(S.read_volume(h), vol)
    rtol = 1e-7 if version == 20 else 1e-12  # v020 stores VAX F (float32), v030 integer nanometres
    np.testing.assert_allclose(h.voxel_size_mm, sizes, rtol=rtol)
    np.testing.assert_allclose(h.origin_mm, np.array(pos) * np.array(h.voxel_size_mm))
    if cal is None:
        assert h.calibration.mu_scaling is None and not h.calibration.has_hu
    else:
        for name in ("mu_scaling", "mu_water_per_cm", "density_slope", "density_intercept", "density_unit"):
            assert getattr(h.calibration, name) == getattr(cal, name), name
        text_scaling = scaling_in_calibration_text(cal.calibration_text)
        assert len(h.calibration.conflicts) == (0 if text_scaling in (None, cal.mu_scaling) else 1)


@pytest.mark.parametrize("version", [20, 30])
@pytest.mark.parametrize("compression", ["binCmp", "charCmp"])
def test_compressed_aim_round_trip(tmp_path, version, compression):
    rng = np.random.default_rng(7)
    vol = (rng.random((9, 13, 17)) > 0.6).astype(np.int8) * 127
    vol[:, :5, :] = 0  # long runs
    path = S.write_aim(tmp_path / "m.aim", vol, version=version, voxel_size_mm=(0.082,) * 3,
                       compression=compression)
    h = S.read_header(path)
    assert h.compression == compression
    assert np.array_equal(S.read_volume(h), vol)
    for slices in (1, 2, 4, 9):
        assert np.array_equal(np.concatenate(list(S.iter_slabs(path, slices=slices))), vol)


def test_iter_slabs_matches_volume_and_random_access(tmp_path):
    vol = np.random.default_rng(1).integers(-1000, 5000, size=(23, 5, 7), dtype=np.int16)
    path = S.write_isq(tmp_path / "a.isq", vol, voxel_size_mm=(0.01,) * 3)
    for slices in (1, 4, 23, 100):
        parts = list(S.iter_slabs(path, slices=slices))
        assert all(p.shape[0] <= slices for p in parts)
        assert np.array_equal(np.concatenate(parts), vol)
    with S.open_voxels(path) as src:
        out = np.empty((3, 5, 7), np.int16)
        assert src.read_slab(10, 13, out=out) is out and np.array_equal(out, vol[10:13])
        with pytest.raises(IndexError):
            src.read_slab(20, 24)


def test_header_to_dict_is_json_complete(tmp_path):
    cal = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                      density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp")
    path = S.write_aim(tmp_path / "a.aim", np.zeros((2, 2, 2), np.int16), voxel_size_mm=(0.01,) * 3,
                       calibration=cal, scanner=ScannerInfo(site=4, patient_name="x"))
    d = json.loads(json.dumps(S.read_header(path).to_dict()))
    assert d["calibration"]["density_slope"] == 355.52
    assert d["calibration"]["usable"] == {"mu": True, "hu": True, "density": True}
    assert d["scanner"]["site"] == 4 and ["Mu_Scaling", "4096"] in d["processing_log_items"]


# ---- bad input: one exception type naming the file and the problem ------------------------------------

def _good_isq(tmp_path, shape=(4, 5, 6)):
    cal = Calibration(mu_scaling=4096, mu_water_per_cm=0.5, density_slope=300.0, density_intercept=-200.0)
    return S.write_isq(tmp_path / "good.isq", np.ones(shape, np.int16), voxel_size_mm=(0.01,) * 3,
                       calibration=cal)


def _patched(tmp_path, src, offset, fmt, value, name="bad"):
    data = bytearray(open(src, "rb").read())
    struct.pack_into(fmt, data, offset, value)
    dst = tmp_path / name
    dst.write_bytes(bytes(data))
    return dst


def _expect_error(path, *words):
    with pytest.raises(ScancoFormatError) as info:
        S.read_volume(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_bad_magic(tmp_path):
    p = tmp_path / "x.isq"
    p.write_bytes(b"NOT A SCANCO FILE" + b"\0" * 600)
    _expect_error(p, "not a SCANCO")


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.aim").write_bytes(b"")
    _expect_error(tmp_path / "empty.aim", "empty")
    _expect_error(tmp_path / "missing.isq", "no such file")
    _expect_error(tmp_path, "folder")


def test_truncated_isq_data(tmp_path):
    good = _good_isq(tmp_path)
    data = open(good, "rb").read()
    p = tmp_path / "short.isq"
    p.write_bytes(data[:2560 + 100])
    _expect_error(p, "truncated")
    p.write_bytes(data[:300])
    _expect_error(p, "truncated")


def test_dimensions_inconsistent_with_file_size(tmp_path):
    good = _good_isq(tmp_path)
    _expect_error(_patched(tmp_path, good, 52, "<i", 100000), "truncated", "100000")


def test_negative_and_absurd_dimensions(tmp_path):
    good = _good_isq(tmp_path)
    _expect_error(_patched(tmp_path, good, 44, "<i", -3), "dimension")
    _expect_error(_patched(tmp_path, good, 48, "<i", 0), "dimension")
    _expect_error(_patched(tmp_path, good, 48, "<i", 2**31 - 1), "dimension")
    _expect_error(_patched(tmp_path, good, 56, "<i", 0), "voxel size")


def test_offset_past_end(tmp_path):
    good = _good_isq(tmp_path)
    _expect_error(_patched(tmp_path, good, 508, "<i", 10**6), "past the end")
    _expect_error(_patched(tmp_path, good, 508, "<i", -2), "negative")


def test_unknown_isq_data_type(tmp_path):
    good = _good_isq(tmp_path)
    _expect_error(_patched(tmp_path, good, 16, "<i", 1), "RSQ")
    _expect_error(_patched(tmp_path, good, 16, "<i", 77), "unknown")


def test_aim_unknown_type_and_compression(tmp_path):
    good = S.write_aim(tmp_path / "g.aim", np.zeros((2, 3, 4), np.int16), voxel_size_mm=(0.1,) * 3)
    _expect_error(_patched(tmp_path, good, 20 + 20, "<i", 0x00640001, "zb.aim"), "D1TZBencoded")
    _expect_error(_patched(tmp_path, good, 20 + 20, "<i", 0x00990001, "u.aim"), "unknown voxel type")
    good30 = S.write_aim(tmp_path / "g30.aim", np.zeros((2, 3, 4), np.int16), version=30,
                         voxel_size_mm=(0.1,) * 3)
    _expect_error(_patched(tmp_path, good30, 56 + 12, "<i", 0x00120003, "rgb.aim"), "D1Trgb")


def test_aim_truncated_and_bad_blocks(tmp_path):
    good = S.write_aim(tmp_path / "g.aim", np.zeros((2, 3, 4), np.int16), voxel_size_mm=(0.1,) * 3)
    data = open(good, "rb").read()
    h = S.read_header(good)
    p = tmp_path / "t.aim"
    p.write_bytes(data[:h.data_offset + h.data_size - 5])
    _expect_error(p, "truncated")
    _expect_error(_patched(tmp_path, good, 8, "<i", 10**9, "log.aim"), "processing log")
    _expect_error(_patched(tmp_path, good, 8, "<i", -1, "neg.aim"), "negative")
    _expect_error(_patched(tmp_path, good, 20 + 36, "<i", -4, "dim.aim"), "dimension")
    _expect_error(_patched(tmp_path, good, 20 + 40, "<i", 4000, "big.aim"), "truncated")
    good30 = S.write_aim(tmp_path / "g30.aim", np.zeros((2, 3, 4), np.int16), version=30,
                         voxel_size_mm=(0.1,) * 3)
    _expect_error(_patched(tmp_path, good30, 56 + 40, "<q", 2**40, "huge.aim"), "dimension")
    _expect_error(_patched(tmp_path, good30, 56 + 184, "<q", 0, "el.aim"), "element size")


def test_compressed_stream_too_short(tmp_path):
    vol = np.zeros((4, 4, 4), np.int8)
    vol[1:3] = 1
    good = S.write_aim(tmp_path / "m.aim", vol, voxel_size_mm=(0.1,) * 3, compression="binCmp")
    data = bytearray(open(good, "rb").read())
    h = S.read_header(good)
    # cut the run bytes short, and say so consistently in the block sizes
    keep = 7
    struct.pack_into("<i", data, 12, keep)
    struct.pack_into("<i", data, h.data_offset, keep)
    p = tmp_path / "cut.aim"
    p.write_bytes(bytes(data[:h.data_offset + keep]))
    _expect_error(p, "voxels")


# ---- memory: slab iteration of a 1 GiB file stays far below the file size ------------------------------

def test_slab_iteration_memory_of_1gib_file(tmp_path):
    path = tmp_path / "big.isq"
    nx = ny = 1024
    nz = 512
    with open(path, "wb") as f:
        header = S.write_isq(tmp_path / "hdr.isq", np.zeros((1, ny, nx), np.int16), voxel_size_mm=(0.01,) * 3)
        head = bytearray(open(header, "rb").read(512))
        struct.pack_into("<i", head, 52, nz)
        f.write(head)
        f.truncate(512 + nx * ny * nz * 2)  # sparse: costs no disk
    # VmHWM is this process image's own peak (ru_maxrss would include the forking pytest process)
    script = (
        "import sys, ScancoUnitsLib as S\n"
        "n = 0\n"
        "for slab in S.iter_slabs(sys.argv[1], slices=16):\n"
        "    n += slab.shape[0]\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(n, hwm)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    slices, peak_kib = map(int, out.stdout.split())
    assert slices == nz
    assert peak_kib * 1024 < 150 * 2**20, f"peak RSS {peak_kib} KiB while iterating a 1 GiB file"


# ---- memory bounded by bytes: a slice over the budget is read, converted and written in row pieces ----

def _single_slice_bin_cmp(path, nx, ny):
    """A one-slice all-background binCmp AIM of nx * ny voxels, written without building the volume."""
    from ScancoUnitsLib.formats.aim.format import aim_header_bytes

    full, rest = divmod(nx * ny, 254)
    runs = np.full(full + (1 if rest else 0), 255, np.uint8)
    if rest:
        runs[-1] = rest
    payload = (4 + 2 + runs.size).to_bytes(4, "little") + bytes([0, 127]) + runs.tobytes()
    log = b"\x00"
    with open(path, "wb") as f:
        f.write(aim_header_bytes(20, 0x00150001, (nx, ny, 1), (0, 0, 0), (0.01,) * 3, len(log), len(payload)))
        f.write(log)
        f.write(payload)
    return path


def test_conversion_of_one_huge_slice_has_bounded_memory(tmp_path):
    """Issue 19.9: one binCmp slice of 2^18 x 1024 voxels (a 1 MB file, 256 MiB of voxels): whole-slice
    slabs peaked at more than 512 MB (the native slice and the mask slice); row pieces keep the
    conversion near the interpreter's own size."""
    nx, ny = 1 << 18, 1024
    path = _single_slice_bin_cmp(tmp_path / "wide.AIM", nx, ny)
    assert path.stat().st_size < 2 << 20
    out = tmp_path / "out"
    script = (
        "import sys\n"
        "from ScancoUnitsLib.cli import main as cli\n"
        "status = cli.main(['convert', sys.argv[1], '-o', sys.argv[2], '-q'])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(status, hwm)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    status, peak_kib = map(int, done.stdout.split()[-2:])
    assert status == 0, done.stderr
    mask = out / "wide_mask.nrrd"
    assert mask.stat().st_size > nx * ny  # header + one byte a voxel
    with open(mask, "rb") as f:
        f.seek(-(1 << 20), os.SEEK_END)
        assert not any(f.read())
    assert peak_kib * 1024 < 200 * 2**20, f"peak RSS {peak_kib} KiB for a slice of {nx * ny} voxels"


def _row_kinds(tmp_path):
    rng = np.random.default_rng(3)
    mask = (rng.random((5, 9, 11)) > 0.5).astype(np.int8) * 127
    grey = rng.integers(-3000, 9000, size=(5, 9, 11)).astype(np.int16)
    files = {
        "isq": S.write_isq(tmp_path / "g.isq", grey, voxel_size_mm=(0.01,) * 3),
        "float_vax": S.write_aim(tmp_path / "f.aim", grey.astype(np.float32) / 7, voxel_size_mm=(0.01,) * 3),
        "binCmp": S.write_aim(tmp_path / "b.aim", mask, voxel_size_mm=(0.01,) * 3, compression="binCmp"),
        "charCmp": S.write_aim(tmp_path / "c.aim", mask, version=30, voxel_size_mm=(0.01,) * 3,
                               compression="charCmp"),
    }
    return files


def test_rows_of_a_slice_match_whole_slices(tmp_path):
    """``read_rows`` (the pieces of a slice over the memory budget) gives the rows ``read_slab`` gives,
    for uncompressed, VAX float, binCmp, charCmp, bit8 and bordered compressed data, in any order."""
    from ScancoUnitsLib.formats.aim.compression import CompressedVoxelDecoder, encode_bin_cmp, encode_bit8

    for kind, path in _row_kinds(tmp_path).items():
        whole = S.read_volume(path)
        nz, ny, nx = whole.shape
        with S.open_voxels(path) as src:
            for z in (0, 2, 1, 4, 3):  # a backward jump restarts a compressed stream
                for y0, y1 in ((0, 4), (4, 5), (5, 9), (3, 3), (0, 9)):
                    got = src.read_rows(z, y0, y1)
                    assert got.shape == (1, y1 - y0, nx)
                    assert np.array_equal(got[0], whole[z, y0:y1]), (kind, z, y0, y1)
            pieces = list(src.iter_pieces(max_voxels=2 * nx))
            assert all(p.size <= 2 * nx for p in pieces)
            assert np.array_equal(np.concatenate([p.reshape(-1) for p in pieces]), whole.reshape(-1))
    rng = np.random.default_rng(5)
    volume = (rng.random((5, 7, 9)) > 0.4).astype(np.int8) * 127
    interior = volume[1:4, 2:5, 1:8]
    block = encode_bin_cmp(interior)
    bordered = np.zeros_like(volume)
    bordered[1:4, 2:5, 1:8] = interior
    bit8 = encode_bit8(volume)
    for kind, data, off, expected in (("binCmp", block, (1, 2, 1), bordered), ("bit8", bit8, (0, 0, 0), volume)):
        with CompressedVoxelDecoder(data, 0, len(data), (9, 7, 5), kind, off_xyz=off) as decoder:
            for z in range(5):
                for y0, y1 in ((0, 1), (1, 3), (3, 7)):
                    got = decoder.read_rows(z, y0, y1)
                    assert np.array_equal(got[0], expected[z, y0:y1]), (kind, z, y0, y1)


def _outputs_of(folder):
    import gzip

    got = {}
    for p in sorted(folder.iterdir()):
        if p.name.endswith("_metadata.json"):
            meta = json.loads(p.read_text())
            got[p.name] = (meta["outputs"], meta["mask_voxels"], meta["native_range"], meta["statistics"],
                           meta["hu_clipped_voxels"])
        elif p.name.endswith(".AIM"):  # the processing log holds the time it was written
            data = p.read_bytes()
            got[p.name] = data[S.read_header(p).data_offset:]
        elif p.is_file():
            data = p.read_bytes()
            got[p.name] = gzip.decompress(data) if p.name.endswith(".gz") else data
        else:
            got[p.name] = {str(q.relative_to(p)): q.read_bytes() for q in sorted(p.rglob("*")) if q.is_file()}
    return got


@pytest.mark.parametrize("formats,compress", [(("nrrd", "nifti"), False), (("nifti",), True),
                                              (("aim",), False), (("ome-zarr",), False)])
def test_split_slices_write_the_same_outputs(tmp_path, monkeypatch, formats, compress):
    """With a byte budget below one slice, every format (row pieces, or whole slices put together for
    a writer without them) and the statistics give the files whole slabs give."""
    from ScancoUnitsLib.pipeline import engine
    from ScancoUnitsLib.pipeline.convert import convert_file
    from ScancoUnitsLib.core.thresholds import ThresholdSpec

    if "ome-zarr" in formats:
        pytest.importorskip("zarr")
    if "nifti" in formats:
        pytest.importorskip("nibabel")
    cal = Calibration(mu_scaling=4096, mu_water_per_cm=0.5, density_slope=350.0, density_intercept=-200.0,
                      density_unit="mg HA/ccm", calibration_type=2)
    grey = np.random.default_rng(2).integers(-2000, 9000, size=(6, 13, 17)).astype(np.int16)
    path = S.write_aim(tmp_path / "g.aim", grey, voxel_size_mm=(0.01,) * 3, calibration=cal)
    outputs = ("native", "mask") if "aim" in formats else ("hu", "density", "mu", "mask", "native")
    options = dict(outputs=outputs, formats=formats, compress=compress, statistics=True,
                   thresholds=ThresholdSpec(200, 900, "permille"))
    convert_file(path, tmp_path / "whole", **options)
    monkeypatch.setattr(engine, "SLAB_SET_MAX_BYTES", 17 * 4 * 12)  # 4 rows a piece
    assert engine.slab_layout(S.read_header(path), 12).rows == 4
    convert_file(path, tmp_path / "rows", **options)
    whole, rows = _outputs_of(tmp_path / "whole"), _outputs_of(tmp_path / "rows")
    assert list(whole) == list(rows)
    for name in whole:
        assert whole[name] == rows[name], name


def test_split_slices_fill_target_arrays_and_plain_sinks(tmp_path, monkeypatch):
    """Slicer's path (outputs converted straight into node arrays, plain ``write(z, slab)`` sinks and
    observers): the same arrays with row pieces as with whole slabs, every n-th slice too."""
    from ScancoUnitsLib.pipeline import engine
    from ScancoUnitsLib.pipeline.engine import EngineOutput, run_engine

    cal = Calibration(mu_scaling=4096, mu_water_per_cm=0.5, density_slope=350.0, density_intercept=-200.0,
                      density_unit="mg HA/ccm", calibration_type=2)
    grey = np.random.default_rng(4).integers(-2000, 9000, size=(7, 11, 13)).astype(np.int16)
    header = S.read_header(S.write_isq(tmp_path / "g.isq", grey, voxel_size_mm=(0.01,) * 3, calibration=cal))

    def run(z_selection):
        n = len(z_selection)
        hu = np.zeros((n, 11, 13), np.int16)
        native = np.zeros((n, 11, 13), np.int16)
        seen, observed = [], []

        class Plain:
            def write(self, z, slab):
                seen.append((z.start, slab.copy()))

        outs = [EngineOutput("hu", "hu", np.dtype(np.int16), [], target=hu),
                EngineOutput("native", "native", np.dtype(np.int16), [], target=native),
                EngineOutput("mu", "mu", np.dtype(np.float32), [Plain()])]
        with S.open_voxels(header) as source:
            run_engine(header, source, outs, z_selection=z_selection,
                       observers=[lambda z0, nat, views: observed.append((z0, nat.copy(), views["hu"].copy()))])
        return hu, native, seen, observed

    for selection in (range(7), range(1, 7, 3)):
        monkeypatch.setattr(engine, "SLAB_SET_MAX_BYTES", 32 << 20)
        expected = run(selection)
        monkeypatch.setattr(engine, "SLAB_SET_MAX_BYTES", 13 * 3 * 8)  # 3 rows a piece
        got = run(selection)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
        assert np.array_equal(got[1], grey[selection.start:selection.stop:selection.step])
        whole_mu = np.concatenate([s for _, s in expected[2]])
        assert [z for z, s in got[2] for _ in range(s.shape[0])] == list(selection)
        assert np.array_equal(np.concatenate([s for _, s in got[2]]), whole_mu)
        assert np.array_equal(np.concatenate([n for _, n, _ in got[3]]), np.concatenate([n for _, n, _ in expected[3]]))
        assert np.array_equal(np.concatenate([h for _, _, h in got[3]]), got[0])
