"""Exceptions raised by ScancoUnitsLib.

Every problem with an input file is a :class:`ScancoFormatError` that names the file and the problem in
one line, so command-line tools can print ``str(error)`` and nothing else.
"""

from __future__ import annotations

import os


class ScancoError(Exception):
    """Base class of all errors raised on purpose by ScancoUnitsLib."""


class ScancoFormatError(ScancoError, ValueError):
    """A file is not a readable SCANCO ISQ/AIM file (wrong magic, truncated, inconsistent header...)."""

    def __init__(self, path, problem: str):
        self.path = os.fspath(path) if path is not None else "<memory>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputReadError(ScancoFormatError):
    """Reading an input failed (EIO from a failing disk, a network share gone): one line naming the file
    and the system's reason."""

    def __init__(self, path, exc: OSError):
        import errno

        code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        super().__init__(path, f"read error: {reason}" + (f" ({code})" if code else ""))
        self.errno = exc.errno


class CalibrationMissingError(ScancoError, ValueError):
    """A calibrated unit (HU, density, attenuation) was asked for but the file lacks the constants."""

    def __init__(self, path, quantity: str, missing_fields):
        self.path = os.fspath(path) if path is not None else "<memory>"
        self.quantity = quantity
        self.missing_fields = tuple(missing_fields)
        super().__init__(
            f"{self.path}: cannot compute {quantity}: the file has no usable "
            + ", ".join(self.missing_fields)
        )


class RequestError(ScancoError, ValueError):
    """What was asked of a file cannot be made from it (HU of a mask, a threshold without its reference...).

    The message names the file and the reason in one line; nothing has been written.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path) if path is not None else "<memory>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ThresholdRangeError(RequestError):
    """A threshold leaves nothing the file's data type can hold inside the mask (a lower bound above the
    type's maximum, an upper bound below its minimum): refused, never clipped."""


class ConversionCancelled(ScancoError):
    """The caller asked to stop (progress callback returned False, or a cancel check said so).

    Nothing is left behind: no output file, and in Slicer no node created by the cancelled load.
    """

    def __init__(self, path=None, what: str = "conversion"):
        self.path = os.fspath(path) if path is not None else "<memory>"
        super().__init__(f"{self.path}: {what} cancelled")


class DaskUnavailableError(ScancoError):
    """dask / distributed (the ``dask`` extra) are not installed."""


class MaskExportError(ScancoError, ValueError):
    """A Slicer mask (labelmap or segment) cannot be saved as a SCANCO AIM: wrong node, no source scan,
    or a grid that is not the source's (rotated, resampled, shifted by a fraction of a voxel)."""

    def __init__(self, name, problem: str):
        self.name = str(name)
        self.problem = problem
        super().__init__(f"{self.name}: {problem}")
