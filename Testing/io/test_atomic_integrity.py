"""Issue 19: what a run may replace or delete, and what ``--skip-existing`` may believe.

One test per point of the issue (1, 2, 3, 4, 6, 7, 8, and the two items of 15 about leftovers):

1. ``--summary`` is checked like an output before any voxel is read: never an input, never an
   existing file without ``--overwrite``;
2. every input of the run, and every file that is a SCANCO file by its content, is never replaced,
   whatever the flags; the error does not suggest a flag that would replace it;
3. a (tampered or foreign) ``_metadata.json`` never steers deletion: only names this stem can have
   and files whose size and checksum that metadata recorded are removed, never a folder;
4. ``--skip-existing`` knows an input by its resolved path, size and mtime: another input's outputs
   are neither "up to date" nor replaced;
6. an input replaced during its conversion fails that file (identity taken from the open file);
7. the metadata is the commit record: placed last, after the files and the folder were fsync'ed; a
   kill in the middle of a commit leaves a set that ``--skip-existing`` redoes;
8. ``--skip-existing`` checks every file's size and checksum and the metadata's own checksum; CSV
   cells that would start a formula are neutralised;
15. every run sweeps its output folder for stale temporary files and says what it removed; only
   files of this host *and* this boot are ever judged stale.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.io import transaction as atomic_output
from ScancoUnitsLib.io import writer_identity
from ScancoUnitsLib.batch.jobs import FileResult, convert_one
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.pipeline.request import ConversionRequest

from cli_harness import error_lines, run_cli as run

pytestmark = pytest.mark.usefixtures("in_process_cli", "no_leftover_registry")

REPO = Path(__file__).resolve().parents[2]
CAL = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                  density_unit="mg HA/ccm", calibration_type=2, calibration_text="integrity test")
RNG = np.random.default_rng(19)
VOLUME = RNG.integers(-2000, 9000, size=(6, 9, 8)).astype(np.int16)


def _aim(path: Path, volume=VOLUME) -> Path:
    return Path(S.write_aim(path, volume, voxel_size_mm=(0.01,) * 3, calibration=CAL))


def _snapshot(folder: Path) -> dict:
    """name -> bytes of every file under *folder* (folders as their own snapshot)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def _json_lines(stdout: str):
    return [json.loads(line) for line in stdout.splitlines() if line.strip().startswith("{")]


# ---------------------------------------------------------------------------------------------------
# 1. --summary
# ---------------------------------------------------------------------------------------------------


def test_point1_summary_is_checked_like_an_output_before_any_voxel_is_read(tmp_path, capsys):
    scan = _aim(tmp_path / "scan.AIM")
    precious = scan.read_bytes()
    out = tmp_path / "out"

    for extra in ((), ("--overwrite",)):  # an input is never the summary, whatever the flags
        status, _, stderr = run(capsys, "convert", scan, "-o", out, "--summary", scan, *extra)
        assert status != 0 and "scan.AIM" in stderr and "input" in stderr
        assert scan.read_bytes() == precious
        assert not out.exists() or not [p for p in out.iterdir() if p.suffix == ".nrrd"]  # nothing converted

    notes = tmp_path / "notes.csv"
    notes.write_text("my own table\n")
    status, _, stderr = run(capsys, "convert", scan, "-o", out, "--summary", notes)
    [line] = error_lines(stderr)
    assert status != 0 and "notes.csv" in line and "exists already" in line and "--overwrite" in line
    assert notes.read_text() == "my own table\n"
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix == ".nrrd"]

    status, _, stderr = run(capsys, "convert", scan, "-o", out, "--summary", notes, "--overwrite")
    assert status == 0, stderr
    assert notes.read_text().startswith("input,relative_path,status,")


# ---------------------------------------------------------------------------------------------------
# 2. inputs of the run, and SCANCO files by content, are never replaced
# ---------------------------------------------------------------------------------------------------


