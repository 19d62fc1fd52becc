"""A batch of conversions, apart from the command line: per-file results, parallel jobs, signals.

:func:`convert_one` converts one input and never raises for a bad input: it returns a
:class:`FileResult` (``converted``, ``skipped``, ``failed`` or ``interrupted``). :class:`Batch`
runs many, one after the other or in worker processes (``jobs``), calls ``on_result`` as each
finishes and keeps what is needed after Ctrl-C / SIGTERM (which file was interrupted, after how
long, which never started). :mod:`~ScancoUnitsLib.batch.dask` runs the same :func:`convert_one` on a
Dask cluster.

``skip_existing``: a file whose complete output set exists, made from the same input (its resolved
path, size and modification time, recorded in its ``_metadata.json``) with the same options (those
that change the output bytes: not overwrite, threads, slab size or fsync) is ``skipped`` — but only
when every file of the set still has the size and checksum the metadata recorded, and the metadata
its own checksum. An incomplete, changed or stale set of the same input is converted again,
replacing that set; a set made from another input (same stem, other path) is neither believed nor
replaced: that file fails with the other input's name, unless ``--overwrite`` was given.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..io.transaction import OutputExistsError, OutputIsInputError
from ..errors import ScancoError

STATUSES = ("converted", "skipped", "failed", "interrupted")
UP_TO_DATE = "outputs exist, made from this input (same size and modification time) with the same options"
NOT_STARTED = "not started (batch interrupted)"
# options that do not change the bytes of an output (the conversion is exact whatever the slab size)
_OPTIONS_NOT_COMPARED = ("overwrite", "threads", "slab_slices", "statistics", "fsync")


@dataclass
class FileResult:
    """What became of one input. ``outputs``: role -> path; ``stats``: the scan statistics
    (:mod:`~ScancoUnitsLib.pipeline.statistics`); ``facts``: scanner, geometry, calibration and threshold
    columns of the summary (:func:`~ScancoUnitsLib.batch.summary.facts_from_metadata`); ``reason``:
    why a file was skipped."""

    input: str
    status: str
    outputs: Dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    stats: Optional[dict] = None
    reason: Optional[str] = None
    input_bytes: int = 0
    facts: Optional[dict] = None
    relative_path: Optional[str] = None
    mask_coverage: Optional[str] = None   # "empty" or "full" when the threshold mask is (see mask_coverage_of)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")

    @property
    def name(self) -> str:
        return Path(self.input).name or self.input

    def to_dict(self) -> dict:
        """JSON-ready; the shape of one ``--json`` line."""
        return asdict(self)


def mask_coverage_of(result: FileResult) -> Optional[str]:
    """"empty" / "full" when a result's warnings say its threshold mask holds no / every voxel (the
    warning of :func:`~ScancoUnitsLib.pipeline.convert.mask_coverage_warning`), else None."""
    from ..pipeline.convert import MASK_COVERAGE_MARK

    for note in result.warnings:
        for kind in ("empty", "full"):
            if f"{MASK_COVERAGE_MARK}{kind}" in note:
                return kind
    return None


STRICT_FAILURE = "failed because of --strict (a warning is a failure)"


def strict_result(result: FileResult) -> FileResult:
    """``--strict``: a converted (or kept) file with any warning (empty or full mask, clipped HU, a
    conflicting header...) is a failure; its outputs are complete and stay, for inspection."""
    if result.status not in ("converted", "skipped") or not result.warnings:
        return result
    kept = "its outputs were written and are kept" if result.status == "converted" else "its outputs are kept"
    return replace(result, status="failed",
                   error=f"{_naming_input(Path(result.input), result.warnings[0])} [{STRICT_FAILURE}; {kept}]")


# ---- one file ---------------------------------------------------------------------------------------
def _comparable_options(options: dict) -> dict:
    plain = json.loads(json.dumps(options))  # tuples -> lists, as read back from a metadata file
    return {k: v for k, v in plain.items() if k not in _OPTIONS_NOT_COMPARED}


@dataclass(frozen=True)
class ExistingSet:
    """What ``--skip-existing`` found for one input. ``state``: ``"missing"`` (no metadata),
    ``"up_to_date"`` (``metadata`` is believed: same input, options, files and checksums),
    ``"redo"`` (a set of this same input that is stale, incomplete or changed: ``reason`` says which)
    or ``"other_input"`` (made from ``other_input``, another file with the same stem)."""

    state: str
    metadata: Optional[dict] = None
    reason: str = ""
    other_input: Optional[str] = None


def _read_metadata(path: Path) -> Optional[dict]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def existing_set(header, out_dir, options, stem: str) -> ExistingSet:
    """Judge the output set of ``stem`` in ``out_dir`` for the input ``header`` describes.

    The metadata is only believed when its own checksum matches (a hand-edit shows), it names this
    input by resolved path, size and mtime, the options are the same, and every planned file exists
    with the size and checksum recorded for it (a 0-byte, truncated or edited file shows)."""
    from ..io.transaction import fingerprint
    from ..pipeline.convert import METADATA_CHECKSUM_KEY, metadata_checksum, plan_files
    from ..pipeline.request import plan_request

    out_dir = Path(out_dir)
    meta_path = out_dir / f"{stem}_metadata.json"
    if not os.path.lexists(meta_path):
        return ExistingSet("missing")
    metadata = _read_metadata(meta_path)
    if metadata is None:
        return ExistingSet("redo", reason="its metadata is unreadable")
    try:
        source = metadata["input"]
        recorded_path = source.get("resolved_path") or source.get("path") or ""
        if os.path.normcase(os.path.realpath(recorded_path)) != os.path.normcase(os.path.realpath(header.path)):
            return ExistingSet("other_input", metadata, other_input=str(source.get("path") or recorded_path))
        if metadata.get(METADATA_CHECKSUM_KEY) != metadata_checksum(metadata):
            return ExistingSet("redo", reason="its metadata was edited or written by another release")
        st = os.stat(header.path)
        if (source.get("size_bytes"), source.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            return ExistingSet("redo", reason="the input changed since")
        if _comparable_options(metadata.get("options") or {}) != _comparable_options(options.to_dict()):
            return ExistingSet("redo", reason="other options")
        if options.statistics and not metadata.get("statistics"):  # asked for now, not made then
            return ExistingSet("redo", reason="no statistics")
        planned = plan_files(plan_request(header, options), out_dir, stem)
        recorded_outputs = metadata.get("outputs") or {}
        if set(recorded_outputs) != {f.role for f in planned}:
            return ExistingSet("redo", reason="other outputs")
        wanted = [p for f in planned for p in f.paths]
        if options.report:
            wanted.append(out_dir / f"{stem}_report.png")
        files = metadata.get("files") or {}
        for path in wanted:
            if path.name not in files or fingerprint(path) != files[path.name]:
                return ExistingSet("redo", reason=f"{path.name} is missing or not the file that was written")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ScancoError):
        return ExistingSet("redo", reason="its metadata is incomplete")
    return ExistingSet("up_to_date", metadata)


def existing_metadata(header, out_dir, options, stem: str) -> Optional[dict]:
    """The ``_metadata.json`` content of an up-to-date output set of this input (see
    :func:`existing_set`), or None when the set is missing, incomplete, changed or stale."""
    found = existing_set(header, out_dir, options, stem)
    return found.metadata if found.state == "up_to_date" else None


def _outputs_of(metadata: dict, out_dir: Path, stem: str, report: bool) -> Dict[str, str]:
    outputs = {role: str(out_dir / entry["file"]) for role, entry in (metadata.get("outputs") or {}).items()}
    outputs["metadata"] = str(out_dir / f"{stem}_metadata.json")
    if report:
        outputs["report"] = str(out_dir / f"{stem}_report.png")
    return outputs


def _naming_input(path: Path, message: str) -> str:
    """Errors about outputs (disk full, permission denied) name the output; put the input first."""
    if not message.startswith(str(path)):
        message = f"{path}: {message}"
    return " ".join(str(message).split("\n")).replace("\r", " ")


def convert_one(path, out_dir, options, stem: str, *, skip_existing: bool = False,
                progress: Optional[Callable[[int, int], Optional[bool]]] = None,
                protected: Sequence = ()) -> FileResult:
    """Convert one input (or skip it, see the module docstring). Never raises for a bad input or a
    bug of ours: the batch goes on. KeyboardInterrupt (Ctrl-C, SIGTERM as
    :class:`~ScancoUnitsLib.io.transaction.Interrupted`) passes through, outputs cleaned up.
    ``protected``: the other inputs of the run (no output may replace one, whatever the flags)."""
    from ..pipeline import convert as convert_module
    from .summary import facts_from_metadata
    from ..formats.reader import read_header

    path = Path(path)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0

    def failed(message: str) -> FileResult:
        return FileResult(str(path), "failed", error=_naming_input(path, message),
                          seconds=time.perf_counter() - started, input_bytes=size)

    only_ours = False
    try:
        header = read_header(path)
        if skip_existing:
            found = existing_set(header, out_dir, options, stem)
            if found.state == "up_to_date":
                metadata = found.metadata
                return FileResult(str(path), "skipped", outputs=_outputs_of(metadata, out_dir, stem, options.report),
                                  warnings=list(metadata.get("warnings") or []),
                                  seconds=time.perf_counter() - started, stats=metadata.get("statistics"),
                                  reason=UP_TO_DATE, input_bytes=size, facts=facts_from_metadata(metadata))
            if found.state == "other_input" and not options.overwrite:
                return failed(f"{out_dir / (stem + '_metadata.json')}: the outputs named {stem}_* were made from "
                              f"another input, {found.other_input}; they are kept (--overwrite replaces them; "
                              "or choose another output folder with -o)")
            if found.state != "other_input" and not options.overwrite:
                # this input's set, stale, incomplete or changed (or a commit that never finished): redone.
                # Only names this plan makes and files the earlier metadata recorded are replaced; with
                # no metadata at all, only files that carry our mark.
                options = replace(options, overwrite=True)
                only_ours = found.state == "missing"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = convert_module.convert_header(header, out_dir, options, stem=stem, progress=progress,
                                                   protected=protected,
                                                   replace_only_ours=only_ours)
        notes = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
        return FileResult(str(path), "converted", outputs={k: str(v) for k, v in result.outputs.items()},
                          warnings=notes, seconds=time.perf_counter() - started,
                          stats=result.metadata.get("statistics"), input_bytes=size,
                          facts=facts_from_metadata(result.metadata))
    except OutputExistsError as exc:
        return failed(f"{exc.path}: the file exists already (--overwrite replaces it; --skip-existing "
                      "keeps finished outputs)")
    except OutputIsInputError as exc:  # an input, or a SCANCO file: no flag replaces it
        return failed(f"{exc.path}: {exc.reason}")
    except ScancoError as exc:
        return failed(str(exc))
    except MemoryError:
        return failed("out of memory")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not stop the batch either
        return failed(f"internal error ({type(exc).__name__}: {exc})")


# ---- temporary files of a killed conversion ------------------------------------------------------------
def _output_names(stem: str):
    from ..pipeline.convert import stem_file_names

    return sorted(stem_file_names(stem))


def remove_partials_of(out_dir: Path, stem: str, newer_than: float = 0.0) -> List[Path]:
    """Delete the temporary and backup files of one input's outputs (``.<name>.partial-<writer>-...``)
    whose writer is provably gone (:func:`~ScancoUnitsLib.io.transaction.scan_partials`: this host, this
    boot, process no longer running; or this process's own registered ones), e.g. after its worker
    process was killed, and modified after
    ``newer_than`` (a time.time() value). Finished outputs, other inputs' files and files of a live
    writer, another host or another boot are not touched."""
    from ..io.partials import remove_path, scan_partials
    from ..io.signals import live_partials, unregister

    names = set(_output_names(stem))
    removed = []
    scan = scan_partials(out_dir, stem)
    ours = set(live_partials())  # this process's own, of a conversion that was unwound: ours to remove
    for path in scan.stale + [p for p in scan.live if p in ours]:
        base = atomic_base_name(path.name)
        if base is not None and base not in names and "~" not in base:  # "~": a shortened long name
            continue
        try:
            if os.lstat(path).st_mtime < newer_than:
                continue  # older than this batch: the start-of-run sweep reported it
            remove_path(path)
            unregister(str(path))
        except OSError:
            continue
        removed.append(path)
    return removed


def atomic_base_name(temporary_name: str) -> Optional[str]:
    """``.<name>.partial-<writer>-<random>`` -> ``<name>`` (None for other names)."""
    from ..io.partials import ID_PATTERN

    match = ID_PATTERN.match(temporary_name)
    return match["base"] if match else None


@dataclass
class SweepReport:
    """What the start-of-run sweep of an output folder did: ``removed`` temporary files of killed runs
    (this host and boot, writer gone), ``left`` those it cannot judge (another host or boot, unknown
    writer: maybe a live run elsewhere)."""

    folder: Path
    removed: List[Path] = field(default_factory=list)
    left: List[Path] = field(default_factory=list)

    def lines(self) -> List[str]:
        """One line each for stderr (none when there was nothing)."""
        out = []
        for paths, what in ((self.removed, "removed {n} temporary file(s) left by killed runs"),
                            (self.left, "left {n} temporary file(s) of another host or boot, or of an unknown "
                                        "writer, in place (remove them yourself once no run uses them)")):
            if paths:
                shown = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
                out.append(f"{self.folder}: {what.format(n=len(paths))}: {shown}")
        return out


def sweep_output_folder(out_dir) -> SweepReport:
    """At the start of a run: remove every stale temporary file of our writers in ``out_dir`` (any
    input's, not only this run's) and list the ones that cannot be judged."""
    from ..io.transaction import scan_partials, sweep_stale_partials

    out_dir = Path(out_dir)
    report = SweepReport(out_dir)
    if not out_dir.is_dir():
        return report
    report.removed = sweep_stale_partials(out_dir, warn=False)
    report.left = scan_partials(out_dir).foreign
    return report


# ---- signals ----------------------------------------------------------------------------------------------
def signal_number(interrupt: BaseException) -> int:
    signum = getattr(interrupt, "signum", None)
    return signum if isinstance(signum, int) else int(signal.SIGINT)  # plain KeyboardInterrupt: Ctrl-C


def signal_name(interrupt: BaseException) -> str:
    signum = signal_number(interrupt)
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else name


def ignore_further_signals() -> None:
    """While cleaning up after the first signal, a second one must not leave a traceback."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            try:
                signal.signal(getattr(signal, name), signal.SIG_IGN)
            except (ValueError, OSError):  # not the main thread
                pass


# ---- worker processes (--jobs N) --------------------------------------------------------------------------
# One pipe per worker and one file per worker at a time: the parent always knows which file a worker
# holds, so a worker that dies (kill -9, the OOM killer) costs only that file, which is retried once in
# a fresh worker; the others go on.
_worker_state = {"busy": False, "stopping": False, "signalled": False}
_EVENT_INTERVAL_S = 0.2  # a worker tells the parent how far it is at most this often
_PARENT_CHECK_S = 0.5    # how often a worker checks that its parent is still there
_STOP_GRACE_S = 60.0     # how long an interrupted batch waits for busy workers to clean up
_PR_SET_PDEATHSIG = 1    # linux/prctl.h


def _worker_signal(signum, frame):  # pragma: no cover - runs in worker processes
    """Busy: stop the conversion (its with-blocks remove its temporary files). Idle: exit (a worker
    holds no lock another one needs). Already unwinding: ignore it."""
    from ..io.transaction import Interrupted

    _worker_state["signalled"] = True  # start nothing new
    if not _worker_state["busy"]:
        os._exit(0)
    if not _worker_state["stopping"]:
        _worker_state["stopping"] = True
        raise Interrupted(signum)


def _die_with_parent(parent_pid: int) -> None:  # pragma: no cover - runs in worker processes
    """A worker whose parent is gone (killed, kill -9) stops like on SIGTERM: on Linux the kernel
    sends it (prctl PR_SET_PDEATHSIG); elsewhere, and as a fallback, a thread watches the parent
    pid. A busy worker removes its temporary files first."""
    import sys

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch():
        told = False
        while True:
            if os.getppid() != parent_pid:
                if not _worker_state["busy"]:
                    os._exit(0)
                if not told:
                    told = True
                    try:
                        os.kill(os.getpid(), signal.SIGTERM)
                    except OSError:
                        os._exit(1)
            time.sleep(_PARENT_CHECK_S)

    threading.Thread(target=watch, name="scanco-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # gone before prctl took effect
        os._exit(0)


def _worker_main(conn, parent_pid: int, live: bool, protected=None) -> None:  # pragma: no cover - worker processes
    """Convert the files the parent sends, one at a time: ("convert", path, out_dir, options, stem,
    skip_existing) -> ("fraction", path, done, total)* then ("result", path, FileResult or None,
    signal number or None); None: exit. ``protected``: the batch's inputs (an InputSet), sent once."""
    _worker_state["protected"] = protected
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _worker_signal)
    _die_with_parent(parent_pid)
    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            conn.send(message)

    while not _worker_state["signalled"] and os.getppid() == parent_pid:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        _, path, out_dir, options, stem, skip_existing = task
        result, signum = _worker_convert(path, out_dir, options, stem, skip_existing, send if live else None)
        try:
            send(("result", str(path), result, signum))
        except (OSError, ValueError):
            return


def _worker_convert(path, out_dir, options, stem, skip_existing, send=None):  # pragma: no cover - workers
    """(FileResult or None when not started (asked after a signal), signal number or None)."""
    if _worker_state["signalled"]:
        return None, None
    _worker_state["busy"], _worker_state["stopping"] = True, False
    started = time.perf_counter()
    report = None
    if send is not None:
        last = [started]

        def report(done, total):
            now = time.perf_counter()
            if now - last[0] >= _EVENT_INTERVAL_S:
                last[0] = now
                try:
                    send(("fraction", str(path), done, total))
                except (OSError, ValueError):
                    pass
            return None
    try:
        protected = _worker_state.get("protected")
        return convert_one(path, out_dir, options, stem, skip_existing=skip_existing, progress=report,
                           protected=[protected] if protected is not None else ()), None
    except KeyboardInterrupt as interrupt:
        from ..io.transaction import remove_all_partials

        remove_all_partials()  # worker processes end without running atexit handlers
        return (FileResult(str(path), "interrupted", seconds=time.perf_counter() - started,
                           error=f"{path}: interrupted by {signal_name(interrupt)}; partial outputs removed"),
                signal_number(interrupt))
    finally:
        _worker_state["busy"] = False


def _death_of(exitcode) -> str:
    if isinstance(exitcode, int) and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


class _WorkerProcess:
    """One worker process, its end of the pipe and the file it holds (None: idle)."""

    def __init__(self, context, live: bool, protected=None):
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child, os.getpid(), live, protected),
                                       name="scanco-units-worker", daemon=True)
        self.process.start()
        child.close()
        self.path: Optional[Path] = None

    def give(self, path: Path, task: tuple) -> bool:
        try:
            self.conn.send(task)
        except (OSError, ValueError):
            return False
        self.path = path
        return True

    def messages(self) -> list:
        """Everything the worker sent so far ([] when nothing; the pipe closed: [None])."""
        got = []
        try:
            while self.conn.poll():
                got.append(self.conn.recv())
        except (EOFError, OSError, ValueError):
            got.append(None)
        return got

    def dead(self) -> bool:
        return self.process.exitcode is not None

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(5)
        self.conn.close()

    def signal(self, signum) -> None:
        if self.process.exitcode is None:
            try:
                os.kill(self.process.pid, signum)
            except OSError:
                pass


