"""ScancoUnits: SCANCO micro-CT files (.ISQ, .AIM) as calibrated volumes in 3D Slicer.

This file only marshals between Slicer (GUI, file reader and writer, self-test) and ScancoUnitsLib, where all
the work is done: ScancoUnitsLib.slicer.scene (loading nodes, export, reader options), .panel and .panel_choices
(what the panel shows, the options it builds, the parameter node's enums), .histogram_store and .histogram_chart
(the histogram), .mask_nodes, .mask_aim and .aim_file_writer (masks back to AIM), .progress_dialogs and
.user_actions (progress, Cancel, error dialogs), .module_text (help), .translation, .self_test (the self-test's
checks); ScancoUnitsLib.core and .pipeline below.
"""

import contextlib
import html
import logging
import os
from typing import Annotated

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Minimum, WithinRange, parameterNodeWrapper

from ScancoUnitsLib.slicer import (aim_file_writer, histogram_chart, mask_nodes, module_text, panel,
                                   progress_dialogs, region_segments, segment_statistics_plugin)
from ScancoUnitsLib.slicer.histogram_store import HistogramStore
from ScancoUnitsLib.slicer.node_attributes import LIBRARY_DEFAULTS_APPLIED
from ScancoUnitsLib.slicer.panel_choices import DensityUnit, LoadMode, ThresholdUnit, parameter_node_defaults
from ScancoUnitsLib.slicer.self_test import SelfTestChecks
from ScancoUnitsLib.slicer.user_actions import user_action

READER_FILE_TYPE = "ScancoUnitsFile"
WRITER_FILE_TYPE = "ScancoUnitsAimMaskFile"
#: node classes that can be saved as a SCANCO mask AIM (panel selector and file writer)
MASK_NODE_CLASSES = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode")


#
# ScancoUnits
#


class ScancoUnits(ScriptedLoadableModule):
    """Module metadata. See https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py"""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Scanco Units")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["ScancoUnits developers (ScancoUnits project)"]
        self.parent.helpText = module_text.help_text()
        self.parent.acknowledgementText = module_text.acknowledgement_text()
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """At startup: the SCANCO sample ISQ in Sample Data (this module's reader), vBMD/BV/TV/TMD in Segment Statistics."""
    segment_statistics_plugin.register()
    import SampleData

    # one source of truth for the sample file (also used by `scanco-units sample`)
    from ScancoUnitsLib.sample_data import SAMPLE_FILE_NAME, SAMPLE_SHA256, SAMPLE_URL

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="ScancoUnits",
        sampleName="C0004255",
        thumbnailFileName=os.path.join(iconsPath, "ScancoUnits.png"),
        uris=SAMPLE_URL,
        fileNames=SAMPLE_FILE_NAME,
        checksums=f"SHA256:{SAMPLE_SHA256}",
        nodeNames="C0004255",
        loadFileType=READER_FILE_TYPE,
    )


#
# Parameter node
#


def _densityUnitOrDefault(densityUnit):
    from ScancoUnitsLib import defaults

    return defaults.DENSITY_UNIT if densityUnit is None else densityUnit


@parameterNodeWrapper
class ScancoUnitsParameterNode:
    """The panel's settings, saved with the scene. Paths are plain strings (empty = not set)."""

    inputFilePath: str = ""
    # the library's defaults (ScancoUnitsLib.core.quantities); a new parameter node takes them again when it is
    # made (ScancoUnitsLogic.getParameterNode), so a changed library default moves the panel
    thresholdUnit: ThresholdUnit = parameter_node_defaults()["thresholdUnit"]
    lowerThreshold: float = parameter_node_defaults()["lowerThreshold"]
    upperThreshold: float = parameter_node_defaults()["upperThreshold"]
    createHU: bool = True
    createDensity: bool = True
    densityUnit: DensityUnit = parameter_node_defaults()["densityUnit"]
    createAttenuation: bool = False
    createNative: bool = False
    createMaskLabelmap: bool = True
    createMaskSegmentation: bool = True
    loadMode: LoadMode = LoadMode.full
    subsampleStep: Annotated[int, WithinRange(1, 64)] = 2
    regionXFirst: Annotated[int, Minimum(0)] = 0
    regionXLast: Annotated[int, Minimum(-1)] = -1
    regionYFirst: Annotated[int, Minimum(0)] = 0
    regionYLast: Annotated[int, Minimum(-1)] = -1
    regionZFirst: Annotated[int, Minimum(0)] = 0
    regionZLast: Annotated[int, Minimum(-1)] = -1
    exportEnabled: bool = False
    exportDirectory: str = ""


#
# ScancoUnitsWidget
#


class ScancoUnitsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: marshals between the .ui and ScancoUnitsLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._header = None
        self._headerError = ""
        self._headerPath = None  # the path self._header / self._headerError were read from
        self._busy = False  # a load, export, histogram or save runs: its buttons stay disabled
        self._observedMaskNode = None  # segmentation whose segment list the panel follows
        self._thresholdUnitShown = None
        self._updatingThresholds = False
        self._chart = None  # (chart node, table node, {role: series node}) of the histogram
        self._loadedNodes = {}
        self._previewNode = None  # the volume showing the threshold preview (only while asked for)
        self._previewAllowed = True  # False while the module is not shown

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ScancoUnits.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ScancoUnitsLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Paths are synchronised by hand (str in the parameter node, "" = not set), from the text of the
        # path's combo box: ctkPathLineEdit emits currentPathChanged only when its QRegularExpressionValidator
        # accepts the text (ctkPathLineEdit::updateHasValidInput), and that validator refuses an empty field
        # (pattern ".+") and, with nameFilters, names such as C0004255.ISQ;1. The .ui sets no nameFilters:
        # any name is let through and the file is judged by its content (scene.sniff_format, read_header).
        self.ui.inputFileSelector.comboBox().connect("editTextChanged(QString)", self.onInputPathChanged)
        self.ui.exportDirectorySelector.comboBox().connect("editTextChanged(QString)", self.onExportDirectoryChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showHistogramButton.connect("clicked(bool)", self.onShowHistogram)
        self.ui.maskNodeSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.maskNodeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onMaskNodeChanged)
        self.ui.saveMaskAsAimButton.connect("clicked(bool)", self.onSaveMaskAsAim)
        self.ui.regionsSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.computeRegionStatisticsButton.connect("clicked(bool)", self.onComputeRegionStatistics)
        self.ui.previewMaskCheckBox.connect("toggled(bool)", lambda checked: self._updateThresholdFeedback())
        self.ui.calibrationWarningLabel.visible = False

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self._previewAllowed = True
        self.initializeParameterNode()

    def exit(self) -> None:
        self._previewAllowed = False   # the checkbox is out of sight: no preview the user cannot see why
        self._clearPreview()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.releaseSceneReferences()

    def releaseSceneReferences(self) -> None:
        """Drop every reference the panel holds to nodes of the closing scene (Close Scene must free the
        volumes: the loaded nodes keep their image data alive, gigabytes for a large scan)."""
        self._loadedNodes = {}
        self._previewNode = None
        self._chart = None
        if self._observedMaskNode is not None:
            self.onMaskNodeChanged(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self._thresholdUnitShown = self._parameterNode.thresholdUnit
            self._readHeader(force=True)
        self.updateGUIFromParameterNode()

    # ---- parameter node <-> panel -------------------------------------------------------------------
    def onInputPathChanged(self, path) -> None:
        if self._parameterNode and self._parameterNode.inputFilePath != path:
            self._parameterNode.inputFilePath = path  # -> updateGUIFromParameterNode, which reads the header

    def onExportDirectoryChanged(self, path) -> None:
        if self._parameterNode and self._parameterNode.exportDirectory != path:
            self._parameterNode.exportDirectory = path

    def _readHeader(self, force=False) -> None:
        """Read the header of the parameter node's file when the path changed (or ``force``)."""
        path = self._parameterNode.inputFilePath if self._parameterNode else ""
        if path == self._headerPath and not force:
            return
        self._header, self._headerError, self._headerPath = None, "", path
        if not path:
            return
        try:
            self._header = self.logic.readHeader(path)
        except Exception as exc:  # shown in the panel, not as a popup
            self._headerError = str(exc)

    def _followThresholdUnit(self) -> None:
        """Keep the same mask when the unit changes: show the current thresholds in the new unit."""
        p = self._parameterNode
        oldUnit, newUnit = self._thresholdUnitShown, p.thresholdUnit
        if newUnit == oldUnit or self._updatingThresholds:
            return
        self._thresholdUnitShown = newUnit
        if self._header is None or oldUnit is None:
            return
        converted = self.logic.convertThresholds(self._header, p.lowerThreshold, p.upperThreshold,
                                                 oldUnit.value, newUnit.value)
        if converted is not None:
            self._updatingThresholds = True
            try:
                p.lowerThreshold, p.upperThreshold = converted
            finally:
                self._updatingThresholds = False

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self._readHeader()
        self._followThresholdUnit()
        if self.ui.inputFileSelector.currentPath != p.inputFilePath:
            self.ui.inputFileSelector.currentPath = p.inputFilePath
        if self.ui.exportDirectorySelector.currentPath != p.exportDirectory:
            self.ui.exportDirectorySelector.currentPath = p.exportDirectory

        header = self._header
        if header is None:
            self.ui.headerSummaryLabel.text = html.escape(self._headerError or _("No file selected."))
            self.ui.calibrationWarningLabel.visible = False
            self.ui.thresholdEquivalentsLabel.text = _("Select a file to see the thresholds in every unit.")
            self.ui.memoryEstimateLabel.text = "-"
        else:
            texts = panel.header_texts(header, self._thresholdSpec(), self._outputs(), self._sampling())
            self.ui.headerSummaryLabel.text = texts["summary"]
            self.ui.calibrationWarningLabel.text = texts["warning"]
            self.ui.calibrationWarningLabel.visible = bool(texts["warning"])
            self.ui.thresholdEquivalentsLabel.text = texts["equivalents"]
            self.ui.memoryEstimateLabel.text = texts["memory"]
            x, y, z = header.dimensions
            for spin, size in ((self.ui.regionXFirstSpinBox, x), (self.ui.regionYFirstSpinBox, y),
                               (self.ui.regionZFirstSpinBox, z), (self.ui.regionXLastSpinBox, x),
                               (self.ui.regionYLastSpinBox, y), (self.ui.regionZLastSpinBox, z)):
                spin.maximum = size - 1
        available = panel.calibrated_outputs(header)
        self.ui.createHUCheckBox.enabled = available["hu"]
        self.ui.createDensityCheckBox.enabled = available["density"]
        self.ui.densityUnitComboBox.enabled = self.ui.createDensityCheckBox.enabled
        self.ui.createAttenuationCheckBox.enabled = available["mu"]
        self.ui.subsampleStepSpinBox.enabled = p.loadMode == LoadMode.subsample
        self.ui.regionWidget.enabled = p.loadMode == LoadMode.region
        self.ui.exportDirectorySelector.enabled = p.exportEnabled

        canApply = panel.can_apply(header, self._outputs(), p.exportEnabled, p.exportDirectory)
        self.ui.applyButton.enabled = canApply and not self._busy
        self.ui.showHistogramButton.enabled = header is not None and not self._busy
        self._updateSaveMaskGui()
        self._updateThresholdFeedback()
        self.ui.applyButton.toolTip = (_("Read the file and create the selected outputs.") if canApply else
                                       _("Select a readable SCANCO file, at least one output and, for the export, "
                                         "a folder."))

    def _thresholdSpec(self):
        p = self._parameterNode
        return panel.threshold_spec(p.lowerThreshold, p.upperThreshold, p.thresholdUnit.value)

    def _outputs(self):
        """The roles to load: asked for in the parameter node, and offered by the panel (a calibrated output's
        box is disabled when the file cannot give it)."""
        p = self._parameterNode
        wanted = {"hu": p.createHU, "density": p.createDensity, "mu": p.createAttenuation, "native": p.createNative,
                  "mask_labelmap": p.createMaskLabelmap, "mask_segmentation": p.createMaskSegmentation}
        enabled = {"hu": self.ui.createHUCheckBox.enabled, "density": self.ui.createDensityCheckBox.enabled,
                   "mu": self.ui.createAttenuationCheckBox.enabled}
        return panel.selected_roles(wanted, enabled)

    def _sampling(self):
        p = self._parameterNode
        return panel.sampling_options(p.loadMode.value, p.subsampleStep,
                                      ((p.regionZFirst, p.regionZLast), (p.regionYFirst, p.regionYLast),
                                       (p.regionXFirst, p.regionXLast)))

    # ---- long tasks: modal progress, buttons disabled ----------------------------------------------
    @contextlib.contextmanager
    def _busyWithProgress(self, labelText):
        """Run a long task behind an application-modal progress dialog with Cancel (progress_dialogs.modal_progress),
        the panel's action buttons disabled until it ends. Yields ``(onProgress(fraction, text=None),
        cancelled() -> bool)`` for the Logic."""
        self._busy = True
        for button in (self.ui.applyButton, self.ui.showHistogramButton, self.ui.saveMaskAsAimButton):
            button.enabled = False
        try:
            with progress_dialogs.modal_progress(labelText) as callbacks:
                yield callbacks
        finally:
            self._busy = False
            self.updateGUIFromParameterNode()

    # ---- Apply -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        with user_action(_("Failed to read the SCANCO file.")):
            self._apply()

    def _apply(self) -> None:
        p = self._parameterNode
        if self._busy or self._header is None:
            return
        exportDirectory = p.exportDirectory if p.exportEnabled else None
        options = dict(outputs=self._outputs(), thresholds=self._thresholdSpec(),
                       densityUnit=p.densityUnit.value, **self._logicSampling())
        # before anything is asked or read: the request is valid and the nodes fit in memory
        self.logic.checkLoad(self._header, **options)
        if exportDirectory:
            existing = self.logic.existingExportFiles(p.inputFilePath, exportDirectory, header=self._header,
                                                      **options)
            if existing and not slicer.util.confirmOkCancelDisplay(
                    _("These files exist already and will be replaced:") + "\n" + "\n".join(existing)):
                return
        labelText = _("Reading {name}...").format(name=os.path.basename(p.inputFilePath))
        with self._busyWithProgress(labelText) as (onProgress, cancelled):
            try:
                nodes, files = self.logic.process(p.inputFilePath, exportDirectory=exportDirectory,
                                                  progressCallback=onProgress, cancel=cancelled,
                                                  overwrite=True, header=self._header, **options)
            except self.logic.lib.ConversionCancelled:
                slicer.util.showStatusMessage(_("Cancelled: nothing was added or written."), 5000)
                return
        # the file (and folder) were used: remember them in the path fields' history (settingKey in the .ui)
        self.ui.inputFileSelector.addCurrentPathToHistory()
        if exportDirectory:
            self.ui.exportDirectorySelector.addCurrentPathToHistory()
        self.logic.showNodes(nodes)
        self._loadedNodes = dict(nodes)
        maskNode = nodes.get("mask_segmentation") or nodes.get("mask_labelmap")
        if maskNode is not None:
            self.ui.maskNodeSelector.setCurrentNode(maskNode)
        self._updateThresholdFeedback()
        message = _("Created {count} node(s)").format(count=len(nodes))
        if files:
            message += _(" and wrote {count} file(s) in {folder}").format(count=len(files), folder=exportDirectory)
        slicer.util.showStatusMessage(message, 5000)

    # ---- histogram and live mask preview -------------------------------------------------------------
    def _resolvedThresholds(self):
        header = self._header
        if not panel.takes_thresholds(header):
            return None
        try:
            return self.logic.resolveThresholds(header, *self._thresholdSpec())
        except ValueError:  # e.g. HU thresholds on an uncalibrated file: nothing to draw
            return None

    def onShowHistogram(self) -> None:
        """Show the histogram: from the Logic's store when the file's voxels were already seen, else read once
        behind the modal progress dialog (Cancel stops it); never a silent second read."""
        with user_action(_("Failed to show the histogram.")):
            self._showHistogram()

    def _showHistogram(self) -> None:
        header = self._header
        if header is None or self._busy:
            return
        histogram = self.logic.knownHistogram(header)
        if histogram is None:
            labelText = _("Histogram of {name}...").format(name=os.path.basename(header.path))
            with self._busyWithProgress(labelText) as (onProgress, cancelled):
                try:
                    histogram = self.logic.histogramOf(header, progressCallback=onProgress, cancel=cancelled)
                except self.logic.lib.ConversionCancelled:
                    slicer.util.showStatusMessage(_("Histogram cancelled."), 5000)
                    return
        self._removeChart()
        self._chart = self.logic.showHistogram(header, self._resolvedThresholds(), histogram=histogram)

    # ---- save mask as AIM ----------------------------------------------------------------------------
    _SEGMENT_EVENTS = ("SegmentAdded", "SegmentRemoved", "SegmentModified")

    def onMaskNodeChanged(self, node) -> None:
        """Follow the selected segmentation's segment list (Segment Editor adds, renames, removes segments)."""
        if self._observedMaskNode is not None:
            for event in self._SEGMENT_EVENTS:
                self.removeObserver(self._observedMaskNode, getattr(slicer.vtkSegmentation, event),
                                    self._onMaskSegmentsChanged)
            self._observedMaskNode = None
        if node is not None and node.IsA("vtkMRMLSegmentationNode"):
            for event in self._SEGMENT_EVENTS:
                self.addObserver(node, getattr(slicer.vtkSegmentation, event), self._onMaskSegmentsChanged)
            self._observedMaskNode = node
        self._updateSaveMaskGui()

    def _onMaskSegmentsChanged(self, caller=None, event=None) -> None:
        self._updateSaveMaskGui()

    def _updateSaveMaskGui(self) -> None:
        """Fill the segment choice for the selected mask node; enable the button when there is a mask."""
        node = self.ui.maskNodeSelector.currentNode()
        combo = self.ui.maskSegmentComboBox
        wasBlocking = combo.blockSignals(True)
        try:
            previous = combo.currentData
            combo.clear()
            for segmentId, name in self.logic.maskSegments(node):
                combo.addItem(name, segmentId)
            index = combo.findData(previous) if previous is not None else -1
            combo.setCurrentIndex(max(index, 0) if combo.count else -1)
        finally:
            combo.blockSignals(wasBlocking)
        isSegmentation = node is not None and node.IsA("vtkMRMLSegmentationNode")
        combo.enabled = isSegmentation and combo.count > 1
        self.ui.saveMaskAsAimButton.enabled = (node is not None and not self._busy
                                               and (not isSegmentation or combo.count > 0))

    def onSaveMaskAsAim(self) -> None:
        with user_action(_("Failed to save the mask as AIM.")):
            self._saveMaskAsAim()

    def _saveMaskAsAim(self) -> None:
        import qt

        node = self.ui.maskNodeSelector.currentNode()
        if node is None or self._busy:
            return
        segmentId = self.ui.maskSegmentComboBox.currentData if node.IsA("vtkMRMLSegmentationNode") else None
        suggested = self.logic.suggestedMaskAimPath(node, segmentId)
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save mask as SCANCO AIM"), suggested,
                                              _("SCANCO AIM (*.aim *.AIM);;All files (*)"))
        if not path:
            return
        # QFileDialog.getSaveFileName asked before returning an existing file (Qt's default, no
        # DontConfirmOverwrite): the user confirmed, so the file is replaced
        written = self.logic.saveMaskAsAim(node, path, segmentId=segmentId, overwrite=True)
        slicer.util.showStatusMessage(_("Saved {path}").format(path=str(written)), 5000)

    def onComputeRegionStatistics(self) -> None:  # the rows are made in the library; here only the table is filled
        with user_action(_("Failed to compute the region statistics.")):
            region_segments.compute_for_panel(self.ui.regionsSelector.currentNode(), self._thresholdSpec(), self.ui.regionsTable)

    def _removeChart(self) -> None:
        if self._chart is None:
            return
        histogram_chart.remove_histogram_chart(slicer.mrmlScene, self._chart)
        self._chart = None

    def _updateThresholdFeedback(self) -> None:
        """Move the histogram's threshold lines and the mask preview to the thresholds of the panel.

        The preview (display threshold of the loaded HU or density volume) is off by default and is only
        ever on the node the panel loaded last, while "Preview the mask" is checked and the panel is
        shown: unchecking, a new load, leaving the module or closing the scene switch it off again, so
        it is never left (and saved with the scene) on a node the user did not ask it for."""
        resolved = self._resolvedThresholds()
        if resolved is not None and self._chart is not None and slicer.mrmlScene.IsNodePresent(self._chart[1]):
            histogram_chart.update_threshold_lines(self._chart[1], resolved, series_nodes=self._chart[2])
        target = None
        if resolved is not None and self.ui.previewMaskCheckBox.checked and self._previewAllowed:
            target = panel.preview_target(slicer.mrmlScene, self._loadedNodes, self._header)
        if self._previewNode is not None and self._previewNode is not target:
            self._clearPreview()
        if target is not None:
            histogram_chart.preview_mask_on_scan_node(target, resolved, self._header.calibration)
            self._previewNode = target

    def _clearPreview(self) -> None:
        node, self._previewNode = self._previewNode, None
        if node is not None and node.GetScene() is not None:
            histogram_chart.clear_threshold_preview(node)

    def _logicSampling(self):
        return panel.logic_sampling_options(self._sampling())


