"""Run ScancoUnits/ScancoUnits.py (module, logic, reader, self-test) with the headless ``slicer-core`` wheel.

The wheel has MRML and ``slicer.util`` but not the application parts the module file imports at the top:
``slicer.i18n``, ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` (they need qt/ctk).
:func:`load_scanco_units_module` puts minimal stand-ins for those three in ``sys.modules`` (only where the
real ones are missing), points ``slicer.mrmlScene`` at a fresh scene and imports the module file under
its own name. The widget is not exercised here (it needs qt); the .ui is checked with PySide6 in
test_slicer_files.py.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = REPO_ROOT / "ScancoUnits" / "ScancoUnits.py"


class _Annotation:
    def __init__(self, *args):
        self.args = args


def _make_parameter_node_wrapper():
    def parameterNodeWrapper(cls):
        defaults = {name: getattr(cls, name) for name in getattr(cls, "__annotations__", {}) if hasattr(cls, name)}

        class Wrapped:
            __name__ = cls.__name__

            def __init__(self, node):
                self.parameterNode = node
                for name, value in defaults.items():
                    setattr(self, name, value)

            def connectGui(self, ui):  # noqa: N802 - no widgets to bind headless
                return object()

            def disconnectGui(self, tag):  # noqa: N802
                pass

            def AddObserver(self, *args):  # noqa: N802 - like the real wrapper: the node's observers
                return self.parameterNode.AddObserver(*args)

            def RemoveObserver(self, *args):  # noqa: N802
                return self.parameterNode.RemoveObserver(*args)

        Wrapped.__qualname__ = cls.__qualname__
        return Wrapped

    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.parameterNodeWrapper = parameterNodeWrapper
    for name in ("WithinRange", "Minimum", "Maximum", "Default", "Choice", "Decimals", "SingleStep"):
        setattr(module, name, type(name, (_Annotation,), {}))
    return module


def _make_scripted_loadable_module():
    import slicer

    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

        def setup(self):  # pragma: no cover - the widget needs qt
            raise RuntimeError("the widget needs the Slicer application")

    class ScriptedLoadableModuleLogic:
        moduleName = "ScancoUnits"

        def __init__(self, parent=None):
            self.parent = parent

        def getParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetName(scene.GenerateUniqueName(self.moduleName))
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

        def runTest(self):  # pragma: no cover - the module overrides it
            pass

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    return module


def _make_i18n():
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text
    module.translate = lambda context, text: text
    return module


def install_stubs():
    """Stand-ins for the application-only slicer submodules (idempotent; real modules win)."""
    import slicer

    for name, factory in (("slicer.i18n", _make_i18n),
                          ("slicer.ScriptedLoadableModule", _make_scripted_loadable_module),
                          ("slicer.parameterNodeWrapper", _make_parameter_node_wrapper)):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            module = factory()
            sys.modules[name] = module
            setattr(slicer, name.split(".", 1)[1], module)


def new_scene():
    """A fresh MRML scene that ``slicer.mrmlScene`` (and therefore the module code) uses."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    return scene


def load_scanco_units_module():
    """Import ScancoUnits/ScancoUnits.py (as module ``ScancoUnits``) with the stubs installed."""
    install_stubs()
    module_dir = str(MODULE_FILE.parent)
    if module_dir not in sys.path:
        sys.path.insert(0, module_dir)
    if "ScancoUnits" in sys.modules and getattr(sys.modules["ScancoUnits"], "__file__", None) == str(MODULE_FILE):
        return sys.modules["ScancoUnits"]
    spec = importlib.util.spec_from_file_location("ScancoUnits", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ScancoUnits"] = module
    spec.loader.exec_module(module)
    return module


class ReaderParent:
    """What a scripted file reader's ``parent`` (qSlicerScriptedFileReader) offers: userMessages, loadedNodes."""

    def __init__(self):
        import slicer

        self._messages = slicer.vtkMRMLMessageCollection()
        self.loadedNodes = []

    def userMessages(self):
        return self._messages

    def messages(self):
        return [(self._messages.GetNthMessageType(i), self._messages.GetNthMessageText(i))
                for i in range(self._messages.GetNumberOfMessages())]


class WriterParent:
    """What a scripted file writer's ``parent`` (qSlicerScriptedFileWriter) offers: userMessages, writtenNodes."""

    def __init__(self):
        import slicer

        self._messages = slicer.vtkMRMLMessageCollection()
        self.writtenNodes = []

    def userMessages(self):
        return self._messages

    def messages(self):
        return [(self._messages.GetNthMessageType(i), self._messages.GetNthMessageText(i))
                for i in range(self._messages.GetNumberOfMessages())]