# ---- the batch -------------------------------------------------------------------------------------------------
class Batch:
    """Inputs, where their outputs go and options, the results so far, and what is in flight.

    ``places``: input -> :class:`~ScancoUnitsLib.batch.discovery.OutputPlace` (output folder, stem, path
    relative to its root; :func:`~ScancoUnitsLib.batch.discovery.place_outputs`); without it every output
    goes into ``out_dir`` under ``stems``.

    ``on_result(FileResult)`` is called in the calling thread as each file finishes (also for
    interrupted files). ``progress``: an object with ``start(path)``, ``fraction(path, done,
    total)`` and ``finish(result)`` (see :class:`BatchProgress`), or None.
    """

    def __init__(self, inputs: Sequence[Path], out_dir, options, stems: Optional[Dict[Path, str]] = None, *,
                 places=None, skip_existing: bool = False, strict: bool = False,
                 on_result: Optional[Callable[[FileResult], None]] = None, progress=None):
        from .discovery import OutputPlace

        self.inputs = [Path(i) for i in inputs]
        self.out_dir = Path(out_dir)
        self.options = options
        if places is None:
            places = {i: OutputPlace(self.out_dir, stems[i], i.name) for i in self.inputs}
        self.places = {Path(i): place for i, place in places.items()}
        self.stems = {i: place.stem for i, place in self.places.items()}
        self.skip_existing = skip_existing
        self.strict = strict
        self.on_result = on_result
        self.progress = progress
        self.results: List[FileResult] = []
        self.reported = set()
        self.in_flight: Dict[Path, float] = {}     # path -> perf_counter() when seen started
        self.started = time.time() - 60.0          # temporary files older than this are not this batch's
        from ..io.transaction import InputSet

        self.protected = InputSet(self.inputs)     # no output of the batch may replace one of its inputs
        self._lock = threading.Lock()

    def folder_of(self, path: Path) -> Path:
        """The output folder of one input."""
        return self.places[Path(path)].folder

    # bookkeeping
    def mark_started(self, path: Path) -> None:
        with self._lock:
            if path not in self.in_flight and path not in self.reported:
                self.in_flight[path] = time.perf_counter()
        if self.progress is not None:
            self.progress.start(path)

    def add(self, path: Path, result: FileResult) -> None:
        place = self.places.get(Path(path))
        if place is not None and result.relative_path is None:
            result.relative_path = place.relative
        result.mask_coverage = mask_coverage_of(result)
        if self.strict:
            result = strict_result(result)
        with self._lock:
            self.in_flight.pop(path, None)
            self.results.append(result)
            self.reported.add(path)
        if self.progress is not None:
            self.progress.finish(result)
        if self.on_result is not None:
            self.on_result(result)

    def interrupted(self, path: Path, interrupt: BaseException, seconds: Optional[float] = None) -> None:
        """Its with-blocks removed its temporary files on the way out; the sweep catches the ones a
        signal or a killed worker left behind."""
        remove_partials_of(self.folder_of(path), self.stems[path], newer_than=self.started)
        if seconds is None:
            since = self.in_flight.get(path)
            seconds = time.perf_counter() - since if since is not None else 0.0
        self.add(path, FileResult(str(path), "interrupted", seconds=seconds,
                                  error=f"{path}: interrupted by {signal_name(interrupt)}; partial outputs removed"))

    def not_started(self) -> List[Path]:
        return [i for i in self.inputs if i not in self.reported]

    def current(self) -> List[Path]:
        return list(self.in_flight)

    # runners
    def run(self, jobs: int = 1) -> None:
        """Convert every input; KeyboardInterrupt propagates after the bookkeeping."""
        if jobs > 1 and len(self.inputs) > 1:
            self.run_parallel(jobs)
        else:
            self.run_sequential()

    def run_sequential(self) -> None:
        for path in self.inputs:
            self.mark_started(path)
            reporter = None if self.progress is None else self.progress.fraction_callback(path)
            try:
                result = convert_one(path, self.folder_of(path), self.options, self.stems[path],
                                     skip_existing=self.skip_existing, progress=reporter,
                                     protected=[self.protected])
            except KeyboardInterrupt as interrupt:
                ignore_further_signals()
                self.interrupted(path, interrupt)
                raise
            self.add(path, result)

    def run_parallel(self, jobs: int) -> None:
        """``jobs`` worker processes, one file each at a time. A worker that dies (kill -9, out of
        memory) is replaced; its file is retried once, then reported failed; the others are not
        touched. A signal that reaches a worker stops the batch (KeyboardInterrupt here)."""
        import multiprocessing
        from collections import deque
        from multiprocessing.connection import wait

        context = multiprocessing.get_context()
        live = bool(getattr(self.progress, "live", False))
        queue = deque(self.inputs)
        deaths: Dict[Path, List[str]] = {}
        workers: List[_WorkerProcess] = []
        try:
            workers = [_WorkerProcess(context, live, self.protected) for _ in range(min(jobs, len(queue)))]
            while queue or any(w.path is not None for w in workers):
                for w in workers:
                    while w.path is None and queue and not w.dead():
                        path = queue.popleft()
                        if w.give(path, ("convert", path, self.folder_of(path), self.options, self.stems[path],
                                         self.skip_existing)):
                            self.mark_started(path)
                        else:
                            queue.appendleft(path)
                            break
                wait([w.conn for w in workers] + [w.process.sentinel for w in workers], timeout=0.25)
                signalled = None
                for index, w in enumerate(workers):
                    dead = w.dead()
                    for message in w.messages():  # a result sent just before the worker died counts
                        signum = self._take(w, message, queue, deaths)
                        signalled = signum if signum is not None else signalled
                    if dead or w.dead():
                        for message in w.messages():
                            signum = self._take(w, message, queue, deaths)
                            signalled = signum if signum is not None else signalled
                        workers[index] = self._replace_dead(w, context, live, queue, deaths)
                if signalled is not None:
                    from ..io.transaction import Interrupted

                    raise Interrupted(signalled)
        except KeyboardInterrupt as interrupt:
            ignore_further_signals()
            self._stop_workers(workers, interrupt)
            raise
        for w in workers:
            w.stop()

    def _take(self, w: "_WorkerProcess", message, queue, deaths) -> Optional[int]:
        """One message of a worker: progress, or the result of its file. Returns the signal number
        a worker was stopped by, if any."""
        if message is None or w.path is None:
            return None
        if message[0] == "fraction":
            callback = self.progress.fraction_callback(w.path) if self.progress is not None else None
            if callback is not None:
                callback(message[2], message[3])
            return None
        path, (result, signum) = w.path, message[2:]
        w.path = None
        if result is None:
            queue.appendleft(path)  # asked after a signal: not started (not_started() reports it)
            return signum
        if deaths.get(path):
            result.warnings.insert(0, f"{path}: {deaths[path][0]}; converted on the retry")
        self.add(path, result)
        return signum

    def _replace_dead(self, w: "_WorkerProcess", context, live: bool, queue, deaths) -> "_WorkerProcess":
        """A worker died: its file (if it held one) is retried once, at the front of the queue, or
        reported failed; a fresh worker takes its place."""
        w.process.join(1)
        path, w.path = w.path, None
        if path is not None:
            remove_partials_of(self.folder_of(path), self.stems[path], newer_than=self.started)
            why = f"the worker process converting it died ({_death_of(w.process.exitcode)}; out of memory?)"
            deaths.setdefault(path, []).append(why)
            if len(deaths[path]) == 1:
                queue.appendleft(path)
            else:
                self.add(path, FileResult(str(path), "failed",
                                          error=f"{path}: {why}, also on the retry; its partial outputs were removed"))
        w.conn.close()
        return _WorkerProcess(context, live, self.protected)

    def _stop_workers(self, workers: List["_WorkerProcess"], interrupt) -> None:
        """After a signal: busy workers turn SIGTERM into Interrupted and clean up (repeated, as a
        worker may be between two calls); their results are kept; a worker that does not answer in
        time is killed and its file reported interrupted. Idle workers exit."""
        deadline = time.monotonic() + _STOP_GRACE_S
        busy = [w for w in workers if w.path is not None]
        for w in workers:
            if w.path is None:
                w.stop(timeout=1.0)
        while busy and time.monotonic() < deadline:
            for w in busy:
                w.signal(signal.SIGTERM)
            time.sleep(0.2)
            for w in list(busy):
                for message in w.messages():
                    if message is not None and message[0] == "result" and w.path is not None:
                        path, result = w.path, message[2]
                        w.path = None
                        if result is not None:
                            if result.status == "interrupted":
                                remove_partials_of(self.folder_of(path), self.stems[path], newer_than=self.started)
                            self.add(path, result)  # finished before the signal reached it, or stopped by it
                if w.path is None or w.dead():
                    busy.remove(w)
        for w in workers:
            if w.path is not None:  # died or stuck (a hung network drive...)
                w.process.kill()
                self.interrupted(w.path, interrupt)
                w.path = None
            w.stop(timeout=1.0)


