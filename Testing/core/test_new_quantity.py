"""A new quantity is one registry entry.

The entry below ("attenuation relative to water", mu / mu_water) exists only in this test: it is added
to ``core/quantities.py`` in a copy of the package, and nothing else is changed. A subprocess on the copy
then asks for it through the command line (``--outputs relative_water``) on an int16 ISQ (the lookup
table path) and an int32 AIM (the wide path, with the numpy kernel and, where numba is installed, the
numba kernel), reads the metadata, and loads it as a Slicer node. Every value must be the float64
formula on the native values cast once to float32, bit for bit.
"""

from __future__ import annotations

import re

import pytest
from package_copy import edited_copy, run_probe

ENTRY = '''
_RELATIVE_WATER = Quantity("mu_relative_water", "attenuation relative to water", "1", "1", "relative to water",
                           "hu", "_RW", "relative water", "float32", "attenuation / water",
                           (Step("/", "mu_scaling_times_mu_water"),), role="relative_water")
'''

PROBE = r"""
import contextlib, io, json, os, sys
from pathlib import Path
import numpy as np

work = Path(sys.argv[1])
from ScancoUnitsLib import Calibration, load_scan_into_scene, write_aim, write_isq
from ScancoUnitsLib.cli.main import main
import nrrd

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")
short = (np.arange(4 * 5 * 6) * 977 - 9000).astype(np.int16).reshape(4, 5, 6)
wide = (np.arange(4 * 5 * 6, dtype=np.int64) * 123457 - 7_000_000).astype(np.int32).reshape(4, 5, 6)
inputs = {"isq": write_isq(work / "S.ISQ", short, voxel_size_mm=(0.06,) * 3, calibration=CAL),
          "aim": write_aim(work / "W.AIM", wide, voxel_size_mm=(0.06,) * 3, calibration=CAL)}
natives = {"isq": short, "aim": wide}
expected = {k: (v.astype(np.float64) / (8192.0 * 0.2409)).astype(np.float32) for k, v in natives.items()}
facts = {"cli": {}, "same_bits": {}}
backends = ["numpy"]
try:
    import numba  # noqa: F401
    backends.append("numba")
except ImportError:
    pass
facts["backends"] = backends
for backend in backends:
    os.environ["SCANCO_UNITS_KERNEL"] = backend
    for kind, path in inputs.items():
        out = work / f"out_{backend}_{kind}"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(["convert", str(path), "-o", str(out), "--outputs", "relative_water"])
        facts["cli"][f"{backend}/{kind}"] = [code, sorted(p.name for p in out.iterdir()), err.getvalue()[-500:]]
        data, _ = nrrd.read(str(next(out.glob("*_RW.nrrd"))))
        got = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
        facts["same_bits"][f"{backend}/{kind}"] = bool(
            got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected[kind].view(np.uint32)))
meta = json.loads(next((work / "out_numpy_isq").glob("*_metadata.json")).read_text())
facts["metadata_output"] = meta["outputs"]["relative_water"]
facts["metadata_formula"] = meta["formulas"].get("mu_relative_water")
facts["metadata_affine"] = meta["calibration"]["quantities"].get("mu_relative_water")

import slicer
from slicer.util import arrayFromVolume
scene = slicer.vtkMRMLScene()
nodes = load_scan_into_scene(scene, inputs["isq"], outputs=["relative_water"])
node = nodes["relative_water"]
facts["node_name"] = node.GetName()
facts["node_unit"] = node.GetVoxelValueUnits().GetCodeValue() if node.GetVoxelValueUnits() else None
array = arrayFromVolume(node)
facts["node_same_bits"] = bool(array.dtype == np.float32 and
                               np.array_equal(array.view(np.uint32), expected["isq"].view(np.uint32)))
print(json.dumps(facts))
"""


def _with_the_new_entry(text: str) -> str:
    anchor = "#: every quantity by key, in output order\n"
    assert text.count(anchor) == 1
    text = text.replace(anchor, ENTRY + "\n" + anchor)
    text, count = re.subn(r"(QUANTITIES: Dict\[str, Quantity\] = \{q\.key: q for q in \()", r"\1_RELATIVE_WATER, ",
                          text)
    assert count == 1
    return text


def test_a_quantity_defined_in_the_registry_alone_converts_exactly_everywhere(tmp_path):
    pytest.importorskip("slicer")
    pytest.importorskip("nrrd")
    copy = edited_copy(tmp_path, "ScancoUnitsLib/core/quantities.py", _with_the_new_entry)
    work = tmp_path / "work"
    work.mkdir()
    facts = run_probe(copy, PROBE, str(work), cwd=tmp_path)

    for key, (code, names, stderr) in facts["cli"].items():
        assert code == 0, (key, stderr)
        stem = "S" if key.endswith("isq") else "W"
        assert names == [f"{stem}_RW.nrrd", f"{stem}_metadata.json"], key
    assert facts["same_bits"] and all(facts["same_bits"].values()), facts["same_bits"]
    try:
        import numba  # noqa: F401
        assert "numba" in facts["backends"]
    except ImportError:
        pass
    assert facts["metadata_output"]["formula"] == "native / (mu_scaling * mu_water)"
    assert facts["metadata_output"]["unit"] == "1" and facts["metadata_output"]["dtype"] == "float32"
    assert facts["metadata_formula"] == "native / (mu_scaling * mu_water)"
    assert facts["metadata_affine"]["available"] is True
    assert facts["metadata_affine"]["scale"] == pytest.approx(1.0 / (8192 * 0.2409), rel=1e-12)
    assert facts["metadata_affine"]["offset"] == 0.0
    assert facts["node_name"].endswith("relative water")
    assert facts["node_same_bits"]
