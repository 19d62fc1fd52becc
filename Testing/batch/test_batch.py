"""Whole studies: recursive discovery, --skip-existing, --json, --summary, exact scan statistics,
progress, interrupted files' elapsed time, info --json, to_dask.

Files are made by the tests (write_isq / write_aim); each test runs in seconds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.batch.jobs import BatchProgress, FileResult
from ScancoUnitsLib.batch.discovery import NOT_SCANCO, assign_stems, discover
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.pipeline.statistics import STATISTICS_FIELDS, ScanStatistics, exact_dot
from ScancoUnitsLib.core.thresholds import ThresholdSpec, resolve_thresholds
from ScancoUnitsLib.core.units import UnitConverter

from cli_harness import error_lines, run_cli as run

pytestmark = pytest.mark.usefixtures("in_process_cli")

CAL = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                  density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp, batch test")
RNG = np.random.default_rng(13)
VOLUME = RNG.integers(-3000, 20000, size=(9, 14, 11)).astype(np.int16)


def study(root: Path) -> dict:
    """study/subject/visit tree: good files (names in any case, ;N, one without extension), bad
    ones, and files that are not scans. Returns {name: kind}."""
    (root / "s1" / "v1").mkdir(parents=True)
    (root / "s1" / "v2").mkdir(parents=True)
    (root / "s2" / "v1" / "deep").mkdir(parents=True)
    S.write_isq(root / "s1" / "v1" / "C0001.ISQ;1", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    S.write_aim(root / "s1" / "v2" / "C0001.Aim", VOLUME // 2, voxel_size_mm=(0.02,) * 3, calibration=CAL)
    S.write_aim(root / "s2" / "v1" / "deep" / "T7.aim", VOLUME // 3, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    S.write_isq(root / "s2" / "EXPORT01", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)  # no extension
    data = (root / "s1" / "v1" / "C0001.ISQ;1").read_bytes()
    (root / "s2" / "v1" / "TRUNC.isq").write_bytes(data[: len(data) - 2000])
    (root / "s2" / "notes.txt").write_text("visit notes")
    (root / "s1" / "v2" / "scan.nrrd").write_bytes(b"NRRD0004\n")
    return {"good": ["C0001.ISQ;1", "C0001.Aim", "T7.aim", "EXPORT01"], "bad": ["TRUNC.isq"],
            "other": ["notes.txt", "scan.nrrd"]}


def json_lines(stdout: str):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def mtimes(folder: Path):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


# ---- discovery ---------------------------------------------------------------------------------------

def test_recursive_discovery_by_name_and_content(tmp_path):
    kinds = study(tmp_path / "study")
    flat = discover([tmp_path / "study"])
    assert flat.inputs == [] and [p.reason for p in flat.problems] == ["folder holds no .ISQ or .AIM file"]
    found = discover([tmp_path / "study"], recursive=True)
    assert sorted(p.name for p in found.inputs) == sorted(kinds["good"] + kinds["bad"])
    assert sorted(Path(n.path).name for n in found.skipped) == sorted(kinds["other"])
    assert all(n.reason == NOT_SCANCO and os.path.isabs(n.path) for n in found.skipped)
    assert found.problems == []
    stems = assign_stems(found.inputs)
    by_name = {p.name: s for p, s in stems.items()}
    assert by_name["C0001.ISQ;1"] == "v1_C0001" and by_name["C0001.Aim"] == "v2_C0001"
    assert by_name["EXPORT01"] == "EXPORT01" and len(set(stems.values())) == len(stems)


def test_same_stem_deeper_folders_are_told_apart(tmp_path):
    paths = []
    for subject in ("s1", "s2"):
        folder = tmp_path / subject / "visit1"
        folder.mkdir(parents=True)
        paths.append(folder / "C0001.ISQ")
    stems = assign_stems(paths)
    assert sorted(stems.values()) == ["s1_visit1_C0001", "s2_visit1_C0001"]


# ---- the whole-study run ---------------------------------------------------------------------------------

def test_study_json_lines_summary_and_skip_existing(tmp_path, capsys):
    kinds = study(tmp_path / "study")
    out, summary = tmp_path / "out", tmp_path / "summary.csv"
    status, stdout, stderr = run(capsys, "convert", tmp_path / "study", "-r", "-o", out, "--json",
                                 "--summary", summary)
    assert status == 1  # TRUNC.isq
    records = json_lines(stdout)  # stdout holds JSON only
    by_name = {Path(r["input"]).name: r for r in records}
    assert sorted(by_name) == sorted(kinds["good"] + kinds["bad"] + kinds["other"])
    for r in records:
        assert {"input", "status", "outputs", "error", "warnings", "seconds", "stats"} <= set(r)
    for name in kinds["good"]:
        r = by_name[name]
        assert r["status"] == "converted" and r["error"] is None and r["seconds"] > 0
        assert set(r["outputs"]) == {"hu", "density", "mask", "metadata"}
        assert all(Path(p).exists() for p in r["outputs"].values())
        assert r["stats"]["voxel_count"] == VOLUME.size
    assert by_name["TRUNC.isq"]["status"] == "failed" and "truncated" in by_name["TRUNC.isq"]["error"]
    for name in kinds["other"]:
        assert by_name[name]["status"] == "skipped" and by_name[name]["reason"] == NOT_SCANCO
    [line] = error_lines(stderr)
    assert "TRUNC.isq" in line
    assert "1 failed" in stderr and "ignored" in stderr  # the summary table goes to stderr with --json

    rows = list(csv.DictReader(io.StringIO(summary.read_text())))
    assert len(rows) == len(records)
    assert {r["reason"] for r in rows if Path(r["input"]).name in kinds["other"]} == {NOT_SCANCO}
    row = next(r for r in rows if r["input"].endswith("C0001.ISQ;1"))
    assert row["status"] == "converted" and (row["dim_x"], row["dim_y"], row["dim_z"]) == ("11", "14", "9")
    assert float(row["mu_scaling"]) == 4096 and float(row["threshold_low_permille"]) == pytest.approx(250, abs=0.02)
    for column in ("threshold_low_native", "threshold_low_hu", "threshold_low_mg_ha_ccm", "mask_voxels",
                   "mask_volume_mm3", "mask_fraction", "density_mean_in_mask_mg_ha_ccm", "hu_mean"):
        assert row[column] != "", column
    first = {r["input"]: r for r in rows}

    # a second run keeps every finished set: nothing is rewritten (TRUNC.isq still fails)
    before = mtimes(out)
    status, stdout, stderr = run(capsys, "convert", tmp_path / "study", "-r", "-o", out, "--json",
                                 "--skip-existing", "--summary", summary)
    assert status == 1
    again = {Path(r["input"]).name: r for r in json_lines(stdout)}
    assert all(again[name]["status"] == "skipped" for name in kinds["good"])
    assert mtimes(out) == before
    rows = {r["input"]: r for r in csv.DictReader(io.StringIO(summary.read_text()))}
    for key, row in rows.items():  # skipped rows come from the metadata: the same numbers
        if row["status"] == "skipped" and first[key]["status"] == "converted":
            for column in STATISTICS_FIELDS + ("scanner_id", "mu_scaling", "threshold_high_hu"):
                assert row[column] == first[key][column], (key, column)


def test_skip_existing_exit_zero_and_redoes_stale_or_incomplete_sets(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    a = S.write_isq(src / "a.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    S.write_aim(src / "b.aim", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    c = S.write_aim(src / "c.aim", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    out = tmp_path / "out"
    assert run(capsys, "convert", src, "-o", out, "--statistics")[0] == 0
    before = mtimes(out)
    status, stdout, _ = run(capsys, "convert", src, "-o", out, "--skip-existing")
    assert status == 0 and "3 skipped" in stdout and mtimes(out) == before

    # stale: a's input changed (new mtime); incomplete: b lost an output; c untouched
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (out / "b_RHO.nrrd").unlink()
    status, stdout, stderr = run(capsys, "convert", src, "-o", out, "--skip-existing", "--json")
    assert status == 0, stderr
    got = {Path(r["input"]).name: r["status"] for r in json_lines(stdout)}
    assert got == {"a.isq": "converted", "b.aim": "converted", "c.aim": "skipped"}
    after = mtimes(out)
    assert after["c_HU.nrrd"] == before["c_HU.nrrd"] and after["a_HU.nrrd"] != before["a_HU.nrrd"]
    assert (out / "b_RHO.nrrd").exists()
    meta = json.loads((out / "a_metadata.json").read_text())
    assert meta["input"]["mtime_ns"] == os.stat(a).st_mtime_ns and meta["input"]["size_bytes"] == os.stat(a).st_size
    assert not [n for n in os.listdir(out) if ".partial-" in n or ".previous-" in n]

    # other options that change the bytes: redone; threads do not change them: kept
    status, stdout, _ = run(capsys, "convert", c, "-o", out, "--skip-existing", "--json", "--low", "300")
    assert status == 0 and json_lines(stdout)[0]["status"] == "converted"
    status, stdout, _ = run(capsys, "convert", c, "-o", out, "--skip-existing", "--json", "--low", "300",
                            "--threads", "1")
    assert status == 0 and json_lines(stdout)[0]["status"] == "skipped"


def test_a_set_without_statistics_is_redone_when_they_are_asked_for(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    S.write_isq(src / "a.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    out = tmp_path / "out"
    assert run(capsys, "convert", src, "-o", out)[0] == 0
    assert json.loads((out / "a_metadata.json").read_text())["statistics"] is None
    status, stdout, _ = run(capsys, "convert", src, "-o", out, "--skip-existing")
    assert status == 0 and "1 skipped" in stdout
    status, stdout, _ = run(capsys, "convert", src, "-o", out, "--skip-existing", "--json")
    record = json_lines(stdout)[0]
    assert status == 0 and record["status"] == "converted" and record["stats"]["voxel_count"] == VOLUME.size
    assert json.loads((out / "a_metadata.json").read_text())["statistics"]["voxel_count"] == VOLUME.size


def test_without_skip_existing_the_advice_is_for_the_command_line(tmp_path, capsys):
    src = S.write_isq(tmp_path / "a.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    assert run(capsys, "convert", src, "-o", tmp_path / "o")[0] == 0
    status, _, stderr = run(capsys, "convert", src, "-o", tmp_path / "o")
    [line] = error_lines(stderr)
    assert status == 1 and "exists already" in line and "--skip-existing" in line and "overwrite=True" not in line


def test_plain_lines_when_not_a_terminal_and_quiet(tmp_path, capsys):
    for name in ("a", "b"):
        S.write_isq(tmp_path / f"{name}.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    status, stdout, stderr = run(capsys, "convert", tmp_path, "-o", tmp_path / "o")
    assert status == 0
    assert [line.split(":")[0] for line in stdout.splitlines() if line.startswith("[")] == ["[1/2] a.isq",
                                                                                           "[2/2] b.isq"]
    assert "\r" not in stderr and "\r" not in stdout
    status, stdout, _ = run(capsys, "convert", tmp_path, "-o", tmp_path / "q", "-q")
    assert status == 0 and not [line for line in stdout.splitlines() if line.startswith("[")]


def test_progress_line_counts_rate_eta_and_files_in_flight(tmp_path):
    paths = []
    for name in ("a", "b", "c"):
        p = tmp_path / f"{name}.isq"
        p.write_bytes(b"x" * 1_000_000)
        paths.append(p)
    stream = io.StringIO()
    progress = BatchProgress(paths, stream, live=False)
    progress.began -= 2.0  # two seconds in
    progress.start(paths[0])
    progress.finish(FileResult(str(paths[0]), "converted"))
    progress.start(paths[1])
    progress.fraction_callback(paths[1])  # not live: no per-slab callback
    line = progress.line()
    assert line.startswith("[1/3 files]") and "MB/s" in line and "ETA" in line and "b.isq" in line
    rate = float(line.split("]")[1].split("MB/s")[0])
    assert 0.3 < rate < 0.6  # 1 MB in about 2 s
    live = BatchProgress(paths, stream, live=True)
    report = live.fraction_callback(paths[2])
    live.start(paths[2])
    report(5, 10)
    assert "c.isq 50%" in live.line()
    live.print_line(stream, "a line")
    assert stream.getvalue().endswith("a line\n\r\x1b[K" + live.line()) or "a line\n" in stream.getvalue()


@pytest.fixture()
def signal_handlers_restored():
    """An interrupted in-process run ignores further signals; later subprocess tests inherit the
    handlers of this process, so they are put back."""
    import signal

    names = [n for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
    saved = {n: signal.getsignal(getattr(signal, n)) for n in names}
    yield
    for n, handler in saved.items():
        signal.signal(getattr(signal, n), handler)


@pytest.mark.usefixtures("signal_handlers_restored")
def test_interrupted_file_reports_its_real_elapsed_time(tmp_path, capsys, monkeypatch):
    import signal

    from ScancoUnitsLib.io import transaction as atomic_output
    from ScancoUnitsLib.pipeline import convert

    a = S.write_isq(tmp_path / "a.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    b = S.write_isq(tmp_path / "b.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    real = convert.convert_header

    def slow_then_interrupted(header, *args, **kw):
        if header.path.endswith("b.isq"):
            time.sleep(0.3)
            raise atomic_output.Interrupted(signal.SIGTERM)
        return real(header, *args, **kw)

    monkeypatch.setattr(convert, "convert_header", slow_then_interrupted)
    status, stdout, stderr = run(capsys, "convert", a, b, "-o", tmp_path / "o", "--json")
    assert status == 143
    got = {Path(r["input"]).name: r for r in json_lines(stdout)}
    assert got["a.isq"]["status"] == "converted"
    assert got["b.isq"]["status"] == "interrupted" and got["b.isq"]["seconds"] >= 0.3
    assert "interrupted by SIGTERM while converting b.isq" in stderr


# ---- statistics ------------------------------------------------------------------------------------------

def reference_statistics(volume: np.ndarray, low: int, high: int) -> dict:
    """float64 over the whole array, correctly rounded sums."""
    conv = UnitConverter(CAL)
    density = conv.native_to(volume, "density_mg_ha_ccm").ravel()
    inside = ((volume >= low) & (volume <= high)).ravel()
    mean_in = math.fsum(density[inside]) / inside.sum()
    return {
        "density_mean_mg_ha_ccm": math.fsum(density) / density.size,
        "density_mean_in_mask_mg_ha_ccm": mean_in,
        "density_sd_in_mask_mg_ha_ccm": math.sqrt(math.fsum((density[inside] - mean_in) ** 2) / inside.sum()),
        "hu_mean": math.fsum(conv.native_to(volume, "hu").ravel()) / density.size,
        "mask_voxels": int(inside.sum()),
        "native_min": int(volume.min()), "native_max": int(volume.max()),
    }


@pytest.mark.parametrize("slab", [1, 3, 64])
@pytest.mark.parametrize("dtype", ["int16", "uint8"])
def test_statistics_equal_a_float64_computation_on_the_whole_array(tmp_path, slab, dtype):
    if dtype == "int16":
        volume = RNG.integers(-32768, 32768, size=(17, 23, 19)).astype(np.int16)
        spec = ThresholdSpec(250, 1000)
    else:  # uint8 AIMs are char masks: only counts
        volume = (RNG.integers(0, 3, size=(17, 23, 19)) * 127).astype(np.uint8)
        spec = None
    header = S.read_header(S.write_aim(tmp_path / "v.aim", volume, voxel_size_mm=(0.02, 0.03, 0.05),
                                       calibration=CAL))
    resolved = resolve_thresholds(spec, CAL) if spec else None
    stats = ScanStatistics(header, resolved)
    for z0 in range(0, volume.shape[0], slab):
        stats.observe(z0, volume[z0:z0 + slab], {})
    got = stats.to_dict()
    assert got["voxel_count"] == volume.size
    voxel_mm3 = 0.02 * 0.03 * 0.05
    if spec is None:
        assert got["mask_voxels"] == int(np.count_nonzero(volume))
        assert got["density_mean_mg_ha_ccm"] is None
        return
    want = reference_statistics(volume, resolved.native_low, resolved.native_high)
    for key, value in want.items():
        assert got[key] == value, key  # exactly, not approximately
    assert got["mask_fraction"] == want["mask_voxels"] / volume.size
    assert got["mask_volume_mm3"] == pytest.approx(want["mask_voxels"] * voxel_mm3, rel=1e-6)


def test_conversion_metadata_holds_the_statistics(tmp_path):
    path = S.write_isq(tmp_path / "s.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    header = S.read_header(path)
    result = S.convert_header(header, tmp_path / "o", S.ConversionRequest(slab_slices=2, statistics=True))
    stats = json.loads((tmp_path / "o" / "s_metadata.json").read_text())["statistics"]
    lo, hi = result.metadata["thresholds"]["native"]
    want = reference_statistics(VOLUME, lo, hi)
    assert {k: stats[k] for k in want} == want
    assert stats["mask_voxels"] == result.metadata["mask_voxels"]


def test_exact_dot_is_correctly_rounded():
    counts = np.array([3, 10**9 + 7, 1, 2**40 + 1], dtype=np.int64)
    values = np.array([0.1, 1e-3 / 3, -7.25e5, 2.0 / 3.0])
    from fractions import Fraction

    exact = sum(Fraction(int(c)) * Fraction(float(v)) for c, v in zip(counts, values))
    assert exact_dot(counts, values) == float(exact)


# ---- info --json ----------------------------------------------------------------------------------------

def test_info_json_is_one_object_per_line_with_error_objects(tmp_path, capsys):
    good = S.write_isq(tmp_path / "g.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    bad = tmp_path / "bad.aim"
    bad.write_bytes(b"not a scan" * 10)
    status, stdout, stderr = run(capsys, "info", "--json", good, bad, good)
    assert status == 1
    lines = stdout.splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[0]["dimensions"] == [11, 14, 9] and records[0]["error"] is None
    assert records[1]["input"] == str(bad) and "not a SCANCO" in records[1]["error"]
    assert len(error_lines(stderr)) == 1
    status, stdout, _ = run(capsys, "info", "--json", good)
    assert status == 0 and len(stdout.splitlines()) == 1 and json.loads(stdout)["format"] == "ISQ"


# ---- to_dask --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantity, role", [("hu", "hu"), ("density_g_cc", "density"), ("mask", "mask"),
                                            ("mu", "mu"), ("native", "native")])
def test_to_dask_equals_the_converted_volume(tmp_path, quantity, role):
    pytest.importorskip("dask")
    path = S.write_aim(tmp_path / "v.aim", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL, compression=None)
    outputs = S.convert_file(path, tmp_path / "o", outputs=("hu", "density", "mask", "mu", "native"))
    lazy = S.to_dask(path, quantity, chunks=(4, 5, 6))
    assert lazy.shape == VOLUME.shape and lazy.numblocks == (3, 3, 2)
    reference, _ = nrrd.read(str(outputs[role]))
    computed = lazy.compute(scheduler="sync")
    assert computed.dtype == reference.dtype
    np.testing.assert_array_equal(computed, reference.T)


def test_to_dask_reads_only_the_slices_a_block_needs(tmp_path, monkeypatch):
    pytest.importorskip("dask")
    from ScancoUnitsLib.formats import reader

    path = S.write_isq(tmp_path / "v.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    asked = []
    real = reader.VoxelSource.read_slab

    def watching(self, z0, z1, out=None):
        asked.append((z0, z1))
        return real(self, z0, z1, out)

    monkeypatch.setattr(reader.VoxelSource, "read_slab", watching)
    lazy = S.to_dask(path, "density_mg_ha_ccm", chunks=(2, -1, -1))
    assert asked == []  # nothing read yet
    block = lazy[4:6].compute(scheduler="sync")
    assert asked == [(4, 6)]
    expected = UnitConverter(CAL).convert(VOLUME[4:6], "density_mg_ha_ccm")
    np.testing.assert_array_equal(block, expected)
    with pytest.raises(ValueError, match="unknown quantity"):
        S.to_dask(path, "furlongs")


# ---- our own outputs, layouts ------------------------------------------------------------------------------

def by_relative(stdout: str):
    return {r["relative_path"]: r for r in json_lines(stdout)}


@pytest.mark.parametrize("layout", ["mirror", "flat"])
def test_own_outputs_inside_the_study_are_never_inputs(tmp_path, capsys, layout):
    from ScancoUnitsLib.batch.discovery import OWN_OUTPUT

    study_root = tmp_path / "study"
    (study_root / "s1" / "v1").mkdir(parents=True)
    S.write_aim(study_root / "s1" / "v1" / "X.AIM", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    out = study_root / "out"
    argv = ("convert", study_root, "-r", "-o", out, "--format", "aim", "--outputs", "native,mask",
            "--skip-existing", "--json", "--layout", layout)
    for attempt in range(3):
        status, stdout, stderr = run(capsys, *argv)
        assert status == 0, stderr
        records = json_lines(stdout)
        converted = [r for r in records if r["status"] == "converted"]
        assert [Path(r["input"]).name for r in converted] == (["X.AIM"] if attempt == 0 else [])
        own = [r for r in records if r["status"] == "skipped" and (r["reason"] or "").startswith(OWN_OUTPUT)]
        assert sorted(Path(r["input"]).name for r in own) == (
            [] if attempt == 0 else ["X_BWmask.AIM", "X_metadata.json", "X_native.AIM"])
    written = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert written == ["X_BWmask.AIM", "X_metadata.json", "X_native.AIM"]  # no X_native_native_BWmask.AIM
    assert "output(s) of earlier runs not read as inputs" in stderr


def test_own_output_given_by_name_is_skipped_and_a_foreign_metadata_hides_nothing(tmp_path, capsys):
    from ScancoUnitsLib.batch.discovery import OWN_OUTPUT

    src = tmp_path / "in"
    src.mkdir()
    S.write_aim(src / "X.AIM", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    assert run(capsys, "convert", src / "X.AIM", "-o", src, "--format", "aim", "--outputs", "native")[0] == 0
    status, stdout, _ = run(capsys, "convert", src / "X_native.AIM", "-o", tmp_path / "o", "--json")
    [record] = json_lines(stdout)
    assert record["status"] == "skipped" and record["reason"].startswith(OWN_OUTPUT)
    # a metadata file that is not ours (no ScancoUnits software entry) does not make anything an output
    other = tmp_path / "other"
    other.mkdir()
    S.write_aim(other / "Y.AIM", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    (other / "Y_metadata.json").write_text(json.dumps({"outputs": {"hu": {"file": "Y.AIM", "files": ["Y.AIM"]}}}))
    status, stdout, _ = run(capsys, "convert", other, "-o", tmp_path / "o2", "--json")
    assert status == 0 and {Path(r["input"]).name: r["status"] for r in json_lines(stdout)}["Y.AIM"] == "converted"


def nested_study(root: Path, *subjects: str) -> None:
    for subject in subjects:
        folder = root / subject / "v1"
        folder.mkdir(parents=True, exist_ok=True)
        S.write_aim(folder / "TRAB_1237.AIM", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)


def test_mirror_layout_names_depend_on_the_file_alone_and_skip_existing_keeps_them(tmp_path, capsys):
    root, out, summary = tmp_path / "study", tmp_path / "out", tmp_path / "summary.csv"
    nested_study(root, "s1")
    status, stdout, stderr = run(capsys, "convert", root, "-r", "-o", out, "--json", "--summary", summary)
    assert status == 0, stderr
    assert (out / "s1" / "v1" / "TRAB_1237_HU.nrrd").exists()
    assert by_relative(stdout)[os.path.join("s1", "v1", "TRAB_1237.AIM")]["status"] == "converted"
    before = mtimes(out / "s1" / "v1")
    nested_study(root, "s2")  # a second file of the same name: the first one's names do not change
    status, stdout, stderr = run(capsys, "convert", root, "-r", "-o", out, "--json", "--skip-existing",
                                 "--summary", summary)
    assert status == 0, stderr
    got = {k: r["status"] for k, r in by_relative(stdout).items()}
    assert got == {os.path.join("s1", "v1", "TRAB_1237.AIM"): "skipped",
                   os.path.join("s2", "v1", "TRAB_1237.AIM"): "converted"}
    assert mtimes(out / "s1" / "v1") == before
    assert sorted(p.name for p in (out / "s2" / "v1").iterdir()) == sorted(before)
    assert not [p for p in out.iterdir() if p.is_file()]  # nothing flattened into -o
    rows = list(csv.DictReader(io.StringIO(summary.read_text())))
    assert sorted(r["relative_path"] for r in rows) == [os.path.join("s1", "v1", "TRAB_1237.AIM"),
                                                        os.path.join("s2", "v1", "TRAB_1237.AIM")]


def test_flat_layout_tells_same_names_apart_and_skip_existing_keeps_them(tmp_path, capsys):
    root, out = tmp_path / "study", tmp_path / "out"
    nested_study(root, "s1", "s2")
    status, _, stderr = run(capsys, "convert", root, "-r", "-o", out, "--layout", "flat", "--statistics")
    assert status == 0, stderr
    assert (out / "s1_v1_TRAB_1237_HU.nrrd").exists() and (out / "s2_v1_TRAB_1237_HU.nrrd").exists()
    before = mtimes(out)
    status, stdout, stderr = run(capsys, "convert", root, "-r", "-o", out, "--layout", "flat", "--skip-existing",
                                 "--json")
    assert status == 0, stderr
    assert {r["status"] for r in json_lines(stdout)} == {"skipped"} and mtimes(out) == before
    status, _, stderr = run(capsys, "convert", root, "-o", out, "--layout", "sideways")
    assert status == 2 and "mirror" in stderr and "flat" in stderr


# ---- names that are not UTF-8 -------------------------------------------------------------------------------

def cli_process(*argv, env_extra=None, **kw):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(S.__file__).resolve().parents[1]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ScancoUnitsLib.cli.main", *map(os.fspath, argv)],
                          capture_output=True, env=env, timeout=300, **kw)


def test_names_that_are_not_utf8_go_through_every_output(tmp_path):
    if os.name != "posix":
        pytest.skip("file names are bytes on POSIX only")
    root = os.fsencode(tmp_path / "in")
    sub = os.path.join(root, b"Visit_\xe9")
    try:
        os.makedirs(sub)
        with open(os.path.join(root, b"Protokoll_M\xfcller.txt"), "wb") as f:
            f.write(b"notes")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    scan = os.fsdecode(os.path.join(sub, b"M\xfcller.AIM"))
    S.write_aim(scan, VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    report = ["--report"] if __import__("importlib").util.find_spec("matplotlib") else []
    out, summary = tmp_path / "out", tmp_path / "summary.csv"
    strict = {"PYTHONIOENCODING": "utf-8:strict"}  # a locale that cannot print the name
    for extra in ([], ["--jobs", "2"]):
        done = cli_process("convert", tmp_path / "in", "-r", "-o", out, "--json", "--summary", summary,
                           "--overwrite", *report, *extra, env_extra=strict)
        assert done.returncode == 0, done.stderr
        assert b"Traceback" not in done.stderr and b"internal error" not in done.stderr
        records = {r["input"]: r for r in json_lines(done.stdout.decode("ascii"))}
        assert records[scan]["status"] == "converted"
        assert records[os.fsdecode(os.path.join(root, b"Protokoll_M\xfcller.txt"))]["status"] == "skipped"
        assert b"M\xfcller.AIM" in done.stderr  # the table names the file by its own bytes
    csv_bytes = summary.read_bytes()
    assert os.path.join(sub, b"M\xfcller.AIM") in csv_bytes and b"Protokoll_M\xfcller.txt" in csv_bytes
    folder = os.path.join(os.fsencode(out), b"Visit_\xe9")
    names = sorted(os.listdir(folder))
    assert b"M\xfcller_HU.nrrd" in names and b"M\xfcller_metadata.json" in names
    with open(os.path.join(folder, b"M\xfcller_HU.nrrd"), "rb") as f:
        assert b"ScancoUnits_source_file:=M\xfcller.AIM" in f.read(4096)
    with open(os.path.join(folder, b"M\xfcller_metadata.json"), "rb") as f:
        assert json.loads(f.read())["input"]["path"] == os.path.abspath(scan)
    done = cli_process("convert", tmp_path / "in", "-r", "-o", out, "--skip-existing", "--statistics", *report,
                       env_extra=strict)
    assert done.returncode == 0, done.stderr
    assert b"kept (up to date)" in done.stdout and b"M\xfcller.AIM" in done.stdout


# ---- worker processes: a dead worker, a dead parent ------------------------------------------------------------

def _needs_fork():
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=False) != "fork":
        pytest.skip("the worker is patched through fork")


def four_inputs(folder: Path):
    folder.mkdir()
    return [S.write_isq(folder / f"{name}.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
            for name in "abcd"]


@pytest.mark.parametrize("deaths", [1, 2], ids=["dies-once", "dies-twice"])
def test_a_killed_worker_costs_only_its_file_retried_once(tmp_path, capsys, monkeypatch, deaths):
    import signal

    from ScancoUnitsLib.pipeline import convert

    _needs_fork()
    four_inputs(tmp_path / "in")
    marker = tmp_path / "deaths"
    real = convert.convert_header

    def killed_mid_file(header, out_dir, options, **kw):
        if header.path.endswith("b.isq") and len(os.listdir(marker)) < deaths:
            def kill_at_first_slab(done, total):  # temporary files exist by now, as for the OOM killer
                (marker / str(len(os.listdir(marker)))).write_text("x")
                os.kill(os.getpid(), signal.SIGKILL)
            kw["progress"] = kill_at_first_slab
        return real(header, out_dir, options, **kw)

    marker.mkdir()
    monkeypatch.setattr(convert, "convert_header", killed_mid_file)
    out = tmp_path / "out"
    status, stdout, stderr = run(capsys, "convert", tmp_path / "in", "-o", out, "--jobs", "2", "--json")
    got = {Path(r["input"]).name: r for r in json_lines(stdout)}
    assert len(os.listdir(marker)) == deaths
    assert {n: r["status"] for n, r in got.items() if n != "b.isq"} == {"a.isq": "converted", "c.isq": "converted",
                                                                       "d.isq": "converted"}
    assert not [n for n in os.listdir(out) if ".partial-" in n]
    if deaths == 1:
        assert status == 0 and got["b.isq"]["status"] == "converted"
        assert "died (killed by SIGKILL" in got["b.isq"]["warnings"][0] and "retry" in got["b.isq"]["warnings"][0]
        assert error_lines(stderr) == []
    else:
        assert status == 1 and got["b.isq"]["status"] == "failed"
        [line] = error_lines(stderr)
        assert "b.isq" in line and "died (killed by SIGKILL" in line and "also on the retry" in line
        assert not [n for n in os.listdir(out) if n.startswith("b_")]


_ORPHAN_SCRIPT = r"""
import os, sys, time
from ScancoUnitsLib.batch import pool
from ScancoUnitsLib.cli import main as cli
from ScancoUnitsLib.pipeline import convert
if sys.argv[1] == "watchdog":
    pool._PR_SET_PDEATHSIG = 0   # no prctl: only the parent-pid watchdog
