"""Progress and Cancel for the module's long tasks, as the two callbacks the library takes: ``on_progress(fraction,
text=None)`` and ``cancelled() -> bool``, driving a Qt progress dialog.

:func:`modal_progress` is the panel's (Apply, Show histogram), :func:`reader_progress` the file reader's (a drop,
Add Data, Sample Data). :class:`DialogProgress` is what both callbacks do, on any object with the dialog's
``value``, ``labelText`` and ``wasCanceled``. Qt and the application are imported only when a dialog is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Optional

from .translation import tr

#: the dialog's range: a fraction of the task in thousandths
DIALOG_MAXIMUM = 1000


def dialog_value(fraction: float, maximum: int = DIALOG_MAXIMUM) -> int:
    """The dialog value of a fraction of the task, clamped to ``0 .. maximum``."""
    return int(round(maximum * min(max(fraction, 0.0), 1.0)))


class DialogProgress:
    """The callbacks of a task shown in ``dialog`` (None: they do nothing and nothing is ever cancelled).

    Each call lets the application process its events (``process_events``), so that the dialog paints and
    its Cancel button is seen; :meth:`cancelled` processes them before it reads ``wasCanceled``.
    """

    def __init__(self, dialog, process_events: Callable[[], None]):
        self.dialog = dialog
        self.process_events = process_events

    def on_progress(self, fraction: float, text: Optional[str] = None) -> None:
        if self.dialog is None:
            return
        self.dialog.value = dialog_value(fraction)
        if text:
            self.dialog.labelText = text
        self.process_events()

    def cancelled(self) -> bool:
        if self.dialog is None:
            return False
        self.process_events()
        return bool(self.dialog.wasCanceled)


def _new_dialog(label_text: str, minimum_duration_ms: int):
    import qt
    import slicer

    dialog = slicer.util.createProgressDialog(windowTitle=tr("Scanco Units"), labelText=label_text,
                                              maximum=DIALOG_MAXIMUM)
    # slicer.util.createProgressDialog returns a plain, modeless QProgressDialog: the events processed at
    # each slab could otherwise reach Apply, Show histogram or Close Scene mid-task
    dialog.windowModality = qt.Qt.ApplicationModal
    dialog.minimumDuration = minimum_duration_ms
    return dialog


@contextlib.contextmanager
def modal_progress(label_text: str):
    """An application-modal progress dialog with Cancel, shown at once, for a task of the panel.

    Yields ``(on_progress(fraction, text=None), cancelled() -> bool)``; the dialog is closed when the task
    ends, however it ends.
    """
    import slicer

    dialog = _new_dialog(label_text, 0)
    dialog.show()  # modal before the first processEvents, not only after the first value
    progress = DialogProgress(dialog, slicer.app.processEvents)
    try:
        yield progress.on_progress, progress.cancelled
    finally:
        dialog.close()


@contextlib.contextmanager
def reader_progress(file_path: str):
    """Progress and Cancel for a load through Slicer's IO manager (drop, Add Data, Sample Data).

    qSlicerIOManager::loadNodes shows only a "Loading file..." dialog without a Cancel button for one file
    (qSlicerIOManagerPrivate::startProgressDialog(1)); this dialog follows the slabs and cancels the load
    (nothing is added). Yields ``(on_progress(fraction), cancelled() -> bool)``; without the application
    (headless, ctest without a main window) both do nothing.
    """
    import slicer

    app = getattr(slicer, "app", None)
    dialog = None
    if app is not None and hasattr(app, "processEvents"):
        try:
            # small files: no flash of a dialog
            dialog = _new_dialog(tr("Reading {name}...").format(name=os.path.basename(file_path)), 500)
        except Exception as exc:  # no Qt: load without a dialog
            logging.debug(f"ScancoUnits: no progress dialog: {exc}")
            dialog = None
    progress = DialogProgress(dialog, app.processEvents if dialog is not None else (lambda: None))
    try:
        yield progress.on_progress, progress.cancelled
    finally:
        if dialog is not None:
            dialog.close()
