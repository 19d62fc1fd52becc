"""Regions of interest placed on a scan's grid by the scanner's own positions (never resampled).

A region is a SCANCO char mask AIM (D1Tchar, binCmp, charCmp, bit8: any compression the reader reads;
non-zero = inside) or a GOBJ contour file (:mod:`~ScancoUnitsLib.formats.gobj`). Both carry voxel
indices of the scanner's grid: an AIM its ``pos``, a GOBJ the absolute indices of its contours; an ISQ
sits at position 0. The region is placed on the scan at ``region position - scan position``, which
must be whole voxels of the *same* element size:

* element sizes agree when, on every axis, the difference would move the farthest voxel of either
  grid (counted from the scanner's origin) by less than :data:`ELEMENT_SIZE_DRIFT_VOXELS` of a voxel
  (AIM v020 sizes are VAX floats, GOBJ sizes integer µm / dims: they differ in the last digits);
  otherwise the region is refused with both sizes;
* the part of the region outside the scan is dropped and counted (``outside_voxels``);
* a region none of whose voxels falls inside the scan is refused ("no overlap").

:func:`read_region` returns a :class:`PlacedRegion`: a bool mask cropped to the region's voxels
inside the scan and the scan index of its first voxel, so a region costs memory in proportion to
its own box, not to the scan. A conversion uses :class:`RegionLoading` instead: the same placement,
read in a thread of its own during the conversion's pass and held as bits until the pass ends.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import numpy as np

from ..errors import RequestError, ScancoFormatError
from .gobj import is_gobj, read_gobj
from ..core.header import ScancoHeader

Triple = Tuple[int, int, int]
#: the largest misplacement (in voxels) that an element-size difference may cause anywhere on the grids
ELEMENT_SIZE_DRIFT_VOXELS = 0.05
GOBJ_KIND = "GOBJ"
MASK_AIM_KIND = "mask AIM"
#: bytes of a mask AIM's voxels read at a time (its read and bool buffers are reused)
REGION_READ_BYTES = 4 << 20


@dataclass(frozen=True)
class PlacedRegion:
    """A region on a scan's grid. ``mask`` (bool, z y x, read-only) covers the scan voxels
    ``start_zyx ... start_zyx + mask.shape``; ``offset_voxels`` (x, y, z) = region position - scan
    position; ``voxels``: region voxels inside the scan; ``outside_voxels``: those dropped."""
    name: str
    path: str
    kind: str
    scan_shape_zyx: Triple
    start_zyx: Triple
    mask: np.ndarray = field(repr=False)
    offset_voxels: Triple
    voxels: int
    outside_voxels: int
    voxel_size_mm: Tuple[float, float, float]

    def slab(self, z0: int, z1: int, y0: int = 0, y1: Optional[int] = None):
        """``((first, last) slice of the part among z0:z1, part, (slice y, slice x) of the scan))`` for
        scan slices ``z0:z1`` and rows ``y0:y1`` (default all), or None when the region's box has no
        voxel there; the part (bool) is a view of :attr:`mask`."""
        rz0, rz1 = self.start_zyx[0], self.start_zyx[0] + self.mask.shape[0]
        ry0, ry1 = self.start_zyx[1], self.start_zyx[1] + self.mask.shape[1]
        a, b = max(z0, rz0), min(z1, rz1)
        ya, yb = max(y0, ry0), min(self.scan_shape_zyx[1] if y1 is None else y1, ry1)
        if a >= b or ya >= yb:
            return None
        x0 = self.start_zyx[2]
        return (a - z0, b - z0), self.mask[a - rz0:b - rz0, ya - ry0:yb - ry0], \
            (slice(ya, yb), slice(x0, x0 + self.mask.shape[2]))

    def full_mask(self, dtype=np.uint8) -> np.ndarray:
        """The region on the whole scan grid, 0/1 (memory: one byte a scan voxel)."""
        out = np.zeros(self.scan_shape_zyx, dtype=dtype)
        z, y, x = self.start_zyx
        dz, dy, dx = self.mask.shape
        out[z:z + dz, y:y + dy, x:x + dx] = self.mask
        return out

    def slab_mask(self, z0: int, z1: int, dtype=np.uint8) -> np.ndarray:
        """0/1 of the region on scan slices ``z0:z1`` (the whole width and height)."""
        return _slab_mask(self, z0, z1, dtype)

    def to_dict(self) -> dict:
        return _region_dict(self)


def _region_dict(region) -> dict:
    return {"name": region.name, "file": region.path, "kind": region.kind,
            "offset_voxels": list(region.offset_voxels), "voxels": region.voxels,
            "outside_voxels": region.outside_voxels}


def _slab_mask(region, z0: int, z1: int, dtype) -> np.ndarray:
    out = np.zeros((z1 - z0,) + tuple(region.scan_shape_zyx[1:]), dtype=dtype)
    part = region.slab(z0, z1)
    if part is not None:
        (a, b), mask, (ys, xs) = part
        out[a:b, ys, xs] = mask
    return out


def _same_element_size(region_mm, scan_mm, farthest_index) -> bool:
    for a, b, n in zip(region_mm, scan_mm, farthest_index):
        if not (a > 0 and b > 0):
            return False
        if abs(a - b) / b * max(n, 1) >= ELEMENT_SIZE_DRIFT_VOXELS:
            return False
    return True


class _Placement:
    """One region being placed on a scan's grid: the header checks at construction (element size,
    overlap of the boxes), then :meth:`add` for the region file's slices in z order, then :meth:`check`
    and :meth:`placed`. Kept as bits (``np.packbits`` along x): an eighth of a byte a voxel of the
    overlap box."""

    def __init__(self, name, path, kind, region_dims_xyz, region_pos_xyz, region_mm, like: ScancoHeader):
        scan_dims = tuple(int(v) for v in like.dimensions)
        scan_pos = tuple(int(v) for v in like.position_voxels)
        if region_mm is None:
            raise RequestError(path, f"region {name!r} has no element size (its header has no dimensions); "
                                     "it cannot be placed on the scan")
        farthest = [max(abs(p) + d, abs(q) + e) for p, d, q, e in zip(region_pos_xyz, region_dims_xyz,
                                                                         scan_pos, scan_dims)]
        if not _same_element_size(region_mm, like.voxel_size_mm, farthest):
            fmt = lambda t: " x ".join(f"{v:.8g}" for v in t)  # noqa: E731
            raise RequestError(path, f"region {name!r} has element size {fmt(region_mm)} mm, the scan "
                                     f"{like.path} {fmt(like.voxel_size_mm)} mm; a region is placed by position "
                                     "on the same grid only, never resampled")
        self.name, self.path, self.kind, self.like = name, path, kind, like
        self.scan_shape_zyx = tuple(like.shape_zyx)
        self.voxel_size_mm = tuple(float(v) for v in region_mm)
        self._where = (f"(region position {list(region_pos_xyz)}, size {list(region_dims_xyz)}; scan position "
                       f"{list(scan_pos)}, size {list(scan_dims)})")
        self.offset_voxels = offset = tuple(q - p for q, p in zip(region_pos_xyz, scan_pos))
        lo = [max(0, o) for o in offset]                                  # scan index range of the overlap
        hi = [min(d, o + e) for d, o, e in zip(scan_dims, offset, region_dims_xyz)]
        if not all(h > v for v, h in zip(lo, hi)):
            raise RequestError(path, f"region {name!r} does not overlap the scan {like.path} {self._where}")
        self._lo, self._hi = lo, hi
        self._width = hi[0] - lo[0]
        self.bits = np.zeros((hi[2] - lo[2], hi[1] - lo[1], (self._width + 7) // 8), dtype=np.uint8)
        self.total = self.voxels = 0
        self._box_lo, self._box_hi = [None] * 3, [None] * 3   # the inside voxels' box, overlap box indices
        #: scan slices below this one are placed
        self.placed_through_z = lo[2]

    @property
    def outside_voxels(self) -> int:
        return self.total - self.voxels

    def add(self, z0: int, part: np.ndarray) -> None:
        """The region file's slices ``z0 ...`` (bool; a buffer the caller may reuse)."""
        lo, hi, offset = self._lo, self._hi, self.offset_voxels
        rz0, rz1 = lo[2] - offset[2], hi[2] - offset[2]
        counted = int(np.count_nonzero(part))
        self.total += counted
        a, b = max(z0, rz0), min(z0 + part.shape[0], rz1)
        if counted and a < b:
            piece = part[a - z0:b - z0, lo[1] - offset[1]:hi[1] - offset[1], lo[0] - offset[0]:hi[0] - offset[0]]
            count = counted if piece.size == part.size else int(np.count_nonzero(piece))
            if count:
                self.voxels += count
                any_z = np.flatnonzero(piece.reshape(piece.shape[0], -1).any(axis=1))
                footprint = piece[any_z[0]:any_z[-1] + 1].any(axis=0)          # (y, x): one pass over the piece
                any_y, any_x = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
                found_lo = (a - rz0 + int(any_z[0]), int(any_y[0]), int(any_x[0]))
                found_hi = (a - rz0 + int(any_z[-1]) + 1, int(any_y[-1]) + 1, int(any_x[-1]) + 1)
                self._box_lo = [v if m is None else min(m, v) for m, v in zip(self._box_lo, found_lo)]
                self._box_hi = [v if m is None else max(m, v) for m, v in zip(self._box_hi, found_hi)]
                self.bits[found_lo[0]:found_hi[0], found_lo[1]:found_hi[1]] = np.packbits(
                    piece[int(any_z[0]):int(any_z[-1]) + 1, found_lo[1]:found_hi[1]], axis=-1)
        self.placed_through_z = max(self.placed_through_z, min(z0 + part.shape[0] + offset[2], hi[2]))

    def slab(self, z0: int, z1: int, y0: int = 0, y1: Optional[int] = None):
        """:meth:`PlacedRegion.slab` on the overlap box (of the slices placed so far; a new array)."""
        lo, hi = self._lo, self._hi
        a, b = max(z0, lo[2]), min(z1, hi[2])
        ya, yb = max(y0, lo[1]), min(hi[1] if y1 is None else y1, hi[1])
        if a >= b or ya >= yb:
            return None
        part = np.unpackbits(self.bits[a - lo[2]:b - lo[2], ya - lo[1]:yb - lo[1]], axis=-1,
                             count=self._width).view(bool)
        return (a - z0, b - z0), part, (slice(ya, yb), slice(lo[0], hi[0]))

    def check(self) -> None:
        """Refuse a region none of whose voxels lies inside the scan (its box overlaps, its voxels do not)."""
        if self.total and not self.voxels:
            raise RequestError(self.path, f"region {self.name!r} does not overlap the scan {self.like.path}: none "
                                          f"of its {self.total} voxels lies inside {self._where}")

    def placed(self) -> "PlacedRegion":
        """The region as a :class:`PlacedRegion` (a bool array of its inside voxels' box)."""
        self.check()
        lo = self._lo
        if self.voxels:
            box_lo, box_hi = self._box_lo, self._box_hi
            inside = np.unpackbits(self.bits[box_lo[0]:box_hi[0], box_lo[1]:box_hi[1]], axis=-1,
                                   count=self._width).view(bool)[..., box_lo[2]:box_hi[2]].copy()
            start = (lo[2] + box_lo[0], lo[1] + box_lo[1], lo[0] + box_lo[2])
        else:
            start = (lo[2], lo[1], lo[0])
            inside = np.zeros((0, 0, 0), dtype=bool)
        inside.flags.writeable = False
        return PlacedRegion(self.name, self.path, self.kind, self.scan_shape_zyx, start, inside, self.offset_voxels,
                            self.voxels, self.outside_voxels, self.voxel_size_mm)