#
# ScancoUnitsLogic
#


class ScancoUnitsLogic(ScriptedLoadableModuleLogic):
    """Scriptable entry points (Python console, batch). GUI-free: no dialogs; errors are raised.

    Example::

        logic = slicer.util.getModuleLogic("ScancoUnits")   # or ScancoUnits.ScancoUnitsLogic()
        nodes = logic.loadScan("/data/C0004255.ISQ", thresholds=(250, 1000, "permille"))
        nodes["density"], nodes["mask_segmentation"]
    """

    #: z slices read at a time when the histogram has to be read from the file; None: the engine's slab
    #: (ScancoUnitsLib.pipeline.engine.slab_slices_for, about 1 Mi voxels: 2 MB of int16 even for 4k x 4k slices)
    HISTOGRAM_SLAB_SLICES = None

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._histograms = HistogramStore()  # the NativeHistogram of every voxel of each file seen

    @property
    def lib(self):
        """ScancoUnitsLib.slicer.scene (imported on first use)."""
        from ScancoUnitsLib.slicer import scene

        return scene

    #: attribute of the parameter node once it holds the library's defaults (a saved scene keeps its values)
    DEFAULTS_ATTRIBUTE = LIBRARY_DEFAULTS_APPLIED

    def getParameterNode(self):
        node = super().getParameterNode()
        wrapper = ScancoUnitsParameterNode(node)
        if node is not None and not node.GetAttribute(self.DEFAULTS_ATTRIBUTE):
            for name, value in parameter_node_defaults().items():
                setattr(wrapper, name, value)
            node.SetAttribute(self.DEFAULTS_ATTRIBUTE, "1")
        return wrapper

    def readHeader(self, path):
        from ScancoUnitsLib.formats.reader import read_header

        return read_header(path)

    def convertThresholds(self, header, low, high, fromUnit, toUnit):
        """(low, high) of the same native mask in ``toUnit`` (a ScancoUnitsLib threshold unit), or None
        when the calibration cannot express it."""
        return panel.convert_thresholds(header, low, high, fromUnit, toUnit)

    def resolveThresholds(self, header, low, high, unit):
        """ResolvedThresholds (native integers and every unit) for the panel's thresholds."""
        return panel.resolve_panel_thresholds(header, low, high, unit)

    # ---- histogram: one store, filled by the load pass or by one read with progress and cancel ----------
    def recordHistogram(self, path, histogram) -> None:
        """Keep the native histogram of every voxel of ``path`` (a ScancoUnitsLib.pipeline.histogram.NativeHistogram),
        e.g. accumulated by the pass that loaded the nodes, so that Show histogram does not read the file again."""
        self._histograms.record(path, histogram)

    def knownHistogram(self, header):
        """The stored histogram of ``header``'s file, or None when its voxels have not been seen yet."""
        return self._histograms.known(header)

    def histogramOf(self, header, progressCallback=None, cancel=None):
        """Native histogram of every voxel of ``header``'s file (NativeHistogram).

        From the store when known (:meth:`recordHistogram`); otherwise the file is read once, slab by slab,
        with ``progressCallback(fraction, text)`` after each slab and ``cancel() -> True`` stopping it (raises
        ScancoUnitsLib.slicer.scene.ConversionCancelled), and the result is stored for the next call.
        """
        def onSlices(done, total):
            if progressCallback is not None:
                progressCallback(done / total, _("Histogram: {done} of {total} slices").format(done=done, total=total))

        return self._histograms.histogram_of(header, onSlices, cancel, self.HISTOGRAM_SLAB_SLICES)

    def showHistogram(self, header, resolved=None, histogram=None):
        """Build the histogram chart (HU axis when calibrated) and show it in the layout.

        ``histogram``: a NativeHistogram of the file; None takes :meth:`histogramOf` (reads the file when the
        store does not know it). Returns ``(chart node, table node, {role: series node})``.
        """
        if histogram is None:
            histogram = self.histogramOf(header)
        chart = histogram_chart.histogram_chart_for_scan(slicer.mrmlScene, header, histogram, resolved)
        plots = getattr(getattr(slicer, "modules", None), "plots", None)
        if plots is not None:  # headless (slicer-core) has no Plots module to show it with
            plots.logic().ShowChartInLayout(chart[0])
        return chart

    # ---- masks back to the scanner ---------------------------------------------------------------------
    @staticmethod
    def maskSegments(node):
        """``[(segment ID, name)]`` of a segmentation node; ``[]`` for anything else (None, a labelmap)."""
        return mask_nodes.mask_segments(node)

    @staticmethod
    def suggestedMaskAimPath(node, segmentId=None):
        """A file name for the AIM of ``node``: ``<source scan stem>_MASK.AIM`` next to the source scan when
        the node came from a loaded scan, else the node name."""
        return mask_nodes.suggested_mask_aim_path(node)

    def saveMaskAsAim(self, node, path, segmentId=None, source=None, overwrite=False):
        """Save a labelmap volume node, or one segment of a segmentation node (``segmentId``; None: its only
        segment), as a SCANCO char AIM on the grid of its source scan; returns the written path.

        ``overwrite``: replace an existing file (atomically: the new file is renamed over it when complete);
        pass it only after the user confirmed. The source scan itself is never replaced.

        Calls ScancoUnitsLib.save_mask_as_aim (``source``: the scan's path when the node does not record
        it); a grid that is not the scan's (rotated, resampled, half-voxel shift) is refused with a
        ScancoError naming the problem. Nothing is written on failure.
        """
        if node is None or not any(node.IsA(c) for c in MASK_NODE_CLASSES):
            raise ValueError(_("Select a labelmap volume or a segmentation to save as AIM."))
        try:
            from ScancoUnitsLib.slicer.mask_aim import save_mask_as_aim
        except ImportError as exc:
            raise RuntimeError(_("This ScancoUnitsLib cannot write masks as AIM (no mask_aim module): "
                                 "update the extension.")) from exc
        return save_mask_as_aim(node, path, source=source, segment_id=segmentId, overwrite=bool(overwrite))

    def loadScan(self, path, outputs=None, thresholds=None, densityUnit=None, subsampleStep=1, region=None,
                 progressCallback=None, cancel=None, name=None, huDtype="int16", warn=None, scene=None):
        """Create the nodes of ``path``; returns ``{role: node}``. See ScancoUnitsLib.slicer.scene.load_scan_into_scene."""
        return self.lib.load_scan_into_scene(
            scene or slicer.mrmlScene, path, outputs=outputs, thresholds=thresholds,
            density_unit=_densityUnitOrDefault(densityUnit),
            hu_dtype=huDtype, subsample_step=subsampleStep, region=region, name=name, progress=progressCallback,
            cancel=cancel, warn=warn)

    def exportScan(self, path, outputDirectory, outputs=None, thresholds=None, densityUnit=None,
                   huDtype="int16", compress=True, overwrite=False, progressCallback=None, cancel=None):
        """Write the outputs of ``path`` as NRRD files at full resolution (streamed); returns ``{role: path}``."""
        return self.lib.export_scan(path, outputDirectory, outputs, thresholds=thresholds,
                                    density_unit=_densityUnitOrDefault(densityUnit),
                                    hu_dtype=huDtype, compress=compress, overwrite=overwrite,
                                    progress=progressCallback, cancel=cancel)

    def checkLoad(self, header, outputs=None, thresholds=None, densityUnit=None, subsampleStep=1, region=None,
                  huDtype="int16", **_ignored):
        """Raise (one line naming the file) when a load of ``header``'s file with these options would be
        refused: an output the calibration cannot give, or nodes that do not fit in the memory available
        (ScancoUnitsLib.slicer.memory_fit.InsufficientMemoryError, with the figures and the ways out)."""
        return self.lib.check_load(header, outputs, thresholds=thresholds,
                                   density_unit=_densityUnitOrDefault(densityUnit), subsample_step=subsampleStep,
                                   region=region, hu_dtype=huDtype)

    def existingExportFiles(self, path, outputDirectory, outputs=None, thresholds=None, densityUnit=None,
                            header=None, **_ignored):
        """Planned export files that exist already (``header``: the one read for this action, reused)."""
        return self.lib.existing_export_files(path, outputDirectory, outputs, thresholds=thresholds,
                                              density_unit=_densityUnitOrDefault(densityUnit), header=header)

    def process(self, path, outputs=None, thresholds=None, densityUnit=None, subsampleStep=1, region=None,
                exportDirectory=None, progressCallback=None, cancel=None, overwrite=False, huDtype="int16",
                header=None):
        """Load into the scene and, when ``exportDirectory`` is given, export at full resolution, in ONE pass
        over the file (ScancoUnitsLib.slicer.scene.load_scan with export_dir). The pass also records the file's
        native histogram for "Show histogram" (no second read).

        Returns ``(nodes, files)``. ``progressCallback(fraction, text)``; ``cancel()`` -> True stops (raises
        ScancoUnitsLib.slicer.scene.ConversionCancelled; nodes created by this call are removed, no file is left).
        """
        text = _("Loading and writing files...") if exportDirectory else _("Loading into the scene...")

        def onProgress(fraction):
            if progressCallback:
                progressCallback(fraction, text)

        result = self.lib.load_scan(
            slicer.mrmlScene, path, outputs=outputs, thresholds=thresholds,
            density_unit=_densityUnitOrDefault(densityUnit),
            hu_dtype=huDtype, subsample_step=subsampleStep, region=region, progress=onProgress, cancel=cancel,
            header=header, export_dir=exportDirectory, overwrite=overwrite, histogram=True)
        if result.histogram is not None:
            self.recordHistogram(path, result.histogram)
        files = dict(result.exported.outputs) if result.exported is not None else {}
        return result.nodes, files

    def showNodes(self, nodes):
        """Show the first calibrated volume as background and the labelmap as label layer (GUI only)."""
        if not hasattr(slicer, "app") or slicer.app is None or slicer.app.layoutManager() is None:
            return
        background, label = panel.layers_to_show(nodes)  # no label over a segmentation's outline
        slicer.util.setSliceViewerLayers(background=background, label=label, fit=True)


