"""Regions placed by position (mask AIMs, GOBJ) and their statistics (vBMD, BV/TV, TMD), against a
float64 computation over the whole array (math.fsum) on generated scans and on the real files."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from pathlib import Path

from ScancoUnitsLib import region_statistics, read_region
from ScancoUnitsLib.formats.aim.format import write_aim
from ScancoUnitsLib.errors import RequestError, ScancoFormatError
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.formats.reader import read_header, read_volume
from ScancoUnitsLib.core.thresholds import ThresholdSpec, resolve_thresholds
from ScancoUnitsLib.core.units import UnitConverter

from gobj_files import Contour, gobj_bytes

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2366, density_slope=1662.52405,
                  density_intercept=-398.609009, density_unit="mg HA/ccm")
SIZE = (0.06069965, 0.06069965, 0.06069643)
SCAN_POS = (1300, 960, 64)


def _scan(tmp_path, shape=(20, 30, 40), seed=0, name="scan.AIM", version=20):
    rng = np.random.default_rng(seed)
    volume = rng.integers(-400, 9000, size=shape).astype(np.int16)
    path = tmp_path / name
    write_aim(path, volume, version=version, voxel_size_mm=SIZE, position_voxels=SCAN_POS, calibration=CAL)
    return path, volume


def _mask_aim(tmp_path, name, mask, position, compression=None, value=127, size=SIZE, version=20):
    path = tmp_path / name
    write_aim(path, (mask.astype(np.int8) * value).astype(np.int8), version=version, voxel_size_mm=size,
              position_voxels=position, compression=compression)
    return path


def _on_grid(mask, region_pos, scan_pos, scan_shape):
    """Reference placement by plain index arithmetic: (region on the scan grid, voxels outside)."""
    out = np.zeros(scan_shape, dtype=bool)
    zz, yy, xx = np.nonzero(mask)
    x = xx + region_pos[0] - scan_pos[0]
    y = yy + region_pos[1] - scan_pos[1]
    z = zz + region_pos[2] - scan_pos[2]
    inside = (x >= 0) & (x < scan_shape[2]) & (y >= 0) & (y < scan_shape[1]) & (z >= 0) & (z < scan_shape[0])
    out[z[inside], y[inside], x[inside]] = True
    return out, int((~inside).sum())


def _reference(volume, header, region, mask_range):
    """float64 over the whole array, math.fsum, population SD."""
    density = UnitConverter(header.calibration).native_to(volume, "density_mg_ha_ccm").astype(np.float64)
    bone = (volume >= mask_range[0]) & (volume <= mask_range[1])

    def mean_sd(values):
        if values.size == 0:
            return None, None
        mean = math.fsum(values.tolist()) / values.size
        return mean, math.sqrt(math.fsum(((values - mean) ** 2).tolist()) / values.size)

    vbmd, vbmd_sd = mean_sd(density[region])
    tmd, tmd_sd = mean_sd(density[region & bone])
    n = int(region.sum())
    return {"voxels": n, "bone_voxels": int((region & bone).sum()),
            "bv_tv": (region & bone).sum() / n if n else None,
            "vbmd_mg_ha_ccm": vbmd, "vbmd_sd_mg_ha_ccm": vbmd_sd, "tmd_mg_ha_ccm": tmd, "tmd_sd_mg_ha_ccm": tmd_sd}


def _random_region_with_reference(folder, name, volume, header, shape, seed, offset, low):
    """A random binCmp mask AIM ``name`` at ``offset`` voxels from the scan, and the float64 reference of
    its statistics with thresholds ``low``..1000 per mille: (path, reference, voxels outside)."""
    mask = np.random.default_rng(seed).random(shape) < 0.6
    position = tuple(p + o for p, o in zip(SCAN_POS, offset))
    path = _mask_aim(folder, name, mask, position, compression="binCmp")
    expected_region, outside = _on_grid(mask, position, SCAN_POS, volume.shape)
    resolved = resolve_thresholds(ThresholdSpec(low, 1000), header.calibration)
    return path, _reference(volume, header, expected_region, (resolved.native_low, resolved.native_high)), outside


def _check(result_region, reference, outside):
    assert result_region.outside_voxels == outside
    for key, value in reference.items():
        assert getattr(result_region, key) == value, key


@pytest.mark.parametrize("compression", [None, "binCmp", "charCmp"])
@pytest.mark.parametrize("offset", [(0, 0, 0), (5, 7, 3), (-6, -4, -2), (30, 25, 15), (-10, 20, -5)])
def test_mask_aim_region_statistics_equal_whole_array(tmp_path, offset, compression):
    scan, volume = _scan(tmp_path)
    header = read_header(scan)
    rng = np.random.default_rng(abs(hash(offset)) % 1000)
    mask = rng.random((12, 14, 16)) < 0.6
    position = tuple(p + o for p, o in zip(SCAN_POS, offset))
    region_path = _mask_aim(tmp_path, "r_MASK.AIM", mask, position, compression=compression)
    expected_region, outside = _on_grid(mask, position, SCAN_POS, volume.shape)

    placed = read_region(region_path, like=header, name="TRAB")
    assert placed.offset_voxels == offset
    assert np.array_equal(placed.full_mask().astype(bool), expected_region)
    assert placed.voxels == int(expected_region.sum()) and placed.outside_voxels == outside

    spec = ThresholdSpec(200, 1000)
    resolved = resolve_thresholds(spec, header.calibration)
    result = region_statistics(scan, {"TRAB": region_path}, thresholds=spec, slab_slices=3)
    _check(result["TRAB"], _reference(volume, header, expected_region,
                                      (resolved.native_low, resolved.native_high)), outside)
    assert result["TRAB"].volume_mm3 == placed.voxels * float(np.prod(np.asarray(header.voxel_size_mm, dtype=np.float64)))


def test_gobj_region_on_scan_grid(tmp_path):
    scan, volume = _scan(tmp_path, shape=(12, 40, 50))
    header = read_header(scan)
    x0, y0 = SCAN_POS[0], SCAN_POS[1]
    contour = Contour([(x0 - 5, y0 + 3), (x0 + 30, y0 + 3), (x0 + 30, y0 + 30), (x0 - 5, y0 + 30)])
    hole = Contour([(x0 + 8, y0 + 10), (x0 + 20, y0 + 10), (x0 + 20, y0 + 20), (x0 + 8, y0 + 20)], material=3)
    gobj = tmp_path / "scan.GOBJ"
    # slices 60..69 on the scanner grid: 60..63 fall below the scan's first slice (64)
    gobj.write_bytes(gobj_bytes([(z, [contour, hole]) for z in range(60, 70)],
                                voxel_size_um=tuple(s * 1000 for s in SIZE), dims=(2304, 2304, 168)))
    from ScancoUnitsLib.formats.gobj import read_gobj

    contours = read_gobj(gobj)
    expected_region, outside = _on_grid(contours.mask, contours.position_voxels, SCAN_POS, volume.shape)
    assert outside > 0 and expected_region.any()
    result = region_statistics(header, {"CORT": gobj})
    from ScancoUnitsLib.pipeline.request import DEFAULT_THRESHOLDS

    resolved = resolve_thresholds(DEFAULT_THRESHOLDS, header.calibration)
    _check(result["CORT"], _reference(volume, header, expected_region,
                                      (resolved.native_low, resolved.native_high)), outside)
    assert result["CORT"].kind == "GOBJ"


def test_other_element_size_refused(tmp_path):
    scan, _ = _scan(tmp_path)
    region = _mask_aim(tmp_path, "m.AIM", np.ones((4, 4, 4), bool), SCAN_POS, size=(0.082, 0.082, 0.082))
    with pytest.raises(RequestError, match="element size .* never resampled") as info:
        read_region(region, like=read_header(scan))
    assert "\n" not in str(info.value) and str(region) in str(info.value)


def test_tiny_element_size_difference_refused_far_from_origin(tmp_path):
    """1e-4 relative at index ~1300 moves voxels by 0.13: refused; 1e-6 (VAX float digits) is accepted."""
    scan, _ = _scan(tmp_path)
    header = read_header(scan)
    bad = _mask_aim(tmp_path, "b.AIM", np.ones((4, 4, 4), bool), SCAN_POS, size=tuple(s * (1 + 1e-4) for s in SIZE))
    with pytest.raises(RequestError, match="element size"):
        read_region(bad, like=header)
    good = _mask_aim(tmp_path, "g.AIM", np.ones((4, 4, 4), bool), SCAN_POS, size=tuple(s * (1 + 1e-6) for s in SIZE))
    assert read_region(good, like=header).voxels == 64


def test_no_overlap_refused(tmp_path):
    scan, volume = _scan(tmp_path)
    position = (SCAN_POS[0] + volume.shape[2], SCAN_POS[1], SCAN_POS[2])
    region = _mask_aim(tmp_path, "far.AIM", np.ones((4, 4, 4), bool), position)
    with pytest.raises(RequestError, match="does not overlap"):
        read_region(region, like=read_header(scan))


def test_grey_aim_is_not_a_region(tmp_path):
    scan, _ = _scan(tmp_path)
    other, _ = _scan(tmp_path, name="grey.AIM", seed=3)
    with pytest.raises(RequestError, match="char mask AIM or a GOBJ"):
        read_region(other, like=read_header(scan))


def test_damaged_region_files_refused(tmp_path):
    scan, _ = _scan(tmp_path)
    bad = tmp_path / "bad.GOBJ"
    bad.write_bytes(b"CTDATA-HEADER_V1" + (6).to_bytes(4, "little") + bytes(100))
    with pytest.raises(ScancoFormatError):
        read_region(bad, like=read_header(scan))
    junk = tmp_path / "junk.AIM"
    junk.write_bytes(b"hello")
    with pytest.raises(ScancoFormatError):
        read_region(junk, like=read_header(scan))


def test_region_statistics_v030_and_empty_region(tmp_path):
    scan, volume = _scan(tmp_path, version=30)
    read_header(scan)
    mask = np.zeros((5, 5, 5), bool)
    mask[0, 0, 0] = True
    empty = np.zeros((5, 5, 5), bool)
    a = _mask_aim(tmp_path, "a.AIM", mask, SCAN_POS, version=30, compression="binCmp")
    b = _mask_aim(tmp_path, "e.AIM", empty, SCAN_POS, version=30)
    result = region_statistics(scan, {"ONE": a, "EMPTY": b})
    assert result["ONE"].voxels == 1 and result["ONE"].vbmd_sd_mg_ha_ccm == 0.0
    assert result["EMPTY"].voxels == 0 and result["EMPTY"].vbmd_mg_ha_ccm is None and result["EMPTY"].bv_tv is None
    assert set(result.columns()) >= {"ONE_bv_tv", "EMPTY_tmd_mg_ha_ccm", "ONE_outside_voxels"}


def test_real_trab_mask_and_callus_scan(real_data, tmp_path):
    """CALLUS_1237 (grey, pos (1300, 960, 64), 43x28x32) and TRAB_1240_SEG (mask, pos (1000, 748, 209),
    108x108x126) are from one study but different measurements: their boxes do not overlap
    (z 64..95 against 209..334), and read_region says so."""
    callus = read_header(real_data / "CALLUS_1237.AIM")
    with pytest.raises(RequestError, match="does not overlap"):
        read_region(real_data / "TRAB_1240_SEG.AIM", like=callus)


def test_real_scan_with_generated_region(real_data, tmp_path):
    """A grey/mask pair on the real CALLUS_1237 grid: a mask AIM at its position, half outside."""
    scan = real_data / "CALLUS_1237.AIM"
    header = read_header(scan)
    volume = read_volume(header)
    mask = np.zeros((20, 20, 30), bool)
    mask[2:18, 3:17, 5:25] = True
    position = (header.position_voxels[0] + 25, header.position_voxels[1] - 4, header.position_voxels[2] + 20)
    region = _mask_aim(tmp_path, "CALLUS_1237_TRAB_MASK.AIM", mask, position, compression="binCmp",
                       size=header.voxel_size_mm)
    expected_region, outside = _on_grid(mask, position, header.position_voxels, volume.shape)
    spec = ThresholdSpec(450, 1500, unit="density")
    resolved = resolve_thresholds(spec, header.calibration)
    result = region_statistics(scan, {"TRAB": region}, thresholds=spec)
    _check(result["TRAB"], _reference(volume, header, expected_region,
                                      (resolved.native_low, resolved.native_high)), outside)
    assert 0 < result["TRAB"].bv_tv < 1 and outside > 0


def test_real_mask_as_its_own_region(real_data):
    """The real v030 binCmp mask placed on itself: every voxel inside, BV/TV of a char scan = 1."""
    path = real_data / "DB_07_DNN_DR_T1_TRAB_MASK.AIM"
    header = read_header(path)
    result = region_statistics(header, {"TRAB": path})
    n = int(np.count_nonzero(read_volume(header)))
    assert result["TRAB"].voxels == n and result["TRAB"].outside_voxels == 0 and result["TRAB"].bv_tv == 1.0


# ---- the command line: --roi / --roi-pattern / --roi-optional ------------------------------------
def test_cli_roi_statistics_in_the_metadata_equal_whole_array(tmp_path, capsys):
    import json

    from cli_harness import error_lines, run_cli

    study = tmp_path / "study"
    study.mkdir()
    scan, volume = _scan(study, name="C1.AIM")
    header = read_header(scan)
    _, reference, outside = _random_region_with_reference(study, "C1_TRAB_MASK.AIM", volume, header, (12, 14, 16),
                                                          seed=3, offset=(-4, 6, 2), low=120)

    status, _, err = run_cli(capsys, "convert", scan, "-o", tmp_path / "one", "--low", "120",
                             "--roi", f"TRAB={study / 'C1_TRAB_MASK.AIM'}")
    assert status == 0, err
    meta = json.loads((tmp_path / "one" / "C1_metadata.json").read_text())
    trab = meta["regions"]["regions"]["TRAB"]
    assert trab["outside_voxels"] == outside
    for key, value in reference.items():
        assert trab[key] == value, key

    # a study: the region beside each scan; a scan without one fails in one line, or is converted
    # without it (a warning) with --roi-optional; a rerun with --skip-existing keeps the sets
    other, _ = _scan(study, name="C2.AIM", seed=4)
    pattern = "TRAB={stem}_TRAB_MASK.AIM"
    status, _, err = run_cli(capsys, "convert", scan, other, "-o", tmp_path / "study_out", "--roi-pattern", pattern, "--low", "120")
    assert status == 1 and "C2_TRAB_MASK.AIM" in err and "internal error" not in err
    assert len(error_lines(err)) == 1
    status, out, err = run_cli(capsys, "convert", scan, other, "-o", tmp_path / "optional", "--roi-pattern",
                               pattern, "--roi-optional", "--json", "--low", "120")
    assert status == 0, err
    assert "C2_TRAB_MASK.AIM does not exist" in err
    again = json.loads((tmp_path / "optional" / "C1_metadata.json").read_text())["regions"]["regions"]["TRAB"]
    assert again["bv_tv"] == reference["bv_tv"]
    status, out, err = run_cli(capsys, "convert", scan, other, "-o", tmp_path / "optional", "--roi-pattern",
                               pattern, "--roi-optional", "--skip-existing", "--json", "--low", "120")
    assert status == 0 and [json.loads(line)["status"] for line in out.splitlines() if line.strip()] == ["skipped"] * 2


def test_cli_roi_statistics_in_the_summary_csv_and_json_lines(tmp_path, capsys):
    """--summary gets <region>_<field> columns for every region any input has (empty for a scan without
    it); --json carries the same facts; a rerun with --skip-existing writes the same region cells."""
    import csv
    import json

    from cli_harness import run_cli
    from ScancoUnitsLib.pipeline.region_measures import REGION_FIELDS

    study = tmp_path / "study"
    study.mkdir()
    scan, _ = _scan(study, name="C1.AIM")
    other, _ = _scan(study, name="C2.AIM", seed=4)
    mask = np.random.default_rng(5).random((12, 14, 16)) < 0.5
    _mask_aim(study, "C1_TRAB_MASK.AIM", mask, tuple(p + 1 for p in SCAN_POS), compression="binCmp")
    argv = ["convert", scan, other, "-o", tmp_path / "out", "--roi-pattern", "TRAB={stem}_TRAB_MASK.AIM",
            "--roi-optional", "--low", "120", "--summary", tmp_path / "summary.csv", "--json"]
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    rows = list(csv.DictReader((tmp_path / "summary.csv").open(encoding="utf-8")))
    columns = list(rows[0])
    region_columns = [f"TRAB_{f}" for f in REGION_FIELDS]
    assert columns[-2:] == ["warnings", "outputs"] and columns[-2 - len(region_columns):-2] == region_columns
    meta = json.loads((tmp_path / "out" / "C1_metadata.json").read_text())["regions"]["regions"]["TRAB"]
    by_name = {Path(r["input"]).name: r for r in rows}
    for field in REGION_FIELDS:
        cell = by_name["C1.AIM"][f"TRAB_{field}"]
        assert (cell == "" if meta[field] is None else float(cell) == pytest.approx(meta[field], rel=1e-12)), field
        assert by_name["C2.AIM"][f"TRAB_{field}"] == ""
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    first = next(line for line in lines if Path(line["input"]).name == "C1.AIM")
    assert json.dumps(first).count("TRAB_bv_tv") == 1
    before = (tmp_path / "summary.csv").read_text(encoding="utf-8")
    status, _, err = run_cli(capsys, *argv, "--skip-existing")
    assert status == 0, err
    again = list(csv.DictReader((tmp_path / "summary.csv").open(encoding="utf-8")))
    assert [r["TRAB_bv_tv"] for r in again] == [r["TRAB_bv_tv"] for r in rows] and before.count("TRAB_") > 0


def test_cli_roi_bad_arguments_and_files_are_one_line(tmp_path, capsys):
    from cli_harness import error_lines, run_cli

    scan, _ = _scan(tmp_path)
    bad = tmp_path / "bad.GOBJ"
    bad.write_bytes(b"CTDATA-HEADER_V1" + b"\x00" * 40)
    far = _mask_aim(tmp_path, "far.AIM", np.ones((2, 2, 2), bool), (0, 0, 0))
    for roi, code in (("TRAB", 2), ("1X=a.AIM", 2), (f"TRAB={bad}", 1), (f"TRAB={far}", 1),
                      (f"TRAB={tmp_path / 'missing.AIM'}", 1)):
        status, _, err = run_cli(capsys, "convert", scan, "-o", tmp_path / "o", "--roi", roi)
        assert status == code, (roi, err)
        assert "internal error" not in err and "Traceback" not in err
        assert len(error_lines(err)) == 1, (roi, err)
        assert not list((tmp_path / "o").glob("*.nrrd")) if (tmp_path / "o").exists() else True


def test_cli_outputs_roi_writes_each_region_on_the_scan_grid(tmp_path, capsys):
    """--outputs roi: <stem>_roi_<NAME> in every format, voxel for voxel the region placed by index
    arithmetic, with the HU volume's geometry; recorded (fingerprints) in the metadata; roi alone
    writes only the regions; a rerun with --overwrite and another region name removes the earlier
    region file (provably ours); --skip-existing redoes a scan whose region file changed."""
    import json
    import os

    nrrd = pytest.importorskip("nrrd")
    from cli_harness import error_lines, run_cli

    study = tmp_path / "study"
    study.mkdir()
    scan, volume = _scan(study, name="C1.AIM")
    mask = np.random.default_rng(8).random((12, 14, 16)) < 0.6
    position = tuple(p + o for p, o in zip(SCAN_POS, (-4, 6, 2)))   # partly outside (negative x offset)
    region_file = _mask_aim(study, "C1_TRAB_MASK.AIM", mask, position, compression="binCmp")
    expected, _ = _on_grid(mask, position, SCAN_POS, volume.shape)

    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "convert", scan, "-o", out, "--outputs", "hu,roi", "--roi", f"TRAB={region_file}")
    assert status == 0, err
    roi, roi_header = nrrd.read(str(out / "C1_roi_TRAB.nrrd"), index_order="C")
    hu, hu_header = nrrd.read(str(out / "C1_HU.nrrd"), index_order="C")
    assert roi.dtype == np.uint8 and np.array_equal(roi.astype(bool), expected) and roi.max() == 1
    assert roi.shape == hu.shape
    for key in ("space directions", "space origin", "space"):
        assert np.array_equal(np.asarray(roi_header[key]), np.asarray(hu_header[key])), key
    meta = json.loads((out / "C1_metadata.json").read_text())
    assert meta["regions"]["regions"]["TRAB"]["files_on_scan_grid"] == ["C1_roi_TRAB.nrrd"]
    assert "C1_roi_TRAB.nrrd" in meta["files"]

    # roi alone: the regions and the metadata, no volume
    alone = tmp_path / "alone"
    status, _, err = run_cli(capsys, "convert", scan, "-o", alone, "--outputs", "roi", "--roi", f"TRAB={region_file}")
    assert status == 0, err
    assert sorted(p.name for p in alone.iterdir()) == ["C1_metadata.json", "C1_roi_TRAB.nrrd"]

    # another region name over the same set: the earlier region file goes with the set it belonged to
    status, _, err = run_cli(capsys, "convert", scan, "-o", out, "--outputs", "hu,roi", "--overwrite",
                             "--roi", f"CORT={region_file}")
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["C1_HU.nrrd", "C1_metadata.json", "C1_roi_CORT.nrrd"]

    # --skip-existing: the same files are up to date; a region file drawn again is not
    argv = ["convert", scan, "-o", out, "--outputs", "hu,roi", "--roi", f"CORT={region_file}", "--skip-existing",
            "--json"]
    status, lines, err = run_cli(capsys, *argv)
    assert status == 0 and json.loads(lines.splitlines()[0])["status"] == "skipped", err
    _mask_aim(study, "C1_TRAB_MASK.AIM", ~mask, position, compression="binCmp")
    os.utime(region_file, ns=(1, 1))
    status, lines, err = run_cli(capsys, *argv, "--overwrite")
    assert status == 0 and json.loads(lines.splitlines()[0])["status"] == "converted", err
    again, _ = nrrd.read(str(out / "C1_roi_CORT.nrrd"), index_order="C")
    assert np.array_equal(again.astype(bool), _on_grid(~mask, position, SCAN_POS, volume.shape)[0])

    # roi without a region: one line, exit 2, nothing written
    status, _, err = run_cli(capsys, "convert", scan, "-o", tmp_path / "none", "--outputs", "roi")
    assert status == 2 and len(error_lines(err)) == 1 and "--roi NAME=PATH" in err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("format_name", ["nifti", "aim", "ome-zarr"])
def test_outputs_roi_in_the_other_formats(tmp_path, format_name):
    """The region files in every volume format hold the region on the scan grid (read back with the
    format's own reader where one is installed)."""
    from ScancoUnitsLib import ConversionRequest, convert_file

    scan, volume = _scan(tmp_path, name="C1.AIM")
    mask = np.random.default_rng(9).random((8, 9, 10)) < 0.5
    position = tuple(p + o for p, o in zip(SCAN_POS, (3, -2, 5)))
    region_file = _mask_aim(tmp_path, "C1_TRAB_MASK.AIM", mask, position)
    expected, _ = _on_grid(mask, position, SCAN_POS, volume.shape)
    if format_name == "nifti":
        nib = pytest.importorskip("nibabel")
    if format_name == "ome-zarr":
        zarr = pytest.importorskip("zarr")
    with pytest.warns(UserWarning, match="lie outside the scan"):
        outputs = convert_file(scan, tmp_path / "out", ConversionRequest(outputs=("mask", "roi"), formats=(format_name,),
                                                                         regions=[f"TRAB={region_file}"]))
    path = outputs["roi_TRAB"]
    if format_name == "nifti":
        data = np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)
    elif format_name == "aim":
        data = read_volume(path)
    else:
        data = np.asarray(zarr.open(str(path), mode="r")["0"])
    assert np.array_equal(np.asarray(data).astype(bool), expected)


