"""SCANCO GOBJ contour files (``CTDATA-HEADER_V1`` with data_type 6): read and rasterise (numpy only).

Layout (the rules of aimio-py 0.4.1's ``read_gobj``, our test oracle; written here from those rules):

* a 512-byte CTDATA header: magic, data_type 6 at byte 16, dims (x, y, z) int32 at byte 32, physical
  extent in µm int32 at byte 44 (element size = extent / dims), additional header blocks at byte 508;
* from ``(blocks + 1) * 512``: per drawn slice a 52-byte slice record (13 int32: 1, centre x, centre y,
  z, width, height, -, 3, 20, 0, 0, 16512, 16512) followed by its drawables, each either
  - a contour: 68 bytes (17 int32: material, centre x, centre y, z, width, height, 0, 3, 32, -, -,
    16512, 16512, start y, start x, step count, byte count) or, as the first drawable of a slice,
    72 bytes (material, 3, centre x, ... one field more), followed by ``byte count`` bytes of 3-bit
    little-endian chain codes;
  - a primitive (rectangle, shape 4; ellipse, shape 6): 36 bytes (or 40 as the first drawable);
* zero bytes (block padding) up to the end.

Coordinates are voxel indices of the scanner's grid (the ISQ's), the same frame as AIM positions.
Rasterisation: an additive drawable is filled together with its boundary; a subtractive one (a later
drawable inside a slice whose first drawable is the slice's own frame, or a material-3 contour in a
slice with several materials) clears only its strict interior (pixels whose 4 neighbours are all
inside). Unlike aimio-py this reader does not search byte by byte for the next record: bytes that
are neither a record nor trailing zeros make the file refused (one line, :class:`ScancoFormatError`).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np

from ..errors import ScancoFormatError

CTDATA_MAGIC = b"CTDATA-HEADER_V1"
GOBJ_DATA_TYPE = 6
BLOCK_BYTES = 512
SLICE_RECORD_BYTES = 52
_SLICE_KIND = 20
_CONTOUR_KIND = 32
_FRAME = 16512
SUBTRACTIVE_MATERIAL = 3
RECTANGLE_SHAPE = 4
ELLIPSE_SHAPE = 6
#: (dy, dx) of chain code (c + 2) % 8, before the x/y swap of the file's convention
_CHAIN_STEPS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
#: refuse a drawable wider than this (a damaged width would otherwise allocate gigabytes)
MAX_SLICE_EXTENT = 1 << 16


@dataclass(frozen=True)
class GobjDrawable:
    """One contour or primitive of a slice. ``kind``: "contour" or "primitive"."""
    kind: str
    material: int            # contours; 0 for primitives
    shape: int               # primitives; 0 for contours
    center_x: int
    center_y: int
    z: int
    width: int
    height: int
    chain: Tuple[int, ...] = ()

    @property
    def bbox(self) -> Tuple[int, int, int, int]:
        """(x_min, y_min, x_max, y_max), inclusive voxel indices."""
        x_min = self.center_x - (self.width - 1) // 2
        y_min = self.center_y - (self.height - 1) // 2
        return x_min, y_min, x_min + self.width - 1, y_min + self.height - 1


@dataclass(frozen=True)
class GobjSlice:
    center_x: int
    center_y: int
    z: int
    width: int
    height: int
    drawables: Tuple[GobjDrawable, ...]


@dataclass(frozen=True)
class GobjContours:
    """A GOBJ file's contours rasterised on their tight box. ``mask``: bool (z, y, x);
    ``position_voxels``: (x, y, z) index of ``mask[0, 0, 0]`` on the scanner grid;
    ``voxel_size_mm``: from the header's extent / dims, None where the header has no dims."""
    path: str
    mask: np.ndarray
    position_voxels: Tuple[int, int, int]
    voxel_size_mm: Optional[Tuple[float, float, float]]
    slices: Tuple[GobjSlice, ...]

    @property
    def dimensions(self) -> Tuple[int, int, int]:
        z, y, x = self.mask.shape
        return x, y, z


