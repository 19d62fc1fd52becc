"""Faults around a conversion: absurd headers, full disks, denied permissions, Ctrl-C and SIGTERM,
inputs that must stay untouched, and inputs sharing a name.

Guarantees checked here:

* physically absurd calibrations (mu_scaling 0, mu_water <= 0 or absurdly small, NaN/inf/absurd
  slope, ...) are refused with an error naming the field, or the outputs are all finite: no NaN or
  infinite voxel is ever written; zero/negative voxel sizes are refused;
* disk full and permission denied while writing: one line naming the input and the reason, nothing
  of that file left, the other files of the batch converted and intact;
* Ctrl-C / SIGTERM mid-file: exit status 130 / 143, no partial or temporary file, the finished
  files intact, the message names the signal and the file;
* inputs are opened read-only and keep their size, mtime and hash, also when the output folder is
  the input folder; inputs with the same stem in different folders get distinct outputs.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ScancoUnitsLib as S
from ScancoUnitsLib.io import transaction as atomic_output
from ScancoUnitsLib.formats import nrrd as nrrd_writer
from ScancoUnitsLib.pipeline.convert import convert_file
from ScancoUnitsLib.errors import CalibrationMissingError, ScancoFormatError
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.formats.reader import read_header
from ScancoUnitsLib.formats.vms import float_to_vax_f

from cli_harness import error_lines, run_cli

pytestmark = pytest.mark.usefixtures("in_process_cli")


@pytest.fixture(autouse=True)
def never_an_internal_error(monkeypatch):
    """Every command line run of this suite (full disks, signals, absurd headers, hostile names, read
    errors): "internal error" or a traceback on stdout or stderr fails the test (issue 19)."""
    checked_run = run_cli

    def run(capsys, *argv):
        status, out, err = checked_run(capsys, *argv)
        for text in (out, err):
            assert "internal error" not in text and "Traceback" not in text, f"{argv}: {text[-500:]}"
        return status, out, err

    monkeypatch.setitem(globals(), "run_cli", run)

CAL = Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
                  density_unit="mg HA/ccm", calibration_type=2, calibration_text="70 kVp, faults test")
VOLUME = np.concatenate([np.array([-32768, -1, 0, 1, 32767], np.int16),
                         np.arange(-2000, 9000, 80, dtype=np.int16)])[:5 * 4 * 6].reshape(5, 4, 6)
ALL_OUTPUTS = ("hu", "density", "mu", "mask", "native")


def fingerprint(path: Path):
    st_ = path.stat()
    return st_.st_size, st_.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def hashes(folder: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(folder: Path):
    return [n for n in os.listdir(folder) if ".partial-" in n or ".previous-" in n]


def nrrd_outputs_finite(outputs) -> None:
    for role, path in outputs.items():
        if str(path).endswith(".nrrd"):
            data, _ = nrrd.read(str(path))
            assert np.isfinite(data).all(), f"{role} output holds NaN or infinite voxels"


# ---------------------------------------------------------------------------------------------------
# physically absurd headers
# ---------------------------------------------------------------------------------------------------

ABSURD = [
    ("mu_scaling 0", dict(mu_scaling=0), "mu_scaling"),
    ("mu_scaling negative", dict(mu_scaling=-4096), "mu_scaling"),
    ("mu_water 0", dict(mu_water_per_cm=0.0), "mu_water"),
    ("mu_water negative", dict(mu_water_per_cm=-0.3), "mu_water"),
    ("mu_water 1e-300", dict(mu_water_per_cm=1e-300), "mu_water"),
    ("mu_water 1e300", dict(mu_water_per_cm=1e300), "mu_water"),
    ("slope 0", dict(density_slope=0.0), "density slope"),
    ("slope 1e300", dict(density_slope=1e300), "density slope"),
    ("slope -1e300", dict(density_slope=-1e300), "density slope"),
    ("slope 1e-300", dict(density_slope=1e-300), "density slope"),
    ("intercept 1e300", dict(density_intercept=1e300), "density intercept"),
]


def _with(**changes) -> Calibration:
    values = {f: getattr(CAL, f) for f in ("mu_scaling", "mu_water_per_cm", "density_slope", "density_intercept",
                                          "density_unit", "calibration_type", "calibration_text")}
    values.update(changes)
    return Calibration(**values)


def _write(fmt: str, path: Path, calibration: Calibration) -> Path:
    if fmt == "isq":
        return Path(S.write_isq(path, VOLUME, voxel_size_mm=(0.01,) * 3, calibration=calibration))
    return Path(S.write_aim(path, VOLUME, version=30 if fmt == "aim30" else 20, voxel_size_mm=(0.01,) * 3,
                            calibration=calibration))


@pytest.mark.parametrize("fmt", ["isq", "aim20", "aim30"])
@pytest.mark.parametrize("label, change, field_name", ABSURD, ids=[a[0] for a in ABSURD])
def test_absurd_calibration_refused_or_finite(tmp_path, fmt, label, change, field_name):
    p = _write(fmt, tmp_path / f"x.{fmt[:3]}", _with(**change))
    out = tmp_path / "out"
    with pytest.raises(CalibrationMissingError) as info:
        convert_file(p, out, outputs=ALL_OUTPUTS, hu_dtype="float32")
    message = str(info.value)
    assert "\n" not in message and str(p) in message and field_name in message
    assert not out.exists() or os.listdir(out) == []
    # what needs no calibration still works, and is finite
    outputs = convert_file(p, out, outputs=("native", "mask"))
    nrrd_outputs_finite(outputs)


def test_nan_and_infinite_constants_in_files_are_absent_not_used(tmp_path):
    # AIM log text "nan" / "inf" / "1e400"; ISQ VAX G bytes that decode to inf or a reserved operand
    for token in ("nan", "inf", "-inf", "1e400", "NaN"):
        log = (f"{'Mu_Scaling':<41}  4096\n{'HU: mu water':<41}  {token}\n{'Density: slope':<41}  {token}\n"
               f"{'Density: intercept':<41}  -196.6\n")
        p = Path(S.write_aim(tmp_path / "n.aim", VOLUME, voxel_size_mm=(0.01,) * 3, processing_log=log))
        cal = read_header(p).calibration
        assert cal.mu_water_per_cm is None and cal.density_slope is None
        with pytest.raises(CalibrationMissingError, match="mu_water"):
            convert_file(p, tmp_path / "o", outputs=("hu",))
        p.unlink()
    p = _write("isq", tmp_path / "g.isq", CAL)
    data = bytearray(p.read_bytes())
    cal_block = 3 * 512
    data[cal_block + 688: cal_block + 696] = b"\xf0\x7f" + b"\x00" * 6  # exponent all ones
    data[cal_block + 664: cal_block + 672] = b"\x00\x80" + b"\x00" * 6  # reserved operand
    p.write_bytes(bytes(data))
    cal = read_header(p).calibration
    assert cal.density_slope is None
    assert cal.mu_water_per_cm is None or math.isfinite(cal.mu_water_per_cm)
    with pytest.raises(CalibrationMissingError):
        convert_file(p, tmp_path / "o2", outputs=("hu", "density"))


extreme = st.one_of(st.sampled_from([0.0, -0.0, 1e-320, 5e-324, 1e-300, 1e-30, 1e-5, 1e5, 1e30, 1e300, 1.7e308,
                                     -1e-300, -1e300, -1.0, 1.0, 1.0000001]),
                    st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mu_scaling=st.one_of(st.sampled_from([0, 1, 2, 4096, 10**9, 2**31 - 1, -5]), st.integers(-2**31, 2**31 - 1)),
       mu_water=extreme, slope=extreme, intercept=extreme, hu_dtype=st.sampled_from(["int16", "float32"]),
       version=st.sampled_from([20, 30]))
def test_no_nan_or_infinite_volume_whatever_the_calibration(tmp_path_factory, mu_scaling, mu_water, slope, intercept,
                                                            hu_dtype, version):
    tmp = tmp_path_factory.mktemp("cal")
    cal = Calibration(mu_scaling=mu_scaling, mu_water_per_cm=mu_water, density_slope=slope,
                      density_intercept=intercept, density_unit="mg HA/ccm")
    p = Path(S.write_aim(tmp / "c.aim", VOLUME, version=version, voxel_size_mm=(0.01,) * 3, calibration=cal))
    for outputs in (("hu",), ("density",), ("mu",)):
        out = tmp / "-".join(outputs)
        try:
            written = convert_file(p, out, outputs=outputs, hu_dtype=hu_dtype)
        except CalibrationMissingError as exc:
            assert "\n" not in str(exc)
            assert not out.exists() or os.listdir(out) == []
            continue
        nrrd_outputs_finite(written)
        meta = json.loads(Path(written["metadata"]).read_text())  # strict JSON: no NaN/Infinity
        assert meta["outputs"]


@pytest.mark.parametrize("fmt, offset, fmt_code, value", [
    ("isq", 56, "<i", 0), ("isq", 60, "<i", -600), ("isq", 64, "<i", 0),
    ("aim20", 20 + 108, "raw", b"\x00\x00\x00\x00"),          # VAX F zero
    ("aim20", 20 + 112, "raw", None),                          # VAX F -0.01
    ("aim30", 56 + 184, "<q", 0), ("aim30", 56 + 192, "<q", -10000),
])
def test_zero_or_negative_voxel_size_refused(tmp_path, capsys, fmt, offset, fmt_code, value):
    p = _write(fmt, tmp_path / f"v.{fmt[:3]}", CAL)
    data = bytearray(p.read_bytes())
    if fmt_code == "raw":
        data[offset:offset + 4] = value if value is not None else float_to_vax_f(-0.01)
    else:
        struct.pack_into(fmt_code, data, offset, value)
    p.write_bytes(bytes(data))
    with pytest.raises(ScancoFormatError, match="not positive"):
        read_header(p)
    status, _, err = run_cli(capsys, "convert", p, "-o", tmp_path / "o")
    assert status == 1
    [line] = error_lines(err)
    assert p.name in line and "not positive" in line
    assert os.listdir(tmp_path / "o") == []


# ---------------------------------------------------------------------------------------------------
# disk full, permission denied
# ---------------------------------------------------------------------------------------------------


def _three_inputs(folder: Path):
    folder.mkdir(exist_ok=True)
    return [_write("isq", folder / f"{name}.isq", CAL) for name in ("a", "b", "c")]


def _check_batch_after_fault(out: Path, status, stdout, err, reason: str):
    assert status == 1
    lines = error_lines(err)
    assert len(lines) == 1, err
    [line] = lines
    assert "b.isq" in line and reason in line, line
    assert "Traceback" not in err
    names = sorted(os.listdir(out))
    assert leftovers(out) == []
    assert not [n for n in names if n.startswith("b_")], names
    for stem in ("a", "c"):
        mine = [n for n in names if n.startswith(f"{stem}_")]
        assert len(mine) == 4, names
        meta = json.loads((out / f"{stem}_metadata.json").read_text())
        hu, _ = nrrd.read(str(out / f"{stem}_HU.nrrd"))
        assert hu.shape == VOLUME.shape[::-1] and meta["input"]["path"].endswith(f"{stem}.isq")
    assert "2 converted, 1 failed" in stdout
    assert any("b.isq" in row and "failed" in row for row in stdout.splitlines())


def test_disk_full_mid_file(tmp_path, capsys, monkeypatch):
    inputs = _three_inputs(tmp_path / "in")
    real = nrrd_writer._write_all
    calls = {"n": 0}

    def filling_up(fileobj, data):
        if ".b_" in os.path.basename(getattr(fileobj, "name", "")):
            calls["n"] += 1
            if calls["n"] >= 2:  # header written, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fileobj, data)

    monkeypatch.setattr(nrrd_writer, "_write_all", filling_up)
    out = tmp_path / "out"
    status, stdout, err = run_cli(capsys, "convert", *inputs, "-o", out, "--slab-slices", "1")
    _check_batch_after_fault(out, status, stdout, err, "No space left on device")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("which", ["nrrd", "metadata"])
def test_real_enospc_from_dev_full(tmp_path, capsys, monkeypatch, which):
    """Every write of b's outputs (or only of its metadata JSON, the last file committed) goes to
    /dev/full, which answers with ENOSPC: b's NRRDs must disappear with it."""
    inputs = _three_inputs(tmp_path / "in")

    def opener(path, *args, **kwargs):
        name = os.path.basename(os.fspath(path))
        hit = name.startswith(".b_") and (which == "nrrd" or "_metadata.json" in name)
        return builtins.open("/dev/full" if hit else path, *args, **kwargs)

    monkeypatch.setattr(atomic_output, "open", opener, raising=False)
    out = tmp_path / "out"
    status, stdout, err = run_cli(capsys, "convert", *inputs, "-o", out)
    _check_batch_after_fault(out, status, stdout, err, "No space left on device")


