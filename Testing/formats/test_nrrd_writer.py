"""Tests for ScancoUnitsLib.formats.nrrd: header text, data round trips through pynrrd, ITK and slicer-core,
single-member gzip from several threads, atomic behaviour of the writer."""

from __future__ import annotations

import builtins
import errno
import gzip
import os
import random
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from ScancoUnitsLib.io import transaction as atomic_output
from ScancoUnitsLib.formats import nrrd as nrrd_writer
from ScancoUnitsLib.io import gzip as parallel_gzip
from ScancoUnitsLib.io.transaction import AtomicOutputSet, OutputError, OutputExistsError
from ScancoUnitsLib.formats.nrrd import (
    NrrdVolumeWriter,
    crc32_combine,
    escape_nrrd_value,
    nrrd_header,
    write_nrrd,
)

nrrd = pytest.importorskip("nrrd")

SPACING = (0.0305, 0.25, 1.0 / 3.0)
ORIGIN = (1.5, -2.0625, 1e-7)
KEYS = {"ScancoUnits.quantity": "HU", "note": "line one\nC:\\scans\\a.isq", "mu_scaling": 4096,
        "slope": 0.1234567890123}


def make_volume(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 300 + 40).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dt)


def files_in(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def split_attached(path: Path):
    blob = path.read_bytes()
    header, sep, data = blob.partition(b"\n\n")
    assert sep, "no blank line after the header"
    return header.decode("utf-8"), data


def write_in_slabs(path, volume, slab_sizes, **kwargs):
    with NrrdVolumeWriter(path, volume.shape, volume.dtype, spacing_mm=SPACING, origin_mm=ORIGIN, **kwargs) as w:
        z = 0
        for n in slab_sizes:
            w.write_slab(volume[z:z + n])
            z += n
    assert z == volume.shape[0]
    return w


# ---------------------------------------------------------------------------------------------------
# header text
# ---------------------------------------------------------------------------------------------------


def test_header_text_exact():
    text = nrrd_header((5, 4, 3), np.int16, spacing_mm=(0.1, 0.2, 0.3), origin_mm=(-1, 0, 2.5),
                       key_values=[("b", "x\ny"), ("a", "back\\slash")], encoding="gzip").decode()
    assert text == (
        "NRRD0004\n"
        "type: int16\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        "sizes: 3 4 5\n"
        "space directions: (0.1,0,0) (0,0.2,0) (0,0,0.3)\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        "encoding: gzip\n"
        "space origin: (-1.0,0,2.5)\n"
        'space units: "mm" "mm" "mm"\n'
        "b:=x\\ny\n"
        "a:=back\\\\slash\n"
        "\n"
    )


def test_header_detached_and_one_byte_types():
    text = nrrd_header((2, 2, 2), np.uint8, spacing_mm=(1, 1, 1), data_file="v.raw").decode()
    assert "endian" not in text  # one-byte voxels have no byte order
    assert "type: uint8\n" in text
    assert text.endswith("data file: v.raw\n")
    for dtype, name in [(np.int8, "int8"), (np.uint16, "uint16"), (np.int32, "int32"), (np.uint32, "uint32"),
                        (np.float32, "float"), (np.float64, "double"), (">f4", "float")]:
        assert f"type: {name}\n" in nrrd_header((1, 1, 1), dtype, spacing_mm=(1, 1, 1)).decode()


def test_header_full_float_precision():
    values = (0.1 + 0.2, 1 / 3, 2.0 ** -30)
    text = nrrd_header((1, 1, 1), np.float32, spacing_mm=values, origin_mm=values).decode()
    line = next(line for line in text.splitlines() if line.startswith("space directions"))
    numbers = [float(t) for t in line.replace("space directions:", "").replace("(", " ").replace(")", " ")
               .replace(",", " ").split()]
    assert [numbers[0], numbers[4], numbers[8]] == list(values)  # exact doubles, not rounded


@pytest.mark.parametrize("kwargs, match", [
    (dict(spacing_mm=(1, 1)), "3 values"),
    (dict(spacing_mm=(1, 0, 1)), "positive"),
    (dict(spacing_mm=(1, float("nan"), 1)), "finite"),
    (dict(spacing_mm=(1, 1, 1), origin_mm=(0, float("inf"), 0)), "finite"),
    (dict(spacing_mm=(1, 1, 1), key_values={"a:=b": "x"}), "must not contain ':'"),
    (dict(spacing_mm=(1, 1, 1), key_values={"a:b": "x"}), "must not contain ':'"),
    (dict(spacing_mm=(1, 1, 1), key_values={"sizes": "x"}), "standard NRRD field"),
    (dict(spacing_mm=(1, 1, 1), key_values={"a\nb": "x"}), "control"),
    (dict(spacing_mm=(1, 1, 1), key_values={"": "x"}), "non-empty"),
    (dict(spacing_mm=(1, 1, 1), encoding="bzip2"), "encoding"),
])
def test_header_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nrrd_header((2, 2, 2), np.int16, **kwargs)


def test_control_characters_in_values_are_written_visibly():
    """A header string from the scanner (\x01, ESC, DEL) is written as the text \\xNN: one line a
    field, nothing a terminal would act on (issue 19.13)."""
    text = nrrd_header((2, 2, 2), np.int16, spacing_mm=(1, 1, 1),
                       key_values={"a": "x\x00y\x1b[31m\x7f\tz"}).decode()
    line = next(line for line in text.splitlines() if line.startswith("a:="))
    assert line == "a:=x\\x00y\\x1b[31m\\x7f\tz"


def test_header_rejects_bad_type_and_shape():
    with pytest.raises(ValueError, match="complex128"):
        nrrd_header((2, 2, 2), np.complex128, spacing_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="shape_zyx"):
        nrrd_header((2, 0, 2), np.int16, spacing_mm=(1, 1, 1))
    with pytest.raises(TypeError):
        escape_nrrd_value(object())


def test_escape_values():
    assert escape_nrrd_value("a\r\nb\rc\\d\te") == "a\\nb\\nc\\\\d\te"
    assert escape_nrrd_value(0.1) == "0.1"
    assert escape_nrrd_value(np.float32(0.5)) == "0.5"
    assert escape_nrrd_value(7) == "7"
    assert escape_nrrd_value(True) == "true"


# ---------------------------------------------------------------------------------------------------
# round trips through pynrrd
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32"])
@pytest.mark.parametrize("encoding", ["raw", "gzip"])
@pytest.mark.parametrize("detached", [False, True])
@pytest.mark.parametrize("slabs", ["one", "many"])
def test_pynrrd_round_trip(tmp_path, dtype, encoding, detached, slabs):
    volume = make_volume((7, 5, 9), dtype)
    path = tmp_path / ("vol.nhdr" if detached else "vol.nrrd")
    slab_sizes = [7] if slabs == "one" else [1, 3, 2, 1]
    writer = write_in_slabs(path, volume, slab_sizes, encoding=encoding, detached=detached,
                            key_values=KEYS, threads=2)
    expected_files = ["vol.nrrd"] if not detached else sorted(
        ["vol.nhdr", "vol.raw.gz" if encoding == "gzip" else "vol.raw"])
    assert files_in(tmp_path) == expected_files
    assert writer.output_paths[0] == path

    data, header = nrrd.read(str(path), index_order="C")
    assert data.dtype == volume.dtype
    assert data.shape == volume.shape
    np.testing.assert_array_equal(data, volume)
    assert list(header["sizes"]) == [9, 5, 7]
    np.testing.assert_array_equal(header["space directions"], np.diag(SPACING))
    np.testing.assert_array_equal(header["space origin"], ORIGIN)
    assert header["space"] == "left-posterior-superior"
    assert list(header["space units"]) == ["mm", "mm", "mm"]
    assert header["encoding"] == encoding
    # pynrrd keeps values as written: escapes are not undone
    assert header["ScancoUnits.quantity"] == "HU"
    assert header["note"] == "line one\\nC:\\\\scans\\\\a.isq"
    assert header["mu_scaling"] == "4096"
    assert float(header["slope"]) == KEYS["slope"]

    if detached:
        data_file = next(tmp_path / n for n in expected_files if n != "vol.nhdr")
        raw = gzip.decompress(data_file.read_bytes()) if encoding == "gzip" else data_file.read_bytes()
    else:
        _, payload = split_attached(path)
        raw = gzip.decompress(payload) if encoding == "gzip" else payload
    assert raw == volume.astype(volume.dtype.newbyteorder("<")).tobytes()


def test_big_endian_input_and_2d_slices(tmp_path):
    volume = make_volume((3, 4, 5), np.int16)
    path = tmp_path / "be.nrrd"
    with NrrdVolumeWriter(path, volume.shape, np.int16, spacing_mm=(1, 1, 1)) as w:
        w.write_slab(volume[:1].astype(">i2"))  # same values, other byte order
        w.write_slab(volume[1])                  # a single (y, x) slice
        w.write_slab(np.asfortranarray(volume[2:]))  # not C-contiguous
    data, _ = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(data, volume)


# ---------------------------------------------------------------------------------------------------
# gzip: one member, threads, CRC
# ---------------------------------------------------------------------------------------------------


def test_crc32_combine_matches_zlib():
    rng = random.Random(5)
    for _ in range(60):
        a = rng.randbytes(rng.randrange(0, 3000))
        b = rng.randbytes(rng.randrange(0, 3000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    with pytest.raises(ValueError):
        crc32_combine(0, 0, -1)


def gzip_member_info(payload: bytes):
    """Decompress exactly one gzip member; return (data, bytes after it)."""
    d = zlib.decompressobj(wbits=31)
    data = d.decompress(payload)
    assert d.eof
    return data, d.unused_data


@pytest.mark.parametrize("backend", ["isal", "zlib"])
@pytest.mark.parametrize("threads", [1, 3])
def test_gzip_single_member_many_chunks(tmp_path, monkeypatch, backend, threads):
    if backend == "zlib":
        monkeypatch.setattr(parallel_gzip, "_isal_zlib", None)
    elif parallel_gzip._isal_zlib is None:
        pytest.skip("python-isal not installed")
    monkeypatch.setattr(nrrd_writer, "_GZIP_CHUNK_BYTES", 1000)  # many chunks for a small volume
    volume = make_volume((9, 17, 23), np.float32, seed=3)
    path = tmp_path / "g.nrrd"
    before = threading.active_count()
    writer = write_in_slabs(path, volume, [1, 1, 4, 3], encoding="gzip", threads=threads)
    assert writer.gzip_backend_name == backend
    assert threading.active_count() == before  # compression threads are gone
    _, payload = split_attached(path)
    assert payload[:3] == b"\x1f\x8b\x08"
    data, rest = gzip_member_info(payload)
    assert rest == b""  # exactly one member, nothing after it
    assert data == volume.tobytes()
    crc, isize = struct.unpack("<II", payload[-8:])
    assert crc == zlib.crc32(volume.tobytes()) and isize == volume.nbytes
    read_back, _ = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(read_back, volume)


def test_gzip_output_does_not_depend_on_threads_or_slabs(tmp_path, monkeypatch):
    monkeypatch.setattr(nrrd_writer, "_GZIP_CHUNK_BYTES", 777)
    volume = make_volume((6, 11, 13), np.int16, seed=9)
    blobs = []
    for i, (threads, slabs) in enumerate([(1, [6]), (2, [1, 2, 3]), (4, [5, 1])]):
        path = tmp_path / f"d{i}.nrrd"
        write_in_slabs(path, volume, slabs, encoding="gzip", threads=threads)
        blobs.append(path.read_bytes())
    assert blobs[0] == blobs[1] == blobs[2]


def test_caller_may_reuse_its_slab_buffer(tmp_path, monkeypatch):
    # chunks taken straight from the caller's array must be compressed before write_slab returns
    monkeypatch.setattr(nrrd_writer, "_GZIP_CHUNK_BYTES", 300)
    volume = make_volume((8, 10, 12), np.int16, seed=4)
    buffer = np.empty((2, 10, 12), np.int16)
    path = tmp_path / "reuse.nrrd"
    before = threading.active_count()
    with NrrdVolumeWriter(path, volume.shape, volume.dtype, spacing_mm=(1, 1, 1), encoding="gzip", threads=3) as w:
        for z0 in range(0, 8, 2):
            buffer[...] = volume[z0:z0 + 2]
            w.write_slab(buffer)
            buffer[...] = -1  # scribble over it at once
    np.testing.assert_array_equal(nrrd.read(str(path), index_order="C")[0], volume)
    # failure path: the pool is shut down as well
    with pytest.raises(RuntimeError):
        with NrrdVolumeWriter(tmp_path / "f.nrrd", volume.shape, volume.dtype, spacing_mm=(1, 1, 1),
                              encoding="gzip", threads=3) as w:
            w.write_slab(volume[:3])
            raise RuntimeError
    assert threading.active_count() == before
    assert files_in(tmp_path) == ["reuse.nrrd"]


def test_gzip_compress_level_zero_and_nine(tmp_path):
    volume = make_volume((3, 8, 8), np.uint8)
    for level in (0, 9):
        path = tmp_path / f"l{level}.nrrd"
        write_in_slabs(path, volume, [3], encoding="gzip", compress_level=level)
        np.testing.assert_array_equal(nrrd.read(str(path), index_order="C")[0], volume)
    with pytest.raises(ValueError, match="compress_level"):
        NrrdVolumeWriter(tmp_path / "x.nrrd", (1, 1, 1), np.uint8, spacing_mm=(1, 1, 1), encoding="gzip",
                         compress_level=10)


# ---------------------------------------------------------------------------------------------------
# writer rules and atomic behaviour
# ---------------------------------------------------------------------------------------------------


def test_writer_rejects_wrong_slabs(tmp_path):
    path = tmp_path / "w.nrrd"
    with NrrdVolumeWriter(path, (3, 4, 5), np.int16, spacing_mm=(1, 1, 1)) as w:
        with pytest.raises(ValueError, match="voxel type"):
            w.write_slab(np.zeros((1, 4, 5), np.float32))
        with pytest.raises(ValueError, match="slab shape"):
            w.write_slab(np.zeros((1, 5, 4), np.int16))
        w.write_slab(np.zeros((2, 4, 5), np.int16))
        with pytest.raises(ValueError, match="4 slices written, the volume has 3"):
            w.write_slab(np.zeros((2, 4, 5), np.int16))
        w.write_slab(np.zeros((1, 4, 5), np.int16))
    assert files_in(tmp_path) == ["w.nrrd"]
    with pytest.raises(ValueError, match="closed"):
        w.write_slab(np.zeros((1, 4, 5), np.int16))


def test_writer_path_rules(tmp_path):
    with pytest.raises(ValueError, match=".nhdr"):
        NrrdVolumeWriter(tmp_path / "a.nrrd", (1, 1, 1), np.int16, spacing_mm=(1, 1, 1), detached=True)
    with pytest.raises(ValueError, match="detached"):
        NrrdVolumeWriter(tmp_path / "a.nhdr", (1, 1, 1), np.int16, spacing_mm=(1, 1, 1))
    assert files_in(tmp_path) == []


def test_missing_slices_leave_nothing(tmp_path):
    path = tmp_path / "short.nrrd"
    with pytest.raises(ValueError, match="only 2 of 3 slices"):
        with NrrdVolumeWriter(path, (3, 2, 2), np.int16, spacing_mm=(1, 1, 1), encoding="gzip") as w:
            w.write_slab(np.zeros((2, 2, 2), np.int16))
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("detached", [False, True])
def test_exception_mid_write_leaves_nothing(tmp_path, detached):
    path = tmp_path / ("v.nhdr" if detached else "v.nrrd")
    with pytest.raises(RuntimeError, match="reader broke"):
        with NrrdVolumeWriter(path, (4, 8, 8), np.float32, spacing_mm=(1, 1, 1), encoding="gzip",
                              detached=detached, threads=2) as w:
            w.write_slab(np.ones((2, 8, 8), np.float32))
            assert len(files_in(tmp_path)) == (2 if detached else 1)  # hidden temporaries exist meanwhile
            assert all(n.startswith(".v.") and ".partial-" in n for n in files_in(tmp_path))
            raise RuntimeError("reader broke")
    assert files_in(tmp_path) == []
    assert atomic_output.live_partials() == []


def test_keyboard_interrupt_leaves_nothing(tmp_path):
    path = tmp_path / "k.nrrd"
    with pytest.raises(KeyboardInterrupt):
        with NrrdVolumeWriter(path, (2, 2, 2), np.int16, spacing_mm=(1, 1, 1)) as w:
            w.write_slab(np.zeros((1, 2, 2), np.int16))
            raise KeyboardInterrupt
    assert files_in(tmp_path) == []


def test_no_clobber_and_overwrite(tmp_path):
    path = tmp_path / "e.nrrd"
    path.write_bytes(b"old")
    volume = make_volume((2, 3, 4), np.int16)
    with pytest.raises(OutputExistsError, match="e.nrrd"):
        write_nrrd(path, volume, spacing_mm=(1, 1, 1))
    assert path.read_bytes() == b"old"
    assert files_in(tmp_path) == ["e.nrrd"]
    write_nrrd(path, volume, spacing_mm=(1, 1, 1), overwrite=True)
    np.testing.assert_array_equal(nrrd.read(str(path), index_order="C")[0], volume)
    assert files_in(tmp_path) == ["e.nrrd"]


def test_detached_no_clobber_of_data_file(tmp_path):
    (tmp_path / "d.raw").write_bytes(b"someone else's")
    with pytest.raises(OutputExistsError, match="d.raw"):
        write_nrrd(tmp_path / "d.nhdr", make_volume((1, 2, 2), np.uint8), spacing_mm=(1, 1, 1), detached=True)
    assert files_in(tmp_path) == ["d.raw"]


def test_enospc_during_slab_names_file_and_cleans_up(tmp_path, monkeypatch):
    real = nrrd_writer._write_all
    calls = {"n": 0}

    def failing(fileobj, data):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fileobj, data)

    monkeypatch.setattr(nrrd_writer, "_write_all", failing)
    path = tmp_path / "full.nrrd"
    with pytest.raises(OutputError) as info:
        with NrrdVolumeWriter(path, (4, 4, 4), np.int16, spacing_mm=(1, 1, 1)) as w:
            for z in range(4):
                w.write_slab(np.zeros((1, 4, 4), np.int16))
    assert str(path) in str(info.value)
    assert "No space left on device" in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert files_in(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_real_enospc_from_dev_full(tmp_path, monkeypatch, encoding):
    # every output handle writes to /dev/full, which answers each write with ENOSPC
    monkeypatch.setattr(atomic_output, "open", lambda path, *a, **k: builtins.open("/dev/full", *a, **k),
                        raising=False)
    path = tmp_path / "dev.nrrd"
    volume = make_volume((4, 64, 64), np.float32)
    with pytest.raises(OutputError, match=r"dev\.nrrd: cannot write output: No space left on device"):
        write_nrrd(path, volume, spacing_mm=(1, 1, 1), encoding=encoding, threads=2)
    assert files_in(tmp_path) == []


def test_eacces_names_file(tmp_path, monkeypatch):
    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(atomic_output, "_create_exclusive", denied)
    with pytest.raises(OutputError, match=r"ro\.nrrd: cannot write output: Permission denied"):
        write_nrrd(tmp_path / "ro.nrrd", make_volume((1, 2, 2), np.int16), spacing_mm=(1, 1, 1))
    assert files_in(tmp_path) == []


def test_group_of_outputs_all_or_nothing(tmp_path):
    hu = make_volume((3, 4, 5), np.float32)
    mask = (hu > 0).astype(np.uint8)
    with pytest.raises(RuntimeError):
        with AtomicOutputSet() as outputs:
            with NrrdVolumeWriter(tmp_path / "s_HU.nrrd", hu.shape, hu.dtype, spacing_mm=SPACING,
                                  encoding="gzip", atomic=outputs) as w:
                w.write_slab(hu)
            w2 = NrrdVolumeWriter(tmp_path / "s_BWmask.nhdr", mask.shape, mask.dtype, spacing_mm=SPACING,
                                  detached=True, atomic=outputs)
            w2.write_slab(mask[:2])
            raise RuntimeError("the third slab failed")
    assert files_in(tmp_path) == []

    with AtomicOutputSet() as outputs:
        with NrrdVolumeWriter(tmp_path / "s_HU.nrrd", hu.shape, hu.dtype, spacing_mm=SPACING,
                              encoding="gzip", atomic=outputs) as w:
            w.write_slab(hu)
            assert files_in(tmp_path)[0].startswith(".s_HU.nrrd.partial-")
        # not closed explicitly: committing the set finishes the writer
        w2 = NrrdVolumeWriter(tmp_path / "s_BWmask.nhdr", mask.shape, mask.dtype, spacing_mm=SPACING,
                              detached=True, atomic=outputs)
        w2.write_slab(mask)
        with outputs.add(tmp_path / "s_metadata.json", "w", encoding="utf-8") as meta:
            meta.write("{}")
        assert not (tmp_path / "s_HU.nrrd").exists()  # nothing final before the set commits
    assert files_in(tmp_path) == ["s_BWmask.nhdr", "s_BWmask.raw", "s_HU.nrrd", "s_metadata.json"]
    np.testing.assert_array_equal(nrrd.read(str(tmp_path / "s_HU.nrrd"), index_order="C")[0], hu)
    np.testing.assert_array_equal(nrrd.read(str(tmp_path / "s_BWmask.nhdr"), index_order="C")[0], mask)


def test_unfinished_writer_aborts_its_set(tmp_path):
    with pytest.raises(ValueError, match="only 1 of 2"):
        with AtomicOutputSet() as outputs:
            with outputs.add(tmp_path / "meta.json") as f:
                f.write(b"{}")
            w = NrrdVolumeWriter(tmp_path / "x.nrrd", (2, 2, 2), np.int16, spacing_mm=(1, 1, 1), atomic=outputs)
            w.write_slab(np.zeros((1, 2, 2), np.int16))
    assert files_in(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# other readers: ITK (Teem-based NrrdImageIO) and slicer-core
# ---------------------------------------------------------------------------------------------------


def _itk_read(path, pixel):
    import itk

    image_type = itk.Image[pixel, 3]
    reader = itk.ImageFileReader[image_type].New(FileName=str(path), ImageIO=itk.NrrdImageIO.New())
    reader.Update()
    image = reader.GetOutput()
    dictionary = image.GetMetaDataDictionary()
    # copy the strings now: the dictionary dies with the image
    meta = {key: dictionary[key] for key in ("note", "ScancoUnits.quantity", "NRRD_space")}
    return itk.array_from_image(image).copy(), tuple(image.GetSpacing()), tuple(image.GetOrigin()), meta


@pytest.mark.parametrize("dtype, encoding, detached", [
    ("int16", "gzip", False), ("float32", "raw", True), ("uint8", "gzip", True), ("float32", "gzip", False),
])
def test_itk_reads_our_files(tmp_path, monkeypatch, dtype, encoding, detached):
    itk = pytest.importorskip("itk")
    monkeypatch.setattr(nrrd_writer, "_GZIP_CHUNK_BYTES", 500)  # several deflate chunks
    pixel = {"int16": itk.SS, "float32": itk.F, "uint8": itk.UC}[dtype]
    volume = make_volume((5, 7, 11), dtype, seed=2)
    path = tmp_path / ("i.nhdr" if detached else "i.nrrd")
    write_in_slabs(path, volume, [2, 3], encoding=encoding, detached=detached, key_values=KEYS, threads=2)
    array, spacing, origin, meta = _itk_read(path, pixel)
    np.testing.assert_array_equal(array, volume)
    np.testing.assert_allclose(spacing, SPACING, rtol=1e-15)
    np.testing.assert_allclose(origin, ORIGIN, rtol=1e-15, atol=1e-20)
    # Teem undoes the escapes
    assert meta["note"] == KEYS["note"]
    assert meta["ScancoUnits.quantity"] == "HU"
    assert meta["NRRD_space"] == "left-posterior-superior"


def test_slicer_reads_our_files(tmp_path):
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util import numpy_support

    cases = [("int16", "gzip", False), ("float32", "gzip", True), ("uint8", "raw", False)]
    for i, (dtype, encoding, detached) in enumerate(cases):
        volume = make_volume((4, 6, 9), dtype, seed=10 + i)
        path = tmp_path / (f"s{i}.nhdr" if detached else f"s{i}.nrrd")
        write_in_slabs(path, volume, [1, 3], encoding=encoding, detached=detached, key_values=KEYS, threads=2)

        for storage_class in ("vtkMRMLVolumeArchetypeStorageNode", "vtkMRMLNRRDStorageNode"):
            scene = slicer.vtkMRMLScene()
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
            storage = getattr(slicer, storage_class)()
            scene.AddNode(storage)
            storage.SetFileName(str(path))
            assert storage.ReadData(node) == 1, (storage_class, path)
            np.testing.assert_allclose(node.GetSpacing(), SPACING, rtol=1e-12)
            # LPS (x, y, z) -> RAS (-x, -y, z)
            np.testing.assert_allclose(node.GetOrigin(), (-ORIGIN[0], -ORIGIN[1], ORIGIN[2]), rtol=1e-12,
                                       atol=1e-12)
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            np.testing.assert_allclose([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)],
                                       np.diag([-SPACING[0], -SPACING[1], SPACING[2]]), rtol=1e-12, atol=1e-15)
            image = node.GetImageData()
            assert image.GetDimensions() == volume.shape[::-1]
            array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(volume.shape)
            np.testing.assert_array_equal(array, volume)
            if storage_class == "vtkMRMLNRRDStorageNode":  # Teem: key/value pairs become node attributes
                assert node.GetAttribute("note") == KEYS["note"]


@pytest.mark.parametrize("detached", [False, True])
def test_raw_slabs_written_at_their_offsets_in_any_order_from_two_threads(tmp_path, detached):
    """The engine's workers write raw slabs where they belong (write_at); the file equals a sequential
    write of the same volume, and gzip output (a stream) refuses it."""
    volume = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 50
    ext = ".nhdr" if detached else ".nrrd"
    write_nrrd(tmp_path / f"seq{ext}", volume, spacing_mm=(1, 1, 1), detached=detached)
    writer = NrrdVolumeWriter(tmp_path / f"pos{ext}", volume.shape, volume.dtype, spacing_mm=(1, 1, 1),
                              detached=detached)
    assert writer.positional
    order = [range(4, 6), range(0, 2), range(2, 4)]
    threads = [threading.Thread(target=writer.write_at, args=(z, volume[z.start:z.stop])) for z in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    data_name = "{}.raw" if detached else "{}.nrrd"
    assert (tmp_path / data_name.format("seq")).read_bytes() == (tmp_path / data_name.format("pos")).read_bytes()
    gz = NrrdVolumeWriter(tmp_path / "gz.nrrd", volume.shape, volume.dtype, spacing_mm=(1, 1, 1), encoding="gzip")
    assert not gz.positional
    with pytest.raises(ValueError, match="known offsets"):
        gz.write_at(range(0, 1), volume[:1])
    gz.abort()
    assert not (tmp_path / "gz.nrrd").exists() and not list(tmp_path.glob(".gz.nrrd.partial-*"))


@pytest.mark.parametrize("fmt", ["nrrd", "nifti"])
def test_slabs_compressed_by_other_threads_append_in_order(tmp_path, fmt):
    """encode_slab in worker threads (any order), write_encoded in z order: the same volume as
    write_slab; a slab too many and a write after close are refused like write_slab's."""
    volume = make_volume((9, 5, 7), np.int16, seed=3)
    if fmt == "nrrd":
        writer = NrrdVolumeWriter(tmp_path / "v.nrrd", volume.shape, volume.dtype, spacing_mm=(1, 1, 1),
                                  encoding="gzip", threads=2)
    else:
        from ScancoUnitsLib.formats.nifti import NiftiVolumeWriter
        writer = NiftiVolumeWriter(tmp_path / "v.nii.gz", volume.shape, volume.dtype, spacing_mm=(1, 1, 1),
                                   compress=True, threads=2)
    assert writer.encodes
    slabs = [volume[z:z + 2] for z in range(0, 9, 2)]
    encoded = [None] * len(slabs)

    def work(i):
        encoded[i] = writer.encode_slab(slabs[i].copy())

    threads = [threading.Thread(target=work, args=(i,)) for i in reversed(range(len(slabs)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.write_encoded(encoded[0])
    writer.write_slab(slabs[1])          # plain and encoded writes mix
    for pieces in encoded[2:]:
        writer.write_encoded(pieces)
    assert writer.slices_written == 9
    with pytest.raises(ValueError, match="10 slices written, the volume has 9"):
        writer.write_encoded(type(encoded[0])(writer.shape_zyx[1], encoded[0].pieces))  # one slice of rows
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_encoded(encoded[1])
    if fmt == "nrrd":
        data, _ = nrrd.read(str(tmp_path / "v.nrrd"), index_order="C")
    else:
        nib = pytest.importorskip("nibabel")
        data = np.asarray(nib.load(str(tmp_path / "v.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(data, volume)


def test_raw_nrrd_does_not_encode(tmp_path):
    writer = NrrdVolumeWriter(tmp_path / "r.nrrd", (2, 3, 4), np.uint8, spacing_mm=(1, 1, 1))
    assert not writer.encodes and writer.positional
    writer.abort()


def test_without_os_pwrite_seek_and_write_give_the_same_files(tmp_path, monkeypatch):
    """Windows has no os.pwrite (issue 21): raw slabs are then written with lseek + write under the
    file's own lock; slabs and row pieces from several threads in any order, and a whole conversion
    with two workers, give files byte-identical to the pwrite ones."""
    import ScancoUnitsLib as S
    from ScancoUnitsLib.pipeline.convert import convert_file
    from ScancoUnitsLib.core.header import Calibration

    volume = np.arange(8 * 6 * 5, dtype=np.int16).reshape(8, 6, 5) * 7 - 90
    sequential = tmp_path / "seq.nrrd"
    write_nrrd(sequential, volume, spacing_mm=(1, 1, 1))
    cal = Calibration(mu_scaling=4096, mu_water_per_cm=0.5, density_slope=350.0, density_intercept=-200.0,
                      density_unit="mg HA/ccm", calibration_type=2)
    grey = np.random.default_rng(8).integers(-2000, 9000, size=(80, 160, 170)).astype(np.int16)  # 3 slabs
    scan = S.write_isq(tmp_path / "scan.isq", grey, voxel_size_mm=(0.01,) * 3, calibration=cal)
    roles = ("hu", "density", "mu", "mask", "native")
    with_pwrite = convert_file(scan, tmp_path / "pwrite", outputs=roles)

    seeks = []
    real_lseek = os.lseek
    monkeypatch.delattr(os, "pwrite")
    monkeypatch.setattr(os, "lseek", lambda fd, pos, how: seeks.append(pos) or real_lseek(fd, pos, how))
    writer = NrrdVolumeWriter(tmp_path / "pos.nrrd", volume.shape, volume.dtype, spacing_mm=(1, 1, 1))
    jobs = [(range(6, 8), volume[6:8], 0), (range(0, 1), volume[0:1, 3:6], 3), (range(2, 6), volume[2:6], 0),
            (range(1, 2), volume[1:2], 0), (range(0, 1), volume[0:1, 0:3], 0)]
    threads = [threading.Thread(target=writer.write_at, args=(z, part), kwargs={"row0": row0})
               for z, part, row0 in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert len(seeks) == len(jobs)
    assert (tmp_path / "pos.nrrd").read_bytes() == sequential.read_bytes()
    without = convert_file(scan, tmp_path / "seek", outputs=roles)
    assert len(seeks) > len(jobs)
    for role in roles:
        assert Path(without[role]).read_bytes() == Path(with_pwrite[role]).read_bytes(), role
