"""NIfTI-1 output (nifti_writer.py) through the writer seam.

References, independent of the code under test: pynrrd reading the NRRD the seam writes for the same
volume, nibabel reading the NIfTI (its own parser, not the header we built with it), ITK's
NiftiImageIO in a subprocess (like Testing/support/oracle_worker.py: itk-ioscanco would claim .nii files, so
the IO is named), the raw header bytes read with struct, and Python's gzip/zlib for the member count.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")

from ScancoUnitsLib import read_header  # noqa: E402
from ScancoUnitsLib.io.transaction import AtomicOutputSet, live_partials  # noqa: E402
from ScancoUnitsLib.formats.writers import VolumeSpec, get_format  # noqa: E402

SPACING = (0.0607, 0.0607, 0.0608)
ORIGIN = (78.9, 58.27, 3.9)  # LPS, mm

_ITK_SCRIPT = r"""
import json, sys
import numpy as np
import itk
out = []
for path, npy in json.loads(sys.argv[1]):
    image = itk.imread(path, imageio=itk.NiftiImageIO.New())
    np.save(npy, itk.array_from_image(image))
    out.append({"origin": [float(v) for v in image.GetOrigin()], "spacing": [float(v) for v in image.GetSpacing()],
                "direction": itk.array_from_matrix(image.GetDirection()).tolist()})
