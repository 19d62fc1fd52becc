"""Write output files atomically: temporary file in the target folder, then rename on commit.

An :class:`AtomicOutputSet` groups the outputs made from one input file (``_HU.nrrd``, ``_RHO.nrrd``,
``_metadata.json``, ``.nhdr`` + ``.raw`` pairs, ``.ome.zarr`` directories...). Each output is first
written to a hidden temporary file (or directory, :meth:`AtomicOutputSet.add_directory`) next to its final
name (``.<name>.partial-<random>``). :meth:`AtomicOutputSet.commit` renames all of
them at once, and only when every one of them was written; on any failure (exception, Ctrl-C, SIGTERM
turned into :class:`Interrupted`) no temporary file and no new final file remains.

Existing files are never replaced unless ``overwrite=True``. The check happens twice: when an output is
added (fail early) and at commit, where the temporary file is hard-linked onto the final name, which
fails if the name appeared meanwhile (no race between "check" and "rename").

Operating-system errors (disk full, permission denied...) surface as :class:`OutputError`, whose message
names the output path, after the temporary files have been removed.

Every live temporary file is kept in a process-wide registry so that a signal handler can remove them:
:func:`install_signal_cleanup` (called by the command-line tool, never at import) makes SIGTERM raise
:class:`Interrupted`, so ``with`` blocks clean up; :func:`remove_all_partials` is the last-resort fallback.

What no handler can clean up (SIGKILL, power loss) is found later by the temporary names themselves:
``.<name>.partial-<writer>-<random>`` (backups: ``.previous-``), where ``<writer>`` is
:func:`writer_id`: a hash of the host name (and PID namespace), a hash of the boot id, the process id
and the process start time. :func:`sweep_stale_partials` removes the files whose writer is provably
gone (same host, same boot, process no longer running) and leaves (and reports) the others. A final name too long for that suffix gets a shortened,
hashed temporary name (``.<start of name>~<hash>.partial-...``), so any legal final name works.

Safety checks for callers, all made before anything is written: ``protected=`` inputs are never
written over (:class:`OutputIsInputError`, whatever ``overwrite`` says), nor an existing file a
``refuse=`` rule names (:class:`OutputProtectedError`, e.g. a SCANCO file by its content);
:meth:`AtomicOutputSet.check_free` finds every collision up front; ``replace_also=`` (see
:func:`previous_outputs`: only files whose size and checksum an earlier record holds, see
:func:`fingerprint`) removes an earlier output set's other files at commit, all or nothing.

A set may name its commit record (:meth:`AtomicOutputSet.set_record`, the metadata JSON): it is placed
last, after the other members and, with ``fsync=True``, after their data and the folder are on disk;
the earlier record of that name is moved aside first. A set whose record exists was complete.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..errors import ScancoError

__all__ = [
    "OutputError",
    "OutputExistsError",
    "OutputIsInputError",
    "OutputProtectedError",
    "InputSet",
    "Interrupted",
    "AtomicOutputSet",
    "atomic_output_file",
    "install_signal_cleanup",
    "remove_all_partials",
    "live_partials",
    "writer_id",
    "PartialScan",
    "scan_partials",
    "sweep_stale_partials",
    "previous_outputs",
    "fingerprint",
]

_PARTIAL_MARK = ".partial-"
_BACKUP_MARK = ".previous-"
_DEFAULT_BUFFER_BYTES = 1 << 20

# errno values meaning "this file system cannot make hard links"; we then fall back to a checked rename
_NO_LINK_ERRNOS = {
    code
    for code in (
        getattr(errno, "EPERM", None),
        getattr(errno, "ENOTSUP", None),
        getattr(errno, "EOPNOTSUPP", None),
        getattr(errno, "ENOSYS", None),
        getattr(errno, "EXDEV", None),
        getattr(errno, "EMLINK", None),
        getattr(errno, "EINVAL", None),
    )
    if code is not None
}


class OutputError(ScancoError, OSError):
    """An output file could not be written (disk full, permission denied, folder missing...).

    ``str(error)`` is one line naming the output path and the reason. ``errno`` is the operating-system
    error number when there was one (``None`` otherwise).
    """

    def __init__(self, path, reason: str, os_errno=None):
        self.path = os.fspath(path) if path is not None else "<output>"
        self.reason = reason
        # OSError's own constructor is not used: it would rewrite str(); keep the attributes it offers.
        super().__init__(f"{self.path}: cannot write output: {reason}")
        self.errno = os_errno
        self.strerror = reason
        self.filename = self.path

    def __str__(self):
        return f"{self.path}: cannot write output: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.errno))


class OutputExistsError(OutputError):
    """The output file exists already and ``overwrite`` was not requested."""

    def __init__(self, path, reason: str = "the file exists already (pass overwrite=True to replace it)",
                 os_errno=errno.EEXIST):
        super().__init__(path, reason, os_errno)


class OutputIsInputError(OutputError):
    """An output name is (the same file as) an input: refused whatever ``overwrite`` says."""

    def __init__(self, path, input_path, os_errno=errno.EEXIST):
        self.input_path = os.fspath(input_path)
        super().__init__(path, f"this is the input file {self.input_path}; an input is never overwritten",
                         os_errno)

    def __reduce__(self):
        return (type(self), (self.path, self.input_path, self.errno))


class OutputProtectedError(OutputIsInputError):
    """An existing file this set would replace is protected for another reason (e.g. it is a SCANCO
    file by its content): refused whatever ``overwrite`` says."""

    def __init__(self, path, reason: str, os_errno=errno.EEXIST):
        self.input_path = os.fspath(path)
        OutputError.__init__(self, path, reason, os_errno)

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.errno))


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when a signal installed by :func:`install_signal_cleanup` arrives.

    It derives from :class:`KeyboardInterrupt` so that ``except Exception`` blocks do not swallow it and
    every ``with`` block (writers, output sets) cleans up on the way out.
    """

    def __init__(self, signum: int):
        self.signum = signum
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        super().__init__(f"interrupted by {name}")


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.errno is not None:
            text = f"{text} [errno {exc.errno}{'/' + errno.errorcode[exc.errno] if exc.errno in errno.errorcode else ''}]"
        return text
    return str(exc) or type(exc).__name__


