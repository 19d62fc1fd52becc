"""The errors an output set raises: one line naming the output path and the operating system's reason.

Every writer turns the :class:`OSError` it meets into an :class:`OutputError` (:func:`output_error_from`)
so that a batch can report the file and go on; refusals (an existing file, an input, a protected file)
are subclasses a caller can tell apart.
"""

from __future__ import annotations

import errno
import os

from ..errors import ScancoError

__all__ = [
    "OutputError",
    "OutputExistsError",
    "OutputIsInputError",
    "OutputProtectedError",
    "output_error_from",
]


class OutputError(ScancoError, OSError):
    """An output file could not be written (disk full, permission denied, folder missing...).

    ``str(error)`` is one line naming the output path and the reason. ``errno`` is the operating-system
    error number when there was one (``None`` otherwise).
    """

    def __init__(self, path, reason: str, os_errno=None):
        self.path = os.fspath(path) if path is not None else "<output>"
        self.reason = reason
        # OSError's own constructor is not used: it would rewrite str(); keep the attributes it offers.
        super().__init__(f"{self.path}: cannot write output: {reason}")
        self.errno = os_errno
        self.strerror = reason
        self.filename = self.path

    def __str__(self):
        return f"{self.path}: cannot write output: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.errno))


class OutputExistsError(OutputError):
    """The output file exists already and ``overwrite`` was not requested."""

    def __init__(self, path, reason: str = "the file exists already (pass overwrite=True to replace it)",
                 os_errno=errno.EEXIST):
        super().__init__(path, reason, os_errno)


class OutputIsInputError(OutputError):
    """An output name is (the same file as) an input: refused whatever ``overwrite`` says."""

    def __init__(self, path, input_path, os_errno=errno.EEXIST):
        self.input_path = os.fspath(input_path)
        super().__init__(path, f"this is the input file {self.input_path}; an input is never overwritten",
                         os_errno)

    def __reduce__(self):
        return (type(self), (self.path, self.input_path, self.errno))


class OutputProtectedError(OutputIsInputError):
    """An existing file this set would replace is protected for another reason (e.g. it is a SCANCO
    file by its content): refused whatever ``overwrite`` says."""

    def __init__(self, path, reason: str, os_errno=errno.EEXIST):
        self.input_path = os.fspath(path)
        OutputError.__init__(self, path, reason, os_errno)

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.errno))


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.errno is not None:
            text = f"{text} [errno {exc.errno}{'/' + errno.errorcode[exc.errno] if exc.errno in errno.errorcode else ''}]"
        return text
    return str(exc) or type(exc).__name__


_FULL_ERRNOS = {code: text for code, text in ((getattr(errno, "ENOSPC", None), "No space left on device"),
                                               (getattr(errno, "EDQUOT", None), "Disk quota exceeded"))
                if code is not None}


def _folder_of(path) -> str:
    text = os.fspath(path) if path is not None else ""
    first = text.split(", ")[0]  # _guess_final may name several outputs
    return os.path.dirname(os.path.abspath(first)) if first else "the output folder"


def output_error_from(path, exc: BaseException) -> OutputError:
    """Turn an :class:`OSError` raised while writing *path* into an :class:`OutputError`.

    A full disk (ENOSPC, EDQUOT) always says so and names the folder:
    ``No space left on device in <folder>``.
    """
    if isinstance(exc, OutputError):
        return exc
    if isinstance(exc, FileExistsError):
        return OutputExistsError(path)
    code = getattr(exc, "errno", None)
    if code in _FULL_ERRNOS:
        reason = f"{_FULL_ERRNOS[code]} in {_folder_of(path)} [errno {code}/{errno.errorcode[code]}]"
        return OutputError(path, reason, code)
    return OutputError(path, _reason_of(exc), code)

