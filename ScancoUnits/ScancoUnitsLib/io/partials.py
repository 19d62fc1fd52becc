"""Names of temporary and backup files, and sweeping the ones whose writer is provably gone.

What no signal handler can clean up (SIGKILL, power loss) is found later by the temporary names
themselves: ``.<name>.partial-<writer>-<random>`` (backups: ``.previous-``), where ``<writer>`` is
:func:`~ScancoUnitsLib.io.writer_identity.writer_id`. :func:`sweep_stale_partials` removes the files
whose writer is provably gone (same host, same boot, process no longer running) and leaves (and
reports) the others. A final name too long for that suffix gets a shortened, hashed temporary name
(``.<start of name>~<hash>.partial-...``), so any legal final name works.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .writer_identity import Writer, hash8, writer_gone, writer_id

__all__ = [
    "PARTIAL_MARK",
    "BACKUP_MARK",
    "ID_PATTERN",
    "hidden_sibling",
    "PartialScan",
    "scan_partials",
    "remove_path",
    "sweep_stale_partials",
]

PARTIAL_MARK = ".partial-"
BACKUP_MARK = ".previous-"
_NAME_MAX_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, tmpfs, NTFS (in UTF-16 units), APFS
ID_PATTERN = re.compile(
    r"^\.(?P<base>.+?)(?P<mark>\.partial-|\.previous-)"
    r"(?P<host>[0-9a-f]{8})(?P<boot>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)-[0-9a-f]{8}$")
# names of the releases before writer ids: ``.<name>.partial-<8 hex>``; their writer is unknown
_LEGACY_PATTERN = re.compile(r"^\.(?P<base>.+)(?P<mark>\.partial-|\.previous-)[0-9a-f]{8}$")
_SHORTENED_MARK = "~"


def _fit_name(name: str, suffix: str) -> str:
    """``.<name><suffix>``, or ``.<start of name>~<hash><suffix>`` when that would exceed NAME_MAX bytes."""
    full = f".{name}{suffix}"
    if len(os.fsencode(full)) <= _NAME_MAX_BYTES:
        return full
    tag = _SHORTENED_MARK + hash8(name)
    room = _NAME_MAX_BYTES - len(os.fsencode(f".{tag}{suffix}"))
    head = os.fsencode(name)[:max(room, 1)].decode("utf-8", "ignore") if os.name != "nt" else name[:room]
    return f".{head}{tag}{suffix}"


def hidden_sibling(final: Path, mark: str) -> Path:
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
        match = ID_PATTERN.match(name)
        if match is not None:
            if not _matches_stem(match["base"], stem):
                continue
            writer = Writer(match["host"], match["boot"], int(match["pid"]), int(match["start"]))
            gone = writer_gone(writer)
            bucket = scan.foreign if gone is None else scan.stale if gone else scan.live
            bucket.append(folder / name)
            continue
        legacy = _LEGACY_PATTERN.match(name)
        if legacy is not None and _matches_stem(legacy["base"], stem):
            scan.foreign.append(folder / name)
    return scan


def remove_path(path: Path) -> None:
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
            remove_path(path)
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
