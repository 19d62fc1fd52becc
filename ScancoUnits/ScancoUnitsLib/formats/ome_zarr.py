"""OME-Zarr output: a multiscale ``<base>.ome.zarr`` directory, written slab by slab.

Layout (OME-NGFF **0.4 on Zarr format 2** by default; ``ngff_version="0.5"`` writes NGFF 0.5 on Zarr
format 3)::

    scan_HU.ome.zarr/
        .zgroup  .zattrs          multiscales (axes z, y, x in millimeter, one dataset per level)
        0/  .zarray  z/y/x chunks level 0: the volume as given
        1/  ...                   level 1: 2x downsampling of level 0 in every axis
        ...                       until the largest side is <= ``pyramid_top_size`` (256)

Why 0.4 on Zarr 2 by default: every OME-Zarr reader opens it (checked: ome-zarr-py 0.18, which napari's
ome-zarr plugin uses, and ngff-zarr 0.50; also read by Neuroglancer, Fiji/BigDataViewer and Bio-Formats),
while NGFF 0.5 needs Zarr 3, which readers built on older Zarr libraries lack. ome-zarr-py 0.18 and
ngff-zarr read 0.5 too: it is one keyword away.

Geometry: axes ``z, y, x`` (the array order), ``type: space``, ``unit: millimeter``. Level *k* has
``scale = voxel size * 2**k`` and ``translation = origin + (2**k - 1) * voxel size / 2`` (the centre of its
first voxel, which averages level-0 voxels 0 .. 2**k - 1), in SCANCO's LPS frame as in the NRRD output
(x towards the patient's left, y posterior, z superior; origin = centre of voxel (0, 0, 0)). NGFF 0.4/0.5
have no anatomical orientation field: each axis carries the ``orientation`` of NGFF RFC-4
(``right-to-left``, ``anterior-to-posterior``, ``inferior-to-superior``, as ngff-zarr writes and reads it;
ome-zarr-py and the NGFF validators accept the extra key) and the frame is also stated in the
``scanco_units`` attributes.

Downsampling (level k+1 from level k, 2x2x2 blocks: the mean, or the maximum for masks; odd sizes) is
described in :mod:`~ScancoUnitsLib.formats.pyramid`.

Streaming in flat memory: each level keeps one z-chunk-row (``chunk_z`` slices of that level) and at most
one unpaired slice. A z-chunk-row is written (compressed, Blosc zstd) once full, and pairs of slices go
down to the next level as they arrive, so the memory held is about ``chunk_z * ny * nx * itemsize * 4/3``
whatever the number of slices. Chunks that hold only zeros are not stored (zarr's default; readers fill
them with the fill value 0), which keeps masks small. The directory is built in the hidden temporary
directory given by :meth:`~ScancoUnitsLib.io.transaction.AtomicOutputSet.add_directory` and appears
complete or not at all; zarr's writes run on an event loop of the writer, so after a failure (disk full,
Ctrl-C) every chunk write in flight ends before that directory is removed.

zarr (and numcodecs) are imported lazily: without them :class:`OmeZarrUnavailableError` names the
``zarr`` extra.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Mapping, Optional

import numpy as np

from .. import __version__
from ..io.transaction import AtomicOutputSet
from ..errors import ScancoError
from .pyramid import (DEFAULT_CHUNK_SIZE, DEFAULT_PYRAMID_TOP_SIZE, PyramidLevel, downsample_2x,
                      downsampling_method, pyramid_levels)
from .writers import SlabWriter, VolumeFormat, VolumeSpec, register_format

__all__ = [
    "OmeZarrUnavailableError",
    "OmeZarrVolumeWriter",
    "PyramidLevel",
    "pyramid_levels",
    "downsampling_method",
    "downsample_2x",
    "write_ome_zarr",
    "NGFF_VERSIONS",
    "DEFAULT_NGFF_VERSION",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PYRAMID_TOP_SIZE",
    "OME_ZARR_SUFFIX",
    "ATTRIBUTES_KEY",
]

NGFF_VERSIONS = ("0.4", "0.5")
DEFAULT_NGFF_VERSION = "0.4"
#: Blosc zstd level (with bit shuffle): the fastest level
DEFAULT_COMPRESS_LEVEL = 1
OME_ZARR_SUFFIX = ".ome.zarr"
#: key of our own attributes (quantity, unit, calibration, provenance) in the group attributes
ATTRIBUTES_KEY = "scanco_units"
AXIS_UNIT = "millimeter"
COORDINATE_FRAME = "LPS"
AXES_ZYX = ("z", "y", "x")
#: RFC-4 anatomical orientation of LPS axes (the direction in which each axis increases)
AXIS_ORIENTATION_LPS = {"x": "right-to-left", "y": "anterior-to-posterior", "z": "inferior-to-superior"}
# float64 voxels of one downsampling step (pairs of slices are processed in groups of about this size)
_DOWNSAMPLE_VOXELS = 1 << 22


class OmeZarrUnavailableError(ScancoError, ImportError):
    """OME-Zarr output needs the ``zarr`` package, which is not installed."""


def _require_zarr():
    """Import zarr (and numcodecs) or raise :class:`OmeZarrUnavailableError` naming the extra."""
    try:
        import numcodecs  # noqa: F401
        import zarr
        import zarr.api.asynchronous  # noqa: F401
    except ImportError as exc:
        raise OmeZarrUnavailableError(
            "OME-Zarr output needs zarr: pip install scanco-units[zarr]") from exc
    return zarr


# ---------------------------------------------------------------------------------------------------
# streaming levels
# ---------------------------------------------------------------------------------------------------


class _WriteRunner:
    """Runs zarr's asynchronous chunk writes on an event loop owned by the writer.

    zarr's synchronous API hands the work to its own I/O thread; an exception (Ctrl-C, SIGTERM as
    :class:`~ScancoUnitsLib.io.transaction.Interrupted`, disk full on one chunk) would leave the other chunk
    writes of that call running, and they could recreate files after the temporary directory was removed.
    Here every write is a task of our loop: on any exception :meth:`drain` waits for all of them (and for
    the encoding threads) before the caller removes anything. *threads*: encoding/writing threads.

    The loop runs in the calling thread, or, where that thread already runs an event loop (Jupyter), in
    one helper thread; there a Ctrl-C in the caller makes :meth:`drain` wait for the call in flight.
    """

    def __init__(self, threads: int):
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(max_workers=max(1, int(threads)),
                                                          thread_name_prefix="ome-zarr"))
        self._host = None  # one-thread executor that runs our loop when the caller's thread runs one

    def _needs_host(self) -> bool:
        if self._host is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return False
            self._host = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ome-zarr-loop")
        return True

    def run(self, coroutine):
        try:
            if self._needs_host():
                return self._host.submit(self.loop.run_until_complete, coroutine).result()
            return self.loop.run_until_complete(coroutine)
        except BaseException:
            self.drain()
            raise

    def _drain_here(self) -> None:
        # A task that failed with KeyboardInterrupt re-raises it out of the loop (and so does each task
        # awaiting it): run the loop until nothing is pending, a bounded number of times (a real second
        # Ctrl-C ends up here too: then we stop waiting).
        for _attempt in range(64):
            pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            try:
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
                return
            except BaseException:
                continue

    def drain(self) -> None:
        """Wait until no task and no thread of ours still works."""
        if self.loop.is_closed():
            return
        if self._host is None:
            self._drain_here()
            return
        done = self._host.submit(self._drain_here)  # runs after the call in flight, in the same thread
        for _attempt in range(64):
            try:
                done.result()
                return
            except BaseException:
                continue

    def close(self) -> None:
        self.drain()
        if self._host is not None:
            self._host.shutdown(wait=True)
        if not self.loop.is_closed():
            self.loop.close()


class _LevelStream:
    """One level: buffers a z-chunk-row, writes it when full, sends pairs of slices down."""

    def __init__(self, array, runner: _WriteRunner, level: PyramidLevel, dtype: np.dtype, method: str,
                 below: Optional["_LevelStream"]):
        self.array = array  # a zarr.AsyncArray: its writes run on the writer's own loop
        self.runner = runner
        self.level = level
        self.method = method
        self.below = below
        nz, ny, nx = level.shape_zyx
        self.buffer = np.empty((level.chunks_zyx[0], ny, nx), dtype=dtype)
        self.filled = 0
        self.z_written = 0
        self.received = 0
        self.pending = None  # an unpaired slice (1, y, x) waiting for its partner
        slice_voxels = max(1, ny * nx)
        self.pairs_per_step = max(1, _DOWNSAMPLE_VOXELS // (2 * slice_voxels))

    def push(self, slab: np.ndarray) -> None:
        self.received += slab.shape[0]
        if self.received > self.level.shape_zyx[0]:
            raise ValueError(f"level {self.level.path}: more slices than its {self.level.shape_zyx[0]}")
        self._buffer(slab)
        if self.below is not None:
            self._send_down(slab)

    def _buffer(self, slab: np.ndarray) -> None:
        start = 0
        count = slab.shape[0]
        rows = self.buffer.shape[0]
        while start < count:
            take = min(rows - self.filled, count - start)
            self.buffer[self.filled:self.filled + take] = slab[start:start + take]
            self.filled += take
            start += take
            if self.filled == rows:
                self._flush()

    def _flush(self) -> None:
        if self.filled == 0:
            return
        z0, z1 = self.z_written, self.z_written + self.filled
        # one band of chunks (chunk_z x chunk_y x nx) per call: zarr copies what it is given, so this
        # bounds its extra memory to a band instead of the whole chunk row
        band = self.level.chunks_zyx[1]
        for y0 in range(0, self.level.shape_zyx[1], band):
            self.runner.run(self.array.setitem((slice(z0, z1), slice(y0, y0 + band)),
                                               self.buffer[:self.filled, y0:y0 + band]))
        self.z_written += self.filled
        self.filled = 0

    def _send_down(self, slab: np.ndarray) -> None:
        if self.pending is not None:
            first = np.concatenate([self.pending, slab[:1]])
            self.pending = None
            self.below.push(downsample_2x(first, self.method))
            slab = slab[1:]
        paired = slab.shape[0] - slab.shape[0] % 2
        step = 2 * self.pairs_per_step
        for start in range(0, paired, step):
            self.below.push(downsample_2x(slab[start:min(paired, start + step)], self.method))
        if paired < slab.shape[0]:
            self.pending = slab[paired:].copy()

    def finish(self) -> None:
        """Send the last unpaired slice down (a block of one slice) and write the last chunk row."""
        if self.below is not None and self.pending is not None:
            last, self.pending = self.pending, None
            self.below.push(downsample_2x(last, self.method))
        self._flush()
        if self.z_written != self.level.shape_zyx[0]:  # pragma: no cover - guarded by the writer
            raise ValueError(f"level {self.level.path}: {self.z_written} of {self.level.shape_zyx[0]} slices")

    def release(self) -> None:
        self.buffer = None
        self.pending = None


# ---------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------


def _little_endian(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "biuf":
        raise ValueError(f"OME-Zarr output holds numbers, not {dt}")
    return dt.newbyteorder("<") if dt.byteorder == ">" else dt


class OmeZarrVolumeWriter(SlabWriter):
    """Stream a (z, y, x) volume into a multiscale OME-Zarr directory, slab by slab.

    ::

        with OmeZarrVolumeWriter("scan_HU.ome.zarr", (nz, ny, nx), np.int16, spacing_mm=(sx, sy, sz),
                                 origin_mm=(ox, oy, oz), quantity="hu", unit_label="HU") as writer:
            for slab in slabs:             # (n, ny, nx) int16, z ascending
                writer.write_slab(slab)

    *path* ends with ``.ome.zarr``. *atomic*: an :class:`AtomicOutputSet` to join (its owner commits it;
    a failure of this writer marks the set failed, so it cannot commit, and the owner's abort removes
    everything once its writers stopped); without one the writer uses its own set (with *overwrite*)
    and commits it in :meth:`close`. *key_values*, *description*, *calibration* (a dict,
    e.g. ``Calibration.to_dict()``) and *provenance* (a JSON-able dict) go into the ``scanco_units``
    attributes. *downsampling*: ``"mean"`` or ``"max"`` (default: from *quantity*, see
    :func:`downsampling_method`). *threads*: threads that compress and write chunks (zarr's writes run
    on an event loop owned by this writer, so a failure or Ctrl-C waits for the chunks in flight before
    the temporary directory is removed).
    """

    kind = "OME-Zarr"

    def __init__(self, path, shape_zyx, dtype, *, spacing_mm, origin_mm=(0.0, 0.0, 0.0), quantity: str = "",
                 unit_label: str = "", description: str = "", key_values: Optional[Mapping[str, str]] = None,
                 calibration: Optional[Mapping] = None, provenance: Optional[Mapping] = None,
                 ngff_version: str = DEFAULT_NGFF_VERSION, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 pyramid_top_size: int = DEFAULT_PYRAMID_TOP_SIZE, compress_level: int = DEFAULT_COMPRESS_LEVEL,
                 downsampling: Optional[str] = None, threads: int = 2, atomic: AtomicOutputSet | None = None,
                 overwrite: bool = False):
        path = Path(os.path.abspath(os.fspath(path)))
        if not path.name.lower().endswith(OME_ZARR_SUFFIX):
            raise ValueError(f"{path}: an OME-Zarr output must end with {OME_ZARR_SUFFIX}")
        if ngff_version not in NGFF_VERSIONS:
            raise ValueError(f"ngff_version must be one of {', '.join(NGFF_VERSIONS)}, not {ngff_version!r}")
        if not 0 <= int(compress_level) <= 9:
            raise ValueError(f"compress_level must be 0..9, not {compress_level!r}")
        dtype = _little_endian(dtype)
        self.ngff_version = ngff_version
        self.quantity = str(quantity)
        self.unit_label = str(unit_label)
        self.downsampling = downsampling or downsampling_method(self.quantity)
        if self.downsampling not in ("mean", "max"):
            raise ValueError(f"downsampling must be 'mean' or 'max', not {downsampling!r}")
        self.levels = pyramid_levels(shape_zyx, spacing_mm, origin_mm, chunk_size=chunk_size,
                                     top_size=pyramid_top_size)
        zarr = _require_zarr()
        super().__init__(path, self.levels[0].shape_zyx, dtype, atomic, overwrite=overwrite)
        self._streams: List[_LevelStream] = []
        self._runner = None

        def start():
            self._runner = _WriteRunner(threads)
            # when only the output set is aborted (its owner's with block), nothing calls this writer
            # again: its loop and threads are released once the writer is dropped (or at exit)
            weakref.finalize(self, self._runner.close)
            self.temp_path = self._set.add_directory(self.path)
            attributes = self._attributes(description, key_values, calibration, provenance, spacing_mm, origin_mm)
            self._create(zarr, attributes, int(compress_level))

        self._guarded(self.path, start)
        self._set.on_commit(self.close)

    @classmethod
    def from_spec(cls, spec: VolumeSpec, atomic: AtomicOutputSet | None, **options) -> "OmeZarrVolumeWriter":
        """The writer the seam opens for *spec* (path ``<base>.ome.zarr``)."""
        calibration = None
        provenance = {"derivation": list(spec.derivation)} if spec.derivation else {}
        if spec.source is not None:
            calibration = spec.source.calibration.to_dict()
            provenance.update({"source_file": str(spec.source.path), "voxel_type": spec.source.voxel_type,
                               "processing_log": spec.source.processing_log})
        return cls(_ome_zarr_paths(spec)[0], spec.shape_zyx, spec.dtype, spacing_mm=spec.spacing_mm,
                   origin_mm=spec.origin_mm, quantity=spec.quantity, unit_label=spec.unit_label,
                   description=spec.description, key_values=dict(spec.key_values), calibration=calibration,
                   provenance=provenance, threads=options.pop("threads", spec.threads), atomic=atomic, **options)

    # -- metadata -----------------------------------------------------------------------------------
    def _attributes(self, description, key_values, calibration, provenance, spacing_mm, origin_mm) -> dict:
        rounding = ("maximum (any)" if self.downsampling == "max" else
                    "float64 mean cast to " + self.dtype.name if self.dtype.kind == "f" else
                    f"float64 mean rounded half to even (numpy.rint), clipped to {self.dtype.name}")
        multiscale = {
            "name": self.path.name[:-len(OME_ZARR_SUFFIX)],
            "axes": [{"name": name, "type": "space", "unit": AXIS_UNIT,
                      "orientation": {"type": "anatomical", "value": AXIS_ORIENTATION_LPS[name]}}
                     for name in AXES_ZYX],
            "datasets": [{"path": level.path, "coordinateTransformations": level.coordinate_transformations()}
                         for level in self.levels],
            "type": "local_max" if self.downsampling == "max" else "local_mean",
            "metadata": {
                "description": f"2x2x2 blocks, {rounding}; odd sizes: the last block of an axis holds the "
                               "voxels that exist",
                "method": "ScancoUnitsLib.formats.ome_zarr.downsample_2x",
                "version": __version__,
            },
        }
        own = {
            "ngff_version": self.ngff_version,
            "coordinate_frame": COORDINATE_FRAME,
            "coordinate_frame_note": "x to the patient's left, y posterior, z superior (as the NRRD "
                                     "output); translation = centre of the first voxel of each level",
            "spacing_mm_xyz": [float(v) for v in spacing_mm],
            "origin_mm_xyz": [float(v) for v in origin_mm],
            "quantity": self.quantity,
            "unit": self.unit_label,
            "description": str(description),
            "voxel_type": self.dtype.name,
            "downsampling": self.downsampling,
            "key_values": {str(k): str(v) for k, v in (key_values or {}).items()},
            "calibration": dict(calibration) if calibration is not None else None,
            "provenance": dict(provenance or {}),
            "software": f"ScancoUnits {__version__}",
        }
        if self.ngff_version == "0.4":
            multiscale = {"version": "0.4", **multiscale}
            return {"multiscales": [multiscale], ATTRIBUTES_KEY: own}
        return {"ome": {"version": "0.5", "multiscales": [multiscale]}, ATTRIBUTES_KEY: own}

    def _create(self, zarr, attributes: dict, compress_level: int) -> None:
        if self.ngff_version == "0.4":
            from numcodecs import Blosc
            zarr_format = 2
            array_options = {
                "compressors": [Blosc(cname="zstd", clevel=compress_level, shuffle=Blosc.BITSHUFFLE)],
                "chunk_key_encoding": {"name": "v2", "separator": "/"},
            }
        else:
            from zarr.codecs import BloscCodec
            zarr_format = 3
            array_options = {
                "compressors": [BloscCodec(cname="zstd", clevel=compress_level, shuffle="bitshuffle")],
                "dimension_names": list(AXES_ZYX),
            }

        async def create():
            group = await zarr.api.asynchronous.open_group(store=str(self.temp_path), mode="w-",
                                                           zarr_format=zarr_format, attributes=attributes)
            return [await group.create_array(level.path, shape=level.shape_zyx, chunks=level.chunks_zyx,
                                             dtype=self.dtype, fill_value=0, **array_options)
                    for level in self.levels]

        arrays = self._runner.run(create())  # metadata too: nothing runs on after a failure
        below = None
        streams = []
        for array, level in zip(reversed(arrays), reversed(self.levels)):
            below = _LevelStream(array, self._runner, level, self.dtype, self.downsampling, below)
            streams.append(below)
        self._streams = streams[::-1]

    # -- writing ------------------------------------------------------------------------------------
    def write_slab(self, array) -> None:
        """Append the slices of *array* (shape ``(n, y, x)`` or ``(y, x)``, this writer's dtype).

        The array is not modified or kept: its buffer may be reused as soon as this returns.
        """
        arr = self._checked_slab(array)
        if arr is None:
            return
        self._guarded(self.path, lambda: self._streams[0].push(arr))
        self._advance(arr)

    def _finish(self) -> None:
        """Write the last chunk rows of every level."""
        try:
            for stream in self._streams:
                stream.finish()
        finally:
            self._release()

    def _release(self) -> None:
        for stream in self._streams:
            stream.release()
        # no chunk write may still be running when the tree is removed
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    def __repr__(self):
        return (f"OmeZarrVolumeWriter({str(self.path)!r}, shape_zyx={self.shape_zyx}, dtype={self.dtype.name}, "
                f"NGFF {self.ngff_version}, {len(self.levels)} levels, {self._slices_written} slices written)")


def write_ome_zarr(path, volume_zyx, *, spacing_mm, origin_mm=(0.0, 0.0, 0.0), atomic: AtomicOutputSet | None = None,
                   overwrite: bool = False, slab_slices: int = 16, **options) -> Path:
    """Write a whole in-memory (z, y, x) array as OME-Zarr (slab by slab); return the directory path.

    *options*: the keyword arguments of :class:`OmeZarrVolumeWriter` (quantity, unit_label, ...).
    """
    volume = np.asarray(volume_zyx)
    if volume.ndim != 3:
        raise ValueError(f"{path}: the volume must be 3-D (z, y, x), not shape {volume.shape}")
    with OmeZarrVolumeWriter(path, volume.shape, volume.dtype, spacing_mm=spacing_mm, origin_mm=origin_mm,
                             atomic=atomic, overwrite=overwrite, **options) as writer:
        for z0 in range(0, volume.shape[0], max(1, int(slab_slices))):
            writer.write_slab(volume[z0:z0 + slab_slices])
    return writer.path


# ---- registration in the writer seam ------------------------------------------------------------
def _ome_zarr_paths(spec: VolumeSpec) -> List[Path]:
    base = Path(spec.base_path)
    return [base.with_name(base.name + OME_ZARR_SUFFIX)]


def _open_ome_zarr(spec: VolumeSpec, atomic: AtomicOutputSet) -> OmeZarrVolumeWriter:
    return OmeZarrVolumeWriter.from_spec(spec, atomic)


register_format(VolumeFormat("ome-zarr", "OME-Zarr (NGFF 0.4 multiscale: napari, Neuroglancer, Fiji)",
                             _ome_zarr_paths, _open_ome_zarr, require=_require_zarr))