def is_gobj(head: bytes) -> bool:
    """True when ``head`` (the file's first 20 bytes or more) is a CTDATA header with data_type 6."""
    return len(head) >= 20 and head[:16] == CTDATA_MAGIC and struct.unpack_from("<i", head, 16)[0] == GOBJ_DATA_TYPE


def _ints(data: bytes, offset: int, count: int) -> Tuple[int, ...]:
    return struct.unpack_from(f"<{count}i", data, offset)


def _fits(data: bytes, offset: int, size: int) -> bool:
    return offset + size <= len(data)


def _is_slice_record(data: bytes, offset: int) -> bool:
    if not _fits(data, offset, SLICE_RECORD_BYTES):
        return False
    f = _ints(data, offset, 13)
    return f[0] == 1 and f[7] == 3 and f[8] == _SLICE_KIND and f[9] == 0 and f[10] == 0 \
        and f[11] == _FRAME and f[12] == _FRAME


def _chain_codes(payload: bytes, count: int) -> Tuple[int, ...]:
    bits = int.from_bytes(payload, "little")
    return tuple((bits >> (3 * i)) & 7 for i in range(count))


def _drawable_at(path, data: bytes, offset: int, first: bool) -> Optional[Tuple[GobjDrawable, int]]:
    """The drawable record starting at ``offset`` and the offset after it, or None."""
    def contour(f, material, cx, cy, z, w, h, header_bytes):
        start_y, start_x, steps, nbytes = f[-4:]
        if steps <= 0 or nbytes < 0:
            raise ScancoFormatError(path, f"GOBJ contour at byte {offset} has {steps} chain steps")
        if 3 * steps > 8 * nbytes:
            raise ScancoFormatError(path, f"GOBJ contour at byte {offset}: {steps} chain steps do not fit "
                                          f"in {nbytes} bytes")
        end = offset + header_bytes + nbytes
        if end > len(data):
            raise ScancoFormatError(path, f"GOBJ file is truncated: the contour at byte {offset} needs "
                                          f"{header_bytes + nbytes} bytes, {len(data) - offset} are left")
        chain = _chain_codes(data[offset + header_bytes:end], steps)
        return GobjDrawable("contour", material, 0, cx, cy, z, w, h, chain), end

    if first and _fits(data, offset, 72):
        f = _ints(data, offset, 18)
        if f[0] != 0 and f[1] == 3 and f[8] == 3 and f[9] == _CONTOUR_KIND and f[12] == _FRAME \
                and f[13] == _FRAME and f[16] >= 0 and f[17] >= 0:
            return contour(f, f[0], f[2], f[3], f[4], f[5], f[6], 72)
    if _fits(data, offset, 68):
        f = _ints(data, offset, 17)
        if f[6] == 0 and f[7] == 3 and f[8] == _CONTOUR_KIND and f[11] == _FRAME and f[12] == _FRAME \
                and f[15] >= 0 and f[16] >= 0:
            return contour(f, f[0], f[1], f[2], f[3], f[4], f[5], 68)
    if first and _fits(data, offset, 40):
        f = _ints(data, offset, 10)
        if f[7] == 0 and f[8] == 3 and f[9] == 0 and f[4] >= 0 and f[5] >= 0:
            return GobjDrawable("primitive", 0, f[1], f[2], f[3], f[4], f[5], f[6]), offset + 40
    if _fits(data, offset, 36):
        f = _ints(data, offset, 9)
        if f[6] == 0 and f[7] == 3 and f[8] == 0 and f[3] >= 0 and f[4] >= 0 and f[5] >= 0:
            return GobjDrawable("primitive", 0, f[0], f[1], f[2], f[3], f[4], f[5]), offset + 36
    return None


def _check_extent(path, what: str, offset: int, width: int, height: int) -> None:
    if not (0 <= width <= MAX_SLICE_EXTENT and 0 <= height <= MAX_SLICE_EXTENT):
        raise ScancoFormatError(path, f"GOBJ {what} at byte {offset} has an impossible size {width} x {height}")