def region_kind(path) -> str:
    """:data:`GOBJ_KIND` or :data:`MASK_AIM_KIND` from the file's first bytes (the reader checks the rest)."""
    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise ScancoFormatError(path, f"cannot read region: {exc.strerror or exc}") from None
    return GOBJ_KIND if is_gobj(head) else MASK_AIM_KIND


def read_region(path: Union[str, os.PathLike], like: ScancoHeader, name: Optional[str] = None,
                slab_slices: Optional[int] = None) -> PlacedRegion:
    """The region in ``path`` (char mask AIM or GOBJ) on the grid of the scan ``like`` describes.

    Refused (:class:`RequestError`, one line with the reason): another element size, no overlap, a
    non-char AIM. Damaged files: :class:`ScancoFormatError`."""
    path = os.fspath(path)
    name = name or os.path.basename(path)
    if region_kind(path) == GOBJ_KIND:
        return _gobj_placement(path, like, name).placed()
    placement, slabs = _mask_aim_placement(path, like, name, slab_slices)
    for z0, part in slabs():
        placement.add(z0, part)
    return placement.placed()


def _gobj_placement(path: str, like: ScancoHeader, name: str) -> _Placement:
    """The GOBJ ``path`` placed on ``like``'s grid (its contours are filled as a whole)."""
    contours = read_gobj(path)
    placement = _Placement(name, path, GOBJ_KIND, contours.dimensions, contours.position_voxels,
                           contours.voxel_size_mm, like)
    placement.add(0, contours.mask)
    return placement


