"""The defaults are defined once (ScancoUnitsLib/defaults.py) and every entry point follows them.

A copy of the module folder gets a ``defaults.py`` with other values; a subprocess that imports only the
copy then asks each entry point what it does when told nothing: the request, the command line (its help
and a conversion), ``convert_file``, ``load_scan_into_scene``, drag-and-drop (the file reader) and the
module panel's parameter node. Each must show the edited values. A copy of a default anywhere else in
the package makes the entry point that reads the copy show the old value and fails this test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from package_copy import edited_copy, run_probe

REPO = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "support"

EDITED = {
    "THRESHOLDS_PERMILLE": (300.0, 900.0),
    "DENSITY_UNIT": "mgHA/ccm",
    "FILE_ROLES": ("density", "mask"),
    "NODE_ROLES": ("density", "mask_labelmap"),
    "HU_DTYPE": "float32",
    "OUTPUT_FORMAT": "nifti",
    "LAYOUT": "flat",
}

# natives 8500, 20000, 31000: all three inside 250-1000 per mille (8192..32767), only 20000 inside
# 300-900 per mille (9830..29490)
PROBE = r"""
import contextlib, io, json, sys
from pathlib import Path
import numpy as np

module_file, work = Path(sys.argv[1]), Path(sys.argv[2])
import ScancoUnitsLib
assert Path(ScancoUnitsLib.__file__).resolve().parent.parent == module_file.parent.resolve(), ScancoUnitsLib.__file__
from ScancoUnitsLib import Calibration, convert_file, load_scan_into_scene, write_isq
from ScancoUnitsLib.pipeline.request import ConversionRequest
from ScancoUnitsLib.cli.main import main

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")
volume = np.array([8500, 20000, 31000, 0], np.int16).reshape(1, 2, 2)
(work / "study" / "visit1").mkdir(parents=True)
scan = write_isq(work / "study" / "visit1" / "S1.ISQ", volume, voxel_size_mm=(0.06,) * 3, calibration=CAL)
facts = {}

r = ConversionRequest()
facts["request"] = {"thresholds": [r.thresholds.low, r.thresholds.high, r.thresholds.unit],
                    "density_unit": r.density_unit, "hu_dtype": r.hu_dtype, "formats": list(r.formats)}

help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    main(["convert", "--help"])
facts["cli_help"] = " ".join(help_text.getvalue().split())
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main(["convert", str(work / "study"), "-r", "-o", str(work / "cli")])
facts["cli_exit"] = code
facts["cli_files"] = sorted(str(p.relative_to(work / "cli")) for p in (work / "cli").rglob("*") if p.is_file())
meta = json.loads(next((work / "cli").rglob("*_metadata.json")).read_text())
facts["cli_metadata"] = meta

out = convert_file(scan, work / "api")
facts["api_outputs"] = sorted(out)

import slicer
from slicer.util import arrayFromVolume
scene = slicer.vtkMRMLScene()
nodes = load_scan_into_scene(scene, scan)
facts["scene_roles"] = sorted(nodes)
facts["scene_density_unit"] = nodes["density"].GetVoxelValueUnits().GetCodeValue()
facts["scene_mask_voxels"] = int(np.count_nonzero(arrayFromVolume(nodes["mask_labelmap"])))

sys.path.insert(0, sys.argv[3])
import slicer_module_stubs
slicer_module_stubs.MODULE_FILE = module_file
module = slicer_module_stubs.load_scanco_units_module()
slicer_module_stubs.new_scene()
parent = slicer_module_stubs.ReaderParent()
assert module.ScancoUnitsFileReader(parent).load({"fileName": str(scan), "units": "density", "mask": "labelmap"})
dropped = [slicer.mrmlScene.GetNodeByID(i) for i in parent.loadedNodes]
facts["drop_density_unit"] = [n.GetVoxelValueUnits().GetCodeValue() for n in dropped
                              if n.IsA("vtkMRMLScalarVolumeNode") and not n.IsA("vtkMRMLLabelMapVolumeNode")]
facts["drop_mask_voxels"] = [int(np.count_nonzero(arrayFromVolume(n))) for n in dropped
                             if n.IsA("vtkMRMLLabelMapVolumeNode")]
p = module.ScancoUnitsLogic().getParameterNode()
facts["panel"] = {"thresholds": [p.lowerThreshold, p.upperThreshold], "unit": p.thresholdUnit.value,
                  "density_unit": p.densityUnit.value}
