"""The panel's code paths (ScancoUnitsWidget) run headless: real MRML nodes and Logic, recording stand-ins for
the Qt side (widgets, progress dialog, application, file dialog). What Qt itself does is not tested here;
what the widget asks of it is: the path fields follow any text and judge the file by content, history is
saved when a file is used, long tasks run behind a modal dialog with the buttons disabled, the histogram is
read once with progress, and Save mask as AIM passes the chosen node and segment to the Logic.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from ScancoUnitsLib import Calibration, write_isq  # noqa: E402

TESTING = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(TESTING))
import slicer_module_stubs  # noqa: E402
from segmentation_nodes import add_empty_segments  # noqa: E402

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")
MODULE_CODE = slicer_module_stubs.MODULE_FILE.read_text(encoding="utf-8")


class FakeWidget:
    """Any Qt/CTK/qMRML widget of the .ui: the attributes and calls the module code uses, recorded."""

    def __init__(self, name):
        self.name = name
        self.enabled = True
        self.visible = True
        self.checked = False
        self.text = self.toolTip = self.currentPath = ""
        self.maximum = 0
        self.connections = []
        self.history = []
        self.items = []
        self.currentIndex = -1
        self._node = None
        self._combo = None

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def comboBox(self):  # ctkPathLineEdit
        if self._combo is None:
            self._combo = FakeWidget(self.name + ".comboBox")
        return self._combo

    def addCurrentPathToHistory(self):  # ctkPathLineEdit
        self.history.append(self.currentPath)

    def currentNode(self):  # qMRMLNodeComboBox
        return self._node

    def setCurrentNode(self, node):
        changed = node is not self._node
        self._node = node
        if changed:   # qMRMLNodeComboBox emits currentNodeChanged
            for signal, slot in self.connections:
                if signal == "currentNodeChanged(vtkMRMLNode*)":
                    slot(node)

    def setMRMLScene(self, scene):
        pass

    # QComboBox
    def blockSignals(self, block):
        return False

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))

    @property
    def count(self):
        return len(self.items)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index


class FakeDialog:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.wasCanceled = False
        self.shown = self.closed = False
        self.windowModality = None
        self.value = 0

    def show(self):
        self.shown = True

    def close(self):
        self.closed = True


class Harness:
    """A ScancoUnitsWidget wired to FakeWidgets, with the Qt/app calls of the module recorded."""

    def __init__(self, module, monkeypatch):
        self.module = module
        self.dialogs = []
        self.during_events = []   # (apply, histogram, save enabled, dialog modality, shown) at each event pass
        self.status = []
        self.save_name = ""
        harness = self

        class FakeApp:
            def processEvents(self):
                dialog = harness.dialogs[-1] if harness.dialogs else None
                ui = harness.widget.ui
                harness.during_events.append((ui.applyButton.enabled, ui.showHistogramButton.enabled,
                                              ui.saveMaskAsAimButton.enabled,
                                              dialog.windowModality if dialog else None,
                                              dialog.shown if dialog else None))

            def testingEnabled(self):
                return True

            def layoutManager(self):
                return None

            def setOverrideCursor(self, cursor):
                pass

            def restoreOverrideCursor(self):
                pass

        def create_progress_dialog(**kwargs):
            dialog = FakeDialog(**kwargs)
            self.dialogs.append(dialog)
            return dialog

        qt = types.ModuleType("qt")
        qt.Qt = types.SimpleNamespace(ApplicationModal=2, WaitCursor=3)
        qt.QFileDialog = types.SimpleNamespace(getSaveFileName=lambda *args: self.save_name)
        monkeypatch.setitem(sys.modules, "qt", qt)
        monkeypatch.setattr(slicer, "app", FakeApp(), raising=False)
        monkeypatch.setattr(slicer.util, "createProgressDialog", create_progress_dialog)
        monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, ms=0: self.status.append(text))
        monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: True)
        self.errors = []   # (text, keyword arguments) of every error dialog
        monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **k: self.errors.append((text, k)))

        widget = module.ScancoUnitsWidget()
        names = sorted(set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_CODE)))
        widget.ui = types.SimpleNamespace(**{name: FakeWidget(name) for name in names})
        widget.logic = module.ScancoUnitsLogic()
        widget._parameterNode = widget.logic.getParameterNode()
        widget.ui.maskNodeSelector.connect("currentNodeChanged(vtkMRMLNode*)", widget.onMaskNodeChanged)
        self.widget = widget
        self.ui = widget.ui
        self.p = widget._parameterNode

    def type_path(self, text):
        """What typing (or clearing) the input field does: the combo box's editTextChanged slot."""
        self.ui.inputFileSelector.currentPath = text
        self.widget.onInputPathChanged(text)
        self.widget.updateGUIFromParameterNode()   # the parameter node's ModifiedEvent in Slicer


