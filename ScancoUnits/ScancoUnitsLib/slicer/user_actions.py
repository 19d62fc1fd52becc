"""The panel's user actions (a button, a dialog) fail as one error dialog, never a traceback.

:func:`user_action` runs the action's code; an exception is shown with the action's message and the error in
one line each (panel.one_line_error) and not raised further, so the slot returns. Unlike
slicer.util.tryWithErrorDisplay, which puts the traceback in the dialog's details and re-raises; here the
traceback goes to the log only (debug). Slicer is imported when an error is shown.
"""

from __future__ import annotations

import contextlib
import logging

from .panel import one_line_error
from .translation import tr


def show_action_failure(message: str, exc: BaseException) -> None:
    """One error dialog: what failed (``message``) and why, in one line each."""
    import slicer

    logging.debug("ScancoUnits: %s", message, exc_info=(type(exc), exc, exc.__traceback__))
    slicer.util.errorDisplay(f"{message}\n{one_line_error(exc)}", windowTitle=tr("Scanco Units"))


@contextlib.contextmanager
def user_action(message: str):
    """Run the body; any exception becomes :func:`show_action_failure` with ``message``."""
    try:
        yield
    except Exception as exc:
        show_action_failure(message, exc)