print(json.dumps(facts))
"""


def _edited_defaults(text: str) -> str:
    for name, value in EDITED.items():
        text, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, flags=re.MULTILINE)
        assert count == 1, f"defaults.py defines {name} once"
    return text


def test_every_entry_point_follows_an_edited_defaults_file(tmp_path):
    pytest.importorskip("slicer")
    pytest.importorskip("nibabel")
    copy = edited_copy(tmp_path, "ScancoUnitsLib/defaults.py", _edited_defaults)
    work = tmp_path / "work"
    work.mkdir()
    facts = run_probe(copy, PROBE, str(copy / "ScancoUnits.py"), str(work), str(SUPPORT), cwd=tmp_path, timeout=300)

    assert facts["request"] == {"thresholds": [300.0, 900.0, "permille"], "density_unit": "mgHA/ccm",
                                "hu_dtype": "float32", "formats": ["nifti"]}
    help_text = facts["cli_help"]
    for phrase in ("default 300 per mille", "default 900 per mille", "default mgHA/ccm",
                   "default density,mask", "default nifti"):
        assert phrase in help_text, phrase
    assert "flat (default):" in help_text and "mirror (default)" not in help_text
    # a flat layout: no visit1/ folder below -o; density and mask only, as NIfTI
    assert facts["cli_exit"] == 0
    assert facts["cli_files"] == ["S1_BWmask.nii", "S1_RHO.nii", "S1_metadata.json"], facts["cli_files"]
    meta = facts["cli_metadata"]
    assert meta["outputs"]["density"]["unit"] == "mg HA/ccm"
    assert (meta["thresholds"]["spec"]["low"], meta["thresholds"]["spec"]["high"]) == (300.0, 900.0)
    assert meta["mask_voxels"] == 1
    assert facts["api_outputs"] == ["density", "mask", "metadata"]
    assert facts["scene_roles"] == ["density", "mask_labelmap"]
    assert facts["scene_density_unit"] == "mg/cm3" and facts["scene_mask_voxels"] == 1
    assert facts["drop_density_unit"] == ["mg/cm3"] and facts["drop_mask_voxels"] == [1]
    assert facts["panel"] == {"thresholds": [300.0, 900.0], "unit": "permille", "density_unit": "mg HA/ccm"}


def test_the_package_holds_no_copy_of_a_default():
    """The literals of defaults.py appear nowhere else in the package as a default value."""
    lib = REPO / "ScancoUnits" / "ScancoUnitsLib"
    copies = []
    patterns = [r"\(250\.0, 1000\.0\)", r"DEFAULT_THRESHOLDS_PERMILLE\s*=", r"DEFAULT_DENSITY_UNIT\s*=",
                r"DEFAULT_(FILE|NODE)_ROLES\s*=", r"DEFAULT_(FORMAT|LAYOUT|HU_DTYPE)\s*="]
    for path in [*lib.rglob("*.py"), REPO / "ScancoUnits" / "ScancoUnits.py"]:
        if path.name == "defaults.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(re.search(p, line) for p in patterns):
                copies.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert copies == []


#: the name ends defined once in defaults.py; any other string literal of the package holding one is a copy
FILE_NAME_ENDS = ("_metadata.json", "_report.png")


def _name_end_copies(source: str, where: str) -> list:
    """``where:line: literal`` for each string literal (f-string parts included, docstrings not) that
    spells one of FILE_NAME_ENDS."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return sorted(f"{where}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and any(end in node.value for end in FILE_NAME_ENDS))


def test_the_finder_of_name_end_copies_finds_one():
    source = '"""A docstring may say _metadata.json."""\nPATH = f"{stem}_report.png"\nX = "a_metadata.json"\n'
    assert _name_end_copies(source, "m.py") == ["m.py:2: '_report.png'", "m.py:3: 'a_metadata.json'"]


def test_the_metadata_and_report_name_ends_are_spelled_only_in_defaults():
    lib = REPO / "ScancoUnits" / "ScancoUnitsLib"
    copies = []
    for path in [*lib.rglob("*.py"), REPO / "ScancoUnits" / "ScancoUnits.py"]:
        found = _name_end_copies(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
        copies += found if path != lib / "defaults.py" else []
        if path == lib / "defaults.py":
            assert len(found) == len(FILE_NAME_ENDS), found  # each defined there once
    assert copies == []
