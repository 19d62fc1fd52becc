"""The Slicer module's Logic, file reader and file writer (issue 15), headless with slicer-core and the
stand-ins of Testing/support/slicer_module_stubs.py (real MRML nodes; no Qt, so the panel itself is not run here).

* drop behaviour: a dropped file gives one volume and no mask (scene.reader_options_from_properties);
* the empty-mask segmentation: a named, empty segment (no leaked image copy);
* the histogram store behind ScancoUnitsLogic.histogramOf: one read with progress and cancel, then reuse;
* "Save mask as AIM": ScancoUnitsLogic.saveMaskAsAim and ScancoUnitsFileWriter call
  ScancoUnitsLib.slicer.mask_aim.save_mask_as_aim with the right node (a recording stand-in replaces the library
  function, which another change provides; a round trip through the real one runs when it is present).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from ScancoUnitsLib import Calibration, read_header, write_isq  # noqa: E402
from ScancoUnitsLib.slicer import scene as lib  # noqa: E402
from ScancoUnitsLib.pipeline.histogram import histogram_of_file  # noqa: E402
from ScancoUnitsLib.core.thresholds import ThresholdSpec, resolve_thresholds  # noqa: E402

TESTING = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(TESTING))
import slicer_module_stubs  # noqa: E402

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")
SIZE_MM = (0.0607, 0.0607, 0.0607)


@pytest.fixture
def module():
    module = slicer_module_stubs.load_scanco_units_module()
    slicer_module_stubs.new_scene()
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("module_files")
    rng = np.random.default_rng(15)
    volume = rng.integers(-500, 20000, size=(20, 9, 8)).astype(np.int16)
    low = rng.integers(100, 7900, size=(6, 7, 8)).astype(np.int16)   # XtremeCT II-like: below 250 per mille
    return {
        "volume": volume,
        "isq": write_isq(folder / "C0001234.ISQ", volume, voxel_size_mm=SIZE_MM, calibration=CAL),
        "low_isq": write_isq(folder / "LOW.ISQ;1", low, voxel_size_mm=SIZE_MM, calibration=CAL),
        "native_isq": write_isq(folder / "native.isq", volume, voxel_size_mm=SIZE_MM,
                                calibration=Calibration(mu_scaling=8192)),
    }


def _segment_voxels(segmentation_node, segment_id):
    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    scalars = labelmap.GetPointData().GetScalars()
    if scalars is None:
        return 0
    from vtk.util import numpy_support

    return int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars)))


# ---------------------------------------------------------------------------------------------------
# item 6: an empty mask gives a named empty segment
# ---------------------------------------------------------------------------------------------------
def test_empty_mask_load_gives_a_named_empty_segment(files):
    scene = slicer.vtkMRMLScene()
    nodes = lib.load_scan_into_scene(scene, files["low_isq"], outputs=["hu", "mask_labelmap", "mask_segmentation"])
    labelmap = slicer.util.arrayFromVolume(nodes["mask_labelmap"])
    assert labelmap.max() == 0   # 250 per mille = native 8192 is above every voxel
    segmentation = nodes["mask_segmentation"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "Bone 250-1000 per mille"
    assert segment.GetColor() == pytest.approx(lib.MASK_COLOR_RGB)
    assert _segment_voxels(nodes["mask_segmentation"], segmentation.GetNthSegmentID(0)) == 0
    assert nodes["mask_segmentation"].GetAttribute("ScancoUnits.SegmentName") == "Bone 250-1000 per mille"
    # the segment has its own voxels (issue 21): never the labelmap node's buffer
    representation = segment.GetRepresentation(
        slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    assert representation.GetScalarType() == vtk.VTK_UNSIGNED_CHAR
    from vtk.util import numpy_support

    own = numpy_support.vtk_to_numpy(representation.GetPointData().GetScalars())
    assert not np.shares_memory(own, labelmap)


def test_empty_mask_of_a_real_xtremect2_scan(real_data):
    """CALLUS_1237.AIM: XtremeCT II, native 112..7875, so the default thresholds give an empty mask."""
    scene = slicer.vtkMRMLScene()
    nodes = lib.load_scan_into_scene(scene, real_data / "CALLUS_1237.AIM", outputs=["mask_segmentation"])
    segmentation = nodes["mask_segmentation"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "Bone 250-1000 per mille"
    assert _segment_voxels(nodes["mask_segmentation"], segmentation.GetNthSegmentID(0)) == 0


# ---------------------------------------------------------------------------------------------------
# item 5: what a drop gives
# ---------------------------------------------------------------------------------------------------
def test_drop_gives_one_volume_and_no_mask(files, real_data):
    """A drop (no properties) loads one volume and no mask, whatever the data: the mask needs thresholds the
    user has not chosen yet."""
    cases = {files["isq"]: ("hu",), files["native_isq"]: ("native",),
             real_data / "CALLUS_1237.AIM": ("hu",), real_data / "TRAB_1240_SEG.AIM": ("mask_labelmap",),
             real_data / "DB_07_DNN_DR_T1_TRAB_MASK.AIM": ("mask_labelmap",)}
    for path, outputs in cases.items():
        options = lib.reader_options_from_properties({}, read_header(path))
        assert options == {"outputs": outputs}, path
    # scripted properties still ask for more
    options = lib.reader_options_from_properties({"units": "hu density", "mask": "both"}, read_header(files["isq"]))
    assert options["outputs"] == ("hu", "density", "mask_labelmap", "mask_segmentation")


def test_reader_drop_loads_hu_only(module, real_data):
    parent = slicer_module_stubs.ReaderParent()
    reader = module.ScancoUnitsFileReader(parent)
    path = real_data / "CALLUS_1237.AIM"
    assert reader.canLoadFile(str(path))
    assert reader.load({"fileName": str(path)})
    nodes = [slicer.mrmlScene.GetNodeByID(i) for i in parent.loadedNodes]
    assert [n.GetAttribute("ScancoUnits.Quantity") for n in nodes] == ["hu"]
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert parent.messages() == []


def test_help_text_and_readme_describe_the_same_drop(module, monkeypatch):
    class Parent:
        pass

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(connect=lambda *a: None), raising=False)
    parent = Parent()
    module.ScancoUnits(parent)
    help_text = " ".join(parent.helpText.split())
    assert "Drag and drop" in help_text and "one volume" in help_text and "No mask" in help_text
    readme = (TESTING.parents[1] / "README.md").read_text(encoding="utf-8")
    drop = readme[readme.index("**Drag and drop.**"):readme.index("**The panel.**")]
    drop = " ".join(drop.split())
    assert "one volume" in drop and "no mask" in drop.lower()
    assert "segmentation" not in drop.split("no mask")[0].lower()   # nothing promises a mask on drop
    reader_doc = " ".join(module.ScancoUnitsFileReader.__doc__.split())
    assert "one volume" in reader_doc and "no threshold mask" in reader_doc


# ---------------------------------------------------------------------------------------------------
# item 7: the histogram, read once with progress and cancel, behind ScancoUnitsLogic.histogramOf
# ---------------------------------------------------------------------------------------------------
def test_histogram_read_once_with_progress_then_reused(module, files, monkeypatch):
    logic = module.ScancoUnitsLogic()
    logic.HISTOGRAM_SLAB_SLICES = 4
    header = read_header(files["isq"])
    assert logic.knownHistogram(header) is None
    seen = []
    histogram = logic.histogramOf(header, progressCallback=lambda fraction, text: seen.append((fraction, text)),
                                  cancel=lambda: False)
    assert [f for f, _ in seen] == [4 / 20, 8 / 20, 12 / 20, 16 / 20, 1.0]
    assert "20" in seen[-1][1]
    reference = histogram_of_file(files["isq"])
    np.testing.assert_array_equal(histogram.values_and_counts()[1], reference.values_and_counts()[1])
    assert histogram.total == files["volume"].size
    # the second call (and a new header object of the same file) reads nothing
    import ScancoUnitsLib.formats.reader as reader_module

    monkeypatch.setattr(reader_module, "open_voxels", lambda *a, **k: pytest.fail("read the file again"))
    assert logic.histogramOf(read_header(files["isq"])) is histogram
    assert logic.knownHistogram(header) is histogram
    chart, table, series = logic.showHistogram(header, resolve_thresholds(ThresholdSpec(250, 1000), CAL))
    assert chart.GetScene() is slicer.mrmlScene and set(series) == {"histogram", "low", "high"}
    assert all(s.IsXColumnRequired() for s in series.values())


def test_histogram_cancel_stores_nothing_and_record_is_used(module, files, tmp_path):
    logic = module.ScancoUnitsLogic()
    logic.HISTOGRAM_SLAB_SLICES = 4
    header = read_header(files["isq"])
    calls = []

    def cancel_after_two_slabs():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(lib.ConversionCancelled):
        logic.histogramOf(header, cancel=cancel_after_two_slabs)
    assert logic.knownHistogram(header) is None
    # a histogram recorded by a load pass is what Show histogram uses
    recorded = histogram_of_file(files["isq"])
    logic.recordHistogram(files["isq"], recorded)
    assert logic.histogramOf(header, cancel=lambda: pytest.fail("no read, so no cancel check")) is recorded
    # a rewritten file is a different file
    copy = tmp_path / "copy.isq"
    copy.write_bytes(Path(files["isq"]).read_bytes())
    logic.recordHistogram(copy, recorded)
    os.utime(copy, ns=(1, 1))
    assert logic.knownHistogram(read_header(copy)) is None


# ---------------------------------------------------------------------------------------------------
# item 8: Save mask as AIM (Logic and file writer)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_mask_aim(monkeypatch):
    """A recording stand-in for ScancoUnitsLib.slicer.mask_aim.save_mask_as_aim."""
    calls = []

    def save_mask_as_aim(node, path, *, source=None, segment_id=None, overwrite=False):
        calls.append({"node": node, "path": path, "source": source, "segment_id": segment_id,
                      "overwrite": overwrite})
        if getattr(save_mask_as_aim, "error", None):
            raise save_mask_as_aim.error
        Path(path).write_bytes(b"AIM")
        return Path(path)

    fake = types.ModuleType("ScancoUnitsLib.slicer.mask_aim")
    fake.save_mask_as_aim = save_mask_as_aim
    monkeypatch.setitem(sys.modules, "ScancoUnitsLib.slicer.mask_aim", fake)
    save_mask_as_aim.calls = calls
    return save_mask_as_aim


def _segmentation_with(scene, names):
    """A segmentation with empty segments."""
    from segmentation_nodes import add_empty_segments

    return add_empty_segments(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segs"), names)


def test_logic_save_mask_as_aim_calls_the_library(module, files, fake_mask_aim, tmp_path):
    logic = module.ScancoUnitsLogic()
    nodes = logic.loadScan(str(files["isq"]), outputs=["hu", "mask_labelmap", "mask_segmentation"])
    out = tmp_path / "C0001234_MASK.AIM"
    assert logic.saveMaskAsAim(nodes["mask_labelmap"], str(out)) == out
    assert fake_mask_aim.calls[-1] == {"node": nodes["mask_labelmap"], "path": str(out), "source": None,
                                       "segment_id": None, "overwrite": False}   # scripted: no silent replace
    segment_id = nodes["mask_segmentation"].GetSegmentation().GetNthSegmentID(0)
    logic.saveMaskAsAim(nodes["mask_segmentation"], str(out), segmentId=segment_id, source="/scans/x.isq")
    assert fake_mask_aim.calls[-1]["segment_id"] == segment_id
    assert fake_mask_aim.calls[-1]["source"] == "/scans/x.isq"
    with pytest.raises(ValueError, match="labelmap volume or a segmentation"):
        logic.saveMaskAsAim(nodes["hu"], str(out))
    with pytest.raises(ValueError):
        logic.saveMaskAsAim(None, str(out))
    assert len(fake_mask_aim.calls) == 2
    # what the panel shows and suggests
    assert logic.maskSegments(nodes["mask_segmentation"]) == [(segment_id, "Bone 250-1000 per mille")]
    assert logic.maskSegments(nodes["mask_labelmap"]) == [] and logic.maskSegments(None) == []
    assert os.path.basename(logic.suggestedMaskAimPath(nodes["mask_labelmap"])) == "C0001234_MASK.AIM"
    plain = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "my mask")
    assert logic.suggestedMaskAimPath(plain) == "my_mask_MASK.AIM"


def test_logic_save_mask_as_aim_without_the_library_says_so(module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ScancoUnitsLib.slicer.mask_aim", None)   # import fails
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    with pytest.raises(RuntimeError, match="mask_aim"):
        module.ScancoUnitsLogic().saveMaskAsAim(node, str(tmp_path / "x.aim"))


def _with_source(node, path="/scans/C0001234.ISQ"):
    node.SetAttribute("ScancoUnits.SourcePath", str(path))
    return node


def _exported_copy(writer, node):
    """What Export to file does (qSlicerCoreIOManager::exportNodes): a copy of the node (CopyContent, so
    the attributes too) in a temporary scene, shown to the writer by extensions(copy) before write."""
    temporary = slicer.vtkMRMLScene()
    copy = temporary.AddNewNodeByClass(node.GetClassName(), node.GetName())
    copy.CopyContent(node, False)
    writer.extensions(copy)
    return temporary, copy


def test_file_writer_offers_aim_only_for_masks_with_a_scanco_source(module):
    writer = module.ScancoUnitsFileWriter(slicer_module_stubs.WriterParent())
    scene = slicer.mrmlScene
    labelmap = _with_source(scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode"))
    segmentation = _with_source(scene.AddNewNodeByClass("vtkMRMLSegmentationNode"))
    scalar = _with_source(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
    plain_labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")   # no SCANCO scan behind it
    plain_segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert writer.fileType() == module.WRITER_FILE_TYPE != module.READER_FILE_TYPE
    assert isinstance(writer.description(), str)
    # qSlicerScriptedFileWriter insists on exact Python types: list of str, bool, float
    extensions = writer.extensions(labelmap)
    assert type(extensions) is list and extensions == ["SCANCO AIM (.aim)"]
    for node, can in ((labelmap, True), (segmentation, True), (scalar, False), (plain_labelmap, False),
                      (plain_segmentation, False), (None, False)):
        assert writer.canWriteObject(node) is can
        confidence = writer.canWriteObjectConfidence(node)
        assert type(confidence) is float
        # offered, but below Slicer's own writers (0.5): NRRD and seg.nrrd stay the default format
        assert (0.0 < confidence < 0.5) if can else confidence == 0.0


def test_file_writer_writes_the_exported_copy_and_leaves_save_data_alone(module, fake_mask_aim, tmp_path):
    """Export to file writes a copy in a temporary scene whose node IDs can equal other nodes' IDs in the
    main scene; the writer must write the node the IO manager showed it (extensions(node)), not the main
    scene's node of the same ID. Save Data (a node of the main scene) is refused with the way out: the scene
    would refer to a storage node that cannot read the AIM back."""
    main_node = _with_source(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "main"))
    parent = slicer_module_stubs.WriterParent()
    writer = module.ScancoUnitsFileWriter(parent)
    temporary_scene, copy = _exported_copy(writer, main_node)
    assert copy.GetID() == main_node.GetID() and copy.GetAttribute("ScancoUnits.SourcePath")
    path = str(tmp_path / "out.aim")
    assert writer.write({"nodeID": copy.GetID(), "fileName": path, "fileFormat": "SCANCO AIM (.aim)"}) is True
    assert fake_mask_aim.calls[-1]["node"] is copy and fake_mask_aim.calls[-1]["path"] == path
    assert parent.writtenNodes == [copy.GetID()]
    # Save Data: the main scene's node, no hint; refused, storage untouched, nothing written
    storage_before = main_node.GetStorageNode()
    calls = len(fake_mask_aim.calls)
    assert writer.write({"nodeID": main_node.GetID(), "fileName": str(tmp_path / "saved.aim")}) is False
    assert len(fake_mask_aim.calls) == calls and not (tmp_path / "saved.aim").exists()
    assert main_node.GetStorageNode() is storage_before
    (kind, text), = parent.messages()
    assert kind == vtk.vtkCommand.ErrorEvent and "saved.aim" in text and "Export to file" in text


def test_file_writer_segments_and_errors(module, fake_mask_aim, tmp_path):
    parent = slicer_module_stubs.WriterParent()
    writer = module.ScancoUnitsFileWriter(parent)
    one = _with_source(_segmentation_with(slicer.mrmlScene, ["Bone"]))
    path = str(tmp_path / "seg.aim")
    _scene1, copy = _exported_copy(writer, one)
    assert writer.write({"nodeID": copy.GetID(), "fileName": path}) is True
    assert fake_mask_aim.calls[-1]["segment_id"] == one.GetSegmentation().GetNthSegmentID(0)
    two = _with_source(_segmentation_with(slicer.mrmlScene, ["Cortex", "Trabecular"]))
    calls = len(fake_mask_aim.calls)
    _scene2, copy = _exported_copy(writer, two)
    assert writer.write({"nodeID": copy.GetID(), "fileName": path}) is False
    assert len(fake_mask_aim.calls) == calls
    (kind, text), = parent.messages()
    assert kind == vtk.vtkCommand.ErrorEvent and "2 segments" in text and "seg.aim" in text
    # a refusal of the library (e.g. a rotated grid) reaches the user as one message naming the file
    from ScancoUnitsLib.errors import ScancoError

    parent = slicer_module_stubs.WriterParent()
    writer = module.ScancoUnitsFileWriter(parent)
    fake_mask_aim.error = ScancoError("mask.aim: the labelmap grid is rotated against its source scan")
    labelmap = _with_source(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode"))
    _scene3, copy = _exported_copy(writer, labelmap)
    assert writer.write({"nodeID": copy.GetID(), "fileName": str(tmp_path / "mask.aim")}) is False
    (kind, text), = parent.messages()
    assert "rotated" in text and "mask.aim" in text
    assert writer.write({"nodeID": "vtkMRMLLabelMapVolumeNode999", "fileName": path}) is False


def test_save_mask_as_aim_round_trip_with_the_library(module, files, tmp_path):
    """Load -> edit the labelmap -> Save mask as AIM -> read back (runs once ScancoUnitsLib.slicer.mask_aim exists)."""
    pytest.importorskip("ScancoUnitsLib.slicer.mask_aim")
    from ScancoUnitsLib.formats.reader import read_volume

    logic = module.ScancoUnitsLogic()
    nodes = logic.loadScan(str(files["isq"]), outputs=["mask_labelmap"])
    edited = slicer.util.arrayFromVolume(nodes["mask_labelmap"])
    edited[:, :2, :] = 0   # an edit
    slicer.util.arrayFromVolumeModified(nodes["mask_labelmap"])
    out = tmp_path / "EDITED.AIM"
    written = logic.saveMaskAsAim(nodes["mask_labelmap"], str(out), source=str(files["isq"]))
    assert Path(written) == out
    back = read_volume(out)
    np.testing.assert_array_equal(back != 0, edited != 0)


def test_confirmed_overwrite_replaces_the_file_and_never_the_source(module, files, tmp_path):
    """After the user confirmed (panel file dialog, Save Data) the existing AIM is replaced atomically;
    a scripted call without overwrite refuses; the source scan is never replaced."""
    pytest.importorskip("ScancoUnitsLib.slicer.mask_aim")
    from ScancoUnitsLib.errors import ScancoError
    from ScancoUnitsLib.formats.reader import read_volume

    logic = module.ScancoUnitsLogic()
    nodes = logic.loadScan(str(files["isq"]), outputs=["mask_labelmap"])
    out = tmp_path / "C0001234_MASK.AIM"
    out.write_bytes(b"an older mask")
    with pytest.raises(ScancoError, match="exists"):
        logic.saveMaskAsAim(nodes["mask_labelmap"], str(out))
    assert out.read_bytes() == b"an older mask"
    assert logic.saveMaskAsAim(nodes["mask_labelmap"], str(out), overwrite=True) == out
    expected = slicer.util.arrayFromVolume(nodes["mask_labelmap"]) != 0
    np.testing.assert_array_equal(read_volume(out) != 0, expected)
    # the file writer (Export to file, which asked first) replaces as well
    parent = slicer_module_stubs.WriterParent()
    writer = module.ScancoUnitsFileWriter(parent)
    slicer.util.arrayFromVolume(nodes["mask_labelmap"])[:] = 0
    nodes["mask_labelmap"].GetImageData().Modified()
    _temporary, copy = _exported_copy(writer, nodes["mask_labelmap"])
    assert writer.write({"nodeID": copy.GetID(), "fileName": str(out)}) is True, parent.messages()
    assert not read_volume(out).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["C0001234_MASK.AIM"]   # no temporary left
    # the scan the mask came from is an input: refused whatever overwrite says
    source_bytes = Path(files["isq"]).read_bytes()
    with pytest.raises(ScancoError):
        logic.saveMaskAsAim(nodes["mask_labelmap"], str(files["isq"]), overwrite=True)
    assert Path(files["isq"]).read_bytes() == source_bytes


def test_file_writer_holds_no_node_of_the_main_scene(module, fake_mask_aim, tmp_path):
    """Save Data asks every node's formats (extensions(node)); the writer must not keep one alive, and an
    exported copy is released after write or on Close Scene."""
    import weakref

    writer = module.ScancoUnitsFileWriter(slicer_module_stubs.WriterParent())
    main = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "main")
    writer.extensions(main)
    assert writer._lastObject is None
    temporary_scene = slicer.vtkMRMLScene()
    copy = temporary_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "copy")
    writer.extensions(copy)
    assert writer._lastObject is copy
    slicer.mrmlScene.Clear(0)   # Close Scene
    assert writer._lastObject is None
    writer.extensions(copy)
    writer.write({"nodeID": copy.GetID(), "fileName": str(tmp_path / "x.aim")})
    assert writer._lastObject is None
    alive = weakref.ref(copy)
    temporary_scene.RemoveNode(copy)
    del copy
    fake_mask_aim.calls.clear()
    assert alive() is None


def test_histogram_read_uses_the_engines_slab(module, tmp_path, monkeypatch):
    """Issue 21: the histogram is read in the engine's slabs (about 1 Mi voxels), not 16 whole slices
    (hundreds of MB on 4k x 4k slices)."""
    from ScancoUnitsLib.pipeline import engine
    from ScancoUnitsLib.formats import reader as reader_module

    volume = np.random.default_rng(8).integers(0, 9000, size=(10, 512, 512)).astype(np.int16)
    path = write_isq(tmp_path / "wide.isq", volume, voxel_size_mm=SIZE_MM, calibration=CAL)
    header = read_header(path)
    slabs = []
    original = reader_module.open_voxels

    class Spy:
        def __init__(self, source):
            self.source = source

        def __enter__(self):
            inner = self.source.__enter__()
            real_iter = inner.iter_slabs

            def iter_slabs(slices):
                for slab in real_iter(slices):
                    slabs.append(slab.shape)
                    yield slab

            inner.iter_slabs = iter_slabs
            return inner

        def __exit__(self, *exc):
            return self.source.__exit__(*exc)

    monkeypatch.setattr(reader_module, "open_voxels", lambda *a, **k: Spy(original(*a, **k)))
    histogram = module.ScancoUnitsLogic().histogramOf(header)
    assert histogram.total == volume.size
    assert all(z * y * x <= engine.TARGET_SLAB_VOXELS for z, y, x in slabs)
    assert [z for z, _, _ in slabs] == [4, 4, 2] == \
        [min(engine.slab_slices_for(header), 10 - i) for i in range(0, 10, engine.slab_slices_for(header))]
