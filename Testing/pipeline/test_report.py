"""QC report: the streamed histogram (exact integer bins), the mid-planes, the PNG, and the missing extra."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nrrd
import numpy as np
import pytest

from ScancoUnitsLib.formats.aim.format import write_aim
from ScancoUnitsLib.pipeline.convert import ConversionRequest, convert_file, convert_header
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.pipeline.histogram import MAX_ADAPTIVE_BINS, NativeHistogram, histogram_of_file
from ScancoUnitsLib.formats.isq import write_isq
from ScancoUnitsLib.phantom import PHANTOM_CALIBRATION, write_phantom_isq
from ScancoUnitsLib.formats.reader import read_header, read_volume
from ScancoUnitsLib.core.thresholds import ThresholdSpec, resolve_thresholds

pytest.importorskip("matplotlib")

from ScancoUnitsLib.pipeline.report import REPORT_SIZE_PX, ReportBuilder, ReportUnavailableError  # noqa: E402

SHAPE = (32, 96, 96)


def png_size(data: bytes):
    """(width, height) from the PNG signature and IHDR chunk, checked with its CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(kind + body) == crc
    width, height = struct.unpack(">II", body[:8])
    return width, height


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    path = folder / "PHANTOM.ISQ"
    write_phantom_isq(path, shape_zyx=SHAPE)
    return path


@pytest.fixture(scope="module")
def converted(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    outputs = convert_file(phantom, out, report=True, slab_slices=5)  # slabs that do not divide 32
    return outputs


# ---- NativeHistogram ------------------------------------------------------------------------------
def test_int16_histogram_counts_every_value_exactly():
    rng = np.random.default_rng(7)
    volume = rng.integers(-32768, 32768, size=(7, 33, 41), dtype=np.int16)
    volume.flat[:4] = (-32768, 32767, 0, -1)
    hist = NativeHistogram("int16")
    for z0 in range(0, 7, 3):
        hist.accumulate(volume[z0:z0 + 3])
    values, counts = hist.values_and_counts()
    expected_values, expected_counts = np.unique(volume, return_counts=True)
    nonzero = counts > 0
    np.testing.assert_array_equal(values[nonzero], expected_values.astype(np.float64))
    np.testing.assert_array_equal(counts[nonzero], expected_counts)
    assert hist.total == volume.size and hist.exact
    assert (hist.min_value, hist.max_value) == (-32768.0, 32767.0)
    for low, high in ((-32768, 32767), (8192, 32767), (-5, 5), (100, 99), (-40000, -32768), (32767, 40000)):
        assert hist.counts_between(low, high) == np.count_nonzero((volume >= low) & (volume <= high))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "uint16"])