class _FillingFile:
    """A binary output file that answers its ``fail_at``-th write with ENOSPC (a disk filling up).

    Raw NRRD slabs are written by ``os.pwrite`` on the file's descriptor (the engine's workers write
    at known offsets), not through this object: :func:`_filling_pwrite` counts those writes here too.
    """

    by_fd: dict = {}

    def __init__(self, real, fail_at: int):
        self._real, self._fail_at, self._writes = real, fail_at, 0
        self._lock = threading.Lock()
        _FillingFile.by_fd[real.fileno()] = self

    def count_write(self) -> None:
        with self._lock:
            self._writes += 1
            if self._writes >= self._fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data):
        self.count_write()
        return self._real.write(data)

    def close(self):
        if _FillingFile.by_fd.get(self._real.fileno() if not self._real.closed else -1) is self:
            del _FillingFile.by_fd[self._real.fileno()]  # the descriptor's number is reused next
        self._real.close()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.mark.parametrize("victim, fail_at", [("_HU", 2), ("_RHO", 3), ("_BWmask", 4)])
def test_enospc_on_the_nth_write_names_the_folder(tmp_path, capsys, monkeypatch, victim, fail_at):
    inputs = _three_inputs(tmp_path / "in")

    def opener(path, mode="r", *args, **kwargs):
        real = builtins.open(path, mode, *args, **kwargs)
        hit = os.path.basename(os.fspath(path)).startswith(f".b{victim}") and "b" in mode
        return _FillingFile(real, fail_at) if hit else real

    real_pwrite_all = nrrd_writer._pwrite_all

    def filling_pwrite_all(fd, data, offset, *seek_lock):
        filling = _FillingFile.by_fd.get(fd)
        if filling is not None:
            filling.count_write()
        real_pwrite_all(fd, data, offset, *seek_lock)

    monkeypatch.setattr(_FillingFile, "by_fd", {})
    monkeypatch.setattr(atomic_output, "open", opener, raising=False)
    monkeypatch.setattr(nrrd_writer, "_pwrite_all", filling_pwrite_all)
    out = tmp_path / "out"
    status, stdout, err = run_cli(capsys, "convert", *inputs, "-o", out, "--slab-slices", "1")
    _check_batch_after_fault(out, status, stdout, err, f"No space left on device in {out}")
    assert "internal error" not in err


