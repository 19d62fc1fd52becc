"""The parts of the Slicer module kept outside ScancoUnits.py, without Qt or Slicer (they import neither at
load time): the translation helper, the progress-dialog callbacks, the parameter node's enums and defaults,
the user-action error dialog and the help text. What the module does with them runs in test_slicer_widget.py
and test_scene.py (with slicer-core).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from ScancoUnitsLib import defaults
from ScancoUnitsLib.core.quantities import THRESHOLD_UNITS, canonical_density_unit
from ScancoUnitsLib.slicer import module_text, panel, panel_choices, progress_dialogs, translation, user_actions

MODULE_FILE = Path(__file__).resolve().parents[2] / "ScancoUnits" / "ScancoUnits.py"


# ---- translation ----------------------------------------------------------------------------------
def test_translation_context_is_the_module_files():
    # slicer.i18n.getContext: the file's stem, prefixed by its folder only when the folder has an __init__.py
    assert not (MODULE_FILE.parent / "__init__.py").exists()
    assert translation.CONTEXT == MODULE_FILE.stem


def test_translation_kept_only_with_the_same_placeholders():
    asked = []

    def fake(context, text):
        asked.append(context)
        return {"Reading {name}...": "Lecture de {name}...", "Saved {path}": "Enregistré {chemin}",
                "{{literal}} {n}": "{n} {{autre}}"}.get(text, text)

    assert translation.tr("Reading {name}...", fake) == "Lecture de {name}..."
    assert translation.tr("Saved {path}", fake) == "Saved {path}"   # {chemin} would fail at .format(path=...)
    assert translation.tr("{{literal}} {n}", fake) == "{n} {{autre}}"   # escaped braces are no placeholder
    assert asked == ["ScancoUnits"] * 3
    assert translation.placeholders("{a} {{b}} {c:>3}") == {"a", "c:>3"}


# ---- progress dialogs -------------------------------------------------------------------------------
class RecordingDialog:
    def __init__(self):
        self.value = 0
        self.labelText = "start"
        self.wasCanceled = False


def test_dialog_value_is_the_fraction_in_thousandths_clamped():
    for fraction, expected in ((-0.5, 0), (0.0, 0), (0.25, 250), (0.3337, 334), (0.9996, 1000), (1.0, 1000),
                               (7.0, 1000)):
        assert progress_dialogs.dialog_value(fraction) == expected, fraction
    assert progress_dialogs.dialog_value(0.5, maximum=10) == 5


def test_dialog_progress_drives_the_dialog_and_sees_cancel_after_the_events():
    dialog = RecordingDialog()
    events = []

    def process_events():   # the third event pass is the user's click on Cancel
        events.append(dialog.value)
        if len(events) == 3:
            dialog.wasCanceled = True

    progress = progress_dialogs.DialogProgress(dialog, process_events)
    progress.on_progress(0.4)
    assert (dialog.value, dialog.labelText, events) == (400, "start", [400])   # no text: the label stays
    progress.on_progress(1.2, "Histogram: 3 of 3 slices")
    assert (dialog.value, dialog.labelText) == (1000, "Histogram: 3 of 3 slices")
    assert progress.cancelled() is True and len(events) == 3   # read after the events were processed


def test_dialog_progress_without_a_dialog_does_nothing():
    progress = progress_dialogs.DialogProgress(None, lambda: pytest.fail("no events without a dialog"))
    progress.on_progress(0.5, "text")
    assert progress.cancelled() is False


# ---- the parameter node's enums and defaults ----------------------------------------------------------
def test_enum_values_are_the_librarys_names():
    assert {u.value for u in panel_choices.ThresholdUnit} <= set(THRESHOLD_UNITS)
    assert tuple(m.value for m in panel_choices.LoadMode) == panel.LOAD_MODES
    for member in panel_choices.DensityUnit:
        canonical_density_unit(member.value)   # accepted (ValueError otherwise)


def test_density_unit_of_any_spelling():
    DensityUnit = panel_choices.DensityUnit
    for spelling, member in (("g/cc", DensityUnit.g_cc), ("density_g_cc", DensityUnit.g_cc),
                             ("mgHA/ccm", DensityUnit.mg_ha_ccm), ("mg HA/ccm", DensityUnit.mg_ha_ccm),
                             ("density_mg_ha_ccm", DensityUnit.mg_ha_ccm)):
        assert DensityUnit.of(spelling) is member, spelling
    with pytest.raises(ValueError):
        DensityUnit.of("kg/l")


def test_combo_box_labels():
    labels = {u: u.label() for u in panel_choices.ThresholdUnit}
    assert labels[panel_choices.ThresholdUnit.hu] == "HU"
    assert labels[panel_choices.ThresholdUnit.mu] == "1/cm"
    assert labels[panel_choices.ThresholdUnit.density] == "mg HA/ccm"   # IPL's unit, whatever the output's
    assert labels[panel_choices.ThresholdUnit.permille] == "per mille"
    assert [m.label() for m in panel_choices.LoadMode] == ["Full volume", "Every n-th voxel", "Sub-region"]
    assert len(set(labels.values())) == len(labels)


def test_parameter_node_defaults_follow_the_library(monkeypatch):
    monkeypatch.setattr(defaults, "THRESHOLDS_PERMILLE", (310, 880))
    monkeypatch.setattr(defaults, "DENSITY_UNIT", "mg HA/ccm")
    values = panel_choices.parameter_node_defaults()
    assert values == {"thresholdUnit": panel_choices.ThresholdUnit.permille, "lowerThreshold": 310.0,
                      "upperThreshold": 880.0, "densityUnit": panel_choices.DensityUnit.mg_ha_ccm}
    assert all(isinstance(values[k], float) for k in ("lowerThreshold", "upperThreshold"))
    monkeypatch.setattr(defaults, "DENSITY_UNIT", "g/cc")
    assert panel_choices.parameter_node_defaults()["densityUnit"] is panel_choices.DensityUnit.g_cc


# ---- user actions -----------------------------------------------------------------------------------
@pytest.fixture
def error_dialogs(monkeypatch):
    shown = []
    fake = types.ModuleType("slicer")
    fake.util = types.SimpleNamespace(errorDisplay=lambda text, **kwargs: shown.append((text, kwargs)))
    monkeypatch.setitem(sys.modules, "slicer", fake)
    return shown


def test_user_action_shows_one_dialog_and_returns(error_dialogs):
    with user_actions.user_action("Failed to save the mask as AIM."):
        raise ValueError("x.aim:\n  the grid is not the scan's")
    assert error_dialogs == [("Failed to save the mask as AIM.\nx.aim: the grid is not the scan's",
                              {"windowTitle": "Scanco Units"})]
    with user_actions.user_action("Failed."):
        raise RuntimeError()
    assert error_dialogs[-1][0] == "Failed.\nRuntimeError"   # an empty message still names the error


def test_user_action_without_error_or_with_an_interrupt(error_dialogs):
    with user_actions.user_action("Failed."):
        pass
    with pytest.raises(KeyboardInterrupt):
        with user_actions.user_action("Failed."):
            raise KeyboardInterrupt
    assert error_dialogs == []


# ---- help text ----------------------------------------------------------------------------------------
def test_help_text_states_the_conventions_and_is_translated_in_the_module_context(monkeypatch):
    text = " ".join(module_text.help_text().split())
    assert "1000 per mille = native 32767" in text and "250 per mille = 8191.75 -> 8192" in text
    assert "native * 1000 / (mu_scaling * mu_water) - 1000" in text
    assert "ITK" in module_text.acknowledgement_text() and "SCANCO" in module_text.acknowledgement_text()
    contexts = []
    fake = types.ModuleType("slicer.i18n")
    fake.translate = lambda context, source: contexts.append(context) or source.upper()
    monkeypatch.setitem(sys.modules, "slicer.i18n", fake)
    monkeypatch.setitem(sys.modules, "slicer", types.ModuleType("slicer"))
    sys.modules["slicer"].i18n = fake
    assert "DRAG AND DROP" in module_text.help_text()
    assert contexts == ["ScancoUnits"]


# ---- the SCANCO AIM file writer's node (real MRML nodes: slicer-core) -------------------------------------
def _segmentation_with(scene, names):
    pytest.importorskip("slicer")
    from segmentation_nodes import add_empty_segments

    return add_empty_segments(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited"), names,
                              ids=[f"id_{name}" for name in names])


def test_aim_file_writer_takes_a_copy_with_one_mask():
    slicer = pytest.importorskip("slicer")
    from ScancoUnitsLib.slicer.aim_file_writer import segment_to_write

    main, export = slicer.vtkMRMLScene(), slicer.vtkMRMLScene()   # Export to file writes a copy in its own scene
    labelmap = export.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    assert segment_to_write(labelmap, labelmap.GetID(), main) is None
    assert segment_to_write(_segmentation_with(export, ["Bone"]), "x", main) == "id_Bone"


def test_aim_file_writer_refuses_in_one_line():
    slicer = pytest.importorskip("slicer")
    from ScancoUnitsLib.slicer.aim_file_writer import segment_to_write

    main, export = slicer.vtkMRMLScene(), slicer.vtkMRMLScene()
    with pytest.raises(ValueError, match="no node with ID vtkMRMLLabelMapVolumeNode7"):
        segment_to_write(None, "vtkMRMLLabelMapVolumeNode7", main)
    saved = main.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")   # Save Data: a node of the scene
    with pytest.raises(ValueError, match="export format"):
        segment_to_write(saved, saved.GetID(), main)
    for names in ([], ["Cortex", "Trabecular"]):
        with pytest.raises(ValueError, match=f"edited has {len(names)} segments; an AIM holds one mask"):
            segment_to_write(_segmentation_with(export, names), "x", main)