pids = sys.argv[2]
real = convert.convert_header
def slow(header, out_dir, options, **kw):
    open(os.path.join(pids, str(os.getpid())), "w").close()
    def crawl(done, total):
        time.sleep(0.5)
    kw["progress"] = crawl
    return real(header, out_dir, options, **kw)
convert.convert_header = slow
sys.exit(cli.main(["convert", *sys.argv[3:], "--slab-slices", "1"]))
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited (a zombie nobody reaps)
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
def test_workers_exit_when_the_parent_is_killed(tmp_path, mechanism):
    import signal
    import subprocess
    import sys

    _needs_fork()
    four_inputs(tmp_path / "in")
    pids, out = tmp_path / "pids", tmp_path / "out"
    pids.mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(S.__file__).resolve().parents[1]))
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, mechanism, str(pids), str(tmp_path / "in"),
                               "-o", str(out), "--jobs", "2"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(pids)) < 2 or not [n for n in os.listdir(out) if ".partial-" in n]:
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        workers = [int(n) for n in os.listdir(pids)]
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [pid for pid in workers if not _gone(pid)]
    finally:
        for pid in [int(n) for n in os.listdir(pids)]:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert alive == []
    assert not [n for n in os.listdir(out) if ".partial-" in n]  # the busy workers cleaned up first