def _mask_aim_placement(path: str, like: ScancoHeader, name: str, slab_slices: Optional[int]):
    """(the placement of the mask AIM ``path``, after its header checks; the generator of its slices,
    ``slab_slices`` at a time: default about :data:`REGION_READ_BYTES` a slab)."""
    from .reader import open_voxels, read_header

    header = read_header(path)
    if not header.is_mask:
        raise RequestError(path, f"region {name!r} must be a char mask AIM or a GOBJ file; this file holds "
                                 f"{header.voxel_type} {header.data_type_name} voxels")
    placement = _Placement(name, path, MASK_AIM_KIND, header.dimensions, header.position_voxels,
                           header.voxel_size_mm, like)

    def slabs(stop: Optional[threading.Event] = None):   # one native and one bool buffer, reused
        nz, ny, nx = header.shape_zyx
        slices = slab_slices or max(1, REGION_READ_BYTES // max(1, ny * nx))
        native = np.empty((min(slices, nz), ny, nx), dtype=np.dtype(header.voxel_type))
        inside = np.empty(native.shape, dtype=bool)
        with open_voxels(header) as source:
            for z0 in range(0, nz, slices):
                if stop is not None and stop.is_set():
                    return
                n = min(slices, nz - z0)
                source.read_slab(z0, z0 + n, out=native[:n])
                np.not_equal(native[:n], 0, out=inside[:n])
                yield z0, inside[:n]
    return placement, slabs


class RegionLoading:
    """A region read and placed (as bits) in a background thread while the conversion's pass runs:
    the header checks are done when it is made (:class:`RequestError` at once); :meth:`slab` waits
    until the slices asked for are placed and raises the reading's error if it failed; :meth:`wait`
    waits for the end. ``name``, ``path``, ``kind``, ``scan_shape_zyx`` and ``offset_voxels`` are
    known at once, ``voxels`` and ``outside_voxels`` after :meth:`wait`. A GOBJ is placed at once
    (its contours are filled as a whole)."""

    def __init__(self, path: Union[str, os.PathLike], like: ScancoHeader, name: Optional[str] = None,
                 slab_slices: Optional[int] = None):
        path = os.fspath(path)
        name = name or os.path.basename(path)
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = None
        if region_kind(path) == GOBJ_KIND:
            self._placement = _gobj_placement(path, like, name)
            self._placement.check()
            self._placement.placed_through_z = self._placement.scan_shape_zyx[0]
            return
        self._placement, slabs = _mask_aim_placement(path, like, name, slab_slices)
        self._thread = threading.Thread(target=self._place, args=(slabs,), name=f"scanco-region-{name}",
                                        daemon=True)
        self._thread.start()

    def _place(self, slabs) -> None:
        try:
            for z0, part in slabs(self._stop):
                with self._changed:
                    self._placement.add(z0, part)
                    self._changed.notify_all()
            self._placement.check()
        except BaseException as exc:   # raised to whoever waits for the region
            self._error = exc
        finally:
            with self._changed:
                self._placement.placed_through_z = self._placement.scan_shape_zyx[0]
                self._changed.notify_all()

    name = property(lambda self: self._placement.name)
    path = property(lambda self: self._placement.path)
    kind = property(lambda self: self._placement.kind)
    scan_shape_zyx = property(lambda self: self._placement.scan_shape_zyx)
    offset_voxels = property(lambda self: self._placement.offset_voxels)
    voxels = property(lambda self: self.wait()._placement.voxels)
    outside_voxels = property(lambda self: self.wait()._placement.outside_voxels)

    def slab(self, z0: int, z1: int, y0: int = 0, y1: Optional[int] = None):
        """:meth:`PlacedRegion.slab` (a new bool array of the overlap box's slices, placed by then)."""
        self._wait_for_slices(z1)
        return self._placement.slab(z0, z1, y0, y1)   # placed slices are not written again: no lock

    def _wait_for_slices(self, z1: int) -> None:
        need = min(z1, self._placement.scan_shape_zyx[0])
        with self._changed:
            while not self._changed.wait_for(lambda: self._placement.placed_through_z >= need, timeout=1.0):
                if self._thread is not None and not self._thread.is_alive():   # never: its end notifies
                    raise RuntimeError(f"{self.path}: the region's reading thread ended early")
            if self._error is not None:
                raise self._error

    def slab_mask(self, z0: int, z1: int, dtype=np.uint8) -> np.ndarray:
        return _slab_mask(self, z0, z1, dtype)

    def wait(self) -> "RegionLoading":
        """Wait until every slice is read and placed (raises the reading's error)."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise RequestError(self.path, "the region's reading was stopped")
        return self

    def to_dict(self) -> dict:
        return _region_dict(self)

    def stop(self) -> None:
        """Stop reading (the conversion failed or was cancelled)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
