"""Never a silent empty (or full) mask, and a clear message for a per-mille reference the file lacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ScancoUnitsLib import Calibration, write_aim, write_isq
from ScancoUnitsLib.pipeline.convert import convert_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from cli_harness import error_lines, run_cli  # noqa: E402

# XtremeCT II: mu_scaling 8192, so the default 250 per mille (native 8192) is 1212 mg HA/ccm here
XTREME_II = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                        density_intercept=-391.209015, density_unit="mg HA/ccm")


@pytest.fixture()
def xtreme_aim(tmp_path):
    rng = np.random.default_rng(3)
    volume = rng.integers(100, 7875, size=(4, 6, 8)).astype(np.int16)   # CALLUS_1237's native range
    return write_aim(tmp_path / "CALLUS.AIM", volume, voxel_size_mm=(0.0607,) * 3, calibration=XTREME_II)


def test_empty_mask_is_reported_on_stderr_and_in_metadata(xtreme_aim, tmp_path, capsys):
    status, _, err = run_cli(capsys, "convert", xtreme_aim, "-o", tmp_path / "o", "-q")
    assert status == 0
    warning = [line for line in err.splitlines() if "the mask is empty" in line]
    assert len(warning) == 1
    text = warning[0]
    # thresholds and the data range, both in per mille and in mg HA/ccm
    assert "250.0 to 1000.0 per mille" in text and "1212.3 to 6022.7 mg HA/ccm" in text
    assert "the data range is" in text and text.count("mg HA/ccm") == 2 and text.count("per mille") == 2
    meta = json.loads((tmp_path / "o" / "CALLUS_metadata.json").read_text())
    assert meta["mask_voxels"] == 0
    assert any("the mask is empty" in w for w in meta["warnings"])
    assert meta["mask_coverage"].startswith("the mask is empty")


def test_full_mask_is_reported(xtreme_aim, tmp_path):
    with pytest.warns(UserWarning, match="the mask is full: every voxel is inside"):
        written = convert_file(xtreme_aim, tmp_path / "o", outputs=("mask",),
                               thresholds=(-32768, 32767, "native"))
    meta = json.loads(written["metadata"].read_text())
    assert meta["mask_voxels"] == 4 * 6 * 8 and "full" in meta["mask_coverage"]


def test_a_mask_with_some_voxels_gives_no_warning(xtreme_aim, tmp_path, recwarn):
    written = convert_file(xtreme_aim, tmp_path / "o", outputs=("mask",), thresholds=(100, 1000, "permille"))
    meta = json.loads(written["metadata"].read_text())
    assert 0 < meta["mask_voxels"] < 4 * 6 * 8 and "mask_coverage" not in meta
    assert not [w for w in recwarn if "the mask is" in str(w.message)]


def test_empty_mask_is_in_the_report(xtreme_aim, tmp_path):
    pytest.importorskip("matplotlib")
    from ScancoUnitsLib.formats.reader import read_header
    from ScancoUnitsLib.pipeline.report import ReportBuilder

    written = convert_file(xtreme_aim, tmp_path / "o", report=True)
    meta = json.loads(written["metadata"].read_text())
    builder = ReportBuilder(read_header(xtreme_aim))
    from ScancoUnitsLib.formats.reader import read_volume

    builder.observe(0, read_volume(xtreme_aim))
    figure = builder.figure(meta)
    texts = [t.get_text() for t in figure.texts]
    assert any(t.startswith("MASK the mask is empty") and "mg HA/ccm" in t for t in texts)


def test_empty_mask_is_reported_in_slicer(xtreme_aim):
    slicer = pytest.importorskip("slicer")
    from ScancoUnitsLib.slicer.scene import load_scan_into_scene

    given = []
    nodes = load_scan_into_scene(slicer.vtkMRMLScene(), xtreme_aim, warn=given.append)
    assert any("the mask is empty" in w and "mg HA/ccm" in w for w in given)
    assert "the mask is empty" in nodes["mask_labelmap"].GetAttribute("ScancoUnits.MaskWarning")


def test_header_max_reference_without_the_field_is_a_clear_message(tmp_path, capsys):
    isq = write_isq(tmp_path / "NOMAX.ISQ", np.zeros((2, 3, 4), np.int16), voxel_size_mm=(0.03,) * 3,
                    calibration=XTREME_II)
    status, _, err = run_cli(capsys, "convert", isq, "-o", tmp_path / "o", "--outputs", "mask",
                             "--permille-reference", "header-max")
    lines = error_lines(err)
    assert status == 1 and len(lines) == 1
    assert "internal error" not in lines[0] and "Maximum data value" in lines[0] and str(isq) in lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
