"""Worker processes for ``--jobs N``: the worker's loop, its signal handling and the parent's handle.

:class:`~ScancoUnitsLib.batch.jobs.Batch` drives them (which file goes where, retries, stopping);
here is what runs in a worker and the pipe between the two.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Optional

from .one_file import convert_one
from .results import FileResult
from .signals import signal_name, signal_number

# One pipe per worker and one file per worker at a time: the parent always knows which file a worker
# holds, so a worker that dies (kill -9, the OOM killer) costs only that file, which is retried once in
# a fresh worker; the others go on.
_worker_state = {"busy": False, "stopping": False, "signalled": False}
_EVENT_INTERVAL_S = 0.2  # a worker tells the parent how far it is at most this often
_PARENT_CHECK_S = 0.5    # how often a worker checks that its parent is still there
STOP_GRACE_S = 60.0     # how long an interrupted batch waits for busy workers to clean up
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


def death_of(exitcode) -> str:
    if isinstance(exitcode, int) and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


class WorkerProcess:
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

