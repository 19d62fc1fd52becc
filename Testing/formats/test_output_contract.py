"""The writer contract, checked for every registered output format and every output it can hold.

One list of formats (``formats.writers.FORMAT_NAMES``), one list of roles (``core.quantities.FILE_ROLES``):
a format registered tomorrow runs through the same checks, and fails the first test until this file
knows how to read it back. Per format and role:

* values: what is read back equals the float64 formula on the whole array, in the type and values the
  metadata says the file holds (``stored``: AIM masks are IPL's int8 0/127);
* geometry: the voxel size and origin are the header's;
* label intent: a mask is marked as a label where the format can say so (NIfTI intent, NRRD key,
  OME-Zarr max pyramid, AIM char type), a grey-value volume is not;
* leftovers: a dead writer's temporary file of each name the format makes is swept by
  ``remove_partials_of``; another stem's is not;
* all or nothing: a failure after the first slab leaves no file and no temporary file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ScancoUnitsLib import Calibration, convert_file, write_isq
from ScancoUnitsLib.batch.jobs import remove_partials_of
from ScancoUnitsLib.core.quantities import FILE_ROLES, role_quantity
from ScancoUnitsLib.formats.writers import FORMAT_NAMES, get_format
from ScancoUnitsLib.io.transaction import writer_id

CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")
VOXEL_MM = (0.05, 0.06, 0.07)
SHAPE_ZYX = (6, 5, 7)


def _volume() -> np.ndarray:
    values = np.linspace(-3000, 32767, int(np.prod(SHAPE_ZYX)))
    return np.rint(values).astype(np.int16).reshape(SHAPE_ZYX)


def _expected(role: str, native: np.ndarray) -> np.ndarray:
    n = native.astype(np.float64)
    ms, mw = CAL.mu_scaling, CAL.mu_water_per_cm
    if role == "hu":
        return np.clip(np.rint(n * 1000.0 / (ms * mw) - 1000.0), -32768, 32767)
    if role == "mu":
        return n / ms
    if role == "density":   # g/cc, the default unit
        return ((n / ms) * CAL.density_slope + CAL.density_intercept) / 1000.0
    if role == "mask":      # 250..1000 per mille = native 8192..32767
        return ((native >= 8192) & (native <= 32767)).astype(np.float64)
    return n


# ---- how each format is read back: array (z, y, x), voxel size (x, y, z), origin (x, y, z), is a label
def _read_nrrd(path: Path):
    nrrd = pytest.importorskip("nrrd")
    data, header = nrrd.read(str(path))
    spacing = tuple(float(np.linalg.norm(d)) for d in header["space directions"])
    label = header.get("ScancoUnits_quantity") == "binary threshold mask"
    return np.transpose(data, (2, 1, 0)), spacing, tuple(header["space origin"]), label


def _read_nifti(path: Path):
    nib = pytest.importorskip("nibabel")
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    label = int(image.header["intent_code"]) == 1002   # NIFTI_INTENT_LABEL
    origin = tuple(abs(float(v)) for v in image.affine[:3, 3])
    return np.transpose(data, (2, 1, 0)), tuple(float(z) for z in image.header.get_zooms()[:3]), origin, label


def _read_ome_zarr(path: Path):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(path), mode="r")
    multiscale = group.attrs["multiscales"][0]
    transforms = multiscale["datasets"][0]["coordinateTransformations"]
    scale = next(t["scale"] for t in transforms if t["type"] == "scale")
    translation = next((t["translation"] for t in transforms if t["type"] == "translation"), [0, 0, 0])
    data = np.asarray(group[multiscale["datasets"][0]["path"]][...])
    return data, tuple(scale[::-1]), tuple(translation[::-1]), multiscale.get("type") == "local_max"


def _read_aim(path: Path):
    from ScancoUnitsLib import read_header
    from ScancoUnitsLib.formats.reader import read_volume

    header = read_header(path)
    origin = tuple(p * s for p, s in zip(header.position_voxels, header.voxel_size_mm))
    return read_volume(path), tuple(header.voxel_size_mm), origin, header.is_mask


READERS = {"nrrd": _read_nrrd, "nifti": _read_nifti, "ome-zarr": _read_ome_zarr, "aim": _read_aim}


def _available(name: str):
    fmt = get_format(name)
    try:
        fmt.check_available()
    except Exception as exc:  # noqa: BLE001 - an optional extra that is not installed here
        pytest.skip(f"{name}: {exc}")
    return fmt


CASES = [(f, r) for f in FORMAT_NAMES for r in FILE_ROLES]


def test_every_registered_format_is_covered():
    assert sorted(READERS) == sorted(FORMAT_NAMES)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return write_isq(tmp_path_factory.mktemp("scan") / "S1.ISQ", _volume(), voxel_size_mm=VOXEL_MM,
                     calibration=CAL)


@pytest.mark.parametrize("fmt_name,role", CASES)
def test_values_geometry_and_label_intent(tmp_path, scan, fmt_name, role):
    fmt = _available(fmt_name)
    if not fmt.accepts(role_quantity(role)):
        with pytest.raises(Exception, match=fmt_name.replace("-", ".")):
            convert_file(scan, tmp_path / "out", outputs=(role,), formats=(fmt_name,))
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
        return
    outputs = convert_file(scan, tmp_path / "out", outputs=(role,), formats=(fmt_name,))
    data, spacing, origin, label = READERS[fmt_name](Path(outputs[role]))
    meta = json.loads(Path(outputs["metadata"]).read_text())
    entry = meta["outputs"][role]
    stored = entry.get("stored", {}).get(fmt_name, {})   # how this format's file holds the output
    assert str(data.dtype) == stored.get("dtype", entry["dtype"])
    expected = _expected(role, _volume()) * stored.get("object_value", 1)
    if data.dtype.kind == "f":
        np.testing.assert_allclose(data.astype(np.float64), expected, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(data.astype(np.float64), expected)
    np.testing.assert_allclose(spacing, VOXEL_MM, rtol=1e-6)
    np.testing.assert_allclose(origin, (0.0, 0.0, 0.0), atol=1e-9)
    assert label == (role == "mask"), f"{fmt_name} {role}: label intent {label}"


def _dead_writer_id() -> str:
    """The writer id of a process that has exited: its temporary files are provably stale."""
    code = "from ScancoUnitsLib.io.transaction import writer_id; print(writer_id())"
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert text and text != writer_id()
    return text


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_a_dead_writers_leftovers_of_every_name_are_swept(tmp_path, scan, fmt_name):
    fmt = _available(fmt_name)
    roles = tuple(r for r in FILE_ROLES if fmt.accepts(role_quantity(r)))
    outputs = convert_file(scan, tmp_path / "made", outputs=roles, formats=(fmt_name,))
    names = sorted({Path(p).name for k, p in outputs.items()})
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_writer_id()
    ours, foreign = [], []
    for name in names:
        ours.append(out / f".{name}.partial-{dead}-0123abcd")
        foreign.append(out / f".{name.replace('S1', 'S2', 1)}.partial-{dead}-0123abcd")
    for path in ours + foreign:
        if path.name.endswith(".ome.zarr.partial-" + dead + "-0123abcd"):
            path.mkdir()
            (path / "zarr.json").write_text("{}")
        else:
            path.write_bytes(b"left over")
    removed = remove_partials_of(out, "S1")
    assert sorted(p.name for p in removed) == sorted(p.name for p in ours)
    assert all(not p.exists() for p in ours) and all(p.exists() for p in foreign)


class _Boom(Exception):
    pass


def _fails_after_the_first_slab():
    """A progress callback that raises on its second call (a disk that went away mid-file)."""
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise _Boom("disk went away")

    return progress


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_a_failure_after_the_first_slab_leaves_nothing(tmp_path, scan, fmt_name):
    fmt = _available(fmt_name)
    roles = tuple(r for r in FILE_ROLES if fmt.accepts(role_quantity(r)))
    out = tmp_path / "out"
    progress = _fails_after_the_first_slab()
    with pytest.raises(_Boom):
        convert_file(scan, out, outputs=roles, formats=(fmt_name,), slab_slices=1, progress=progress)
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == []


# ---- regions on the scan grid (--outputs roi): the same contract, for every format that holds a mask
@pytest.fixture(scope="module")
def region(tmp_path_factory, scan):
    from ScancoUnitsLib import read_header
    from ScancoUnitsLib.formats.aim.format import write_aim

    header = read_header(scan)
    inside = np.zeros(SHAPE_ZYX, dtype=bool)
    inside[1:5, 1:4, 2:6] = True
    path = tmp_path_factory.mktemp("region") / "S1_TRAB_MASK.AIM"
    write_aim(path, inside.astype(np.int8) * 127, voxel_size_mm=header.voxel_size_mm,
              position_voxels=header.position_voxels)
    return path, inside


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_region_files_values_geometry_leftovers_and_all_or_nothing(tmp_path, scan, region, fmt_name):
    _available(fmt_name)
    path, inside = region
    outputs = convert_file(scan, tmp_path / "made", outputs=("roi",), formats=(fmt_name,), regions=[f"TRAB={path}"])
    data, spacing, origin, label = READERS[fmt_name](Path(outputs["roi_TRAB"]))
    np.testing.assert_array_equal(data != 0, inside)
    assert set(np.unique(data)) <= {0, 1, 127}
    np.testing.assert_allclose(spacing, VOXEL_MM, rtol=1e-6)
    np.testing.assert_allclose(origin, (0.0, 0.0, 0.0), atol=1e-9)
    if fmt_name != "nrrd":   # NRRD has no label intent of its own; the others mark the region as a label
        assert label, f"{fmt_name}: a region is not marked as a label"

    # leftovers of the region file's names, and only those of this stem, are swept
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_writer_id()
    names = sorted({Path(p).name for k, p in outputs.items() if k.startswith("roi_")})
    ours = [out / f".{n}.partial-{dead}-0123abcd" for n in names]
    foreign = [out / f".{n.replace('S1', 'S2', 1)}.partial-{dead}-0123abcd" for n in names]
    for leftover in ours + foreign:
        leftover.mkdir() if ".ome.zarr." in leftover.name else leftover.write_bytes(b"left over")
    assert sorted(p.name for p in remove_partials_of(out, "S1")) == sorted(p.name for p in ours)
    assert all(p.exists() for p in foreign)

    # a failure in the pass leaves no region file and no temporary file
    progress = _fails_after_the_first_slab()
    with pytest.raises(_Boom):
        convert_file(scan, tmp_path / "failed", outputs=("roi",), formats=(fmt_name,), regions=[f"TRAB={path}"],
                     slab_slices=1, progress=progress)
    assert not (tmp_path / "failed").exists() or not list((tmp_path / "failed").iterdir())
