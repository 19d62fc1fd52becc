"""`scanco-units convert` on the command line: bad inputs, exit codes, summary.

Every bad input must give exactly one line on stderr that names the file and the reason, leave no
output file (and no temporary file) behind, and not stop the rest of the batch; the summary lists
every failure; the exit status is the documented one (0 ok, 1 some input failed, 2 usage,
128 + signal when interrupted: see test_faults.py).
"""

from __future__ import annotations

import json
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import nrrd
import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.core.header import Calibration

from cli_harness import error_lines, run_cli as run

pytestmark = pytest.mark.usefixtures("in_process_cli")

CAL = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                  density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp, CLI test")
VOLUME = (np.arange(4 * 6 * 10, dtype=np.int16).reshape(4, 6, 10) - 60) * 97


def snapshot(folder: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def good_isq(path):
    return Path(S.write_isq(path, VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL))


def good_aim(path, **kw):
    return Path(S.write_aim(path, VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL, **kw))


def make_bad_inputs(folder: Path):
    """{file: words its error line must contain}; one of each kind of bad input."""
    folder.mkdir(exist_ok=True)
    bad = {}
    data = good_isq(folder / "src.isq").read_bytes()
    (folder / "src.isq").unlink()
    (folder / "truncated.isq").write_bytes(data[:-200])
    bad["truncated.isq"] = ["truncated"]
    (folder / "junk.aim").write_bytes(b"this is a text file, not a scan\n" * 20)
    bad["junk.aim"] = ["not a SCANCO"]
    (folder / "empty.isq").write_bytes(b"")
    bad["empty.isq"] = ["empty file"]
    S.write_isq(folder / "uncalibrated.isq", VOLUME, voxel_size_mm=(0.01,) * 3)
    bad["uncalibrated.isq"] = ["mu_scaling", "native and mask outputs still work"]
    good_aim(folder / "absurd_mu_water.aim")  # then its log says mu water = 1e-300
    p = folder / "absurd_mu_water.aim"
    S.write_aim(p, VOLUME, voxel_size_mm=(0.01,) * 3,
                calibration=Calibration(mu_scaling=4096, mu_water_per_cm=1e-300, density_slope=355.52,
                                        density_intercept=-196.6))
    bad["absurd_mu_water.aim"] = ["mu_water", "implausible"]
    raw = bytearray(good_aim(folder / "t.aim").read_bytes())
    (folder / "t.aim").unlink()
    struct.pack_into("<i", raw, 20 + 20, 0x00120003)  # D1Trgb
    (folder / "rgb.aim").write_bytes(bytes(raw))
    bad["rgb.aim"] = ["unsupported voxel type"]
    (folder / "legacy.aim").write_bytes(struct.pack("<5i", 16, 92, 0, 0, 0) + b"\x00" * 200)
    bad["legacy.aim"] = ["v010"]
    zero = bytearray(good_isq(folder / "z.isq").read_bytes())
    (folder / "z.isq").unlink()
    struct.pack_into("<i", zero, 60, 0)  # y extent 0 um: voxel size 0
    (folder / "zero_voxel.isq").write_bytes(bytes(zero))
    bad["zero_voxel.isq"] = ["voxel size", "not positive"]
    return bad


def test_batch_with_every_kind_of_bad_input(tmp_path, capsys):
    inputs = tmp_path / "in"
    bad = make_bad_inputs(inputs)
    good_isq(inputs / "good1.isq")
    good_aim(inputs / "good2.aim", compression=None)
    missing = tmp_path / "missing.isq"
    empty_folder = tmp_path / "empty_folder"
    empty_folder.mkdir()
    out = tmp_path / "out"

    status, stdout, stderr = run(capsys, "convert", inputs, missing, empty_folder, "-o", out)

    assert status == 1
    lines = error_lines(stderr)
    assert len(lines) == len(bad) + 2, stderr  # one line per bad file, missing path and empty folder
    for name, words in bad.items():
        mine = [line for line in lines if name in line]
        assert len(mine) == 1, (name, lines)
        for word in words:
            assert word in mine[0], (name, mine[0])
    assert sum("missing.isq" in line and "no such file" in line for line in lines) == 1
    assert sum("empty_folder" in line and "no .ISQ or .AIM" in line for line in lines) == 1
    assert "Traceback" not in stderr

    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{stem}{suffix}" for stem in ("good1", "good2")
                             for suffix in ("_HU.nrrd", "_RHO.nrrd", "_BWmask.nrrd", "_metadata.json"))
    hu, _ = nrrd.read(str(out / "good1_HU.nrrd"))
    assert np.isfinite(hu).all() and hu.shape == (10, 6, 4)

    # the summary (stdout) lists every failure with its reason, and the totals
    summary = stdout[stdout.index("outputs / reason"):]
    for name in list(bad) + ["missing.isq", "empty_folder"]:
        row = [line for line in summary.splitlines() if name in line]
        assert len(row) == 1 and "failed" in row[0], (name, summary)
    assert f"2 converted, {len(bad) + 2} failed" in summary


