"""Histogram plot chart and threshold preview in an MRML scene, headless with slicer-core."""

from __future__ import annotations

import numpy as np
import pytest

from ScancoUnitsLib.errors import CalibrationMissingError
from ScancoUnitsLib.pipeline.histogram import NativeHistogram
from ScancoUnitsLib.phantom import PHANTOM_CALIBRATION, write_phantom_isq
from ScancoUnitsLib.formats.reader import read_volume
from ScancoUnitsLib.core.thresholds import ThresholdSpec, resolve_thresholds

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from vtk.util import numpy_support  # noqa: E402

from ScancoUnitsLib.slicer.histogram_chart import (  # noqa: E402
    COLUMN_HIGH_X, COLUMN_HIGH_Y, COLUMN_LOW_X, COLUMN_LOW_Y, COLUMN_NATIVE, COLUMN_VOXELS, COLUMN_X,
    clear_threshold_preview, create_histogram_chart, preview_mask_on_scan_node, preview_threshold_on_volume,
    threshold_lines,
    threshold_range_for_quantity, update_threshold_lines)

CAL = PHANTOM_CALIBRATION


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("chart") / "PHANTOM.ISQ"
    write_phantom_isq(path, shape_zyx=(12, 48, 48))
    return read_volume(path)


@pytest.fixture(scope="module")
def histogram(volume):
    return NativeHistogram.of(volume)


def column(table_node, name):
    array = table_node.GetTable().GetColumnByName(name)
    assert array is not None, f"no column {name}"
    return numpy_support.vtk_to_numpy(array).astype(np.float64)


def series_of(chart):
    return [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]


def test_chart_has_the_histogram_and_two_threshold_series(histogram):
    scene = slicer.vtkMRMLScene()
    resolved = resolve_thresholds(ThresholdSpec(250, 1000), CAL)
    chart, table, series = create_histogram_chart(scene, histogram, resolved, unit="hu", calibration=CAL)
    assert chart.IsA("vtkMRMLPlotChartNode") and table.IsA("vtkMRMLTableNode")
    assert chart.GetScene() is scene and table.GetScene() is scene
    assert set(series) == {"histogram", "low", "high"}
    assert [s.GetID() for s in series_of(chart)] == [series[k].GetID() for k in ("histogram", "low", "high")]
    for node in series.values():
        assert node.IsA("vtkMRMLPlotSeriesNode")
        assert node.GetTableNodeID() == table.GetID()
    assert (series["histogram"].GetXColumnName(), series["histogram"].GetYColumnName()) == (COLUMN_X, COLUMN_VOXELS)
    assert (series["low"].GetXColumnName(), series["low"].GetYColumnName()) == (COLUMN_LOW_X, COLUMN_LOW_Y)
    assert (series["high"].GetXColumnName(), series["high"].GetYColumnName()) == (COLUMN_HIGH_X, COLUMN_HIGH_Y)
    assert series["low"].GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    assert chart.GetYAxisLogScale() and chart.GetXAxisTitle() == "HU"
    assert "native 8192" in series["low"].GetName() and "250.0" in series["low"].GetName()

    # the histogram columns: every voxel once, x = bin centre in HU by the reference formula
    voxels = column(table, COLUMN_VOXELS)
    assert voxels.sum() == histogram.total and len(voxels) <= 512
    native = column(table, COLUMN_NATIVE)
    np.testing.assert_allclose(column(table, COLUMN_X),
                               native * 1000.0 / (CAL.mu_scaling * CAL.mu_water_per_cm) - 1000.0, rtol=1e-12)
    # the lines: vertical, at the thresholds' HU values, from 1 voxel to above the highest bin
    low_x, low_y = column(table, COLUMN_LOW_X), column(table, COLUMN_LOW_Y)
    assert np.all(low_x == resolved.values["hu"][0])
    assert np.all(column(table, COLUMN_HIGH_X) == resolved.values["hu"][1])
    assert low_y[0] == 1.0 and low_y[-1] > voxels.max()
    assert threshold_lines(table) == resolved.values["hu"]


def test_threshold_lines_follow_new_thresholds(histogram):
    scene = slicer.vtkMRMLScene()
    first = resolve_thresholds(ThresholdSpec(250, 1000), CAL)
    chart, table, series = create_histogram_chart(scene, histogram, first, unit="permille")
    rows = table.GetTable().GetNumberOfRows()
    second = resolve_thresholds(ThresholdSpec(400, 900, "density"), CAL)
    drawn = update_threshold_lines(table, second, series_nodes=series)
    assert drawn == second.values["permille"]
    assert np.all(column(table, COLUMN_LOW_X) == second.values["permille"][0])
    assert np.all(column(table, COLUMN_HIGH_X) == second.values["permille"][1])
    assert table.GetTable().GetNumberOfRows() == rows and chart.GetNumberOfPlotSeriesNodes() == 3
    assert f"native {second.native_low}" in series["low"].GetName()
    # a plain pair in the table's unit works too
    assert update_threshold_lines(table, (300.0, 700.0)) == (300.0, 700.0)
    assert threshold_lines(table) == (300.0, 700.0)