print(json.dumps(out))
"""


def _itk_read_nifti(paths, tmp_path):
    """ITK reads of several NIfTI files in one subprocess: [(array zyx, info)]."""
    pairs = [(os.fspath(p), os.fspath(tmp_path / f"itk_{i}.npy")) for i, p in enumerate(paths)]
    proc = subprocess.run([sys.executable, "-c", _ITK_SCRIPT, json.dumps(pairs)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = json.loads(proc.stdout.strip().splitlines()[-1])
    return [(np.load(npy), info) for (_, npy), info in zip(pairs, infos)]


def _spec(base, volume, quantity="hu", unit="HU", description="Hounsfield units", compress=False, **kw):
    return VolumeSpec(base_path=Path(base), shape_zyx=volume.shape, dtype=volume.dtype, spacing_mm=kw.pop("spacing", SPACING),
                      origin_mm=kw.pop("origin", ORIGIN), quantity=quantity, unit_label=unit,
                      description=description, compress=compress, threads=kw.pop("threads", 2), **kw)


def _write(fmt_name, spec, volume, slab=3):
    fmt = get_format(fmt_name)
    with AtomicOutputSet() as atomic:
        writer = fmt.open(spec, atomic)
        for z in range(0, volume.shape[0], slab):
            writer.write_slab(volume[z:z + slab])
        writer.close()
    return fmt.paths(spec)


def _volumes():
    rng = np.random.default_rng(14)
    shape = (7, 5, 6)
    return {
        "hu": (rng.integers(-32768, 32767, size=shape, dtype=np.int16), "hu", "HU", "Hounsfield units"),
        "density": (rng.normal(0.5, 0.3, size=shape).astype(np.float32), "density_g_cc", "g HA/ccm",
                    "bone mineral density"),
        "mask": ((rng.random(shape) < 0.3).astype(np.uint8), "mask", "1 = inside 250-1000 per mille",
                 "threshold mask"),
    }


@pytest.mark.parametrize("compress", [False, True])
def test_voxels_equal_nrrd_and_affine(tmp_path, compress):
    for name, (volume, quantity, unit, description) in _volumes().items():
        spec = _spec(tmp_path / f"scan_{name}", volume, quantity, unit, description, compress=compress)
        (nii,) = _write("nifti", spec, volume)
        assert nii.name == f"scan_{name}.nii" + (".gz" if compress else "")
        (nrrd_path,) = _write("nrrd", spec, volume)
        from_nrrd, _ = nrrd.read(os.fspath(nrrd_path), index_order="C")
        image = nibabel.load(os.fspath(nii))
        data = np.asarray(image.dataobj)
        assert data.dtype == volume.dtype
        assert data.shape == volume.shape[::-1]  # (x, y, z)
        np.testing.assert_array_equal(data.transpose(2, 1, 0), from_nrrd)
        np.testing.assert_array_equal(from_nrrd, volume)
        sx, sy, sz = SPACING
        ox, oy, oz = ORIGIN
        expected = np.array([[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1]])
        header = image.header
        np.testing.assert_allclose(image.affine, expected, atol=1e-5)      # float32 in the file
        np.testing.assert_allclose(header.get_qform(), expected, atol=1e-5)
        np.testing.assert_allclose(header.get_sform(), expected, atol=1e-5)
        assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
        assert header.get_xyzt_units()[0] == "mm"
        descrip = header["descrip"].item().decode()
        assert description in descrip and unit.replace("µ", "u") in descrip and len(header["descrip"].item()) < 80
        assert int(header["intent_code"]) == (1002 if quantity == "mask" else 0)
        raw = gzip.open(nii).read() if compress else nii.read_bytes()
        assert struct.unpack_from("<i", raw, 0)[0] == 348
        assert struct.unpack_from("<fff", raw, 108) == (352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
        assert raw[344:352] == b"n+1\x00\x00\x00\x00\x00"
        assert len(raw) == 352 + volume.nbytes
        np.testing.assert_array_equal(np.frombuffer(raw, volume.dtype.newbyteorder("<"), offset=352),
                                      volume.reshape(-1))


def test_gzip_is_one_member_and_matches_raw(tmp_path):
    volume = np.arange(40 * 30 * 50, dtype=np.int16).reshape(40, 30, 50)
    raw_path, = _write("nifti", _spec(tmp_path / "raw", volume), volume, slab=7)
    spec = _spec(tmp_path / "gz", volume, compress=True, threads=3)
    fmt = get_format("nifti")
    with AtomicOutputSet() as atomic:  # small gzip chunks: many parallel chunks stitched into one member
        writer = fmt.open(spec, atomic)
        writer._stream._chunk = 4096
        for z in range(0, 40, 7):
            writer.write_slab(volume[z:z + 7])
        writer.close()
    gz_path = fmt.paths(spec)[0]
    data = gz_path.read_bytes()
    member = zlib.decompressobj(wbits=31)
    body = member.decompress(data)
    assert member.eof and member.unused_data == b""          # exactly one gzip member
    assert body == raw_path.read_bytes()
    np.testing.assert_array_equal(np.asarray(nibabel.load(os.fspath(gz_path)).dataobj).transpose(2, 1, 0), volume)


def test_itk_reads_the_same_voxels_and_lps_geometry(tmp_path):
    volumes = _volumes()
    paths, expected = [], []
    for name, (volume, quantity, unit, description) in volumes.items():
        for compress in (False, True):
            spec = _spec(tmp_path / f"{name}_{int(compress)}", volume, quantity, unit, description, compress=compress)
            paths.append(_write("nifti", spec, volume)[0])
            expected.append(volume)
    for (array, info), volume in zip(_itk_read_nifti(paths, tmp_path), expected):
        np.testing.assert_array_equal(array, volume)
        np.testing.assert_allclose(info["origin"], ORIGIN, atol=1e-5)   # ITK is LPS: origin as ours
        np.testing.assert_allclose(info["spacing"], SPACING, rtol=1e-6)
        np.testing.assert_allclose(info["direction"], np.eye(3), atol=1e-6)


def test_abort_and_incomplete_leave_nothing(tmp_path):
    volume = np.zeros((4, 3, 2), np.float32)
    for compress in (False, True):
        spec = _spec(tmp_path / "a", volume, compress=compress)
        atomic = AtomicOutputSet()
        writer = get_format("nifti").open(spec, atomic)
        writer.write_slab(volume[:2])
        writer.abort()
        with pytest.raises(ValueError, match="only 2 of 4 slices"):
            atomic2 = AtomicOutputSet()
            w2 = get_format("nifti").open(spec, atomic2)
            w2.write_slab(volume[:2])
            atomic2.commit()
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in live_partials() if p.parent == tmp_path]


def test_wrong_slabs_are_refused(tmp_path):
    volume = np.zeros((4, 3, 2), np.int16)
    atomic = AtomicOutputSet()
    writer = get_format("nifti").open(_spec(tmp_path / "w", volume), atomic)
    with pytest.raises(ValueError, match="voxel type float32"):
        writer.write_slab(np.zeros((1, 3, 2), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        writer.write_slab(np.zeros((1, 2, 3), np.int16))
    writer.abort()
    big = VolumeSpec(base_path=tmp_path / "big", shape_zyx=(1, 1, 40000), dtype=np.dtype(np.uint8),
                     spacing_mm=SPACING, origin_mm=ORIGIN, quantity="mask", unit_label="", description="")
    with pytest.raises(ValueError, match="at most 32767 voxels"):
        get_format("nifti").open(big, AtomicOutputSet())
    assert list(tmp_path.iterdir()) == []


def test_missing_nibabel_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    volume = np.zeros((2, 2, 2), np.int16)
    with pytest.raises(ImportError, match=r"scanco-units\[nifti\]"):
        get_format("nifti").open(_spec(tmp_path / "n", volume), AtomicOutputSet())
    assert list(tmp_path.iterdir()) == []


def test_real_scan_converted_slabs(tmp_path, real_data):
    """convert_file's NRRDs of a real calibrated AIM, fed slab by slab through the NIfTI writer."""
    from ScancoUnitsLib import convert_file

    source = real_data / "CALLUS_1237.AIM"
    header = read_header(source)
    outputs = convert_file(source, tmp_path / "nrrd", outputs=("hu", "density", "mask"))
    for role, path in outputs.items():
        if role not in ("hu", "density", "mask"):
            continue
        volume, fields = nrrd.read(os.fspath(path), index_order="C")
        origin = tuple(float(v) for v in fields["space origin"])
        spacing = tuple(float(fields["space directions"][i][i]) for i in range(3))
        np.testing.assert_allclose(origin, header.origin_mm)
        spec = VolumeSpec(base_path=tmp_path / f"callus_{role}", shape_zyx=volume.shape, dtype=volume.dtype,
                          spacing_mm=spacing, origin_mm=origin, quantity="mask" if role == "mask" else role,
                          unit_label=fields.get("ScancoUnits_unit", ""), description=role, source=header,
                          compress=role == "density")
        (nii,) = _write("nifti", spec, volume, slab=5)
        image = nibabel.load(os.fspath(nii))
        np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), volume)
        corner = image.affine @ np.array([0, 0, 0, 1.0])
        np.testing.assert_allclose(corner[:3], [-origin[0], -origin[1], origin[2]], atol=1e-4)


