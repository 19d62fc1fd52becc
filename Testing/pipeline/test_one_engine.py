"""One engine and one vocabulary: the command line, the Python API and Slicer make the same arrays.

The command line (in-process), ``convert_file`` and ``load_scan_into_scene`` (headless slicer-core)
run on the same files with their default outputs; every array they share must be identical, and
what one refuses the others refuse with the same message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

nrrd = pytest.importorskip("nrrd")
slicer = pytest.importorskip("slicer")
from vtk.util import numpy_support  # noqa: E402

from ScancoUnitsLib import Calibration, write_aim, write_isq  # noqa: E402
from ScancoUnitsLib import defaults  # noqa: E402
from ScancoUnitsLib.core import quantities  # noqa: E402
from ScancoUnitsLib.slicer import scene as scene_lib  # noqa: E402
from ScancoUnitsLib.pipeline.convert import convert_file  # noqa: E402
from ScancoUnitsLib.errors import RequestError  # noqa: E402
from ScancoUnitsLib.pipeline.request import ConversionRequest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from cli_harness import error_lines, run_cli  # noqa: E402

CAL = Calibration(mu_scaling=4096, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_engine")
    rng = np.random.default_rng(11)
    volume = rng.integers(-800, 20000, size=(6, 10, 12)).astype(np.int16)
    char = np.where(volume > 9000, 127, 0).astype(np.int8)
    return {
        "isq": write_isq(folder / "S1.ISQ", volume, voxel_size_mm=(0.03,) * 3, calibration=CAL),
        "grey_aim": write_aim(folder / "G1.AIM", volume, voxel_size_mm=(0.06,) * 3, position_voxels=(3, 4, 5),
                              calibration=CAL),
        "mask_aim": write_aim(folder / "M1.AIM", char, voxel_size_mm=(0.06,) * 3, compression="binCmp"),
    }


def _node_array(node):
    image = node.GetImageData()
    x, y, z = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z, y, x)


def _cli_arrays(capsys, path, out_dir):
    status, _, err = run_cli(capsys, "convert", path, "-o", out_dir, "-q")
    assert status == 0, err
    return {p.name: nrrd.read(str(p), index_order="C")[0] for p in Path(out_dir).glob("*.nrrd")}


@pytest.mark.parametrize("key", ["isq", "grey_aim"])
def test_default_outputs_identical_in_cli_api_and_slicer(files, key, tmp_path, capsys):
    stem = Path(files[key]).stem
    cli = _cli_arrays(capsys, files[key], tmp_path / "cli")
    api = {role: nrrd.read(str(p), index_order="C")[0]
           for role, p in convert_file(files[key], tmp_path / "api").items() if role != "metadata"}
    nodes = scene_lib.load_scan_into_scene(slicer.vtkMRMLScene(), files[key])
    assert list(nodes) == list(defaults.NODE_ROLES)
    assert set(api) == set(defaults.FILE_ROLES)
    for role, node_role in (("hu", "hu"), ("density", "density"), ("mask", "mask_labelmap")):
        suffix = quantities.QUANTITIES[quantities.role_quantity(role)].file_suffix
        np.testing.assert_array_equal(cli[f"{stem}{suffix}.nrrd"], api[role])
        np.testing.assert_array_equal(_node_array(nodes[node_role]), api[role])
        assert _node_array(nodes[node_role]).dtype == api[role].dtype
    # the one default density unit: g/cc everywhere
    assert nodes["density"].GetAttribute("ScancoUnits.Unit") == quantities.QUANTITIES["density_g_cc"].unit_label


def test_mask_aim_gives_the_same_mask_everywhere(files, tmp_path, capsys):
    cli = _cli_arrays(capsys, files["mask_aim"], tmp_path / "cli")
    api = convert_file(files["mask_aim"], tmp_path / "api")
    nodes = scene_lib.load_scan_into_scene(slicer.vtkMRMLScene(), files["mask_aim"])
    mask = nrrd.read(str(api["char_mask"]), index_order="C")[0]
    np.testing.assert_array_equal(cli["M1_mask.nrrd"], mask)
    np.testing.assert_array_equal(_node_array(nodes["mask_labelmap"]), mask)


def test_hu_of_a_mask_is_refused_everywhere_with_one_message(files, tmp_path, capsys):
    with pytest.raises(RequestError) as api:
        convert_file(files["mask_aim"], tmp_path / "api", outputs=("hu",))
    with pytest.raises(RequestError) as node:
        scene_lib.load_scan_into_scene(slicer.vtkMRMLScene(), files["mask_aim"], outputs=["hu"])
    status, _, err = run_cli(capsys, "convert", files["mask_aim"], "-o", tmp_path / "cli", "--outputs", "hu")
    assert status == 1 and str(api.value) == str(node.value)
    assert any(str(api.value) in line for line in error_lines(err))
    assert not (tmp_path / "api").exists() or not any((tmp_path / "api").iterdir())


def test_density_threshold_unit_follows_the_density_unit(files, tmp_path, capsys):
    # 0.45 g/cc is 450 mg HA/ccm: the same mask as asking 450 mgHA/ccm explicitly
    status, _, err = run_cli(capsys, "convert", files["isq"], "-o", tmp_path / "g", "--outputs", "mask",
                             "--threshold-unit", "density", "--density-unit", "g/cc", "--low", "0.45",
                             "--high", "3")
    assert status == 0, err
    status, _, err = run_cli(capsys, "convert", files["isq"], "-o", tmp_path / "mg", "--outputs", "mask",
                             "--threshold-unit", "mgHA/ccm", "--low", "450", "--high", "3000")
    assert status == 0, err
    g = nrrd.read(str(tmp_path / "g" / "S1_BWmask.nrrd"), index_order="C")[0]
    mg = nrrd.read(str(tmp_path / "mg" / "S1_BWmask.nrrd"), index_order="C")[0]
    np.testing.assert_array_equal(g, mg)
    assert 0 < g.sum() < g.size
    import json

    meta = json.loads((tmp_path / "g" / "S1_metadata.json").read_text())
    assert meta["thresholds"]["unit_label"] == "g HA/cc" and meta["thresholds"]["spec"]["unit"] == "g/cc"


def test_request_defaults_are_the_seed_notebooks():
    request = ConversionRequest()
    assert request.density_unit == "g/cc" and request.hu_dtype == "int16"
    assert (request.thresholds.low, request.thresholds.high, request.thresholds.unit) == (250, 1000, "permille")
    assert defaults.FILE_ROLES == ("hu", "density", "mask")
    assert defaults.NODE_ROLES == ("hu", "density", "mask_labelmap", "mask_segmentation")


def test_every_quantity_is_fully_defined():
    for key, q in quantities.QUANTITIES.items():
        assert q.key == key and q.unit_label and q.ucum and q.file_suffix.startswith("_") and q.node_suffix
        assert q.formula and q.axis_title
        if q.is_calibrated:
            consts = quantities.CalibrationConstants(4096.0, 0.24, 1600.0, -390.0)
            native = np.array([-1000.0, 0.0, 5000.0, 32767.0])
            back = q.inverse(q.forward(native, consts), consts)
            np.testing.assert_allclose(back, native, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("spelling, canonical", [("mg HA/ccm", "mgHA/ccm"), ("MG/CM3", "mgHA/ccm"),
                                                 ("g HA/cc", "g/cc"), ("g/cm3", "g/cc")])
def test_density_unit_spellings_and_a_bad_one(spelling, canonical):
    assert quantities.canonical_density_unit(spelling) == canonical
    assert ConversionRequest(density_unit=spelling).density_unit == canonical
    with pytest.raises(ValueError, match="unknown density unit 'kg/m3'"):
        ConversionRequest(density_unit="kg/m3")
