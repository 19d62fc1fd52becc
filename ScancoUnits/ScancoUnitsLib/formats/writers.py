"""The writer seam: one small interface for every output volume format.

A format is a :class:`VolumeFormat` registered by name (``nrrd``, ``nifti``, ``ome-zarr``, ``aim``).
The engine gives each writer a :class:`VolumeSpec` (geometry, voxel type, key/values, the quantity it
holds and the source header) and the :class:`~ScancoUnitsLib.io.transaction.AtomicOutputSet` the file
(or directory) joins; then slabs in z order; then ``close()`` (or ``abort()``). What a writer class
must do is :class:`SlabWriter`'s contract.

Adding a format is one new module that defines a writer class and calls :func:`register_format`,
plus its name in :data:`_FORMAT_MODULES` so that it is imported on first use.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Tuple

import numpy as np

from ..io.transaction import AtomicOutputSet, output_error_from
from ..core.header import ScancoHeader


@dataclass(frozen=True)
class VolumeSpec:
    """Everything a writer needs to know about the volume it writes.

    ``base_path``: output folder / ``<stem><suffix>`` without extension (the format adds its own).
    Geometry is SCANCO's: LPS, ``spacing_mm`` and ``origin_mm`` in (x, y, z) order, slabs (z, y, x).
    ``quantity``: the registry key of what the voxels hold (``hu``, ``density_g_cc``, ``mask`` ...).
    ``derivation``: lines that say how the volume was derived (thresholds, formula), for formats
    that keep a processing log (AIM).
    """

    base_path: Path
    shape_zyx: Tuple[int, int, int]
    dtype: np.dtype
    spacing_mm: Tuple[float, float, float]
    origin_mm: Tuple[float, float, float]
    quantity: str
    unit_label: str
    description: str
    key_values: Mapping[str, str] = field(default_factory=dict)
    source: Optional[ScancoHeader] = None
    derivation: Tuple[str, ...] = ()
    compress: bool = False
    detached: bool = False
    threads: int = 2


class VolumeWriter(Protocol):
    """What the engine calls. ``output_paths``: the final paths (files or directories) it makes."""

    output_paths: List[Path]

    def write_slab(self, array: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class VolumeFormat:
    """A registered output format.

    ``paths(spec)``: the final paths the writer will create (known before any voxel is read, so
    collisions are found first). ``open(spec, atomic)``: a :class:`VolumeWriter`.
    ``quantities``: the quantities it can hold (None: all); asking for another is a usage error.
    ``require``: raises a :class:`~ScancoUnitsLib.errors.ScancoError` naming the extra to install when
    an optional dependency of the format is missing (None: nothing to install).
    ``stored``: ``stored(quantity, dtype)`` says how the format stores a quantity whose file differs from
    the output's own type and values (a dict for the metadata, e.g. AIM masks: int8, object value 127);
    None where the file holds the output as it is.
    """

    name: str
    title: str
    paths: Callable[[VolumeSpec], List[Path]]
    open: Callable[[VolumeSpec, AtomicOutputSet], VolumeWriter]
    quantities: Optional[Tuple[str, ...]] = None
    require: Optional[Callable[[], object]] = None
    stored: Optional[Callable[[str, np.dtype], Optional[dict]]] = None

    def stored_as(self, quantity: str, dtype) -> Optional[dict]:
        return None if self.stored is None else self.stored(quantity, np.dtype(dtype))

    def accepts(self, quantity: str) -> bool:
        return self.quantities is None or quantity in self.quantities

    def check_available(self) -> None:
        """Raise (one line naming the extra) when the format cannot be written here."""
        if self.require is not None:
            self.require()


_FORMATS: Dict[str, VolumeFormat] = {}
#: format name -> module that registers it (imported on first use: optional dependencies stay lazy)
_FORMAT_MODULES = {
    "nrrd": "nrrd",
    "nifti": "nifti",
    "ome-zarr": "ome_zarr",
    "aim": "aim.writer",
}
FORMAT_NAMES = tuple(_FORMAT_MODULES)


def register_format(fmt: VolumeFormat) -> VolumeFormat:
    _FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> VolumeFormat:
    if name not in _FORMAT_MODULES:
        raise ValueError(f"unknown output format {name!r}; expected one of {', '.join(FORMAT_NAMES)}")
    if name not in _FORMATS:
        importlib.import_module(f"{__package__}.{_FORMAT_MODULES[name]}")
    return _FORMATS[name]


@dataclass(frozen=True)
class EncodedSlab:
    """Slices (or rows of one slice) compressed by :meth:`SlabWriter.encode_slab`, waiting to be appended
    in order. ``rows``: rows of x voxels it holds (slices * y for whole slices)."""

    rows: int
    pieces: tuple


class SlabWriter:
    """What every volume writer shares: the checks of an incoming slab, ``slices_written``, failing and
    aborting, and the context-manager behaviour (an exception aborts, a clean exit closes).

    The contract of a writer (a subclass):

    * its constructor checks its own arguments, then calls ``SlabWriter.__init__(path, shape_zyx, dtype,
      atomic, overwrite=..., fsync=...)`` with the checked values (see :meth:`__init__`), adds its files
      to the output set (``self._set.add`` / ``add_directory``, inside :meth:`_guarded` so that a failure
      names the file) and registers ``self._set.on_commit(self.close)``;
    * it creates exactly the paths :attr:`output_paths` names (default ``[path]``; the format's
      ``paths(spec)`` in :class:`VolumeFormat` must return the same list before the writer exists);
    * it defines ``write_slab(array)``: check the slab with :meth:`_checked_slab`, write it inside
      :meth:`_guarded`, count it with :meth:`_advance`;
    * it defines ``_finish()`` (write what is left and close its files; called once by :meth:`close`
      after every slice arrived) and, when it runs threads or streams of its own, ``_release()`` (stop
      them; never raises). :meth:`close` and :meth:`abort` themselves are not overridden.

    Optional parts: ``kind`` names the format in messages; ``error_path`` (default ``path``) is the file
    that errors of the data name. A writer whose data is one stream of voxels in file order sets
    ``accepts_rows``: it then also takes a slice in pieces of whole rows, ``(1, rows, x)``, in order (the
    engine splits a slice larger than its memory budget). A writer whose data is one
    :class:`~ScancoUnitsLib.io.gzip.GzipStream` keeps it in ``_stream``: :attr:`encodes` is then True
    and the engine's workers compress slabs themselves (:meth:`encode_slab`, :meth:`write_encoded`).
    A writer that can place raw slabs at their own offsets, from any thread, says so with
    ``positional = True`` and defines ``write_at(z, array, row0=0)``.
    """

    kind = "volume"
    accepts_rows = False
    positional = False

    def __init__(self, path, shape_zyx: Tuple[int, int, int], dtype: np.dtype,
                 atomic: Optional[AtomicOutputSet] = None, *, overwrite: bool = False, fsync: bool = False):
        """*path*: the final path of the writer's (first) output, made absolute here. *shape_zyx*: the
        volume's (z, y, x) size and *dtype*: the voxel type slabs arrive in (by default they must have
        it), both as the subclass checked them. *atomic*: the
        :class:`~ScancoUnitsLib.io.transaction.AtomicOutputSet` the files join (its owner commits it; a
        failure of this writer only marks it failed); None: the writer makes its own set, with
        *overwrite* and *fsync*, and commits it in :meth:`close`."""
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.shape_zyx = shape_zyx
        self.dtype = dtype
        self._own_set = atomic is None
        self._set = AtomicOutputSet(overwrite=overwrite, fsync=fsync) if atomic is None else atomic
        self._closed = False
        self._failure: Optional[BaseException] = None  # what a later write reports after a failure
        self._slices_written = 0
        self._rows_written = 0  # rows of x voxels written: slices * y, plus the rows of a slice begun
        self._stream = None     # the data stream, where the data is one stream (see encodes)

    @property
    def error_path(self) -> Path:
        return self.path

    def close(self) -> None:
        """Finish the data (every slice must have been written); commit when the writer owns its set."""
        if self._closed:
            return
        self._require_every_slice()
        self._closed = True
        self._guarded(self.error_path, self._finish)
        if self._own_set:
            self._set.commit()

    def _finish(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Stop writing and remove this writer's temporary files (and those of its output set)."""
        self._fail()

    def _release(self) -> None:
        """Stop this writer's own streams or threads (never raises)."""

    def _fail(self, error: Optional[BaseException] = None) -> None:
        """This writer failed (``error``) or is aborted (None). Its own set is aborted; a shared set is only
        marked failed: other writers' threads may be writing its other files right now, and closing them
        here turned a full disk into "write to closed file". The set's owner aborts it once every writer
        has stopped."""
        self._closed = True
        if error is not None and self._failure is None:
            self._failure = error   # what a later write (another worker's slab) reports, not "closed"
        try:
            self._release()
        except BaseException:
            pass
        if self._own_set or error is None:
            self._set.abort()
        else:
            self._set.fail(error)

    def _guarded(self, path, action):
        """``action()``; on any failure the writer fails and an OSError becomes an OutputError naming
        ``path`` (a full disk says so)."""
        try:
            return action()
        except BaseException as exc:
            error = output_error_from(path, exc) if isinstance(exc, OSError) else exc
            self._fail(error)
            if error is not exc:
                raise error from exc
            raise

    def _require_every_slice(self) -> None:
        nz, ny, _ = self.shape_zyx
        if self._slices_written != nz or self._rows_written % ny:
            begun = f" and {self._rows_written % ny} of {ny} rows of the next" if self._rows_written % ny else ""
            error = ValueError(f"{self.path}: only {self._slices_written} of {nz} slices{begun} were written")
            self._fail(error)
            raise error

    def _advance(self, arr) -> None:
        """Count the slices or rows of ``arr`` (an (n, rows, x) array) as written."""
        self._advance_rows(arr.shape[0] * arr.shape[1])

    def _advance_rows(self, rows: int) -> None:
        self._rows_written += rows
        self._slices_written = self._rows_written // self.shape_zyx[1]

    @property
    def slices_written(self) -> int:
        return self._slices_written

    @property
    def output_paths(self) -> List[Path]:
        return [self.path]

    def _check_open(self) -> None:
        if self._closed:
            if self._failure is not None:  # it failed in another thread: the same error, not "closed"
                raise self._failure
            raise ValueError(f"{self.path}: the {self.kind} writer is closed")

    def _check_room(self, rows: int) -> None:
        nz, ny, _ = self.shape_zyx
        if self._rows_written + rows > nz * ny:
            slices, extra = divmod(self._rows_written + rows, ny)
            rows_text = f" and {extra} rows" if extra else ""
            raise ValueError(f"{self.path}: {slices} slices{rows_text} written, the volume has {nz}")

    def _checked_slab(self, array, *, same_dtype: bool = True, ordered: bool = True) -> Optional[np.ndarray]:
        """``array`` as (n, y, x) (or, where ``accepts_rows``, a row piece (1, rows, x)) after every check
        (closed writer, shape, voxel type, slice count); None for an empty slab. ``same_dtype``: the slab
        must hold this writer's voxel type (another byte order is converted); otherwise the subclass
        checks the type itself. ``ordered``: the slab comes next in the file (False: it is written at its
        own offset or only compressed, so its place is not checked here)."""
        self._check_open()
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        nz, ny, nx = self.shape_zyx
        piece = self.accepts_rows and arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[2] == nx \
            and arr.shape[1] < ny
        if arr.ndim != 3 or (arr.shape[1:] != (ny, nx) and not piece):
            raise ValueError(f"{self.path}: slab shape {np.shape(array)} does not match slices of "
                             f"(y, x) = ({ny}, {nx})")
        if same_dtype and arr.dtype != self.dtype:
            if arr.dtype.kind == self.dtype.kind and arr.dtype.itemsize == self.dtype.itemsize:
                arr = arr.astype(self.dtype)  # same type, other byte order
            else:
                raise ValueError(f"{self.path}: slab has voxel type {arr.dtype.name}, the file holds "
                                 f"{self.dtype.name}")
        if ordered:
            begun = self._rows_written % ny
            if begun and (not piece or begun + arr.shape[1] > ny):
                raise ValueError(f"{self.path}: {begun} of {ny} rows of slice {self._slices_written} were "
                                 f"written; the next piece must continue that slice")
            self._check_room(arr.shape[0] * arr.shape[1])
        return arr if arr.size else None

    # -- compressed data: compress in any thread, append in order --------------------------------
    @property
    def encodes(self) -> bool:
        """True when the data is one gzip stream (``_stream``, a :class:`~ScancoUnitsLib.io.gzip.GzipStream`):
        slabs can be compressed by the caller's thread (:meth:`encode_slab`, any thread, any order) and appended in
        z order (:meth:`write_encoded`). The engine's workers compress their own slabs this way."""
        return hasattr(self._stream, "encode")

    def encode_slab(self, array) -> "EncodedSlab":
        """The compressed slices of ``array`` ((n, y, x) or (y, x)); nothing is written yet."""
        arr = self._checked_slab(array, ordered=False)
        if arr is None:
            return EncodedSlab(0, ())
        arr = np.ascontiguousarray(arr)
        stream = self._stream
        return EncodedSlab(arr.shape[0] * arr.shape[1],
                           self._guarded(self.error_path, lambda: stream.encode(memoryview(arr).cast("B"))))

    def write_encoded(self, encoded: "EncodedSlab") -> None:
        """Append slices compressed by :meth:`encode_slab` (after every slab written before)."""
        if not encoded.rows:
            return
        self._check_open()
        self._check_room(encoded.rows)
        self._guarded(self.error_path, lambda: self._stream.write_encoded(encoded.pieces))
        self._advance_rows(encoded.rows)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._fail()
            return False
        self.close()
        return False