def test_a_scanco_mask_aim_written_as_nifti_is_a_label(tmp_path, capsys):
    """The storage rule is one rule (quantities: ``label``): a char (mask) AIM's mask, the quantity
    ``char_mask``, is a label in NIfTI as the threshold mask is (the writer only knew ``mask``)."""
    from cli_harness import run_cli

    from ScancoUnitsLib import write_aim
    from ScancoUnitsLib.core.header import Calibration

    grey = (np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) * 97) % 16000
    cal = Calibration(mu_scaling=8192.0, mu_water_per_cm=0.24, density_slope=1600.0, density_intercept=-400.0,
                      density_unit="mg HA/ccm")
    scan = write_aim(tmp_path / "scan.AIM", grey, voxel_size_mm=(0.06, 0.06, 0.06), calibration=cal)
    status, _, err = run_cli(capsys, "convert", scan, "-o", tmp_path / "m", "--format", "aim", "--outputs", "mask",
                             "--low", "0", "--high", "600")
    assert status == 0, err
    # a mask AIM as IPL exports it (a file our metadata lists is never an input: copy it out)
    (tmp_path / "ipl").mkdir()
    mask_aim = tmp_path / "ipl" / "scan_TRAB_MASK.AIM"
    mask_aim.write_bytes((tmp_path / "m" / "scan_BWmask.AIM").read_bytes())
    assert read_header(mask_aim).voxel_type == "int8"  # a SCANCO mask: char data
    for source, quantity in ((scan, "mask"), (mask_aim, "char_mask")):
        out = tmp_path / f"n_{quantity}"
        status, _, err = run_cli(capsys, "convert", source, "-o", out, "--format", "nifti", "--outputs", "mask",
                                 "--low", "0", "--high", "600")
        assert status == 0, err
        (written,) = out.glob("*.nii*")
        image = nibabel.load(str(written))
        assert image.header.get_intent()[0] == "label", (quantity, written.name)
        assert set(np.unique(np.asarray(image.dataobj))) <= {0, 1}