@pytest.fixture
def harness(monkeypatch):
    module = slicer_module_stubs.load_scanco_units_module()
    slicer_module_stubs.new_scene()
    return Harness(module, monkeypatch)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("widget")
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 20000, size=(40, 6, 5)).astype(np.int16)
    other = folder / "notes.txt"
    other.write_text("not a scan")
    return {"vms": write_isq(folder / "C0004255.ISQ;1", volume, voxel_size_mm=(0.06,) * 3, calibration=CAL),
            "odd_case": write_isq(folder / "x.iSQ", volume, voxel_size_mm=(0.06,) * 3, calibration=CAL),
            "other": other, "volume": volume}


def test_path_field_takes_any_name_judges_content_and_clears(harness, scan):
    ui = harness.ui
    for key in ("vms", "odd_case"):
        harness.type_path(str(scan[key]))
        assert harness.p.inputFilePath == str(scan[key])
        assert harness.widget._header is not None, key
        assert ui.applyButton.enabled and ui.showHistogramButton.enabled
    harness.type_path(str(scan["other"]))
    assert harness.widget._header is None and not ui.applyButton.enabled
    assert "notes.txt" in ui.headerSummaryLabel.text
    harness.type_path("")   # cleared
    assert harness.p.inputFilePath == "" and harness.widget._header is None
    assert not ui.applyButton.enabled and ui.headerSummaryLabel.text == "No file selected."
    # the same path again does not read the header again
    harness.type_path(str(scan["vms"]))
    header = harness.widget._header
    harness.widget.updateGUIFromParameterNode()
    assert harness.widget._header is header


def test_apply_is_modal_disables_buttons_and_saves_history(harness, scan):
    ui = harness.ui
    harness.type_path(str(scan["vms"]))
    harness.p.exportEnabled = False
    harness.widget.onApplyButton()
    dialog, = harness.dialogs
    assert dialog.closed and dialog.windowModality == 2 and dialog.shown
    assert harness.during_events, "no progress reported"
    for apply_enabled, histogram_enabled, save_enabled, modality, shown in harness.during_events:
        assert (apply_enabled, histogram_enabled, save_enabled) == (False, False, False)
        assert modality == 2 and shown
    assert ui.applyButton.enabled and ui.showHistogramButton.enabled   # back after the load
    assert ui.inputFileSelector.history == [str(scan["vms"])]
    assert ui.exportDirectorySelector.history == []
    nodes = harness.widget._loadedNodes
    assert sorted(nodes) == ["density", "hu", "mask_labelmap", "mask_segmentation"]
    assert ui.maskNodeSelector.currentNode() is nodes["mask_segmentation"]
    assert ui.maskSegmentComboBox.items == [("Bone 250-1000 per mille",
                                             nodes["mask_segmentation"].GetSegmentation().GetNthSegmentID(0))]
    assert ui.saveMaskAsAimButton.enabled and not ui.maskSegmentComboBox.enabled   # one segment: no choice


def test_apply_cancel_leaves_the_scene_and_history_alone(harness, scan):
    harness.type_path(str(scan["vms"]))
    before = slicer.mrmlScene.GetNumberOfNodes()
    original = slicer.app.processEvents

    def cancel_on_first_event():
        original()
        harness.dialogs[-1].wasCanceled = True

    slicer.app.processEvents = cancel_on_first_event
    harness.widget.onApplyButton()
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    assert harness.ui.inputFileSelector.history == []
    assert harness.status and "Cancelled" in harness.status[-1]
    assert harness.ui.applyButton.enabled