# ---- progress on a terminal --------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class BatchProgress:
    """Files done of total, MB/s, ETA and the files in flight.

    ``live`` (a terminal): one status line on ``stream`` redrawn a few times a second by a thread;
    :meth:`print_line` prints a message above it. Not live: nothing here (the caller prints one
    plain line per finished file). MB/s counts the input bytes of converted files; the ETA assumes
    the remaining files go at the same rate.
    """

    def __init__(self, inputs: Sequence[Path], stream, live: bool, interval_s: float = 0.25):
        self.sizes = {}
        for path in inputs:
            try:
                self.sizes[Path(path)] = os.stat(path).st_size
            except OSError:
                self.sizes[Path(path)] = 0
        self.total = len(self.sizes)
        self.stream = stream
        self.live = live
        self.interval_s = interval_s
        self.done = 0
        self.bytes_done = 0
        self.bytes_converted = 0
        self.fractions: Dict[Path, float] = {}
        self.began = time.perf_counter()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._drawn = False

    def __enter__(self):
        if self.live:
            self._thread = threading.Thread(target=self._loop, name="scanco-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._clear()
        return False

    # events from the batch
    def start(self, path: Path) -> None:
        with self._lock:
            self.fractions.setdefault(Path(path), 0.0)

    def fraction_callback(self, path: Path):
        def report(done: int, total: int):
            with self._lock:
                self.fractions[Path(path)] = done / max(total, 1)
            return None
        return report if self.live else None

    def finish(self, result: FileResult) -> None:
        with self._lock:
            path = Path(result.input)
            self.fractions.pop(path, None)
            self.done += 1
            self.bytes_done += self.sizes.get(path, 0)
            if result.status == "converted":
                self.bytes_converted += self.sizes.get(path, 0)

    # drawing
    def line(self) -> str:
        with self._lock:
            elapsed = max(time.perf_counter() - self.began, 1e-9)
            in_flight_bytes = sum(self.sizes.get(p, 0) * f for p, f in self.fractions.items())
            rate = (self.bytes_converted + in_flight_bytes) / elapsed
            remaining = sum(self.sizes.values()) - self.bytes_done - in_flight_bytes
            eta = _duration(remaining / rate) if rate > 0 and self.done < self.total else "--:--"
            flying = ", ".join(f"{p.name} {100 * f:.0f}%" if f else p.name for p, f in self.fractions.items())
            return (f"[{self.done}/{self.total} files] {rate / 1e6:7.1f} MB/s  ETA {eta}"
                    + (f"  now: {flying}" if flying else ""))

    def _draw(self) -> None:
        text = self.line()
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, AttributeError, ValueError):
            width = 0
        width = width if width >= 40 else 120  # a pseudo-terminal may say 0
        self.stream.write("\r\033[K" + text[: width - 1])
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                self._draw()

    def print_line(self, stream, text: str) -> None:
        """Print ``text`` on ``stream`` without tearing the status line."""
        with self._lock:
            self._clear()
            stream.write(text + "\n")
            stream.flush()
            if self.live and not self._stop.is_set():
                self._draw()
