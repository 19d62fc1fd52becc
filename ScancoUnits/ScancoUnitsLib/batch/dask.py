"""Run a :class:`~ScancoUnitsLib.batch.jobs.Batch` on a Dask distributed cluster: one task per file.

``scanco-units convert --dask-scheduler tcp://host:8786`` sends each file to a running cluster (the
input and output paths must be the same on every worker: a shared file system);
``--dask-local N`` starts a LocalCluster of N worker processes on this machine. Each task is
:func:`~ScancoUnitsLib.batch.one_file.convert_one`, so outputs, statuses, JSON lines and the summary are
those of a local run.

All or nothing per file still holds: a task first removes temporary files that an earlier attempt
of the same file left in this batch (a worker that died mid-file), and writes through
:class:`~ScancoUnitsLib.io.transaction.AtomicOutputSet`. A file whose worker dies is retried once
(``distributed.scheduler.allowed-failures`` = 1 on a LocalCluster we start; a running scheduler
keeps its own setting) and then reported failed, its temporary files removed. Ctrl-C / SIGTERM:
files not started are cancelled; running ones are told to stop through a Dask ``Event`` (checked
between slabs), report ``interrupted`` and leave nothing behind.

dask and distributed are imported lazily: ``pip install scanco-units[dask]``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Optional

from .jobs import Batch
from .leftovers import remove_partials_of
from .one_file import convert_one
from .results import NOT_STARTED, FileResult
from ..errors import DaskUnavailableError, ScancoError

EXTRA = "dask"
_CANCEL_CHECK_S = 0.5      # how often a running task asks whether the batch was interrupted
_STOP_GRACE_S = 30.0       # how long an interrupted batch waits for running tasks to stop cleanly
# A LocalCluster of ours: a file is retried once when its worker dies; no statistical profiler (it
# samples every thread's stack 100 times a second, holding the GIL the conversion threads need); and
# no MALLOC_TRIM_THRESHOLD_ in the workers' environment: a fixed threshold turns off glibc's dynamic
# mmap threshold, so every slab buffer would be a fresh mmap with page faults on first touch.
LOCAL_CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
}



class DaskConnectionError(ScancoError):
    """The Dask scheduler cannot be reached (or the local cluster cannot start)."""


def require_dask():
    """Import distributed (and dask), or raise :class:`DaskUnavailableError` naming the extra."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as exc:
        raise DaskUnavailableError(
            f"running on Dask needs dask and distributed ({exc.name or exc} is missing): "
            f"pip install scanco-units[{EXTRA}]") from exc
    return distributed


class _CancelWatch:
    """Progress callback of a task: False (cancel) once the batch's Dask Event is set."""

    def __init__(self, event_name: str):
        self.event_name = event_name
        self.event = None
        self.last = time.monotonic()
        self.cancelled = False

    def check(self) -> bool:
        """Ask the scheduler now; True once the batch was interrupted."""
        self.last = time.monotonic()
        try:
            if self.event is None:
                from distributed import Event

                self.event = Event(self.event_name)
            self.cancelled = bool(self.event.is_set())
        except Exception:  # noqa: BLE001 - no scheduler reachable: go on, the client decides
            pass
        return self.cancelled

    def __call__(self, done: int, total: int):
        if time.monotonic() - self.last < _CANCEL_CHECK_S:
            return None
        return False if self.check() else None


def dask_task(path, out_dir, options, stem: str, skip_existing: bool, batch_started: float,
              event_name: str, protected=None) -> FileResult:
    """One file on a worker (module-level: workers import it by name). ``protected``: the batch's
    inputs (an InputSet), never replaced by an output."""
    watch = _CancelWatch(event_name)
    if watch.check():  # queued before an interrupt: do not start
        return FileResult(str(path), "interrupted", error=f"{path}: {NOT_STARTED}")
    remove_partials_of(Path(out_dir), stem, newer_than=batch_started)  # an earlier attempt's, if any
    started = time.perf_counter()
    result = convert_one(path, out_dir, options, stem, skip_existing=skip_existing, progress=watch,
                         protected=[protected] if protected is not None else ())
    if watch.cancelled and result.status == "failed":
        return FileResult(str(path), "interrupted", seconds=time.perf_counter() - started,
                          error=f"{path}: interrupted (batch cancelled); partial outputs removed")
    return result


def _failure(path: Path, exc: BaseException) -> FileResult:
    name = type(exc).__name__
    if name == "KilledWorker":
        why = "the Dask worker converting it died (out of memory?), also on the retry; its partial outputs were removed"
    else:
        why = f"internal error ({name}: {exc})"
    return FileResult(str(path), "failed", error=f"{path}: {why}")


