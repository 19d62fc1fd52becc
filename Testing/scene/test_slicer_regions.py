"""Regions in Slicer, headless with slicer-core: a mask AIM or GOBJ dropped while its scan is loaded becomes
a segment on the scan's grid, and segment statistics equal the command line's region_statistics on the
files (==), also after the segment is edited (against a float64 math.fsum computation over the whole
array), for positive and negative offsets and regions partly outside the scan."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

from ScancoUnitsLib import region_statistics  # noqa: E402
from ScancoUnitsLib.core.header import Calibration  # noqa: E402
from ScancoUnitsLib.core.thresholds import ThresholdSpec, resolve_thresholds  # noqa: E402
from ScancoUnitsLib.core.units import UnitConverter  # noqa: E402
from ScancoUnitsLib.errors import RequestError  # noqa: E402
from ScancoUnitsLib.formats.aim.format import write_aim  # noqa: E402
from ScancoUnitsLib.formats.reader import read_header  # noqa: E402
from ScancoUnitsLib.pipeline.region_measures import REGION_FIELDS  # noqa: E402
from ScancoUnitsLib.slicer import region_segments  # noqa: E402
from ScancoUnitsLib.slicer.scene import load_scan_into_scene  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from gobj_files import Contour, gobj_bytes  # noqa: E402

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2366, density_slope=1662.52405,
                  density_intercept=-398.609009, density_unit="mg HA/ccm")
SIZE = (0.06069965, 0.06069965, 0.06069643)
SCAN_POS = (1300, 960, 64)
SPEC = ThresholdSpec(200, 1000)


def _scan(folder, name="C1.AIM", shape=(20, 30, 40), seed=0, size=SIZE, position=SCAN_POS):
    volume = np.random.default_rng(seed).integers(-400, 9000, size=shape).astype(np.int16)
    path = folder / name
    write_aim(path, volume, version=20, voxel_size_mm=size, position_voxels=position, calibration=CAL)
    return path, volume


def _mask_aim(folder, name, mask, position, size=SIZE):
    path = folder / name
    write_aim(path, (mask.astype(np.int8) * 127).astype(np.int8), version=20, voxel_size_mm=size,
              position_voxels=position, compression="binCmp")
    return path


def _on_grid(mask, region_pos, scan_pos, scan_shape):
    out = np.zeros(scan_shape, dtype=bool)
    zz, yy, xx = np.nonzero(mask)
    x, y, z = xx + region_pos[0] - scan_pos[0], yy + region_pos[1] - scan_pos[1], zz + region_pos[2] - scan_pos[2]
    inside = (x >= 0) & (x < scan_shape[2]) & (y >= 0) & (y < scan_shape[1]) & (z >= 0) & (z < scan_shape[0])
    out[z[inside], y[inside], x[inside]] = True
    return out


def _reference(volume, header, region):
    """float64 over the whole array, math.fsum, population SD (as Testing/pipeline/test_regions.py)."""
    resolved = resolve_thresholds(SPEC, header.calibration)
    density = UnitConverter(header.calibration).native_to(volume, "density_mg_ha_ccm").astype(np.float64)
    bone = (volume >= resolved.native_low) & (volume <= resolved.native_high)

    def mean_sd(values):
        mean = math.fsum(values.tolist()) / values.size
        return mean, math.sqrt(math.fsum(((values - mean) ** 2).tolist()) / values.size)

    vbmd, vbmd_sd = mean_sd(density[region])
    tmd, tmd_sd = mean_sd(density[region & bone])
    n = int(region.sum())
    return {"voxels": n, "bone_voxels": int((region & bone).sum()), "bv_tv": (region & bone).sum() / n,
            "vbmd_mg_ha_ccm": vbmd, "vbmd_sd_mg_ha_ccm": vbmd_sd, "tmd_mg_ha_ccm": tmd, "tmd_sd_mg_ha_ccm": tmd_sd}


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _segment_array(segmentation, segment_id, shape_zyx):
    """The segment on the whole scan grid, read back independently (extent -> array position)."""
    image = slicer.vtkOrientedImageData()
    assert segmentation.GetBinaryLabelmapRepresentation(segment_id, image)
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    out = np.zeros(shape_zyx, dtype=bool)
    if x1 >= x0:
        part = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
        out[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = part != 0
    return out


@pytest.mark.parametrize("offset", [(5, 7, 3), (-6, -4, -2), (30, 25, 15)])
def test_dropped_mask_aim_is_a_segment_with_the_cli_statistics(tmp_path, scene, offset):
    scan, volume = _scan(tmp_path)
    header = read_header(scan)
    nodes = load_scan_into_scene(scene, scan, outputs=("hu",))
    mask = np.random.default_rng(7).random((12, 14, 16)) < 0.6
    position = tuple(p + o for p, o in zip(SCAN_POS, offset))
    region_path = _mask_aim(tmp_path, "C1_TRAB_MASK.AIM", mask, position)
    expected = _on_grid(mask, position, SCAN_POS, volume.shape)

    loaded = region_segments.load_dropped_region(scene, region_path, warn=lambda text: None)
    segmentation = loaded["region_segmentation"]
    assert segmentation.GetName() == "C1 regions"
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("TRAB_MASK")
    assert segment_id
    assert np.array_equal(_segment_array(segmentation, segment_id, volume.shape), expected)
    # its own buffer: not the scan node's, not shared with any other node
    internal = segmentation.GetBinaryLabelmapInternalRepresentation(segment_id)
    assert internal.GetPointData().GetScalars() is not nodes["hu"].GetImageData().GetPointData().GetScalars()

    cli = region_statistics(scan, {"TRAB_MASK": region_path}, thresholds=SPEC)["TRAB_MASK"]
    ours = region_segments.segment_statistics(segmentation, thresholds=SPEC)["TRAB_MASK"]
    for field in REGION_FIELDS:
        assert getattr(ours, field) == getattr(cli, field), field
    assert ours.outside_voxels == int(mask.sum()) - int(expected.sum())
    # the panel's (low, high, unit) gives the same
    same = region_segments.segment_statistics(segmentation, thresholds=(200, 1000, "permille"))["TRAB_MASK"]
    assert same.tmd_mg_ha_ccm == cli.tmd_mg_ha_ccm

    # edit the segment (paint a block, clear another), then against float64 over the whole array
    edited = expected.copy()
    edited[1:4, 2:9, 3:30] = True
    edited[10:15, :, :] = False
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, volume.shape[2] - 1, 0, volume.shape[1] - 1, 0, volume.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = edited.ravel().astype(np.uint8)
    matrix = vtk.vtkMatrix4x4()
    nodes["hu"].GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, segmentation, segment_id, logic.MODE_REPLACE)
    after = region_segments.segment_statistics(segmentation, thresholds=SPEC)["TRAB_MASK"]
    for key, value in _reference(volume, header, edited).items():
        assert getattr(after, key) == value, key


def test_gobj_dropped_partly_outside_and_refusals(tmp_path, scene):
    scan, volume = _scan(tmp_path, shape=(12, 40, 50))
    header = read_header(scan)
    gobj = tmp_path / "C1_CORT.GOBJ"
    x0, y0 = SCAN_POS[0], SCAN_POS[1]
    contour = Contour([(x0 - 5, y0 + 3), (x0 + 30, y0 + 3), (x0 + 30, y0 + 30), (x0 - 5, y0 + 30)])
    gobj.write_bytes(gobj_bytes([(z, [contour]) for z in range(60, 70)],
                                voxel_size_um=tuple(s * 1000 for s in SIZE), dims=(2304, 2304, 168)))
    assert region_segments.reader_confidence(gobj) == 0.8
    assert region_segments.reader_confidence(tmp_path / "x.txt") == 0.0
    # no scan loaded: one line, load its scan first
    with pytest.raises(RequestError, match="load its scan") as info:
        region_segments.load_dropped_region(scene, gobj)
    assert "\n" not in str(info.value)
    # another element size loaded: refused, saying why
    other, _ = _scan(tmp_path, name="OTHER.AIM", size=(0.082, 0.082, 0.082))
    load_scan_into_scene(scene, other, outputs=("hu",))
    with pytest.raises(RequestError, match="element size"):
        region_segments.load_dropped_region(scene, gobj)
    # its scan loaded (loaded before OTHER, so not the newest: the newest that fits is chosen)
    scene2 = slicer.vtkMRMLScene()
    load_scan_into_scene(scene2, scan, outputs=("hu",))
    load_scan_into_scene(scene2, other, outputs=("hu",))
    warnings = []
    segmentation = region_segments.load_dropped_region(scene2, gobj, warn=warnings.append)["region_segmentation"]
    assert segmentation.GetName() == "C1 regions" and "outside the scan" in warnings[0]
    cli = region_statistics(scan, {"CORT": gobj}, thresholds=SPEC)["CORT"]
    ours = region_segments.segment_statistics(segmentation, ["CORT"], thresholds=SPEC)["CORT"]
    assert cli.outside_voxels > 0
    for field in REGION_FIELDS:
        assert getattr(ours, field) == getattr(cli, field), field
    # a second drop of the same file: a second segment, another name, same numbers
    region_segments.load_dropped_region(scene2, gobj)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    both = region_segments.segment_statistics(segmentation, thresholds=SPEC)
    assert both.names() == ("CORT", "CORT_2") and both["CORT_2"].tmd_mg_ha_ccm == cli.tmd_mg_ha_ccm
    del header


def test_char_mask_that_fits_no_scan_loads_as_before(tmp_path, scene):
    scan, _ = _scan(tmp_path)
    load_scan_into_scene(scene, scan, outputs=("hu",))
    far = _mask_aim(tmp_path, "FAR.AIM", np.ones((3, 3, 3), bool), (0, 0, 0))
    assert region_segments.load_dropped_region(scene, far) is None
    assert region_segments.load_dropped_region(scene, scan) is None   # a grey AIM is a scan, not a region
    empty = slicer.vtkMRMLScene()
    near = _mask_aim(tmp_path, "NEAR.AIM", np.ones((3, 3, 3), bool), SCAN_POS)
    assert region_segments.load_dropped_region(empty, near) is None   # no scan loaded


def test_segment_off_the_grid_and_unknown_segmentation_refused(tmp_path, scene):
    scan, volume = _scan(tmp_path)
    nodes = load_scan_into_scene(scene, scan, outputs=("hu", "mask_segmentation"), thresholds=SPEC)
    # the load's own mask segmentation is on the scan's grid: its statistics are BV/TV 1 of the mask
    mask_seg = nodes["mask_segmentation"]
    result = region_segments.segment_statistics(mask_seg, thresholds=SPEC)
    assert result.regions[0].bv_tv == 1.0
    plain = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "plain")
    with pytest.raises(RequestError, match="not on a scan loaded by ScancoUnits"):
        region_segments.segment_statistics(plain)
    # a half-voxel shift: refused in one line
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, 3, 0, 3, 0, 3)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(1)
    matrix = vtk.vtkMatrix4x4()
    nodes["hu"].GetIJKToRASMatrix(matrix)
    matrix.SetElement(0, 3, matrix.GetElement(0, 3) + SIZE[0] / 2)
    image.SetImageToWorldMatrix(matrix)
    segment = slicer.vtkSegment()
    segment.SetName("SHIFTED")
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(), image)
    mask_seg.GetSegmentation().AddSegment(segment, "shifted")
    with pytest.raises(RequestError, match="not on the grid") as info:
        region_segments.segment_statistics(mask_seg, ["SHIFTED"])
    assert "\n" not in str(info.value)


def test_table_node_and_widget_rows(tmp_path, scene, monkeypatch):
    scan, _ = _scan(tmp_path)
    load_scan_into_scene(scene, scan, outputs=("hu",))
    region = _mask_aim(tmp_path, "C1_TRAB_MASK.AIM", np.ones((4, 5, 6), bool), SCAN_POS)
    segmentation = region_segments.load_dropped_region(scene, region)["region_segmentation"]

    class FakeTable:
        def __init__(self):
            self.items, self.headers, self.rows = {}, [], 0

        def clear(self):
            self.items = {}

        def setColumnCount(self, n):  # noqa: N802
            self.columns = n

        def setHorizontalHeaderLabels(self, labels):  # noqa: N802
            self.headers = labels

        def setRowCount(self, n):  # noqa: N802
            self.rows = n

        def setItem(self, r, c, item):  # noqa: N802
            self.items[r, c] = item

    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QTableWidgetItem=lambda text: text))
    widget = FakeTable()
    result, table = region_segments.compute_for_panel(segmentation, (200, 1000, "permille"), widget)
    cli = region_statistics(scan, {"TRAB_MASK": region}, thresholds=SPEC)["TRAB_MASK"]
    assert widget.headers[0] == "Segment" and "vBMD [mg HA/ccm]" in widget.headers and "Volume [mm³]" in widget.headers
    assert widget.items[0, 0] == "TRAB_MASK" and widget.items[0, 1] == "120"
    data = table.GetTable()
    columns = {data.GetColumn(c).GetName(): c for c in range(data.GetNumberOfColumns())}
    assert data.GetValue(0, columns["TMD [mg HA/ccm]"]).ToDouble() == cli.tmd_mg_ha_ccm
    assert data.GetValue(0, columns["BV/TV [1]"]).ToDouble() == cli.bv_tv
    # the same table node is reused by the next press
    _, again = region_segments.compute_for_panel(segmentation, (200, 1000, "permille"))
    assert again is table
    assert result["TRAB_MASK"].voxels == 120


class _PluginBase:
    """Stand-in for Slicer's SegmentStatisticsPluginBase (it imports qt, absent headless): the calls the
    plugin makes, as Modules/Scripted/SegmentStatistics/SegmentStatisticsPlugins/SegmentStatisticsPluginBase.py
    defines them."""

    def __init__(self):
        self.name, self.title, self.keys, self.defaultKeys = "", "", [], []
        self.parameterNode = None

    @staticmethod
    def createMeasurementInfo(name, title, description, units, *args, **kwargs):  # noqa: N802
        return {"name": name, "title": title, "description": description, "units": units}

    def getParameterNode(self):  # noqa: N802
        return self.parameterNode

    def toLongKey(self, key):  # noqa: N802
        return self.__class__.__name__ + "." + key

    def getRequestedKeys(self):  # noqa: N802
        return [k for k in self.keys if self.parameterNode.GetParameter(self.toLongKey(k) + ".enabled") == "True"]


def test_segment_statistics_plugin_reports_the_cli_numbers(tmp_path, monkeypatch):
    from ScancoUnitsLib.slicer import segment_statistics_plugin as plugin_module

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    scan, _ = _scan(tmp_path)
    load_scan_into_scene(scene, scan, outputs=("hu",))
    mask = np.random.default_rng(2).random((6, 7, 8)) < 0.5
    region = _mask_aim(tmp_path, "C1_TRAB_MASK.AIM", mask, tuple(p - 2 for p in SCAN_POS))
    segmentation = region_segments.load_dropped_region(scene, region)["region_segmentation"]
    # the panel's thresholds, as the parameterNodeWrapper stores them (enum by name)
    panel_node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    panel_node.SetAttribute("ModuleName", "ScancoUnits")
    for key, value in (("lowerThreshold", "1000"), ("upperThreshold", "200"), ("thresholdUnit", "permille")):
        panel_node.SetParameter(key, value)

    cls = plugin_module.plugin_class(_PluginBase)
    assert plugin_module.plugin_class(_PluginBase) is cls
    plugin = cls()
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    parameters.SetParameter("Segmentation", segmentation.GetID())
    for key in plugin.keys:
        parameters.SetParameter(plugin.toLongKey(key) + ".enabled", str(key in plugin.defaultKeys))
    plugin.parameterNode = parameters
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    values = plugin.computeStatistics(segment_id)
    cli = region_statistics(scan, {"TRAB_MASK": region}, thresholds=SPEC)["TRAB_MASK"]
    assert values == {"vbmd_mg_ha_ccm": cli.vbmd_mg_ha_ccm, "bv_tv": cli.bv_tv, "tmd_mg_ha_ccm": cli.tmd_mg_ha_ccm}
    assert plugin.getMeasurementInfo("tmd_mg_ha_ccm")["units"] == "mg HA/ccm"
    # a segmentation that is not on a SCANCO scan: no values, no exception
    parameters.SetParameter("Segmentation", scene.AddNewNodeByClass("vtkMRMLSegmentationNode").GetID())
    assert plugin.computeStatistics(segment_id) == {}
    assert plugin_module.register() is False   # no SegmentStatistics module headless


def test_file_reader_drop_of_regions_and_the_panel_button(tmp_path, monkeypatch):
    """Through ScancoUnits.py: the reader claims .GOBJ, a region of a loaded scan becomes a segment, a GOBJ
    without its scan fails in one message, a char mask AIM without a scan loads as its own nodes; the
    panel's button fills its table with the command line's numbers."""
    import slicer_module_stubs

    module = slicer_module_stubs.load_scanco_units_module()
    slicer_module_stubs.new_scene()
    scan, volume = _scan(tmp_path)
    gobj = tmp_path / "C1_CORT.gobj;1"
    x0, y0 = SCAN_POS[0], SCAN_POS[1]
    gobj.write_bytes(gobj_bytes([(z, [Contour([(x0 + 2, y0 + 2), (x0 + 20, y0 + 2), (x0 + 20, y0 + 20),
                                               (x0 + 2, y0 + 20)])]) for z in range(66, 70)],
                                voxel_size_um=tuple(s * 1000 for s in SIZE), dims=(2304, 2304, 168)))
    mask_path = _mask_aim(tmp_path, "C1_TRAB_MASK.AIM", np.ones((3, 4, 5), bool), tuple(p - 1 for p in SCAN_POS))
    reader = module.ScancoUnitsFileReader(slicer_module_stubs.ReaderParent())
    assert reader.canLoadFile(str(gobj)) and "*.gobj" in reader.extensions()[0]

    parent = slicer_module_stubs.ReaderParent()
    assert module.ScancoUnitsFileReader(parent).load({"fileName": str(gobj)}) is False   # no scan loaded
    (kind, text), = parent.messages()
    assert "load its scan" in text and "\n" not in text and kind == vtk.vtkCommand.ErrorEvent
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    parent = slicer_module_stubs.ReaderParent()
    assert module.ScancoUnitsFileReader(parent).load({"fileName": str(mask_path)})      # its own mask nodes
    assert all(slicer.mrmlScene.GetNodeByID(i).GetName().startswith("C1_TRAB_MASK") for i in parent.loadedNodes)

    assert module.ScancoUnitsFileReader(slicer_module_stubs.ReaderParent()).load({"fileName": str(scan)})
    for path in (gobj, mask_path):
        parent = slicer_module_stubs.ReaderParent()
        assert module.ScancoUnitsFileReader(parent).load({"fileName": str(path)})
    segmentation = slicer.mrmlScene.GetNodeByID(parent.loadedNodes[0])
    assert segmentation.GetName() == "C1 regions"
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == ["CORT", "TRAB_MASK"]

    # the panel: Compute region statistics with the panel's thresholds
    calls = []
    monkeypatch.setattr(region_segments, "fill_table_widget", lambda widget, result: calls.append((widget, result)))
    widget = module.ScancoUnitsWidget()
    widget.logic = module.ScancoUnitsLogic()
    widget._parameterNode = widget.logic.getParameterNode()
    widget._parameterNode.lowerThreshold, widget._parameterNode.upperThreshold = 1000.0, 200.0
    table = object()
    widget.ui = types.SimpleNamespace(regionsSelector=types.SimpleNamespace(currentNode=lambda: segmentation),
                                      regionsTable=table)
    widget.onComputeRegionStatistics()
    (shown, result), = calls
    cli = region_statistics(scan, {"CORT": gobj, "TRAB_MASK": mask_path}, thresholds=SPEC)
    assert shown is table and result.names() == ("CORT", "TRAB_MASK")
    for name in result.names():
        for field in REGION_FIELDS:
            assert getattr(result[name], field) == getattr(cli[name], field), (name, field)
