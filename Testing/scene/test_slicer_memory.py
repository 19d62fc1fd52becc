"""Issue 21: progress and cancel for the reader path, and a memory check before any load.

The memory-fit logic (ScancoUnitsLib.slicer.memory_fit) is tested without Slicer; the scene and the file reader
with slicer-core and the stand-ins of slicer_module_stubs.py (a recording progress dialog for the reader).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ScancoUnitsLib import Calibration, read_header, write_isq
from ScancoUnitsLib.pipeline import engine
from ScancoUnitsLib.slicer import memory_fit
from ScancoUnitsLib.slicer.memory_fit import InsufficientMemoryError

TESTING = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(TESTING))

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")
DEFAULT = ["hu", "density", "mask_labelmap", "mask_segmentation"]


@pytest.fixture(scope="module")
def isq(tmp_path_factory):
    volume = np.random.default_rng(21).integers(0, 20000, size=(16, 10, 12)).astype(np.int16)
    return write_isq(tmp_path_factory.mktemp("memory") / "C0002121.ISQ", volume, voxel_size_mm=(0.06,) * 3,
                     calibration=CAL)


def test_meminfo_parsing(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    assert memory_fit._meminfo_available(str(meminfo)) == 8000000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")   # an old kernel without MemAvailable
    assert memory_fit._meminfo_available(str(meminfo)) is None
    assert memory_fit._meminfo_available(str(tmp_path / "missing")) is None


def test_available_memory_is_a_plausible_figure():
    available = memory_fit.available_memory_bytes()
    assert available is None or 0 < available < 1 << 50


def test_fit_figures_and_ways_out(isq):
    header = read_header(isq)
    voxels = 16 * 10 * 12
    fit = memory_fit.memory_fit(header, DEFAULT, available_bytes=10 * voxels * 8)
    assert fit.fits and fit.needed_bytes == voxels * (2 + 4 + 1 + 1) and fit.message() == ""
    fit = memory_fit.memory_fit(header, DEFAULT, available_bytes=voxels * 4)
    assert not fit.fits and fit.needed_bytes == voxels * 8 and fit.available_bytes == voxels * 4
    # every 2nd voxel: 8 x 5 x 6 voxels x 8 bytes = 1920 <= 0.8 x 3840
    assert fit.step_that_fits == 2
    text = fit.message()
    assert "need 15.0 KiB of memory, 7.5 KiB is available" in text
    assert "every 2nd voxel" in text and "sub-region" in text and "fewer outputs" in text
    # fewer outputs fit where the four do not: only the mask (1 byte a voxel)
    assert memory_fit.memory_fit(header, ["mask_labelmap"], available_bytes=voxels * 4).fits
    # a region counts its own voxels
    assert memory_fit.memory_fit(header, DEFAULT, region=((0, 4), (0, 10), (0, 12)),
                                 available_bytes=voxels * 4).fits
    with pytest.raises(InsufficientMemoryError, match="C0002121.ISQ: the chosen nodes need"):
        memory_fit.require_memory_fit(header, DEFAULT, available_bytes=16)


def test_unknown_memory_lets_the_load_through(isq, monkeypatch):
    monkeypatch.setattr(memory_fit, "available_memory_bytes", lambda: None)
    fit = memory_fit.memory_fit(read_header(isq), DEFAULT)
    assert fit.fits and fit.available_bytes is None


# ---------------------------------------------------------------------------------------------------
# with slicer-core: the scene refuses before making a node; the reader reports it; progress and cancel
# ---------------------------------------------------------------------------------------------------
slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
import slicer_module_stubs  # noqa: E402
from ScancoUnitsLib.slicer import scene as lib  # noqa: E402


def test_scene_refuses_a_load_that_does_not_fit_before_making_nodes(isq, monkeypatch):
    monkeypatch.setattr(memory_fit, "available_memory_bytes", lambda: 100)
    scene = slicer.vtkMRMLScene()
    with pytest.raises(InsufficientMemoryError, match="need"):
        lib.load_scan_into_scene(scene, isq)
    assert scene.GetNumberOfNodes() == 0
    # the caller may skip the check (e.g. knowing better)
    assert lib.load_scan_into_scene(scene, isq, outputs=["hu"], check_memory=False)


class _Dialog:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.value = 0
        self.values = []
        self.wasCanceled = False
        self.closed = False
        self.windowModality = None

    def __setattr__(self, name, value):
        if name == "value" and "values" in self.__dict__:
            self.values.append(value)
        object.__setattr__(self, name, value)

    def close(self):
        self.closed = True


@pytest.fixture
def reader_app(monkeypatch):
    """A Slicer application stand-in for the reader: a recording progress dialog and event loop."""
    module = slicer_module_stubs.load_scanco_units_module()
    slicer_module_stubs.new_scene()
    dialogs = []
    events = {"count": 0, "cancel_after": None}

    class App:
        def processEvents(self):
            events["count"] += 1
            if events["cancel_after"] is not None and events["count"] >= events["cancel_after"]:
                dialogs[-1].wasCanceled = True

    def create(**kwargs):
        dialogs.append(_Dialog(**kwargs))
        return dialogs[-1]

    qt = types.ModuleType("qt")
    qt.Qt = types.SimpleNamespace(ApplicationModal=2)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setattr(slicer, "app", App(), raising=False)
    monkeypatch.setattr(slicer.util, "createProgressDialog", create)
    return module, dialogs, events


def test_reader_shows_progress_and_closes_it(reader_app, isq, monkeypatch):
    module, dialogs, _events = reader_app
    monkeypatch.setattr(engine, "TARGET_SLAB_VOXELS", 10 * 12 * 4)   # 4 slices a slab: several progress steps
    parent = slicer_module_stubs.ReaderParent()
    assert module.ScancoUnitsFileReader(parent).load({"fileName": str(isq), "show": False})
    dialog, = dialogs
    assert dialog.windowModality == 2 and dialog.closed
    assert "C0002121.ISQ" in dialog.kwargs["labelText"]
    assert len(dialog.values) >= 4 and dialog.values == sorted(dialog.values) and dialog.values[-1] == 1000


def test_reader_cancel_adds_nothing(reader_app, isq, monkeypatch):
    module, dialogs, events = reader_app
    monkeypatch.setattr(engine, "TARGET_SLAB_VOXELS", 10 * 12 * 4)
    events["cancel_after"] = 2
    before = slicer.mrmlScene.GetNumberOfNodes()
    parent = slicer_module_stubs.ReaderParent()
    assert module.ScancoUnitsFileReader(parent).load({"fileName": str(isq), "show": False}) is False
    assert slicer.mrmlScene.GetNumberOfNodes() == before and parent.loadedNodes == []
    (kind, text), = parent.messages()
    assert kind == vtk.vtkCommand.WarningEvent and "cancelled" in text
    assert dialogs[-1].closed


def test_reader_refuses_a_load_that_does_not_fit(reader_app, isq, monkeypatch):
    module, _dialogs, _events = reader_app
    monkeypatch.setattr(memory_fit, "available_memory_bytes", lambda: 100)
    before = slicer.mrmlScene.GetNumberOfNodes()
    parent = slicer_module_stubs.ReaderParent()
    assert module.ScancoUnitsFileReader(parent).load({"fileName": str(isq)}) is False
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    (kind, text), = parent.messages()
    assert kind == vtk.vtkCommand.ErrorEvent and "C0002121.ISQ" in text and "need" in text
    assert "is available" in text and "sub-region" in text