def test_small_integer_histograms_are_exact(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    volume = rng.integers(info.min, int(info.max) + 1, size=(4, 20, 30)).astype(dtype)
    volume.flat[0], volume.flat[1] = info.min, info.max
    hist = NativeHistogram.of(volume)
    assert hist.min_value == info.min and hist.max_value == info.max
    mid = (int(info.min) + int(info.max)) // 2
    assert hist.counts_between(mid, info.max) == np.count_nonzero(volume >= mid)


def test_rebinned_puts_each_value_in_one_bin():
    rng = np.random.default_rng(2)
    volume = rng.normal(3000, 2500, size=(6, 50, 50)).astype(np.int16)
    hist = NativeHistogram.of(volume)
    edges, counts = hist.rebinned(512)
    assert counts.size <= 512 and counts.sum() == volume.size
    assert np.all(edges % 1 == 0.5)  # half-integer edges: no value sits on an edge
    reference, _ = np.histogram(volume, bins=edges)
    np.testing.assert_array_equal(counts, reference)
    # a sub-range keeps only the values inside it
    edges, counts = hist.rebinned(100, low=0, high=4000)
    assert counts.sum() == np.count_nonzero((volume >= 0) & (volume <= 4000))


def test_float_histogram_grows_its_bins_and_skips_nan():
    rng = np.random.default_rng(3)
    hist = NativeHistogram("float32")
    slabs = [np.zeros((2, 10, 10), np.float32),                      # one value first: fine bins
             (rng.random((2, 10, 10)) * 1.2).astype(np.float32),
             (rng.random((2, 10, 10)) * 5000 - 100).astype(np.float32)]  # much wider: bins merge
    slabs[1][0, 0, 0] = np.nan
    slabs[2][0, 0, 0] = np.inf
    for slab in slabs:
        hist.accumulate(slab)
    everything = np.concatenate([s.ravel() for s in slabs]).astype(np.float64)
    finite = everything[np.isfinite(everything)]
    assert hist.total == everything.size and hist.nonfinite == 2
    assert hist.counts.sum() == finite.size and hist.counts.size <= MAX_ADAPTIVE_BINS
    width = hist.bin_width
    assert width == 2.0 ** round(np.log2(width))  # a power of two
    lows, counts = hist.values_and_counts()
    reference, _ = np.histogram(finite, bins=np.append(lows, lows[-1] + width))
    np.testing.assert_array_equal(counts, reference)
    assert hist.min_value <= finite.min() < hist.min_value + width
    assert hist.max_value - width <= finite.max() < hist.max_value


def test_histogram_refuses_mismatched_slabs():
    with pytest.raises(ValueError, match="does not fit"):
        NativeHistogram("int16").accumulate(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="integer or float"):
        NativeHistogram("bool")


def test_histogram_of_file_matches_the_volume(phantom):
    volume = read_volume(phantom)
    hist = histogram_of_file(phantom, slices=7)
    assert hist.total == volume.size
    assert hist.counts_between(8192, 32767) == np.count_nonzero(volume >= 8192)


# ---- the report of a conversion -------------------------------------------------------------------
def test_report_png_exists_with_the_expected_size(converted):
    path = converted["report"]
    assert path.name == "PHANTOM_report.png" and path.parent == converted["hu"].parent
    assert png_size(path.read_bytes()) == REPORT_SIZE_PX == (1600, 1000)


def test_histogram_between_thresholds_equals_the_mask_voxels(phantom, converted):
    metadata = json.loads(converted["metadata"].read_text())
    mask, _ = nrrd.read(str(converted["mask"]))
    mask_voxels = int(np.count_nonzero(mask))
    assert metadata["mask_voxels"] == mask_voxels > 0

    header = read_header(phantom)
    options = ConversionRequest(slab_slices=5)
    resolved = resolve_thresholds(options.thresholds, header.calibration)
    builder = ReportBuilder(header, options, resolved)
    convert_header(header, phantom.parent / "again", options, observers=[builder.observe])
    assert builder.threshold_counts() == mask_voxels
    assert builder.histogram.total == int(np.prod(SHAPE))
    volume = read_volume(phantom)  # independent reference: the thresholds on the raw volume
    low, high = metadata["thresholds"]["native"]
    assert np.count_nonzero((volume >= low) & (volume <= high)) == mask_voxels


def test_mid_planes_hold_the_written_density_and_mask(phantom, converted):
    volume = read_volume(phantom).astype(np.float64)
    density, _ = nrrd.read(str(converted["density"]), index_order="C")
    mask, _ = nrrd.read(str(converted["mask"]), index_order="C")
    header = read_header(phantom)
    options = ConversionRequest()
    builder = ReportBuilder(header, options, resolve_thresholds(options.thresholds, header.calibration))
    for z0 in reversed(range(0, SHAPE[0], 6)):  # any slab order works
        builder.observe(z0, read_volume(phantom)[z0:z0 + 6])
    assert builder.quantity == "density_g_cc"
    zm, ym, xm = builder.mid_zyx
    c = PHANTOM_CALIBRATION
    expected_density = ((volume / c.mu_scaling) * c.density_slope + c.density_intercept) / 1000.0
    planes = builder.planes()
    for (name, values, plane_mask, _), index in zip(planes, (np.s_[zm], np.s_[:, ym], np.s_[:, :, xm])):
        np.testing.assert_allclose(values, expected_density[index], rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(values, density[index], atol=1e-6)  # the float32 output
        np.testing.assert_array_equal(plane_mask, mask[index], err_msg=name)


def test_threshold_lines_are_drawn_at_the_mask_integers(phantom):
    header = read_header(phantom)
    spec = ThresholdSpec(2500, 4000, "hu")  # both thresholds inside the data: two dashed lines
    options = ConversionRequest(thresholds=spec)
    resolved = resolve_thresholds(spec, header.calibration)
    builder = ReportBuilder(header, options, resolved)
    builder.observe(0, read_volume(phantom))
    fig = builder.figure({})
    verticals = sorted({line.get_xdata()[0] for ax in fig.axes for line in ax.get_lines()
                        if line.get_linestyle() == "--"})
    assert verticals == [resolved.native_low, resolved.native_high]
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    for value in (f"native {resolved.native_low}", f"{resolved.values['hu'][0]:.0f} HU",
                  f"{resolved.values['permille'][1]:.1f} ‰",
                  f"{resolved.values['density_mg_ha_ccm'][0]:.0f} mg HA/ccm"):
        assert value in texts
    assert f"{builder.threshold_counts():,}" in texts


def test_slices_use_hu_when_density_was_not_asked_for(phantom, tmp_path):
    outputs = convert_file(phantom, tmp_path, outputs=("hu", "mask"), report=True)
    assert png_size(outputs["report"].read_bytes()) == REPORT_SIZE_PX
    builder = ReportBuilder(read_header(phantom), ConversionRequest(outputs=("hu", "mask")), None)
    assert builder.quantity == "hu" and builder.quantity_label() == "HU [HU]"


def test_uncalibrated_file_shows_native_values(tmp_path):
    volume = np.random.default_rng(4).integers(0, 12000, size=(5, 20, 24), dtype=np.int16)
    path = tmp_path / "NOCAL.ISQ"
    write_isq(path, volume, voxel_size_mm=(0.05, 0.05, 0.05), calibration=Calibration(mu_scaling=1))
    outputs = convert_file(path, tmp_path / "out", outputs=("native", "mask"), report=True)
    assert png_size(outputs["report"].read_bytes()) == REPORT_SIZE_PX
    header = read_header(path)
    builder = ReportBuilder(header, ConversionRequest(outputs=("native", "mask")), None)
    assert builder.quantity == "native"


@pytest.mark.parametrize("kind", ["char", "float"])
def test_char_and_float_aims_get_a_report(tmp_path, kind):
    rng = np.random.default_rng(5)
    if kind == "char":
        volume = np.where(rng.random((6, 30, 40)) > 0.7, 127, 0).astype(np.int8)
        path = write_aim(tmp_path / "MASK.AIM", volume, voxel_size_mm=(0.082,) * 3, compression="binCmp")
    else:
        volume = (rng.random((6, 30, 40)) * 1.2).astype(np.float32)
        path = write_aim(tmp_path / "BMD.AIM", volume, version=30, voxel_size_mm=(0.06,) * 3)
    outputs = convert_file(path, tmp_path / "out", report=True)
    assert png_size(outputs["report"].read_bytes()) == REPORT_SIZE_PX
    header = read_header(path)
    builder = ReportBuilder(header, ConversionRequest(), None)
    builder.observe(0, read_volume(path))
    assert builder.quantity == kind
    if kind == "char":  # the outline is the char mask itself
        assert builder.histogram.total - builder.histogram.counts_between(0, 0) == np.count_nonzero(volume)
        np.testing.assert_array_equal(builder.planes()[0][2], volume[3] != 0)
    else:
        assert builder.planes()[0][2] is None
        np.testing.assert_array_equal(builder.planes()[0][1], volume[3].astype(np.float64))


def test_save_writes_a_png_to_a_file_object(phantom):
    header = read_header(phantom)
    builder = ReportBuilder(header, None, None)
    builder.observe(0, read_volume(phantom)[:20])  # slices not seen stay black; still a picture
    buffer = io.BytesIO()
    builder.save(buffer, None)
    assert png_size(buffer.getvalue()) == REPORT_SIZE_PX


def test_observe_refuses_a_slab_that_does_not_fit(phantom):
    builder = ReportBuilder(read_header(phantom), None, None)
    with pytest.raises(ValueError, match="does not fit"):
        builder.observe(30, np.zeros((5, 96, 96), np.int16))
    with pytest.raises(ValueError, match="does not fit"):
        builder.observe(0, np.zeros((5, 96, 95), np.int16))


def test_missing_matplotlib_names_the_extra_and_writes_nothing(phantom, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import of these now raises ImportError
    with pytest.raises(ReportUnavailableError, match=r"pip install scanco-units\[report\]") as caught:
        convert_file(phantom, tmp_path, report=True)
    assert isinstance(caught.value, ImportError)
    assert list(tmp_path.iterdir()) == []


def test_report_never_imports_pyplot_and_package_import_stays_light(phantom, tmp_path):
    code = (
        "import sys\n"
        "import ScancoUnitsLib.pipeline.report, ScancoUnitsLib.pipeline.convert\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at package import'\n"
        f"ScancoUnitsLib.pipeline.convert.convert_file({str(phantom)!r}, {str(tmp_path)!r}, report=True)\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)
    assert (tmp_path / "PHANTOM_report.png").exists()


def test_real_calibrated_aim_report(real_data, tmp_path):
    outputs = convert_file(real_data / "CALLUS_1237.AIM", tmp_path, report=True)
    assert png_size(outputs["report"].read_bytes()) == REPORT_SIZE_PX
    metadata = json.loads(outputs["metadata"].read_text())
    header = read_header(real_data / "CALLUS_1237.AIM")
    hist = histogram_of_file(header)
    low, high = metadata["thresholds"]["native"]
    assert hist.counts_between(low, high) == metadata["mask_voxels"]
    assert (hist.min_value, hist.max_value) == (112.0, 7875.0)  # the README's AimIO facts


def test_hu_slices_hold_the_int16_hu_output(phantom, tmp_path):
    outputs = convert_file(phantom, tmp_path, outputs=("hu",), report=True)
    hu, _ = nrrd.read(str(outputs["hu"]), index_order="C")
    builder = ReportBuilder(read_header(phantom), ConversionRequest(outputs=("hu",)), None)
    builder.observe(0, read_volume(phantom))
    zm = builder.mid_zyx[0]
    np.testing.assert_array_equal(builder.planes()[0][1], hu[zm].astype(np.float64))


# ---- issue 20: the report shows what was written, and its texts do not run into each other -------
def _figure_of_conversion(path, out_dir, **options):
    """Convert with a report; the builder's figure drawn again from the written metadata."""
    outputs = convert_file(path, out_dir, report=True, **options)
    metadata = json.loads(outputs["metadata"].read_text())
    header = read_header(path)
    request = ConversionRequest(**options)
    from ScancoUnitsLib.pipeline.request import plan_request

    builder = ReportBuilder(header, request, plan_request(header, request).thresholds)
    builder.observe(0, read_volume(path))
    return builder, builder.figure(metadata), outputs


def _overlapping_texts(fig):
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts if t.get_text().strip()]
    return [(a[:40], b[:40]) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if box_a.overlaps(box_b)]


@pytest.mark.parametrize("name", ["CALLUS_1237.AIM", "TRAB_1240_SEG.AIM", "DB_07_DNN_DR_T1_TRAB_MASK.AIM",
                                  "test_isq_calibrated_binary_25.ISQ"])
def test_header_line_does_not_run_into_the_slices_label(real_data, tmp_path, name):
    """The header line (up to 175 characters) ran into the right-aligned 'slices:' label (the mask AIMs:
    'slices: char mask as stored')."""
    builder, fig, _ = _figure_of_conversion(real_data / name, tmp_path)
    assert any(t.get_text().startswith("slices: ") for t in fig.texts)
    assert _overlapping_texts(fig) == []


def test_footer_lists_every_written_file_in_every_format(real_data, tmp_path):
    builder, fig, outputs = _figure_of_conversion(real_data / "CALLUS_1237.AIM", tmp_path, formats=("nrrd", "aim"),
                                                  thresholds=(120, 1000))
    [footer] = [t.get_text() for t in fig.texts if "outputs" in t.get_text()]
    assert "outputs (CALLUS_1237_*): HU.nrrd, RHO.nrrd, BWmask.nrrd, BWmask.AIM" in footer
    assert outputs["mask_aim"].name == "CALLUS_1237_BWmask.AIM"


@pytest.mark.parametrize("outputs, shown", [(None, "density"), (("hu", "mask"), "hu"), (("mu",), "mu"),
                                            (("native", "mask"), "native"), (("native",), "native")])
def test_slices_show_what_was_written(phantom, outputs, shown):
    """README: density, or HU, µ or native values when density was not asked for; native,mask showed
    density, which was not written."""
    builder = ReportBuilder(read_header(phantom), ConversionRequest(outputs=outputs), None)
    assert builder.quantity == (("density_g_cc") if shown == "density" else shown)


# ---- issue 23: each region outlined in the slices beside the mask -------------------------------
REGION_CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2366, density_slope=1662.52405,
                         density_intercept=-398.609009, density_unit="mg HA/ccm")
REGION_SIZE = (0.06, 0.06, 0.06)
REGION_SCAN_POS = (1300, 960, 64)
REGION_SCAN_SHAPE = (24, 60, 70)  # mid-planes z 12, y 30, x 35
#: (offset x y z from the scan, mask shape z y x): TRAB crosses all three mid-planes (its slices -3..-1
#: fall outside the scan), FLOOR fills slices 0..2 (not the axial plane), NOWHERE meets none of the planes
REGION_BOXES = {"TRAB": ((10, 12, -3), (20, 30, 36)), "FLOOR": ((0, 0, 0), (3, 60, 70)),
                "NOWHERE": ((50, 40, 0), (3, 12, 14))}


def _region_masks():
    z, y, x = np.mgrid[:20, :30, :36]
    trab = ((z - 10) / 9.0) ** 2 + ((y - 18) / 9.0) ** 2 + ((x - 25) / 11.0) ** 2 <= 1.0
    return {"TRAB": trab, "FLOOR": np.ones(REGION_BOXES["FLOOR"][1], bool),
            "NOWHERE": np.ones(REGION_BOXES["NOWHERE"][1], bool)}


def _on_scan(mask, offset_xyz):
    """Independent placement: the region on the scan grid by index arithmetic (the part outside dropped)."""
    out = np.zeros(REGION_SCAN_SHAPE, dtype=np.float64)
    zz, yy, xx = np.nonzero(mask)
    z, y, x = zz + offset_xyz[2], yy + offset_xyz[1], xx + offset_xyz[0]
    inside = (z >= 0) & (z < out.shape[0]) & (y >= 0) & (y < out.shape[1]) & (x >= 0) & (x < out.shape[2])
    out[z[inside], y[inside], x[inside]] = 1.0
    return out


@pytest.fixture(scope="module")
def region_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regions")
    z, y, x = np.mgrid[:24, :60, :70]
    noise = np.random.default_rng(11).integers(-300, 300, size=REGION_SCAN_SHAPE)
    volume = (np.where((x - 35) ** 2 + (y - 30) ** 2 < 22 ** 2, 5200, 400) + noise).astype(np.int16)
    scan = write_aim(folder / "R1.AIM", volume, version=20, voxel_size_mm=REGION_SIZE,
                     position_voxels=REGION_SCAN_POS, calibration=REGION_CAL)
    paths = {}
    for name, mask in _region_masks().items():
        offset = REGION_BOXES[name][0]
        paths[name] = write_aim(folder / f"R1_{name}_MASK.AIM", (mask * 127).astype(np.int8), version=20,
                                voxel_size_mm=REGION_SIZE, compression="binCmp",
                                position_voxels=tuple(p + o for p, o in zip(REGION_SCAN_POS, offset)))
    return scan, paths


def _region_builder(scan, paths, names, slabs=5, reverse=False):
    from ScancoUnitsLib.formats.regions import read_region

    header = read_header(scan)
    request = ConversionRequest(thresholds=(100, 1000))
    regions = tuple(read_region(paths[n], like=header, name=n) for n in names)
    builder = ReportBuilder(header, request, resolve_thresholds(request.thresholds, header.calibration),
                            regions=regions)
    volume = read_volume(scan)
    starts = list(range(0, volume.shape[0], slabs))
    for z0 in reversed(starts) if reverse else starts:
        builder.observe(z0, volume[z0:z0 + slabs])
    return builder


def _contour_colours(ax):
    from matplotlib.colors import to_hex
    from matplotlib.contour import ContourSet

    return {to_hex(c.get_edgecolor()[0]) for c in ax.collections if isinstance(c, ContourSet)}


def _cool(rgba):
    """Pixels of the region colours: blue or green above red (the slices are grey, the mask orange)."""
    return np.maximum(rgba[..., 1], rgba[..., 2]) - rgba[..., 0] > 0.2


@pytest.mark.parametrize("slabs, reverse", [(5, False), (7, True), (24, False)])
def test_region_planes_equal_the_full_region_mask_at_the_mid_planes(region_study, slabs, reverse):
    scan, paths = region_study
    builder = _region_builder(scan, paths, list(REGION_BOXES), slabs=slabs, reverse=reverse)
    zm, ym, xm = builder.mid_zyx
    assert builder.mid_zyx == (12, 30, 35)
    kept = builder.region_planes()
    assert list(kept) == list(REGION_BOXES)
    for name, mask in _region_masks().items():
        full = _on_scan(mask, REGION_BOXES[name][0])
        for plane, index in zip(kept[name], (np.s_[zm], np.s_[:, ym], np.s_[:, :, xm])):
            assert plane.dtype == np.uint8
            np.testing.assert_array_equal(plane.astype(np.float64), full[index], err_msg=name)
    assert kept["TRAB"][0].any() and kept["TRAB"][1].any() and kept["TRAB"][2].any()
    assert not kept["FLOOR"][0].any() and kept["FLOOR"][1][:3].all() and not kept["FLOOR"][1][3:].any()
    assert not any(p.any() for p in kept["NOWHERE"])


def test_cli_report_outlines_each_region_with_its_name_and_numbers(region_study, tmp_path, capsys):
    from matplotlib.image import imread
    from cli_harness import run_cli
    from ScancoUnitsLib.pipeline.report_regions import region_colour

    scan, paths = region_study
    names = list(REGION_BOXES)
    rois = [a for n in names for a in ("--roi", f"{n}={paths[n]}")]
    status, _, err = run_cli(capsys, "convert", scan, "-o", tmp_path / "with", "--report", "--low", "100", *rois)
    assert status == 0, err
    status, _, err = run_cli(capsys, "convert", scan, "-o", tmp_path / "without", "--report", "--low", "100")
    assert status == 0, err
    with_png = imread(str(tmp_path / "with" / "R1_report.png"))
    without_png = imread(str(tmp_path / "without" / "R1_report.png"))
    assert with_png.shape == without_png.shape == (1000, 1600, 4)

    # the builder fed as the conversion feeds it draws the picture the CLI wrote
    metadata = json.loads((tmp_path / "with" / "R1_metadata.json").read_text())
    builder = _region_builder(scan, paths, names)
    buffer = io.BytesIO()
    builder.save(buffer, metadata)
    buffer.seek(0)
    np.testing.assert_array_equal(imread(buffer), with_png)

    fig = builder.figure(metadata)
    fig.canvas.draw()
    axial, coronal, sagittal = fig.axes[:3]
    colours = [region_colour(k) for k in range(3)]
    assert _contour_colours(axial) == {"#ff8c00", colours[0]}  # mask and TRAB; FLOOR and NOWHERE miss it
    assert _contour_colours(coronal) == _contour_colours(sagittal) == {"#ff8c00", colours[0], colours[1]}
    assert len(set(colours) | {"#ff8c00"}) == 4

    # the legend names every region; the column has each region's numbers from the metadata
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "region TRAB" in labels and "region FLOOR" in labels
    assert "region NOWHERE (not in these slices)" in labels
    texts = "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)
    for name in names:
        values = metadata["regions"]["regions"][name]
        row = [line for line in texts.splitlines() if line.startswith(name + " ")]
        assert row == [f"{name:11s}{values['vbmd_mg_ha_ccm']:>8.1f}{values['bv_tv']:>8.4f}"
                       f"{values['tmd_mg_ha_ccm']:>8.1f}"], name

    # TRAB's left edge on the axial slice, at the middle row of the region: the PNG differs there (a
    # region colour), not inside the region away from its outline, and has no region colour without regions
    zm = builder.mid_zyx[0]
    plane = _on_scan(_region_masks()["TRAB"], REGION_BOXES["TRAB"][0])[zm]
    rows = np.flatnonzero(plane.any(axis=1))
    row = int(rows[len(rows) // 2])
    cols = np.flatnonzero(plane[row])
    sx, sy, _ = builder.header.voxel_size_mm

    def pixel(x_mm, y_mm):
        px, py = axial.transData.transform((x_mm, y_mm))
        return 1000 - int(round(py)), int(round(px))

    r, c = pixel(cols[0] * sx, (row + 0.5) * sy)
    window = np.s_[r - 2:r + 3, c - 2:c + 3]
    assert _cool(with_png[window]).any() and not _cool(without_png[window]).any()
    assert not np.array_equal(with_png[window], without_png[window])
    r, c = pixel((cols[0] + cols[-1] + 1) / 2 * sx, (row + 0.5) * sy)  # the region's middle
    np.testing.assert_array_equal(with_png[r - 2:r + 3, c - 2:c + 3], without_png[r - 2:r + 3, c - 2:c + 3])
    for ax in (axial, coronal, sagittal):
        x0, y0, x1, y1 = ax.get_window_extent().extents
        area = np.s_[1000 - int(y1):1000 - int(y0), int(x0):int(x1)]
        assert not _cool(without_png[area]).any()
        assert _cool(with_png[area]).any()


def test_a_region_missing_every_plane_draws_nothing_and_the_report_is_written(region_study):
    scan, paths = region_study
    builder = _region_builder(scan, paths, ["NOWHERE"])
    fig = builder.figure({})
    fig.canvas.draw()
    assert all(_contour_colours(ax) <= {"#ff8c00"} for ax in fig.axes[:3])
    buffer = io.BytesIO()
    builder.save(buffer, {})  # no region numbers in the metadata: the column shows "–"
    assert png_size(buffer.getvalue()) == REPORT_SIZE_PX
    texts = [line for ax in fig.axes for t in ax.texts for line in t.get_text().splitlines()]
    assert f"{'NOWHERE':11s}{'–':>8s}{'–':>8s}{'–':>8s}" in texts


def test_a_region_on_another_grid_is_refused(region_study, phantom):
    from ScancoUnitsLib.formats.regions import read_region

    scan, paths = region_study
    region = read_region(paths["TRAB"], like=read_header(scan), name="TRAB")
    with pytest.raises(ValueError, match="region TRAB is placed on a grid of shape"):
        ReportBuilder(read_header(phantom), None, None, regions=(region,))
