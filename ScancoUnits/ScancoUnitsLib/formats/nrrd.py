"""Streaming NRRD writer for 3-D volumes: raw or gzip, attached (.nrrd) or detached (.nhdr + .raw[.gz]).

Volumes arrive as z-slabs (``(n, y, x)`` arrays, z ascending) and go straight to disk, so a volume never
has to fit in memory. The header follows NRRD0004 in LPS space, the ITK convention::

    NRRD0004
    type: int16
    dimension: 3
    space: left-posterior-superior
    sizes: X Y Z
    space directions: (sx,0,0) (0,sy,0) (0,0,sz)
    kinds: domain domain domain
    endian: little
    encoding: gzip
    space origin: (ox,oy,oz)
    space units: "mm" "mm" "mm"
    key:=value                        (custom fields; newlines and backslashes escaped)

Raw data is written from the array's own buffer (no copy). Gzip output is ONE gzip member, compressed by
several threads pigz-style (:mod:`ScancoUnitsLib.io.gzip`).

Files are written through :mod:`ScancoUnitsLib.io.transaction`: nothing appears under the final name until
the volume is complete, and a failed or interrupted write leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import re
import threading
from pathlib import Path

import numpy as np

from ..io.transaction import AtomicOutputSet, OutputError, output_error_from
from ..errors import RequestError
from ..core.header import printable
from ..io.gzip import GZIP_CHUNK_BYTES as _GZIP_CHUNK_BYTES  # read at each open: tests shrink it
from ..io.gzip import GzipStream, RawStream, crc32_combine, default_threads, gzip_backend
from ..io.gzip import write_all as _write_all  # this module's file writes (tests inject faults here)
from .writers import SlabWriter, VolumeFormat, VolumeSpec, register_format

__all__ = [
    "NrrdVolumeWriter",
    "write_nrrd",
    "nrrd_header",
    "nrrd_type_name",
    "escape_nrrd_value",
    "crc32_combine",
    "gzip_backend",
    "default_threads",
    "OutputError",
]

# numpy dtype -> NRRD type name (NRRD0004 spelling, understood by Teem, ITK and pynrrd)
_NRRD_TYPES = {
    np.dtype("int8"): "int8",
    np.dtype("uint8"): "uint8",
    np.dtype("<i2"): "int16",
    np.dtype("<u2"): "uint16",
    np.dtype("<i4"): "int32",
    np.dtype("<u4"): "uint32",
    np.dtype("<i8"): "int64",
    np.dtype("<u8"): "uint64",
    np.dtype("<f4"): "float",
    np.dtype("<f8"): "double",
}

# NRRD field names: custom keys with these names would shadow real fields in pynrrd's header dict
_NRRD_FIELDS = {
    "type", "dimension", "space", "sizes", "space directions", "kinds", "endian", "encoding",
    "space origin", "space units", "space dimension", "data file", "datafile", "content", "min", "max",
    "old min", "oldmin", "old max", "oldmax", "spacings", "thicknesses", "axis mins", "axismins",
    "axis maxs", "axismaxs", "centers", "centerings", "labels", "units", "sample units", "sampleunits",
    "line skip", "lineskip", "byte skip", "byteskip", "number", "block size", "blocksize",
    "measurement frame",
}



_NRRD_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")  # control characters but tab (newline is escaped first)

# ---------------------------------------------------------------------------------------------------
# header
# ---------------------------------------------------------------------------------------------------


def _little_endian(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def nrrd_type_name(dtype) -> str:
    """NRRD ``type:`` value for a numpy dtype (int8..uint64, float32, float64)."""
    dt = _little_endian(dtype)
    try:
        return _NRRD_TYPES[dt]
    except KeyError:
        raise ValueError(f"NRRD output does not support voxel type {np.dtype(dtype).name}") from None


def _format_float(value, what: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, not {number!r}")
    if number == 0.0:
        return "0"
    return repr(number)  # shortest string that reads back to the same double


def _triple(values, what: str):
    try:
        items = [v for v in values]
    except TypeError:
        raise ValueError(f"{what} must have 3 values (x, y, z), not {values!r}") from None
    if len(items) != 3:
        raise ValueError(f"{what} must have 3 values (x, y, z), not {len(items)}")
    return [_format_float(v, f"{what}[{i}]") for i, v in enumerate(items)]


def _check_key(key) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"NRRD key must be a non-empty string, not {key!r}")
    if ":" in key:
        # ':=' would end the key early; a lone ':' makes pynrrd read the line as a standard field
        raise ValueError(f"NRRD key {key!r} must not contain ':'")
    if key != key.strip():
        raise ValueError(f"NRRD key {key!r} must not start or end with white space")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(f"NRRD key {key!r} must not contain control characters")
    if key.lower() in _NRRD_FIELDS:
        raise ValueError(f"NRRD key {key!r} is the name of a standard NRRD field")
    return key.replace("\\", "\\\\")


def escape_nrrd_value(value) -> str:
    """The text written after ``key:=`` for *value*.

    Strings are kept (``\\r\\n`` and ``\\r`` become ``\\n``), then backslashes become ``\\\\`` and newlines
    ``\\n`` as the NRRD format asks; Teem-based readers (ITK, Slicer) undo this. Other control
    characters (tab excepted) are written as the visible text ``\\xNN``. Numbers are written with full precision; non-ASCII text is written as UTF-8.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, np.bool_)):
        text = "true" if value else "false"
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        text = repr(float(value))
    else:
        raise TypeError(f"NRRD values must be strings or numbers, not {type(value).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    # other control characters (a header's \x01 or ESC) as visible \xNN: the header stays one line a
    # field and safe to print; the metadata JSON keeps the exact text
    return _NRRD_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _key_value_items(key_values):
    if key_values is None:
        return []
    items = key_values.items() if hasattr(key_values, "items") else key_values
    out, seen = [], set()
    for pair in items:
        try:
            key, value = pair
        except (TypeError, ValueError):
            raise ValueError(f"key_values must hold (key, value) pairs, not {pair!r}") from None
        escaped_key = _check_key(key)
        if key in seen:
            raise ValueError(f"NRRD key {key!r} given twice")
        seen.add(key)
        out.append(f"{escaped_key}:={escape_nrrd_value(value)}")
    return out


def _check_shape(shape_zyx):
    try:
        dims = tuple(int(n) for n in shape_zyx)
    except (TypeError, ValueError):
        raise ValueError(f"shape_zyx must be 3 integers (z, y, x), not {shape_zyx!r}") from None
    if len(dims) != 3 or any(n < 1 for n in dims):
        raise ValueError(f"shape_zyx must be 3 positive integers (z, y, x), not {shape_zyx!r}")
    return dims


def nrrd_header(shape_zyx, dtype, *, spacing_mm, origin_mm=(0.0, 0.0, 0.0), key_values=None,
                encoding: str = "raw", data_file: str | None = None) -> bytes:
    """The NRRD0004 header for a (z, y, x) volume, as bytes.

    Attached headers (``data_file=None``) end with the blank line that separates header and data;
    detached headers end with the ``data file:`` line.
    """
    nz, ny, nx = _check_shape(shape_zyx)
    type_name = nrrd_type_name(dtype)
    if encoding not in ("raw", "gzip"):
        raise ValueError(f"encoding must be 'raw' or 'gzip', not {encoding!r}")
    sx, sy, sz = _triple(spacing_mm, "spacing_mm")
    for text in (sx, sy, sz):
        if float(text) <= 0:
            raise ValueError(f"spacing_mm must be positive, not {spacing_mm!r}")
    ox, oy, oz = _triple(origin_mm, "origin_mm")
    lines = [
        "NRRD0004",
        f"type: {type_name}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {nx} {ny} {nz}",
        f"space directions: ({sx},0,0) (0,{sy},0) (0,0,{sz})",
        "kinds: domain domain domain",
    ]
    if np.dtype(dtype).itemsize > 1:
        lines.append("endian: little")
    lines += [
        f"encoding: {encoding}",
        f"space origin: ({ox},{oy},{oz})",
        'space units: "mm" "mm" "mm"',
    ]
    lines += _key_value_items(key_values)
    if data_file is not None:
        if not data_file or any(ch in data_file for ch in "\r\n") or data_file != data_file.strip():
            raise ValueError(f"bad data file name {data_file!r}")
        lines.append(f"data file: {data_file}")
        text = "\n".join(lines) + "\n"
    else:
        text = "\n".join(lines) + "\n\n"
    return text.encode("utf-8", "surrogateescape")  # a file name that is not UTF-8: its own bytes


# ---------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------


class NrrdVolumeWriter(SlabWriter):
    """Stream a (z, y, x) volume into an NRRD file, slab by slab.

    ::

        with NrrdVolumeWriter("scan_HU.nrrd", (nz, ny, nx), np.float32, spacing_mm=(sx, sy, sz),
                              origin_mm=(ox, oy, oz), encoding="gzip",
                              key_values={"quantity": "HU"}) as writer:
            for slab in slabs:             # (n, ny, nx) float32, z ascending
                writer.write_slab(slab)

    *path* ends with ``.nrrd`` (attached) or, with ``detached=True``, ``.nhdr``; the data then goes to
    ``<stem>.raw`` (``.raw.gz`` for gzip) next to it. *atomic*: an :class:`AtomicOutputSet` to join (the
    set's owner commits it; a failure of this writer marks the set failed, so it cannot commit, and the
    owner's abort removes every file once its writers stopped). Without one, the writer uses its own
    set (with *overwrite*, *fsync*) and commits it in :meth:`close`.

    *threads*: compression threads for gzip (default: the CPUs this process may use).
    """

    kind = "NRRD"
    accepts_rows = True

    def __init__(self, path, shape_zyx, dtype, *, spacing_mm, origin_mm=(0.0, 0.0, 0.0), key_values=None,
                 encoding: str = "raw", detached: bool = False, compress_level: int = 1, threads=None,
                 atomic: AtomicOutputSet | None = None, overwrite: bool = False, fsync: bool = False):
        super().__init__(path, _check_shape(shape_zyx), _little_endian(dtype), atomic, overwrite=overwrite,
                         fsync=fsync)
        nrrd_type_name(self.dtype)
        if encoding not in ("raw", "gzip"):
            raise ValueError(f"encoding must be 'raw' or 'gzip', not {encoding!r}")
        self.encoding = encoding
        self.detached = bool(detached)
        gzip_backend(compress_level)  # validates the level
        if threads is None:
            threads = default_threads()
        elif int(threads) < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        if self.detached:
            if self.path.suffix.lower() != ".nhdr":
                raise ValueError(f"{self.path}: a detached NRRD header must end with .nhdr")
            data_name = self.path.stem + (".raw.gz" if encoding == "gzip" else ".raw")
            self.data_path = self.path.with_name(data_name)
            header = nrrd_header(self.shape_zyx, self.dtype, spacing_mm=spacing_mm, origin_mm=origin_mm,
                                 key_values=key_values, encoding=encoding, data_file=data_name)
        else:
            if self.path.suffix.lower() == ".nhdr":
                raise ValueError(f"{self.path}: .nhdr is for detached headers; use .nrrd or detached=True")
            self.data_path = self.path
            header = nrrd_header(self.shape_zyx, self.dtype, spacing_mm=spacing_mm, origin_mm=origin_mm,
                                 key_values=key_values, encoding=encoding)
        self.header_bytes = header
        self._file_lock = threading.Lock()
        self._seek_lock = threading.Lock()  # seek + write where os.pwrite is missing (Windows)
        #: raw data can be written at known offsets, by several threads, in any order (write_at)
        self.positional = encoding == "raw"
        self._data_offset = 0 if self.detached else len(header)
        self._slice_bytes = self.shape_zyx[1] * self.shape_zyx[2] * self.dtype.itemsize
        self._data_file = None
        current = self.path
        try:
            if self.detached:
                header_file = self._set.add(self.path)
                _write_all(header_file, header)
                header_file.close()
                current = self.data_path
                self._data_file = self._set.add(self.data_path)
            else:
                self._data_file = self._set.add(self.path)
                _write_all(self._data_file, header)
            if encoding != "gzip":
                self._data_file.flush()  # the header is on disk before any slab is written at its offset
            if encoding == "gzip":
                self._stream = GzipStream(self._data_file, _write_all, compress_level, int(threads),
                                           chunk_bytes=_GZIP_CHUNK_BYTES)
            else:
                self._stream = RawStream(self._data_file, _write_all)
        except BaseException as exc:
            error = output_error_from(current, exc) if isinstance(exc, OSError) else exc
            self._fail(error)
            if error is not exc:
                raise error from exc
            raise
        self._set.on_commit(self.close)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def output_paths(self) -> list[Path]:
        """Final paths this writer produces (header first for detached files)."""
        return [self.path, self.data_path] if self.detached else [self.path]

    @property
    def gzip_backend_name(self) -> str | None:
        return getattr(self._stream, "backend", None)

    # -- writing ------------------------------------------------------------------------------------
    def write_slab(self, array) -> None:
        """Append the slices of *array* (shape ``(n, y, x)`` or ``(y, x)``, this writer's dtype).

        The array is not modified or kept: its buffer may be reused as soon as this returns.
        """
        arr = self._checked_slab(array)
        if arr is None:
            return
        arr = np.ascontiguousarray(arr)
        self._guarded(self.data_path, lambda: self._stream.write(memoryview(arr).cast("B")))
        self._advance(arr)

    @property
    def error_path(self) -> Path:
        return self.data_path

    def write_at(self, z: range, array, row0: int = 0) -> None:
        """Write the slices of ``array`` as file slices ``z`` (raw encoding: any order, any thread): the
        engine's workers write each slab where it belongs instead of handing it to one writer thread.
        A row piece ``(1, rows, x)`` of slice ``z.start`` goes to its rows from ``row0``."""
        if not self.positional:
            raise ValueError(f"{self.path}: only raw NRRD data can be written at known offsets")
        arr = self._checked_slab(array, ordered=False)
        if arr is None:
            return
        nz, ny, nx = self.shape_zyx
        if not (0 <= z.start and z.start + arr.shape[0] <= nz and 0 <= row0 and row0 + arr.shape[1] <= ny
                and (row0 == 0 or arr.shape[0] == 1)):
            raise ValueError(f"{self.path}: slices {z.start}..{z.start + arr.shape[0] - 1}, rows from {row0}, "
                             f"do not fit a volume of {nz}x{ny}x{nx}")
        arr = np.ascontiguousarray(arr)
        offset = self._data_offset + z.start * self._slice_bytes + row0 * nx * self.dtype.itemsize

        def write():
            # pwrite(2) at the slab's own offset: no file position is shared, so the workers write
            # into the same file at once (no lock: the page-cache copies of the workers run in
            # parallel). The header went through the buffered file object,
            # flushed when the writer opened, and nothing else is written through it afterwards.
            # Where os.pwrite is missing (Windows), seek + write under this file's own lock.
            _pwrite_all(self._data_file.fileno(), memoryview(arr).cast("B"), offset, self._seek_lock)

        self._guarded(self.data_path, write)
        with self._file_lock:
            self._check_room(arr.shape[0] * arr.shape[1])
            self._advance(arr)

    def _finish(self) -> None:
        self._stream.finish()
        self._data_file.close()  # flush now, so a full disk is reported with this file's name

    def _release(self) -> None:
        if self._stream is not None:
            self._stream.shutdown()

    def __repr__(self):
        return (f"NrrdVolumeWriter({str(self.path)!r}, shape_zyx={self.shape_zyx}, dtype={self.dtype.name}, "
                f"encoding={self.encoding!r}, {self._slices_written} slices written)")


def _pwrite_all(fd: int, data, offset: int, seek_lock: threading.Lock) -> None:
    """Write every byte of *data* at *offset* of *fd* (pwrite may write less than asked). Without
    ``os.pwrite`` (Windows): ``lseek`` + ``write`` while holding ``seek_lock``, the lock of this file
    (the file position is shared by every thread writing into it)."""
    view = memoryview(data)
    pwrite = getattr(os, "pwrite", None)
    if pwrite is not None:
        while len(view):
            written = pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        return
    with seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        while len(view):
            written = os.write(fd, view)
            view = view[written:]


def write_nrrd(path, volume_zyx, *, spacing_mm, origin_mm=(0.0, 0.0, 0.0), key_values=None,
               encoding: str = "raw", detached: bool = False, compress_level: int = 1, threads=None,
               atomic: AtomicOutputSet | None = None, overwrite: bool = False) -> Path:
    """Write a whole in-memory (z, y, x) array as NRRD; return the header path."""
    volume = np.asarray(volume_zyx)
    if volume.ndim != 3:
        raise ValueError(f"{path}: the volume must be 3-D (z, y, x), not shape {volume.shape}")
    with NrrdVolumeWriter(path, volume.shape, volume.dtype, spacing_mm=spacing_mm, origin_mm=origin_mm,
                          key_values=key_values, encoding=encoding, detached=detached,
                          compress_level=compress_level, threads=threads, atomic=atomic,
                          overwrite=overwrite) as writer:
        writer.write_slab(volume)
    return writer.path



# ---- registration in the writer seam ------------------------------------------------------------
def _nrrd_paths(spec: VolumeSpec) -> list[Path]:
    base = Path(spec.base_path)
    if spec.detached:
        if any(ch in base.name for ch in "\r\n") or base.name != base.name.strip():
            # the header names its data file on one line ("data file: NAME"), with no surrounding blanks
            source = spec.source.path if spec.source is not None else base
            raise RequestError(source, f"a detached NRRD header cannot name the data file {printable(base.name)}"
                                       " (a line break or leading/trailing blank in the name): rename the input "
                                       "or convert without --detached")
        header = base.with_name(base.name + ".nhdr")
        return [header, header.with_name(base.name + (".raw.gz" if spec.compress else ".raw"))]
    return [base.with_name(base.name + ".nrrd")]


def _open_nrrd(spec: VolumeSpec, atomic: AtomicOutputSet) -> NrrdVolumeWriter:
    return NrrdVolumeWriter(_nrrd_paths(spec)[0], spec.shape_zyx, spec.dtype, spacing_mm=spec.spacing_mm,
                            origin_mm=spec.origin_mm, key_values=dict(spec.key_values),
                            encoding="gzip" if spec.compress else "raw", detached=spec.detached,
                            threads=spec.threads, atomic=atomic)


register_format(VolumeFormat("nrrd", "NRRD (3D Slicer, ITK, pynrrd)", _nrrd_paths, _open_nrrd))
