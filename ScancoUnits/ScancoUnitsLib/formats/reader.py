"""Open any SCANCO file by its content and read its voxels slab by slab.

``read_header(path)`` detects ISQ / AIM v020 / AIM v030 from the first bytes (never from the
extension, so ``C0004255.ISQ;1`` and an AIM named ``.isq`` both work). ``open_voxels`` returns a
:class:`VoxelSource` that reads only the slices asked for: ``readinto`` a caller's buffer for
uncompressed data, incremental decoding for compressed AIM masks.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Iterator, List, Optional, Union

import numpy as np

from . import isq  # noqa: F401 - registers the ISQ input format
from .aim import format as _aim_format  # noqa: F401 - registers the AIM input format
from .aim.format import aim_data_type
from .inputs import MAGIC_BYTES, recognise
from ..errors import InputReadError, ScancoFormatError
from ..core.header import ScancoHeader
from .vms import vax_f_array_to_float32

PathLike = Union[str, os.PathLike]
_FIRST_READ = 4096
MAX_HEADER_BYTES = 64 << 20  # a processing log or extended header larger than this is not a SCANCO file


_NOT_REGULAR = (
    (stat.S_ISDIR, "is a folder, not a file"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def read_error(path, exc: OSError) -> ScancoFormatError:
    """A one-line error for a failed read of an input (EIO of a failing disk, a vanished network share)."""
    return InputReadError(path, exc)


def _refuse_not_regular(path: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    for test, problem in _NOT_REGULAR:
        if test(mode):
            raise ScancoFormatError(path, problem)
    raise ScancoFormatError(path, "is not a regular file")


def _open_input(path) -> "tuple[object, int]":
    """Open a regular file for reading. Anything else (FIFO, device, folder) is refused from its
    ``stat`` before it is opened; the open is non-blocking and checked again, so a FIFO swapped in
    meanwhile cannot block the read either."""
    path = os.fspath(path)
    try:
        _refuse_not_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ScancoFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise ScancoFormatError(path, "is a folder, not a file") from None
    except PermissionError:
        raise ScancoFormatError(path, "permission denied") from None
    except OSError as exc:
        raise ScancoFormatError(path, f"cannot open ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        _refuse_not_regular(path, info.st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f, info.st_size


def _read_header_from(f, path: str, size: int) -> ScancoHeader:
    try:
        return _read_header_bytes(f, path, size)
    except OSError as exc:
        raise read_error(path, exc) from None


def _read_header_bytes(f, path: str, size: int) -> ScancoHeader:
    first = f.read(_FIRST_READ)
    if len(first) == 0:
        raise ScancoFormatError(path, "empty file")
    fmt, label_or_reason = recognise(first)
    if fmt is None:
        raise ScancoFormatError(path, label_or_reason or "not a SCANCO ISQ or AIM file (unknown magic bytes)")
    needed = fmt.header_bytes_needed(first)
    parse = fmt.parse_header
    if needed > MAX_HEADER_BYTES and needed <= size:
        # a file shorter than its header is reported as truncated by the parser
        raise ScancoFormatError(path, f"the header (with its processing log) is {needed} bytes, more than the "
                                      f"{MAX_HEADER_BYTES >> 20} MiB a SCANCO header can have; the block sizes are "
                                      "corrupt or this is not a SCANCO file")
    if needed > len(first):
        # never read more than the file holds, nor an absurd header size
        needed = min(needed, size, MAX_HEADER_BYTES)
        first += f.read(needed - len(first))
    return parse(first, path, size)


#: the file names of SCANCO inputs: .ISQ / .AIM in any case, with an optional VMS version (``;1``)
SCANCO_NAME = re.compile(r"\.(isq|aim)(;\d*)?$", re.IGNORECASE)


def sniff_format(path) -> Optional[str]:
    """``"ISQ"``, ``"AIM v030"``, ``"AIM v020"`` from the first 16 bytes, or None (never raises).

    ISQ: ``CTDATA-HEADER_V1``; AIM v030: ``AIMDATA_V030``; AIM v020: little-endian int32 20 and 140
    at bytes 0 and 4. Only the magic is checked; :func:`~ScancoUnitsLib.formats.reader.read_header` does the rest.
    """
    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(MAGIC_BYTES)
    except (OSError, TypeError, ValueError):
        return None
    fmt, label = recognise(head)
    return label if fmt is not None else None


def read_header(path: PathLike) -> ScancoHeader:
    """Read and check the header of a SCANCO ISQ or AIM file."""
    f, size = _open_input(path)
    with f:
        return _read_header_from(f, os.fspath(path), size)


class VoxelSource:
    """Native voxel values of one file, read slab by slab. Use as a context manager."""

    def __init__(self, path: PathLike, header: Optional[ScancoHeader] = None):
        self.path = os.fspath(path)
        self._file, size = _open_input(self.path)
        try:
            self.header = header if header is not None else _read_header_from(self._file, self.path, size)
        except BaseException:
            self._file.close()
            raise
        h = self.header
        self.dtype = np.dtype(h.voxel_type)
        x, y, _ = h.dimensions
        self._slice_voxels = x * y
        self._decoder = None
        self._decoder_next_z = 0
        self._vax = h.format == "AIM" and (aim_data_type(h.data_type_code) or None) is not None \
            and aim_data_type(h.data_type_code).vax_float

    # -- public ----------------------------------------------------------------------------------
    @property
    def shape(self):
        return self.header.shape_zyx

    @property
    def warnings(self) -> List[str]:
        """What was odd in the voxel data read so far, one line each naming the file (a compressed
        stream longer than the image, a length field shorter than its block...); the voxels read are
        right, but the file is not what its header says."""
        found = self._decoder.warnings if self._decoder is not None else []
        return [f"{self.path}: {text}" for text in found]

    def read_slab(self, z0: int, z1: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Slices ``z0 <= z < z1`` as an array (z1 - z0, y, x) of the file's native type."""
        nz, ny, nx = self.shape
        if not 0 <= z0 <= z1 <= nz:
            raise IndexError(f"slab {z0}:{z1} outside 0:{nz}")
        shape = (z1 - z0, ny, nx)
        if self.header.compression is not None and z1 > z0:
            self._ensure_decoder()  # checks the compressed stream before any voxel buffer is allocated
        out = self._target(shape, out)
        if z1 == z0:
            return out
        if self.header.compression is None:
            self._read_uncompressed(z0, z1, out)
        else:
            self._read_compressed(z0, z1, out)
        return out

    def _target(self, shape, out: Optional[np.ndarray]) -> np.ndarray:
        """``out`` checked to take ``shape`` native voxels, or a new array."""
        if out is None:
            return np.empty(shape, dtype=self.dtype)
        if out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {self.dtype} array of shape {shape}")
        return out

    def iter_slabs(self, slices: int = 16) -> Iterator[np.ndarray]:
        if slices < 1:
            raise ValueError("slices must be >= 1")
        nz = self.shape[0]
        for z0 in range(0, nz, slices):
            yield self.read_slab(z0, min(z0 + slices, nz))

    def read_rows(self, z: int, y0: int, y1: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``y0 <= y < y1`` of slice ``z`` as an array (1, y1 - y0, x): a piece of a slice too
        large to hold whole (memory is bounded by bytes, not by slices)."""
        nz, ny, nx = self.shape
        if not (0 <= z < nz and 0 <= y0 <= y1 <= ny):
            raise IndexError(f"rows {y0}:{y1} of slice {z} outside {nz}x{ny}x{nx}")
        shape = (1, y1 - y0, nx)
        if self.header.compression is not None:
            self._ensure_decoder()
        out = self._target(shape, out)
        if y1 == y0:
            return out
        if self.header.compression is None:
            self._read_voxels_at(z * self._slice_voxels + y0 * nx, out, f"slice {z}, rows {y0}..{y1 - 1}")
        else:
            self._decoder.read_rows(z, y0, y1, out=out)
        return out

    def iter_pieces(self, max_voxels: int = 1 << 20) -> Iterator[np.ndarray]:
        """Every voxel, z ascending, in pieces of at most ``max_voxels`` voxels where a slice is larger
        (whole slices otherwise): for callers that only accumulate (histograms)."""
        nz, ny, nx = self.shape
        if nx * ny <= max_voxels:
            yield from self.iter_slabs(max(1, max_voxels // (nx * ny)))
            return
        rows = max(1, max_voxels // nx)
        for z in range(nz):
            for y0 in range(0, ny, rows):
                yield self.read_rows(z, y0, min(y0 + rows, ny))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _read_uncompressed(self, z0: int, z1: int, out: np.ndarray) -> None:
        self._read_voxels_at(z0 * self._slice_voxels, out, f"slices {z0}..{z1 - 1}")

    def _read_voxels_at(self, first_voxel: int, out: np.ndarray, what: str) -> None:
        itemsize = self.dtype.itemsize
        start = self.header.data_offset + first_voxel * itemsize
        view = memoryview(out.reshape(-1)).cast("B")
        try:
            self._file.seek(start)
            got = self._file.readinto(view)
            while got < len(view):  # readinto may return short on pipes/network files
                more = self._file.readinto(view[got:])
                if not more:
                    raise ScancoFormatError(self.path, f"truncated: voxel data ends {len(view) - got} bytes early "
                                                       f"({what})")
                got += more
        except OSError as exc:
            raise read_error(self.path, exc) from None
        if self._vax:
            out.reshape(-1)[:] = vax_f_array_to_float32(out.reshape(-1).view(np.uint8))

    def _ensure_decoder(self) -> None:
        from .aim.compression import CompressedVoxelDecoder

        if self._decoder is not None:
            return
        h = self.header
        self._decoder = CompressedVoxelDecoder(
            self._file, h.data_offset, h.data_size, h.dimensions, h.compression,
            length_field_bytes=8 if h.version == "AIMDATA_V030" else 4,
            path=self.path, off_xyz=h.border_voxels)
        self._decoder_next_z = 0

    def _read_compressed(self, z0: int, z1: int, out: np.ndarray) -> None:
        self._ensure_decoder()
        # the decoder skips forward without allocating and restarts for a backward jump; it decodes
        # straight into ``out`` (no temporary of the slab's size)
        self._decoder.read_slab(z0, z1, out=out)
        self._decoder_next_z = z1


def open_voxels(path_or_header: Union[PathLike, ScancoHeader]) -> VoxelSource:
    if isinstance(path_or_header, ScancoHeader):
        return VoxelSource(path_or_header.path, path_or_header)
    return VoxelSource(path_or_header)


def iter_slabs(path_or_header: Union[PathLike, ScancoHeader], slices: int = 16) -> Iterator[np.ndarray]:
    """Native voxels (n, y, x) slab by slab, z ascending; reads only what it yields."""
    with open_voxels(path_or_header) as source:
        yield from source.iter_slabs(slices)


def read_volume(path_or_header: Union[PathLike, ScancoHeader]) -> np.ndarray:
    """The whole volume (z, y, x) in its native type. For files that fit in memory."""
    with open_voxels(path_or_header) as source:
        return source.read_slab(0, source.shape[0])
