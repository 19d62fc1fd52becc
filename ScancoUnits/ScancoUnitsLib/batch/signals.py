"""Signals as a batch sees them: which one stopped it (for messages and the exit status), and
ignoring the next ones while it cleans up after the first."""

from __future__ import annotations

import signal


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