def test_show_histogram_reads_once_with_progress(harness, scan, monkeypatch):
    harness.type_path(str(scan["vms"]))
    harness.widget.logic.HISTOGRAM_SLAB_SLICES = 8
    harness.widget.onShowHistogram()
    dialog, = harness.dialogs
    assert dialog.closed and dialog.windowModality == 2 and dialog.value == 1000
    assert len(harness.during_events) >= 5   # 40 slices, 8 at a time: progress and a cancel check each
    chart, table, series = harness.widget._chart
    assert all(s.IsXColumnRequired() for s in series.values())
    # again: from the store, no dialog, no read
    import ScancoUnitsLib.formats.reader as reader_module

    monkeypatch.setattr(reader_module, "open_voxels", lambda *a, **k: pytest.fail("read the file again"))
    harness.widget.onShowHistogram()
    assert len(harness.dialogs) == 1
    assert slicer.mrmlScene.IsNodePresent(harness.widget._chart[0]) and not slicer.mrmlScene.IsNodePresent(chart)
    # moving a threshold moves the lines
    harness.p.lowerThreshold = 300.0
    harness.widget.updateGUIFromParameterNode()
    from ScancoUnitsLib.slicer.histogram_chart import threshold_lines

    resolved = harness.widget._resolvedThresholds()
    assert threshold_lines(harness.widget._chart[1]) == resolved.values["hu"]


def test_save_mask_as_aim_passes_node_and_segment(harness, scan, monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("ScancoUnitsLib.slicer.mask_aim")

    def save_mask_as_aim(node, path, *, source=None, segment_id=None, overwrite=False):
        assert overwrite is True   # the file dialog asked before returning an existing name
        calls.append((node, path, segment_id))
        return Path(path)

    fake.save_mask_as_aim = save_mask_as_aim
    monkeypatch.setitem(sys.modules, "ScancoUnitsLib.slicer.mask_aim", fake)
    ui = harness.ui
    harness.widget.onMaskNodeChanged(None)
    assert not ui.saveMaskAsAimButton.enabled
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited")
    ui.maskNodeSelector.setCurrentNode(segmentation)
    assert not ui.saveMaskAsAimButton.enabled   # no segment yet
    add_empty_segments(segmentation, ("Cortex", "Trabecular"))   # Segment Editor adds segments: the list follows
    assert [name for name, _ in ui.maskSegmentComboBox.items] == ["Cortex", "Trabecular"]
    assert ui.saveMaskAsAimButton.enabled and ui.maskSegmentComboBox.enabled
    ui.maskSegmentComboBox.setCurrentIndex(1)
    harness.save_name = str(tmp_path / "TRAB.AIM")
    harness.widget.onSaveMaskAsAim()
    assert calls == [(segmentation, harness.save_name, segmentation.GetSegmentation().GetNthSegmentID(1))]
    assert harness.status[-1].endswith("TRAB.AIM")
    harness.save_name = ""   # the file dialog cancelled: nothing is written
    harness.widget.onSaveMaskAsAim()
    assert len(calls) == 1
    # switching to a labelmap stops following the segmentation
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    ui.maskNodeSelector.setCurrentNode(labelmap)
    assert ui.maskSegmentComboBox.items == [] and ui.saveMaskAsAimButton.enabled
    harness.save_name = str(tmp_path / "MASK.AIM")
    harness.widget.onSaveMaskAsAim()
    assert calls[-1] == (labelmap, harness.save_name, None)


def test_setup_connects_the_path_fields_by_their_text(harness, monkeypatch):
    """setup() wires each path field through its combo box's editTextChanged (every text, empty included),
    not through ctkPathLineEdit.currentPathChanged (only text its validator accepts)."""
    module = harness.module
    fakes = harness.ui
    widget = module.ScancoUnitsWidget()
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "setup", lambda self: None, raising=False)
    widget.layout = types.SimpleNamespace(addWidget=lambda w: None)
    widget.resourcePath = lambda relative: relative
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: FakeWidget("ScancoUnits"))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda ui: fakes)
    widget.setup()
    signals = {name: [signal for signal, _ in getattr(fakes, name).connections] for name in vars(fakes)}
    assert "currentPathChanged(QString)" not in signals["inputFileSelector"]
    input_slots = dict(fakes.inputFileSelector.comboBox().connections)
    assert input_slots["editTextChanged(QString)"] == widget.onInputPathChanged
    export_slots = dict(fakes.exportDirectorySelector.comboBox().connections)
    assert export_slots["editTextChanged(QString)"] == widget.onExportDirectoryChanged
    assert dict(fakes.saveMaskAsAimButton.connections)["clicked(bool)"] == widget.onSaveMaskAsAim
    assert dict(fakes.maskNodeSelector.connections)["currentNodeChanged(vtkMRMLNode*)"] == widget.onMaskNodeChanged
    assert widget._parameterNode is not None
    widget.cleanup()