_FULL_ERRNOS = {code: text for code, text in ((getattr(errno, "ENOSPC", None), "No space left on device"),
                                               (getattr(errno, "EDQUOT", None), "Disk quota exceeded"))
                if code is not None}


def _folder_of(path) -> str:
    text = os.fspath(path) if path is not None else ""
    first = text.split(", ")[0]  # _guess_final may name several outputs
    return os.path.dirname(os.path.abspath(first)) if first else "the output folder"


def output_error_from(path, exc: BaseException) -> OutputError:
    """Turn an :class:`OSError` raised while writing *path* into an :class:`OutputError`.

    A full disk (ENOSPC, EDQUOT) always says so and names the folder:
    ``No space left on device in <folder>``.
    """
    if isinstance(exc, OutputError):
        return exc
    if isinstance(exc, FileExistsError):
        return OutputExistsError(path)
    code = getattr(exc, "errno", None)
    if code in _FULL_ERRNOS:
        reason = f"{_FULL_ERRNOS[code]} in {_folder_of(path)} [errno {code}/{errno.errorcode[code]}]"
        return OutputError(path, reason, code)
    return OutputError(path, _reason_of(exc), code)


# ---------------------------------------------------------------------------------------------------
# process-wide registry of temporary files
# ---------------------------------------------------------------------------------------------------

_registry_lock = threading.Lock()
_live_temps: dict[str, None] = {}  # insertion-ordered set of absolute temp paths


def _register(path: str) -> None:
    with _registry_lock:
        _live_temps[path] = None


def _unregister(path: str) -> None:
    with _registry_lock:
        _live_temps.pop(path, None)


def live_partials() -> list[Path]:
    """Temporary files written by this process that are neither committed nor removed yet."""
    with _registry_lock:
        return [Path(p) for p in _live_temps]


def remove_all_partials() -> list[Path]:
    """Delete every live temporary file of this process (fallback for signal handlers and exit).

    Returns the paths that were removed. Safe to call at any time; open handles stay valid on POSIX
    (the data is just no longer reachable), and their later close/commit fails cleanly.
    """
    with _registry_lock:
        paths = list(_live_temps)
        _live_temps.clear()
    removed = []
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)  # a temporary directory from AtomicOutputSet.add_directory
            else:
                os.unlink(path)
            removed.append(Path(path))
        except FileNotFoundError:
            pass
        except OSError:
            pass
    return removed


_signal_state = {"installed": False, "count": 0, "atexit": False}


def _signal_handler(signum, frame):  # pragma: no cover - exercised in a subprocess test
    _signal_state["count"] += 1
    if _signal_state["count"] > 1:
        # A second signal while the first is still being handled: do not rely on ``with`` blocks.
        remove_all_partials()
    raise Interrupted(signum)


def install_signal_cleanup(signals=None) -> dict:
    """Make *signals* (default: SIGTERM, and SIGHUP where it exists) raise :class:`Interrupted`.

    Call it from the main thread of a command-line program. ``with`` blocks around writers then remove
    their temporary files; a second signal removes every registered temporary file directly. Also
    registers :func:`remove_all_partials` to run at interpreter exit. Returns ``{signal: previous
    handler}`` so a caller can restore them with :func:`signal.signal`.
    """
    if signals is None:
        signals = [signal.SIGTERM]
        if hasattr(signal, "SIGHUP"):
            signals.append(signal.SIGHUP)
    previous = {}
    for signum in signals:
        previous[signum] = signal.signal(signum, _signal_handler)
    _signal_state["installed"] = True
    _signal_state["count"] = 0
    if not _signal_state["atexit"]:
        atexit.register(remove_all_partials)
        _signal_state["atexit"] = True
    return previous


# ---------------------------------------------------------------------------------------------------
# who wrote a temporary file: names that outlive their writer can be attributed and swept
# ---------------------------------------------------------------------------------------------------

_NAME_MAX_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, tmpfs, NTFS (in UTF-16 units), APFS
_ID_PATTERN = re.compile(
    r"^\.(?P<base>.+?)(?P<mark>\.partial-|\.previous-)"
    r"(?P<host>[0-9a-f]{8})(?P<boot>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)-[0-9a-f]{8}$")
# names of the releases before writer ids: ``.<name>.partial-<8 hex>``; their writer is unknown
_LEGACY_PATTERN = re.compile(r"^\.(?P<base>.+)(?P<mark>\.partial-|\.previous-)[0-9a-f]{8}$")
_SHORTENED_MARK = "~"
_id_cache: dict = {}


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "r", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""  # not Linux: every process counts as "this boot"


def _host_key() -> str:
    """Host name plus PID namespace: two containers sharing a folder must not judge each other's PIDs."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{namespace}"


def _proc_stat(pid: int):
    """``(state, start time in clock ticks since boot)`` of *pid* from /proc, None if it does not exist,
    ``"unknown"`` where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else "unknown"
    except ProcessLookupError:
        return None
    except OSError:
        return "unknown"
    fields = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])  # field 3: state, field 22: starttime
    except (IndexError, ValueError):
        return "unknown"


