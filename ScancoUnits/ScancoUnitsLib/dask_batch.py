"""Run a :class:`~ScancoUnitsLib.batch.Batch` on a Dask distributed cluster: one task per file.

``scanco-units convert --dask-scheduler tcp://host:8786`` sends each file to a running cluster (the
input and output paths must be the same on every worker: a shared file system);
``--dask-local N`` starts a LocalCluster of N worker processes on this machine. Each task is
:func:`~ScancoUnitsLib.batch.convert_one`, so outputs, statuses, JSON lines and the summary are
those of a local run.

All or nothing per file still holds: a task first removes temporary files that an earlier attempt
of the same file left in this batch (a worker that died mid-file), and writes through
:class:`~ScancoUnitsLib.atomic_output.AtomicOutputSet`. A file whose worker dies is retried once
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

from .batch import Batch, FileResult, convert_one, remove_partials_of
from .errors import ScancoError

EXTRA = "dask"
_CANCEL_CHECK_S = 0.5      # how often a running task asks whether the batch was interrupted
_STOP_GRACE_S = 30.0       # how long an interrupted batch waits for running tasks to stop cleanly


class DaskUnavailableError(ScancoError):
    """dask / distributed are not installed."""


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
        self.last = time.monotonic()  # files done within the first interval never ask
        self.cancelled = False

    def __call__(self, done: int, total: int):
        now = time.monotonic()
        if now - self.last < _CANCEL_CHECK_S:
            return None
        self.last = now
        try:
            if self.event is None:
                from distributed import Event

                self.event = Event(self.event_name)
            self.cancelled = bool(self.event.is_set())
        except Exception:  # noqa: BLE001 - no scheduler reachable: go on, the client decides
            return None
        return False if self.cancelled else None


def dask_task(path, out_dir, options, stem: str, skip_existing: bool, batch_started: float,
              event_name: str) -> FileResult:
    """One file on a worker (module-level: workers import it by name)."""
    remove_partials_of(Path(out_dir), stem, newer_than=batch_started)  # an earlier attempt's, if any
    watch = _CancelWatch(event_name)
    started = time.perf_counter()
    result = convert_one(path, out_dir, options, stem, skip_existing=skip_existing, progress=watch)
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


def run_on_dask(batch: Batch, scheduler: Optional[str] = None, local_workers: Optional[int] = None,
                client=None) -> None:
    """Convert every input of ``batch`` on a cluster: ``client`` (an existing distributed.Client),
    ``scheduler`` (an address) or ``local_workers`` (a LocalCluster of that many processes, one
    thread each). Calls ``batch.add`` as each file finishes; KeyboardInterrupt propagates after the
    running tasks were stopped and the unstarted ones cancelled."""
    distributed = require_dask()
    import dask

    cluster = None
    own_client = client is None
    if own_client:
        if scheduler:
            client = distributed.Client(scheduler, timeout="30s")
        else:
            with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
                cluster = distributed.LocalCluster(n_workers=local_workers or 1, threads_per_worker=1,
                                                   processes=True, dashboard_address=None)
            client = distributed.Client(cluster)
    token = uuid.uuid4().hex[:12]
    event_name = f"scanco-units-cancel-{token}"
    try:
        futures = {}
        for path in batch.inputs:
            stem = batch.stems[path]
            future = client.submit(dask_task, str(path), str(batch.out_dir), batch.options, stem,
                                   batch.skip_existing, batch.started, event_name,
                                   key=f"scanco-units-{stem}-{token}", pure=False)
            futures[future] = path
        pending = set(futures)
        by_key = {f.key: futures[f] for f in futures}
        try:
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
            _stop(client, futures, pending, by_key, batch, event_name)
            raise
    finally:
        if own_client:
            try:
                client.close()
            finally:
                if cluster is not None:
                    cluster.close()


def _outcome(future, path: Path, batch: Batch) -> FileResult:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, a task error
        remove_partials_of(batch.out_dir, batch.stems[path], newer_than=batch.started)
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


def _stop(client, futures, pending, by_key, batch: Batch, event_name: str) -> None:
    from distributed import Event

    from .batch import ignore_further_signals

    ignore_further_signals()
    running = set()
    try:
        Event(event_name, client=client).set()
        for keys in client.processing().values():
            running.update(k for k in keys if k in by_key)
    except Exception:  # noqa: BLE001
        pass
    waiting = [f for f in pending if f.key not in running]
    if waiting:
        client.cancel(waiting)
    stopping = [f for f in pending if f.key in running]
    deadline = time.monotonic() + _STOP_GRACE_S
    while stopping and time.monotonic() < deadline:
        for f in [f for f in stopping if f.done()]:
            stopping.remove(f)
            batch.add(futures[f], _outcome(f, futures[f], batch))
        time.sleep(0.05)
    if stopping:
        client.cancel(stopping)
        for f in stopping:
            path = futures[f]
            remove_partials_of(batch.out_dir, batch.stems[path], newer_than=batch.started)
            batch.add(path, FileResult(str(path), "interrupted",
                                       error=f"{path}: interrupted; its task did not stop in time and was cancelled"))
