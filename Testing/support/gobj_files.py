"""Test-side GOBJ writer: builds GOBJ contour files in the layout aimio-py 0.4.1's ``read_gobj`` reads
(our oracle), from closed 8-connected polygons. For tests only; the project does not write GOBJ."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

_CHAIN_STEPS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
_FRAME = 16512


def walk(vertices: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Closed 8-connected path (x, y) through ``vertices`` (diagonal first, then straight)."""
    points = []
    closed = list(vertices) + [vertices[0]]
    x, y = closed[0]
    for tx, ty in closed[1:]:
        while (x, y) != (tx, ty):
            x += int(np.sign(tx - x))
            y += int(np.sign(ty - y))
            points.append((x, y))
    return points


def chain_of(points: Sequence[Tuple[int, int]]) -> List[int]:
    """Chain codes of a closed path of (x, y) points (each step to the next point, the last back to the
    first... as the file stores it: code c moves (dx, dy) = _CHAIN_STEPS[(c + 2) % 8])."""
    codes = []
    previous = points[-1]
    for x, y in points:
        step = (x - previous[0], y - previous[1])
        codes.append((_CHAIN_STEPS.index(step) - 2) % 8)
        previous = (x, y)
    return codes


@dataclass
class Contour:
    vertices: Sequence[Tuple[int, int]]   # absolute (x, y) voxel indices
    material: int = 1

    def record(self, z: int, first_form: bool) -> bytes:
        points = walk(self.vertices)
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        width, height = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
        cx, cy = min(xs) + (width - 1) // 2, min(ys) + (height - 1) // 2
        codes = chain_of(points)
        bits = 0
        for i, c in enumerate(codes):
            bits |= c << (3 * i)
        payload = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
        start_y, start_x = points[0][1] - cy, points[0][0] - cx
        if first_form:
            fields = [self.material, 3, cx, cy, z, width, height, 0, 3, 32, 0, 0, _FRAME, _FRAME,
                      start_y, start_x, len(codes), len(payload)]
        else:
            fields = [self.material, cx, cy, z, width, height, 0, 3, 32, 0, 0, _FRAME, _FRAME,
                      start_y, start_x, len(codes), len(payload)]
        return struct.pack(f"<{len(fields)}i", *fields) + payload

    def bbox(self):
        points = walk(self.vertices)
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        return min(xs), min(ys), max(xs), max(ys)


def gobj_bytes(slices: Sequence[Tuple[int, Sequence[Contour]]], voxel_size_um=(60.0, 60.0, 60.0),
               dims=(512, 512, 200), first_form: bool = False) -> bytes:
    """A GOBJ file: ``slices`` = [(z, [Contour, ...]), ...]."""
    header = bytearray(512)
    header[:16] = b"CTDATA-HEADER_V1"
    struct.pack_into("<i", header, 16, 6)
    struct.pack_into("<3i", header, 32, *dims)
    struct.pack_into("<3i", header, 44, *(int(round(d * s)) for d, s in zip(dims, voxel_size_um)))
    struct.pack_into("<i", header, 508, 0)
    body = bytearray()
    for z, contours in slices:
        boxes = [c.bbox() for c in contours]
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        width, height = x1 - x0 + 1, y1 - y0 + 1
        body += struct.pack("<13i", 1, x0 + (width - 1) // 2, y0 + (height - 1) // 2, z, width, height,
                            0, 3, 20, 0, 0, _FRAME, _FRAME)
        for i, contour in enumerate(contours):
            body += contour.record(z, first_form and i == 0)
    data = bytes(header) + bytes(body)
    return data + bytes(-len(data) % 512)


def random_polygon(rng: np.random.Generator, centre, radius: int, n: int = 7) -> List[Tuple[int, int]]:
    """A star-shaped polygon (x, y) around ``centre``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.integers(max(2, radius // 2), radius + 1, n)
    return [(int(centre[0] + round(r * np.cos(a))), int(centre[1] + round(r * np.sin(a))))
            for a, r in zip(angles, radii)]
