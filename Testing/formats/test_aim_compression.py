"""Tests of ScancoUnitsLib.formats.aim.compression (binCmp, charCmp, bit8 decoders and encoders).

References used here, independent of the module under test:
* hand-made byte strings from scanco-format.md §2.6;
* a naive one-record-at-a-time decoder written below from the spec text;
* AimIO (aimio-py), run in a subprocess, on the real masks and on AIM files packed by hand here.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ScancoUnitsLib.formats.aim.compression import (
    D1T_BIN_CMP,
    D1T_CHAR_CMP,
    D3T_BIT8,
    CompressedVoxelDecoder,
    decode_all,
    encode_bin_cmp,
    encode_bit8,
    encode_char_cmp,
    normalise_kind,
)
from ScancoUnitsLib.errors import ScancoFormatError

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
if not REAL_DATA.is_dir():
    REAL_DATA = Path("/work/shared/data/real")

HYPO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------


def naive_bin_cmp(payload: bytes, count: int, header_bytes: int = 4) -> list:
    """Spec §2.6 decoding, one run byte at a time."""
    values = [struct.unpack("b", payload[header_bytes : header_bytes + 1])[0],
              struct.unpack("b", payload[header_bytes + 1 : header_bytes + 2])[0]]
    current = 0
    out = []
    for run in payload[header_bytes + 2 :]:
        if len(out) >= count:
            break
        if run == 255:
            out.extend([values[current]] * 254)
        else:
            out.extend([values[current]] * run)
            current ^= 1
    return out[:count]


def naive_char_cmp(payload: bytes, count: int, header_bytes: int = 4) -> list:
    out = []
    body = payload[header_bytes:]
    for i in range(0, len(body) - 1, 2):
        if len(out) >= count:
            break
        out.extend([struct.unpack("b", body[i : i + 1])[0]] * body[i + 1])
    return out[:count]


def naive_bit8(payload: bytes, dims_xyz) -> np.ndarray:
    dx, dy, dz = dims_xyz
    cx, cy = (dx + 1) // 2, (dy + 1) // 2
    value = payload[-1] or 127
    out = np.zeros((dz, dy, dx), dtype=np.int16)
    for z in range(dz):
        for y in range(dy):
            for x in range(dx):
                byte = payload[x // 2 + cx * (y // 2 + cy * (z // 2))]
                if byte >> ((z % 2) * 4 + (y % 2) * 2 + (x % 2)) & 1:
                    out[z, y, x] = value
    return out.astype(np.uint8).view(np.int8)


def slabwise(block, dims_xyz, kind, slab, lfb=4, off=(0, 0, 0), offset=0, size=None, source=None):
    if source is None:
        source = block
    size = len(block) if size is None else size
    decoder = CompressedVoxelDecoder(source, offset, size, dims_xyz, kind, lfb, off)
    parts = []
    while decoder.next_slice < dims_xyz[2]:
        parts.append(decoder.read_slices(min(slab, dims_xyz[2] - decoder.next_slice)))
    return np.concatenate(parts), decoder


# ------------------------------------------------------------------------------------------------
# Hand-made examples from the spec
# ------------------------------------------------------------------------------------------------


def test_bin_cmp_spec_example():
    # length 9 | value1 00 | value2 01 | 3 zeros, 2 ones, 5 zeros
    block = bytes.fromhex("09000000" "0001" "030205")
    assert decode_all(block, (10, 1, 1), "binCmp").ravel().tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]


def test_bin_cmp_255_keeps_value_and_zero_switches():
    # ff: 254 x value1 and keep; 01: one more value1 then switch; 00: switch back with no voxel; 02: 2 x value1
    block = bytes.fromhex("0a000000" "7f81" "ff010002")
    got = decode_all(block, (257, 1, 1), "binCmp")
    assert got.dtype == np.int8
    assert got.ravel().tolist() == [127] * 257
    block = bytes.fromhex("09000000" "7f81" "ff0102")
    got = decode_all(block, (257, 1, 1), "binCmp").ravel()
    assert got[:255].tolist() == [127] * 255 and got[255:].tolist() == [-127, -127]


def test_bin_cmp_v030_length_field_from_real_file_prefix():
    # DB_07 starts cb0e0100 00000000 | 00 | 7f | ff ff ...: 8-byte length field, values 0/127
    block = (14).to_bytes(8, "little") + bytes.fromhex("007f" "ff" "03" "02" "01")
    got = decode_all(block, (260, 1, 1), "binCmp", length_field_bytes=8).ravel()
    assert got.tolist() == [0] * 257 + [127, 127] + [0]


def test_char_cmp_value_comes_first():
    block = bytes.fromhex("0a000000" "7f03" "0002" "8101")
    got = decode_all(block, (3, 2, 1), "charCmp")
    assert got.shape == (1, 2, 3)
    assert got.ravel().tolist() == [127, 127, 127, 0, 0, -127]


def test_bit8_single_voxel_and_value_byte():
    dims = (3, 3, 3)  # 2x2x2 cells + value byte
    block = bytearray(9)
    # voxel (x=2, y=1, z=2): byte 1 + 2*(0 + 2*1) = 5, bit 0*4 + 1*2 + 0 = 2
    block[5] = 0x04
    block[8] = 0x7F
    got = decode_all(bytes(block), dims, "bit8")
    expected = np.zeros((3, 3, 3), np.int8)
    expected[2, 1, 2] = 127
    np.testing.assert_array_equal(got, expected)
    block[8] = 0x81
    assert decode_all(bytes(block), dims, D3T_BIT8)[2, 1, 2] == -127


def test_bit8_value_byte_zero_means_127_with_warning():
    block = bytes([0xFF, 0])
    decoder = CompressedVoxelDecoder(block, 0, 2, (2, 2, 2), "bit8")
    assert decoder.read_all().ravel().tolist() == [127] * 8
    assert any("value byte is 0" in w for w in decoder.warnings)


def test_normalise_kind():
    assert normalise_kind("D1TbinCmp") == "binCmp"
    assert normalise_kind(" charcmp ") == "charCmp"
    assert normalise_kind(D3T_BIT8) == "bit8"
    with pytest.raises(ValueError):
        normalise_kind(0x00020002)
    with pytest.raises(ValueError):
        normalise_kind("zip")


# ------------------------------------------------------------------------------------------------
# Encoders: exact bytes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run, expected",
    [(1, [1]), (253, [253]), (254, [254]), (255, [255, 1]), (508, [255, 254]), (509, [255, 255, 1])],
)
def test_bin_cmp_long_run_bytes(run, expected):
    volume = np.zeros((1, 1, run + 1), np.int8)
    volume[0, 0, -1] = 1
    block = encode_bin_cmp(volume)
    assert block[:4] == len(block).to_bytes(4, "little")
    assert list(block[4:6]) == [0, 1]
    assert list(block[6:]) == expected + [1]
    assert naive_bin_cmp(block, run + 1) == volume.ravel().tolist()


@pytest.mark.parametrize("run, expected", [(255, [255]), (256, [255, 1]), (510, [255, 255]), (511, [255, 255, 1])])
def test_char_cmp_long_run_bytes(run, expected):
    volume = np.full((1, 1, run), -5, np.int8)
    block = encode_char_cmp(volume, 8)
    assert block[:8] == len(block).to_bytes(8, "little")
    body = list(block[8:])
    assert body[0::2] == [251] * len(expected)
    assert body[1::2] == expected


def test_bin_cmp_value_choice():
    ones = np.ones((2, 2, 2), np.int8)
    block = encode_bin_cmp(ones)
    assert list(block[4:6]) == [1, 0]
    zeros = np.zeros((2, 2, 2), np.uint8)
    assert list(encode_bin_cmp(zeros)[4:6]) == [0, 127]
    mixed = np.zeros((1, 1, 4), np.uint8)
    mixed[..., 0] = 200  # uint8 values are stored as bytes and come back as int8
    block = encode_bin_cmp(mixed)
    assert list(block[4:6]) == [200, 0]
    assert decode_all(block, (4, 1, 1), "binCmp").ravel().tolist() == [-56, 0, 0, 0]
    assert list(encode_bin_cmp(np.ones((1, 1, 3), bool))[4:6]) == [1, 0]


def test_encoder_argument_errors():
    three = np.array([[[0, 1, 2]]], np.int8)
    with pytest.raises(ValueError, match="two distinct"):
        encode_bin_cmp(three)
    with pytest.raises(ValueError, match="one non-zero value"):
        encode_bit8(three)
    with pytest.raises(ValueError, match="int16"):
        encode_char_cmp(three.astype(np.int16))
    with pytest.raises(ValueError, match="3-D"):
        encode_char_cmp(np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError, match="empty"):
        encode_bin_cmp(np.zeros((0, 2, 2), np.int8))
    with pytest.raises(ValueError, match="length_field_bytes"):
        encode_bin_cmp(np.zeros((1, 1, 1), np.int8), 2)


def test_bit8_encoder_matches_naive_decoder():
    rng = np.random.default_rng(7)
    volume = np.where(rng.random((5, 3, 7)) < 0.4, -127, 0).astype(np.int8)
    block = encode_bit8(volume)
    assert len(block) == 4 * 2 * 3 + 1 and block[-1] == 0x81
    np.testing.assert_array_equal(naive_bit8(block, (7, 3, 5)), volume)
    assert encode_bit8(np.zeros((1, 1, 1), np.int8)) == bytes([0, 127])


# ------------------------------------------------------------------------------------------------
# Round trips (hypothesis)
# ------------------------------------------------------------------------------------------------

RUN_LENGTHS = st.one_of(st.sampled_from([1, 2, 253, 254, 255, 256, 508, 509, 510, 600]), st.integers(1, 40))


@st.composite
def volumes(draw, two_values=True):
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 23)), draw(st.integers(1, 23)))
    size = shape[0] * shape[1] * shape[2]
    if two_values:
        values = draw(st.sampled_from([(0, 1), (0, 127), (127, 0), (0, -127), (5, -3), (7, 7), (0, 0)]))
    else:
        values = tuple(draw(st.lists(st.integers(-128, 127), min_size=1, max_size=5)))
    runs = draw(st.lists(RUN_LENGTHS, min_size=1, max_size=30))
    flat = np.empty(0, np.int8)
    index = 0
    while flat.size < size:
        run = runs[index % len(runs)]
        flat = np.append(flat, np.full(run, values[index % len(values)], np.int8))
        index += 1
    return flat[:size].reshape(shape)


def _sources(block, prefix, padding):
    data = bytes(prefix) + block + bytes(padding)
    return [data, io.BytesIO(data), memoryview(bytearray(data))]


@HYPO
@given(volume=volumes(), lfb=st.sampled_from([4, 8]), prefix=st.integers(0, 5), padding=st.integers(0, 3))
def test_bin_cmp_round_trip(volume, lfb, prefix, padding):
    block = encode_bin_cmp(volume, lfb)
    dims = volume.shape[::-1]
    assert naive_bin_cmp(block, volume.size, lfb) == volume.ravel().tolist()
    for slab in (1, 2, 3, volume.shape[0]):
        for source in _sources(block, prefix, padding):
            got, decoder = slabwise(block, dims, "binCmp", slab, lfb, offset=prefix, size=len(block), source=source)
            np.testing.assert_array_equal(got, volume)
            assert decoder.warnings == []


@HYPO
@given(volume=volumes(two_values=False), lfb=st.sampled_from([4, 8]), prefix=st.integers(0, 5))
def test_char_cmp_round_trip(volume, lfb, prefix):
    block = encode_char_cmp(volume, lfb)
    dims = volume.shape[::-1]
    assert naive_char_cmp(block, volume.size, lfb) == volume.ravel().tolist()
    for slab in (1, 2, 3, volume.shape[0]):
        for source in _sources(block, prefix, 0):
            got, decoder = slabwise(block, dims, D1T_CHAR_CMP, slab, lfb, offset=prefix, source=source)
            np.testing.assert_array_equal(got, volume)
            assert decoder.warnings == []


@HYPO
@given(volume=volumes(), value=st.sampled_from([127, 1, -127]))
def test_bit8_round_trip(volume, value):
    volume = np.where(volume != volume.flat[0], value, 0).astype(np.int8)
    block = encode_bit8(volume)
    dims = volume.shape[::-1]
    for slab in (1, 2, 3, volume.shape[0]):
        got, _ = slabwise(block, dims, "bit8", slab, source=io.BytesIO(block))
        np.testing.assert_array_equal(got, volume)


@HYPO
@given(
    runs=st.lists(st.integers(0, 255), min_size=1, max_size=60),
    values=st.tuples(st.integers(-128, 127), st.integers(-128, 127)),
    x=st.integers(1, 9),
    slab=st.integers(1, 4),
)
def test_bin_cmp_arbitrary_streams_match_naive(runs, values, x, slab):
    """Streams no encoder writes (0 bytes, 255 at the end, partial last run) decode like the spec says."""
    payload = struct.pack("bb", *values) + bytes(runs)
    block = (4 + len(payload)).to_bytes(4, "little") + payload
    produced = len(naive_bin_cmp(block, 10**9))
    slices = produced // x
    if slices == 0:
        return
    dims = (x, 1, slices)
    expected = np.array(naive_bin_cmp(block, x * slices), np.int8).reshape(slices, 1, x)
    got, _ = slabwise(block, dims, "binCmp", slab)
    np.testing.assert_array_equal(got, expected)


@HYPO
@given(pairs=st.lists(st.tuples(st.integers(-128, 127), st.integers(0, 255)), min_size=1, max_size=40),
       slab=st.integers(1, 4))
def test_char_cmp_arbitrary_streams_match_naive(pairs, slab):
    payload = b"".join(struct.pack("bB", v, n) for v, n in pairs)
    block = (8 + len(payload)).to_bytes(8, "little") + payload
    produced = sum(n for _, n in pairs)
    if produced == 0:
        return
    expected = np.array(naive_char_cmp(block, produced, 8), np.int8).reshape(produced, 1, 1)
    got, _ = slabwise(block, (1, 1, produced), "charCmp", slab, lfb=8)
    np.testing.assert_array_equal(got, expected)


@HYPO
@given(volume=volumes(), off=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
       kind=st.sampled_from(["binCmp", "charCmp"]), slab=st.integers(1, 4))
def test_off_border_pastes_interior(volume, off, kind, slab):
    ox, oy, oz = off
    interior = volume
    full = np.zeros((volume.shape[0] + 2 * oz, volume.shape[1] + 2 * oy, volume.shape[2] + 2 * ox), np.int8)
    full[oz : oz + volume.shape[0], oy : oy + volume.shape[1], ox : ox + volume.shape[2]] = interior
    block = encode_bin_cmp(interior) if kind == "binCmp" else encode_char_cmp(interior)
    got, decoder = slabwise(block, full.shape[::-1], kind, slab, off=off)
    np.testing.assert_array_equal(got, full)
    assert decoder.warnings == []


@pytest.mark.parametrize("max_chunk, piece", [(2, 1), (5, 7), (64, 3), (1 << 20, 5)])
def test_tiny_chunks_and_pieces(monkeypatch, max_chunk, piece):
    """Runs that straddle chunk and piece boundaries (normally 1 MiB / 4 Mi voxels) decode the same."""
    import ScancoUnitsLib.formats.aim.codecs.runs as module  # the run-length streams read these

    monkeypatch.setattr(module, "_MIN_CHUNK_BYTES", 2)
    monkeypatch.setattr(module, "_MAX_CHUNK_BYTES", max_chunk)
    monkeypatch.setattr(module, "_PIECE_VOXELS", piece)
    monkeypatch.setattr(module, "_SKIP_VOXELS", 2 * piece + 1)
    rng = np.random.default_rng(max_chunk + piece)
    for _ in range(4):
        runs = rng.choice([1, 3, 254, 255, 256, 509, 700], size=40)
        flat = np.repeat(np.resize(np.array([0, 127], np.int8), runs.size), runs)
        volume = flat[: (flat.size // 60) * 60].reshape(-1, 6, 10)
        grey = (volume // 127 * rng.integers(1, 4, size=volume.shape[0])[:, None, None]).astype(np.int8)
        for kind, block, vol in (("binCmp", encode_bin_cmp(volume), volume),
                                 ("charCmp", encode_char_cmp(grey, 8), grey)):
            lfb = 4 if kind == "binCmp" else 8
            for slab in (1, 2, 5, vol.shape[0]):
                got, decoder = slabwise(block, (10, 6, vol.shape[0]), kind, slab, lfb, source=io.BytesIO(block))
                np.testing.assert_array_equal(got, vol)
                assert decoder.warnings == []
            decoder = CompressedVoxelDecoder(block, 0, len(block), (10, 6, vol.shape[0]), kind, lfb)
            z = vol.shape[0] // 2
            np.testing.assert_array_equal(decoder.read_slab(z, z + 1), vol[z : z + 1])  # skip forward
            np.testing.assert_array_equal(decoder.read_all(), vol)  # restart


def test_bit8_ignores_off():
    volume = np.zeros((3, 4, 5), np.int8)
    volume[0, 0, 0] = volume[2, 3, 4] = 127
    block = encode_bit8(volume)
    got = CompressedVoxelDecoder(block, 0, len(block), (5, 4, 3), "bit8", off_xyz=(1, 1, 1)).read_all()
    np.testing.assert_array_equal(got, volume)


def test_random_access_skip_and_restart():
    rng = np.random.default_rng(11)
    volume = np.where(rng.random((9, 6, 5)) < 0.3, 1, 0).astype(np.int8)
    for kind, block in (("binCmp", encode_bin_cmp(volume)), ("charCmp", encode_char_cmp(volume)),
                        ("bit8", encode_bit8(volume))):
        decoder = CompressedVoxelDecoder(io.BytesIO(block), 0, len(block), (5, 6, 9), kind)
        for z0, z1 in [(3, 5), (5, 6), (1, 4), (8, 9), (0, 9), (4, 4), (2, 7)]:
            np.testing.assert_array_equal(decoder.read_slab(z0, z1), volume[z0:z1])
        out = np.full((2, 6, 5), 99, np.int8)
        assert decoder.read_slab(7, 9, out=out) is out
        np.testing.assert_array_equal(out, volume[7:9])
        assert decoder.warnings == []


def test_iter_slabs_and_path_source(tmp_path):
    volume = np.zeros((5, 3, 4), np.int8)
    volume[1:3, 1, :] = 127
    block = encode_bin_cmp(volume, 8)
    path = tmp_path / "block.bin"
    path.write_bytes(b"PREFIX" + block + b"\0" * 512)
    with CompressedVoxelDecoder(path, 6, len(block), (4, 3, 5), "binCmp", 8) as decoder:
        assert decoder.values == (0, 127)
        slabs = list(decoder.iter_slabs(2))
    assert [s.shape[0] for s in slabs] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(slabs), volume)


# ------------------------------------------------------------------------------------------------
# Errors and warnings
# ------------------------------------------------------------------------------------------------


def test_under_run_names_voxel_counts():
    block = bytes.fromhex("08000000" "0001" "0302")
    decoder = CompressedVoxelDecoder(block, 0, len(block), (4, 2, 1), "binCmp", path="mask.aim")
    with pytest.raises(ScancoFormatError, match=r"mask\.aim: .*ends after 5 of 8 voxels"):
        decoder.read_slices(1)
    block = bytes.fromhex("08000000" "0102" "0101")
    with pytest.raises(ScancoFormatError, match="ends after 3 of 4 voxels"):
        decode_all(block, (2, 2, 1), "charCmp")
    # under-run found only on the second slab, after the first one came back fine
    volume = np.ones((3, 2, 2), np.int8)
    block = encode_char_cmp(volume)
    decoder = CompressedVoxelDecoder(block, 0, len(block), (2, 2, 4), "charCmp")
    np.testing.assert_array_equal(decoder.read_slices(3), volume)
    with pytest.raises(ScancoFormatError, match="ends after 12 of 16 voxels"):
        decoder.read_slices(1)


def test_length_field_inconsistencies():
    block = encode_bin_cmp(np.zeros((2, 2, 2), np.int8))
    with pytest.raises(ScancoFormatError, match="pre-header gives the data block as"):
        CompressedVoxelDecoder(block, 0, len(block) - 1, (2, 2, 2), "binCmp")
    with pytest.raises(ScancoFormatError, match="file ends after"):
        CompressedVoxelDecoder(block[:-1], 0, len(block), (2, 2, 2), "binCmp")
    with pytest.raises(ScancoFormatError, match="less than its own"):
        CompressedVoxelDecoder(b"\x03\0\0\0\0\1\1", 0, 7, (2, 2, 2), "binCmp")
    with pytest.raises(ScancoFormatError, match="too short for its"):
        CompressedVoxelDecoder(b"\x08\0\0\0", 0, 4, (1, 1, 1), "charCmp", length_field_bytes=8)
    with pytest.raises(ScancoFormatError, match="file ends 3 bytes into"):
        CompressedVoxelDecoder(b"\x08\0\0", 0, 100, (1, 1, 1), "charCmp")
    # an explicit length smaller than the block: allowed, the rest is padding
    padded = block + b"\0\0\0"
    decoder = CompressedVoxelDecoder(padded, 0, len(padded), (2, 2, 2), "binCmp")
    np.testing.assert_array_equal(decoder.read_all(), 0)
    assert any("last 3 bytes are ignored" in w for w in decoder.warnings)


def test_trailing_data_and_overlong_last_run_warn():
    block = bytes.fromhex("0a000000" "0001" "0202" "0909")
    decoder = CompressedVoxelDecoder(block, 0, len(block), (2, 2, 1), "binCmp")
    assert decoder.read_all().ravel().tolist() == [0, 0, 1, 1]
    assert any("2 bytes after the last of the image" in w for w in decoder.warnings)
    block = bytes.fromhex("07000000" "0001" "09")
    decoder = CompressedVoxelDecoder(block, 0, len(block), (2, 2, 1), "binCmp")
    assert decoder.read_all().ravel().tolist() == [0, 0, 0, 0]
    assert any("5 voxels beyond the end" in w for w in decoder.warnings)


def test_huge_dimensions_rejected_before_allocation():
    block = encode_bin_cmp(np.zeros((1, 1, 10), np.int8))
    with pytest.raises(ScancoFormatError, match="can hold at most 254 voxels"):
        CompressedVoxelDecoder(block, 0, len(block), (2**40, 2**40, 2**20), "binCmp")
    block = encode_char_cmp(np.zeros((1, 1, 10), np.int8), 8)
    with pytest.raises(ScancoFormatError, match="can hold at most 255 voxels"):
        CompressedVoxelDecoder(block, 0, len(block), (10**6, 10**6, 10**6), "charCmp", 8)
    with pytest.raises(ScancoFormatError, match="need"):
        CompressedVoxelDecoder(b"\0" * 9, 0, 9, (10**6, 10**6, 10**6), "bit8")


def test_bit8_block_too_short():
    with pytest.raises(ScancoFormatError, match="bit8 data block is 8 bytes but dimensions 3x3x3 need 9"):
        CompressedVoxelDecoder(bytes(8), 0, 8, (3, 3, 3), "bit8")
    with pytest.raises(ScancoFormatError, match="file ends after 8 bytes"):
        CompressedVoxelDecoder(bytes(8), 0, 9, (3, 3, 3), "bit8")
    decoder = CompressedVoxelDecoder(bytes(8) + b"\x7f\0\0", 0, 11, (3, 3, 3), "bit8")
    assert not decoder.read_all().any()
    assert any("2 more than needed" in w for w in decoder.warnings)


def test_bad_geometry_and_requests():
    block = encode_bin_cmp(np.zeros((2, 2, 2), np.int8))
    with pytest.raises(ScancoFormatError, match="not all positive"):
        CompressedVoxelDecoder(block, 0, len(block), (2, 0, 2), "binCmp")
    with pytest.raises(ScancoFormatError, match="leaves no interior"):
        CompressedVoxelDecoder(block, 0, len(block), (2, 2, 2), "binCmp", off_xyz=(1, 0, 0))
    with pytest.raises(ScancoFormatError, match="negative"):
        CompressedVoxelDecoder(block, 0, len(block), (4, 2, 2), "binCmp", off_xyz=(-1, 0, 0))
    with pytest.raises(ValueError, match="length_field_bytes"):
        CompressedVoxelDecoder(block, 0, len(block), (2, 2, 2), "binCmp", length_field_bytes=2)
    with pytest.raises(ScancoFormatError, match="cannot open"):
        CompressedVoxelDecoder("/nonexistent/x.aim", 0, 10, (2, 2, 2), "binCmp")
    decoder = CompressedVoxelDecoder(block, 0, len(block), (2, 2, 2), "binCmp")
    decoder.read_slices(2)
    with pytest.raises(ValueError, match="cannot read 1 slices from slice 2"):
        decoder.read_slices(1)
    with pytest.raises(ValueError, match="outside"):
        decoder.read_slab(1, 3)
    with pytest.raises(ValueError, match="out must be int8"):
        decoder.read_slab(0, 1, out=np.zeros((1, 2, 2), np.int16))


# ------------------------------------------------------------------------------------------------
# AimIO (aimio-py) as an oracle
# ------------------------------------------------------------------------------------------------

_AIMIO_SCRIPT = """
import sys, json, numpy as np
import py_aimio
jobs = json.loads(sys.argv[1])
for source, target in jobs:
    array, meta = py_aimio.read_aim(source)
    np.save(target, np.ascontiguousarray(array))