def test_point2_no_input_and_no_scanco_file_is_ever_replaced(tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    segmented = RNG.integers(0, 2, size=VOLUME.shape).astype(np.int8) * 127  # a char AIM: its output is _mask
    _aim(folder / "C1.AIM", segmented)
    mask = RNG.integers(0, 2, size=(5, 7, 4)).astype(np.int8) * 127  # a real (other) mask AIM
    _aim(folder / "C1_mask.AIM", mask)
    before = _snapshot(folder)

    status, stdout, stderr = run(capsys, "convert", folder, "-o", folder, "--format", "aim", "--outputs", "mask",
                                 "--skip-existing", "--json")
    assert (folder / "C1_mask.AIM").read_bytes() == before["C1_mask.AIM"]
    assert S.read_header(folder / "C1_mask.AIM").dimensions == (4, 7, 5)
    results = {Path(r["input"]).name: r for r in _json_lines(stdout)}
    assert results["C1.AIM"]["status"] == "failed"
    error = results["C1.AIM"]["error"]
    assert "C1_mask.AIM" in error and "input" in error
    assert "--overwrite" not in error and "--skip-existing" not in error  # no flag would replace it
    assert status == 1

    # a SCANCO file by content named like an output: refused also with --overwrite, given or not
    target = tmp_path / "t"
    target.mkdir()
    disguised = _aim(target / "x_HU.nrrd")
    x = _aim(tmp_path / "x.AIM", VOLUME // 2)
    kept = disguised.read_bytes()
    for inputs in ([disguised, x], [x]):
        status, stdout, stderr = run(capsys, "convert", *inputs, "-o", target, "--overwrite", "--json")
        assert disguised.read_bytes() == kept
        [record] = [r for r in _json_lines(stdout) if Path(r["input"]).name == "x.AIM"]
        assert record["status"] == "failed" and "x_HU.nrrd" in record["error"]
        assert "--overwrite" not in record["error"]

    # our own AIM outputs, recorded with their checksums by their metadata, are replaced as usual
    own = tmp_path / "own"
    assert run(capsys, "convert", x, "-o", own, "--format", "aim", "--outputs", "native,mask")[0] == 0
    for extra in (("--overwrite",), ("--skip-existing", "--low", "300")):
        status, stdout, stderr = run(capsys, "convert", x, "-o", own, "--format", "aim", "--outputs", "native,mask",
                                     "--json", *extra)
        assert status == 0 and _json_lines(stdout)[0]["status"] == "converted", stderr


# ---------------------------------------------------------------------------------------------------
# 3. the metadata never steers deletion
# ---------------------------------------------------------------------------------------------------


def test_point3_a_tampered_metadata_never_steers_deletion(tmp_path, capsys):
    src = _aim(tmp_path / "in.AIM")
    out = tmp_path / "out"
    assert run(capsys, "convert", src, "-o", out, "--outputs", "hu,mask")[0] == 0
    # things that are not ours: a visit folder with a scan, notes, a file named like one of our outputs
    (out / "visit2").mkdir()
    _aim(out / "visit2" / "C0002.AIM")
    (out / "notes.txt").write_text("lab notes")
    (out / "in_RHO.nrrd").write_bytes(b"someone else's volume")
    (out / "in_mu.nrrd").mkdir()
    (out / "in_mu.nrrd" / "kept.txt").write_text("inside a folder named like an output")
    meta_path = out / "in_metadata.json"
    meta = json.loads(meta_path.read_text())
    for role, name in (("density", "in_RHO.nrrd"), ("mu", "in_mu.nrrd"), ("native", "visit2"),
                       ("char_mask", "notes.txt")):
        meta["outputs"][role] = {"file": name, "files": [name], "formats": ["nrrd"]}
    meta_path.write_text(json.dumps(meta))
    foreign = {k: v for k, v in _snapshot(out).items() if not k.startswith("in_") or k.startswith(("in_RHO", "in_mu"))}

    status, _, stderr = run(capsys, "convert", src, "-o", out, "--outputs", "hu,mask", "--overwrite")
    assert status == 0, stderr
    assert {k: v for k, v in _snapshot(out).items() if k in foreign} == foreign
    said = [w for w in json.loads(meta_path.read_text())["warnings"] if "left in place" in w]
    assert said and all(n in said[0] for n in ("in_RHO.nrrd", "in_mu.nrrd")) and "left in place" in stderr

    # a stale --skip-existing (the input changed) redoes the set: still nothing foreign removed
    meta = json.loads(meta_path.read_text())
    meta["outputs"]["native"] = {"file": "visit2", "files": ["visit2", "notes.txt", "in_RHO.nrrd"]}
    meta_path.write_text(json.dumps(meta))
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    status, stdout, stderr = run(capsys, "convert", src, "-o", out, "--outputs", "hu,mask", "--skip-existing",
                                 "--json")
    assert status == 0, stderr
    assert _json_lines(stdout)[0]["status"] == "converted"
    assert {k: v for k, v in _snapshot(out).items() if k in foreign} == foreign

    # no metadata at all: --skip-existing replaces only files that carry our mark, never a stranger's
    other = tmp_path / "other"
    other.mkdir()
    (other / "in_HU.nrrd").write_bytes(b"NRRD0004\ntype: short\n\nsomeone else's")
    status, stdout, _ = run(capsys, "convert", src, "-o", other, "--outputs", "hu", "--skip-existing", "--json")
    [record] = _json_lines(stdout)
    assert status == 1 and record["status"] == "failed" and "in_HU.nrrd" in record["error"]
    assert (other / "in_HU.nrrd").read_bytes().endswith(b"someone else's")


# ---------------------------------------------------------------------------------------------------
# 4. an input is known by its resolved path, size and mtime
# ---------------------------------------------------------------------------------------------------


def test_point4_skip_existing_knows_an_input_by_its_resolved_path(tmp_path, capsys):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    first = _aim(tmp_path / "v1" / "C0001.AIM")
    twin = tmp_path / "v2" / "C0001.AIM"
    shutil.copy2(first, twin)  # same name, size and mtime: another input all the same
    out = tmp_path / "out"
    assert run(capsys, "convert", first, "-o", out)[0] == 0
    before = _snapshot(out)

    for variant in ("same bytes", "other bytes"):
        if variant == "other bytes":
            _aim(twin, VOLUME // 3)
        status, stdout, _ = run(capsys, "convert", twin, "-o", out, "--skip-existing", "--json")
        [record] = _json_lines(stdout)
        assert record["status"] == "failed", (variant, record)
        assert "v1" in record["error"] and "--skip-existing" not in record["error"]
        assert _snapshot(out) == before
    assert json.loads((out / "C0001_metadata.json").read_text())["input"]["path"] == str(first)


# ---------------------------------------------------------------------------------------------------
# 6. an input replaced during its conversion
# ---------------------------------------------------------------------------------------------------


def test_point6_an_input_replaced_while_it_is_converted_fails_that_file(tmp_path):
    src = _aim(tmp_path / "scan.AIM")
    newer = _aim(tmp_path / "incoming.tmp", VOLUME // 2)
    out = tmp_path / "out"
    calls = []

    def progress(done, total):
        if not calls:  # rsync: the new version is renamed over the old one while we read it
            os.replace(newer, src)
        calls.append(done)

    result = convert_one(src, out, ConversionRequest(outputs=("hu",), slab_slices=1), "scan", progress=progress)
    assert len(calls) > 1
    assert result.status == "failed", result
    assert "scan.AIM" in result.error and "changed" in result.error
    assert not out.exists() or not list(out.iterdir())


def test_point6_an_input_replaced_while_its_outputs_are_committed_fails_that_file(tmp_path, monkeypatch):
    src = _aim(tmp_path / "scan.AIM")
    newer = _aim(tmp_path / "incoming.tmp", VOLUME // 2)
    out = tmp_path / "out"
    real_fsync = os.fsync

    def fsync(fd):  # the rename lands while the outputs are being synced, after the last check of the data
        if newer.exists():
            os.replace(newer, src)
        return real_fsync(fd)

    monkeypatch.setattr(atomic_output.os, "fsync", fsync)
    result = convert_one(src, out, ConversionRequest(outputs=("hu",)), "scan")
    assert result.status == "failed" and "changed" in result.error, result
    assert not newer.exists() and not list(out.iterdir())


# ---------------------------------------------------------------------------------------------------
# 7. the commit record
# ---------------------------------------------------------------------------------------------------


def test_point7_metadata_is_placed_last_after_fsync_of_files_and_folder(tmp_path, monkeypatch):
    src = _aim(tmp_path / "scan.AIM")
    out = tmp_path / "out"
    out.mkdir()
    events = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def link(a, b, *args, **kw):
        events.append(("place", os.path.basename(b)))
        return real_link(a, b, *args, **kw)

    def replace(a, b, *args, **kw):
        events.append(("place", os.path.basename(b)))
        return real_replace(a, b, *args, **kw)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name fsync'ed files")
    monkeypatch.setattr(atomic_output.os, "fsync", fsync)
    monkeypatch.setattr(atomic_output.os, "link", link)
    monkeypatch.setattr(atomic_output.os, "replace", replace)
    S.convert_file(src, out, outputs=("hu", "mask"))
    placed = [name for kind, name in events if kind == "place" and not name.startswith(".")]
    assert placed[-1] == "scan_metadata.json" and set(placed) == {"scan_HU.nrrd", "scan_BWmask.nrrd",
                                                                    "scan_metadata.json"}
    meta_at = events.index(("place", "scan_metadata.json"))
    synced = [name for kind, name in events[:meta_at] if kind == "fsync"]
    assert "out" in synced[synced.index("out"):]  # the folder, after the data files were placed
    last_data = max(events.index(("place", n)) for n in ("scan_HU.nrrd", "scan_BWmask.nrrd"))
    assert ("fsync", "out") in events[last_data:meta_at]
    assert sum(1 for n in synced if ".partial-" in n) >= 3  # every file (data and metadata) synced


_KILLED_COMMIT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from ScancoUnitsLib.io import transaction as atomic_output
    from ScancoUnitsLib.pipeline.convert import convert_file
    from ScancoUnitsLib.core.thresholds import ThresholdSpec
    real_link, real_replace = os.link, os.replace
    def deadly(real):
        def place(a, b, *args, **kw):
            if os.path.basename(b).endswith("_metadata.json"):
                os.kill(os.getpid(), signal.SIGKILL)   # after the mask, before the commit record
            return real(a, b, *args, **kw)
        return place
    atomic_output.os.link, atomic_output.os.replace = deadly(real_link), deadly(real_replace)
    convert_file(sys.argv[2], sys.argv[3], outputs=("mask",), thresholds=ThresholdSpec(150, 1000, "permille"),
                 overwrite=True, statistics=True)
""")


def test_point7_a_commit_killed_before_its_record_is_not_up_to_date(tmp_path, capsys):
    src = _aim(tmp_path / "scan.AIM")
    out = tmp_path / "out"
    assert run(capsys, "convert", src, "-o", out, "--outputs", "mask", "--low", "250", "--high", "1000",
               "--statistics")[0] == 0
    good_mask = (out / "scan_BWmask.nrrd").read_bytes()
    child = subprocess.run([sys.executable, "-c", _KILLED_COMMIT, str(REPO / "ScancoUnits"), str(src), str(out)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (out / "scan_BWmask.nrrd").read_bytes() != good_mask  # the 150 per mille mask was placed

    status, stdout, stderr = run(capsys, "convert", src, "-o", out, "--outputs", "mask", "--low", "250",
                                 "--high", "1000", "--statistics", "--skip-existing", "--json")
    assert status == 0, stderr
    assert _json_lines(stdout)[0]["status"] == "converted"
    assert (out / "scan_BWmask.nrrd").read_bytes() == good_mask
    assert sorted(p.name for p in out.iterdir()) == ["scan_BWmask.nrrd", "scan_metadata.json"]


# ---------------------------------------------------------------------------------------------------
# 8. --skip-existing verifies; CSV cells are not formulas
# ---------------------------------------------------------------------------------------------------


def test_point8_skip_existing_verifies_files_and_metadata_and_csv_cells_are_not_formulas(tmp_path, capsys):
    src = _aim(tmp_path / "in.AIM")
    out = tmp_path / "out"
    assert run(capsys, "convert", src, "-o", out, "--statistics")[0] == 0
    good = _snapshot(out)

    def rerun():
        status, stdout, stderr = run(capsys, "convert", src, "-o", out, "--statistics", "--skip-existing",
                                     "--json", "--summary", tmp_path / "s.csv", "--overwrite")
        assert status == 0, stderr
        [record] = _json_lines(stdout)
        return record

    assert rerun()["status"] == "skipped"
    (out / "in_HU.nrrd").write_bytes(b"")                       # a 0-byte HU file
    assert rerun()["status"] == "converted"
    assert _snapshot(out)["in_HU.nrrd"] == good["in_HU.nrrd"]

    hu = bytearray((out / "in_HU.nrrd").read_bytes())           # same size, other voxels
    hu[-3] ^= 0xFF
    (out / "in_HU.nrrd").write_bytes(bytes(hu))
    assert rerun()["status"] == "converted"

    meta = json.loads((out / "in_metadata.json").read_text())   # hand-edited statistics
    true_mean = meta["statistics"]["hu_mean"] if "hu_mean" in meta["statistics"] else None
    key = next(k for k, v in meta["statistics"].items() if isinstance(v, float))
    meta["statistics"][key] = 12345.0
    meta["header"]["scanner"]["scanner_type"] = "=HYPERLINK(\"http://x\")"
    (out / "in_metadata.json").write_text(json.dumps(meta, indent=2))
    record = rerun()
    assert record["status"] == "converted" and record["stats"][key] != 12345.0
    del true_mean

    from ScancoUnitsLib.batch.summary import summary_csv_text

    result = FileResult("=cmd|' /C calc'!A0.AIM", "failed", error="+danger", warnings=["@SUM(1)", "-2+3"],
                        facts={"scanner_type": "=1+1", "scanner_id": -7, "voxel_size_x_mm": "-0.5"})
    [row] = list(csv.DictReader(io.StringIO(summary_csv_text([result]))))
    for column in ("input", "error", "warnings", "scanner_type"):
        assert not row[column].startswith(("=", "+", "-", "@")), (column, row[column])
        assert row[column][1:] in (result.input, result.error, "@SUM(1); -2+3", "=1+1")
    assert row["scanner_id"] == "-7" and row["voxel_size_x_mm"] == "-0.5"  # numbers stay numbers


# ---------------------------------------------------------------------------------------------------
# 15. the output folder is swept at the start of every run; host and boot must both match
# ---------------------------------------------------------------------------------------------------


def _fake_partial(folder: Path, final_name: str, **change) -> Path:
    me = writer_identity._this_writer()
    fields = {"host": me.host, "boot": me.boot, "pid": me.pid, "start": me.start + 1}  # our pid, gone process
    fields.update(change)
    writer = writer_identity.Writer(**fields)
    path = folder / f".{final_name}.partial-{writer.text}-0123abcd"
    path.write_bytes(b"left over")
    return path


def test_point15_every_run_sweeps_its_folder_and_needs_host_and_boot_to_match(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stale = _fake_partial(out, "other_HU.nrrd")                            # another input's, this boot
    other_boot = _fake_partial(out, "other_RHO.nrrd", boot="0badb007")     # same host name, other boot
    other_host = _fake_partial(out, "other_BWmask.nrrd", host="0a0b0c0d")
    src = _aim(tmp_path / "in.AIM")
    status, _, stderr = run(capsys, "convert", src, "-o", out)
    assert status == 0, stderr
    assert not stale.exists()
    assert other_boot.exists() and other_host.exists()
    assert stale.name in stderr and "removed" in stderr
    assert atomic_output.scan_partials(out).foreign == sorted([other_boot, other_host])


def test_point7_no_fsync_opts_out_of_waiting_for_the_disk(tmp_path, monkeypatch, capsys):
    src = _aim(tmp_path / "scan.AIM")
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic_output.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    assert run(capsys, "convert", src, "-o", tmp_path / "a", "--no-fsync")[0] == 0
    assert calls == []
    meta = json.loads((tmp_path / "a" / "scan_metadata.json").read_text())
    assert meta["options"]["fsync"] is False and set(meta["files"]) == {"scan_HU.nrrd", "scan_RHO.nrrd",
                                                                        "scan_BWmask.nrrd"}
    assert run(capsys, "convert", src, "-o", tmp_path / "b")[0] == 0
    assert len(calls) >= 5  # four files and the folder, by default
    # the flag does not change the bytes: a set made without fsync is up to date for a run with it
    status, stdout, _ = run(capsys, "convert", src, "-o", tmp_path / "a", "--skip-existing", "--json")
    assert status == 0 and _json_lines(stdout)[0]["status"] == "converted"  # --json asks for statistics
    status, stdout, _ = run(capsys, "convert", src, "-o", tmp_path / "a", "--skip-existing", "--json",
                            "--no-fsync")
    assert status == 0 and _json_lines(stdout)[0]["status"] == "skipped"
