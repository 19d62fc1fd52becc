"""Conversion to HU / density / µ / mask NRRDs: exact values, geometry, metadata, refusal, atomicity."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import nrrd
import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.io.transaction import OutputExistsError
from ScancoUnitsLib.cli.convert import assign_stems, find_inputs
from ScancoUnitsLib.pipeline.convert import convert_file, output_stem
from ScancoUnitsLib.errors import CalibrationMissingError
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.core.thresholds import ThresholdSpec

import oracles

XTREME_II = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                        density_intercept=-391.209015, density_unit="mg HA/ccm", calibration_type=2,
                        calibration_text="68 kVp, BH: 200 mg HA/ccm, Scaling 8192, 0.2 CU")
MICRO_CT = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                       density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp")


def _volume(shape=(6, 7, 9), seed=3):
    v = np.random.default_rng(seed).integers(-32768, 32768, size=shape, dtype=np.int16)
    v.flat[0], v.flat[1], v.flat[-1] = -32768, 32767, 0
    v.flat[2], v.flat[3] = 8191, 8192  # both sides of the 250 per mille threshold
    return v


def _reference(native, cal):
    n = native.astype(np.float64)
    mu = n / cal.mu_scaling
    hu = n * 1000.0 / (cal.mu_scaling * cal.mu_water_per_cm) - 1000.0
    rho = (n / cal.mu_scaling) * cal.density_slope + cal.density_intercept
    return mu, hu, rho


@pytest.fixture()
def calibrated_isq(tmp_path):
    vol = _volume()
    path = S.write_isq(tmp_path / "C0001234.ISQ", vol,
                       voxel_size_mm=(0.01, 0.01, 0.01), calibration=MICRO_CT)
    return Path(path), vol


def test_every_output_exact_and_self_describing(calibrated_isq, tmp_path):
    path, vol = calibrated_isq
    out = tmp_path / "out"
    written = convert_file(path, out, outputs=("hu", "density", "mask", "mu", "native"), slab_slices=2)
    assert {p.name for p in written.values()} == {
        "C0001234_HU.nrrd", "C0001234_RHO.nrrd", "C0001234_BWmask.nrrd", "C0001234_MU.nrrd",
        "C0001234_native.nrrd", "C0001234_metadata.json"}
    mu, hu, rho = _reference(vol, MICRO_CT)
    data = {role: nrrd.read(str(p), index_order="C") for role, p in written.items() if role != "metadata"}
    assert data["native"][0].dtype == np.int16 and np.array_equal(data["native"][0], vol)
    assert np.array_equal(data["hu"][0], np.clip(np.rint(hu), -32768, 32767).astype(np.int16))
    assert data["density"][0].dtype == np.float32
    assert np.array_equal(data["density"][0], (rho / 1000.0).astype(np.float32))
    assert np.array_equal(data["mu"][0], mu.astype(np.float32))
    assert np.array_equal(data["mask"][0], ((vol >= 8192) & (vol <= 32767)).astype(np.uint8))
    header = data["hu"][1]
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], np.diag([0.01, 0.01, 0.01]))
    np.testing.assert_array_equal(header["space origin"], [0, 0, 0])
    assert header["space units"] == ["mm", "mm", "mm"]
    assert header["ScancoUnits_unit"] == "HU" and header["ScancoUnits_mu_scaling"] == "4096"
    assert float(header["ScancoUnits_mu_water_per_cm"]) == 0.514
    assert data["mask"][1]["ScancoUnits_threshold_native"] == "8192 32767"
    meta = json.loads(written["metadata"].read_text())
    assert meta["header"]["calibration"]["density_slope"] == 355.52
    assert meta["thresholds"]["native"] == [8192, 32767]
    assert meta["thresholds"]["exact_native"] == [8191.75, 32767.0]
    assert meta["mask_voxels"] == int(data["mask"][0].sum())
    assert meta["options"]["density_unit"] == "g/cc" and meta["software"]["name"] == "ScancoUnits"
    assert meta["hu_clipped_voxels"] == int(np.count_nonzero((hu > 32767) | (hu < -32768)))


def test_density_mg_and_float_hu(calibrated_isq, tmp_path):
    path, vol = calibrated_isq
    written = convert_file(path, tmp_path / "o", outputs=("hu", "density"), density_unit="mgHA/ccm",
                           hu_dtype="float32")
    _, hu, rho = _reference(vol, MICRO_CT)
    d, h = nrrd.read(str(written["density"]), index_order="C")
    assert np.array_equal(d, rho.astype(np.float32)) and h["ScancoUnits_unit"] == "mg HA/ccm"
    assert np.array_equal(nrrd.read(str(written["hu"]), index_order="C")[0], hu.astype(np.float32))


def test_compressed_and_detached_outputs_equal_raw(calibrated_isq, tmp_path):
    path, vol = calibrated_isq
    raw = convert_file(path, tmp_path / "raw")
    gz = convert_file(path, tmp_path / "gz", compress=True)
    det = convert_file(path, tmp_path / "det", detached=True)
    assert det["hu"].suffix == ".nhdr" and (tmp_path / "det" / "C0001234_HU.raw").exists()
    for role in ("hu", "density", "mask"):
        a = nrrd.read(str(raw[role]), index_order="C")[0]
        assert nrrd.read(str(gz[role]), index_order="C")[1]["encoding"] == "gzip"
        assert np.array_equal(a, nrrd.read(str(gz[role]), index_order="C")[0])
        assert np.array_equal(a, nrrd.read(str(det[role]), index_order="C")[0])


def test_ipl_logs_reproduced_in_metadata(tmp_path):
    """Bonelab IPL log (XtremeCT II): 300 per mille -> 9830 -> 1.19995 1/cm, 1532.936 mg HA/ccm, 3981.12 HU."""
    vol = np.array([[[9829, 9830, 32767, 0]]], dtype=np.int16)
    aim = S.write_aim(tmp_path / "TRAB.AIM", vol, voxel_size_mm=(0.0607,) * 3, calibration=XTREME_II)
    written = convert_file(aim, tmp_path / "o", thresholds=ThresholdSpec(300, 1000))
    t = json.loads(written["metadata"].read_text())["thresholds"]
    assert t["native"] == [9830, 32767]
    assert t["values"]["mu"][0] == pytest.approx(1.19995, abs=5e-6)
    assert t["values"]["density_mg_ha_ccm"][0] == pytest.approx(1532.9355, abs=1e-3)
    assert t["values"]["hu"][0] == pytest.approx(3981.1174, abs=1e-3)
    assert t["values"]["density_mg_ha_ccm"][1] == pytest.approx(6022.671, abs=1e-3)
    assert nrrd.read(str(written["mask"]), index_order="C")[0].ravel().tolist() == [0, 1, 1, 0]
    # BHS transcript: 125 mg HA/ccm -> native 2586 (mu 8192, slope 1652.92004, intercept -396.799988)
    bhs = Calibration(mu_scaling=8192, mu_water_per_cm=0.2366, density_slope=1652.92004,
                      density_intercept=-396.799988, density_unit="mg HA/ccm")
    aim2 = S.write_aim(tmp_path / "BHS.AIM", vol, voxel_size_mm=(0.0607,) * 3, calibration=bhs)
    w2 = convert_file(aim2, tmp_path / "o2", thresholds=ThresholdSpec(125, 100000, "density"))
    t2 = json.loads(w2["metadata"].read_text())["thresholds"]
    assert t2["native"] == [2586, 32767] and t2["clipped"] == [False, True]


def test_header_max_reproduces_seed_reading(tmp_path):
    vol = np.array([[[100, 2000, 2300, 8806]]], dtype=np.int16)
    aim = S.write_aim(tmp_path / "a.aim", vol, voxel_size_mm=(0.06,) * 3, calibration=XTREME_II,
                      processing_log="Maximum data value                           8806.00000\n")
    seed = convert_file(aim, tmp_path / "seed", outputs=("mask",),
                        thresholds=ThresholdSpec(250, 1000, permille_reference="header-max"))
    t = json.loads(seed["metadata"].read_text())["thresholds"]
    assert t["native"] == [2202, 8806]  # 0.25 * 8806 = 2201.5 -> 2202
    assert nrrd.read(str(seed["mask"]), index_order="C")[0].ravel().tolist() == [0, 0, 1, 1]
    ipl = convert_file(aim, tmp_path / "ipl", outputs=("mask",))
    assert nrrd.read(str(ipl["mask"]), index_order="C")[0].ravel().tolist() == [0, 0, 0, 1]


def test_uncalibrated_file_refused_for_hu_and_density(real_data, tmp_path):
    src = real_data / "test_isq_native_only_binary_25.ISQ"
    with pytest.raises(CalibrationMissingError) as info:
        convert_file(src, tmp_path / "o")
    assert "mu_water" in str(info.value) and "density slope" in str(info.value) and str(src) in str(info.value)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    written = convert_file(src, tmp_path / "o", outputs=("native", "mask"))
    assert set(written) == {"native", "mask", "metadata"}
    np.testing.assert_array_equal(nrrd.read(str(written["native"]), index_order="C")[0],
                                  S.read_volume(src))


def test_char_and_float_aims_are_not_rescaled(tmp_path):
    mask = np.zeros((3, 4, 5), np.int8)
    mask[1, 1:3, 1:4] = 127
    mask[2, 0, 0] = -127
    m = S.write_aim(tmp_path / "SEG.AIM", mask, voxel_size_mm=(0.06,) * 3, calibration=XTREME_II)
    w = convert_file(m, tmp_path / "o")
    assert set(w) == {"char_mask", "metadata"} and w["char_mask"].name == "SEG_mask.nrrd"
    assert np.array_equal(nrrd.read(str(w["char_mask"]), index_order="C")[0], (mask != 0).astype(np.uint8))
    assert "never rescaled" in " ".join(json.loads(w["metadata"].read_text())["notes"])
    fl = np.linspace(-1, 3, 60, dtype=np.float32).reshape(3, 4, 5)
    f = S.write_aim(tmp_path / "BMD.AIM", fl, version=30, voxel_size_mm=(0.06,) * 3, calibration=XTREME_II)
    w = convert_file(f, tmp_path / "o")
    assert w["float"].name == "BMD_float.nrrd"
    assert np.array_equal(nrrd.read(str(w["float"]), index_order="C")[0], fl)


def test_real_compressed_mask_converts(real_data, tmp_path):
    w = convert_file(real_data / "DB_07_DNN_DR_T1_TRAB_MASK.AIM", tmp_path)
    m, h = nrrd.read(str(w["char_mask"]), index_order="C")
    assert m.shape == (110, 346, 294) and set(np.unique(m)) == {0, 1}
    np.testing.assert_allclose(h["space origin"], [567 * 0.082, 630 * 0.082, 0], rtol=1e-12)


def test_no_clobber_overwrite_and_nothing_left_on_error(calibrated_isq, tmp_path, monkeypatch):
    path, _ = calibrated_isq
    out = tmp_path / "o"
    first = convert_file(path, out)
    before = {p: p.read_bytes() for p in first.values()}
    with pytest.raises(OutputExistsError):
        convert_file(path, out, thresholds=ThresholdSpec(100, 900))
    assert {p: p.read_bytes() for p in first.values()} == before
    assert sorted(x.name for x in out.iterdir()) == sorted(p.name for p in first.values())
    convert_file(path, out, overwrite=True, thresholds=ThresholdSpec(100, 900))
    assert json.loads(first["metadata"].read_text())["thresholds"]["spec"]["low"] == 100

    from ScancoUnitsLib.pipeline import kernels as slab_kernel

    calls = {"n": 0}
    real_run = slab_kernel.SlabKernel.run  # the engine converts every slab through it

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure mid-file")
        return real_run(self, *a, **k)

    monkeypatch.setattr(slab_kernel.SlabKernel, "run", failing)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        convert_file(path, fresh, slab_slices=1)
    assert list(fresh.iterdir()) == []


def test_geometry_matches_itk_reading_of_same_input(tmp_path):
    vol = _volume((4, 5, 6))
    aim = S.write_aim(tmp_path / "geo.aim", vol, voxel_size_mm=(0.0607, 0.0607, 0.0606),
                      position_voxels=(1300, 960, 64), calibration=XTREME_II)
    isq = S.write_isq(tmp_path / "geo.isq", vol, voxel_size_mm=(0.0125, 0.0125, 0.0125), calibration=MICRO_CT)
    for src in (aim, isq):
        _, info = oracles.itk_read(src)
        w = convert_file(src, tmp_path / Path(src).suffix[1:], outputs=("hu",))
        h = nrrd.read_header(str(w["hu"]))
        np.testing.assert_allclose(h["space origin"], info["origin"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.diag(h["space directions"]), info["spacing"], rtol=1e-6)
        np.testing.assert_allclose(h["space directions"] - np.diag(np.diag(h["space directions"])), 0)
        np.testing.assert_allclose(info["direction"], np.eye(3))


_ITK_NRRD_READ = """
import sys, json, itk, numpy as np
path, out = sys.argv[1], sys.argv[2]
io = itk.NrrdImageIO.New()
io.SetFileName(path); io.ReadImageInformation()
ctype = io.GetComponentTypeAsString(io.GetComponentType())
pixel = {"short": itk.SS, "float": itk.F, "unsigned_char": itk.UC}[ctype]
Image = itk.Image[pixel, 3]
reader = itk.ImageFileReader[Image].New(FileName=path, ImageIO=io)
reader.Update()
img = reader.GetOutput()
np.save(out, itk.array_from_image(img))
print(json.dumps({"spacing": list(img.GetSpacing()), "origin": list(img.GetOrigin())}))
"""


def test_outputs_read_by_itk_and_slicer(calibrated_isq, tmp_path):
    path, vol = calibrated_isq
    aim = S.write_aim(tmp_path / "pos.aim", vol, voxel_size_mm=(0.03, 0.03, 0.04), position_voxels=(10, -20, 5),
                      calibration=MICRO_CT)
    written = convert_file(aim, tmp_path / "o", compress=True)
    for role in ("hu", "density", "mask"):
        expected, header = nrrd.read(str(written[role]), index_order="C")
        run = subprocess.run([sys.executable, "-c", _ITK_NRRD_READ, str(written[role]), str(tmp_path / "a.npy")],
                             capture_output=True, text=True, check=True)
        info = json.loads(run.stdout.strip().splitlines()[-1])
        assert np.array_equal(np.load(tmp_path / "a.npy"), expected)
        np.testing.assert_allclose(info["origin"], [0.3, -0.6, 0.2], atol=1e-12)
        np.testing.assert_allclose(info["spacing"], [0.03, 0.03, 0.04])
    slicer = pytest.importorskip("slicer")
    from vtk.util.numpy_support import vtk_to_numpy

    scene = slicer.vtkMRMLScene()
    for role in ("hu", "density", "mask"):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(written[role]))
        assert storage.ReadData(node)
        image = node.GetImageData()
        arr = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])
        assert np.array_equal(arr, nrrd.read(str(written[role]), index_order="C")[0])
        np.testing.assert_allclose(node.GetOrigin(), [-0.3, 0.6, 0.2], atol=1e-9)  # LPS -> RAS
        np.testing.assert_allclose(node.GetSpacing(), [0.03, 0.03, 0.04])


def test_folder_discovery_and_same_stem(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    vol = np.zeros((2, 2, 2), np.int16)
    S.write_isq(a / "C0001.ISQ;1", vol, voxel_size_mm=(0.01,) * 3)
    S.write_isq(a / "C0002.isq", vol, voxel_size_mm=(0.01,) * 3)
    S.write_aim(b / "C0001.Aim", vol, voxel_size_mm=(0.01,) * 3)
    (a / "notes.txt").write_text("x")
    inputs, problems = find_inputs([str(a), str(b), str(tmp_path / "missing")])
    assert sorted(p.name for p in inputs) == ["C0001.Aim", "C0001.ISQ;1", "C0002.isq"]
    assert problems == [(str(tmp_path / "missing"), "no such file or folder")]
    stems = assign_stems(inputs)
    assert len(set(stems.values())) == 3
    assert stems[a / "C0001.ISQ;1"] == "a_C0001" and stems[b / "C0001.Aim"] == "b_C0001"
    assert output_stem("C0004255.ISQ;12") == "C0004255"


def test_demo_phantom_rods_within_one_mg(tmp_path):
    from ScancoUnitsLib.cli.demo import run_demo
    import io

    stream = io.StringIO()
    assert run_demo(tmp_path, report=False, stream=stream) == 0
    text = stream.getvalue()
    assert "Largest rod error" in text and "OK" in text
    assert (tmp_path / "PHANTOM_RHO.nrrd").exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_sample_download_from_local_server(tmp_path):
    from ScancoUnitsLib.sample_data import SampleDownloadError, fetch_sample

    pytest.importorskip("pooch")
    served = tmp_path / "served"
    served.mkdir()
    payload = Path(S.write_isq(served / "C0004255.ISQ", _volume((2, 3, 4)), voxel_size_mm=(0.01,) * 3)).read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    handler = lambda *a, **k: _QuietHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/C0004255.ISQ"
    try:
        got = fetch_sample(url=url, sha256=digest, cache_dir=tmp_path / "cache")
        assert got.read_bytes() == payload and S.read_header(got).dimensions == (4, 3, 2)
        with pytest.raises(SampleDownloadError, match="SHA-256"):
            fetch_sample(url=url, sha256="0" * 64, cache_dir=tmp_path / "cache2")
    finally:
        server.shutdown()
        server.server_close()
    # cached: no server needed any more
    assert fetch_sample(url=url, sha256=digest, cache_dir=tmp_path / "cache") == got
    with pytest.raises(SampleDownloadError, match="offline or server unreachable"):
        fetch_sample(url=url, sha256=digest, cache_dir=tmp_path / "cache3")