def start_local_cluster(workers: int):
    """A LocalCluster of ``workers`` processes, one thread each, files retried once when a worker
    dies. Its processes ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and it
    is this process that stops the tasks cleanly (then closes the cluster)."""
    import signal
    import threading

    import dask
    import distributed

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        with dask.config.set(LOCAL_CLUSTER_CONFIG):
            return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def run_on_dask(batch: Batch, scheduler: Optional[str] = None, local_workers: Optional[int] = None,
                client=None) -> None:
    """Convert every input of ``batch`` on a cluster: ``client`` (an existing distributed.Client),
    ``scheduler`` (an address) or ``local_workers`` (a LocalCluster of that many processes, one
    thread each). Calls ``batch.add`` as each file finishes; KeyboardInterrupt propagates after the
    running tasks were stopped and the unstarted ones cancelled."""
    distributed = require_dask()

    cluster = None
    own_client = client is None
    if own_client:
        try:
            if scheduler:
                client = distributed.Client(scheduler, timeout="30s")
            else:
                cluster = start_local_cluster(local_workers or 1)
                client = distributed.Client(cluster)
        except (OSError, TimeoutError, ValueError) as exc:
            if cluster is not None:
                cluster.close()
            where = f"the Dask scheduler {scheduler}" if scheduler else "a local Dask cluster"
            raise DaskConnectionError(f"cannot reach {where} ({type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())})") from exc
    stragglers: list = []
    token = uuid.uuid4().hex[:12]
    event_name = f"scanco-units-cancel-{token}"
    futures = {}
    pending: set = set()
    try:
        try:
            # the batch's inputs, sent once to every worker: no output may replace one of them
            protected = client.scatter(batch.protected, broadcast=True)
            for index, path in enumerate(batch.inputs):
                stem = batch.stems[path]  # mirrored folders may repeat a stem: the key needs the index
                future = client.submit(dask_task, str(path), str(batch.folder_of(path)), batch.options, stem,
                                       batch.skip_existing, batch.started, event_name, protected,
                                       key=f"scanco-units-{index}-{stem}-{token}", pure=False)
                futures[future] = path
                pending.add(future)
            by_key = {f.key: futures[f] for f in futures}
            last_poll = 0.0
            while pending:
                now = time.monotonic()
                if batch.progress is not None and now - last_poll > 1.0:
                    last_poll = now
                    _mark_running(client, by_key, batch)
                finished = [f for f in pending if f.done()]
                for f in finished:
                    pending.discard(f)
                    batch.add(futures[f], _outcome(f, futures[f], batch))
                if not finished:
                    time.sleep(0.05)
        except KeyboardInterrupt:
            stragglers = _stop(client, futures, pending, batch, event_name)
            raise
    finally:
        if own_client:
            try:
                client.close()
            finally:
                if cluster is not None:
                    cluster.close()  # its workers end: a task that did not stop ends with them
        for path in stragglers:
            remove_partials_of(batch.folder_of(path), batch.stems[path], newer_than=batch.started)


def _outcome(future, path: Path, batch: Batch) -> FileResult:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, a task error
        remove_partials_of(batch.folder_of(path), batch.stems[path], newer_than=batch.started)
        return _failure(path, exc)


def _mark_running(client, by_key, batch: Batch) -> None:
    try:
        processing = client.processing()
    except Exception:  # noqa: BLE001
        return
    for keys in processing.values():
        for key in keys:
            if key in by_key:
                batch.mark_started(by_key[key])


def _stop(client, futures, pending, batch: Batch, event_name: str) -> list:
    """Tell every task to stop (running ones between slabs, queued ones before they start), collect
    their results; cancel what does not answer in time. Returns the paths of those."""
    from distributed import Event

    from .signals import ignore_further_signals

    ignore_further_signals()
    try:
        Event(event_name, client=client).set()
    except Exception:  # noqa: BLE001 - the cluster is gone: nothing runs any more
        pass
    waiting = set(pending)
    deadline = time.monotonic() + _STOP_GRACE_S
    while waiting and time.monotonic() < deadline:
        finished = [f for f in waiting if f.done()]
        for f in finished:
            waiting.discard(f)
            batch.add(futures[f], _outcome(f, futures[f], batch))
        if not finished:
            time.sleep(0.05)
    stragglers = [futures[f] for f in waiting]
    if waiting:
        try:
            client.cancel(list(waiting))
        except Exception:  # noqa: BLE001
            pass
    for path in stragglers:
        remove_partials_of(batch.folder_of(path), batch.stems[path], newer_than=batch.started)
        batch.interrupted(path, KeyboardInterrupt())
    return stragglers