def test_chart_without_thresholds_has_only_the_histogram(histogram):
    scene = slicer.vtkMRMLScene()
    chart, table, series = create_histogram_chart(scene, histogram, None, unit="native", bins=64)
    assert list(series) == ["histogram"] and chart.GetNumberOfPlotSeriesNodes() == 1
    assert table.GetTable().GetColumnByName(COLUMN_LOW_X) is None
    assert len(column(table, COLUMN_VOXELS)) <= 64


def test_calibrated_unit_needs_the_calibration(histogram):
    scene = slicer.vtkMRMLScene()
    with pytest.raises(CalibrationMissingError):
        create_histogram_chart(scene, histogram, None, unit="density_mg_ha_ccm")
    with pytest.raises(ValueError, match="unknown chart unit"):
        create_histogram_chart(scene, histogram, None, unit="furlongs")
    with pytest.raises(ValueError, match="empty"):
        create_histogram_chart(scene, NativeHistogram("int16"), None)


def _float_volume_node(scene, values_zyx):
    """A scalar volume node holding ``values_zyx`` with a grey colour table (as Slicer's defaults give)."""
    grey = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Grey")
    grey.SetTypeToGrey()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "density")
    image = vtk.vtkImageData()
    nz, ny, nx = values_zyx.shape
    image.SetDimensions(nx, ny, nz)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = values_zyx.ravel()
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAndObserveColorNodeID(grey.GetID())
    return node


def _shown_voxels(display_node, shape_zyx) -> np.ndarray:
    """Opacity of each voxel after the display node's pipeline (threshold -> alpha)."""
    producer = display_node.GetImageDataConnection().GetProducer()
    producer.Update()
    rgba = numpy_support.vtk_to_numpy(producer.GetOutputDataObject(0).GetPointData().GetScalars())
    return rgba[:, -1].reshape(shape_zyx) > 0


def test_preview_on_a_density_node_shows_exactly_the_mask(volume):
    scene = slicer.vtkMRMLScene()
    density_g_cc = (((volume / CAL.mu_scaling) * CAL.density_slope + CAL.density_intercept) / 1000.0)
    node = _float_volume_node(scene, density_g_cc.astype(np.float32))
    # the low threshold cuts through the 800 mg HA/ccm rod's noise: the edge voxels decide the test
    resolved = resolve_thresholds(ThresholdSpec(800, 1000, "density"), CAL)
    low, high = threshold_range_for_quantity(resolved, "density_g_cc", CAL)
    display = preview_threshold_on_volume(node, low, high)
    assert display is node.GetDisplayNode() and display.GetApplyThreshold()
    assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == pytest.approx((low, high))
    mask = resolved.mask(volume).astype(bool)
    assert 0 < mask.sum() < mask.size
    assert np.count_nonzero(np.abs(volume.astype(int) - resolved.native_low) <= 2) > 10
    np.testing.assert_array_equal(_shown_voxels(display, volume.shape), mask)
    clear_threshold_preview(node)
    assert not display.GetApplyThreshold()
    assert _shown_voxels(display, volume.shape).all()


def test_preview_creates_a_display_node_when_missing():
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hu")
    assert node.GetDisplayNode() is None
    display = preview_threshold_on_volume(node, -10.0, 20.0, enabled=False)
    assert display.IsA("vtkMRMLScalarVolumeDisplayNode") and not display.GetApplyThreshold()
    assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == (-10.0, 20.0)
    with pytest.raises(ValueError, match="above"):
        preview_threshold_on_volume(node, 5.0, 1.0)


def test_threshold_range_for_quantity_is_half_a_native_step_outside():
    resolved = resolve_thresholds(ThresholdSpec(250, 1000), CAL)
    assert threshold_range_for_quantity(resolved, "native") == (8191.5, 32767.5)
    low_hu, high_hu = threshold_range_for_quantity(resolved, "hu", CAL)
    scale = 1000.0 / (CAL.mu_scaling * CAL.mu_water_per_cm)
    assert low_hu == pytest.approx(8191.5 * scale - 1000.0) and high_hu == pytest.approx(32767.5 * scale - 1000.0)
    with pytest.raises(ValueError):
        threshold_range_for_quantity(resolved, "permille")


