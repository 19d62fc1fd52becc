"""parallel_gzip: one gzip member whatever the threads, chunks and write sizes; CRC combination."""

from __future__ import annotations

import gzip
import io
import random
import struct
import threading
import zlib

import numpy as np
import pytest

from ScancoUnitsLib.io import gzip as parallel_gzip
from ScancoUnitsLib.io.gzip import GzipStream, crc32_combine, default_threads, gzip_backend


def _write_all(fileobj, data):
    fileobj.write(bytes(data))


def compress(data: bytes, *, threads, chunk, pieces, level=1):
    out = io.BytesIO()
    stream = GzipStream(out, _write_all, level, threads, chunk_bytes=chunk)
    view = memoryview(data)
    for size in pieces:
        stream.write(view[:size])
        view = view[size:]
    stream.write(view)
    stream.finish()
    assert stream.uncompressed_bytes == len(data)
    return out.getvalue()


def one_member(blob: bytes) -> bytes:
    d = zlib.decompressobj(wbits=31)
    data = d.decompress(blob)
    assert d.eof and d.unused_data == b""  # exactly one member
    return data


@pytest.mark.parametrize("backend", ["isal", "zlib"])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_single_member_any_split(monkeypatch, backend, threads):
    if backend == "zlib":
        monkeypatch.setattr(parallel_gzip, "_isal_zlib", None)
    elif parallel_gzip._isal_zlib is None:
        pytest.skip("python-isal not installed")
    rng = np.random.default_rng(threads)
    data = (rng.standard_normal(40_000) * 300).astype(np.int16).tobytes()
    before = threading.active_count()
    blobs = set()
    for chunk, pieces in [(1000, [1, 999, 1000, 5000]), (777, [0, 3, 40_001]), (1 << 20, [])]:
        blob = compress(data, threads=threads, chunk=chunk, pieces=pieces)
        assert blob[:3] == b"\x1f\x8b\x08"
        assert one_member(blob) == data
        assert gzip.decompress(blob) == data
        crc, isize = struct.unpack("<II", blob[-8:])
        assert crc == zlib.crc32(data) and isize == len(data)
        blobs.add((chunk, blob))
    assert threading.active_count() == before
    assert len({b for c, b in blobs if c == 1000}) == 1


def test_output_independent_of_threads_and_write_sizes():
    data = np.random.default_rng(1).integers(0, 50, 30_000, dtype=np.uint8).tobytes()
    blobs = {compress(data, threads=t, chunk=4096, pieces=p) for t, p in
             [(1, []), (2, [1, 2, 3]), (4, [4096, 1]), (3, [8191])]}
    assert len(blobs) == 1


def test_empty_stream():
    blob = compress(b"", threads=2, chunk=100, pieces=[])
    assert one_member(blob) == b""


def test_caller_buffer_reusable_after_write():
    buf = bytearray(b"abc" * 10_000)
    expected = bytes(buf) * 2
    out = io.BytesIO()
    stream = GzipStream(out, _write_all, 1, 3, chunk_bytes=500)
    stream.write(memoryview(buf))
    buf[:] = b"abc" * 10_000
    stream.write(memoryview(buf))
    buf[:] = b"x" * len(buf)  # scribbled after the last write
    stream.finish()
    assert one_member(out.getvalue()) == expected


def test_crc32_combine_matches_zlib():
    rng = random.Random(5)
    for _ in range(40):
        a = rng.randbytes(rng.randrange(0, 3000))
        b = rng.randbytes(rng.randrange(0, 3000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    with pytest.raises(ValueError):
        crc32_combine(0, 0, -1)


def test_backend_levels_and_threads():
    assert gzip_backend(0)[2] == "zlib"
    module, level, name = gzip_backend(1)
    assert (level, name) == ((1, "isal") if parallel_gzip._isal_zlib is not None else (1, "zlib"))
    with pytest.raises(ValueError):
        gzip_backend(10)
    assert 1 <= default_threads() <= 16


def test_nrrd_writer_uses_this_module():
    from ScancoUnitsLib.formats import nrrd as nrrd_writer

    assert nrrd_writer.crc32_combine is crc32_combine
    assert nrrd_writer.gzip_backend is gzip_backend
    assert nrrd_writer.GzipStream is GzipStream


@pytest.mark.parametrize("backend", ["isal", "zlib"])
def test_encoded_pieces_from_other_threads_make_the_same_member(monkeypatch, backend):
    """encode() in any thread and any order, write_encoded() in stream order, mixed with write():
    one gzip member holding the data, in order (the engine's workers compress their own slabs)."""
    if backend == "zlib":
        monkeypatch.setattr(parallel_gzip, "_isal_zlib", None)
    elif parallel_gzip._isal_zlib is None:
        pytest.skip("python-isal not installed")
    rng = np.random.default_rng(5)
    data = (rng.standard_normal(60_000) * 300).astype(np.int16).tobytes()
    cuts = [0, 7, 10_000, 10_001, 50_000, 90_000, len(data)]
    parts = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    out = io.BytesIO()
    stream = GzipStream(out, _write_all, 1, 2, chunk_bytes=4096)
    stream.write(memoryview(b"header bytes"))      # left pending in the stream, written first
    encoded = [None] * len(parts)

    def encode(i):
        encoded[i] = stream.encode(memoryview(parts[i]))

    workers = [threading.Thread(target=encode, args=(i,)) for i in reversed(range(len(parts)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i, pieces in enumerate(encoded):
        if i == 3:
            stream.write(memoryview(parts[i]))  # a plain write between encoded slabs
        else:
            stream.write_encoded(pieces)
    stream.finish()
    blob = out.getvalue()
    assert one_member(blob) == b"header bytes" + data
    crc, isize = struct.unpack("<II", blob[-8:])
    assert crc == zlib.crc32(b"header bytes" + data) and isize == len(data) + 12
