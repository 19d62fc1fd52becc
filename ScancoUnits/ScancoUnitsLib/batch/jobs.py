"""A batch of conversions, apart from the command line: per-file results, parallel jobs, signals.

:func:`convert_one` converts one input and never raises for a bad input: it returns a
:class:`FileResult` (``converted``, ``skipped``, ``failed`` or ``interrupted``). :class:`Batch`
runs many, one after the other or in worker processes (``jobs``), calls ``on_result`` as each
finishes and keeps what is needed after Ctrl-C / SIGTERM (which file was interrupted, after how
long, which never started). :mod:`~ScancoUnitsLib.batch.dask` runs the same :func:`convert_one` on a
Dask cluster.

Here: :class:`Batch`, the front. One file: :mod:`~ScancoUnitsLib.batch.one_file` (:func:`convert_one`),
:mod:`~ScancoUnitsLib.batch.results` (:class:`FileResult`) and
:mod:`~ScancoUnitsLib.batch.skip_existing`; temporary files of killed conversions:
:mod:`~ScancoUnitsLib.batch.leftovers`; signals: :mod:`~ScancoUnitsLib.batch.signals`; worker
processes: :mod:`~ScancoUnitsLib.batch.pool`; the status line: :mod:`~ScancoUnitsLib.batch.progress`.
Their public names are re-exported here.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .leftovers import SweepReport, atomic_base_name, remove_partials_of, sweep_output_folder
from .one_file import convert_one
from .pool import STOP_GRACE_S, WorkerProcess, death_of
from .progress import BatchProgress
from .results import (NOT_STARTED, STATUSES, STRICT_FAILURE, FileResult, mask_coverage_of,
                      strict_result)
from .signals import ignore_further_signals, signal_name, signal_number
from .skip_existing import UP_TO_DATE, ExistingSet, existing_metadata, existing_set

__all__ = ["Batch", "BatchProgress", "ExistingSet", "FileResult", "NOT_STARTED", "STATUSES", "STRICT_FAILURE",
           "SweepReport", "UP_TO_DATE", "atomic_base_name", "convert_one", "existing_metadata", "existing_set",
           "ignore_further_signals", "mask_coverage_of", "remove_partials_of", "signal_name",
           "signal_number", "strict_result", "sweep_output_folder"]


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
        workers: List[WorkerProcess] = []
        try:
            workers = [WorkerProcess(context, live, self.protected) for _ in range(min(jobs, len(queue)))]
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

    def _take(self, w: "WorkerProcess", message, queue, deaths) -> Optional[int]:
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

    def _replace_dead(self, w: "WorkerProcess", context, live: bool, queue, deaths) -> "WorkerProcess":
        """A worker died: its file (if it held one) is retried once, at the front of the queue, or
        reported failed; a fresh worker takes its place."""
        w.process.join(1)
        path, w.path = w.path, None
        if path is not None:
            remove_partials_of(self.folder_of(path), self.stems[path], newer_than=self.started)
            why = f"the worker process converting it died ({death_of(w.process.exitcode)}; out of memory?)"
            deaths.setdefault(path, []).append(why)
            if len(deaths[path]) == 1:
                queue.appendleft(path)
            else:
                self.add(path, FileResult(str(path), "failed",
                                          error=f"{path}: {why}, also on the retry; its partial outputs were removed"))
        w.conn.close()
        return WorkerProcess(context, live, self.protected)

    def _stop_workers(self, workers: List["WorkerProcess"], interrupt) -> None:
        """After a signal: busy workers turn SIGTERM into Interrupted and clean up (repeated, as a
        worker may be between two calls); their results are kept; a worker that does not answer in
        time is killed and its file reported interrupted. Idle workers exit."""
        deadline = time.monotonic() + STOP_GRACE_S
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
