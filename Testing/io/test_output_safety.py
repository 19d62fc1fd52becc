"""Output safety (issue 10): leftovers of killed runs, long names, inputs never written over, every
collision found up front, --overwrite replacing a whole earlier output set, inputs that are not
regular files.

Guarantees checked here:

* temporary names carry their writer (host, boot, pid, process start time); ``sweep_stale_partials``
  removes exactly the files of writers that are provably gone (a real child killed with SIGKILL),
  never those of a live process, nor of another host or boot, and leaves (and reports) files it cannot
  attribute;
* any legal final name (<= 255 bytes) works: long names get a shortened, hashed temporary name that
  stays hidden and attributable;
* an output that is (the same file as) a protected input is refused before anything is written,
  whatever ``overwrite`` says;
* ``check_free`` reports the first existing output before anything is read;
* ``previous_outputs`` + ``replace_also`` remove an earlier output set's files at commit, all or nothing;
* FIFOs, devices and folders given as inputs are refused at once, naming the file and what it is.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ScancoUnitsLib as S
from ScancoUnitsLib.io import transaction as atomic_output
from ScancoUnitsLib.io import partials, writer_identity
from ScancoUnitsLib.io.transaction import (
    AtomicOutputSet,
    OutputError,
    OutputExistsError,
    OutputIsInputError,
    previous_outputs,
    scan_partials,
    sweep_stale_partials,
    writer_id,
)
from ScancoUnitsLib.pipeline.convert import convert_file, stem_file_names
from ScancoUnitsLib.errors import ScancoFormatError
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.formats.reader import open_voxels, read_header

REPO = Path(__file__).resolve().parents[2]
CAL = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                  density_unit="mg HA/ccm", calibration_type=2, calibration_text="output safety")
VOLUME = np.arange(-200, 280, 4, dtype=np.int16).reshape(4, 5, 6)


def names(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# every test must leave no registered temporary file or folder (the fixture lives in conftest.py)
pytestmark = pytest.mark.usefixtures("no_leftover_registry")


# ---------------------------------------------------------------------------------------------------
# 1. leftovers of a killed run
# ---------------------------------------------------------------------------------------------------

_WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from ScancoUnitsLib.io.transaction import AtomicOutputSet
    out, stem = Path(sys.argv[2]), sys.argv[3]
    with AtomicOutputSet() as outputs:
        f = outputs.add(out / f"{stem}_HU.nrrd")
        outputs.add(out / f"{stem}_metadata.json", "w", encoding="utf-8").write("{}")
        f.write(b"x" * 100_000)
        f.flush()
        print("ready", flush=True)
        sys.stdin.readline()      # the test says when to finish (or kills us before)
        f.write(b"y")
    print("done", flush=True)
""")


def _start_writer(folder: Path, stem: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(REPO / "ScancoUnits"), str(folder), stem],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_sigkilled_writer_is_swept_and_live_writers_are_not(tmp_path):
    killed = _start_writer(tmp_path, "killed")
    live = _start_writer(tmp_path, "live")
    try:
        with AtomicOutputSet() as ours:  # this process is a live writer too
            ours.add(tmp_path / "ours.bin").write(b"o")
            killed.kill()  # SIGKILL mid-write: no handler runs
            killed.wait(timeout=20)
            assert killed.returncode == -signal.SIGKILL
            left = [n for n in names(tmp_path) if n.startswith(".killed_")]
            assert len(left) == 2 and all(".partial-" in n for n in left)
            assert all(f"-{killed.pid}-" in n for n in left)  # the name says who wrote it

            removed = sweep_stale_partials(tmp_path)

            assert sorted(p.name for p in removed) == sorted(left)
            remaining = names(tmp_path)
            assert not [n for n in remaining if n.startswith(".killed_")]
            assert len([n for n in remaining if n.startswith(".live_")]) == 2  # the live child's files
            assert len([n for n in remaining if n.startswith(".ours.bin.partial-")]) == 1
            assert sweep_stale_partials(tmp_path) == []
        live.stdin.write("go\n")
        live.stdin.flush()
        assert live.stdout.readline().strip() == "done"
        live.wait(timeout=20)
    finally:
        for child in (killed, live):
            if child.poll() is None:
                child.kill()
                child.wait()
    assert live.returncode == 0
    assert names(tmp_path) == ["live_HU.nrrd", "live_metadata.json", "ours.bin"]
    assert (tmp_path / "live_HU.nrrd").stat().st_size == 100_001


