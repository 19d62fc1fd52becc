"""Tests for the OME-Zarr writer: level values against numpy references, NGFF geometry per level, readers
(zarr, ome-zarr-py's Reader, the ome-zarr-models NGFF validators), atomic output and flat memory."""

from __future__ import annotations

import json
import sys
import tracemalloc

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from ScancoUnitsLib.io.transaction import AtomicOutputSet, OutputExistsError, live_partials  # noqa: E402
from ScancoUnitsLib.formats.ome_zarr import (  # noqa: E402
    ATTRIBUTES_KEY,
    OmeZarrUnavailableError,
    OmeZarrVolumeWriter,
    downsample_2x,
    pyramid_levels,
    write_ome_zarr,
)
from ScancoUnitsLib.formats.writers import VolumeSpec, get_format  # noqa: E402

SPACING_XYZ = (0.0105, 0.021, 0.0315)
ORIGIN_XYZ = (1.5, -2.25, 30.0)


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def reference_2x(volume: np.ndarray, method: str) -> np.ndarray:
    """Independent numpy reference: pad to even sizes, 2x2x2 blocks, mean over the voxels that exist
    (NaN padding + nanmean) in float64, cast back like the writer; or the maximum."""
    pads = [(0, n % 2) for n in volume.shape]
    if method == "max":
        low = np.iinfo(volume.dtype).min if volume.dtype.kind in "iu" else -np.inf
        padded = np.pad(volume, pads, constant_values=low)
    else:
        padded = np.pad(volume.astype(np.float64), pads, constant_values=np.nan)
    z, y, x = (n // 2 for n in padded.shape)
    blocks = padded.reshape(z, 2, y, 2, x, 2)
    if method == "max":
        return blocks.max(axis=(1, 3, 5)).astype(volume.dtype)
    mean = np.nanmean(blocks, axis=(1, 3, 5))
    if volume.dtype.kind == "f":
        return mean.astype(volume.dtype)
    info = np.iinfo(volume.dtype)
    return np.clip(np.rint(mean), info.min, info.max).astype(volume.dtype)


def volumes():
    rng = np.random.default_rng(14)
    shape = (37, 50, 61)  # odd in z and x: partial last blocks and partial chunks
    return {
        "hu": (rng.integers(-1000, 3000, size=shape).astype(np.int16), "HU"),
        "density_g_cc": ((rng.random(shape) * 1.2 - 0.1).astype(np.float32), "g HA/cc"),
        "mask": ((rng.random(shape) < 0.02).astype(np.uint8), "1"),
        "native": (rng.integers(-32768, 32767, size=shape, endpoint=True).astype(np.int16), "native"),
    }


def write(path, volume, quantity, unit, *, slab=4, **options):
    options.setdefault("chunk_size", 16)
    options.setdefault("pyramid_top_size", 12)
    return write_ome_zarr(path, volume, spacing_mm=SPACING_XYZ, origin_mm=ORIGIN_XYZ, quantity=quantity,
                          unit_label=unit, description=f"{quantity} test volume", slab_slices=slab,
                          key_values={"ScancoUnits_unit": unit, "MuScaling": "8192"}, **options)


@pytest.mark.parametrize("quantity", ["hu", "density_g_cc", "mask", "native"])
@pytest.mark.parametrize("slab", [1, 3, 16])
def test_levels_equal_numpy_reference(tmp_path, quantity, slab):
    volume, unit = volumes()[quantity]
    path = write(tmp_path / "scan.ome.zarr", volume, quantity, unit, slab=slab)
    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.array_keys()) == ["0", "1", "2", "3"]
    level0 = group["0"][:]
    assert level0.dtype == volume.dtype and np.array_equal(level0, volume)
    method = "max" if quantity == "mask" else "mean"
    expected = volume
    for k in (1, 2, 3):
        expected = reference_2x(expected, method)  # level k+1 from level k, as stored
        stored = group[str(k)][:]
        assert stored.dtype == volume.dtype
        np.testing.assert_array_equal(stored, expected, err_msg=f"level {k}")
    assert group["3"].shape == (5, 7, 8)