def test_region_files_in_a_study_are_not_converted_as_scans_and_never_written_over(tmp_path, capsys):
    """A mask AIM beside its scan, found in the folder and named by --roi-pattern, is the scan's region:
    listed as such, not converted; it is protected like an input (an output of the same name is refused
    even with --overwrite, and the region file keeps its bytes)."""
    import hashlib

    from cli_harness import run_cli

    study = tmp_path / "study" / "v1"
    study.mkdir(parents=True)
    scan, _ = _scan(study, name="C1.AIM")
    mask = np.random.default_rng(6).random((6, 7, 8)) < 0.5
    region_file = _mask_aim(study, "C1_TRAB_MASK.AIM", mask, SCAN_POS)
    before = hashlib.sha256(region_file.read_bytes()).hexdigest()
    status, out, err = run_cli(capsys, "convert", tmp_path / "study", "-r", "-o", tmp_path / "out",
                               "--roi-pattern", "TRAB={stem}_TRAB_MASK.AIM", "--low", "120")
    assert status == 0, err
    assert "v1/C1_TRAB_MASK.AIM" in out and "used as a region (TRAB of C1.AIM), not converted" in out
    assert "1 converted, 0 failed; 1 region file(s) used as regions, not converted" in out
    assert sorted(p.name for p in (tmp_path / "out" / "v1").iterdir()) == [
        "C1_BWmask.nrrd", "C1_HU.nrrd", "C1_RHO.nrrd", "C1_metadata.json"]

    # a region written by an earlier run (C1_roi_TRAB.AIM) used as the region of the next one, into the
    # same folder: its output has the region file's name; refused even with --overwrite, untouched
    earlier = study / "C1_roi_TRAB.AIM"
    earlier.write_bytes(region_file.read_bytes())
    status, _, err = run_cli(capsys, "convert", scan, "-o", study, "--format", "aim", "--outputs", "roi",
                             "--roi", f"TRAB={earlier}", "--overwrite")
    assert status == 1 and "C1_roi_TRAB.AIM" in err and "internal error" not in err, err
    assert hashlib.sha256(earlier.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in study.iterdir()) == ["C1.AIM", "C1_TRAB_MASK.AIM", "C1_roi_TRAB.AIM"]


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
@pytest.mark.parametrize("piece_bytes", [None, 40 * 9 * 8])
def test_region_counts_in_the_workers_equal_whole_array(tmp_path, capsys, monkeypatch, kernel, piece_bytes):
    """The conversion counts each region in its workers (any order, several threads): whole slabs and
    slices cut into row pieces that cross the region's rows give the whole array's numbers."""
    import json

    from cli_harness import run_cli
    from ScancoUnitsLib.pipeline import engine

    if kernel == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("SCANCO_UNITS_KERNEL", kernel)
    if piece_bytes:
        monkeypatch.setattr(engine, "SLAB_SET_MAX_BYTES", piece_bytes)   # a few rows a piece
    scan, volume = _scan(tmp_path, shape=(24, 30, 40), seed=11)
    header = read_header(scan)
    _, reference, outside = _random_region_with_reference(tmp_path, "TRAB.AIM", volume, header, (20, 26, 25),
                                                          seed=12, offset=(-5, 7, 3), low=300)
    status, _, err = run_cli(capsys, "convert", scan, "-o", tmp_path / "out", "--low", "300", "--slab-slices", "2",
                             "--roi", f"TRAB={tmp_path / 'TRAB.AIM'}")
    assert status == 0, err
    trab = json.loads((tmp_path / "out" / "scan_metadata.json").read_text())["regions"]["regions"]["TRAB"]
    assert trab["outside_voxels"] == outside
    for key, value in reference.items():
        assert trab[key] == value, key