def test_all_good_is_exit_zero_with_no_error_lines(tmp_path, capsys):
    good_isq(tmp_path / "a.isq")
    good_aim(tmp_path / "b.aim", version=30)
    status, stdout, stderr = run(capsys, "convert", tmp_path / "a.isq", tmp_path / "b.aim", "-o", tmp_path / "o")
    assert status == 0
    assert error_lines(stderr) == []
    assert "2 converted, 0 failed" in stdout


def test_native_and_mask_still_work_for_uncalibrated_file(tmp_path, capsys):
    S.write_isq(tmp_path / "u.isq", VOLUME, voxel_size_mm=(0.01,) * 3)
    status, _, stderr = run(capsys, "convert", tmp_path / "u.isq", "-o", tmp_path / "o", "--outputs", "native,mask")
    assert status == 0, stderr
    native, _ = nrrd.read(str(tmp_path / "o" / "u_native.nrrd"))
    np.testing.assert_array_equal(native.T, VOLUME)


@pytest.mark.parametrize("argv", [
    [],
    ["convert"],
    ["convert", "x.isq"],                                   # no -o
    ["convert", "x.isq", "-o", "o", "--bogus"],
    ["convert", "x.isq", "-o", "o", "--low", "many"],
    ["convert", "x.isq", "-o", "o", "--threshold-unit", "furlongs"],
    ["convert", "x.isq", "-o", "o", "--outputs", "hu,colour"],
    ["convert", "x.isq", "-o", "o", "--outputs", ","],
    ["convert", "x.isq", "-o", "o", "--slab-slices", "0"],
    ["convert", "x.isq", "-o", "o", "--jobs", "0"],
    ["convert", "x.isq", "-o", "o", "--threads", "0"],
    ["convert", "x.isq", "-o", "o", "--dask-local", "0"],
    ["convert", "x.isq", "-o", "x.isq"],                    # -o names an existing file
    ["convert", "x.isq", "-o", "o", "--format", "tiff"],
    ["convert", "x.isq", "-o", "o", "--format", ","],
    ["convert", "x.isq", "-o", "o", "--format", "aim"],     # HU and density cannot be AIMs
    ["convert", "x.isq", "-o", "o", "--format", "aim", "--outputs", "hu,mask"],   # HU held by no format
    ["convert", "x.isq", "-o", "o", "--outputs", "hu,hu"],          # issue 20: a role named twice
    ["convert", "x.isq", "-o", "o", "--outputs", ",hu"],            # issue 20: an empty item
    ["convert", "x.isq", "-o", "o", "--outputs", "density,rho"],    # an alias of the same role
    ["convert", "x.isq", "-o", "o", "--format", "nifti", "--detached"],   # no detached NIfTI
    ["convert", "x.isq", "-o", "o", "--threshold-unit", "hu", "--low", "400"],   # --high missing
    ["convert", "x.isq", "-o", "o", "--density-unit", "kg/m3"],
    ["frobnicate"],
])
def test_usage_errors_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    good_isq(tmp_path / "x.isq")
    status, _, stderr = run(capsys, *argv)
    assert status == 2
    assert "Traceback" not in stderr and stderr.strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.isq"]


def test_help_documents_exit_codes_and_guarantees(capsys):
    status, stdout, _ = run(capsys, "convert", "--help")
    assert status == 0
    for text in ("exit status", "0 ", "1 ", "2 ", "130", "143", "partial", "--overwrite"):
        assert text in stdout


def test_existing_outputs_are_never_replaced_without_overwrite(tmp_path, capsys):
    src = good_isq(tmp_path / "a.isq")
    out = tmp_path / "o"
    assert run(capsys, "convert", src, "-o", out)[0] == 0
    before = snapshot(out)
    status, _, stderr = run(capsys, "convert", src, "-o", out, "--low", "100")
    assert status == 1
    [line] = error_lines(stderr)
    assert "a.isq" in line and "exists already" in line
    assert snapshot(out) == before
    assert run(capsys, "convert", src, "-o", out, "--low", "100", "--overwrite")[0] == 0
    assert snapshot(out) != before and sorted(snapshot(out)) == sorted(before)