def _fake_partial(folder: Path, final_name: str, *, host=None, boot=None, pid=None, start=None,
                  mark=".partial-") -> Path:
    me = writer_identity._this_writer()
    writer = writer_identity.Writer(host or me.host, boot or me.boot, me.pid if pid is None else pid,
                                    me.start if start is None else start)
    path = folder / f".{final_name}{mark}{writer.text}-0123abcd"
    path.write_bytes(b"left over")
    return path


def test_writer_attribution_rules(tmp_path):
    me = writer_identity._this_writer()
    assert writer_id() == f"{me.host}{me.boot}-{os.getpid()}-{me.start}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sleeper_start = writer_identity._proc_stat(sleeper.pid)[1]
        live_other = _fake_partial(tmp_path, "a_HU.nrrd", pid=sleeper.pid, start=sleeper_start)
        reused_pid = _fake_partial(tmp_path, "b_HU.nrrd", pid=sleeper.pid, start=sleeper_start + 1)
        ours_reused = _fake_partial(tmp_path, "c_HU.nrrd", start=me.start + 7)  # our pid, earlier process
        other_boot = _fake_partial(tmp_path, "d_HU.nrrd", boot="0badb007", mark=".previous-")
        other_host = _fake_partial(tmp_path, "e_HU.nrrd", host="0a0b0c0d")
        legacy = tmp_path / ".f_HU.nrrd.partial-89abcdef"
        legacy.write_bytes(b"unknown writer")
        finished = tmp_path / "g_HU.nrrd"
        finished.write_bytes(b"a finished output")

        scan = scan_partials(tmp_path)
        assert scan.live == [live_other]
        assert sorted(scan.stale) == sorted([reused_pid, ours_reused])
        # another boot of a host of the same name may be another machine sharing the folder: never judged
        assert sorted(scan.foreign) == sorted([other_boot, other_host, legacy])

        assert sweep_stale_partials(tmp_path, stem="b") == [reused_pid]  # stem: only that input's files
        with pytest.warns(UserWarning, match=r"3 temporary file\(s\) of another host or boot"):
            removed = sweep_stale_partials(tmp_path)
        assert sorted(removed) == sorted([ours_reused])
        assert names(tmp_path) == sorted([live_other.name, other_boot.name, other_host.name, legacy.name,
                                          finished.name])
    finally:
        sleeper.kill()
        sleeper.wait()
    # the sleeper is gone now: its file is provably stale
    assert sweep_stale_partials(tmp_path, stem="a") == [live_other]