def test_integer_mean_rounds_half_to_even_and_odd_blocks_average_what_exists():
    # 2x2x2 block of [0]*7 + [4]: mean 0.5 -> 0; [0]*6 + [6, 6]: 1.5 -> 2; x odd: last block of 4 voxels
    block = np.zeros((2, 2, 3), np.int16)
    block[1, 1, 1] = 4            # block (0,0,0): sum 4 over 8 -> 0.5 -> 0
    block[:, :, 2] = [[1, 2], [2, 1]]  # last x block: 4 voxels, mean 1.5 -> 2
    out = downsample_2x(block, "mean")
    assert out.dtype == np.int16 and out.tolist() == [[[0, 2]]]
    floats = downsample_2x(block.astype(np.float32), "mean")
    assert floats.tolist() == [[[0.5, 1.5]]]
    assert downsample_2x(np.array([[[0, 1, 0]]], np.uint8), "max").tolist() == [[[1, 0]]]
    # int16 range: the mean of extremes never wraps
    extremes = np.array([[[-32768, 32767], [32767, 32767]]], np.int16)
    assert downsample_2x(extremes, "mean").tolist() == [[[16383]]]  # (3 * 32767 - 32768) / 4 = 16383.25


def test_scale_and_translation_per_level(tmp_path):
    volume, unit = volumes()["hu"]
    path = write(tmp_path / "scan.ome.zarr", volume, "hu", unit)
    attrs = json.loads((path / ".zattrs").read_text())
    (multiscale,) = attrs["multiscales"]
    assert multiscale["version"] == "0.4"
    lps = {"x": "right-to-left", "y": "anterior-to-posterior", "z": "inferior-to-superior"}  # NGFF RFC-4
    assert multiscale["axes"] == [{"name": n, "type": "space", "unit": "millimeter",
                                   "orientation": {"type": "anatomical", "value": lps[n]}} for n in "zyx"]
    sx, sy, sz = SPACING_XYZ
    ox, oy, oz = ORIGIN_XYZ
    for k, dataset in enumerate(multiscale["datasets"]):
        f = 2 ** k
        scale, translation = dataset["coordinateTransformations"]
        assert dataset["path"] == str(k)
        assert scale == {"type": "scale", "scale": pytest.approx([sz * f, sy * f, sx * f], rel=1e-15)}
        # centre of the level's voxel 0 = centre of level-0 voxels 0 .. f-1
        assert translation["type"] == "translation"
        assert translation["translation"] == pytest.approx(
            [oz + (f - 1) * sz / 2, oy + (f - 1) * sy / 2, ox + (f - 1) * sx / 2], rel=1e-15)
    own = attrs[ATTRIBUTES_KEY]
    assert own["coordinate_frame"] == "LPS" and own["ngff_version"] == "0.4"
    assert own["quantity"] == "hu" and own["unit"] == "HU" and own["description"] == "hu test volume"
    assert own["key_values"] == {"ScancoUnits_unit": "HU", "MuScaling": "8192"}
    assert own["spacing_mm_xyz"] == list(SPACING_XYZ) and own["origin_mm_xyz"] == list(ORIGIN_XYZ)
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["chunks"] == [16, 16, 16] and zarray["dimension_separator"] == "/"
    assert zarray["compressor"]["id"] == "blosc" and zarray["compressor"]["cname"] == "zstd"


def test_pyramid_stops_at_top_size_and_chunks_are_capped():
    levels = pyramid_levels((300, 1000, 513), (0.01, 0.01, 0.01))
    assert [lv.shape_zyx for lv in levels] == [(300, 1000, 513), (150, 500, 257), (75, 250, 129)]
    assert levels[-1].chunks_zyx == (64, 64, 64)
    assert pyramid_levels((3, 200, 5), (1, 1, 1))[0].chunks_zyx == (3, 64, 5)
    assert len(pyramid_levels((256, 256, 256), (1, 1, 1))) == 1


