"""Streaming NIfTI-1 writer: ``<base>.nii``, or ``<base>.nii.gz`` (one gzip member) with compression.

NIfTI is what most neuro/medical Python tools (nibabel, SimpleITK, FSL, ANTs) read without plugins.
The 348-byte header is made by nibabel (optional dependency, the ``nifti`` extra); the voxels follow
it at ``vox_offset`` 352 (four zero bytes say "no extensions"), little endian, x fastest. Our (z, y, x)
C-order slabs are exactly NIfTI's x-fastest order, so slabs go to disk as they come.

Geometry: NIfTI world coordinates are RAS, ours (SCANCO, ITK) LPS. The affine is

    diag(-sx, -sy, sz) with translation (-ox, -oy, oz)

written both as qform and sform with code 1 (``NIFTI_XFORM_SCANNER_ANAT``: the coordinates are the
scanner's own, SCANCO position x element size, not registered to anything). Units are mm;
``scl_slope``/``scl_inter`` are 1/0 (the voxels already hold physical values); ``descrip`` names the
quantity and its unit. Masks get ``intent_code`` 1002 (``NIFTI_INTENT_LABEL``).

Files go through :mod:`ScancoUnitsLib.io.transaction`: nothing appears under the final name until the
volume is complete, and a failed or aborted write leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..io.transaction import AtomicOutputSet
from ..core.quantities import is_label
from ..errors import ScancoError
from ..io.gzip import GzipStream, RawStream, default_threads
from ..io.gzip import write_all as _write_all
from .writers import SlabWriter, VolumeFormat, VolumeSpec, register_format

__all__ = ["NiftiVolumeWriter", "nifti_header", "ras_affine", "NIFTI_XFORM_CODE", "NIFTI_VOX_OFFSET"]

#: qform_code = sform_code = NIFTI_XFORM_SCANNER_ANAT: coordinates of the scanner (not aligned to anything)
NIFTI_XFORM_CODE = 1
#: 348-byte header + 4-byte extension flag (all zero: no extensions)
NIFTI_VOX_OFFSET = 352
_NIFTI_INTENT_LABEL = 1002
_DESCRIP_BYTES = 80
_NIFTI1_MAX_DIM = 32767  # dim[] are int16 in NIfTI-1
_ASCII_SPELLINGS = {"µ": "u", "³": "3", "²": "2", "°": "deg", "‰": "per mille"}

_NIFTI_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8")}


class NiftiUnavailableError(ScancoError, ImportError):
    """NIfTI output needs nibabel (the ``nifti`` extra), which is not installed."""


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise NiftiUnavailableError("NIfTI output needs nibabel: pip install 'scanco-units[nifti]'") from None
    return nibabel


def _little_endian(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def ras_affine(spacing_mm, origin_mm) -> np.ndarray:
    """4x4 voxel-to-RAS affine of an LPS grid with ``spacing_mm`` and ``origin_mm`` (x, y, z)."""
    sx, sy, sz = (float(v) for v in spacing_mm)
    ox, oy, oz = (float(v) for v in origin_mm)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = (-ox, -oy, oz)
    return affine


def _descrip(text: str) -> bytes:
    for char, spelling in _ASCII_SPELLINGS.items():
        text = text.replace(char, spelling)
    data = text.encode("ascii", errors="replace")
    return data[: _DESCRIP_BYTES - 1]  # keep a terminating NUL


def nifti_header(shape_zyx, dtype, *, spacing_mm, origin_mm, description: str = "", label: bool = False) -> bytes:
    """The 352 bytes before the voxels: NIfTI-1 header made by nibabel + the empty extension flag."""
    nibabel = _nibabel()
    dt = _little_endian(dtype)
    if dt not in _NIFTI_DTYPES:
        raise ValueError(f"NIfTI output does not support voxel type {np.dtype(dtype).name}")
    nz, ny, nx = (int(n) for n in shape_zyx)
    if min(nx, ny, nz) < 1:
        raise ValueError(f"shape_zyx must be 3 positive integers, not {shape_zyx!r}")
    if max(nx, ny, nz) > _NIFTI1_MAX_DIM:
        raise ValueError(f"NIfTI-1 holds at most {_NIFTI1_MAX_DIM} voxels along an axis; the volume is "
                         f"{nx} x {ny} x {nz} (use NRRD or OME-Zarr)")
    spacing = tuple(float(v) for v in spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers, not {spacing_mm!r}")
    origin = tuple(float(v) for v in origin_mm)
    if len(origin) != 3 or not all(np.isfinite(origin)):
        raise ValueError(f"origin_mm must be three finite numbers, not {origin_mm!r}")
    header = nibabel.Nifti1Header(endianness="<")
    header.set_data_dtype(dt)
    header.set_data_shape((nx, ny, nz))
    affine = ras_affine(spacing, origin)
    header.set_qform(affine, code=NIFTI_XFORM_CODE)
    header.set_sform(affine, code=NIFTI_XFORM_CODE)
    header.set_zooms(spacing)
    header.set_xyzt_units(xyz="mm")
    header.set_slope_inter(1.0, 0.0)
    header["vox_offset"] = NIFTI_VOX_OFFSET
    header["descrip"] = _descrip(description)
    if label:
        header.set_intent("label")
    block = header.binaryblock
    if len(block) != 348:  # pragma: no cover - nibabel invariant
        raise RuntimeError(f"nibabel made a {len(block)}-byte NIfTI-1 header")
    return block + b"\x00\x00\x00\x00"


class NiftiVolumeWriter(SlabWriter):
    """Stream a (z, y, x) volume into a NIfTI-1 file (``.nii`` or, with ``compress``, ``.nii.gz``).

    ``atomic``: the :class:`AtomicOutputSet` to join (its owner commits); without one the writer uses
    its own and commits it in :meth:`close`. ``threads``: gzip threads.
    """

    kind = "NIfTI"
    accepts_rows = True  # one stream of voxels in file order: a slice may come in pieces of rows

    def __init__(self, path, shape_zyx, dtype, *, spacing_mm, origin_mm=(0.0, 0.0, 0.0),
                 description: str = "", label: bool = False, compress: bool = False, threads=None,
                 compress_level: int = 1, atomic: Optional[AtomicOutputSet] = None, overwrite: bool = False):
        path = Path(os.path.abspath(os.fspath(path)))
        suffix = ".nii.gz" if compress else ".nii"
        if not path.name.lower().endswith(suffix):
            raise ValueError(f"{path}: a {'gzip ' if compress else ''}NIfTI-1 file must end with {suffix}")
        super().__init__(path, tuple(int(n) for n in shape_zyx), _little_endian(dtype), atomic,
                         overwrite=overwrite)
        self.compress = bool(compress)
        header = nifti_header(self.shape_zyx, self.dtype, spacing_mm=spacing_mm, origin_mm=origin_mm,
                              description=description, label=label)
        threads = default_threads() if threads is None else max(1, int(threads))

        def start():
            self._file = self._set.add(self.path)
            if self.compress:
                self._stream = GzipStream(self._file, _write_all, compress_level, threads)
            else:
                self._stream = RawStream(self._file, _write_all)
            self._stream.write(memoryview(header))

        self._guarded(self.path, start)
        self._set.on_commit(self.close)

    def write_slab(self, array) -> None:
        """Append the slices of ``array`` ((n, y, x) or (y, x), this writer's voxel type)."""
        arr = self._checked_slab(array)
        if arr is None:
            return
        arr = np.ascontiguousarray(arr)
        self._guarded(self.path, lambda: self._stream.write(memoryview(arr).cast("B")))
        self._advance(arr)

    def _finish(self) -> None:
        self._stream.finish()
        self._file.close()

    def _release(self) -> None:
        if self._stream is not None:
            self._stream.shutdown()


# ---- registration in the writer seam ------------------------------------------------------------
def _nifti_paths(spec: VolumeSpec) -> list:
    base = Path(spec.base_path)
    return [base.with_name(base.name + (".nii.gz" if spec.compress else ".nii"))]


def _descrip_of(spec: VolumeSpec) -> str:
    if spec.unit_label and spec.unit_label not in spec.description:
        return f"{spec.description} [{spec.unit_label}]" if spec.description else spec.unit_label
    return spec.description


def _open_nifti(spec: VolumeSpec, atomic: AtomicOutputSet) -> NiftiVolumeWriter:
    return NiftiVolumeWriter(_nifti_paths(spec)[0], spec.shape_zyx, spec.dtype, spacing_mm=spec.spacing_mm,
                             origin_mm=spec.origin_mm, description=_descrip_of(spec),
                             label=is_label(spec.quantity), compress=spec.compress, threads=spec.threads,
                             atomic=atomic)


register_format(VolumeFormat("nifti", "NIfTI-1 (nibabel, ITK, FSL)", _nifti_paths, _open_nifti, require=_nibabel))
