"""Signals and the process-wide registry of live temporary files, so that no signal leaves one behind.

Every temporary file or folder an output set makes is registered here before it exists and forgotten
once it is committed or removed. :func:`install_signal_cleanup` (called by the command-line tool, never
at import) makes SIGTERM raise :class:`Interrupted`, so ``with`` blocks clean up;
:func:`remove_all_partials` is the last-resort fallback (a second signal, interpreter exit). The
registry and the handler state exist once per process, here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import threading
from pathlib import Path

__all__ = [
    "Interrupted",
    "install_signal_cleanup",
    "remove_all_partials",
    "live_partials",
    "register",
    "unregister",
    "discard_temp",
    "discard_tree",
]


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


_registry_lock = threading.Lock()
_live_temps: dict[str, None] = {}  # insertion-ordered set of absolute temp paths


def register(path: str) -> None:
    """Record a temporary path of this process (before it is created: a signal in between must not leak it)."""
    with _registry_lock:
        _live_temps[path] = None


def unregister(path: str) -> None:
    """Forget a temporary path: it was committed or removed."""
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


def discard_temp(temp: Path) -> None:
    """Remove one of our temporary or backup files, if it exists, and forget it."""
    try:
        os.unlink(temp)
    except OSError:
        pass
    unregister(str(temp))


def discard_tree(temp: Path) -> None:
    """Remove one of our temporary or backup directories (and everything in it) and forget it."""
    shutil.rmtree(temp, ignore_errors=True)
    unregister(str(temp))


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