@pytest.mark.parametrize("ngff_version", ["0.4", "0.5"])
def test_readers_open_it(tmp_path, ngff_version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    volume, unit = volumes()["density_g_cc"]
    path = write(tmp_path / "scan.ome.zarr", volume, "density_g_cc", unit, ngff_version=ngff_version)
    fmt = FormatV04() if ngff_version == "0.4" else FormatV05()
    nodes = list(Reader(parse_url(str(path), fmt=fmt))())
    assert nodes and nodes[0].load(Multiscales)
    data = nodes[0].data
    assert [tuple(d.shape) for d in data] == [(37, 50, 61), (19, 25, 31), (10, 13, 16), (5, 7, 8)]
    np.testing.assert_array_equal(np.asarray(data[0]), volume)
    np.testing.assert_array_equal(np.asarray(data[1]), reference_2x(volume, "mean"))
    assert [a["unit"] for a in nodes[0].metadata["axes"]] == ["millimeter"] * 3

    # the NGFF specification's own validators (pydantic models of 0.4 and 0.5)
    group = zarr.open_group(str(path), mode="r")
    if ngff_version == "0.4":
        from ome_zarr_models.v04 import Image
        assert group.metadata.zarr_format == 2
    else:
        from ome_zarr_models.v05 import Image
        assert group.metadata.zarr_format == 3
        assert group.attrs["ome"]["version"] == "0.5"
        assert list(group["0"].metadata.dimension_names) == ["z", "y", "x"]
    Image.from_zarr(group)
    assert group.attrs[ATTRIBUTES_KEY]["ngff_version"] == ngff_version


def test_registered_format_from_spec(tmp_path):
    volume, unit = volumes()["mask"]
    fmt = get_format("ome-zarr")
    spec = VolumeSpec(base_path=tmp_path / "scan_BWmask", shape_zyx=volume.shape, dtype=np.dtype(np.uint8),
                      spacing_mm=SPACING_XYZ, origin_mm=ORIGIN_XYZ, quantity="mask", unit_label="1",
                      description="binary threshold mask", key_values={"ScancoUnits_threshold_native": "1 2"},
                      derivation=("threshold 300..1000 per mille",))
    assert fmt.paths(spec) == [tmp_path / "scan_BWmask.ome.zarr"]
    with AtomicOutputSet() as outputs:
        writer = fmt.open(spec, outputs)
        assert writer.output_paths == fmt.paths(spec)
        for z0 in range(0, volume.shape[0], 5):
            writer.write_slab(volume[z0:z0 + 5])
        assert names(tmp_path) == [writer.temp_path.name]  # hidden until the set commits
    assert names(tmp_path) == ["scan_BWmask.ome.zarr"]
    group = zarr.open_group(str(tmp_path / "scan_BWmask.ome.zarr"), mode="r")
    own = group.attrs[ATTRIBUTES_KEY]
    assert own["downsampling"] == "max" and own["provenance"]["derivation"] == ["threshold 300..1000 per mille"]
    assert group.attrs["multiscales"][0]["type"] == "local_max"
    assert list(group.array_keys()) == ["0"]  # every side <= 256: a single level by default
    np.testing.assert_array_equal(group["0"][:], volume)


def test_abort_leaves_nothing(tmp_path):
    volume, unit = volumes()["hu"]
    with pytest.raises(RuntimeError, match="engine failed"):
        with OmeZarrVolumeWriter(tmp_path / "scan.ome.zarr", volume.shape, volume.dtype, spacing_mm=SPACING_XYZ,
                                 quantity="hu", chunk_size=8, pyramid_top_size=8) as writer:
            writer.write_slab(volume[:20])  # several chunk rows are on disk already
            assert any(writer.temp_path.rglob("*/0/0"))
            raise RuntimeError("engine failed")
    assert names(tmp_path) == [] and live_partials() == []

    writer = OmeZarrVolumeWriter(tmp_path / "scan.ome.zarr", volume.shape, volume.dtype, spacing_mm=SPACING_XYZ)
    writer.write_slab(volume[:10])
    with pytest.raises(ValueError, match="only 10 of 37 slices"):
        writer.close()
    assert names(tmp_path) == []

    writer = OmeZarrVolumeWriter(tmp_path / "scan.ome.zarr", volume.shape, volume.dtype, spacing_mm=SPACING_XYZ)
    with pytest.raises(ValueError, match="voxel type float32"):
        writer.write_slab(volume[:2].astype(np.float32))
    writer.abort()
    assert names(tmp_path) == []


def test_existing_output_and_overwrite(tmp_path):
    volume, unit = volumes()["hu"]
    write(tmp_path / "scan.ome.zarr", volume, "hu", unit)
    with pytest.raises(OutputExistsError, match="scan.ome.zarr"):
        write(tmp_path / "scan.ome.zarr", volume[:5], "hu", unit)
    write(tmp_path / "scan.ome.zarr", volume[:5], "hu", unit, overwrite=True)
    assert names(tmp_path) == ["scan.ome.zarr"]
    assert zarr.open_group(str(tmp_path / "scan.ome.zarr"), mode="r")["0"].shape == (5, 50, 61)


def test_missing_zarr_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr -> ImportError
    with pytest.raises(OmeZarrUnavailableError, match=r"scanco-units\[zarr\]"):
        OmeZarrVolumeWriter(tmp_path / "scan.ome.zarr", (2, 3, 4), np.int16, spacing_mm=(1, 1, 1))
    assert names(tmp_path) == []


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"must end with \.ome\.zarr"):
        OmeZarrVolumeWriter(tmp_path / "scan.zarr", (2, 3, 4), np.int16, spacing_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="ngff_version"):
        OmeZarrVolumeWriter(tmp_path / "scan.ome.zarr", (2, 3, 4), np.int16, spacing_mm=(1, 1, 1),
                            ngff_version="0.3")
    assert names(tmp_path) == []