class ScancoUnitsFileReader:
    """Drag-and-drop / Add Data reader for SCANCO ISQ and AIM (v020, v030) files, recognised by content.

    A drop loads one volume, fast: HU (native values for an uncalibrated file, a labelmap for a SCANCO char
    mask), no threshold mask: the mask needs thresholds chosen in the panel (the default 250-1000 per mille
    is empty on XtremeCT II data, mu_scaling 8192). A GOBJ or char mask AIM that fits a loaded scan becomes a
    segment on its grid (ScancoUnitsLib.slicer.region_segments). Add Data shows no options for this reader:
    qSlicerScriptedFileReader forwards only description, fileType, extensions, canLoadFile(Confidence) and
    load to Python. Scripting asks for more: ``slicer.util.loadNodeFromFile(path, "ScancoUnitsFile",
    {"units": "hu density", "thresholds": "250 1000 permille", "mask": "both"})``; see
    ScancoUnitsLib.slicer.scene.reader_options_from_properties for every key.
    """

    def __init__(self, parent):
        self.parent = parent

    def description(self):
        return _("SCANCO micro-CT image (ScancoUnits)")

    def fileType(self):
        return READER_FILE_TYPE

    def extensions(self):
        return ["SCANCO micro-CT image or region (*.isq *.aim *.gobj *.isq;* *.aim;* *.gobj;*)"]

    def canLoadFileConfidence(self, filePath):
        # The name first (.isq/.aim/.gobj, extensionless), then the magic; 0.8 beats the core Volumes reader's 0.5
        # (ScancoUnitsLib.slicer.region_segments.reader_confidence and scene.file_reader_confidence say why).
        return region_segments.reader_confidence(filePath)

    def canLoadFile(self, filePath):
        return self.canLoadFileConfidence(filePath) > 0.55

    def load(self, properties):
        filePath = properties.get("fileName", "")
        messages = self.parent.userMessages()

        def warn(text):
            logging.warning(text)
            messages.AddMessage(vtk.vtkCommand.WarningEvent, text)

        lib = None
        try:
            from ScancoUnitsLib.slicer import scene as lib
            from ScancoUnitsLib.formats.reader import read_header

            nodes = region_segments.load_dropped_region(slicer.mrmlScene, filePath, warn=warn)
            if nodes is None:
                header = read_header(filePath)
                options = lib.reader_options_from_properties(properties, header)
                uncalibrated = lib.drop_calibration_problem(header, options)
                if uncalibrated:
                    warn(_("{name}: {problem} Loaded as native values.").format(
                        name=os.path.basename(filePath), problem=uncalibrated))
                with progress_dialogs.reader_progress(filePath) as (onProgress, cancelled):
                    nodes = lib.load_scan_into_scene(slicer.mrmlScene, filePath, header=header, warn=warn,
                                                     progress=onProgress, cancel=cancelled, **options)
        except Exception as exc:
            if lib is not None and isinstance(exc, lib.ConversionCancelled):   # the user's Cancel
                logging.info(f"ScancoUnits: loading {filePath} cancelled")
                messages.AddMessage(vtk.vtkCommand.WarningEvent, _(
                    "Loading {path} was cancelled: nothing was added.").format(path=filePath))
                return False
            logging.error(f"ScancoUnits: failed to load {filePath}: {exc}")
            messages.AddMessage(vtk.vtkCommand.ErrorEvent, _("Failed to load {path}: {error}").format(
                path=filePath, error=exc))
            return False
        self.parent.loadedNodes = [node.GetID() for node in nodes.values()]
        if properties.get("show", True) and "region_segmentation" not in nodes:   # a segment shows itself
            try:
                ScancoUnitsLogic().showNodes(nodes)
            except Exception as exc:  # display is a convenience; the data are loaded
                logging.debug(f"ScancoUnits: could not show the loaded nodes: {exc}")
        return True