"""


def _have_aimio() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("py_aimio") is not None
    except (ImportError, ValueError):
        return False


def read_with_aimio(paths, tmp_path):
    """{path: (z, y, x) array} as AimIO reads them (run in a child process)."""
    jobs = [(str(p), str(tmp_path / f"aimio_{i}.npy")) for i, p in enumerate(paths)]
    subprocess.run([sys.executable, "-c", _AIMIO_SCRIPT, json.dumps(jobs)], check=True, timeout=120)
    return {source: np.load(target) for source, target in jobs}


def vax_f(value: float) -> bytes:
    ieee = struct.pack("<f", value * 4)
    return ieee[2:4] + ieee[0:2]


def write_aim_v020(path, type_code, dims_xyz, data, off_xyz=(0, 0, 0)):
    log = b"! hand-packed test file\n\0"
    image = bytearray(140)
    struct.pack_into("<i", image, 0, 16)
    struct.pack_into("<i", image, 20, type_code)
    struct.pack_into("<3i", image, 36, *dims_xyz)
    struct.pack_into("<3i", image, 48, *off_xyz)
    for axis in range(3):
        image[108 + 4 * axis : 112 + 4 * axis] = vax_f(0.05)
    struct.pack_into("<i", image, 136, 1)
    pre = struct.pack("<5i", 20, 140, len(log), len(data), 0)
    Path(path).write_bytes(pre + bytes(image) + log + data + b"\0" * 37)
    return len(pre) + len(image) + len(log)


def write_aim_v030(path, type_code, dims_xyz, data, off_xyz=(0, 0, 0)):
    log = b"! hand-packed test file\n\0"
    image = bytearray(224)
    struct.pack_into("<i", image, 0, 24)
    struct.pack_into("<i", image, 12, type_code)
    struct.pack_into("<3q", image, 40, *dims_xyz)
    struct.pack_into("<3q", image, 64, *off_xyz)
    struct.pack_into("<3q", image, 184, 50000, 50000, 50000)
    pre = b"AIMDATA_V030   \0" + struct.pack("<5q", 40, 224, len(log), len(data), 0)
    Path(path).write_bytes(pre + bytes(image) + log + data)
    return len(pre) + len(image) + len(log)


def locate_aim_data(path):
    """(data offset, data size, dims, off, type code, length-field bytes) of an AIM, read by hand."""
    raw = Path(path).read_bytes()[:4096]
    if raw[:16] == b"AIMDATA_V030   \0":
        sizes = struct.unpack_from("<5q", raw, 16)
        image = 16 + sizes[0]
        type_code = struct.unpack_from("<i", raw, image + 12)[0]
        dims = struct.unpack_from("<3q", raw, image + 40)
        off = struct.unpack_from("<3q", raw, image + 64)
        return 16 + sum(sizes[:3]), sizes[3], dims, off, type_code, 8
    sizes = struct.unpack_from("<5i", raw, 0)
    assert sizes[:2] == (20, 140)
    type_code = struct.unpack_from("<i", raw, 20 + 20)[0]
    dims = struct.unpack_from("<3i", raw, 20 + 36)
    off = struct.unpack_from("<3i", raw, 20 + 48)
    return sum(sizes[:3]), sizes[3], dims, off, type_code, 4


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="shared real data not available")
@pytest.mark.skipif(not _have_aimio(), reason="aimio-py not installed")
def test_real_masks_match_aimio(tmp_path):
    cases = {"TRAB_1240_SEG.AIM": ((108, 108, 126), 4, (0, 1)),
             "DB_07_DNN_DR_T1_TRAB_MASK.AIM": ((294, 346, 110), 8, (0, 127))}
    paths = [REAL_DATA / name for name in cases]
    reference = read_with_aimio(paths, tmp_path)
    for path in paths:
        expected_dims, expected_lfb, expected_values = cases[path.name]
        offset, size, dims, off, type_code, lfb = locate_aim_data(path)
        assert (tuple(dims), lfb, type_code, tuple(off)) == (expected_dims, expected_lfb, D1T_BIN_CMP, (0, 0, 0))
        for slab in (1, 7, dims[2]):
            with open(path, "rb") as handle:
                decoder = CompressedVoxelDecoder(handle, offset, size, dims, type_code, lfb, off, path=path)
                got = np.concatenate(list(decoder.iter_slabs(slab)))
            assert decoder.values == expected_values
            assert decoder.warnings == []
            np.testing.assert_array_equal(got, reference[str(path)])
        assert set(np.unique(got).tolist()) == set(expected_values)


@pytest.mark.skipif(not _have_aimio(), reason="aimio-py not installed")
def test_hand_written_aims_match_aimio(tmp_path):
    rng = np.random.default_rng(5)
    mask = np.where(rng.random((5, 7, 9)) < 0.5, 0, 127).astype(np.int8)
    mask[:, :3] = 0
    grey = rng.integers(-128, 128, (5, 7, 9)).astype(np.int8)
    grey[:, :, :4] = -7
    cases = []  # (path, writer, type, volume as stored in file, expected full volume, off, lfb)

    def add(name, writer, type_code, full, off, block_fn):
        ox, oy, oz = off
        interior = full if type_code == D3T_BIT8 else full[oz : full.shape[0] - oz, oy : full.shape[1] - oy,
                                                             ox : full.shape[2] - ox]
        expected = full.copy()
        if type_code != D3T_BIT8:
            expected[...] = 0
            expected[oz : full.shape[0] - oz, oy : full.shape[1] - oy, ox : full.shape[2] - ox] = interior
        path = tmp_path / name
        lfb = 8 if writer is write_aim_v030 else 4
        block = block_fn(interior, lfb)
        writer(path, type_code, full.shape[::-1], block, off)
        cases.append((path, expected))

    add("bin.aim", write_aim_v020, D1T_BIN_CMP, mask, (0, 0, 0), encode_bin_cmp)
    add("bin_off.aim", write_aim_v020, D1T_BIN_CMP, mask, (1, 2, 1), encode_bin_cmp)
    add("char.aim", write_aim_v020, D1T_CHAR_CMP, grey, (0, 0, 0), encode_char_cmp)
    add("char3.aim", write_aim_v030, D1T_CHAR_CMP, grey, (0, 0, 0), encode_char_cmp)
    add("char3_off.aim", write_aim_v030, D1T_CHAR_CMP, grey, (3, 1, 1), encode_char_cmp)
    add("bit8.aim", write_aim_v020, D3T_BIT8, mask, (0, 0, 0), lambda v, _lfb: encode_bit8(v))
    add("bit8_neg.aim", write_aim_v020, D3T_BIT8, np.where(mask != 0, -127, 0).astype(np.int8), (0, 0, 0),
        lambda v, _lfb: encode_bit8(v))
    reference = read_with_aimio([p for p, _ in cases], tmp_path)
    for path, expected in cases:
        offset, size, dims, off, type_code, lfb = locate_aim_data(path)
        with CompressedVoxelDecoder(path, offset, size, dims, type_code, lfb, off) as decoder:
            got = np.concatenate(list(decoder.iter_slabs(2)))
            assert decoder.warnings == []
        np.testing.assert_array_equal(reference[str(path)], expected, err_msg=f"AimIO, {path.name}")
        np.testing.assert_array_equal(got, expected, err_msg=path.name)