@dataclass(frozen=True)
class _Writer:
    host: str   # 8 hex digits: hash of host name and PID namespace
    boot: str   # 8 hex digits: hash of the boot id
    pid: int
    start: int  # start time of the process in clock ticks since boot (0 where unknown)

    @property
    def text(self) -> str:
        return f"{self.host}{self.boot}-{self.pid}-{self.start}"


def _this_writer() -> _Writer:
    pid = os.getpid()  # a forked child is another writer
    writer = _id_cache.get(pid)
    if writer is None:
        state = _proc_stat(pid)
        start = state[1] if isinstance(state, tuple) else 0
        writer = _Writer(_hash8(_host_key()), _hash8(_boot_id()), pid, start)
        _id_cache.clear()
        _id_cache[pid] = writer
    return writer


def writer_id() -> str:
    """This process's writer id, as written into its temporary names: ``<host><boot>-<pid>-<start>``."""
    return _this_writer().text


def _writer_gone(writer: _Writer) -> Optional[bool]:
    """True: provably not running any more; False: maybe running; None: written on another host or in
    another boot.

    Only a writer of this host *and* this boot can be judged: two machines may share a host name (cluster
    nodes, containers) and a folder, so a different boot id may be a running writer elsewhere, not a
    reboot. Files of another boot are left and reported, never removed."""
    me = _this_writer()
    if writer.host != me.host or writer.boot != me.boot:
        return None
    if writer.pid == me.pid:
        return writer.start != me.start
    state = _proc_stat(writer.pid)
    if state is None:
        return True
    if state == "unknown":  # no /proc: a running pid may be a reuse, so only "not running" is proof
        try:
            os.kill(writer.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    proc_state, start = state
    if start != writer.start:
        return True  # the pid was reused by a later process
    return proc_state in ("Z", "X")  # a zombie writes nothing any more


def _fit_name(name: str, suffix: str) -> str:
    """``.<name><suffix>``, or ``.<start of name>~<hash><suffix>`` when that would exceed NAME_MAX bytes."""
    full = f".{name}{suffix}"
    if len(os.fsencode(full)) <= _NAME_MAX_BYTES:
        return full
    tag = _SHORTENED_MARK + _hash8(name)
    room = _NAME_MAX_BYTES - len(os.fsencode(f".{tag}{suffix}"))
    head = os.fsencode(name)[:max(room, 1)].decode("utf-8", "ignore") if os.name != "nt" else name[:room]
    return f".{head}{tag}{suffix}"


def _hidden_sibling(final: Path, mark: str) -> Path:
    """A hidden name next to *final* that names its writer (see :func:`sweep_stale_partials`)."""
    return final.with_name(_fit_name(final.name, f"{mark}{writer_id()}-{secrets.token_hex(4)}"))


@dataclass
class PartialScan:
    """Temporary and backup files found in one folder by :func:`scan_partials`."""

    folder: Path
    stale: List[Path] = field(default_factory=list)    # their writer is provably gone: safe to remove
    live: List[Path] = field(default_factory=list)     # their writer may still be running
    foreign: List[Path] = field(default_factory=list)  # another host or boot, or no writer id: never touched


def _matches_stem(base: str, stem: Optional[str]) -> bool:
    if stem is None:
        return True
    if base.startswith(stem):
        return True
    head, tag, digest = base.rpartition(_SHORTENED_MARK)  # a shortened name holds only a prefix
    return bool(tag) and len(digest) == 8 and stem.startswith(head)


def scan_partials(folder, stem: Optional[str] = None) -> PartialScan:
    """Sort the ``.partial-`` / ``.previous-`` files of *folder* (of outputs starting with *stem*) by writer."""
    folder = Path(folder)
    scan = PartialScan(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return scan
    for name in names:
        match = _ID_PATTERN.match(name)
        if match is not None:
            if not _matches_stem(match["base"], stem):
                continue
            writer = _Writer(match["host"], match["boot"], int(match["pid"]), int(match["start"]))
            gone = _writer_gone(writer)
            bucket = scan.foreign if gone is None else scan.stale if gone else scan.live
            bucket.append(folder / name)
            continue
        legacy = _LEGACY_PATTERN.match(name)
        if legacy is not None and _matches_stem(legacy["base"], stem):
            scan.foreign.append(folder / name)
    return scan


def _remove_path(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def sweep_stale_partials(folder, stem: Optional[str] = None, *, warn: bool = True) -> List[Path]:
    """Remove the temporary and backup files in *folder* left by writers that are provably gone.

    A writer is gone when it ran on this host in this boot (host name, PID namespace and boot id all
    match) with a process id that is no longer running with the same start time (so a reused pid is
    not taken for the writer). Files of running writers are never touched; files written on another
    host or in another boot (a shared file system: the same host name may be another machine) or
    without a writer id are left and reported with one :class:`UserWarning` (``warn=False``: not
    reported; see :func:`scan_partials`). With *stem*, only the files of outputs whose names start with
    *stem* are considered. Returns the removed paths.
    """
    scan = scan_partials(folder, stem)
    removed = []
    for path in scan.stale:
        try:
            _remove_path(path)
        except FileNotFoundError:
            continue
        except OSError:
            continue
        removed.append(path)
    if scan.foreign and warn:
        shown = ", ".join(p.name for p in scan.foreign[:3]) + (" ..." if len(scan.foreign) > 3 else "")
        warnings.warn(f"{scan.folder}: {len(scan.foreign)} temporary file(s) of another host or boot, or of an unknown "
                      f"writer were left in place: {shown}", UserWarning, stacklevel=2)
    return removed


def previous_outputs(metadata_json_path, names=None, *, refused: Optional[list] = None) -> List[Path]:
    """The existing files of the output set an earlier conversion recorded in *metadata_json_path*,
    limited to what is provably ours.

    A metadata file is only a claim (it may be hand-edited, foreign or tampered with), so it never
    steers deletion by itself. A listed entry counts only when

    * its name is in *names* (the names this stem can have: :func:`ScancoUnitsLib.pipeline.convert.stem_file_names`;
      None: any plain name in the folder), and
    * the file, or the folder with everything in it, still has the size and checksum that metadata
      recorded for it (``"files": {name: fingerprint}``, see :func:`fingerprint`). An entry without a
      recorded fingerprint (metadata of an older release), a changed file, or a folder holding anything
      else is never listed; its path goes to *refused* (when given) so the caller can say so.

    The metadata itself is listed first. A missing, unreadable or broken JSON lists nothing; names with
    a folder part are ignored.
    """
    meta = Path(os.path.abspath(os.fspath(metadata_json_path)))
    folder = meta.parent
    try:
        with open(meta, "r", encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(document, dict):
        return []
    allowed = None if names is None else set(names)
    recorded = document.get("files") if isinstance(document.get("files"), dict) else {}
    claimed: List[str] = []
    outputs = document.get("outputs")
    for entry in (outputs.values() if isinstance(outputs, dict) else ()):
        if not isinstance(entry, dict):
            continue
        claimed += [entry.get("file")] + (entry.get("files") if isinstance(entry.get("files"), list) else [])
    claimed += list(recorded)
    if meta.name.endswith("_metadata.json"):
        claimed.append(meta.name[: -len("_metadata.json")] + "_report.png")
    found: List[Path] = [meta]
    for name in dict.fromkeys(n for n in claimed if _plain_name(n) and n != meta.name):
        path = folder / name
        if not os.path.lexists(path):
            continue
        if allowed is not None and name not in allowed:
            if refused is not None:
                refused.append(path)
            continue
        expected = recorded.get(name)
        if not isinstance(expected, dict) or fingerprint(path) != expected:
            if refused is not None:
                refused.append(path)
            continue
        found.append(path)
    return [p for p in found if os.path.lexists(p)]


# ---------------------------------------------------------------------------------------------------
# fingerprints: is this still the file we wrote?
# ---------------------------------------------------------------------------------------------------

FINGERPRINT_WHOLE_BYTES = 8 << 20   # files up to this size are hashed whole
FINGERPRINT_BLOCKS = 64             # larger ones: this many blocks, evenly spaced, first and last included
FINGERPRINT_BLOCK_BYTES = 64 << 10


def _file_fingerprint(path, size: int) -> dict:
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0))
    try:
        if size <= FINGERPRINT_WHOLE_BYTES:
            offsets = [(0, size)]
        else:
            step = (size - FINGERPRINT_BLOCK_BYTES) / (FINGERPRINT_BLOCKS - 1)
            offsets = [(int(round(i * step)), FINGERPRINT_BLOCK_BYTES) for i in range(FINGERPRINT_BLOCKS)]
        for offset, length in offsets:
            done = 0
            while done < length:
                piece = os.pread(fd, min(length - done, 1 << 20), offset + done) if hasattr(os, "pread") \
                    else (os.lseek(fd, offset + done, 0), os.read(fd, min(length - done, 1 << 20)))[1]
                if not piece:
                    break
                digest.update(piece)
                done += len(piece)
    finally:
        os.close(fd)
    return {"bytes": size, "sha256": digest.hexdigest(),
            "sampled": size > FINGERPRINT_WHOLE_BYTES}


def fingerprint(path) -> Optional[dict]:
    """Size and checksum of a file, or of a folder with everything in it; None when it cannot be read.

    Files up to 8 MiB are hashed whole (SHA-256 of the size and the bytes). Larger ones are hashed from
    64 blocks of 64 KiB spread evenly over the file, the first and the last included (``"sampled":
    true``): reading 4 MiB per file keeps ``--skip-existing`` fast on GB volumes and catches truncated,
    emptied, replaced or re-headed files, but not every single-voxel edit. A folder (OME-Zarr) is its
    total size, its file count and the hash of every relative name with its file's fingerprint; a
    symbolic link inside it makes it unreadable (None), so it never counts as ours.
    """
    path = os.fspath(path)
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return _file_fingerprint(path, st.st_size)
        if not stat.S_ISDIR(st.st_mode):
            return None
        lines, total, count = [], 0, 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(dirs + files):
                full = os.path.join(root, name)
                st = os.lstat(full)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                if stat.S_ISDIR(st.st_mode):
                    lines.append(f"{rel}/")
                elif stat.S_ISREG(st.st_mode):
                    lines.append(f"{rel} {_file_fingerprint(full, st.st_size)['sha256']}")
                    total += st.st_size
                    count += 1
                else:
                    return None
        digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
        return {"bytes": total, "files": count, "sha256": digest}
    except OSError:
        return None


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name
            and "/" not in name and "\\" not in name and "\0" not in name)


# ---------------------------------------------------------------------------------------------------
# the output set
# ---------------------------------------------------------------------------------------------------


def _discard_temp(temp: Path) -> None:
    """Remove one of our temporary or backup files, if it exists, and forget it."""
    try:
        os.unlink(temp)
    except OSError:
        pass
    _unregister(str(temp))


def _discard_tree(temp: Path) -> None:
    """Remove one of our temporary or backup directories (and everything in it) and forget it."""
    shutil.rmtree(temp, ignore_errors=True)
    _unregister(str(temp))


def _create_exclusive(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)


class _Entry:
    __slots__ = ("final", "temp", "file", "is_dir")

    def __init__(self, final: Path, temp: Path, is_dir: bool = False):
        self.final = final
        self.temp = temp
        self.file = None
        self.is_dir = is_dir


def _sync_tree(folder: Path) -> None:
    """fsync every file under *folder* and the folders themselves (for ``fsync=True`` sets)."""
    for root, _dirs, files in os.walk(folder):
        for name in files + [None]:
            if name is None and sys.platform.startswith("win"):
                continue  # Windows cannot open a folder for fsync
            path = os.path.join(root, name) if name is not None else root
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            except OSError:
                if name is not None:
                    raise
            finally:
                os.close(fd)


class InputSet:
    """Input paths no output may be: their absolute and resolved names and their file ids (device,
    inode: hard links), computed once. Make one per batch and pass it to every output set."""

    def __init__(self, paths=()):
        self.by_name: dict[str, Path] = {}
        self.by_id: dict = {}
        for path in paths:
            absolute = Path(os.path.abspath(os.fspath(path)))
            for name in (os.fspath(absolute), os.path.realpath(absolute)):
                self.by_name.setdefault(os.path.normcase(name), absolute)
            try:
                st = os.stat(absolute)
            except OSError:
                continue
            self.by_id.setdefault((st.st_dev, st.st_ino), absolute)

    def __len__(self) -> int:
        return len(set(self.by_name.values()))


class AtomicOutputSet:
    """Several output files that appear together or not at all.

    >>> with AtomicOutputSet(overwrite=False) as outputs:          # doctest: +SKIP
    ...     with outputs.add("scan_HU.nrrd") as f:
    ...         f.write(data)
    ...     meta = outputs.add("scan_metadata.json", "w", encoding="utf-8")
    ...     meta.write(text)
    ... # clean exit: commit() renames both; exception: abort() removes both temporary files

    Files returned by :meth:`add` are closed by :meth:`commit` if the caller did not close them.
    Callbacks registered with :meth:`on_commit` (writers use it to finish their data) run first.

    *protected*: input paths; an output that is (the same file as) one of them is refused with
    :class:`OutputIsInputError`, whatever *overwrite* says (any number of paths: they are kept as a set
    of resolved names and file ids). *refuse*: ``refuse(existing_path) -> reason or None``, asked about
    every existing file this set would replace or remove (e.g. "a SCANCO file by its content"); a
    reason refuses it like an input, whatever *overwrite* says. *replace_also* (needs
    ``overwrite=True``): files of an earlier output set (:func:`previous_outputs`) removed at commit
    together with the replacement, all or nothing: they are moved aside first and put back if the
    commit fails.

    The commit record (:meth:`set_record`, e.g. the metadata JSON) is placed last: an existing file of
    that name is moved aside before anything else is placed, and with ``fsync=True`` every file and the
    folder are on disk before the record is renamed into place. So a set whose record exists was
    complete when the record appeared, and a commit killed half-way leaves no record.
    """

    def __init__(self, overwrite: bool = False, *, fsync: bool = False, protected=(), replace_also=(),
                 refuse=None):
        self.overwrite = bool(overwrite)
        self.fsync = bool(fsync)
        self._entries: list[_Entry] = []
        self._by_final: dict[str, _Entry] = {}
        self._callbacks = []
        self._state = "open"  # open -> committing -> committed | aborted
        self._failure: Optional[BaseException] = None
        self._protected: list[InputSet] = []
        self._refuse = refuse
        self._record: Optional[Path] = None
        self._record_check = None
        self._replace_also: list[Path] = []
        self.protect(protected)
        if replace_also:
            if not self.overwrite:
                raise ValueError("replace_also needs overwrite=True")
            stale = [Path(os.path.abspath(os.fspath(p))) for p in replace_also]
            for path in stale:
                self._refuse_protected(path)
            self._replace_also = list(dict.fromkeys(stale))

    # -- bookkeeping --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def final_paths(self) -> list[Path]:
        return [entry.final for entry in self._entries]

    def temp_path(self, final_path) -> Path:
        """The temporary path that holds the data of *final_path* until commit."""
        return self._entry(final_path).temp

    def _entry(self, final_path) -> _Entry:
        key = os.path.abspath(os.fspath(final_path))
        try:
            return self._by_final[key]
        except KeyError:
            raise ValueError(f"{final_path}: not part of this output set") from None

    def _check_open(self):
        if self._failure is not None:
            raise self._failure_error()
        if self._state != "open":
            raise RuntimeError(f"this output set is {self._state}; it cannot take more outputs")

    # -- safety checks made before anything is written ----------------------------------------------
    def protect(self, paths) -> None:
        """Add input *paths* (paths, or :class:`InputSet` objects made once for a whole batch) that no
        output of this set may be, whatever ``overwrite`` says."""
        loose = []
        for path in paths:
            if isinstance(path, InputSet):
                self._protected.append(path)
            else:
                loose.append(path)
        if loose:
            self._protected.append(InputSet(loose))
        for entry in self._entries:
            self._refuse_protected(entry.final)
        for path in self._replace_also:
            self._refuse_protected(path)

    def set_record(self, final_path, check=None) -> None:
        """Make *final_path* (a member of this set, added before or after) the commit record: placed
        last, after every other member and (``fsync``) after the files and folders are on disk.
        ``check()``, when given, runs just before the record is placed (every other member is in place
        by then); an exception from it takes the whole set back, as any failure of the commit does."""
        self._record = Path(os.path.abspath(os.fspath(final_path)))
        self._record_check = check

    def _refuse_protected(self, final: Path) -> None:
        if self._protected:
            names = [os.path.normcase(n) for n in (os.fspath(final), os.path.realpath(final))]
            for inputs in self._protected:
                for name in names:
                    protected = inputs.by_name.get(name)
                    if protected is not None:
                        raise OutputIsInputError(final, protected)
        if not self._protected and self._refuse is None:
            return
        try:
            final_stat = os.stat(final)
        except OSError:
            return
        for inputs in self._protected:
            protected = inputs.by_id.get((final_stat.st_dev, final_stat.st_ino))
            if protected is not None:
                raise OutputIsInputError(final, protected)
        if self._refuse is not None and os.path.lexists(final):
            reason = self._refuse(final)
            if reason:
                raise OutputProtectedError(final, reason)

    def check_free(self, paths) -> None:
        """Check every planned final path before anything is read or written.

        Raises :class:`OutputIsInputError` for a path that is a protected input (always), and without
        ``overwrite`` :class:`OutputExistsError` for the first path that exists already. Nothing is
        reserved: :meth:`add` checks again, and commit never clobbers a file that appears meanwhile.
        """
        finals = [Path(os.path.abspath(os.fspath(p))) for p in paths]
        for final in finals:
            self._refuse_protected(final)
        if not self.overwrite:
            for final in finals:
                if os.path.lexists(final):
                    raise OutputExistsError(final)

    def fail(self, exc: BaseException) -> None:
        """Mark the set as failed because one of its writers failed with *exc*.

        No file is closed or removed here (another thread may still be writing one): the owner's
        :meth:`abort` (or the ``with`` block) does that once its writers stopped. :meth:`commit` and
        :meth:`add` refuse from now on, with the first failure's reason.
        """
        if self._failure is None:
            self._failure = exc

    def _failure_error(self) -> BaseException:
        exc = self._failure
        if isinstance(exc, OutputError):
            cls, args = exc.__reduce__()
            return cls(*args)  # a fresh copy: the first one was raised in its writer's thread
        if isinstance(exc, OSError):
            return output_error_from(self._guess_final(exc), exc)
        return RuntimeError(f"an output of this set failed earlier ({type(exc).__name__}: {exc})")

    # -- adding outputs -----------------------------------------------------------------------------
    @staticmethod
    def _new_temp(final: Path, create, discard, what: str) -> Path:
        """A new hidden temporary sibling of ``final``, made by ``create(path)`` (exclusive: an existing
        name is tried again), registered for signal clean-up before it exists."""
        for _attempt in range(100):
            temp = _hidden_sibling(final, _PARTIAL_MARK)
            _register(str(temp))  # before creating it: a signal in between must not leak it
            try:
                create(temp)
            except BaseException as exc:
                if isinstance(exc, FileExistsError):
                    _unregister(str(temp))
                    continue
                if isinstance(exc, OSError):
                    _unregister(str(temp))
                    raise output_error_from(final, exc) from exc
                discard(temp)  # interrupted by a signal: it may exist; its exclusive name is ours
                raise
            return temp
        raise OutputError(final, f"could not create a temporary {what} name")  # pragma: no cover

    def _reserve_check(self, final_path) -> Path:
        """The checks every new member passes (open set, not added twice, not an input, folder exists);
        returns the absolute final path."""
        self._check_open()
        final = Path(os.path.abspath(os.fspath(final_path)))
        if str(final) in self._by_final:
            raise ValueError(f"{final}: added twice to the same output set")
        self._refuse_protected(final)
        folder = final.parent
        if not folder.is_dir():
            raise OutputError(final, f"the folder {folder} does not exist", errno.ENOENT)
        return final

    def add_path(self, final_path) -> Path:
        """Reserve *final_path*; return the (created, empty) temporary path to write it to.

        Use this when another library writes the file by name. The temporary file is committed or
        removed together with the rest of the set.
        """
        final = self._reserve_check(final_path)
        if not self.overwrite and os.path.lexists(final):
            raise OutputExistsError(final)
        if self.overwrite and final.is_dir():
            raise OutputError(final, "a folder has this name", errno.EISDIR)
        temp = self._new_temp(final, lambda path: os.close(_create_exclusive(path)), _discard_temp, "file")
        entry = _Entry(final, temp)
        self._entries.append(entry)
        self._by_final[str(final)] = entry
        return temp

    def add_directory(self, final_path) -> Path:
        """Reserve the directory *final_path*; return an empty hidden temporary directory to fill.

        The temporary directory sits beside the final one (``.<name>.partial-<writer>-<random>``) and is
        renamed onto *final_path* by :meth:`commit`, together with the rest of the set; :meth:`abort`
        removes it with everything in it. Without ``overwrite`` an existing *final_path* is an error
        (checked here and again just before the rename); with ``overwrite`` an existing directory is
        moved aside at commit, removed once the whole set is in place, and put back if the commit fails.
        A file (or a link) with that name is never replaced by a directory.
        """
        final = self._reserve_check(final_path)
        if not self.overwrite and os.path.lexists(final):
            raise OutputExistsError(final, "the folder exists already (pass overwrite=True to replace it)")
        if self.overwrite and os.path.lexists(final) and (os.path.islink(final) or not final.is_dir()):
            raise OutputError(final, "a file has this name; only a folder can be replaced by a folder",
                              errno.ENOTDIR)
        temp = self._new_temp(final, os.mkdir, _discard_tree, "folder")
        entry = _Entry(final, temp, is_dir=True)
        self._entries.append(entry)
        self._by_final[str(final)] = entry
        return temp

    def add(self, final_path, mode: str = "wb", *, buffering: int = -1, encoding=None, newline=None):
        """Reserve *final_path* and return an open file object writing its temporary file.

        *mode* is ``"wb"`` (default, buffered binary, 1 MiB buffer) or ``"w"`` (text; pass *encoding*).
        The file object's ``name`` is the temporary path.
        """
        if mode not in ("wb", "w", "wt"):
            raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
        temp = self.add_path(final_path)
        entry = self._by_final[str(Path(os.path.abspath(os.fspath(final_path))))]
        if buffering == -1 and "b" in mode:
            buffering = _DEFAULT_BUFFER_BYTES
        try:
            # the temporary file was just created empty: open it without O_TRUNC. Truncating it
            # (mode "w") made ext4 flag it for "replace via truncate" and write all of its data
            # back inside close(), in the committing thread, throttled by the disk (auto_da_alloc)
            reopen = "r+b" if "b" in mode else "r+"
            handle = open(temp, reopen, buffering=buffering, encoding=encoding, newline=newline)
        except BaseException as exc:
            # forget this output only; the rest of the set is untouched
            self._entries.remove(entry)
            del self._by_final[str(entry.final)]
            _discard_temp(temp)
            if isinstance(exc, OSError):
                raise output_error_from(entry.final, exc) from exc
            raise
        entry.file = handle
        return handle

    def on_commit(self, callback) -> None:
        """Run ``callback()`` at the start of :meth:`commit`, before files are closed and renamed.

        Writers register their ``close`` here, so forgetting to close a writer cannot commit a
        truncated file. An exception from a callback aborts the set.
        """
        self._check_open()
        self._callbacks.append(callback)

    # -- finishing ----------------------------------------------------------------------------------
    def commit(self) -> list[Path]:
        """Finish every output and rename all of them onto their final names; return the final paths.

        On any failure every temporary file is removed, finals placed so far are taken back (replaced
        files are restored from a hard-link backup when the file system allows it), and the error is
        raised (:class:`OutputError` for operating-system errors).
        """
        if self._state == "committed":
            return self.final_paths
        if self._failure is not None and self._state == "open":
            error = self._failure_error()
            self.abort()
            raise error
        self._check_open()
        self._state = "committing"
        current = None
        try:
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback()
            if self._failure is not None:
                raise self._failure_error()
            for entry in self._entries:
                current = entry
                self._close_entry(entry, sync=self.fsync)
            current = None
            self._place_all()
        except BaseException as exc:
            self._state = "open"
            self.abort()
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                path = current.final if current is not None else self._guess_final(exc)
                raise output_error_from(path, exc) from exc
            raise
        self._state = "committed"
        return self.final_paths

    def _close_entry(self, entry: _Entry, sync: bool) -> None:
        if entry.is_dir:
            if sync:
                _sync_tree(entry.temp)
            return
        handle = entry.file
        if handle is None or handle.closed:
            if sync:
                fd = os.open(entry.temp, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
        handle.close()

    def _place_all(self) -> None:
        placed = []  # (entry, backup path or None, had_previous)
        aside = []   # (stale sibling, its hidden backup name)
        entry = None
        record = self._by_final.get(str(self._record)) if self._record is not None else None
        members = [e for e in self._entries if e is not record] + ([record] if record is not None else [])
        try:
            finals = {str(e.final) for e in self._entries}
            if record is not None and self.overwrite and os.path.lexists(record.final) \
                    and not os.path.isdir(record.final):
                # the earlier record goes first: while files are being replaced there is none
                entry = record
                self._refuse_protected(record.final)
                backup = _hidden_sibling(record.final, _BACKUP_MARK)
                os.rename(record.final, backup)  # not registered: it must survive a signal handler
                aside.append((record.final, backup))
            for stale in self._replace_also:
                if str(stale) in finals or not os.path.lexists(stale):
                    continue
                entry = _Entry(stale, stale)  # names the stale file in an error
                self._refuse_protected(stale)
                backup = _hidden_sibling(stale, _BACKUP_MARK)
                os.rename(stale, backup)  # not registered: a signal handler must not delete the only copy
                aside.append((stale, backup))
            for entry in members:
                if entry is record and self.fsync:
                    self._sync_folders()  # every other member's name is on disk before the record's
                if entry is record and self._record_check is not None:
                    self._record_check()
                self._refuse_protected(entry.final)
                if entry is record and any(final == entry.final for final, _b in aside):
                    placed.append(self._place_exclusive(entry))  # its old file was moved aside above
                elif entry.is_dir:
                    placed.append(self._place_directory(entry))
                elif self.overwrite:
                    placed.append(self._place_replacing(entry))
                else:
                    placed.append(self._place_exclusive(entry))
        except BaseException as exc:
            self._rollback(placed)
            for stale, backup in reversed(aside):
                try:
                    os.rename(backup, stale)
                except OSError:
                    pass
            if entry is None:
                entry = _Entry(Path("<output>"), Path("<output>"))
            if isinstance(exc, FileExistsError):
                raise OutputExistsError(entry.final, "the file appeared while it was being written "
                                        "(pass overwrite=True to replace it)") from exc
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise output_error_from(entry.final, exc) from exc
            raise
        # all placed: drop the temporary names (hard links) and backups
        for entry, backup, _had in placed:
            if entry.is_dir:
                _unregister(str(entry.temp))  # renamed onto the final name: nothing left to remove
                if backup is not None:
                    _discard_tree(backup)
                continue
            if os.path.lexists(entry.temp):
                try:
                    os.unlink(entry.temp)
                except OSError:
                    pass
            _unregister(str(entry.temp))
            if backup is not None:
                _discard_temp(backup)
        for _stale, backup in aside:
            try:
                _remove_path(backup)
            except OSError:
                pass
        if self.fsync:
            self._sync_folders()

    def _place_exclusive(self, entry: _Entry):
        try:
            os.link(entry.temp, entry.final)  # fails with EEXIST if the final name exists: no clobbering
        except FileExistsError:
            raise
        except (OSError, AttributeError, NotImplementedError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _NO_LINK_ERRNOS:
                raise
            # File system without hard links: checked rename (on Windows rename refuses existing targets).
            if os.path.lexists(entry.final):
                raise FileExistsError(errno.EEXIST, "exists", str(entry.final)) from exc
            os.rename(entry.temp, entry.final)
        return (entry, None, False)

    def _place_replacing(self, entry: _Entry):
        backup = None
        had_previous = os.path.lexists(entry.final)
        if had_previous:
            backup = _hidden_sibling(entry.final, _BACKUP_MARK)
            try:
                os.link(entry.final, backup)
            except (OSError, AttributeError, NotImplementedError):
                backup = None
            else:
                _register(str(backup))
        try:
            os.replace(entry.temp, entry.final)
        except BaseException:
            if backup is not None:
                _discard_temp(backup)
            raise
        return (entry, backup, had_previous)

    def _place_directory(self, entry: _Entry):
        """Rename a temporary directory onto its final name; an old directory is moved aside first."""
        backup = None
        if os.path.lexists(entry.final):
            if not self.overwrite:
                raise FileExistsError(errno.EEXIST, "exists", str(entry.final))
            if os.path.islink(entry.final) or not entry.final.is_dir():
                raise OutputError(entry.final, "a file has this name; only a folder can be replaced by a "
                                  "folder", errno.ENOTDIR)
            backup = _hidden_sibling(entry.final, _BACKUP_MARK)
            _register(str(backup))
            try:
                os.rename(entry.final, backup)
            except BaseException:
                _unregister(str(backup))
                raise
        try:
            # rename() would replace an empty directory that appeared since the check above; the window
            # is the time between two system calls (there is no portable "rename unless it exists").
            os.rename(entry.temp, entry.final)
        except BaseException:
            if backup is not None:
                try:
                    os.rename(backup, entry.final)
                    _unregister(str(backup))
                except OSError:
                    pass
            raise
        return (entry, backup, backup is not None)

    def _rollback_directory(self, entry: _Entry, backup) -> None:
        # the new tree goes back to its temporary name (abort removes it), the old one is put back
        os.rename(entry.final, entry.temp)
        if backup is not None:
            os.rename(backup, entry.final)
            _unregister(str(backup))

    def _rollback(self, placed) -> None:
        for entry, backup, had_previous in reversed(placed):
            if entry.is_dir:
                try:
                    self._rollback_directory(entry, backup)
                except OSError:
                    pass
                continue
            try:
                if backup is not None:
                    os.replace(backup, entry.final)
                    _unregister(str(backup))
                else:
                    # we created this final name (or replaced a file we could not back up)
                    os.unlink(entry.final)
            except OSError:
                pass

    def _sync_folders(self) -> None:
        if sys.platform.startswith("win"):
            return
        for folder in {entry.final.parent for entry in self._entries}:
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def abort(self) -> None:
        """Close and delete every temporary file of this set. Idempotent; never raises OSError."""
        if self._state in ("committed", "aborted"):
            return
        if self._state == "committing":
            # commit() handles its own failure and calls abort again afterwards
            return
        self._state = "aborted"
        self._callbacks = []
        for entry in self._entries:
            if entry.is_dir:
                _discard_tree(entry.temp)
                continue
            handle = entry.file
            if handle is not None and not handle.closed:
                try:
                    handle.close()
                except BaseException:
                    pass
            try:
                os.unlink(entry.temp)
            except OSError:
                pass
            _unregister(str(entry.temp))

    def _guess_final(self, exc: BaseException):
        filename = getattr(exc, "filename", None)
        if filename is not None:
            for entry in self._entries:
                if os.path.abspath(os.fspath(filename)) in (str(entry.temp), str(entry.final)):
                    return entry.final
        if len(self._entries) == 1:
            return self._entries[0].final
        if self._entries:
            return ", ".join(str(entry.final) for entry in self._entries)
        return None

    # -- context manager ----------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
            return False
        self.abort()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error_from(self._guess_final(exc), exc) from exc
        return False

    def __repr__(self):
        return f"AtomicOutputSet({len(self._entries)} outputs, {self._state}, overwrite={self.overwrite})"


class atomic_output_file:
    """One atomic output: ``with atomic_output_file(path) as f: f.write(...)``.

    Shorthand for an :class:`AtomicOutputSet` holding a single file.
    """

    def __init__(self, final_path, mode: str = "wb", *, overwrite: bool = False, fsync: bool = False,
                 encoding=None, newline=None):
        self._set = AtomicOutputSet(overwrite=overwrite, fsync=fsync)
        self._args = (final_path, mode, encoding, newline)

    def __enter__(self):
        final_path, mode, encoding, newline = self._args
        return self._set.add(final_path, mode, encoding=encoding, newline=newline)

    def __exit__(self, exc_type, exc, tb):
        return self._set.__exit__(exc_type, exc, tb)