def test_a_failing_writer_does_not_close_the_files_other_threads_write(tmp_path, monkeypatch):
    """Two writers of one output set, each in its own thread (as in a conversion): the first hits a
    full disk while the second is in the middle of a write. The second write must still find its file
    open (it used to fail with 'ValueError: write to closed file', which then reached the user as an
    internal error); the set then refuses to commit with the full-disk error, and the owner's abort
    removes everything."""
    from ScancoUnitsLib.formats.nrrd import NrrdVolumeWriter

    real = nrrd_writer._write_all
    second_writing, first_failed = threading.Event(), threading.Event()

    def write_all(fileobj, data):
        name = os.path.basename(getattr(fileobj, "name", ""))
        if name.startswith(".s_HU") and second_writing.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if name.startswith(".s_RHO") and isinstance(data, memoryview):  # a slab, not the header (bytes)
            second_writing.set()
            first_failed.wait(10)
        real(fileobj, data)

    monkeypatch.setattr(nrrd_writer, "_write_all", write_all)
    results = {}
    outputs = atomic_output.AtomicOutputSet()
    writers = {role: NrrdVolumeWriter(tmp_path / f"s_{role}.nrrd", (2, 8, 8), np.float32, spacing_mm=(1, 1, 1),
                                      atomic=outputs) for role in ("HU", "RHO")}

    def run(role):
        try:
            writers[role].write_slab(np.zeros((2, 8, 8), np.float32))
            results[role] = "ok"
        except BaseException as exc:  # noqa: BLE001 - checked below
            results[role] = exc
        finally:
            if role == "HU":
                first_failed.set()

    threads = [threading.Thread(target=run, args=(role,)) for role in ("RHO", "HU")]
    threads[0].start()
    assert second_writing.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(20)
    assert isinstance(results["HU"], atomic_output.OutputError)
    assert results["RHO"] == "ok", results["RHO"]
    with pytest.raises(atomic_output.OutputError) as info:
        outputs.commit()
    assert str(info.value) == str(results["HU"])
    assert f"No space left on device in {tmp_path}" in str(info.value)
    assert outputs.state == "aborted"
    assert os.listdir(tmp_path) == []


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def test_full_tmpfs_always_says_no_space(tmp_path, capsys):
    """Many runs into a 4 MB file system with --compress and the default outputs (incompressible
    data, 10 MB of outputs): every run must report the full disk with the folder, never an internal
    error, and leave nothing behind. Before the fix about 1 run in 10 said 'write to closed file'."""
    rng = np.random.default_rng(10)
    volume = rng.integers(-2000, 9000, size=(48, 256, 128), dtype=np.int16)
    src = S.write_isq(tmp_path / "r.isq", volume, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    out = tmp_path / "small"
    if not _mount_tmpfs(out, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        for run in range(20):
            status, _, err = run_cli(capsys, "convert", src, "-o", out, "--compress")
            [line] = error_lines(err)
            assert status == 1 and f"No space left on device in {out}" in line, (run, line)
            assert "internal error" not in err and "Traceback" not in err
            assert os.listdir(out) == [], (run, os.listdir(out))
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_permission_denied_on_output(tmp_path, capsys, monkeypatch):
    inputs = _three_inputs(tmp_path / "in")
    real = atomic_output._create_exclusive

    def denied(path):
        if os.path.basename(os.fspath(path)).startswith(".b_RHO"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(atomic_output, "_create_exclusive", denied)
    out = tmp_path / "out"
    status, stdout, err = run_cli(capsys, "convert", *inputs, "-o", out)
    _check_batch_after_fault(out, status, stdout, err, "Permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(tmp_path, capsys):  # pragma: no cover - only as non-root
    inputs = _three_inputs(tmp_path / "in")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        status, _, err = run_cli(capsys, "convert", *inputs, "-o", out)
    finally:
        out.chmod(0o755)
    assert status == 1 and len(error_lines(err)) == 3
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM (a real process)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_with_big_file(tmp_path_factory):
    """a.isq (tiny), big.isq (64 MB: converting it takes about a second), c.isq (tiny)."""
    from ScancoUnitsLib.formats.isq import IsqWriter
    from ScancoUnitsLib.phantom import PHANTOM_CALIBRATION, phantom_slabs

    folder = tmp_path_factory.mktemp("signal-inputs")
    slab = next(phantom_slabs((8, 512, 512), slices=8))
    with IsqWriter(folder / "big.isq", (512, 512, 128), voxel_size_mm=(0.02,) * 3,
                   calibration=PHANTOM_CALIBRATION) as writer:
        for _ in range(16):
            writer.write_slab(slab)
    small = [_write("isq", folder / f"{name}.isq", CAL) for name in ("a", "c")]
    return [small[0], folder / "big.isq", small[1]]


def _interrupt_mid_file(inputs, out: Path, signum, extra=(), group=False):
    """Start a batch, send ``signum`` once big.isq's first temporary file exists (to the whole process
    group when ``group``, as a terminal's Ctrl-C does, worker processes included)."""
    out.mkdir()
    command = [sys.executable, "-m", "ScancoUnitsLib.cli.main", "convert", *map(str, inputs), "-o", str(out), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=group)
    finished_before = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = os.listdir(out)
            if any(n.startswith(".big_") and ".partial-" in n for n in names):
                break
            if process.poll() is not None:
                break
            time.sleep(0.002)
        if "--jobs" not in extra:  # sequential: a.isq is complete by now
            finished_before = {n: hashlib.sha256((out / n).read_bytes()).hexdigest()
                               for n in os.listdir(out) if n.startswith("a_")}
        assert process.poll() is None, "the conversion ended before it could be interrupted"
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "internal error" not in stdout + stderr and "Traceback" not in stdout + stderr, stderr[-500:]
    return process.returncode, stdout, stderr, finished_before


@pytest.mark.parametrize("signum, code, label", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_file_leaves_no_partial_output(batch_with_big_file, tmp_path, signum, code, label):
    out = tmp_path / "out"
    status, stdout, stderr, finished_before = _interrupt_mid_file(batch_with_big_file, out, signum)
    assert status == code, stderr
    names = sorted(os.listdir(out))
    assert leftovers(out) == [], names
    assert not [n for n in names if n.startswith("big_") or n.startswith("c_")], names
    assert len(finished_before) == 4
    assert {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names} == finished_before
    assert "Traceback" not in stderr
    assert f"interrupted by {label}" in stderr and "big.isq" in stderr
    assert "1 converted" in stdout and "not started" in stdout


def test_signal_while_a_temporary_file_is_being_created(tmp_path, capsys, monkeypatch):
    """The signal lands after the temporary file exists but before the output set knows it (the
    window inside AtomicOutputSet.add_path): nothing of that file may remain."""
    inputs = _three_inputs(tmp_path / "in")
    real = atomic_output._create_exclusive

    def create_then_interrupt(path):
        fd = real(path)
        if os.path.basename(os.fspath(path)).startswith(".b_RHO"):
            os.close(fd)
            raise atomic_output.Interrupted(signal.SIGTERM)
        return fd

    monkeypatch.setattr(atomic_output, "_create_exclusive", create_then_interrupt)
    out = tmp_path / "out"
    status, stdout, err = run_cli(capsys, "convert", *inputs, "-o", out)
    assert status == 143
    assert "interrupted by SIGTERM while converting b.isq" in err
    assert leftovers(out) == [], os.listdir(out)
    assert sorted(n for n in os.listdir(out) if not n.startswith("a_")) == []
    assert "1 converted" in stdout and "not started" in stdout


@pytest.mark.parametrize("signum, code, group", [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)],
                         ids=["SIGTERM-to-parent", "Ctrl-C-to-group"])
def test_interrupt_with_parallel_jobs(batch_with_big_file, tmp_path, signum, code, group):
    out = tmp_path / "out"
    status, stdout, stderr, _ = _interrupt_mid_file(batch_with_big_file, out, signum, ("--jobs", "2"), group)
    assert status == code, stderr
    assert leftovers(out) == []
    assert not [n for n in os.listdir(out) if n.startswith("big_")]
    for stem in {n.split("_")[0] for n in os.listdir(out)}:  # whatever finished is complete
        assert len([n for n in os.listdir(out) if n.startswith(f"{stem}_")]) == 4
    assert "Traceback" not in stderr and "interrupted by" in stderr and "big.isq" in stderr


# ---------------------------------------------------------------------------------------------------
# inputs are never touched; same stems
# ---------------------------------------------------------------------------------------------------


def _mixed_inputs(folder: Path):
    folder.mkdir(exist_ok=True)
    mask = (VOLUME > 0).astype(np.int8) * np.int8(127)
    paths = [_write("isq", folder / "C0001.ISQ;1", CAL), _write("aim20", folder / "T1.AIM", CAL),
             Path(S.write_aim(folder / "M1.aim", mask, voxel_size_mm=(0.01,) * 3, compression="binCmp"))]
    (folder / "BAD.ISQ").write_bytes(b"CTDATA-HEADER_V1" + b"\x01" * 600)
    return paths + [folder / "BAD.ISQ"]


def test_inputs_unchanged_and_opened_read_only(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "scans"
    inputs = _mixed_inputs(folder)
    for p in inputs:
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))  # an old mtime: changes show
    before = {p: fingerprint(p) for p in inputs}
    resolved = {os.path.realpath(p) for p in inputs}
    writes = []
    real_open, real_os_open = builtins.open, os.open

    def watching_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(file) in resolved \
                and any(c in mode for c in "wax+"):
            writes.append((file, mode))
        return real_open(file, mode, *args, **kwargs)

    def watching_os_open(path, flags, *args, **kwargs):
        if os.path.realpath(path) in resolved and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            writes.append((path, flags))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    monkeypatch.setattr(os, "open", watching_os_open)

    status, _, err = run_cli(capsys, "convert", folder, "-o", folder)        # output folder = input folder
    assert status == 1 and len(error_lines(err)) == 1                         # BAD.ISQ only
    first = hashes(folder)
    status, _, err = run_cli(capsys, "convert", folder, "-o", folder)        # again: outputs exist
    assert status == 1 and len(error_lines(err)) == 4
    assert hashes(folder) == first                                             # nothing replaced
    status, _, _ = run_cli(capsys, "convert", folder, "-o", tmp_path / "elsewhere", "--compress", "--detached")
    assert status == 1
    status, _, _ = run_cli(capsys, "convert", folder, "-o", folder, "--overwrite", "--outputs", "native,mask")
    assert status == 1

    assert writes == []
    assert {p: fingerprint(p) for p in inputs} == before
    assert leftovers(folder) == []
    # the outputs made in the input folder are there, one set per good input
    assert {n.split("_")[0] for n in os.listdir(folder) if n.endswith("_metadata.json")} == {"C0001", "T1", "M1"}


def test_same_stem_from_different_folders(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (a, b, c):
        folder.mkdir()
    S.write_isq(a / "C0001.ISQ", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL)
    S.write_isq(b / "C0001.isq;2", (VOLUME // 2).astype(np.int16), voxel_size_mm=(0.01,) * 3, calibration=CAL)
    S.write_aim(c / "c0001.aim", (VOLUME // 3).astype(np.int16), voxel_size_mm=(0.01,) * 3, calibration=CAL)
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "convert", a, b, c, "-o", out, "--outputs", "native")
    assert status == 0, err
    metas = sorted(out.glob("*_metadata.json"))
    assert len(metas) == 3
    sources = {}
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        native, _ = nrrd.read(str(out / meta["outputs"]["native"]["file"]))
        sources[Path(meta["input"]["path"]).parent.name] = native.T
    np.testing.assert_array_equal(sources["a"], VOLUME)
    np.testing.assert_array_equal(sources["b"], VOLUME // 2)
    np.testing.assert_array_equal(sources["c"], VOLUME // 3)
    # a second batch with the same names does not overwrite the first one's outputs
    before = hashes(out)
    status, _, err = run_cli(capsys, "convert", a, b, c, "-o", out, "--outputs", "native")
    assert status == 1 and len(error_lines(err)) == 3
    assert hashes(out) == before


@pytest.mark.parametrize("fmt", ["nifti", "aim"])
def test_every_writer_marks_a_shared_set_failed_instead_of_closing_its_files(tmp_path, fmt):
    """The NIfTI and AIM writers follow the NRRD writer's rule: a full disk in one writer must not close
    the files other writers of the same set are writing; the set refuses to commit with that error."""
    from ScancoUnitsLib import read_header
    from ScancoUnitsLib.formats.writers import VolumeSpec, get_format

    source = read_header(S.write_isq(tmp_path / "src.isq", np.zeros((2, 8, 8), np.int16), voxel_size_mm=(1, 1, 1)))
    out = tmp_path / "out"
    out.mkdir()

    def spec(name, quantity, dtype):
        return VolumeSpec(base_path=out / name, shape_zyx=(2, 8, 8), dtype=np.dtype(dtype), spacing_mm=(1, 1, 1),
                          origin_mm=(0, 0, 0), quantity=quantity, unit_label="1", description=quantity, source=source)

    outputs = atomic_output.AtomicOutputSet()
    failing = get_format(fmt).open(spec("s_BWmask", "mask", "uint8"), outputs)
    other = get_format("nrrd").open(spec("s_HU", "hu", "int16"), outputs)

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            raise AttributeError(name)

    if fmt == "nifti":
        failing._stream = type("S", (), {"write": lambda self, v: FullDisk().write(v), "shutdown": lambda self: None})()
    else:
        failing._file = FullDisk()
    checkerboard = (np.indices((2, 8, 8)).sum(axis=0) % 2).astype(np.uint8)   # many runs: bytes to write now
    with pytest.raises(atomic_output.OutputError, match="No space left on device"):
        failing.write_slab(checkerboard)
    other.write_slab(np.zeros((2, 8, 8), np.int16))   # its file is still open
    with pytest.raises(atomic_output.OutputError, match="No space left on device"):
        outputs.commit()
    assert outputs.state == "aborted" and os.listdir(out) == []


# ---------------------------------------------------------------------------------------------------
# control characters in header strings and names (issue 19.13)
# ---------------------------------------------------------------------------------------------------
CONTROL_TEXTS = ["70 kVp \x01 filter", "70 kVp \x1b[31mred\x1b[0m", "tab\there\x7f"]


@pytest.mark.parametrize("where", ["calibration_text", "density_unit", "name"])
@pytest.mark.parametrize("text", CONTROL_TEXTS, ids=["soh", "esc", "tab-del"])
def test_control_characters_are_escaped_never_an_internal_error(tmp_path, capsys, where, text):
    """\\x01, ESC and DEL in the calibration text, the density unit or the file name: native outputs in
    every format are written (the NRRD header shows them as visible \\xNN, the metadata JSON keeps the
    exact text), and ``info`` prints no raw control character."""
    name = f"scan{text}.isq" if where == "name" else "scan.isq"
    calibration = _with(**{where: text}) if where != "name" else CAL
    path = _write("isq", tmp_path / name, calibration)
    out = tmp_path / "out"
    formats = "nrrd,aim" + (",nifti" if _has("nibabel") else "") + (",ome-zarr" if _has("zarr") else "")
    status, stdout, err = run_cli(capsys, "convert", path, "-o", out, "--outputs", "native", "--format", formats)
    assert status == 0 and "internal error" not in err, err
    # the per-file lines and the table show a name's control characters as \xNN, never raw
    assert not any(ord(ch) < 32 and ch != "\n" or 127 <= ord(ch) < 160 for ch in stdout + err), stdout + err
    meta = json.loads(next(out.glob("*_metadata.json")).read_text())
    if where != "name":
        stored = getattr(read_header(path).calibration, where)  # an ISQ field may cut the text short
        assert "\x1b" in stored or "\x01" in stored or "\x7f" in stored
        assert meta["header"]["calibration"][where] == stored
    else:
        assert meta["input"]["path"] == str(path)
    native_file = out / meta["outputs"]["native"]["file"]
    data, fields = nrrd.read(str(native_file))
    np.testing.assert_array_equal(data.T, VOLUME)
    raw_header = native_file.read_bytes()[:4096].split(b"\n\n")[0]
    assert not any(b < 32 and b not in b"\t\n" or b == 127 for b in raw_header)
    status, stdout, err = run_cli(capsys, "info", path)
    assert status == 0 and "internal error" not in err
    assert not any(ord(ch) < 32 and ch != "\n" or 127 <= ord(ch) < 160 for ch in stdout + err), stdout
    assert "\\x" in stdout
    if where == "name":  # an unreadable file of such a name: the error line is escaped too
        broken = path.with_name(path.name + ".AIM")
        broken.write_bytes(b"not a scan")
        status, stdout, err = run_cli(capsys, "info", broken)
        assert status == 1 and len(error_lines(err)) == 1
        assert not any(ord(ch) < 32 and ch != "\n" or 127 <= ord(ch) < 160 for ch in stdout + err), err
    # the default outputs: converted, or (a density unit that is no unit) refused with one line, never internal
    status, _, err = run_cli(capsys, "convert", path, "-o", tmp_path / "all")
    assert "internal error" not in err
    assert status == 0 or (where == "density_unit" and len(error_lines(err)) == 1 and "density unit" in err), err


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("name", ["line\nbreak.isq", " blank.isq"])
def test_detached_with_a_name_no_header_line_can_hold_is_refused(tmp_path, capsys, name):
    """``--detached`` writes the data file's name into a header line: a name with a line break (or a
    leading blank) is refused with one line naming the input and the way out, before anything is written;
    attached files of the same input are fine."""
    path = _write("isq", tmp_path / name, CAL)
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "convert", path, "-o", out, "--detached", "--outputs", "native")
    assert status == 1 and "internal error" not in err, err
    assert len(error_lines(err)) == 1 and "without --detached" in err
    assert not out.exists() or os.listdir(out) == []
    status, _, err = run_cli(capsys, "convert", path, "-o", out, "--outputs", "native")
    assert status == 0, err


# ---------------------------------------------------------------------------------------------------
# a compressed stream longer than the image (issue 19.14)
# ---------------------------------------------------------------------------------------------------
def _over_run_bin_cmp(path: Path, extra_run_bytes: int) -> Path:
    """A 32x32x1 binCmp AIM (1,024 voxels) whose stream goes on for ``extra_run_bytes`` more run bytes."""
    from ScancoUnitsLib.formats.aim.format import aim_header_bytes

    runs = bytes([255, 255, 255, 255, 8]) + bytes([1]) * extra_run_bytes
    payload = (4 + 2 + len(runs)).to_bytes(4, "little") + bytes([0, 127]) + runs
    log = b"\x00"
    path.write_bytes(aim_header_bytes(20, 0x00150001, (32, 32, 1), (0, 0, 0), (0.01,) * 3, len(log), len(payload))
                     + log + payload)
    return path


def test_over_run_compressed_stream_warns_on_stderr_and_in_the_metadata(tmp_path, capsys):
    """10,000 run bytes for 1,024 voxels: the voxels are converted (the first 1,024 are the image), and
    the run says so on stderr and in the metadata; the same file without the tail converts silently."""
    path = _over_run_bin_cmp(tmp_path / "long.AIM", 9995)
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "convert", path, "-o", out, "--outputs", "native")
    assert status == 0, err
    lines = [line for line in err.splitlines() if line.startswith("scanco-units: warning:") and "9995 bytes after" in line]
    assert len(lines) == 1 and str(path) in lines[0], err
    meta = json.loads((out / "long_metadata.json").read_text())
    assert any("9995 bytes after the last of the image's 1024 voxels" in w for w in meta["warnings"])
    data, _ = nrrd.read(str(out / meta["outputs"]["native"]["file"]))
    assert data.shape == (32, 32, 1) and not data.any()
    exact = _over_run_bin_cmp(tmp_path / "exact.AIM", 0)
    status, _, err = run_cli(capsys, "convert", exact, "-o", out, "--outputs", "native")
    assert status == 0 and "warning" not in err, err
    assert json.loads((out / "exact_metadata.json").read_text())["warnings"] == []


# ---------------------------------------------------------------------------------------------------
# a header over 64 MiB, and read errors (issue 19.15)
# ---------------------------------------------------------------------------------------------------
def _huge_header_files(folder: Path):
    """An AIM whose processing log is 80 MiB and an ISQ whose header is 80 MiB (sparse files)."""
    huge = 80 << 20
    aim = Path(S.write_aim(folder / "log.AIM", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL))
    data = bytearray(aim.read_bytes())
    struct.pack_into("<i", data, 8, huge)  # v020 pre-header: processing log length
    with open(aim, "wb") as f:
        f.write(data)
        f.truncate(len(data) + huge + VOLUME.nbytes)
    isq = Path(S.write_isq(folder / "ext.ISQ", VOLUME, voxel_size_mm=(0.01,) * 3, calibration=CAL))
    data = bytearray(isq.read_bytes())
    struct.pack_into("<i", data, 508, huge // 512)  # data offset in 512-byte blocks
    with open(isq, "wb") as f:
        f.write(data)
        f.truncate(huge + 512 + VOLUME.nbytes)
    return [aim, isq]


def test_header_over_64_mib_is_refused_in_one_line(tmp_path, capsys):
    for path in _huge_header_files(tmp_path):
        with pytest.raises(ScancoFormatError, match="more than the 64 MiB a SCANCO header can have"):
            read_header(path)
        status, _, err = run_cli(capsys, "convert", path, "-o", tmp_path / "out", "--outputs", "native")
        assert status == 1 and "internal" not in err, err
        assert len(error_lines(err)) == 1 and str(path) in err and "64 MiB" in err
        status, out, err = run_cli(capsys, "info", path)
        assert status != 0 and "internal" not in out + err


class _FailingRead:
    """A file object that reads normally up to byte ``fail_at``, then fails as a dying disk does (EIO)."""

    def __init__(self, f, fail_at: int):
        self._f, self._fail_at = f, fail_at

    def _check(self, count: int) -> None:
        if self._f.tell() + max(count, 1) > self._fail_at:
            raise OSError(errno.EIO, "Input/output error")

    def read(self, count=-1):
        self._check(count if count >= 0 else 1 << 62)
        return self._f.read(count)

    def readinto(self, view):
        self._check(len(view))
        return self._f.readinto(view)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("kind", ["isq", "aim", "binCmp"])
@pytest.mark.parametrize("where", ["header", "voxels"])
def test_read_error_names_the_file_in_one_line(tmp_path, capsys, monkeypatch, kind, where):
    """EIO while the header or the voxels are read: one line naming the file and the reason, exit 1,
    nothing written; never an internal error."""
    from ScancoUnitsLib.formats import reader

    if kind == "binCmp":
        mask = (np.arange(5 * 4 * 6).reshape(5, 4, 6) % 3 == 0).astype(np.int8) * 127
        path = Path(S.write_aim(tmp_path / "m.AIM", mask, voxel_size_mm=(0.01,) * 3, compression="binCmp"))
    else:
        path = _write(kind, tmp_path / f"x.{kind}", CAL)
    data_offset = read_header(path).data_offset
    fail_at = 100 if where == "header" else data_offset + 8
    real_open = reader._open_input

    def failing_open(p):
        f, size = real_open(p)
        return _FailingRead(f, fail_at), size

    monkeypatch.setattr(reader, "_open_input", failing_open)
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "convert", path, "-o", out, "--outputs", "native")
    assert status == 1 and "internal" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1 and str(path) in lines[0] and "read error: Input/output error (EIO)" in lines[0], err
    assert not out.exists() or os.listdir(out) == []


def test_over_run_compressed_stream_warns_on_the_slicer_load(tmp_path):
    """The same over-long stream loaded into a (headless) Slicer scene: the warning reaches the load's
    warning callback."""
    slicer = pytest.importorskip("slicer")
    from ScancoUnitsLib.slicer.scene import load_scan_into_scene

    path = _over_run_bin_cmp(tmp_path / "long.AIM", 9995)
    given = []
    nodes = load_scan_into_scene(slicer.vtkMRMLScene(), path, outputs=["native"], warn=given.append)
    assert "native" in nodes
    assert any("9995 bytes after the last" in w and str(path) in w for w in given), given
