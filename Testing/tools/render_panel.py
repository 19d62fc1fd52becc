"""Render ScancoUnits/Resources/UI/ScancoUnits.ui with PySide6 (offscreen) to a PNG.

The labels are filled the way the module widget fills them, from a small synthetic calibrated ISQ
written with ScancoUnitsLib (header summary, threshold equivalents, memory estimate), so the screenshot
shows real output of the library. Prints a JSON summary of what was loaded (used by
Testing/scene/test_slicer_files.py).

    .venv/bin/python Testing/tools/render_panel.py                      # -> Screenshots/panel.png
    .venv/bin/python Testing/tools/render_panel.py --out /tmp/panel.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

TESTING = Path(__file__).resolve().parents[1]
REPO = TESTING.parent
UI_FILE = REPO / "ScancoUnits" / "Resources" / "UI" / "ScancoUnits.ui"
DEFAULT_OUT = REPO / "Screenshots" / "panel.png"


def _example_header(folder: Path):
    """A small calibrated ISQ (XtremeCT II-like constants) and its header, or None without the library."""
    try:
        import numpy as np

        from ScancoUnitsLib import Calibration, ScannerInfo, read_header, write_isq
    except ImportError:
        return None, None
    rng = np.random.default_rng(1)
    volume = rng.normal(3000, 2500, size=(48, 96, 96)).clip(-2000, 30000).astype(np.int16)
    calibration = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                              density_intercept=-391.209015, density_unit="mg HA/ccm",
                              calibration_text="68 kVp, BH: 1200 mg HA/ccm, Scaling 8192")
    scanner = ScannerInfo(scanner_id=3401, scanner_type=10, energy_v=68000.0, intensity_ua=1470.0,
                          measurement_index=4255)
    path = folder / "C0004255.ISQ"
    try:
        write_isq(path, volume, voxel_size_mm=(0.0607, 0.0607, 0.0607), calibration=calibration, scanner=scanner)
    except TypeError:  # older writer without scanner info
        write_isq(path, volume, voxel_size_mm=(0.0607, 0.0607, 0.0607), calibration=calibration)
    return path, read_header(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--width", type=int, default=420)
    args = parser.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(TESTING / "support"))
    from PySide6 import QtWidgets

    import slicer_ui_standins as standins

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    app.setStyle("Fusion")
    widget = standins.load_ui(UI_FILE)

    with tempfile.TemporaryDirectory() as tmp:
        path, header = _example_header(Path(tmp))
        filled = header is not None
        if filled:
            from ScancoUnitsLib.slicer import scene

            widget.findChild(standins.ctkPathLineEdit, "inputFileSelector").currentPath = \
                "/data/XtremeCT/C0004255.ISQ"
            widget.findChild(QtWidgets.QLabel, "headerSummaryLabel").setText(scene.header_summary_html(header))
            warning = scene.calibration_warning(header)
            label = widget.findChild(QtWidgets.QLabel, "calibrationWarningLabel")
            label.setText(warning)
            label.setVisible(bool(warning))
            # the panel's defaults come from the library (the .ui holds none), as the module's parameter node
            from ScancoUnitsLib import defaults
            from ScancoUnitsLib.core import quantities

            low, high = defaults.THRESHOLDS_PERMILLE
            widget.findChild(QtWidgets.QDoubleSpinBox, "lowerThresholdSpinBox").setValue(low)
            widget.findChild(QtWidgets.QDoubleSpinBox, "upperThresholdSpinBox").setValue(high)
            density = widget.findChild(QtWidgets.QComboBox, "densityUnitComboBox")
            density.setCurrentIndex(next(i for i in range(density.count()) if quantities.canonical_density_unit(
                density.itemText(i)) == quantities.canonical_density_unit(defaults.DENSITY_UNIT)))
            widget.findChild(QtWidgets.QLabel, "thresholdEquivalentsLabel").setText(
                scene.threshold_equivalents_html(header, (low, high, "permille")))
            widget.findChild(QtWidgets.QLabel, "memoryEstimateLabel").setText(
                scene.memory_estimate_text(header, defaults.NODE_ROLES))
            widget.findChild(standins.ctkPathLineEdit, "exportDirectorySelector").currentPath = \
                "/data/XtremeCT/nrrd"
            widget.findChild(QtWidgets.QPushButton, "applyButton").setEnabled(True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image = standins.render(widget, args.out, width=args.width)

    def class_of(name):
        child = widget.findChild(QtWidgets.QWidget, name)
        return None if child is None else type(child).__name__

    summary = {
        "out": str(args.out),
        "width": image.width(),
        "height": image.height(),
        "filled_from_library": filled,
        "top_class": type(widget).__name__,
        "collapsible_titles": [b.text for b in widget.findChildren(standins.ctkCollapsibleButton)],
        "collapsed": {b.objectName(): b.collapsed for b in widget.findChildren(standins.ctkCollapsibleButton)},
        "classes": {name: class_of(name) for name in (
            "inputFileSelector", "exportDirectorySelector", "inputCollapsibleButton", "thresholdUnitComboBox",
            "lowerThresholdSpinBox", "upperThresholdSpinBox", "applyButton", "showHistogramButton")},
        "parameter_names": sorted(
            str(w.property("SlicerParameterName")) for w in widget.findChildren(QtWidgets.QWidget)
            if w.property("SlicerParameterName") is not None),
        "threshold_units": [widget.findChild(QtWidgets.QComboBox, "thresholdUnitComboBox").itemText(i)
                            for i in range(widget.findChild(QtWidgets.QComboBox, "thresholdUnitComboBox").count())],
        "lower_threshold": widget.findChild(QtWidgets.QDoubleSpinBox, "lowerThresholdSpinBox").value(),
        "upper_threshold": widget.findChild(QtWidgets.QDoubleSpinBox, "upperThresholdSpinBox").value(),
        "density_unit": widget.findChild(QtWidgets.QComboBox, "densityUnitComboBox").currentText(),
        "input_name_filters": widget.findChild(standins.ctkPathLineEdit, "inputFileSelector").nameFilters,
        "equivalents_text": widget.findChild(QtWidgets.QLabel, "thresholdEquivalentsLabel").text(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