def _peak_bytes(path, nz: int, n: int = 256) -> int:
    """Peak traced memory while streaming an (nz, n, n) float32 volume in 4-slice slabs."""
    yy, xx = np.mgrid[0:n, 0:n]
    base = (yy * 0.5 + xx).astype(np.float32)
    del yy, xx
    tracemalloc.start()
    try:
        with OmeZarrVolumeWriter(path, (nz, n, n), np.float32, spacing_mm=(0.01, 0.01, 0.01),
                                 quantity="density_g_cc", pyramid_top_size=64) as writer:
            for z0 in range(0, nz, 4):
                writer.write_slab(base[None] + np.arange(z0, z0 + 4, dtype=np.float32)[:, None, None])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_flat(tmp_path):
    # a 256^3 float32 volume (64 MiB) goes through 64^3 chunks and a 3-level pyramid
    volume_bytes = 256 ** 3 * 4
    peak_half = _peak_bytes(tmp_path / "half.ome.zarr", 128)
    peak_full = _peak_bytes(tmp_path / "full.ome.zarr", 256)
    # what is held: one z-chunk-row per level (16 + 4 + 1 MiB) plus one band being encoded
    assert peak_full < 0.6 * volume_bytes, peak_full
    assert peak_full < 1.15 * peak_half + (1 << 20), (peak_half, peak_full)
    group = zarr.open_group(str(tmp_path / "full.ome.zarr"), mode="r")
    assert [group[k].shape for k in ("0", "1", "2")] == [(256, 256, 256), (128, 128, 128), (64, 64, 64)]
    assert float(group["0"][255, 3, 5]) == 255 + 1.5 + 5