def test_output_folder_that_is_a_file(tmp_path, capsys):
    src = good_isq(tmp_path / "a.isq")
    (tmp_path / "o").write_text("a file")
    status, _, stderr = run(capsys, "convert", src, "-o", tmp_path / "o")
    assert status == 2  # a usage error (issue 10): -o names an existing file
    assert "usage:" not in stderr  # one line and a hint (issue 20)
    [line] = error_lines(stderr)
    assert "cannot create output folder" in line and "existing file" in line
    assert (tmp_path / "o").read_text() == "a file"


def test_no_inputs_found_is_a_failure(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    status, _, stderr = run(capsys, "convert", tmp_path, "-o", tmp_path / "o")
    assert status == 1
    assert "no .ISQ or .AIM" in stderr


def test_a_bug_of_ours_fails_one_file_in_one_line_and_the_batch_goes_on(tmp_path, capsys, monkeypatch):
    from ScancoUnitsLib.pipeline import convert

    a, b = good_isq(tmp_path / "a.isq"), good_isq(tmp_path / "b.isq")
    real = convert.convert_header

    def broken(header, *args, **kw):
        if header.path.endswith("a.isq"):
            raise RuntimeError("first line\nsecond line")
        return real(header, *args, **kw)

    monkeypatch.setattr(convert, "convert_header", broken)
    status, stdout, stderr = run(capsys, "convert", a, b, "-o", tmp_path / "o")
    assert status == 1
    [line] = error_lines(stderr)
    assert "a.isq" in line and "internal error" in line and "first line second line" in line
    assert "1 converted, 1 failed" in stdout
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name.startswith("a_")) == []


def test_parallel_batch_reports_the_same(tmp_path, capsys):
    inputs = tmp_path / "in"
    bad = make_bad_inputs(inputs)
    good_isq(inputs / "good1.isq")
    good_aim(inputs / "good2.aim", version=30)
    seq = run(capsys, "convert", inputs, "-o", tmp_path / "seq")
    par = run(capsys, "convert", inputs, "-o", tmp_path / "par", "--jobs", "2")
    assert seq[0] == par[0] == 1
    assert sorted(error_lines(seq[2])) == sorted(error_lines(par[2]))
    assert len(error_lines(par[2])) == len(bad)
    assert snapshot(tmp_path / "seq").keys() == snapshot(tmp_path / "par").keys()
    assert not [n for n in os.listdir(tmp_path / "par") if ".partial-" in n]


