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
its own box, not to the scan.
"""

from __future__ import annotations

import os
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

    def slab(self, z0: int, z1: int):
        """``(region part, (slice y, slice x))`` for scan slices ``z0:z1``, or None when the region has
        no voxel there; the part is a view of :attr:`mask` of shape (slices in both, ny, nx)."""
        rz0, rz1 = self.start_zyx[0], self.start_zyx[0] + self.mask.shape[0]
        a, b = max(z0, rz0), min(z1, rz1)
        if a >= b:
            return None
        y0, x0 = self.start_zyx[1], self.start_zyx[2]
        return (a - z0, b - z0), self.mask[a - rz0:b - rz0], \
            (slice(y0, y0 + self.mask.shape[1]), slice(x0, x0 + self.mask.shape[2]))

    def full_mask(self, dtype=np.uint8) -> np.ndarray:
        """The region on the whole scan grid, 0/1 (memory: one byte a scan voxel)."""
        out = np.zeros(self.scan_shape_zyx, dtype=dtype)
        z, y, x = self.start_zyx
        dz, dy, dx = self.mask.shape
        out[z:z + dz, y:y + dy, x:x + dx] = self.mask
        return out

    def slab_mask(self, z0: int, z1: int, dtype=np.uint8) -> np.ndarray:
        """0/1 of the region on scan slices ``z0:z1`` (the whole width and height)."""
        out = np.zeros((z1 - z0,) + tuple(self.scan_shape_zyx[1:]), dtype=dtype)
        part = self.slab(z0, z1)
        if part is not None:
            (a, b), mask, (ys, xs) = part
            out[a:b, ys, xs] = mask
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "file": self.path, "kind": self.kind,
                "offset_voxels": list(self.offset_voxels), "voxels": self.voxels,
                "outside_voxels": self.outside_voxels}


def _same_element_size(region_mm, scan_mm, farthest_index) -> bool:
    for a, b, n in zip(region_mm, scan_mm, farthest_index):
        if not (a > 0 and b > 0):
            return False
        if abs(a - b) / b * max(n, 1) >= ELEMENT_SIZE_DRIFT_VOXELS:
            return False
    return True


def _place(name, path, kind, full_or_reader, region_dims_xyz, region_pos_xyz, region_mm, like: ScancoHeader):
    """Crop to the scan, count inside/outside. ``full_or_reader(z0, z1)`` gives region slices (bool)."""
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
                                 f"{like.path} {fmt(like.voxel_size_mm)} mm; a region is placed by position on "
                                 "the same grid only, never resampled")
    offset = tuple(q - p for q, p in zip(region_pos_xyz, scan_pos))   # region index 0 -> scan index offset
    lo = [max(0, o) for o in offset]                                  # scan index range of the overlap
    hi = [min(d, o + e) for d, o, e in zip(scan_dims, offset, region_dims_xyz)]
    total = voxels = 0
    pieces = []                       # (first scan slice, region voxels inside the scan's x/y range)
    box_lo, box_hi = [None] * 3, [None] * 3   # bounding box of the inside voxels, scan indices (z, y, x)
    rz0, rz1 = lo[2] - offset[2], hi[2] - offset[2]
    for z0, part in full_or_reader():
        total += int(np.count_nonzero(part))
        a, b = max(z0, rz0), min(z0 + part.shape[0], rz1)
        if not (a < b and hi[0] > lo[0] and hi[1] > lo[1]):
            continue
        piece = part[a - z0:b - z0, lo[1] - offset[1]:hi[1] - offset[1], lo[0] - offset[0]:hi[0] - offset[0]]
        count = int(np.count_nonzero(piece))
        if not count:
            continue
        voxels += count
        any_z = np.flatnonzero(piece.reshape(piece.shape[0], -1).any(axis=1))
        footprint = piece[any_z[0]:any_z[-1] + 1].any(axis=0)          # (y, x): one pass over the piece
        any_y, any_x = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
        found_lo = (a + offset[2] + int(any_z[0]), lo[1] + int(any_y[0]), lo[0] + int(any_x[0]))
        found_hi = (a + offset[2] + int(any_z[-1]) + 1, lo[1] + int(any_y[-1]) + 1, lo[0] + int(any_x[-1]) + 1)
        box_lo = [v if m is None else min(m, v) for m, v in zip(box_lo, found_lo)]
        box_hi = [v if m is None else max(m, v) for m, v in zip(box_hi, found_hi)]
        # kept cropped to its own box (a copy): the slab it came from is freed
        pieces.append((found_lo, piece[int(any_z[0]):int(any_z[-1]) + 1, int(any_y[0]):int(any_y[-1]) + 1,
                                       int(any_x[0]):int(any_x[-1]) + 1].copy()))
    if total and not voxels:
        raise RequestError(path, f"region {name!r} does not overlap the scan {like.path}: none of its {total} "
                                 f"voxels lies inside (region position {list(region_pos_xyz)}, size "
                                 f"{list(region_dims_xyz)}; scan position {list(scan_pos)}, size {list(scan_dims)})")
    # the region's own voxels inside the scan, cropped to their box: one copy
    if voxels:
        start = list(box_lo)
        inside = np.zeros(tuple(h - s for s, h in zip(box_lo, box_hi)), dtype=bool)
        for (pz, py, px), piece in pieces:
            dz, dy, dx = piece.shape
            inside[pz - start[0]:pz - start[0] + dz, py - start[1]:py - start[1] + dy,
                   px - start[2]:px - start[2] + dx] = piece
        del pieces
    else:
        start = [lo[2], lo[1], lo[0]]
        inside = np.zeros((0, 0, 0), dtype=bool)
    inside.flags.writeable = False
    return PlacedRegion(name, path, kind, like.shape_zyx, tuple(start), inside, offset, voxels,
                        total - voxels, tuple(float(v) for v in region_mm))


def region_kind(path) -> str:
    """:data:`GOBJ_KIND` or :data:`MASK_AIM_KIND` from the file's first bytes (the reader checks the rest)."""
    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise ScancoFormatError(path, f"cannot read region: {exc.strerror or exc}") from None
    return GOBJ_KIND if is_gobj(head) else MASK_AIM_KIND


def read_region(path: Union[str, os.PathLike], like: ScancoHeader, name: Optional[str] = None,
                slab_slices: int = 32) -> PlacedRegion:
    """The region in ``path`` (char mask AIM or GOBJ) on the grid of the scan ``like`` describes.

    Refused (:class:`RequestError`, one line with the reason): another element size, no overlap, a
    non-char AIM. Damaged files: :class:`ScancoFormatError`."""
    path = os.fspath(path)
    name = name or os.path.basename(path)
    if region_kind(path) == GOBJ_KIND:
        contours = read_gobj(path)
        dims = contours.dimensions

        def slabs():
            yield 0, contours.mask
        return _place(name, path, GOBJ_KIND, slabs, dims, contours.position_voxels, contours.voxel_size_mm, like)

    from .reader import open_voxels, read_header

    header = read_header(path)
    if not header.is_mask:
        raise RequestError(path, f"region {name!r} must be a char mask AIM or a GOBJ file; this file holds "
                                 f"{header.voxel_type} {header.data_type_name} voxels")

    def slabs():
        with open_voxels(header) as source:
            z0 = 0
            for slab in source.iter_slabs(slab_slices):
                yield z0, slab != 0
                z0 += slab.shape[0]
    return _place(name, path, MASK_AIM_KIND, slabs, header.dimensions, header.position_voxels,
                  header.voxel_size_mm, like)