def test_preview_on_a_scan_node_reads_its_quantity():
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan HU")
    resolved = resolve_thresholds(ThresholdSpec(250, 1000), CAL)
    with pytest.raises(ValueError, match="not a ScancoUnits volume"):
        preview_mask_on_scan_node(node, resolved, CAL)
    node.SetAttribute("ScancoUnits.Quantity", "density_mg_ha_ccm")
    display = preview_mask_on_scan_node(node, resolved, CAL)
    expected = threshold_range_for_quantity(resolved, "density_mg_ha_ccm", CAL)
    assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == pytest.approx(expected)
    assert display.GetApplyThreshold()


def test_preview_on_nodes_loaded_by_the_scene_module_matches_their_mask(tmp_path):
    """End to end with ScancoUnitsLib.slicer.scene: the preview on the loaded density node shows the voxels of the
    mask labelmap loaded with the same thresholds, and the chart is built from the same file."""
    from ScancoUnitsLib.pipeline.histogram import histogram_of_file
    from ScancoUnitsLib.slicer.scene import load_scan_into_scene

    path = tmp_path / "PHANTOM.ISQ"
    write_phantom_isq(path, shape_zyx=(8, 40, 40))
    spec = ThresholdSpec(800, 1000, "density")
    scene = slicer.vtkMRMLScene()
    grey = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Grey")
    grey.SetTypeToGrey()
    nodes = load_scan_into_scene(scene, path, outputs=("density", "mask_labelmap"), thresholds=spec,
                                 density_unit="g/cc")
    density = nodes["density"]
    if density.GetDisplayNode() is None:
        density.CreateDefaultDisplayNodes()
    density.GetDisplayNode().SetAndObserveColorNodeID(grey.GetID())
    resolved = resolve_thresholds(spec, CAL)
    display = preview_mask_on_scan_node(density, resolved, CAL)
    scalars = nodes["mask_labelmap"].GetImageData().GetPointData().GetScalars()
    labelmap = numpy_support.vtk_to_numpy(scalars).reshape(8, 40, 40)
    assert 0 < labelmap.sum() < labelmap.size
    np.testing.assert_array_equal(_shown_voxels(display, (8, 40, 40)), labelmap > 0)
    chart, table, series = create_histogram_chart(scene, histogram_of_file(path), resolved,
                                                  unit="density_g_cc", calibration=CAL)
    assert threshold_lines(table) == resolved.values["density_g_cc"]


def test_every_series_is_drawn_against_its_x_column(histogram):
    """Slicer's PlotTypeLine spaces points evenly and ignores X (vtkMRMLPlotSeriesNode::IsXColumnRequired is
    true only for Scatter and ScatterBar): the histogram would be drawn against bin index and the threshold
    lines as ramps. Every series must require its X column, and the lines must be vertical at the thresholds,
    before and after the thresholds move."""
    scene = slicer.vtkMRMLScene()
    first = resolve_thresholds(ThresholdSpec(250, 1000), CAL)
    chart, table, series = create_histogram_chart(scene, histogram, first, unit="hu", calibration=CAL)
    for key, node in series.items():
        assert node.IsXColumnRequired(), f"{key} series ignores its X column"
        assert node.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
        assert node.GetMarkerStyle() == slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone
        assert node.GetLineStyle() != slicer.vtkMRMLPlotSeriesNode.LineStyleNone
    # the histogram's x values increase with the bin (a line through the points, left to right)
    assert np.all(np.diff(column(table, COLUMN_X)) > 0)
    second = resolve_thresholds(ThresholdSpec(400, 900, "density"), CAL)
    for resolved in (first, second):
        update_threshold_lines(table, resolved, series_nodes=series)
        for which, (x_name, y_name), value in (("low", (COLUMN_LOW_X, COLUMN_LOW_Y), resolved.values["hu"][0]),
                                               ("high", (COLUMN_HIGH_X, COLUMN_HIGH_Y), resolved.values["hu"][1])):
            x = column(table, series[which].GetXColumnName())
            y = column(table, series[which].GetYColumnName())
            assert (series[which].GetXColumnName(), series[which].GetYColumnName()) == (x_name, y_name)
            assert np.all(x == value), which          # vertical: one x for every point of the line
            assert y.min() <= 1.0 and y.max() > column(table, COLUMN_VOXELS).max()   # spans the plot
            assert np.all(np.diff(y) > 0)
    assert threshold_lines(table) != first.values["hu"]
