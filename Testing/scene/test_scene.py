"""ScancoUnitsLib.slicer.scene and the Slicer module, headless with the slicer-core wheel (real MRML nodes).

References used here, independent of the code under test:
* geometry: ITKIOScanco (Testing/oracles.itk_batch, what Slicer's own reader uses), turned into RAS;
* native voxels: ITK's array (native for uncalibrated files; for calibrated ones ITK's truncated HU,
  replicated by oracles.itk_hu_from_native);
* values: the reference formulas written out below in float64 numpy, and the Lib's UnitConverter;
* masks: thresholds computed by hand (250 per mille = round(8191.75) = 8192, 1000 per mille = 32767).
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import unittest
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

from ScancoUnitsLib import Calibration, read_header, write_aim, write_isq  # noqa: E402
from ScancoUnitsLib.slicer import scene as lib  # noqa: E402
from ScancoUnitsLib.errors import CalibrationMissingError, ScancoFormatError  # noqa: E402
from ScancoUnitsLib.formats.reader import read_volume  # noqa: E402
from ScancoUnitsLib.core.thresholds import ThresholdSpec  # noqa: E402
from ScancoUnitsLib.core.units import UnitConverter  # noqa: E402

TESTING = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(TESTING))
import oracles  # noqa: E402
import slicer_module_stubs  # noqa: E402

MS, MW, SLOPE, INTERCEPT = 8192, 0.2409, 1603.51904, -391.209015
CAL = Calibration(mu_scaling=MS, mu_water_per_cm=MW, density_slope=SLOPE, density_intercept=INTERCEPT,
                  density_unit="mg HA/ccm")
SIZE_MM = (0.0607, 0.0607, 0.0607)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# ITK computes the AIM origin (position x spacing) in float32: 0.574 mm comes back as 0.57400000095 while
# float64 gives 0.57400001585. 1e-7 mm (0.1 nm) is far below any voxel size and far above that rounding.
ITK_ATOL_MM = 1e-7


def _volume(shape=(7, 8, 9), seed=4255):
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1200, 24000, size=shape).astype(np.int16)
    volume.flat[:6] = (8191, 8192, 32767, -32768, 0, 8193)   # per-mille edges and the int16 ends
    return volume


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small SCANCO files written by the Lib writers, one of each kind."""
    folder = tmp_path_factory.mktemp("scene_files")
    volume = _volume()
    out = {"volume": volume}
    out["isq"] = write_isq(folder / "C0001234.ISQ", volume, voxel_size_mm=SIZE_MM, calibration=CAL)
    out["aim20"] = write_aim(folder / "pos20.AIM", volume, version=20, voxel_size_mm=(0.082, 0.082, 0.082),
                             position_voxels=(12, 7, 3), calibration=CAL)
    out["aim30"] = write_aim(folder / "pos30.aim", volume, version=30, voxel_size_mm=(0.03, 0.03, 0.03),
                             position_voxels=(5, 40, 2), calibration=CAL)
    out["native_isq"] = write_isq(folder / "native.isq", volume, voxel_size_mm=SIZE_MM,
                                  calibration=Calibration(mu_scaling=MS))
    char = np.where(volume > 8192, 127, 0).astype(np.int8)
    out["char"] = char
    out["mask_aim"] = write_aim(folder / "seg.aim", char, version=30, voxel_size_mm=SIZE_MM,
                                position_voxels=(1, 2, 3), compression="binCmp")
    out["float_aim"] = write_aim(folder / "dens.aim", (volume / 10.0).astype(np.float32), version=30,
                                 voxel_size_mm=SIZE_MM)
    return out


