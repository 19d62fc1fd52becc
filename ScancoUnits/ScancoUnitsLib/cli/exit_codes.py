"""The exit statuses of ``scanco-units``, defined once: the commands return them and ``--help`` lists them."""

from __future__ import annotations

import signal

from ..batch.jobs import signal_number

OK = 0
FAILED = 1          # at least one input could not be read or converted (or none was found)
USAGE = 2           # bad command line (argparse's own code)
SIGNAL_BASE = 128   # a run stopped by a signal exits 128 + its number, as shells report it


def exit_code_for(interrupt: BaseException) -> int:
    """128 + the signal number of an interrupt (a plain KeyboardInterrupt is Ctrl-C: 130)."""
    return SIGNAL_BASE + signal_number(interrupt)


INTERRUPTED = SIGNAL_BASE + int(signal.SIGINT)

HELP = f"""\
exit status:
  {OK:<4} every input converted (or skipped: its outputs were up to date)
  {FAILED:<4} at least one input failed (or no input was found)
  {USAGE:<4} bad command line
  {INTERRUPTED:<4} interrupted by Ctrl-C (SIGINT); {SIGNAL_BASE + int(signal.SIGTERM)} for SIGTERM, \
{SIGNAL_BASE + int(signal.SIGHUP)} for SIGHUP ({SIGNAL_BASE} + signal number)
"""