@pytest.mark.filterwarnings("ignore:does not have observer")   # the harness never observed its parameter node
def test_close_scene_frees_the_loaded_volumes(harness, scan):
    """Close Scene (StartCloseEvent, observed as in setup) drops the panel's references to the loaded
    nodes: their image data are then held by nobody but this test (reference count 1)."""
    widget = harness.widget
    widget.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, widget.onSceneStartClose)
    harness.type_path(str(scan["vms"]))
    widget.onApplyButton()
    assert widget._loadedNodes
    images = [node.GetImageData() for node in widget._loadedNodes.values() if hasattr(node, "GetImageData")]
    assert images and all(image.GetReferenceCount() > 1 for image in images)
    slicer.mrmlScene.Clear(0)
    assert widget._loadedNodes == {} and widget._chart is None and widget._observedMaskNode is None
    assert [image.GetReferenceCount() for image in images] == [1] * len(images)
    widget.removeObservers()


def _assert_one_line_error(harness, *words):
    (text, kwargs), = harness.errors
    assert "Traceback" not in text and "detailedText" not in kwargs
    message, reason = text.split("\n")   # what failed, why: one line each
    for word in words:
        assert word in reason, (word, reason)
    harness.errors.clear()


@pytest.mark.parametrize("case", ["hu_thresholds", "stale_hu_box", "export_folder_is_a_file"])
def test_every_action_failure_is_one_error_dialog(harness, scan, tmp_path, case):
    """An uncalibrated file with HU thresholds / an HU output and the export on: existingExportFiles (and
    the load) fail; Apply shows one one-line error dialog and raises nothing."""
    from ScancoUnitsLib import Calibration, write_isq

    native = write_isq(tmp_path / "native.isq", scan["volume"], voxel_size_mm=(0.06,) * 3,
                       calibration=Calibration(mu_scaling=8192))
    harness.type_path(str(native if case != "export_folder_is_a_file" else scan["vms"]))
    harness.p.exportEnabled = True
    harness.p.exportDirectory = str(tmp_path / "out")
    if case == "hu_thresholds":
        harness.p.thresholdUnit = harness.module.ThresholdUnit.hu
        harness.p.lowerThreshold, harness.p.upperThreshold = 400.0, 3000.0
        words = ["native.isq", "mu_water"]
    elif case == "stale_hu_box":
        harness.ui.createHUCheckBox.enabled = True   # as if the panel had not caught up with the file
        words = ["native.isq", "mu_water"]
    else:
        (tmp_path / "out").write_text("a file where the folder should be")
        words = ["out"]
    before = slicer.mrmlScene.GetNumberOfNodes()
    harness.widget.onApplyButton()   # raises nothing
    _assert_one_line_error(harness, *words)
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    assert not harness.widget._busy and harness.ui.applyButton.enabled


def test_histogram_and_save_failures_are_one_error_dialog(harness, scan, tmp_path, monkeypatch):
    harness.type_path(str(scan["vms"]))

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error", str(scan["vms"]))

    monkeypatch.setattr(harness.widget.logic, "histogramOf", broken)
    harness.widget.onShowHistogram()
    _assert_one_line_error(harness, "Input/output error")
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "no source")
    harness.ui.maskNodeSelector.setCurrentNode(labelmap)
    harness.save_name = str(tmp_path / "x.aim")
    harness.widget.onSaveMaskAsAim()   # no SCANCO source: refused by the library
    _assert_one_line_error(harness, "no source")
    assert not (tmp_path / "x.aim").exists()


def test_apply_refuses_a_load_that_does_not_fit_in_memory(harness, scan, monkeypatch):
    """Nodes needing more than the memory available: refused before anything is read, with the figures and
    the ways out; with every n-th voxel the same load goes through."""
    from ScancoUnitsLib.slicer import memory_fit

    volume_voxels = scan["volume"].size
    monkeypatch.setattr(memory_fit, "available_memory_bytes", lambda: volume_voxels * 2)   # < 8 bytes a voxel
    harness.type_path(str(scan["vms"]))
    before = slicer.mrmlScene.GetNumberOfNodes()
    harness.widget.onApplyButton()
    assert harness.dialogs == []   # nothing was read
    (text, _k), = harness.errors
    assert "C0004255.ISQ;1: the chosen nodes need 9.4 KiB of memory, 2.3 KiB is available" in text, text
    assert "every 2nd voxel" in text and "sub-region" in text and "fewer outputs" in text
    harness.errors.clear()
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    harness.p.loadMode = harness.module.LoadMode.subsample
    harness.p.subsampleStep = 2
    harness.widget.onApplyButton()
    assert harness.errors == [] and harness.widget._loadedNodes