@pytest.fixture(scope="module")
def itk_reference(files):
    """ITK's spacing/origin/direction/array of every file, in one subprocess."""
    keys = ("isq", "aim20", "aim30", "native_isq", "mask_aim")
    results = oracles.itk_batch([{"op": "itk_read", "path": files[k]} for k in keys])
    out = {}
    for key, (array, result) in zip(keys, results):
        assert result["ok"], result.get("error")
        out[key] = (array, result["info"])
    return out


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def ijk_to_ras(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def itk_ijk_to_ras(info, start_xyz=(0, 0, 0), step_xyz=(1, 1, 1)):
    """IJK-to-RAS of ITK's image (LPS, index->physical = origin + direction*spacing*index)."""
    direction = np.asarray(info["direction"], dtype=float)
    spacing = np.asarray(info["spacing"], dtype=float)
    origin = np.asarray(info["origin"], dtype=float)
    ijk_to_lps = direction @ np.diag(spacing * np.asarray(step_xyz))
    first_lps = origin + direction @ (spacing * np.asarray(start_xyz))
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ ijk_to_lps
    matrix[:3, 3] = LPS_TO_RAS @ first_lps
    return matrix


def array(node):
    return slicer.util.arrayFromVolume(node)


# ---------------------------------------------------------------------------------------------------
# import hygiene, sniffing, pure geometry
# ---------------------------------------------------------------------------------------------------
def test_scene_module_imports_neither_slicer_nor_vtk():
    code = ("import sys, ScancoUnitsLib.slicer.scene as s; "
            "bad = [m for m in ('slicer', 'vtk', 'qt', 'ctk') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sniff_format_by_magic_only(files, tmp_path):
    assert lib.sniff_format(files["isq"]) == "ISQ"
    assert lib.sniff_format(files["aim20"]) == "AIM v020"
    assert lib.sniff_format(files["aim30"]) == "AIM v030"
    fake = tmp_path / "fake.isq"
    fake.write_bytes(b"CTDATA-HEADER_V2" + bytes(1000))
    assert lib.sniff_format(fake) is None
    v020_lookalike = tmp_path / "x.aim"
    v020_lookalike.write_bytes(np.array([20, 141], "<i4").tobytes() + bytes(200))
    assert lib.sniff_format(v020_lookalike) is None
    renamed = tmp_path / "scan.nrrd"
    renamed.write_bytes(Path(files["aim20"]).read_bytes())
    assert lib.sniff_format(renamed) == "AIM v020"
    assert lib.sniff_format(tmp_path / "missing.isq") is None
    assert lib.sniff_format(tmp_path) is None
    empty = tmp_path / "empty.isq"
    empty.write_bytes(b"")
    assert lib.sniff_format(empty) is None


def test_ijk_to_ras_by_hand(files):
    header = read_header(files["aim20"])
    sx, sy, sz = header.voxel_size_mm
    ox, oy, oz = header.origin_mm
    assert (ox, oy, oz) == pytest.approx((12 * sx, 7 * sy, 3 * sz))
    np.testing.assert_allclose(lib.ijk_to_ras_matrix(header),
                               [[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1]], atol=1e-15)
    plan = lib.plan_sampling(header, subsample_step=(3, 2, 1), region=((2, None), slice(1, 6), (-4, None)))
    assert plan.start_xyz == (5, 1, 2) and plan.stop_xyz == (9, 6, 7) and plan.step_xyz == (1, 2, 3)
    assert plan.shape_zyx == (2, 3, 4)
    np.testing.assert_allclose(lib.ijk_to_ras_matrix(header, plan),
                               [[-sx, 0, 0, -(ox + 5 * sx)], [0, -2 * sy, 0, -(oy + sy)],
                                [0, 0, 3 * sz, oz + 2 * sz], [0, 0, 0, 1]], atol=1e-15)


@pytest.mark.parametrize("region, step, message", [
    (((5, 5), None, None), 1, "empty"),
    ((None, (0, 99), None), 1, "outside"),
    ((None, None, slice(0, 4, 2)), 1, "subsample_step"),
    ((None, None), 1, "three"),
    (None, 0, ">= 1"),
    (None, (1, 2), "triple"),
    (None, "2", "triple"),
])
def test_plan_sampling_rejects_bad_requests(files, region, step, message):
    header = read_header(files["isq"])
    with pytest.raises(ValueError, match=message):
        lib.plan_sampling(header, subsample_step=step, region=region)


# ---------------------------------------------------------------------------------------------------
# nodes: geometry vs ITK, values vs references
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["isq", "aim20", "aim30"])
def test_default_load_geometry_matches_itk(scene, files, itk_reference, key):
    nodes = lib.load_scan_into_scene(scene, files[key])
    assert sorted(nodes) == ["density", "hu", "mask_labelmap", "mask_segmentation"]
    _, info = itk_reference[key]
    np.testing.assert_allclose(np.asarray(info["direction"]), np.eye(3))
    expected = itk_ijk_to_ras(info)
    for role in ("hu", "density", "mask_labelmap"):
        np.testing.assert_allclose(ijk_to_ras(nodes[role]), expected, rtol=0, atol=ITK_ATOL_MM, err_msg=role)
        z, y, x = array(nodes[role]).shape
        assert (x, y, z) == tuple(info["shape_zyx"][::-1])
    if key != "isq":
        assert np.any(expected[:3, 3] != 0), "AIM position must move the origin"


def test_subsampled_region_geometry_matches_itk_voxel_positions(scene, files, itk_reference):
    _, info = itk_reference["aim30"]
    nodes = lib.load_scan_into_scene(scene, files["aim30"], outputs=["hu"], subsample_step=(2, 3, 2),
                                     region=((1, None), (2, 8), (1, 8)))
    np.testing.assert_allclose(ijk_to_ras(nodes["hu"]), itk_ijk_to_ras(info, (1, 2, 1), (2, 3, 2)),
                               atol=ITK_ATOL_MM)
    reference = UnitConverter(CAL).convert(files["volume"], "hu")
    np.testing.assert_array_equal(array(nodes["hu"]), reference[1::2, 2:8:3, 1:8:2])
    assert nodes["hu"].GetAttribute("ScancoUnits.SubsampleStep_xyz") == "2 3 2"
    assert nodes["hu"].GetAttribute("ScancoUnits.RegionStart_xyz") == "1 2 1"


def test_native_values_agree_with_itk(scene, files, itk_reference):
    nodes = lib.load_scan_into_scene(scene, files["native_isq"], outputs=["native"])
    itk_array, info = itk_reference["native_isq"]
    assert info["values_are"] == "native"
    np.testing.assert_array_equal(array(nodes["native"]), itk_array)
    # for a calibrated file ITK stores truncated integer HU; our native values reproduce its array
    nodes = lib.load_scan_into_scene(scene, files["aim20"], outputs=["native"])
    itk_array, info = itk_reference["aim20"]
    assert info["values_are"] == "hu_truncated"
    np.testing.assert_array_equal(oracles.itk_hu_from_native(array(nodes["native"]), MS, MW), itk_array)


@pytest.mark.parametrize("key", ["isq", "aim30"])
def test_values_equal_the_lib_conversion_and_the_reference_formulas(scene, files, key):
    nodes = lib.load_scan_into_scene(scene, files[key], outputs=["hu", "density", "mu", "native"], density_unit="mgHA/ccm",
                                     slab_slices=2)
    native = files["volume"]
    np.testing.assert_array_equal(array(nodes["native"]), native)
    converter = UnitConverter(read_header(files[key]).calibration)
    np.testing.assert_array_equal(array(nodes["hu"]), converter.convert(read_volume(files[key]), "hu"))
    n64 = native.astype(np.float64)
    hu_reference = np.clip(np.rint(n64 * 1000.0 / (MS * MW) - 1000.0), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(array(nodes["hu"]), hu_reference)
    np.testing.assert_array_equal(array(nodes["density"]), ((n64 / MS) * SLOPE + INTERCEPT).astype(np.float32))
    np.testing.assert_array_equal(array(nodes["mu"]), (n64 / MS).astype(np.float32))
    assert array(nodes["hu"]).dtype == np.int16 and array(nodes["density"]).dtype == np.float32


def test_float_hu_and_density_in_g_per_cc(scene, files):
    nodes = lib.load_scan_into_scene(scene, files["isq"], outputs=["hu", "density"], hu_dtype="float32",
                                     density_unit="g/cc")
    n64 = files["volume"].astype(np.float64)
    np.testing.assert_array_equal(array(nodes["hu"]), (n64 * 1000.0 / (MS * MW) - 1000.0).astype(np.float32))
    np.testing.assert_array_equal(array(nodes["density"]),
                                  (((n64 / MS) * SLOPE + INTERCEPT) / 1000.0).astype(np.float32))
    assert nodes["density"].GetVoxelValueUnits().GetCodeValue() == "g/cm3"
    assert nodes["density"].GetAttribute("ScancoUnits.Unit") == "g HA/cc"


def test_default_mask_is_250_to_1000_per_mille_inclusive(scene, files):
    nodes = lib.load_scan_into_scene(scene, files["isq"])
    native = files["volume"]
    expected = ((native >= 8192) & (native <= 32767)).astype(np.uint8)   # round(0.25 * 32767) = 8192
    mask = array(nodes["mask_labelmap"])
    np.testing.assert_array_equal(mask, expected)
    assert mask.flat[0] == 0 and mask.flat[1] == 1 and mask.flat[2] == 1   # 8191 out, 8192 and 32767 in
    assert nodes["mask_labelmap"].IsA("vtkMRMLLabelMapVolumeNode")
    assert nodes["mask_labelmap"].GetAttribute("ScancoUnits.ThresholdNative") == "8192 32767"


def test_hu_thresholds_are_rounded_to_native_integers(scene, files):
    spec = ThresholdSpec(3000.0, 9000.0, "hu")
    nodes = lib.load_scan_into_scene(scene, files["aim30"], outputs=["mask_labelmap"], thresholds=spec)
    low = int(np.floor((3000.0 + 1000.0) * (MS * MW) / 1000.0 + 0.5))
    high = int(np.floor((9000.0 + 1000.0) * (MS * MW) / 1000.0 + 0.5))
    native = files["volume"]
    np.testing.assert_array_equal(array(nodes["mask_labelmap"]), ((native >= low) & (native <= high)).astype(np.uint8))
    assert list(nodes) == ["mask_labelmap"]


def _segment_voxel_count(segmentation_node):
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetNthSegment(0)
    image = segment.GetRepresentation("Binary labelmap")
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return int(np.count_nonzero(values == segment.GetLabelValue()))


def test_segmentation_has_one_named_segment_with_the_mask_voxels(scene, files):
    nodes = lib.load_scan_into_scene(scene, files["aim20"])
    segmentation = nodes["mask_segmentation"]
    assert segmentation.IsA("vtkMRMLSegmentationNode")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() == "Bone 250-1000 per mille"
    native = files["volume"]
    expected_count = int(np.count_nonzero((native >= 8192) & (native <= 32767)))
    assert _segment_voxel_count(segmentation) == expected_count
    # voxel by voxel: export the segment back to a labelmap on the mask's grid
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
        segmentation, exported, nodes["mask_labelmap"])
    np.testing.assert_array_equal(array(exported) > 0, array(nodes["mask_labelmap"]) > 0)
    np.testing.assert_allclose(ijk_to_ras(exported), ijk_to_ras(nodes["mask_labelmap"]), atol=1e-9)


def test_segmentation_only_leaves_no_helper_nodes(scene, files):
    nodes = lib.load_scan_into_scene(scene, files["isq"], outputs=["mask_segmentation"],
                                     thresholds=(100, 200))
    assert list(nodes) == ["mask_segmentation"]
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0
    assert scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems() == 0
    assert nodes["mask_segmentation"].GetSegmentation().GetNthSegment(0).GetName() == "Bone 100-200 per mille"


def test_empty_mask_still_gives_a_named_segment(scene, files):
    nodes = lib.load_scan_into_scene(scene, files["isq"], outputs=["mask_segmentation"],
                                     thresholds=(1.0, 1.5, "native"))   # no voxel is exactly 1
    segmentation = nodes["mask_segmentation"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "Bone 1-1.5 native"


def test_units_attributes_display_and_hierarchy(scene, files):
    nodes = lib.load_scan_into_scene(scene, files["aim20"], outputs=["hu", "density", "mu", "native",
                                                                     "mask_labelmap"], density_unit="mgHA/ccm")
    codes = {role: nodes[role].GetVoxelValueUnits().GetCodeValue() for role in ("hu", "density", "mu")}
    assert codes == {"hu": "[hnsf'U]", "density": "mg/cm3", "mu": "/cm"}
    assert nodes["hu"].GetVoxelValueUnits().GetCodingSchemeDesignator() == "UCUM"
    density = nodes["density"]
    assert density.GetAttribute("ScancoUnits.MuScaling") == "8192"
    assert float(density.GetAttribute("ScancoUnits.DensitySlope")) == SLOPE
    assert float(density.GetAttribute("ScancoUnits.DensityIntercept")) == INTERCEPT
    assert float(density.GetAttribute("ScancoUnits.MuWater_per_cm")) == MW
    assert density.GetAttribute("ScancoUnits.Unit") == "mg HA/ccm"
    assert density.GetAttribute("ScancoUnits.SourceFile") == "pos20.AIM"
    assert density.GetAttribute("ScancoUnits.Sampling") == "full resolution"
    assert nodes["hu"].GetName() == "pos20 HU"
    # bone window: native 0 (air) .. 2 x 8192 (lower threshold at mid-grey)
    display = nodes["hu"].GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    low = 0 * 1000.0 / (MS * MW) - 1000.0
    high = 16384 * 1000.0 / (MS * MW) - 1000.0
    assert display.GetWindow() == pytest.approx(high - low)
    assert display.GetLevel() == pytest.approx((high + low) / 2)
    label_display = nodes["mask_labelmap"].GetDisplayNode()
    color = label_display.GetColorNode()
    assert color is not None and color.GetColorName(1) == "Bone 250-1000 per mille"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parents = {sh.GetItemParent(sh.GetItemByDataNode(node)) for node in nodes.values()}
    assert len(parents) == 1 and sh.GetItemName(parents.pop()) == "pos20 (SCANCO)"


# ---------------------------------------------------------------------------------------------------
# export, readable by slicer-core's storage nodes
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage_class", ["vtkMRMLVolumeArchetypeStorageNode", "vtkMRMLNRRDStorageNode"])
def test_full_resolution_export_is_readable_by_slicer(scene, files, tmp_path, storage_class):
    nodes = lib.load_scan_into_scene(scene, files["aim30"], outputs=["hu", "density", "mask_labelmap"],
                                     subsample_step=2, density_unit="mgHA/ccm")
    written = lib.export_scan(files["aim30"], tmp_path, outputs=["hu", "density", "mask_labelmap"],
                              density_unit="mgHA/ccm")
    assert {"hu", "density", "mask", "metadata"} <= set(written)
    converter = UnitConverter(CAL)
    native = files["volume"]
    expected = {"hu": converter.convert(native, "hu"), "density": converter.convert(native, "density_mg_ha_ccm"),
                "mask": ((native >= 8192) & (native <= 32767)).astype(np.uint8)}
    for role, node_role in (("hu", "hu"), ("density", "density"), ("mask", "mask_labelmap")):
        storage = getattr(slicer, storage_class)()
        storage.SetFileName(str(written[role]))
        loaded = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        assert storage.ReadData(loaded), written[role]
        np.testing.assert_array_equal(array(loaded), expected[role])
        # full resolution on disk, every 2nd voxel in the scene, same physical frame
        np.testing.assert_array_equal(array(loaded)[::2, ::2, ::2], array(nodes[node_role]))
        file_matrix = ijk_to_ras(loaded)
        node_matrix = ijk_to_ras(nodes[node_role])
        np.testing.assert_allclose(file_matrix[:, 3], node_matrix[:, 3], atol=1e-9)
        np.testing.assert_allclose(file_matrix[:3, :3] * 2, node_matrix[:3, :3], atol=1e-9)


def test_export_cancel_leaves_no_file(files, tmp_path):
    with pytest.raises(lib.ConversionCancelled):
        lib.export_scan(files["isq"], tmp_path / "out", cancel=lambda: True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    planned = lib.planned_export_files(files["isq"], tmp_path / "out", outputs=["hu", "mask_segmentation"])
    assert sorted(p.name for p in planned) == ["C0001234_BWmask.nrrd", "C0001234_HU.nrrd",
                                               "C0001234_metadata.json"]


# ---------------------------------------------------------------------------------------------------
# progress, cancel, errors
# ---------------------------------------------------------------------------------------------------
def test_progress_is_monotonic_and_ends_at_one(scene, files):
    seen = []
    lib.load_scan_into_scene(scene, files["isq"], progress=seen.append, slab_slices=2)
    assert len(seen) >= 4
    assert seen == sorted(seen) and seen[-1] == 1.0 and seen[0] > 0


@pytest.mark.parametrize("how", ["event", "callable", "progress raises"])
def test_cancel_removes_every_created_node(scene, files, how):
    before = scene.GetNumberOfNodes()
    event = threading.Event()
    calls = []

    def progress(fraction):
        calls.append(fraction)
        if how == "progress raises" and len(calls) == 2:
            raise KeyboardInterrupt
        if len(calls) == 2:
            event.set()

    cancel = {"event": event, "callable": event.is_set, "progress raises": None}[how]
    expected = KeyboardInterrupt if how == "progress raises" else lib.ConversionCancelled
    with pytest.raises(expected):
        lib.load_scan_into_scene(scene, files["isq"], progress=progress, cancel=cancel, slab_slices=1)
    assert scene.GetNumberOfNodes() == before


def test_uncalibrated_file_default_and_explicit(scene, files):
    before = scene.GetNumberOfNodes()
    with pytest.raises(CalibrationMissingError, match="mu_water"):   # the default set needs HU
        lib.load_scan_into_scene(scene, files["native_isq"])
    with pytest.raises(CalibrationMissingError):
        lib.load_scan_into_scene(scene, files["native_isq"], outputs=["hu", "mask_labelmap"])
    with pytest.raises(CalibrationMissingError):
        lib.load_scan_into_scene(scene, files["native_isq"], outputs=["mask_labelmap"], thresholds=(0, 5000, "hu"))
    assert scene.GetNumberOfNodes() == before
    nodes = lib.load_scan_into_scene(scene, files["native_isq"], outputs=["native", "mask_labelmap"])
    assert list(nodes) == ["native", "mask_labelmap"]


def test_uncalibrated_file_with_default_outputs_one_rule_in_cli_and_scene(scene, files, tmp_path, capsys):
    """Issue 21: the same file, the default outputs: refused by the command line and by the scene alike
    (the one plan_request rule), each naming the file and the missing calibration, nothing written or added."""
    from cli_harness import error_lines, run_cli

    out = tmp_path / "out"
    status, _out, err = run_cli(capsys, "convert", files["native_isq"], "-o", out)
    assert status != 0
    (cli_line,) = error_lines(err)
    assert "native.isq" in cli_line and "mu_water" in cli_line and "--outputs native,mask" in cli_line
    assert not out.exists() or not any(out.iterdir())
    before = scene.GetNumberOfNodes()
    with pytest.raises(CalibrationMissingError) as refused:
        lib.load_scan_into_scene(scene, files["native_isq"])
    text = str(refused.value)
    assert "native.isq" in text and "mu_water" in text and "native, mask_labelmap" in text
    assert scene.GetNumberOfNodes() == before
    # the same reason in both: the part before the way out is identical
    assert cli_line.split("(")[0].split("native.isq")[-1] == text.split("(")[0].split("native.isq")[-1]
    # and the same outputs where the file allows them: native values and the mask, in both
    status, _out, err = run_cli(capsys, "convert", files["native_isq"], "-o", out, "--outputs", "native,mask")
    assert status == 0, err
    nodes = lib.load_scan_into_scene(scene, files["native_isq"], outputs=["native", "mask_labelmap"])
    assert list(nodes) == ["native", "mask_labelmap"]


def test_char_mask_aim_loads_as_mask(scene, files, itk_reference):
    nodes = lib.load_scan_into_scene(scene, files["mask_aim"])
    assert list(nodes) == ["native", "mask_labelmap", "mask_segmentation"]
    np.testing.assert_array_equal(array(nodes["native"]), files["char"])
    np.testing.assert_array_equal(array(nodes["mask_labelmap"]), (files["char"] != 0).astype(np.uint8))
    assert nodes["mask_segmentation"].GetSegmentation().GetNthSegment(0).GetName() == "Mask (non-zero voxels)"
    np.testing.assert_allclose(ijk_to_ras(nodes["native"]), itk_ijk_to_ras(itk_reference["mask_aim"][1]),
                               atol=ITK_ATOL_MM)
    with pytest.raises(ValueError, match="mask"):
        lib.load_scan_into_scene(scene, files["mask_aim"], outputs=["hu"])


def test_float_aim_loads_as_stored(scene, files):
    warnings = []
    nodes = lib.load_scan_into_scene(scene, files["float_aim"], warn=warnings.append)
    assert list(nodes) == ["native"]
    np.testing.assert_array_equal(array(nodes["native"]), (files["volume"] / 10.0).astype(np.float32))
    assert warnings
    with pytest.raises(ValueError):
        lib.load_scan_into_scene(scene, files["float_aim"], outputs=["density"])


def test_bad_files_raise_our_errors(scene, tmp_path, files):
    junk = tmp_path / "junk.isq"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(ScancoFormatError):
        lib.load_scan_into_scene(scene, junk)
    truncated = tmp_path / "truncated.isq"
    truncated.write_bytes(Path(files["isq"]).read_bytes()[:-100])
    before = scene.GetNumberOfNodes()
    with pytest.raises(ScancoFormatError):
        lib.load_scan_into_scene(scene, truncated)
    assert scene.GetNumberOfNodes() == before
    for bad in ({"outputs": ["hu", "bogus"]}, {"outputs": []}, {"density_unit": "kg/l"}, {"hu_dtype": "int32"},
                {"slab_slices": 0}, {"thresholds": "1 2 3 4"}, {"thresholds": (1000, 250)}):
        with pytest.raises(ValueError):
            lib.load_scan_into_scene(scene, files["isq"], **bad)
    assert scene.GetNumberOfNodes() == before


# ---------------------------------------------------------------------------------------------------
# reader options and panel helpers
# ---------------------------------------------------------------------------------------------------
def test_reader_options_from_properties(files):
    calibrated = read_header(files["isq"])
    assert lib.reader_options_from_properties({"fileName": "x"}, calibrated) == {"outputs": ("hu",)}
    assert lib.reader_options_from_properties({}, read_header(files["native_isq"]))["outputs"] == ("native",)
    assert lib.reader_options_from_properties({}, read_header(files["mask_aim"]))["outputs"] == ("mask_labelmap",)
    options = lib.reader_options_from_properties(
        {"units": "hu, density", "mask": "both", "thresholds": "3000 9000 hu", "densityUnit": "g/cc",
         "subsampleStep": "2", "name": "knee"}, calibrated)
    assert options["outputs"] == ("hu", "density", "mask_labelmap", "mask_segmentation")
    assert options["thresholds"] == ThresholdSpec(3000.0, 9000.0, "hu")
    assert options["density_unit"] == "g/cc" and options["subsample_step"] == 2 and options["name"] == "knee"
    assert lib.reader_options_from_properties({"units": ["density"], "mask": True}, calibrated)["outputs"] == \
        ("density", "mask_labelmap")
    assert lib.reader_options_from_properties({"mask": "false"}, calibrated)["outputs"] == ("hu",)
    for bad in ({"units": "hu kelvin"}, {"mask": "maybe"}, {"densityUnit": "kg/m3"}, {"thresholds": "x y"}):
        with pytest.raises(ValueError):
            lib.reader_options_from_properties(bad, calibrated)


def test_panel_helpers(files):
    header = read_header(files["aim20"])
    summary = lib.header_summary_html(header)
    assert "9 x 8 x 7 voxels" in summary and "82 x 82 x 82 µm" in summary and "mu scaling 8192" in summary
    assert "density = 1603.52 mu - 391.209 mg HA/ccm" in summary
    assert lib.calibration_warning(header) == ""
    warning = lib.calibration_warning(read_header(files["native_isq"]))
    assert "no HU" in warning and "no density" in warning
    assert "mask" in lib.calibration_warning(read_header(files["mask_aim"]))
    table = lib.threshold_equivalents_html(header, None)
    assert "8192" in table and "32767" in table and "3151.1" in table   # 8192 native = 3151.1 HU
    info = lib.threshold_equivalents(header, (250, 1000))
    assert info["native"] == [8192, 32767]
    assert "n/a" in lib.threshold_equivalents_html(read_header(files["native_isq"]), None)
    assert "mu_water" in lib.threshold_equivalents_html(read_header(files["native_isq"]), (0, 100, "hu"))
    # 9*8*7 voxels x (2 HU + 4 density + 1 labelmap + 1 segmentation) bytes
    assert lib.scene_memory_bytes(header, lib.defaults.NODE_ROLES) == 9 * 8 * 7 * 8
    assert lib.scene_memory_bytes(header, ["hu"], subsample_step=2) == 5 * 4 * 4 * 2
    assert lib.memory_estimate_text(header, ["hu"], subsample_step=2).startswith("5 x 4 x 4 voxels")
    assert lib.segment_name(ThresholdSpec(1.25, 4.0, "mu")) == "Bone 1.25-4 1/cm"


# ---------------------------------------------------------------------------------------------------
# the Slicer module file: reader plugin, logic and self-test, with stand-ins for the app-only modules
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def module():
    module = slicer_module_stubs.load_scanco_units_module()
    slicer_module_stubs.new_scene()
    return module


def test_file_reader_confidence_and_default_hu(module, files, tmp_path):
    parent = slicer_module_stubs.ReaderParent()
    reader = module.ScancoUnitsFileReader(parent)
    assert reader.fileType() == "ScancoUnitsFile"
    assert all("*.isq" in e and "*.aim" in e for e in reader.extensions())
    for key in ("isq", "aim20", "aim30", "mask_aim"):
        assert reader.canLoadFileConfidence(files[key]) > 0.55
        assert reader.canLoadFile(files[key])
    junk = tmp_path / "junk.ISQ"
    junk.write_bytes(b"\0" * 1024)
    assert reader.canLoadFileConfidence(junk) == 0.0 and not reader.canLoadFile(junk)
    assert reader.load({"fileName": str(files["aim20"])})
    assert len(parent.loadedNodes) == 1
    node = slicer.mrmlScene.GetNodeByID(parent.loadedNodes[0])
    assert node.GetName() == "pos20 HU"
    np.testing.assert_array_equal(array(node), UnitConverter(CAL).convert(files["volume"], "hu"))


def test_file_reader_properties_and_errors(module, files, tmp_path):
    parent = slicer_module_stubs.ReaderParent()
    reader = module.ScancoUnitsFileReader(parent)
    assert reader.load({"fileName": str(files["isq"]), "units": "density", "mask": "segmentation",
                        "thresholds": "300 1000 permille", "name": "knee"})
    names = sorted(slicer.mrmlScene.GetNodeByID(i).GetName() for i in parent.loadedNodes)
    assert names == ["knee density", "knee mask segmentation"]
    segmentation = slicer.mrmlScene.GetFirstNodeByName("knee mask segmentation")
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() == "Bone 300-1000 per mille"

    parent = slicer_module_stubs.ReaderParent()
    reader = module.ScancoUnitsFileReader(parent)
    junk = tmp_path / "junk.isq"
    junk.write_bytes(b"CTDATA-HEADER_V1" + bytes(100))   # right magic, truncated header
    before = slicer.mrmlScene.GetNumberOfNodes()
    assert reader.load({"fileName": str(junk)}) is False
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    messages = parent.messages()
    assert messages and messages[0][0] == vtk.vtkCommand.ErrorEvent and "junk.isq" in messages[0][1]

    parent = slicer_module_stubs.ReaderParent()
    assert module.ScancoUnitsFileReader(parent).load({"fileName": str(files["native_isq"]), "units": "hu"}) is False
    assert "mu_water" in parent.messages()[0][1]

    # a drop of an uncalibrated file: its native values, never silently
    parent = slicer_module_stubs.ReaderParent()
    assert module.ScancoUnitsFileReader(parent).load({"fileName": str(files["native_isq"])}) is True
    assert [slicer.mrmlScene.GetNodeByID(i).GetName() for i in parent.loadedNodes] == ["native native"]
    (kind, text), = parent.messages()
    assert kind == vtk.vtkCommand.WarningEvent and "native.isq" in text and "Not calibrated" in text


def test_logic_process_loads_and_exports(module, files, tmp_path):
    logic = module.ScancoUnitsLogic()
    seen = []
    nodes, written = logic.process(str(files["isq"]), outputs=["hu", "mask_labelmap"], subsampleStep=2,
                                   exportDirectory=str(tmp_path / "nrrd"),
                                   progressCallback=lambda fraction, text: seen.append(fraction))
    assert sorted(nodes) == ["hu", "mask_labelmap"] and {"hu", "mask", "metadata"} <= set(written)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert logic.existingExportFiles(str(files["isq"]), str(tmp_path / "nrrd"), outputs=["hu", "mask_labelmap"])
    # a failing export removes the nodes the same call created
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(Exception):
        logic.process(str(files["isq"]), outputs=["hu"], exportDirectory=str(tmp_path / "nrrd"))  # exists
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), children)
    folders = [sh.GetItemName(children.GetId(i)) for i in range(children.GetNumberOfIds())]
    assert folders == ["C0001234 (SCANCO)"], "the failed call must not leave its (empty) folder"
    assert logic.convertThresholds(read_header(files["isq"]), 250, 1000, "permille", "native") == (8192.0, 32767.0)
    assert logic.convertThresholds(read_header(files["native_isq"]), 250, 1000, "permille", "hu") is None


def test_module_self_test_passes_headless(module):
    suite = unittest.TestLoader().loadTestsFromTestCase(module.ScancoUnitsTest)
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    assert result.wasSuccessful(), result.failures + result.errors
    assert result.testsRun >= 7
    assert [name for _, name in result.skipped] == ["needs the Slicer application"]
    run_all = unittest.TextTestRunner(stream=io.StringIO()).run(module.ScancoUnitsTest("runTest"))
    assert run_all.wasSuccessful(), run_all.failures + run_all.errors


def test_module_metadata_and_sample_data(module, monkeypatch):
    connections = []

    class FakeApp:
        def connect(self, signal, slot):
            connections.append((signal, slot))

    class Parent:
        pass

    monkeypatch.setattr(slicer, "app", FakeApp(), raising=False)
    parent = Parent()
    module.ScancoUnits(parent)
    assert parent.categories == ["Quantification"]
    assert parent.contributors and parent.title
    assert "32767" in parent.helpText and "nearest" in parent.helpText and "per mille" in parent.helpText.lower()
    for unit in ("HU", "1/cm", "mg HA/ccm", "g/cc"):
        assert unit in parent.helpText
    assert "ITK" in parent.acknowledgementText and "SCANCO" in parent.acknowledgementText
    assert connections == [("startupCompleted()", module.registerSampleData)]

    registered = {}

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            registered.update(kwargs)

    monkeypatch.setitem(sys.modules, "SampleData", type(sys)("SampleData"))
    sys.modules["SampleData"].SampleDataLogic = SampleDataLogic
    module.registerSampleData()
    assert registered["uris"] == "https://data.kitware.com/api/v1/file/591e56178d777f16d01e0d20/download"
    assert registered["checksums"] == "SHA256:c2a3750c75826cb077d92093d43976cc0350198b55edecd681265eebabfb438b"
    assert registered["fileNames"] == "C0004255.ISQ"
    assert registered["loadFileType"] == "ScancoUnitsFile"
    assert Path(registered["thumbnailFileName"]).is_file()


# ---------------------------------------------------------------------------------------------------
# real SCANCO files (../shared/data/real), when present
# ---------------------------------------------------------------------------------------------------
def test_real_files_geometry_matches_itk(real_data, scene):
    names = ("CALLUS_1237.AIM", "TRAB_1240_SEG.AIM", "test_isq_calibrated_binary_25.ISQ")
    results = oracles.itk_batch([{"op": "itk_read", "path": real_data / n} for n in names])
    for name, (itk_array, result) in zip(names, results):
        assert result["ok"], (name, result.get("error"))
        nodes = lib.load_scan_into_scene(scene, real_data / name)
        first = next(iter(nodes.values()))
        np.testing.assert_allclose(ijk_to_ras(first), itk_ijk_to_ras(result["info"]), rtol=0, atol=1e-5,
                                   err_msg=name)
        assert array(first).shape == tuple(result["info"]["shape_zyx"])
        if name == "CALLUS_1237.AIM":   # calibrated grey image: HU, density and the per-mille mask
            assert list(nodes) == ["hu", "density", "mask_labelmap", "mask_segmentation"]
            native = read_volume(real_data / name)
            np.testing.assert_array_equal(oracles.itk_hu_from_native(native, 8192, 0.2366), itk_array)
            assert _segment_voxel_count(nodes["mask_segmentation"]) == int(
                np.count_nonzero((native >= 8192) & (native <= 32767)))
        if name == "TRAB_1240_SEG.AIM":  # binary-compressed mask: non-zero voxels
            assert list(nodes) == ["native", "mask_labelmap", "mask_segmentation"]
            assert _segment_voxel_count(nodes["mask_segmentation"]) == int(np.count_nonzero(itk_array))


# ---------------------------------------------------------------------------------------------------
# issue 21: the mask labelmap and the mask segmentation are two independent nodes
# ---------------------------------------------------------------------------------------------------
def _segment_array(segmentation_node):
    segment = segmentation_node.GetSegmentation().GetNthSegment(0)
    image = segment.GetRepresentation("Binary labelmap")
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()), image