def test_console_entry_point_exit_status(tmp_path):
    """The real process (not main() in-process): stderr lines and exit status reach the shell."""
    good = good_isq(tmp_path / "good.isq")
    (tmp_path / "bad.isq").write_bytes(b"CTDATA-HEADER_V1" + b"\x00" * 100)
    result = subprocess.run([sys.executable, "-m", "ScancoUnitsLib.cli.main", "convert", str(tmp_path / "bad.isq"),
                             str(good), "-o", str(tmp_path / "o"), "-q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "bad.isq" in line and "truncated" in line
    assert "1 converted, 1 failed" in result.stdout
    usage = subprocess.run([sys.executable, "-m", "ScancoUnitsLib.cli.main", "convert"], capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 2


def test_report_flag_writes_a_png_per_file(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    good_isq(tmp_path / "in" / "A.isq")
    good_aim(tmp_path / "in" / "B.aim", position_voxels=(3, 4, 5))
    status, out, err = run(capsys, "convert", tmp_path / "in", "-o", tmp_path / "out", "--report", "-q")
    assert status == 0, err
    for stem in ("A", "B"):
        png = (tmp_path / "out" / f"{stem}_report.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert (width, height) == (1600, 1000)
    status, _, _ = run(capsys, "convert", tmp_path / "in", "-o", tmp_path / "plain", "-q")
    assert status == 0 and not list((tmp_path / "plain").glob("*_report.png"))


# ---- info: the data range and thresholds in every unit (issue 20) -------------------------------
def test_info_shows_the_data_range_in_four_units(real_data, capsys):
    status, out, err = run(capsys, "info", real_data / "CALLUS_1237.AIM")
    assert status == 0, err
    block = out[out.index("Data range:"):]
    lines = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in block.splitlines()[1:5]}
    assert lines["native"] == "112 .. 7875"                       # the header's Minimum/Maximum data value
    assert lines["per mille"] == "3.41807 .. 240.333"             # 112 / 32.767, 7875 / 32.767
    assert lines["mg HA/ccm"] == "-375.879 .. 1199.58"            # slope 1662.52405, intercept -398.609009
    assert lines["HU"].startswith("-942.2")                       # 112 / 8192 / 0.2366 * 1000 - 1000


def test_info_with_thresholds_shows_them_in_every_unit(real_data, capsys):
    status, out, err = run(capsys, "info", real_data / "CALLUS_1237.AIM", real_data / "TRAB_1240_SEG.AIM",
                           "--low", "120", "--high", "1000")
    assert status == 0, err
    grey, mask = out.split("File:")[1:]
    block = grey[grey.index("Thresholds:"):]
    assert "3932 <= native <= 32767 (int16)" in block
    for label in ("per mille:", "native:", "1/cm:", "HU:", "mg HA/ccm:", "g HA/cc:"):
        assert label in block
    assert "399.37 .. 6251.28" in block                           # mg HA/ccm of native 3932 and 32767
    assert "not applied: a SCANCO mask (int8)" in mask
    status, out, err = run(capsys, "info", real_data / "CALLUS_1237.AIM", "--low", "450", "--high", "3000",
                           "--threshold-unit", "density")
    assert status == 0 and "refused: lower threshold 450 g HA/cc (--low)" in out
    status, out, err = run(capsys, "info", real_data / "CALLUS_1237.AIM", "--json", "--low", "0.4", "--high", "2",
                           "--threshold-unit", "g/cc")
    import json
    record = json.loads(out)
    assert record["thresholds"]["applied"] and record["thresholds"]["native"][0] == 3935  # (400 + 398.609) / 1662.524 * 8192
    assert record["data_range"]["native"] == [112.0, 7875.0]


def test_thresholds_in_every_unit_is_one_reusable_function(real_data):
    from ScancoUnitsLib.cli.info import format_thresholds, thresholds_text
    from ScancoUnitsLib.formats.reader import read_header
    from ScancoUnitsLib.core.thresholds import ThresholdSpec, resolve_thresholds

    header = read_header(real_data / "CALLUS_1237.AIM")
    resolved = resolve_thresholds(ThresholdSpec(120, 1000), header.calibration, voxel_type="int16")
    text = format_thresholds(resolved)
    assert text == thresholds_text(header, ThresholdSpec(120, 1000))
    assert text.splitlines()[0] == "Thresholds:      120 .. 1000 per mille -> mask 3932 <= native <= 32767 (int16)"


def test_usage_errors_are_one_line_and_a_hint(tmp_path, capsys):
    src = good_isq(tmp_path / "a.isq")
    for argv in (["--jobs", "0"], ["--low", "900", "--high", "100"], ["--threshold-unit", "furlong"],
                 ["--density-unit", "kg"], ["--threshold-unit", "hu", "--low", "5"]):
        status, out, err = run(capsys, "convert", src, "-o", tmp_path / "o", *argv)
        assert status == 2, argv
        assert "usage:" not in err, argv
        lines = err.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("scanco-units: error:"), (argv, err)
        assert lines[1] == "(see 'scanco-units convert --help')"
    assert not (tmp_path / "o").exists()
    status, out, err = run(capsys, "info")
    assert status == 2 and "usage:" not in err and "see 'scanco-units info --help'" in err


def test_nrrd_and_aim_write_aim_for_what_it_holds_and_say_what_was_skipped(tmp_path, capsys, real_data):
    """--format nrrd,aim with the default outputs refused the whole run; now: NRRD for every output, AIM
    for the mask (what IPL evaluates), and one note up front and in each file's metadata."""
    import json

    status, out, err = run(capsys, "convert", real_data / "CALLUS_1237.AIM", real_data / "TRAB_1240_SEG.AIM",
                           "-o", tmp_path, "--format", "nrrd,aim", "--low", "120")
    assert status == 0, err
    assert "scanco-units: note: hu, density not written as aim (aim holds only native and mask)" in err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["CALLUS_1237_BWmask.AIM", "CALLUS_1237_BWmask.nrrd", "CALLUS_1237_HU.nrrd",
                     "CALLUS_1237_RHO.nrrd", "CALLUS_1237_metadata.json",
                     "TRAB_1240_SEG_mask.AIM", "TRAB_1240_SEG_mask.nrrd", "TRAB_1240_SEG_metadata.json"]
    meta = json.loads((tmp_path / "CALLUS_1237_metadata.json").read_text())
    assert "hu, density not written as aim (aim holds only native and mask)" in meta["notes"]
    assert meta["outputs"]["hu"]["formats"] == ["nrrd"] and meta["outputs"]["mask"]["formats"] == ["nrrd", "aim"]
    mask_aim = S.read_volume(tmp_path / "CALLUS_1237_BWmask.AIM")
    mask_nrrd = nrrd.read(str(tmp_path / "CALLUS_1237_BWmask.nrrd"), index_order="C")[0]
    assert np.array_equal(mask_aim != 0, mask_nrrd != 0) and mask_nrrd.any()


def test_python_api_messages_name_parameters_not_flags(tmp_path):
    from ScancoUnitsLib.pipeline.convert import ConversionRequest, convert_file

    for kwargs, words in (({"outputs": "hu,hu"}, "outputs: hu is named twice"),
                          ({"formats": "aim"}, "use outputs=('mask',) or add another format (formats='nrrd,aim')"),
                          ({"formats": "nifti", "detached": True}, "drop detached=True or add nrrd to formats")):
        with pytest.raises(ValueError) as info:
            ConversionRequest(**kwargs)
        assert words in str(info.value) and "--" not in str(info.value)
    S.write_isq(tmp_path / "u.isq", VOLUME, voxel_size_mm=(0.01,) * 3)
    with pytest.raises(S.CalibrationMissingError) as info:
        convert_file(tmp_path / "u.isq", tmp_path / "o")
    assert "outputs=('native', 'mask')" in str(info.value) and "--" not in str(info.value)
    with pytest.warns(UserWarning) as caught:
        convert_file(tmp_path / "u.isq", tmp_path / "o", outputs=("mask",), thresholds=(900, 1000))
    assert any("thresholds=(low, high, unit)" in str(w.message) for w in caught)
    assert not any("--low" in str(w.message) for w in caught)


# ---- install: what a numpy-only install does (issue 20) ---------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def _run_without(tmp_path, blocked, *argv):
    """The CLI in a fresh interpreter in which the modules ``blocked`` cannot be imported."""
    code = ("import sys\n"
            f"for name in {list(blocked)!r}: sys.modules[name] = None\n"
            "from ScancoUnitsLib.cli import main as cli\n"
            f"sys.exit(cli.main({[str(a) for a in argv]!r}))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "ScancoUnits"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def test_demo_without_matplotlib_runs_without_the_report_and_says_so(tmp_path):
    done = _run_without(tmp_path, ["matplotlib"], "demo", "-o", tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    assert "no QC report" in done.stderr and "scanco-units[report]" in done.stderr
    assert "Largest rod error" in done.stdout and ": OK" in done.stdout
    assert not list((tmp_path / "demo").glob("*_report.png"))
    assert (tmp_path / "demo" / "PHANTOM_RHO.nrrd").exists()


@pytest.mark.parametrize("fmt, module, extra", [("nifti", "nibabel", "nifti"), ("ome-zarr", "zarr", "zarr")])
def test_a_format_without_its_extra_is_one_line_up_front(tmp_path, fmt, module, extra):
    src = good_isq(tmp_path / "a.isq")
    good_isq(tmp_path / "b.isq")
    done = _run_without(tmp_path, [module], "convert", src, tmp_path / "b.isq", "-o", tmp_path / "o",
                        "--format", f"nrrd,{fmt}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("scanco-units: error:") == 1 and f"scanco-units[{extra}]" in done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()                         # up front: nothing read, nothing written


def test_make_demo_installs_the_report_extra_only_and_make_test_the_test_stack(tmp_path):
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")

    def recipe(target):
        done = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if "pip install" in line and "-e" in line]

    assert recipe("demo") == [line for line in recipe("demo") if '".[report]"' in line] != []
    assert not any("[test" in line for line in recipe("demo"))
    assert any('".[test]"' in line for line in recipe("test"))


@pytest.mark.parametrize("spelling", ["mg HA/ccm", "mgHA/ccm", "mg/cm3"])
def test_density_unit_takes_scancos_own_spelling(tmp_path, capsys, spelling):
    """--density-unit accepts the unit text SCANCO writes ('mg HA/ccm') as the Python API does."""
    src = good_isq(tmp_path / "a.isq")
    status, _, stderr = run(capsys, "convert", src, "-o", tmp_path / "o", "--outputs", "density",
                            "--density-unit", spelling)
    assert status == 0, stderr
    meta = json.loads((tmp_path / "o" / "a_metadata.json").read_text())
    assert meta["outputs"]["density"]["unit"] == "mg HA/ccm"