def test_real_aim_hu_through_the_seam(tmp_path, real_data):
    """A real calibrated AIM, converted to HU slab by slab, through the registered format's spec."""
    from ScancoUnitsLib.formats.reader import iter_slabs, read_header, read_volume
    from ScancoUnitsLib.core.units import UnitConverter

    header = read_header(real_data / "CALLUS_1237.AIM")
    converter = UnitConverter(header.calibration, path=header.path)
    dtype = converter.output_dtype("hu")
    x, y, z = header.dimensions
    spec = VolumeSpec(base_path=tmp_path / "CALLUS_1237_HU", shape_zyx=(z, y, x), dtype=dtype,
                      spacing_mm=header.voxel_size_mm, origin_mm=header.origin_mm, quantity="hu",
                      unit_label="HU", description="Hounsfield units", source=header,
                      key_values={"ScancoUnits_unit": "HU"})
    with AtomicOutputSet() as outputs:
        writer = OmeZarrVolumeWriter.from_spec(spec, outputs, pyramid_top_size=16, chunk_size=16)
        for native in iter_slabs(header, slices=5):
            writer.write_slab(converter.convert(native, "hu"))
    expected = converter.convert(read_volume(header), "hu")
    group = zarr.open_group(str(tmp_path / "CALLUS_1237_HU.ome.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][:], expected)
    np.testing.assert_array_equal(group["1"][:], reference_2x(expected, "mean"))
    own = group.attrs[ATTRIBUTES_KEY]
    assert own["calibration"] == header.calibration.to_dict()
    assert own["provenance"]["source_file"] == str(header.path)
    assert own["provenance"]["processing_log"] == header.processing_log
    first = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert first[1]["translation"] == list(reversed(header.origin_mm))
    assert first[0]["scale"] == list(reversed(header.voxel_size_mm))


@pytest.mark.parametrize("failure, failing", [("disk full", "chunk"), ("interrupt", "chunk"),
                                              ("disk full", "metadata")])
def test_failure_during_a_write_waits_for_the_others_then_removes_all(tmp_path, monkeypatch, failure, failing):
    """One chunk write fails while others are in flight: they finish before the tree is removed, so no
    late write recreates the temporary directory."""
    import asyncio
    import errno
    import itertools
    import time

    from zarr.storage import LocalStore

    from ScancoUnitsLib.io.transaction import OutputError

    calls = itertools.count()
    original = LocalStore.set

    async def slow_failing_set(self, key, value):
        if failing == "chunk" and key.count("/") == 3:
            failing_now = next(calls) == 6  # the 7th chunk: level 0, second chunk row
        else:
            failing_now = failing == "metadata" and key.endswith("0/.zarray")
        if failing_now:
            if failure == "interrupt":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")
        await asyncio.sleep(0.05)  # still in flight when the failure is raised
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", slow_failing_set)
    volume, unit = volumes()["hu"]
    expected = KeyboardInterrupt if failure == "interrupt" else OutputError
    with pytest.raises(expected) as caught:
        write(tmp_path / "scan.ome.zarr", volume, "hu", unit, chunk_size=8)
    if failure == "disk full":
        assert "scan.ome.zarr: cannot write output: No space left on device" in str(caught.value)
    time.sleep(0.2)
    assert names(tmp_path) == [] and live_partials() == []


def test_works_where_an_event_loop_runs_already(tmp_path):
    """Jupyter runs an asyncio loop in the main thread: the writer then runs its own loop in a helper."""
    import asyncio

    volume, unit = volumes()["hu"]

    async def cell():
        return write(tmp_path / "scan.ome.zarr", volume, "hu", unit)

    path = asyncio.run(cell())
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][:], volume)
    assert names(tmp_path) == ["scan.ome.zarr"]


def test_failure_in_a_shared_set_marks_the_set_failed_and_its_owner_removes_everything(tmp_path):
    volume, unit = volumes()["hu"]
    outputs = AtomicOutputSet()
    outputs.add(tmp_path / "scan.nrrd").write(b"another writer's file")
    writer = OmeZarrVolumeWriter(tmp_path / "scan.ome.zarr", volume.shape, volume.dtype, spacing_mm=SPACING_XYZ,
                                 atomic=outputs)
    writer.write_slab(volume[:10])
    with pytest.raises(ValueError, match="only 10 of 37 slices"):
        writer.close()
    assert writer.temp_path.is_dir()  # other writers may still run: the owner aborts
    with pytest.raises(RuntimeError, match="only 10 of 37 slices"):
        outputs.commit()
    assert names(tmp_path) == [] and live_partials() == []


def test_conversion_with_both_formats_writes_the_same_voxels(tmp_path, real_data):
    """The engine (convert --format nrrd,ome-zarr): every OME-Zarr level 0 equals its NRRD."""
    nrrd = pytest.importorskip("nrrd")
    from ScancoUnitsLib.pipeline.convert import convert_file
    from ScancoUnitsLib.core.thresholds import ThresholdSpec

    convert_file(real_data / "CALLUS_1237.AIM", tmp_path, formats=("nrrd", "ome-zarr"),
                 outputs=("hu", "density", "mask", "native"), thresholds=ThresholdSpec(100, 200))
    stores = sorted(p.name for p in tmp_path.glob("*.ome.zarr"))
    assert stores == ["CALLUS_1237_BWmask.ome.zarr", "CALLUS_1237_HU.ome.zarr", "CALLUS_1237_RHO.ome.zarr",
                      "CALLUS_1237_native.ome.zarr"]
    for name in stores:
        data, header = nrrd.read(str(tmp_path / name.replace(".ome.zarr", ".nrrd")), index_order="C")
        group = zarr.open_group(str(tmp_path / name), mode="r")
        np.testing.assert_array_equal(group["0"][:], data, err_msg=name)
        translation = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]
        assert translation["translation"] == list(reversed(header["space origin"].tolist()))
    mask = zarr.open_group(str(tmp_path / "CALLUS_1237_BWmask.ome.zarr"), mode="r")
    assert mask.attrs[ATTRIBUTES_KEY]["downsampling"] == "max" and mask["0"][:].max() == 1