def test_mask_labelmap_and_segmentation_never_share_voxels(scene, files):
    nodes = lib.load_scan_into_scene(scene, files["isq"])
    labelmap = array(nodes["mask_labelmap"])
    segment_voxels, segment_image = _segment_array(nodes["mask_segmentation"])
    expected = ((files["volume"] >= 8192) & (files["volume"] <= 32767)).astype(np.uint8)
    np.testing.assert_array_equal(labelmap, expected)
    np.testing.assert_array_equal(segment_voxels.reshape(labelmap.shape), expected)
    assert not np.shares_memory(segment_voxels, labelmap)
    assert nodes["mask_labelmap"].GetImageData().GetPointData().GetScalars() is not \
        segment_image.GetPointData().GetScalars()

    # editing the labelmap (zeroing it, as a user's script or the Editor would) leaves the segment alone
    labelmap[:] = 0
    nodes["mask_labelmap"].GetImageData().Modified()
    np.testing.assert_array_equal(_segment_array(nodes["mask_segmentation"])[0].reshape(labelmap.shape), expected)

    # editing the segment (Segment Editor's merge writes into the segment's image; "Add" gives label 2)
    # leaves the labelmap alone
    labelmap[:] = expected
    segment_voxels[:] = 2
    segment_image.Modified()
    np.testing.assert_array_equal(array(nodes["mask_labelmap"]), expected)


