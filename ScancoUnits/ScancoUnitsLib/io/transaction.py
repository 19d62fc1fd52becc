"""Write output files atomically: temporary file in the target folder, then rename on commit.

An :class:`AtomicOutputSet` groups the outputs made from one input file (``_HU.nrrd``, ``_RHO.nrrd``,
``_metadata.json``, ``.nhdr`` + ``.raw`` pairs, ``.ome.zarr`` directories...). Each output is first
written to a hidden temporary file (or directory, :meth:`AtomicOutputSet.add_directory`) next to its final
name (``.<name>.partial-<writer>-<random>``, see :mod:`~ScancoUnitsLib.io.partials`).
:meth:`AtomicOutputSet.commit` renames all of them at once, and only when every one of them was written;
on any failure (exception, Ctrl-C, SIGTERM turned into :class:`Interrupted`) no temporary file and no new
final file remains.

Existing files are never replaced unless ``overwrite=True``. The check happens twice: when an output is
added (fail early) and at commit, where the temporary file is hard-linked onto the final name, which
fails if the name appeared meanwhile (no race between "check" and "rename").

Operating-system errors (disk full, permission denied...) surface as :class:`OutputError`, whose message
names the output path, after the temporary files have been removed. Every live temporary file is in the
process-wide registry of :mod:`~ScancoUnitsLib.io.signals`, so that a signal handler can remove them.

Safety checks for callers, all made before anything is written: ``protected=`` inputs are never
written over (:class:`OutputIsInputError`, whatever ``overwrite`` says), nor an existing file a
``refuse=`` rule names (:class:`OutputProtectedError`, e.g. a SCANCO file by its content);
:meth:`AtomicOutputSet.check_free` finds every collision up front; ``replace_also=`` (see
:func:`previous_outputs`: only files whose size and checksum an earlier record holds, see
:func:`fingerprint`) removes an earlier output set's other files at commit, all or nothing.

A set may name its commit record (:meth:`AtomicOutputSet.set_record`, the metadata JSON): it is placed
last, after the other members and, with ``fsync=True``, after their data and the folder are on disk;
the earlier record of that name is moved aside first. A set whose record exists was complete.

The errors, the signal handling, writer ids, partial-file sweeping and output records live in their own
modules of :mod:`ScancoUnitsLib.io`; their public names are importable from here as well.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from .output_errors import (OutputError, OutputExistsError, OutputIsInputError, OutputProtectedError,
                            output_error_from)
from .output_records import fingerprint, previous_outputs
from .partials import (BACKUP_MARK, PARTIAL_MARK, PartialScan, hidden_sibling, remove_path, scan_partials,
                       sweep_stale_partials)
from .placement import (Entry, close_entry, place_directory, place_exclusive, place_replacing, rollback,
                        sync_folders)
from .signals import (Interrupted, discard_temp, discard_tree, install_signal_cleanup, live_partials,
                      register, remove_all_partials, unregister)
from .writer_identity import writer_id

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

_DEFAULT_BUFFER_BYTES = 1 << 20


def _create_exclusive(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)


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
        self._entries: list[Entry] = []
        self._by_final: dict[str, Entry] = {}
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

    def _entry(self, final_path) -> Entry:
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
            temp = hidden_sibling(final, PARTIAL_MARK)
            register(str(temp))  # before creating it: a signal in between must not leak it
            try:
                create(temp)
            except BaseException as exc:
                if isinstance(exc, FileExistsError):
                    unregister(str(temp))
                    continue
                if isinstance(exc, OSError):
                    unregister(str(temp))
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
        temp = self._new_temp(final, lambda path: os.close(_create_exclusive(path)), discard_temp, "file")
        entry = Entry(final, temp)
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
        temp = self._new_temp(final, os.mkdir, discard_tree, "folder")
        entry = Entry(final, temp, is_dir=True)
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
            discard_temp(temp)
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
                close_entry(entry, sync=self.fsync)
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
                backup = hidden_sibling(record.final, BACKUP_MARK)
                os.rename(record.final, backup)  # not registered: it must survive a signal handler
                aside.append((record.final, backup))
            for stale in self._replace_also:
                if str(stale) in finals or not os.path.lexists(stale):
                    continue
                entry = Entry(stale, stale)  # names the stale file in an error
                self._refuse_protected(stale)
                backup = hidden_sibling(stale, BACKUP_MARK)
                os.rename(stale, backup)  # not registered: a signal handler must not delete the only copy
                aside.append((stale, backup))
            for entry in members:
                if entry is record and self.fsync:
                    sync_folders(self._entries)  # every other member's name is on disk before the record's
                if entry is record and self._record_check is not None:
                    self._record_check()
                self._refuse_protected(entry.final)
                if entry is record and any(final == entry.final for final, _b in aside):
                    placed.append(place_exclusive(entry))  # its old file was moved aside above
                elif entry.is_dir:
                    placed.append(place_directory(entry, self.overwrite))
                elif self.overwrite:
                    placed.append(place_replacing(entry))
                else:
                    placed.append(place_exclusive(entry))
        except BaseException as exc:
            rollback(placed)
            for stale, backup in reversed(aside):
                try:
                    os.rename(backup, stale)
                except OSError:
                    pass
            if entry is None:
                entry = Entry(Path("<output>"), Path("<output>"))
            if isinstance(exc, FileExistsError):
                raise OutputExistsError(entry.final, "the file appeared while it was being written "
                                        "(pass overwrite=True to replace it)") from exc
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise output_error_from(entry.final, exc) from exc
            raise
        # all placed: drop the temporary names (hard links) and backups
        for entry, backup, _had in placed:
            if entry.is_dir:
                unregister(str(entry.temp))  # renamed onto the final name: nothing left to remove
                if backup is not None:
                    discard_tree(backup)
                continue
            if os.path.lexists(entry.temp):
                try:
                    os.unlink(entry.temp)
                except OSError:
                    pass
            unregister(str(entry.temp))
            if backup is not None:
                discard_temp(backup)
        for _stale, backup in aside:
            try:
                remove_path(backup)
            except OSError:
                pass
        if self.fsync:
            sync_folders(self._entries)

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
                discard_tree(entry.temp)
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
            unregister(str(entry.temp))

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

