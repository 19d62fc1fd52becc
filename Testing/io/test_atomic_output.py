"""Tests for ScancoUnitsLib.io.transaction: temp + rename, no clobbering, group commit with rollback,
clear errors for full disks and refused permissions, signal cleanup."""

from __future__ import annotations

import builtins
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ScancoUnitsLib.io import transaction as atomic_output
from ScancoUnitsLib.io import signals as io_signals
from ScancoUnitsLib.io.transaction import (
    AtomicOutputSet,
    Interrupted,
    OutputError,
    OutputExistsError,
    atomic_output_file,
    install_signal_cleanup,
    live_partials,
    remove_all_partials,
)
from ScancoUnitsLib.errors import ScancoError

REPO = Path(__file__).resolve().parents[2]


def names(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# every test must leave no registered temporary file or folder (the fixture lives in conftest.py)
pytestmark = pytest.mark.usefixtures("no_leftover_registry")


def test_commit_renames_and_temp_is_hidden_sibling(tmp_path):
    with AtomicOutputSet() as outputs:
        f = outputs.add(tmp_path / "a.nrrd")
        f.write(b"alpha")
        temp = Path(f.name)
        assert temp.parent == tmp_path
        assert temp.name.startswith(".a.nrrd.partial-")
        assert names(tmp_path) == [temp.name]
        assert temp in live_partials()
    assert names(tmp_path) == ["a.nrrd"]
    assert (tmp_path / "a.nrrd").read_bytes() == b"alpha"
    assert outputs.state == "committed"


def test_exception_removes_everything(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with AtomicOutputSet() as outputs:
            outputs.add(tmp_path / "a.bin").write(b"1")
            outputs.add(tmp_path / "b.bin").write(b"2")
            1 / 0
    assert names(tmp_path) == []
    assert outputs.state == "aborted"


def test_keyboard_interrupt_and_interrupted_remove_everything(tmp_path):
    for exc in (KeyboardInterrupt(), Interrupted(signal.SIGTERM)):
        with pytest.raises(KeyboardInterrupt):
            with AtomicOutputSet() as outputs:
                outputs.add(tmp_path / "a.bin").write(b"1")
                raise exc
        assert names(tmp_path) == []


def test_interrupted_is_not_an_exception():
    exc = Interrupted(signal.SIGTERM)
    assert isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Exception)
    assert exc.signum == signal.SIGTERM
    assert "SIGTERM" in str(exc)


def test_no_clobber_when_adding(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"precious")
    outputs = AtomicOutputSet()
    with pytest.raises(OutputExistsError, match=r"a\.bin: cannot write output: the file exists already"):
        outputs.add(tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"precious"
    assert names(tmp_path) == ["a.bin"]


def test_no_clobber_when_target_appears_meanwhile(tmp_path):
    with pytest.raises(OutputExistsError, match=r"b\.bin: .*appeared"):
        with AtomicOutputSet() as outputs:
            outputs.add(tmp_path / "a.bin").write(b"ours-a")
            outputs.add(tmp_path / "b.bin").write(b"ours-b")
            (tmp_path / "b.bin").write_bytes(b"theirs")  # another program wins the race
    # nothing of ours remains, theirs is untouched
    assert names(tmp_path) == ["b.bin"]
    assert (tmp_path / "b.bin").read_bytes() == b"theirs"


def test_overwrite_replaces_and_leaves_no_backup(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")
    with AtomicOutputSet(overwrite=True, fsync=True) as outputs:
        outputs.add(tmp_path / "a.bin").write(b"new")
        outputs.add(tmp_path / "b.bin").write(b"fresh")
    assert names(tmp_path) == ["a.bin", "b.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"new"


def test_overwrite_rolls_back_when_a_later_rename_fails(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"old-a")
    (tmp_path / "b.bin").write_bytes(b"old-b")
    real_replace = os.replace

    def flaky_replace(src, dst):
        if Path(dst).name == "b.bin" and ".partial-" in Path(src).name:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_output.os, "replace", flaky_replace)
    with pytest.raises(OutputError, match=r"b\.bin: cannot write output: Input/output error"):
        with AtomicOutputSet(overwrite=True) as outputs:
            outputs.add(tmp_path / "a.bin").write(b"new-a")
            outputs.add(tmp_path / "b.bin").write(b"new-b")
    assert names(tmp_path) == ["a.bin", "b.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"old-a"  # restored from the hard-link backup
    assert (tmp_path / "b.bin").read_bytes() == b"old-b"


def test_exclusive_commit_rolls_back_when_a_later_link_fails(tmp_path, monkeypatch):
    real_link = os.link

    def flaky_link(src, dst):
        if Path(dst).name == "b.bin":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_link(src, dst)

    monkeypatch.setattr(atomic_output.os, "link", flaky_link)
    with pytest.raises(OutputError, match=r"b\.bin"):
        with AtomicOutputSet() as outputs:
            outputs.add(tmp_path / "a.bin").write(b"a")
            outputs.add(tmp_path / "b.bin").write(b"b")
    assert names(tmp_path) == []


def test_file_system_without_hard_links(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(atomic_output.os, "link", no_link)
    with AtomicOutputSet() as outputs:
        outputs.add(tmp_path / "a.bin").write(b"a")
    assert (tmp_path / "a.bin").read_bytes() == b"a"
    with pytest.raises(OutputExistsError):
        with AtomicOutputSet() as outputs:
            outputs.add(tmp_path / "b.bin").write(b"b")
            (tmp_path / "b.bin").write_bytes(b"theirs")
    assert (tmp_path / "b.bin").read_bytes() == b"theirs"
    assert names(tmp_path) == ["a.bin", "b.bin"]
    # overwrite still works without backups
    with AtomicOutputSet(overwrite=True) as outputs:
        outputs.add(tmp_path / "b.bin").write(b"ours")
    assert (tmp_path / "b.bin").read_bytes() == b"ours"
    assert names(tmp_path) == ["a.bin", "b.bin"]


def test_enospc_while_writing_names_the_output(tmp_path):
    with pytest.raises(OutputError) as info:
        with AtomicOutputSet() as outputs:
            outputs.add(tmp_path / "big.nrrd").write(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as f.write would
    error = info.value
    assert str(error).startswith(f"{tmp_path / 'big.nrrd'}: cannot write output: No space left on device")
    assert error.errno == errno.ENOSPC and error.path == str(tmp_path / "big.nrrd")
    assert isinstance(error, OSError) and isinstance(error, ScancoError)
    assert isinstance(error.__cause__, OSError)
    assert names(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_enospc_at_commit_flush_names_the_output(tmp_path, monkeypatch):
    # the handle of the second output writes to /dev/full: its buffered data fails at flush (commit)
    real_open = builtins.open

    def opener(path, *args, **kwargs):
        return real_open("/dev/full" if ".b.json" in str(path) else path, *args, **kwargs)

    monkeypatch.setattr(atomic_output, "open", opener, raising=False)
    with pytest.raises(OutputError, match=r"b\.json: cannot write output: No space left on device"):
        with AtomicOutputSet() as outputs:
            outputs.add(tmp_path / "a.json", "w", encoding="utf-8").write("{}")
            outputs.add(tmp_path / "b.json", "w", encoding="utf-8").write("{}")
    assert names(tmp_path) == []


def test_eacces_names_the_output(tmp_path, monkeypatch):
    # tests may run as root, where chmod does not stop writes: simulate the refusal
    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    outputs = AtomicOutputSet()
    outputs.add(tmp_path / "first.bin")
    monkeypatch.setattr(atomic_output, "_create_exclusive", denied)
    with pytest.raises(OutputError, match=r"second\.bin: cannot write output: Permission denied"):
        with outputs:
            outputs.add(tmp_path / "second.bin")
    assert names(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):  # pragma: no cover - only as non-root
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            AtomicOutputSet().add(folder / "x.bin")
    finally:
        folder.chmod(0o700)


def test_missing_folder_and_duplicates(tmp_path):
    outputs = AtomicOutputSet()
    with pytest.raises(OutputError, match="does not exist"):
        outputs.add(tmp_path / "nope" / "x.bin")
    outputs.add(tmp_path / "x.bin")
    with pytest.raises(ValueError, match="added twice"):
        outputs.add(tmp_path / "x.bin")
    outputs.abort()
    outputs.abort()  # idempotent
    with pytest.raises(RuntimeError, match="aborted"):
        outputs.add(tmp_path / "y.bin")
    assert names(tmp_path) == []


def test_overwrite_refuses_a_folder(tmp_path):
    (tmp_path / "dir.nrrd").mkdir()
    with pytest.raises(OutputError, match="folder"):
        AtomicOutputSet(overwrite=True).add(tmp_path / "dir.nrrd")


def test_add_path_for_other_writers_and_on_commit(tmp_path):
    order = []
    with AtomicOutputSet() as outputs:
        temp = outputs.add_path(tmp_path / "ext.txt")
        assert temp.exists() and temp.stat().st_size == 0
        assert outputs.temp_path(tmp_path / "ext.txt") == temp
        temp.write_text("by name")
        outputs.on_commit(lambda: order.append("finished"))
    assert order == ["finished"]
    assert (tmp_path / "ext.txt").read_text() == "by name"
    assert outputs.commit() == [tmp_path / "ext.txt"]  # committing twice is harmless


def test_failing_on_commit_callback_aborts(tmp_path):
    def boom():
        raise ValueError("not finished")

    with pytest.raises(ValueError, match="not finished"):
        with AtomicOutputSet() as outputs:
            outputs.add(tmp_path / "a.bin").write(b"a")
            outputs.on_commit(boom)
    assert names(tmp_path) == []


def test_single_file_helper(tmp_path):
    with atomic_output_file(tmp_path / "m.json", "w", encoding="utf-8") as f:
        f.write('{"ok": true}')
    assert (tmp_path / "m.json").read_text() == '{"ok": true}'
    with pytest.raises(OutputExistsError):
        with atomic_output_file(tmp_path / "m.json") as f:
            pass
    with atomic_output_file(tmp_path / "m.json", overwrite=True) as f:
        f.write(b"{}")
    assert names(tmp_path) == ["m.json"]


def test_remove_all_partials(tmp_path):
    outputs = AtomicOutputSet()
    outputs.add(tmp_path / "a.bin").write(b"a")
    outputs.add_path(tmp_path / "b.bin")
    assert len(live_partials()) == 2
    removed = remove_all_partials()
    assert sorted(p.name.split(".partial-")[0] for p in removed) == [".a.bin", ".b.bin"]
    assert names(tmp_path) == []
    assert live_partials() == []
    outputs.abort()  # still fine afterwards


def test_sigterm_cleans_up_in_a_child_process(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / 'ScancoUnits')!r})
        from pathlib import Path
        from ScancoUnitsLib.io.transaction import AtomicOutputSet, Interrupted, install_signal_cleanup
        install_signal_cleanup()
        out = Path({str(tmp_path)!r})
        try:
            with AtomicOutputSet() as outputs:
                f = outputs.add(out / "a.nrrd")
                outputs.add(out / "b.json", "w", encoding="utf-8").write("{{}}")
                print("ready", flush=True)
                while True:
                    f.write(b"x" * 1000)
                    time.sleep(0.01)
        except Interrupted as exc:
            print("interrupted", exc.signum, flush=True)
            sys.exit(3)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert len(names(tmp_path)) == 2  # two hidden temporaries
        time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 3
    assert out.strip() == f"interrupted {int(signal.SIGTERM)}"
    assert names(tmp_path) == []


def test_install_signal_cleanup_returns_previous_handlers():
    previous = install_signal_cleanup([signal.SIGUSR1])
    try:
        assert signal.getsignal(signal.SIGUSR1) is io_signals._signal_handler
        with pytest.raises(Interrupted):
            signal.raise_signal(signal.SIGUSR1)
            time.sleep(1)  # the handler runs between bytecodes; never reached
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_add_opens_the_new_temporary_file_without_truncating_it(tmp_path):
    """The temporary file was created empty by the set; add() opens it for writing without O_TRUNC
    (truncating made ext4 write the whole file back inside close(), in the committing thread)."""
    s = AtomicOutputSet()
    binary = s.add(tmp_path / "a.raw")
    text = s.add(tmp_path / "b.json", "w", encoding="utf-8")
    assert binary.mode == "rb+" and text.mode == "r+"
    assert binary.tell() == 0 and os.path.getsize(binary.name) == 0
    binary.write(b"\x01\x02")
    text.write('{"ok": true}')
    s.commit()
    assert (tmp_path / "a.raw").read_bytes() == b"\x01\x02"
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == '{"ok": true}'