def test_panel_takes_the_library_defaults(monkeypatch):
    """A changed library default (thresholds, density unit) moves the panel: a new parameter node takes the
    library's values when it is made, not literals of the module file; a saved node keeps its own."""
    from ScancoUnitsLib import defaults

    module = slicer_module_stubs.load_scanco_units_module()
    slicer_module_stubs.new_scene()
    p = module.ScancoUnitsLogic().getParameterNode()
    assert (p.lowerThreshold, p.upperThreshold) == defaults.THRESHOLDS_PERMILLE
    assert p.densityUnit == module.DensityUnit.of(defaults.DENSITY_UNIT)
    assert p.thresholdUnit == module.ThresholdUnit.permille

    monkeypatch.setattr(defaults, "THRESHOLDS_PERMILLE", (300.0, 900.0))
    monkeypatch.setattr(defaults, "DENSITY_UNIT", "mg HA/ccm")
    slicer_module_stubs.new_scene()
    p = module.ScancoUnitsLogic().getParameterNode()
    assert (p.lowerThreshold, p.upperThreshold) == (300.0, 900.0)
    assert p.densityUnit == module.DensityUnit.mg_ha_ccm
    # the values the user set (or a loaded scene holds) stay
    p.lowerThreshold = 420.0
    again = module.ScancoUnitsLogic().getParameterNode()
    assert again.parameterNode is p.parameterNode and again.parameterNode.GetAttribute(
        module.ScancoUnitsLogic.DEFAULTS_ATTRIBUTE) == "1"


def test_logic_default_density_unit_is_the_librarys(monkeypatch, tmp_path):
    from ScancoUnitsLib import defaults

    module = slicer_module_stubs.load_scanco_units_module()
    slicer_module_stubs.new_scene()
    path = write_isq(tmp_path / "d.isq", np.full((2, 3, 4), 9000, np.int16), voxel_size_mm=(0.06,) * 3,
                     calibration=CAL)
    nodes = module.ScancoUnitsLogic().loadScan(str(path), outputs=["density"])
    assert nodes["density"].GetVoxelValueUnits().GetCodeValue() == "g/cm3"
    monkeypatch.setattr(defaults, "DENSITY_UNIT", "mg HA/ccm")
    nodes = module.ScancoUnitsLogic().loadScan(str(path), outputs=["density"])
    assert nodes["density"].GetVoxelValueUnits().GetCodeValue() == "mg/cm3"


def _preview_on(node):
    return bool(node.GetDisplayNode().GetApplyThreshold())


@pytest.mark.filterwarnings("ignore:does not have observer")   # exit(): the harness never observed its node
def test_threshold_preview_is_off_by_default_and_never_left_behind(harness, scan, tmp_path):
    import xml.etree.ElementTree as ET

    ui_file = slicer_module_stubs.MODULE_FILE.parent / "Resources" / "UI" / "ScancoUnits.ui"
    box = next(w for w in ET.parse(ui_file).getroot().iter("widget") if w.get("name") == "previewMaskCheckBox")
    checked = [p.find("bool").text for p in box.findall("property") if p.get("name") == "checked"]
    assert checked in ([], ["false"])   # off by default
    widget, ui = harness.widget, harness.ui
    harness.type_path(str(scan["vms"]))
    widget.onApplyButton()
    first = widget._loadedNodes["hu"]
    assert not _preview_on(first)   # a fresh load shows every voxel
    ui.previewMaskCheckBox.checked = True   # the user asks for it
    widget._updateThresholdFeedback()
    assert _preview_on(first)
    ui.previewMaskCheckBox.checked = False
    widget._updateThresholdFeedback()
    assert not _preview_on(first)
    # asked for again, then a second load: the preview moves, the first node shows all its voxels again
    ui.previewMaskCheckBox.checked = True
    widget._updateThresholdFeedback()
    widget.onApplyButton()
    second = widget._loadedNodes["hu"]
    assert second is not first and _preview_on(second) and not _preview_on(first)
    # another file in the path field: the loaded node is not its scan any more
    harness.type_path(str(scan["odd_case"]))
    assert not _preview_on(second)
    harness.type_path(str(scan["vms"]))
    assert _preview_on(second)
    # leaving the module switches it off (nobody would see why only bone is shown); coming back, on again
    widget.exit()
    assert not _preview_on(second)
    widget._previewAllowed = True   # enter() without the parameter-node wiring of the harness
    widget._updateThresholdFeedback()
    assert _preview_on(second)