def test_zombie_writer_counts_as_gone(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = writer_identity._proc_stat(child.pid)
    deadline = time.time() + 20
    while isinstance(start, tuple) and start[0] != "Z" and time.time() < deadline:
        time.sleep(0.02)
        start = writer_identity._proc_stat(child.pid)
    try:
        if not isinstance(start, tuple):
            pytest.skip("no /proc here")
        path = _fake_partial(tmp_path, "z_HU.nrrd", pid=child.pid, start=start[1])
        assert sweep_stale_partials(tmp_path) == [path]  # exited, not yet reaped
    finally:
        child.wait()


# ---------------------------------------------------------------------------------------------------
# 2. long names
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("final_name", [
    "s" * 225 + "_metadata.json",                       # 239 bytes: the temporary name used to be 262
    "x" * 250 + ".nrrd",                                # exactly 255 bytes
    "\u00e9" * 120 + "_HU.nrrd",                        # 248 bytes of UTF-8 in 128 characters
])
def test_any_legal_final_name_works(tmp_path, final_name):
    assert len(os.fsencode(final_name)) <= 255
    with AtomicOutputSet() as outputs:
        f = outputs.add(tmp_path / final_name)
        f.write(b"new")
        temp = Path(f.name)
        assert temp.name.startswith(".") and len(os.fsencode(temp.name)) <= 255
        assert f"-{os.getpid()}-" in temp.name  # still attributable
        assert scan_partials(tmp_path).live == [temp]
    assert names(tmp_path) == [final_name]
    # replacing it makes a backup name of the same length: that works too
    with AtomicOutputSet(overwrite=True) as outputs:
        outputs.add(tmp_path / final_name).write(b"newer")
    assert names(tmp_path) == [final_name] and (tmp_path / final_name).read_bytes() == b"newer"


def test_long_stem_conversion_and_stale_sweep_by_stem(tmp_path):
    stem = "s" * 225
    src = Path(S.write_isq(tmp_path / "in.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL))
    out = tmp_path / "out"
    written = convert_file(src, out, stem=stem, outputs=("hu", "mask"))
    assert sorted(p.name for p in written.values()) == sorted(
        [f"{stem}_HU.nrrd", f"{stem}_BWmask.nrrd", f"{stem}_metadata.json"])
    # a shortened temporary name of a dead writer is still found by its stem
    me = writer_identity._this_writer()
    dead = writer_identity.Writer(me.host, me.boot, me.pid, me.start + 1)
    shortened = partials._fit_name(f"{stem}_metadata.json", f".partial-{dead.text}-0123abcd")
    assert "~" in shortened and len(os.fsencode(shortened)) <= 255
    (out / shortened).write_bytes(b"left")
    assert sweep_stale_partials(out, stem="other") == []
    assert sweep_stale_partials(out, stem=stem) == [out / shortened]


# ---------------------------------------------------------------------------------------------------
# 3. never write over an input; 4. every collision up front
# ---------------------------------------------------------------------------------------------------


def _an_input(tmp_path: Path) -> Path:
    path = tmp_path / "scan.ISQ"
    path.write_bytes(b"precious input")
    return path


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("how", ["same path", "relative path", "hard link", "symlink"])
def test_protected_input_is_refused_before_anything_is_written(tmp_path, monkeypatch, overwrite, how):
    src = _an_input(tmp_path)
    if how == "same path":
        final = src
    elif how == "relative path":
        monkeypatch.chdir(tmp_path)
        final = Path("sub") / ".." / "scan.ISQ"
        (tmp_path / "sub").mkdir()
    elif how == "hard link":
        final = tmp_path / "scan_HU.nrrd"
        os.link(src, final)
    else:
        final = tmp_path / "link.nrrd"
        final.symlink_to(src)
    before = names(tmp_path)
    outputs = AtomicOutputSet(overwrite=overwrite, protected=[src])
    with pytest.raises(OutputIsInputError, match=r"is the input file .*scan\.ISQ") as info:
        outputs.check_free([tmp_path / "other.nrrd", final])
    assert info.value.input_path == str(src) and isinstance(info.value, OutputError)
    with pytest.raises(OutputIsInputError):
        with outputs:
            outputs.add(final).write(b"clobber")
    assert names(tmp_path) == before
    assert src.read_bytes() == b"precious input"


def test_protect_later_and_replace_also_cannot_name_an_input(tmp_path):
    src = _an_input(tmp_path)
    outputs = AtomicOutputSet(overwrite=True)
    outputs.add_path(tmp_path / "scan.ISQ")
    with pytest.raises(OutputIsInputError):
        outputs.protect([src])  # an output already added is the input
    outputs.abort()
    with pytest.raises(OutputIsInputError):
        AtomicOutputSet(overwrite=True, protected=[src], replace_also=[tmp_path / "x.json", src])
    with pytest.raises(ValueError, match="overwrite"):
        AtomicOutputSet(replace_also=[tmp_path / "x.json"])
    assert src.read_bytes() == b"precious input"


def test_check_free_reports_the_first_existing_output(tmp_path):
    (tmp_path / "s_RHO.nrrd").write_bytes(b"old")
    (tmp_path / "s_metadata.json").write_bytes(b"{}")
    planned = [tmp_path / n for n in ("s_HU.nrrd", "s_RHO.nrrd", "s_metadata.json", "s_report.png")]
    outputs = AtomicOutputSet()
    with pytest.raises(OutputExistsError, match=r"s_RHO\.nrrd: cannot write output: the file exists"):
        outputs.check_free(planned)
    assert names(tmp_path) == ["s_RHO.nrrd", "s_metadata.json"]  # nothing reserved, nothing written
    AtomicOutputSet(overwrite=True).check_free(planned)
    AtomicOutputSet().check_free(planned[:1] + planned[3:])


# ---------------------------------------------------------------------------------------------------
# 5. --overwrite replaces the whole earlier output set
# ---------------------------------------------------------------------------------------------------


def test_previous_outputs_of_a_real_conversion(tmp_path):
    src = Path(S.write_isq(tmp_path / "in.isq", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL))
    out = tmp_path / "out"
    convert_file(src, out, outputs=("hu", "density", "mask"), detached=True, compress=True)
    (out / "in_report.png").write_bytes(b"png")  # named like ours, but no run of ours recorded it
    (out / "other_HU.nrrd").write_bytes(b"another input's")
    refused = []
    listed = previous_outputs(out / "in_metadata.json", stem_file_names("in"), refused=refused)
    assert sorted(p.name for p in listed) == sorted([
        "in_metadata.json", "in_HU.nhdr", "in_HU.raw.gz", "in_RHO.nhdr", "in_RHO.raw.gz",
        "in_BWmask.nhdr", "in_BWmask.raw.gz"])
    assert all(p.parent == out for p in listed)
    assert refused == [out / "in_report.png"]
    (out / "in_HU.raw.gz").write_bytes(b"edited since")  # no longer the file that run recorded
    assert "in_HU.raw.gz" not in [p.name for p in previous_outputs(out / "in_metadata.json")]


@pytest.mark.parametrize("text", ["{broken", "[]", '{"outputs": 3}', '{"outputs": {"hu": "x"}}',
                                  '{"outputs": {"hu": {"file": "../in.isq"}, "mu": {"file": "/etc/passwd"}}}'])
def test_previous_outputs_is_tolerant(tmp_path, text):
    (tmp_path / "sub").mkdir()
    meta = tmp_path / "sub" / "s_metadata.json"
    meta.write_text(text)
    (tmp_path / "in.isq").write_bytes(b"x")
    listed = previous_outputs(meta)
    assert listed in ([], [meta])  # never a file outside the folder, never a crash
    if text.startswith("{broken") or text == "[]":
        assert listed == []
    assert previous_outputs(tmp_path / "missing_metadata.json") == []


def _earlier_set(folder: Path):
    for name in ("s_HU.nrrd", "s_BWmask.nhdr", "s_BWmask.raw", "s_metadata.json", "s_report.png"):
        (folder / name).write_bytes(b"old " + name.encode())
    (folder / "s_BWmask.nhdr").write_text("NRRD0004\ntype: uint8\ndata file: s_BWmask.raw\n")
    recorded = {n: atomic_output.fingerprint(folder / n)
                for n in ("s_HU.nrrd", "s_BWmask.nhdr", "s_BWmask.raw", "s_report.png")}
    (folder / "s_metadata.json").write_text(json.dumps(
        {"outputs": {"hu": {"file": "s_HU.nrrd"}, "mask": {"file": "s_BWmask.nhdr"}}, "files": recorded}))
    return previous_outputs(folder / "s_metadata.json")


def test_replace_also_removes_the_earlier_set_at_commit(tmp_path):
    stale = _earlier_set(tmp_path)
    assert len(stale) == 5
    with AtomicOutputSet(overwrite=True, replace_also=stale) as outputs:
        outputs.add(tmp_path / "s_HU.nrrd").write(b"new HU")
        outputs.add(tmp_path / "s_metadata.json", "w", encoding="utf-8").write("{}")
        assert len(names(tmp_path)) == 7  # nothing removed before commit
    assert names(tmp_path) == ["s_HU.nrrd", "s_metadata.json"]
    assert (tmp_path / "s_HU.nrrd").read_bytes() == b"new HU"


def test_replace_also_is_all_or_nothing(tmp_path, monkeypatch):
    stale = _earlier_set(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in names(tmp_path)}
    real_replace = os.replace

    def failing(src, dst):
        if Path(dst).name == "s_metadata.json" and ".partial-" in Path(src).name:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_output.os, "replace", failing)
    with pytest.raises(OutputError, match=r"s_metadata\.json: cannot write output: Input/output error"):
        with AtomicOutputSet(overwrite=True, replace_also=stale) as outputs:
            outputs.add(tmp_path / "s_HU.nrrd").write(b"new HU")
            outputs.add(tmp_path / "s_metadata.json", "w", encoding="utf-8").write("{}")
    assert {n: (tmp_path / n).read_bytes() for n in names(tmp_path)} == before  # all restored, no backup


# ---------------------------------------------------------------------------------------------------
# 7. inputs that are not regular files
# ---------------------------------------------------------------------------------------------------


def _refused_quickly(func, path):
    """Call func(path) in a thread; it must raise at once. A blocked FIFO open is freed afterwards."""
    outcome = {}

    def run():
        try:
            func(path)
            outcome["result"] = "returned"
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["result"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # the old code blocks in open() of a FIFO: give it a writer, then fail
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5)
        pytest.fail(f"{func.__name__}({path}) blocked")
    return outcome["result"]


@pytest.mark.parametrize("func", [read_header, open_voxels])
@pytest.mark.parametrize("kind, problem", [
    ("fifo", "is a named pipe (FIFO), not a regular file"),
    ("char device", "is a character device, not a regular file"),
    ("folder", "is a folder, not a file"),
])
def test_not_regular_inputs_are_refused_at_once(tmp_path, func, kind, problem):
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        path = tmp_path / "C0001.ISQ"
        os.mkfifo(path)
    elif kind == "char device":
        path = Path("/dev/null")
        if not path.exists() or not stat.S_ISCHR(path.stat().st_mode):
            pytest.skip("no /dev/null character device")
    else:
        path = tmp_path / "x.ISQ"
        path.mkdir()
    error = _refused_quickly(func, path)
    assert isinstance(error, ScancoFormatError), error
    assert str(error) == f"{path}: {problem}"


def test_overwrite_replaces_every_format_of_the_earlier_set(tmp_path):
    """An earlier run wrote NRRD and NIfTI; a run with --overwrite and NRRD only leaves no stale NIfTI."""
    pytest.importorskip("nibabel")
    import numpy as np

    from ScancoUnitsLib import Calibration, write_isq
    from ScancoUnitsLib.pipeline.convert import convert_file

    cal = Calibration(mu_scaling=4096, mu_water_per_cm=0.24, density_slope=1600.0, density_intercept=-390.0)
    src = write_isq(tmp_path / "in.isq", np.full((2, 3, 4), 9000, np.int16), voxel_size_mm=(0.03,) * 3,
                    calibration=cal)
    first = convert_file(src, tmp_path / "o", outputs=("hu", "mask"), formats=("nrrd", "nifti"))
    assert (tmp_path / "o" / "in_HU.nii").exists() and "hu_nifti" in first
    convert_file(src, tmp_path / "o", outputs=("hu",), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["in_HU.nrrd", "in_metadata.json"]