def parse_gobj(data: bytes, path=None) -> Tuple[Optional[Tuple[float, float, float]], Tuple[GobjSlice, ...]]:
    """(element size in mm or None, slices) of a GOBJ file's bytes; :class:`ScancoFormatError` if damaged."""
    if len(data) < BLOCK_BYTES:
        raise ScancoFormatError(path, f"GOBJ file is truncated: {len(data)} bytes, the header alone needs 512")
    if not is_gobj(data):
        raise ScancoFormatError(path, "not a GOBJ contour file (no CTDATA-HEADER_V1 magic with data_type 6)")
    dims = _ints(data, 32, 3)
    extent_um = _ints(data, 44, 3)
    blocks = _ints(data, 508, 1)[0]
    if blocks < 0 or (blocks + 1) * BLOCK_BYTES > len(data):
        raise ScancoFormatError(path, f"GOBJ header claims {blocks} extra header blocks; the file has "
                                      f"{len(data)} bytes")
    voxel_size = None
    if all(d > 0 for d in dims) and all(e > 0 for e in extent_um):
        voxel_size = tuple(e / d / 1000.0 for e, d in zip(extent_um, dims))
    offset = (blocks + 1) * BLOCK_BYTES
    slices: List[GobjSlice] = []
    while offset < len(data):
        if not any(data[offset:]):
            break
        if not _is_slice_record(data, offset):
            if len(data) - offset < SLICE_RECORD_BYTES:
                raise ScancoFormatError(path, f"GOBJ file is truncated at byte {offset}")
            raise ScancoFormatError(path, f"GOBJ file: no slice record at byte {offset} (damaged contour data)")
        f = _ints(data, offset, 13)
        slice_offset = offset
        _check_extent(path, "slice", offset, f[4], f[5])
        offset += SLICE_RECORD_BYTES
        drawables: List[GobjDrawable] = []
        while offset < len(data) and not _is_slice_record(data, offset) and any(data[offset:]):
            found = _drawable_at(path, data, offset, not drawables)
            if found is None:
                raise ScancoFormatError(path, f"GOBJ file: unrecognised bytes at byte {offset} "
                                              "(damaged or truncated contour record)")
            drawable, offset = found
            _check_extent(path, drawable.kind, offset, drawable.width, drawable.height)
            drawables.append(drawable)
        if not drawables:
            if f[4] == 0 and f[5] == 0:
                continue
            raise ScancoFormatError(path, f"GOBJ slice at byte {slice_offset} holds no contour")
        slices.append(GobjSlice(f[1], f[2], f[3], f[4], f[5], tuple(drawables)))
    if not slices:
        raise ScancoFormatError(path, "GOBJ file holds no contour slice")
    return voxel_size, tuple(slices)


# ---- rasterisation ------------------------------------------------------------------------------
def _contour_points(drawable: GobjDrawable) -> np.ndarray:
    """(n, 2) int64 (y, x) points of a contour, absolute voxel indices (fitted to its bbox)."""
    steps = np.array([_CHAIN_STEPS[(c + 2) % 8] for c in drawable.chain], dtype=np.int64)
    # the file's convention: the chain's first axis is x, the second y
    points = np.cumsum(steps[:, ::-1], axis=0)
    x_min, y_min, _, _ = drawable.bbox
    return points - points.min(axis=0) + np.array([y_min, x_min])


def _draw_closed_polyline(mask: np.ndarray, points: np.ndarray) -> None:
    ends = np.roll(points, -1, axis=0)
    for (y0, x0), (y1, x1) in zip(points.tolist(), ends.tolist()):
        n = max(abs(y1 - y0), abs(x1 - x0))
        t = np.arange(n + 1, dtype=np.float64) / max(n, 1)
        ys = np.round(y0 + (y1 - y0) * t).astype(np.int64)   # round half to even, as Python's round()
        xs = np.round(x0 + (x1 - x0) * t).astype(np.int64)
        inside = (ys >= 0) & (ys < mask.shape[0]) & (xs >= 0) & (xs < mask.shape[1])
        mask[ys[inside], xs[inside]] = True


