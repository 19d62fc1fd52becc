"""save_mask_as_aim: Slicer labelmaps and segments back to SCANCO char AIMs, headless with slicer-core.

References, independent of the code under test: masks computed here with numpy from the source's
native voxels (250 per mille = native 8192, 1000 per mille = 32767), the edited arrays themselves,
aimio-py and ITKIOScanco reading the written AIMs in subprocesses (Testing/support/oracles.py), and the
positions worked out by hand from the source position and the loaded region.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

from ScancoUnitsLib import Calibration, read_header, read_volume, save_mask_as_aim, write_aim, write_isq  # noqa: E402
from ScancoUnitsLib.errors import MaskExportError  # noqa: E402
from ScancoUnitsLib.slicer.scene import load_scan_into_scene  # noqa: E402

TESTING = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(TESTING))
import oracles  # noqa: E402

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")
SIZE = (0.0607, 0.0607, 0.0608)
POSITION = (1000, 748, 209)


def _grey(shape=(8, 10, 12), seed=15):
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 16000, size=shape).astype(np.int16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mask_aim_sources")
    grey = _grey()
    return {
        "grey": grey,
        "aim": write_aim(folder / "GREY.AIM", grey, version=20, voxel_size_mm=SIZE, position_voxels=POSITION,
                         calibration=CAL),
        "isq": write_isq(folder / "C0001500.ISQ", grey, voxel_size_mm=SIZE, calibration=CAL),
    }


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _array(node):
    image = node.GetImageData()
    x, y, z = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z, y, x)


def _matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def test_edited_labelmap_and_segment_round_trip(tmp_path, scene, files):
    grey = files["grey"]
    nodes = load_scan_into_scene(scene, files["aim"], outputs=("mask_labelmap", "mask_segmentation"))
    labelmap, segmentation = nodes["mask_labelmap"], nodes["mask_segmentation"]
    expected_mask = (grey >= 8192) & (grey <= 32767)
    np.testing.assert_array_equal(_array(labelmap), expected_mask)

    # the unedited segment, exported on the segmentation's reference geometry
    seg_path = save_mask_as_aim(segmentation, tmp_path / "SEG.AIM")
    # edit the labelmap: clear a block, paint another
    edited = _array(labelmap)
    edited[2:5, 1:4, :] = 0
    edited[6:, 7:, 9:] = 1
    labelmap.GetImageData().Modified()
    lab_path = save_mask_as_aim(labelmap, tmp_path / "EDIT.AIM")

    for path, mask in ((seg_path, expected_mask), (lab_path, edited.astype(bool))):
        header = read_header(path)
        assert header.data_type_name == "D1TbinCmp" and header.version == "AIMDATA_V020"
        assert header.position_voxels == POSITION
        np.testing.assert_allclose(header.voxel_size_mm, read_header(files["aim"]).voxel_size_mm, rtol=0)
        np.testing.assert_array_equal(read_volume(header), mask.astype(np.int8) * 127)
        log = header.processing_log
        assert log.startswith(read_header(files["aim"]).processing_log.rstrip("\n"))
        assert "3D Slicer" in log and "GREY.AIM" in log
        assert header.calibration == read_header(files["aim"]).calibration
    seg_log = read_header(seg_path).processing_log
    assert segmentation.GetName() in seg_log
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() in seg_log
    assert labelmap.GetName() in read_header(lab_path).processing_log
    items = read_header(seg_path).processing_log_items
    assert ("Loaded with threshold [native]", "8192 32767") in items
    assert ("Loaded with threshold [permille]", "250 1000") in items
    # no temporary node was left in the scene
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 1

    aimio = oracles.aimio_batch([{"op": "aimio_read", "path": p} for p in (seg_path, lab_path)])
    itk = oracles.itk_batch([{"op": "itk_read", "path": p} for p in (seg_path, lab_path)])
    for mask, (a_arr, a_res), (i_arr, i_res) in zip((expected_mask, edited.astype(bool)), aimio, itk):
        assert a_res["ok"] and i_res["ok"], (a_res.get("error"), i_res.get("error"))
        np.testing.assert_array_equal(a_arr, mask.astype(np.int8) * 127)
        np.testing.assert_array_equal(i_arr, mask.astype(np.int16) * 127)   # binCmp: ITK does not rescale
        assert tuple(a_res["info"]["position"]) == POSITION
        np.testing.assert_allclose(i_res["info"]["origin"], np.array(POSITION) * np.array(SIZE), atol=1e-4)


@pytest.mark.parametrize("source_key,base", [("aim", POSITION), ("isq", (0, 0, 0))])
def test_sub_region_adds_the_region_offset(tmp_path, scene, files, source_key, base):
    grey = files["grey"]
    nodes = load_scan_into_scene(scene, files[source_key], outputs=("mask_labelmap",),
                                 region=((1, None), (2, 8), (3, 9)))
    labelmap = nodes["mask_labelmap"]
    path = save_mask_as_aim(labelmap, tmp_path / "SUB.AIM")
    header = read_header(path)
    assert header.position_voxels == (base[0] + 3, base[1] + 2, base[2] + 1)
    assert header.dimensions == (6, 6, 7)
    expected = (grey[1:, 2:8, 3:9] >= 8192).astype(np.int8) * 127
    np.testing.assert_array_equal(read_volume(header), expected)
    (a_arr, a_res), = oracles.aimio_batch([{"op": "aimio_read", "path": path}])
    assert a_res["ok"], a_res.get("error")
    assert tuple(a_res["info"]["position"]) == header.position_voxels
    np.testing.assert_array_equal(a_arr, expected)


def test_source_argument_and_missing_source(tmp_path, scene, files):
    nodes = load_scan_into_scene(scene, files["aim"], outputs=("mask_labelmap",))
    labelmap = nodes["mask_labelmap"]
    labelmap.RemoveAttribute("ScancoUnits.SourcePath")
    with pytest.raises(MaskExportError, match="pass source="):
        save_mask_as_aim(labelmap, tmp_path / "X.AIM")
    path = save_mask_as_aim(labelmap, tmp_path / "X.AIM", source=files["aim"])
    assert read_header(path).position_voxels == POSITION
    with pytest.raises(Exception, match="exists"):
        save_mask_as_aim(labelmap, tmp_path / "X.AIM", source=files["aim"])
    assert save_mask_as_aim(labelmap, tmp_path / "X.AIM", source=files["aim"], overwrite=True) == path


def test_refusals_leave_no_file(tmp_path, scene, files):
    nodes = load_scan_into_scene(scene, files["aim"], outputs=("mask_labelmap", "mask_segmentation"))
    labelmap, segmentation = nodes["mask_labelmap"], nodes["mask_segmentation"]
    original = _matrix(labelmap)

    rotated = vtk.vtkMatrix4x4()
    rotated.DeepCopy(original)
    angle = np.radians(10)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    block = np.array([[original.GetElement(r, c) for c in range(2)] for r in range(2)]) @ rot
    for r in range(2):
        for c in range(2):
            rotated.SetElement(r, c, block[r, c])
    labelmap.SetIJKToRASMatrix(rotated)
    with pytest.raises(MaskExportError, match="rotated"):
        save_mask_as_aim(labelmap, tmp_path / "R.AIM")

    half = vtk.vtkMatrix4x4()
    half.DeepCopy(original)
    half.SetElement(0, 3, original.GetElement(0, 3) - 0.5 * SIZE[0])
    labelmap.SetIJKToRASMatrix(half)
    with pytest.raises(MaskExportError, match="fraction of a voxel"):
        save_mask_as_aim(labelmap, tmp_path / "H.AIM")
    labelmap.SetIJKToRASMatrix(original)

    # a second segment: the segment must be named
    segment = slicer.vtkSegment()
    segment.SetName("other")
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(),
                              slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap))
    segmentation.GetSegmentation().AddSegment(segment)
    with pytest.raises(MaskExportError, match="2 segments"):
        save_mask_as_aim(segmentation, tmp_path / "S.AIM")
    first = segmentation.GetSegmentation().GetNthSegment(0).GetName()
    path = save_mask_as_aim(segmentation, tmp_path / "S.AIM", segment_id=first)
    assert read_header(path).data_type_name == "D1TbinCmp"
    with pytest.raises(MaskExportError, match="no segment with id or name"):
        save_mask_as_aim(segmentation, tmp_path / "T.AIM", segment_id="nope")

    # a subsampled (resampled) load is not on the scan's grid
    coarse = load_scan_into_scene(scene, files["aim"], outputs=("mask_labelmap",), subsample_step=2)["mask_labelmap"]
    with pytest.raises(MaskExportError, match="differs from the scan"):
        save_mask_as_aim(coarse, tmp_path / "C.AIM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S.AIM"]


def test_real_scan_mask(tmp_path, scene, real_data):
    """A real IPL mask loaded into Slicer, edited and saved: IPL's grid and log, the edit in the voxels."""
    source = real_data / "TRAB_1240_SEG.AIM"
    nodes = load_scan_into_scene(scene, source, outputs=("mask_labelmap",))
    labelmap = nodes["mask_labelmap"]
    array = _array(labelmap)
    np.testing.assert_array_equal(array, read_volume(read_header(source)) != 0)
    array[:, :10, :] = 0
    labelmap.GetImageData().Modified()
    header = read_header(save_mask_as_aim(labelmap, tmp_path / "TRAB_EDIT.AIM"))
    assert header.position_voxels == (1000, 748, 209)
    assert header.voxel_size_mm == read_header(source).voxel_size_mm
    np.testing.assert_array_equal(read_volume(header), array.astype(np.int8) * 127)
    assert "ISQ_TO_AIM (IPL)" in header.processing_log and "3D Slicer" in header.processing_log