def test_region_read_during_the_pass_fails_in_one_line_and_leaves_nothing(tmp_path, capsys):
    """A mask AIM's voxels are read while the pass runs: a damaged stream, or voxels that all fall
    outside the scan (boxes overlap, voxels do not), fail that input in one line with no output left."""
    from cli_harness import error_lines, run_cli

    scan, volume = _scan(tmp_path, shape=(24, 30, 40))
    mask = np.zeros((24, 30, 40), bool)
    mask[5:20, 4:28, 3:35] = np.random.default_rng(5).random((15, 24, 32)) < 0.5
    whole = _mask_aim(tmp_path, "whole.AIM", mask, SCAN_POS, compression="binCmp")
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.AIM"
    truncated.write_bytes(data[:len(data) - (len(data) - 1024) // 2])   # the header whole, half the stream
    short_runs = tmp_path / "short_runs.AIM"          # its runs end before the last voxel: found while decoding
    short_runs.write_bytes(data[:len(data) // 2] + b"\x01" * (len(data) - len(data) // 2))
    corner = np.zeros((10, 10, 10), bool)
    corner[0, 0, 0] = True                                   # the only voxel lies before the scan
    outside = _mask_aim(tmp_path, "outside.AIM", corner, tuple(p - 1 for p in SCAN_POS))
    for region, reason in ((truncated, ""), (short_runs, "compressed data ends after"),
                           (outside, "does not overlap")):
        out = tmp_path / f"out_{region.stem}"
        report = ["--report"] if importlib.util.find_spec("matplotlib") else []   # the report reads the region too
        status, _, err = run_cli(capsys, "convert", scan, "-o", out, "--roi", f"TRAB={region}", *report)
        assert status == 1, err
        lines = error_lines(err)
        assert len(lines) == 1 and str(region) in lines[0] and reason in lines[0], err
        assert "internal error" not in err and "Traceback" not in err
        assert not out.exists() or not list(out.iterdir()), sorted(p.name for p in out.iterdir())
    # read_region says the same
    for damaged in (truncated, short_runs):
        with pytest.raises(ScancoFormatError):
            read_region(damaged, like=read_header(scan))
    with pytest.raises(RequestError, match="none of its 1 voxels"):
        read_region(outside, like=read_header(scan))


def test_python_discover_skips_the_study_region_files(tmp_path):
    """The Python API finds a study as the command line does: a scan's region file beside it is skipped
    (said why), not converted as a scan of the study."""
    from ScancoUnitsLib import ConversionRequest, discover
    from ScancoUnitsLib.pipeline.regions import USED_AS_REGION, parse_region_argument

    study = tmp_path / "study" / "v1"
    study.mkdir(parents=True)
    _scan(study, name="C1.AIM")
    _mask_aim(study, "C1_TRAB_MASK.AIM", np.ones((4, 4, 4), bool), SCAN_POS)
    request = ConversionRequest(regions=(parse_region_argument("TRAB={stem}_TRAB_MASK.AIM", pattern=True),))
    found = discover([tmp_path / "study"], recursive=True, request=request)
    assert [p.name for p in found.inputs] == ["C1.AIM"]
    assert [(Path(n.path).name, n.relative) for n in found.skipped] == [("C1_TRAB_MASK.AIM", "v1/C1_TRAB_MASK.AIM")]
    assert found.skipped[0].reason.startswith(USED_AS_REGION) and "TRAB of C1.AIM" in found.skipped[0].reason
    # without the request both are inputs
    assert sorted(p.name for p in discover([tmp_path / "study"], recursive=True).inputs) == ["C1.AIM", "C1_TRAB_MASK.AIM"]