#
# ScancoUnitsFileWriter
#


class ScancoUnitsFileWriter:
    """"SCANCO AIM" in Export to file... (and Save Data) for labelmap volumes and segmentations.

    Registered by Slicer for every scripted module (qSlicerScriptedLoadableModule::registerIO looks up the
    class ``<module name>FileWriter`` in the module file). Writes a char AIM through
    ScancoUnitsLogic.saveMaskAsAim; a segmentation with several segments is refused (one AIM holds one
    mask): use the panel's Save mask as AIM to choose the segment.

    Export to file writes a copy of the node in a temporary scene (qSlicerCoreIOManager::exportNodes) and
    ``write`` only gets its ``nodeID``; Python cannot reach the writer's scene (qSlicerIO::mrmlScene is not
    scriptable). The IO manager asks ``extensions(node)`` with that very node just before ``write``
    (qSlicerCoreIOManagerPrivate::writers), so the node seen there is used when its ID matches.
    """

    #: below the 0.5 of Slicer's own writers: NRRD / seg.nrrd stay the default, AIM is offered
    CONFIDENCE = 0.3

    def __init__(self, parent):
        self.parent = parent
        self._lastObject = None
        self._sceneObservation = None
        scene = getattr(slicer, "mrmlScene", None)
        if scene is not None:   # Close Scene releases the remembered node (and its voxels)
            self._sceneObservation = (scene, scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                               self._onSceneStartClose))

    def _onSceneStartClose(self, caller=None, event=None):
        self._lastObject = None

    def description(self):
        return _("SCANCO AIM mask (ScancoUnits)")

    def fileType(self):
        return WRITER_FILE_TYPE

    def extensions(self, obj):
        # Only a node of another scene (Export to file's temporary copy) is remembered, until write() has
        # run: a node of the main scene is found by its ID, and holding it (Save Data lists every node's
        # formats) would keep its voxels alive after Close Scene.
        if obj is not None and hasattr(obj, "GetScene") and obj.GetScene() is not slicer.mrmlScene:
            self._lastObject = obj
        return ["SCANCO AIM (.aim)"]

    def canWriteObject(self, obj):
        """A labelmap or segmentation that records its SCANCO scan (ScancoUnits.SourcePath, set by the load and
        kept by Export to file's copy, vtkMRMLNode::CopyContent): only those have a grid an AIM can carry."""
        return bool(obj is not None and hasattr(obj, "IsA") and any(obj.IsA(c) for c in MASK_NODE_CLASSES)
                    and mask_nodes.records_scanco_source(obj))

    def canWriteObjectConfidence(self, obj):
        return float(self.CONFIDENCE) if self.canWriteObject(obj) else 0.0

    def _node(self, nodeID):
        last = self._lastObject
        if last is not None and nodeID and last.GetID() == nodeID:
            return last
        return slicer.mrmlScene.GetNodeByID(nodeID) if nodeID else None

    def write(self, properties):
        filePath = properties.get("fileName", "")
        nodeID = properties.get("nodeID", "")
        try:
            node = self._node(nodeID)
            segmentId = aim_file_writer.segment_to_write(node, nodeID, slicer.mrmlScene)
            # Save Data and Export to file ask before replacing a file (qSlicerSaveDataDialog::confirmOverwrite,
            # qSlicerExportNodeDialog "File Exists"), and Slicer's own writers replace: so does this one
            ScancoUnitsLogic().saveMaskAsAim(node, filePath, segmentId=segmentId, overwrite=True)
        except Exception as exc:
            logging.error(f"ScancoUnits: failed to write {filePath}: {exc}")
            self.parent.userMessages().AddMessage(vtk.vtkCommand.ErrorEvent, _(
                "Failed to save {path} as SCANCO AIM: {error}").format(path=filePath, error=exc))
            return False
        finally:
            self._lastObject = None
        self.parent.writtenNodes = [nodeID]
        return True


#
# ScancoUnitsTest
#


class ScancoUnitsTest(SelfTestChecks, ScriptedLoadableModuleTest):
    """Self-test on small ISQ/AIM files written by ScancoUnitsLib (no download).

    ``runTest`` (Reload and Test, SelfTests) and ctest (the test_* methods) run the same checks: those of
    ScancoUnitsLib.slicer.self_test.SelfTestChecks, on this file's Logic, file reader and file types.
    """

    logicClass = ScancoUnitsLogic
    readerClass = ScancoUnitsFileReader
    readerFileType = READER_FILE_TYPE
    writerFileType = WRITER_FILE_TYPE
