"""GOBJ contour files: our reader against aimio-py 0.4.1's ``read_gobj`` (the oracle) on generated
files, and every damaged or truncated file refused with one line (ScancoFormatError)."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from ScancoUnitsLib.errors import ScancoFormatError
from ScancoUnitsLib.formats.gobj import read_gobj

from gobj_files import Contour, gobj_bytes, random_polygon


def _oracle(path):
    py_aimio = pytest.importorskip("py_aimio")
    image, meta = py_aimio.read_gobj(str(path))
    return image != 0, tuple(int(v) for v in meta["position"])


def _cases():
    rng = np.random.default_rng(23)
    cases = {}
    # one additive polygon per slice
    cases["additive"] = [(z, [Contour(random_polygon(rng, (100, 120), 30))]) for z in range(40, 46)]
    # slice frame first, then holes (subtractive by the frame rule)
    frame = [(60, 60), (140, 60), (140, 150), (60, 150)]
    cases["frame_and_holes"] = [(z, [Contour(frame), Contour(random_polygon(rng, (100, 105), 20))])
                                for z in (10, 11, 13)]
    # material 3 in a slice with two materials: subtractive
    cases["material_3"] = [(5, [Contour(random_polygon(rng, (50, 50), 25), 1),
                                Contour(random_polygon(rng, (50, 50), 10), 3),
                                Contour(random_polygon(rng, (90, 40), 8), 1)])]
    # two separate additive contours, thin one-voxel wide shapes
    cases["thin"] = [(0, [Contour([(10, 10), (30, 10)]), Contour([(5, 40), (5, 60), (6, 60)])])]
    return cases


@pytest.mark.parametrize("first_form", [False, True])
@pytest.mark.parametrize("name", sorted(_cases()))
def test_gobj_matches_aimio(tmp_path, name, first_form):
    path = tmp_path / f"{name}.GOBJ"
    path.write_bytes(gobj_bytes(_cases()[name], first_form=first_form))
    ours = read_gobj(path)
    expected, position = _oracle(path)
    assert ours.position_voxels == position
    assert ours.mask.shape == expected.shape
    assert np.array_equal(ours.mask, expected)
    assert ours.mask.any()
    assert ours.voxel_size_mm == pytest.approx((0.06, 0.06, 0.06))


def test_gobj_random_polygons_match_aimio(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(12):
        slices = []
        for z in sorted(rng.choice(30, size=3, replace=False).tolist()):
            contours = [Contour(random_polygon(rng, (int(rng.integers(20, 200)), int(rng.integers(20, 200))),
                                               int(rng.integers(3, 40)), int(rng.integers(3, 12))))]
            slices.append((z, contours))
        path = tmp_path / f"r{i}.GOBJ"
        path.write_bytes(gobj_bytes(slices))
        expected, position = _oracle(path)
        ours = read_gobj(path)
        assert ours.position_voxels == position
        assert np.array_equal(ours.mask, expected), i


def _seed() -> bytes:
    rng = np.random.default_rng(1)
    return gobj_bytes([(z, [Contour(random_polygon(rng, (60, 60), 20)),
                            Contour(random_polygon(rng, (60, 60), 6), 3)]) for z in (3, 4)])


def test_truncated_gobj_refused_in_one_line(tmp_path):
    data = _seed().rstrip(b"\0")
    cuts = sorted({0, 10, 100, 511, 512, 530, 563, 600, len(data) - 1} & set(range(len(data))))
    for cut in cuts:
        path = tmp_path / f"cut{cut}.GOBJ"
        path.write_bytes(data[:cut])
        with pytest.raises(ScancoFormatError) as info:
            read_gobj(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message, message


def test_gobj_damage_is_read_or_refused(tmp_path):
    """Fuzz: random byte flips, field patches and cuts; each file is read (a mask) or refused with
    ScancoFormatError; nothing else escapes (no IndexError, no MemoryError, no 'internal error')."""
    seed = _seed()
    r = random.Random(2323)
    refused = read = 0
    for i in range(300):
        data = bytearray(seed)
        kind = r.choice(["flip", "int", "cut"])
        if kind == "flip":
            for _ in range(r.randint(1, 8)):
                data[r.randrange(len(data))] = r.randrange(256)
        elif kind == "int":
            offset = r.choice([16, 32, 44, 508] + list(range(512, 700, 4)))
            value = r.choice([0, -1, 1, 3, 20, 32, 2 ** 31 - 1, -2 ** 31, 16512, r.randrange(-1000, 100000)])
            struct.pack_into("<i", data, offset, value)
        else:
            data = data[:r.randrange(len(data))]
        path = tmp_path / f"f{i}.GOBJ"
        path.write_bytes(bytes(data))
        try:
            contours = read_gobj(path)
        except ScancoFormatError as exc:
            assert "\n" not in str(exc)
            refused += 1
        else:
            assert contours.mask.dtype == bool and contours.mask.ndim == 3
            read += 1
    assert refused > 50 and read > 20, (refused, read)


def test_gobj_not_a_gobj(tmp_path):
    path = tmp_path / "x.GOBJ"
    data = bytearray(_seed())
    struct.pack_into("<i", data, 16, 3)
    path.write_bytes(bytes(data))
    with pytest.raises(ScancoFormatError, match="not a GOBJ"):
        read_gobj(path)
