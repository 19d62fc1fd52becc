"""How the members of an output set reach the disk and their final names, and how they are taken back.

Each step handles one member (:class:`Entry`: its final and temporary path): finish its data
(:func:`close_entry`, with ``fsync``), place it without clobbering (:func:`place_exclusive`: a hard link
fails if the name exists), replacing an existing file behind a hard-link backup
(:func:`place_replacing`) or moving an existing folder aside (:func:`place_directory`), and
:func:`rollback` of what was placed when a later member fails. The order of the steps and the commit
record are :class:`~ScancoUnitsLib.io.transaction.AtomicOutputSet`'s.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from .output_errors import OutputError
from .partials import BACKUP_MARK, hidden_sibling
from .signals import discard_temp, register, unregister

__all__ = ["Entry", "sync_tree", "close_entry", "place_exclusive", "place_replacing", "place_directory",
           "rollback", "sync_folders"]

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


class Entry:
    """One member of a set: its final path, its temporary path, its open file (None once closed or
    for a folder)."""

    __slots__ = ("final", "temp", "file", "is_dir")

    def __init__(self, final: Path, temp: Path, is_dir: bool = False):
        self.final = final
        self.temp = temp
        self.file = None
        self.is_dir = is_dir


def sync_tree(folder: Path) -> None:
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


def close_entry(entry: Entry, sync: bool) -> None:
    """Flush and close the member's file (or, for a folder, nothing to close); *sync*: fsync it first."""
    if entry.is_dir:
        if sync:
            sync_tree(entry.temp)
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


def place_exclusive(entry: Entry):
    """Put the member on its final name, which must not exist; returns ``(entry, None, False)``."""
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


def place_replacing(entry: Entry):
    """Put the member on its final name, replacing a file there (kept as a hard-link backup when the file
    system allows it); returns ``(entry, backup or None, had_previous)``."""
    backup = None
    had_previous = os.path.lexists(entry.final)
    if had_previous:
        backup = hidden_sibling(entry.final, BACKUP_MARK)
        try:
            os.link(entry.final, backup)
        except (OSError, AttributeError, NotImplementedError):
            backup = None
        else:
            register(str(backup))
    try:
        os.replace(entry.temp, entry.final)
    except BaseException:
        if backup is not None:
            discard_temp(backup)
        raise
    return (entry, backup, had_previous)


def place_directory(entry: Entry, overwrite: bool):
    """Rename a temporary directory onto its final name; an old directory is moved aside first."""
    backup = None
    if os.path.lexists(entry.final):
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "exists", str(entry.final))
        if os.path.islink(entry.final) or not entry.final.is_dir():
            raise OutputError(entry.final, "a file has this name; only a folder can be replaced by a "
                              "folder", errno.ENOTDIR)
        backup = hidden_sibling(entry.final, BACKUP_MARK)
        register(str(backup))
        try:
            os.rename(entry.final, backup)
        except BaseException:
            unregister(str(backup))
            raise
    try:
        # rename() would replace an empty directory that appeared since the check above; the window
        # is the time between two system calls (there is no portable "rename unless it exists").
        os.rename(entry.temp, entry.final)
    except BaseException:
        if backup is not None:
            try:
                os.rename(backup, entry.final)
                unregister(str(backup))
            except OSError:
                pass
        raise
    return (entry, backup, backup is not None)


def rollback_directory(entry: Entry, backup) -> None:
    # the new tree goes back to its temporary name (abort removes it), the old one is put back
    os.rename(entry.final, entry.temp)
    if backup is not None:
        os.rename(backup, entry.final)
        unregister(str(backup))


def rollback(placed) -> None:
    """Take back the members *placed* so far (newest first): restore backups, remove new names."""
    for entry, backup, had_previous in reversed(placed):
        if entry.is_dir:
            try:
                rollback_directory(entry, backup)
            except OSError:
                pass
            continue
        try:
            if backup is not None:
                os.replace(backup, entry.final)
                unregister(str(backup))
            else:
                # we created this final name (or replaced a file we could not back up)
                os.unlink(entry.final)
        except OSError:
            pass


def sync_folders(entries) -> None:
    """fsync the folders the *entries* are placed in, so their names are on disk."""
    if sys.platform.startswith("win"):
        return
    for folder in {entry.final.parent for entry in entries}:
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
