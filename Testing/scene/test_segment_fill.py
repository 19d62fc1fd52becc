"""The mask segmentation's own voxels are written by the load's pass itself (issue 21), not copied after it.

The segment's image is allocated before the pass and filled as a second sink of the mask; what it must hold
is computed here with numpy from the volume written to the file (the IPL rule with the native thresholds
250 and 1000 per mille = 8192 and 32767), independently of the code under test. The segment must keep its
own buffer: editing either node leaves the other unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

from ScancoUnitsLib import Calibration, write_isq  # noqa: E402
from ScancoUnitsLib.pipeline import engine  # noqa: E402
from ScancoUnitsLib.slicer import loading  # noqa: E402
from ScancoUnitsLib.slicer import scene as lib  # noqa: E402

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    volume = np.random.default_rng(21).integers(-1200, 24000, size=(7, 8, 9)).astype(np.int16)
    volume.flat[:4] = (8191, 8192, 32767, -32768)   # the threshold edges and the int16 ends
    path = write_isq(tmp_path_factory.mktemp("segment_fill") / "C0002100.ISQ", volume,
                     voxel_size_mm=(0.0607, 0.0607, 0.0607), calibration=CAL)
    return path, ((volume >= 8192) & (volume <= 32767)).astype(np.uint8)


def _segment_voxels(segmentation_node):
    image = segmentation_node.GetSegmentation().GetNthSegment(0).GetRepresentation("Binary labelmap")
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()), image


def _matrix(vtk_matrix):
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.mark.parametrize("how", ["one slab", "slabs of 2 slices", "pieces of 2 rows", "with export"])
def test_segment_buffer_is_filled_by_the_pass_and_independent(scan, tmp_path, monkeypatch, how):
    path, expected = scan
    seen = {}
    finish = loading._finish_nodes

    def spy(scene, job, nodes, created, segment_image=None):
        # right after the pass, before the segmentation node exists: the segment's voxels are already there
        voxels = numpy_support.vtk_to_numpy(segment_image.GetPointData().GetScalars())
        seen["voxels"] = voxels.reshape(expected.shape).copy()
        seen["address"] = voxels.__array_interface__["data"][0]
        return finish(scene, job, nodes, created, segment_image)

    monkeypatch.setattr(loading, "_finish_nodes", spy)
    options = {}
    if how == "slabs of 2 slices":
        options["slab_slices"] = 2
    elif how == "pieces of 2 rows":   # a slice over the byte budget: the engine cuts it into row pieces
        monkeypatch.setattr(engine, "SLAB_SET_MAX_BYTES", 2 * 9 * 2)
    elif how == "with export":
        options["export_dir"] = tmp_path / "out"
    scene = slicer.vtkMRMLScene()
    nodes = lib.load_scan(scene, path, **options).nodes
    assert list(nodes) == ["hu", "density", "mask_labelmap", "mask_segmentation"]
    np.testing.assert_array_equal(seen["voxels"], expected)

    labelmap = slicer.util.arrayFromVolume(nodes["mask_labelmap"])
    segment_voxels, segment_image = _segment_voxels(nodes["mask_segmentation"])
    # the segment holds the buffer the pass filled (no copy after it), on the labelmap's grid
    assert segment_voxels.__array_interface__["data"][0] == seen["address"]
    np.testing.assert_array_equal(segment_voxels.reshape(expected.shape), expected)
    np.testing.assert_array_equal(labelmap, expected)
    assert segment_image.GetExtent() == nodes["mask_labelmap"].GetImageData().GetExtent()
    world, ijk_to_ras = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    segment_image.GetImageToWorldMatrix(world)
    nodes["mask_labelmap"].GetIJKToRASMatrix(ijk_to_ras)
    np.testing.assert_array_equal(_matrix(world), _matrix(ijk_to_ras))

    # its own buffer: editing one node leaves the other unchanged, both ways
    assert not np.shares_memory(segment_voxels, labelmap)
    labelmap[:] = 0
    nodes["mask_labelmap"].GetImageData().Modified()
    np.testing.assert_array_equal(_segment_voxels(nodes["mask_segmentation"])[0].reshape(expected.shape),
                                  expected)
    segment_voxels[:] = 2
    segment_image.Modified()
    assert not slicer.util.arrayFromVolume(nodes["mask_labelmap"]).any()


def test_segmentation_only_load_allocates_no_second_buffer(scan, monkeypatch):
    """Without the labelmap node there is nobody to share with: the mask's one buffer becomes the segment's."""
    path, expected = scan
    made = []
    monkeypatch.setattr(loading, "new_segment_image", lambda *a: made.append(a))
    nodes = lib.load_scan_into_scene(slicer.vtkMRMLScene(), path, outputs=["mask_segmentation"])
    assert made == []
    np.testing.assert_array_equal(_segment_voxels(nodes["mask_segmentation"])[0].reshape(expected.shape), expected)