def _fill_contour(shape, points: np.ndarray) -> np.ndarray:
    """Boundary and inside (even-odd scanlines through pixel centres y + 0.5) of a closed polygon."""
    mask = np.zeros(shape, dtype=bool)
    _draw_closed_polyline(mask, points)
    height, width = shape
    start = points.astype(np.float64)
    end = np.roll(start, -1, axis=0)
    sloped = start[:, 0] != end[:, 0]
    y0, x0, y1, x1 = start[sloped, 0], start[sloped, 1], end[sloped, 0], end[sloped, 1]
    for y in range(max(0, int(points[:, 0].min())), min(height - 1, int(points[:, 0].max())) + 1):
        scan = y + 0.5
        crossing = ((y0 <= scan) & (scan < y1)) | ((y1 <= scan) & (scan < y0))
        xs = np.sort(x0[crossing] + (scan - y0[crossing]) * (x1[crossing] - x0[crossing])
                     / (y1[crossing] - y0[crossing]))
        for left, right in zip(xs[0::2].tolist(), xs[1::2].tolist()):
            a = max(0, int(np.ceil(left)))
            b = min(width - 1, int(np.floor(right)))
            if b >= a:
                mask[y, a:b + 1] = True
    return mask


def _fill_primitive(shape, drawable: GobjDrawable, origin_xy) -> np.ndarray:
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    x_min, y_min, x_max, y_max = drawable.bbox
    x0, x1 = x_min - origin_xy[0], x_max - origin_xy[0]
    y0, y1 = y_min - origin_xy[1], y_max - origin_xy[1]
    if drawable.shape == RECTANGLE_SHAPE:
        mask[max(0, y0):min(height, y1 + 1), max(0, x0):min(width, x1 + 1)] = True
    elif drawable.shape == ELLIPSE_SHAPE:
        yy, xx = np.ogrid[:height, :width]
        cx, cy = drawable.center_x - origin_xy[0], drawable.center_y - origin_xy[1]
        rx, ry = max(drawable.width / 2.0, 0.5), max(drawable.height / 2.0, 0.5)
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    return mask


def _strict_interior(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _subtractive(drawable: GobjDrawable, image_slice: GobjSlice, index: int) -> bool:
    if index == 0:
        return False
    first = image_slice.drawables[0]
    if (first.center_x, first.center_y, first.width, first.height) == \
            (image_slice.center_x, image_slice.center_y, image_slice.width, image_slice.height):
        return True
    materials = {d.material for d in image_slice.drawables if d.kind == "contour"}
    return drawable.kind == "contour" and drawable.material == SUBTRACTIVE_MATERIAL and len(materials) > 1


def rasterise(slices, path=None, max_voxels: int = 1 << 32) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """(bool mask (z, y, x) on the drawables' tight box, its position (x, y, z))."""
    boxes = [d.bbox for s in slices for d in s.drawables]
    x_min, y_min = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x_max, y_max = max(b[2] for b in boxes), max(b[3] for b in boxes)
    z_min, z_max = min(s.z for s in slices), max(s.z for s in slices)
    shape = (z_max - z_min + 1, y_max - y_min + 1, x_max - x_min + 1)
    if int(np.prod(np.asarray(shape, dtype=np.float64))) > max_voxels:
        raise ScancoFormatError(path, f"GOBJ contours span {shape[2]} x {shape[1]} x {shape[0]} voxels "
                                      "(damaged slice positions?)")
    mask = np.zeros(shape, dtype=bool)
    for image_slice in slices:
        plane = mask[image_slice.z - z_min]
        for index, drawable in enumerate(image_slice.drawables):
            if drawable.kind == "contour":
                filled = _fill_contour(plane.shape, _contour_points(drawable) - np.array([y_min, x_min]))
            else:
                filled = _fill_primitive(plane.shape, drawable, (x_min, y_min))
            if _subtractive(drawable, image_slice, index):
                plane[_strict_interior(filled)] = False
            else:
                plane[filled] = True
    return mask, (x_min, y_min, z_min)


def read_gobj(path: Union[str, os.PathLike]) -> GobjContours:
    """Read and rasterise a GOBJ file. Damaged or truncated files: :class:`ScancoFormatError`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ScancoFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    voxel_size, slices = parse_gobj(data, path)
    mask, position = rasterise(slices, path)
    return GobjContours(path, mask, position, voxel_size, slices)