def test_segmentation_only_load_hands_over_the_buffer_without_a_copy(scene, files):
    """Without the labelmap node (removed after building the segment) there is nobody to share with."""
    nodes = lib.load_scan_into_scene(scene, files["isq"], outputs=["mask_segmentation"])
    segment_voxels, _image = _segment_array(nodes["mask_segmentation"])
    expected = ((files["volume"] >= 8192) & (files["volume"] <= 32767)).astype(np.uint8)
    np.testing.assert_array_equal(segment_voxels.reshape(expected.shape), expected)
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


# ---------------------------------------------------------------------------------------------------
# issue 21: the reader checks the name first, the magic only for SCANCO names and extensionless files
# ---------------------------------------------------------------------------------------------------
def test_reader_claims_by_name_first_then_magic(module, files, tmp_path, monkeypatch):
    reader = module.ScancoUnitsFileReader(slicer_module_stubs.ReaderParent())
    aim_bytes = Path(files["aim20"]).read_bytes()
    isq_bytes = Path(files["isq"]).read_bytes()
    cases = {
        "scan.AIM": (aim_bytes, 0.8), "scan.aim;3": (aim_bytes, 0.8), "C0004255.ISQ;1": (isq_bytes, 0.8),
        "C0004255": (isq_bytes, 0.8),            # copied off the scanner without an extension
        "AIMFILE": (aim_bytes, 0.8),
        "volume.nrrd": (aim_bytes, 0.0),         # AIM v020 magic, but a NRRD name: the core reader's file
        "image.dcm": (isq_bytes, 0.0), "scan.isq.bak": (isq_bytes, 0.0), "scan.ISQ~": (isq_bytes, 0.0),
        "junk.isq": (b"\0" * 600, 0.0), "README": (b"just text" * 100, 0.0),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert reader.canLoadFileConfidence(str(path)) == expected, name
        assert reader.canLoadFile(str(path)) is (expected > 0.55), name
    # above Slicer's core Volumes reader, which gets these files only through "All Files (*)": 0.5
    assert lib.file_reader_confidence(files["isq"]) > 0.5
    # a file whose name is not SCANCO's is not even opened
    opened = []
    monkeypatch.setattr(lib, "sniff_format", lambda p: opened.append(p))
    for name in ("volume.nrrd", "image.dcm", "scan.isq.bak"):
        assert reader.canLoadFileConfidence(str(tmp_path / name)) == 0.0
    assert opened == []
    reader.canLoadFileConfidence(str(tmp_path / "C0004255"))
    assert opened == [str(tmp_path / "C0004255")]


@pytest.mark.parametrize("sampling", [{"subsample_step": 2}, {"region": ((1, 6), (2, 7), (0, 9))},
                                      {"subsample_step": (1, 2, 3)}])
def test_segment_has_its_own_copy_for_sampled_loads_too(scene, files, sampling):
    nodes = lib.load_scan_into_scene(scene, files["isq"], outputs=["mask_labelmap", "mask_segmentation"],
                                     slab_slices=2, **sampling)
    labelmap = array(nodes["mask_labelmap"])
    segment_voxels, _image = _segment_array(nodes["mask_segmentation"])
    np.testing.assert_array_equal(segment_voxels.reshape(labelmap.shape), labelmap)
    assert labelmap.any() and not np.shares_memory(segment_voxels, labelmap)
