"""Does a load into memory fit? The bytes the chosen nodes need against the memory available.

Slicer holds every node's voxels in memory; a 5 Gi-voxel scan with the default four nodes needs
about 40 GB. Before a load (the file reader and the panel's Apply) :func:`require_memory_fit`
compares :func:`~ScancoUnitsLib.pipeline.summaries.scene_memory_bytes` with :func:`available_memory_bytes`
and refuses, with the figures and the ways out (every n-th voxel, a sub-region, fewer outputs),
instead of letting the machine swap or the process die. Standard library only (psutil when it is
importable); no Slicer, no Qt.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from .. import defaults
from ..errors import ScancoError
from ..core.header import ScancoHeader
from ..pipeline.summaries import _human_bytes, scene_memory_bytes

#: part of the available memory a load may take: the rest is left to Slicer's views, the display
#: pipeline and the other applications (one whole-volume copy somewhere else would not fit otherwise)
USABLE_FRACTION = 0.8


class InsufficientMemoryError(ScancoError, MemoryError):
    """The chosen nodes need more memory than the machine has available."""

    def __init__(self, path, message: str):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {message}")


def _meminfo_available(path: str = "/proc/meminfo") -> Optional[int]:
    try:
        with open(path, "r", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if len(parts) < 3 or parts[2].lower() == "kb" else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _windows_available() -> Optional[int]:  # pragma: no cover - Windows only
    import ctypes

    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return None
    return int(status.ullAvailPhys)


def _sysconf_available() -> Optional[int]:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def available_memory_bytes() -> Optional[int]:
    """Memory a new allocation can get without swapping, in bytes; None when the system does not say.

    psutil's ``virtual_memory().available`` when psutil is importable; else Linux's ``MemAvailable``
    (/proc/meminfo), Windows' ``GlobalMemoryStatusEx`` (ullAvailPhys), or ``os.sysconf`` free pages
    (other POSIX systems; on macOS this counts free pages only, an underestimate).
    """
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:  # ImportError, or a psutil that cannot read this system
        pass
    if sys.platform.startswith("linux"):
        value = _meminfo_available()
        if value is not None:
            return value
    if sys.platform.startswith("win"):  # pragma: no cover - Windows only
        try:
            return _windows_available()
        except Exception:
            return None
    return _sysconf_available()


@dataclass(frozen=True)
class MemoryFit:
    """The outcome of :func:`memory_fit`: bytes needed and available (None: unknown), and whether it fits."""

    needed_bytes: int
    available_bytes: Optional[int]
    usable_bytes: Optional[int]
    fits: bool
    #: the smallest every-n-th-voxel step (same for x, y, z) whose load fits; None when none needed or found
    step_that_fits: Optional[int] = None

    def message(self) -> str:
        """One line: the figures and the ways out (empty when it fits)."""
        if self.fits:
            return ""
        text = (f"the chosen nodes need {_human_bytes(self.needed_bytes)} of memory, "
                f"{_human_bytes(self.available_bytes)} is available")
        ways = []
        if self.step_that_fits is not None:
            ways.append(f"every {self.step_that_fits}{_ordinal(self.step_that_fits)} voxel (Large volumes)")
        ways += ["a sub-region", "fewer outputs"]
        return f"{text}; load {', or '.join(ways)} (an NRRD export still writes the full volume)"


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def memory_fit(header: ScancoHeader, outputs: Sequence[str], *, subsample_step=1, region=None,
               hu_dtype: str = defaults.HU_DTYPE, available_bytes: Optional[int] = None) -> MemoryFit:
    """Compare the bytes the node arrays of ``outputs`` need with the memory available.

    ``available_bytes``: None = :func:`available_memory_bytes` (when that is unknown too, the load is
    let through: refusing on a guess would block every load on such a system). A load fits when it
    needs at most :data:`USABLE_FRACTION` of what is available.
    """
    needed = scene_memory_bytes(header, outputs, subsample_step=subsample_step, region=region, hu_dtype=hu_dtype)
    available = available_memory_bytes() if available_bytes is None else int(available_bytes)
    if available is None:
        return MemoryFit(needed, None, None, True)
    usable = int(available * USABLE_FRACTION)
    if needed <= usable:
        return MemoryFit(needed, available, usable, True)
    step = None
    base = subsample_step if isinstance(subsample_step, int) else max(int(s) for s in subsample_step)
    for candidate in range(max(2, base + 1), 65):
        if scene_memory_bytes(header, outputs, subsample_step=candidate, region=region, hu_dtype=hu_dtype) <= usable:
            step = candidate
            break
    return MemoryFit(needed, available, usable, False, step)


def require_memory_fit(header: ScancoHeader, outputs: Sequence[str], **options) -> MemoryFit:
    """:func:`memory_fit`, raising :class:`InsufficientMemoryError` (one line naming the file, the figures
    and the ways out) when the load does not fit."""
    fit = memory_fit(header, outputs, **options)
    if not fit.fits:
        raise InsufficientMemoryError(header.path, fit.message())
    return fit