# ---- counts, -q, --summary folder, --strict -------------------------------------------------------------------

def mixed_inputs(folder: Path):
    """a.isq: mask inside the data; e.isq: empty mask at the defaults; bad.isq: truncated."""
    folder.mkdir()
    S.write_isq(folder / "a.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    S.write_isq(folder / "e.isq", np.zeros((3, 4, 5), np.int16), voxel_size_mm=(0.01,) * 3, calibration=CAL)
    (folder / "bad.isq").write_bytes(b"CTDATA-HEADER_V1" + b"\x00" * 100)
    return [folder / n for n in ("a.isq", "bad.isq", "e.isq")]


def test_progress_counter_never_runs_past_the_total(tmp_path, capsys):
    a, bad, e = mixed_inputs(tmp_path / "in")
    status, stdout, _ = run(capsys, "convert", tmp_path / "missing.isq", a, bad, e, tmp_path / "gone", "-o",
                            tmp_path / "o")
    assert status == 1
    counters = [line.split("]")[0][1:] for line in stdout.splitlines() if line.startswith("[")]
    assert counters and all(int(done) <= int(total) for done, total in (c.split("/") for c in counters))
    assert counters[-1] == "5/5"


def test_summary_folder_is_checked_before_any_file_is_converted(tmp_path, capsys):
    a, _, _ = mixed_inputs(tmp_path / "in")
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "o"
    status, stdout, stderr = run(capsys, "convert", a, "-o", out, "--summary", tmp_path / "a_file" / "s.csv")
    [line] = error_lines(stderr)
    assert status == 1 and "--summary" in line and "a_file" in line
    assert not out.exists() or os.listdir(out) == []  # nothing converted
    # a missing folder is made, like -o
    status, _, stderr = run(capsys, "convert", a, "-o", out, "--summary", tmp_path / "new" / "deeper" / "s.csv")
    assert status == 0, stderr
    assert (tmp_path / "new" / "deeper" / "s.csv").exists()


def test_quiet_prints_failures_and_final_counts_only(tmp_path, capsys):
    mixed_inputs(tmp_path / "in")
    status, stdout, stderr = run(capsys, "convert", tmp_path / "in", "-o", tmp_path / "o", "-q")
    assert status == 1
    assert "a.isq" not in stdout and "e.isq" not in stdout  # no row for the files that went well
    assert "bad.isq" in stdout and "2 converted, 1 failed" in stdout and "masks: 1 empty" in stdout
    [warning] = [line for line in stderr.splitlines() if line.startswith("scanco-units: warning:")]
    assert "e.isq" in warning  # nothing wrong is silent, -q or not
    assert len(error_lines(stderr)) == 1


def test_empty_and_full_masks_are_counted_in_the_table_and_the_json(tmp_path, capsys):
    mixed_inputs(tmp_path / "in")
    status, stdout, stderr = run(capsys, "convert", tmp_path / "in", "-o", tmp_path / "o", "--json")
    got = {Path(r["input"]).name: r for r in json_lines(stdout)}
    assert got["e.isq"]["mask_coverage"] == "empty" and got["a.isq"]["mask_coverage"] is None
    assert "masks: 1 empty, 0 full" in stderr
    status, stdout, stderr = run(capsys, "convert", tmp_path / "in" / "e.isq", "-o", tmp_path / "full", "--json",
                                 "--low", "-1000", "--high", "1000")
    assert json_lines(stdout)[0]["mask_coverage"] == "full" and "masks: 0 empty, 1 full" in stderr


def test_strict_turns_warnings_into_failures(tmp_path, capsys):
    from ScancoUnitsLib.batch.jobs import STRICT_FAILURE

    a, bad, e = mixed_inputs(tmp_path / "in")
    clipped = S.write_isq(tmp_path / "in" / "hot.isq", VOLUME, voxel_size_mm=(0.01,) * 3,
                          calibration=Calibration(mu_scaling=100, mu_water_per_cm=0.514, density_slope=355.52,
                                                  density_intercept=-196.6, density_unit="mg HA/ccm"))
    out = tmp_path / "o"
    status, stdout, stderr = run(capsys, "convert", a, e, clipped, "-o", out, "--json")
    assert status == 0  # warnings only
    status, stdout, stderr = run(capsys, "convert", a, e, clipped, "-o", tmp_path / "s", "--json", "--strict")
    got = {Path(r["input"]).name: r for r in json_lines(stdout)}
    assert status == 1
    assert got["a.isq"]["status"] == "converted"
    assert got["e.isq"]["status"] == "failed" and "mask is empty" in got["e.isq"]["error"]
    assert got["hot.isq"]["status"] == "failed" and "clipped" in got["hot.isq"]["error"]
    assert all(STRICT_FAILURE in got[n]["error"] for n in ("e.isq", "hot.isq"))
    assert len(error_lines(stderr)) == 2
    # a kept set with a warning fails under --strict too
    status, stdout, _ = run(capsys, "convert", e, "-o", out, "--skip-existing", "--strict", "--json")
    assert status == 1 and json_lines(stdout)[0]["status"] == "failed"


def tree_state(root: Path):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    kinds = study(tmp_path / "study")
    out, summary = tmp_path / "out", tmp_path / "new" / "summary.csv"
    before = tree_state(tmp_path)
    status, stdout, stderr = run(capsys, "convert", tmp_path / "study", "-r", "-o", out, "--dry-run",
                                 "--summary", summary, "--low", "120", "--high", "900")
    assert tree_state(tmp_path) == before  # no -o, no summary folder, nothing
    assert status == 1, stderr  # TRUNC.isq would fail
    assert "nothing is written" in stdout.splitlines()[0]
    assert f"{os.path.join('s1', 'v1', 'C0001.ISQ;1')}: would convert" in stdout
    assert str(out / "s1" / "v1" / "C0001_HU.nrrd") in stdout  # mirrored outputs, per file
    assert "TRUNC.isq: would fail" in stdout
    for name in kinds["other"]:
        assert f"{name}: skipped: {NOT_SCANCO}" in stdout
    block = stdout.split("C0001.ISQ;1: would convert", 1)[1].split("would", 1)[0]
    assert "120" in block and "900" in block
    for unit in ("native", "hu", "mg"):
        assert unit in block.lower(), unit
    # after a real run, --skip-existing: kept, and still nothing written
    assert run(capsys, "convert", tmp_path / "study", "-r", "-o", out, "--statistics")[0] == 1
    before = tree_state(tmp_path)
    status, stdout, _ = run(capsys, "convert", tmp_path / "study", "-r", "-o", out, "--dry-run", "--skip-existing",
                            "--statistics")
    assert tree_state(tmp_path) == before
    assert f"{os.path.join('s1', 'v1', 'C0001.ISQ;1')}: would keep (up to date)" in stdout
    status, stdout, _ = run(capsys, "convert", tmp_path / "study", "-r", "-o", out, "--dry-run")
    assert "exists already" in stdout


# ---- entries that are not files; a closed standard output -------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_folders_and_dangling_links_named_like_scans_are_listed_as_skipped(tmp_path, capsys):
    import threading

    from ScancoUnitsLib.batch.discovery import NOT_REGULAR

    folder = tmp_path / "in"
    folder.mkdir()
    S.write_aim(folder / "X.AIM", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    os.mkfifo(folder / "pipe.AIM")
    (folder / "visit.ISQ").mkdir()
    S.write_aim(folder / "visit.ISQ" / "inner.aim", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    os.symlink(folder / "nowhere.ISQ", folder / "dangling.ISQ")
    os.symlink(folder / "visit.ISQ", folder / "linked")
    outcome = {}

    def convert_it():  # opening the FIFO would block for ever: run it where a hang is seen
        outcome["flat"] = run(capsys, "convert", folder, "-o", tmp_path / "o", "--json")
        outcome["named"] = run(capsys, "convert", folder / "pipe.AIM", "-o", tmp_path / "o2", "--json")
        outcome["recursive"] = run(capsys, "convert", folder, "-r", "-o", tmp_path / "o3", "--json")

    worker = threading.Thread(target=convert_it, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a FIFO was opened"
    status, stdout, _ = outcome["flat"]
    got = {Path(r["input"]).name: r for r in json_lines(stdout)}
    assert status == 0 and got["X.AIM"]["status"] == "converted"
    assert got["pipe.AIM"]["status"] == "skipped" and got["pipe.AIM"]["reason"] == NOT_REGULAR["fifo"]
    assert got["visit.ISQ"]["reason"] == NOT_REGULAR["folder"]
    assert got["dangling.ISQ"]["reason"] == NOT_REGULAR["dangling"]
    assert got["linked"]["reason"] == NOT_REGULAR["folder_link"]
    status, _, stderr = outcome["named"]
    [line] = error_lines(stderr)
    assert status == 1 and "pipe.AIM" in line and "FIFO" in line
    status, stdout, _ = outcome["recursive"]
    got = {Path(r["input"]).name: r["status"] for r in json_lines(stdout)}
    assert got["inner.aim"] == "converted" and got["pipe.AIM"] == "skipped"


def test_json_into_a_closed_pipe_finishes_the_batch_and_says_so(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "in"
    four_inputs(src)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(S.__file__).resolve().parents[1]))
    for extra in ([], ["--jobs", "2"]):
        process = subprocess.Popen([sys.executable, "-m", "ScancoUnitsLib.cli.main", "convert", str(src), "-o", str(out),
                                    "--json", "--overwrite", *extra],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        process.stdout.close()  # as `| head -1` after its line: every write to stdout fails
        _, stderr = process.communicate(timeout=120)
        text = stderr.decode()
        assert process.returncode == 1, text
        assert "Traceback" not in text and "Exception ignored" not in text
        [line] = [x for x in text.splitlines() if "standard output" in x]
        assert line.startswith("scanco-units: error:")
        assert sorted(p.name for p in out.glob("*_metadata.json")) == [f"{n}_metadata.json" for n in "abcd"]
        assert not [n for n in os.listdir(out) if ".partial-" in n]
