"""SCANCO ISQ (``CTDATA-HEADER_V1``): header parsing and writing.

Layout (all little-endian int32 unless noted): see ``docs`` section 1 of the format notes. Voxel data
are int16, x fastest, starting at ``(data_offset + 1) * 512``. The optional extended header
("MultiHeader" directory) may hold a ``Calibration`` block with the µ of water and the density
calibration; mu_scaling lives in the main header.

The calibration block's density unit (+648, char[16]) is kept as text; ``Calibration`` turns it into
mg HA/ccm per unit (``mg HA/ccm`` 1, ``g HA/ccm`` 1000) and refuses density for any other text.

The calibration block holds no mu_scaling of its own, but its text names the scaling the calibration
was made for (``45 kVp, 0.5mm Al, BH: 1200mg HA/ccm, Scaling 4096``). When that ``Scaling N`` differs
from the main header's mu_scaling (byte 88) the reader records a refusing
:class:`~ScancoUnitsLib.core.header.CalibrationConflict` for ``mu_scaling`` (µ, HU and density are refused;
native values still work) instead of trusting either. C0004255.ISQ (ITK's test file) states 4096 in
both places; the synthetic real-data ISQs name no scaling in their text.

VAX G-floats cannot hold magnitudes below 2**-1024 (about 5.6e-309; IEEE float64 subnormals go
down to 4.9e-324): the writer refuses such a calibration value (ValueError naming the field) instead
of storing a zero or a reserved operand that would read back as another number or as absent.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import struct
from typing import Optional, Sequence

import numpy as np

from ..errors import ScancoFormatError
from .inputs import InputFormat, register_input_format
from ..core.header import Calibration, CalibrationConflict, ScancoHeader, ScannerInfo, scaling_in_calibration_text
from .vms import (
    VmsEncodingError,
    datetime_to_vms_date,
    float_to_vax_g,
    vax_g_to_float,
    vms_date_to_iso,
)

ISQ_MAGIC = b"CTDATA-HEADER_V1"
BLOCK = 512
ISQ_VOLUME_DATA_TYPE = 3
_OTHER_DATA_TYPES = {
    1: "an RSQ file of raw projections",
    6: "a GOBJ contour file",
    9: "a RAD scout view",
}
_CAL_NAME = b"Calibration     "
_MULTI_NAME = b"MultiHeader     "
# offsets inside the calibration block (relative to its start)
_CAL_TEXT, _CAL_TYPE, _CAL_UNIT = 28, 632, 648
_CAL_SLOPE, _CAL_INTERCEPT, _CAL_MU_WATER = 664, 672, 688
_CAL_BLOCK_BYTES = 2 * BLOCK
MAX_DIMENSION = 1 << 20  # a million voxels along one axis is already absurd for a micro-CT


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].rstrip(b" \x00").decode("latin-1")


def parse_isq_header(head: bytes, path: str, file_size: int) -> ScancoHeader:
    """Decode the ISQ header from its first bytes (at least the main block; the whole header
    when an extended header exists). ``file_size`` is used to check the data fits."""
    if len(head) < BLOCK or file_size < BLOCK:
        raise ScancoFormatError(path, f"truncated ISQ header: file has {file_size} bytes, needs at least {BLOCK}")
    if head[:16] != ISQ_MAGIC:
        raise ScancoFormatError(path, "not an ISQ file (magic is not CTDATA-HEADER_V1)")
    i32 = lambda offset: struct.unpack_from("<i", head, offset)[0]  # noqa: E731
    data_type = i32(16)
    if data_type != ISQ_VOLUME_DATA_TYPE:
        what = _OTHER_DATA_TYPES.get(data_type, f"an unknown ISQ data_type {data_type}")
        raise ScancoFormatError(path, f"{what}, not a reconstructed ISQ volume (data_type {data_type}, expected 3)")
    dims = struct.unpack_from("<3i", head, 44)
    dims_um = struct.unpack_from("<3i", head, 56)
    for axis, n in zip("xyz", dims):
        if not 0 < n <= MAX_DIMENSION:
            raise ScancoFormatError(path, f"absurd dimension {axis} = {n} voxels")
    for axis, n, um in zip("xyz", dims, dims_um):
        if um <= 0:
            raise ScancoFormatError(path, f"voxel size along {axis} is not positive (extent {um} um)")
    data_offset_blocks = i32(508)
    if data_offset_blocks < 0:
        raise ScancoFormatError(path, f"negative header size (data_offset {data_offset_blocks} blocks)")
    data_offset = (data_offset_blocks + 1) * BLOCK
    if data_offset > file_size:
        raise ScancoFormatError(path, f"data offset {data_offset} is past the end of the file ({file_size} bytes)")
    data_size = dims[0] * dims[1] * dims[2] * 2
    if data_offset + data_size > file_size:
        raise ScancoFormatError(
            path,
            f"truncated: dimensions {dims[0]}x{dims[1]}x{dims[2]} need {data_size} bytes of int16 data "
            f"from byte {data_offset}, the file has {file_size - data_offset}",
        )
    if len(head) < min(data_offset, file_size):
        raise ScancoFormatError(path, f"the header was read only to byte {len(head)} of {data_offset}")

    voxel_size_mm = tuple(um / n / 1000.0 for um, n in zip(dims_um, dims))
    mu_scaling = i32(88)
    created_ticks = struct.unpack_from("<Q", head, 36)[0]
    try:
        created = vms_date_to_iso(created_ticks) if created_ticks else None  # 0 = never set
    except VmsEncodingError:
        created = None

    calibration_offset = _find_calibration_block(head, data_offset)
    calibration = _read_calibration(head, calibration_offset, mu_scaling)

    scanner = ScannerInfo(
        scanner_id=i32(32),
        scanner_type=i32(104),
        energy_v=float(i32(168)),
        intensity_ua=float(i32(172)),
        site=i32(116),
        sample_holder=i32(488),
        measurement_index=i32(112),
        patient_index=i32(28),
        patient_name=_text(head[128:168]) or None,
        creation_date=created,
        modification_date=None,
    )
    raw_fields = (
        ("data_type", data_type),
        ("creation_date_vms_ticks", created_ticks),
        ("nr_of_bytes", i32(20)),
        ("nr_of_blocks", i32(24)),
        ("dim_um", list(dims_um)),
        ("slice_thickness_um", i32(68)),
        ("slice_increment_um", i32(72)),
        ("slice_1_pos_um", i32(76)),
        ("min_data_value", i32(80)),
        ("max_data_value", i32(84)),
        ("mu_scaling", mu_scaling),
        ("nr_of_samples", i32(92)),
        ("nr_of_projections", i32(96)),
        ("scan_distance_um", i32(100)),
        ("sample_time_us", i32(108)),
        ("reference_line_um", i32(120)),
        ("reconstruction_alg", i32(124)),
        ("header_blocks_after_first", data_offset_blocks),
        ("calibration_block_offset", calibration_offset),
    )
    return ScancoHeader(
        path=path,
        format="ISQ",
        version="CTDATA-HEADER_V1",
        dimensions=tuple(dims),
        voxel_size_mm=voxel_size_mm,
        position_voxels=(0, 0, 0),
        origin_mm=(0.0, 0.0, 0.0),
        voxel_type="int16",
        data_type_code=data_type,
        data_type_name="ISQ int16",
        data_offset=data_offset,
        data_size=data_size,
        compression=None,
        border_voxels=(0, 0, 0),
        file_size=file_size,
        calibration=calibration,
        scanner=scanner,
        raw_fields=raw_fields,
    )


def _find_calibration_block(head: bytes, header_size: int) -> Optional[int]:
    """Walk the extended-header directory (VTKD rule); return the calibration block's byte offset."""
    if header_size < 4 * BLOCK:  # need at least directory + a 2-block calibration record
        return None
    skip = 1
    directory = BLOCK
    if head[520:536] == _MULTI_NAME:
        directory, skip = 2 * BLOCK, 2
    for entry in range(4):
        base = directory + entry * 128
        if base + 28 > header_size:
            break
        name = head[base + 8: base + 24]
        size = struct.unpack_from("<i", head, base + 24)[0]
        if size < 0:
            break
        start = (1 + skip) * BLOCK
        if (1 + skip + size) * BLOCK > header_size:
            break
        if name == _CAL_NAME and size >= 2:
            return start
        skip += size
    return None


def _read_calibration(head: bytes, offset: Optional[int], mu_scaling: int) -> Calibration:
    if offset is None:
        return Calibration(mu_scaling=mu_scaling)

    def g(rel):
        try:
            value = vax_g_to_float(head[offset + rel: offset + rel + 8])
        except VmsEncodingError:
            return None
        return value if math.isfinite(value) else None

    text = _text(head[offset + _CAL_TEXT: offset + _CAL_TEXT + 64]) or None
    conflicts = []
    text_scaling = scaling_in_calibration_text(text)
    if text_scaling is not None and text_scaling != mu_scaling:
        conflicts.append(CalibrationConflict("mu_scaling", (float(mu_scaling), text_scaling),
                                             ("main header mu_scaling", "calibration text Scaling")))
    return Calibration(
        mu_scaling=mu_scaling,
        mu_water_per_cm=g(_CAL_MU_WATER),
        density_slope=g(_CAL_SLOPE),
        density_intercept=g(_CAL_INTERCEPT),
        density_unit=_text(head[offset + _CAL_UNIT: offset + _CAL_UNIT + 16]) or None,
        calibration_type=struct.unpack_from("<i", head, offset + _CAL_TYPE)[0],
        calibration_text=text,
        conflicts=tuple(conflicts),
    )


def isq_header_bytes_needed(first_block: bytes) -> int:
    """How many bytes of the file hold the header, from the first block (clamped later by size)."""
    blocks = struct.unpack_from("<i", first_block, 508)[0]
    return (max(blocks, 0) + 1) * BLOCK


# ---- writing -----------------------------------------------------------------------------------------
def _put_text(buf: bytearray, offset: int, width: int, text: Optional[str]) -> None:
    raw = (text or "").encode("latin-1", errors="replace")[:width]
    buf[offset: offset + width] = raw.ljust(width, b"\x00")


def _int32(value, name: str) -> int:
    value = int(value)
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"{name} = {value} does not fit an ISQ int32 field")
    return value


#: smallest magnitude a VAX G-float holds (exponent 1, fraction 0: 0.5 * 2**-1023)
VAX_G_MIN_MAGNITUDE = 2.0 ** -1024


def _vax_g_field(value, name: str) -> bytes:
    """8 bytes of VAX G for a calibration value (None is stored as 0); a value VAX G cannot hold
    exactly (non-finite, too large, or a non-zero magnitude below 2**-1024) is a ValueError."""
    value = float(value or 0.0)
    if value != 0 and abs(value) < VAX_G_MIN_MAGNITUDE:
        raise ValueError(f"{name} {value!r} is too small for a VAX G-float (smallest non-zero magnitude "
                         f"{VAX_G_MIN_MAGNITUDE:.4g}); an ISQ cannot store it")
    try:
        encoded = float_to_vax_g(value)
    except VmsEncodingError as exc:
        raise ValueError(f"{name}: {exc}; an ISQ cannot store it") from None
    if vax_g_to_float(encoded) != value:  # never write bytes that read back as another number
        raise ValueError(f"{name} {value!r} has no exact VAX G-float representation")
    return encoded


class IsqWriter:
    """Write an ISQ slab by slab. The header is written first and patched on close (min/max)."""

    def __init__(self, path, dimensions_xyz: Sequence[int], *, voxel_size_mm: Sequence[float],
                 calibration: Optional[Calibration] = None, scanner: Optional[ScannerInfo] = None,
                 slice_1_pos_um: int = 0, creation_date: Optional[_dt.datetime] = None):
        dims = tuple(int(n) for n in dimensions_xyz)
        if len(dims) != 3 or any(n <= 0 for n in dims):
            raise ValueError(f"ISQ dimensions must be three positive integers, got {dimensions_xyz}")
        sizes = tuple(float(s) for s in voxel_size_mm)
        if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
            raise ValueError(f"voxel size must be three positive numbers in mm, got {voxel_size_mm}")
        self.path = os.fspath(path)
        self.dims = dims
        self.calibration = calibration or Calibration()
        self.scanner = scanner or ScannerInfo()
        self._with_calibration = (self.calibration.mu_water_per_cm is not None
                                  or self.calibration.density_slope is not None)
        self._header_blocks = 5 if self._with_calibration else 1
        self._data_bytes = dims[0] * dims[1] * dims[2] * 2
        self._slices_written = 0
        self._min = None
        self._max = None
        header = bytearray(self._header_blocks * BLOCK)
        header[0:16] = ISQ_MAGIC
        total = self._header_blocks * BLOCK + self._data_bytes
        s = self.scanner
        cal = self.calibration
        put = lambda off, v, name: struct.pack_into("<i", header, off, _int32(v, name))  # noqa: E731
        put(16, ISQ_VOLUME_DATA_TYPE, "data_type")
        put(20, min(total, (1 << 31) - 1), "nr_of_bytes")  # AimIO convention: header + data
        put(24, min(-(-total // BLOCK), (1 << 31) - 1), "nr_of_blocks")
        put(28, s.patient_index or 0, "patient_index")
        put(32, s.scanner_id or 0, "scanner_id")
        when = creation_date or _dt.datetime.now().replace(microsecond=0)
        struct.pack_into("<Q", header, 36, datetime_to_vms_date(when))
        for i, n in enumerate(dims):
            put(44 + 4 * i, n, "dimension")
            put(56 + 4 * i, round(sizes[i] * 1000.0 * n), "dim_um")
        put(68, round(sizes[2] * 1000.0), "slice_thickness_um")
        put(72, round(sizes[2] * 1000.0), "slice_increment_um")
        put(76, slice_1_pos_um, "slice_1_pos_um")
        put(88, cal.mu_scaling if cal.mu_scaling is not None else 0, "mu_scaling")
        put(104, s.scanner_type or 0, "scanner_type")
        put(112, s.measurement_index or 0, "measurement_index")
        put(116, s.site or 0, "site")
        _put_text(header, 128, 40, s.patient_name)
        put(168, round(s.energy_v or 0), "energy")
        put(172, round(s.intensity_ua or 0), "intensity")
        put(488, s.sample_holder or 0, "sample_holder")
        put(508, self._header_blocks - 1, "data_offset")
        if self._with_calibration:
            self._write_calibration(header)
        for axis, n in enumerate(dims):
            extent = struct.unpack_from("<i", header, 56 + 4 * axis)[0]
            if extent <= 0:
                raise ValueError("voxel size too small to store as whole micrometres in an ISQ header")
        self._header = header
        self._file = open(self.path, "wb")
        self._file.write(header)

    def _write_calibration(self, header: bytearray) -> None:
        cal = self.calibration
        # block 1: "MultiHeader" entry (itself, 1 block); block 2: directory; blocks 3-4: calibration
        header[BLOCK + 8: BLOCK + 24] = _MULTI_NAME
        struct.pack_into("<i", header, BLOCK + 24, 1)
        header[2 * BLOCK + 8: 2 * BLOCK + 24] = _CAL_NAME
        struct.pack_into("<i", header, 2 * BLOCK + 24, 2)
        c = 3 * BLOCK
        _put_text(header, c + _CAL_TEXT, 64, cal.calibration_text)
        struct.pack_into("<i", header, c + _CAL_TYPE,
                         cal.calibration_type if cal.calibration_type is not None else 2)
        _put_text(header, c + _CAL_UNIT, 16, cal.density_unit or "mg HA/ccm")
        for rel, value, name in ((_CAL_SLOPE, cal.density_slope, "density slope"),
                                 (_CAL_INTERCEPT, cal.density_intercept, "density intercept"),
                                 (_CAL_MU_WATER, cal.mu_water_per_cm, "mu water")):
            header[c + rel: c + rel + 8] = _vax_g_field(value, name)

    def write_slab(self, slab: np.ndarray) -> None:
        slab = np.asarray(slab)
        if slab.ndim != 3 or slab.shape[1:] != (self.dims[1], self.dims[0]):
            raise ValueError(f"slab shape {slab.shape} does not match (n, {self.dims[1]}, {self.dims[0]})")
        if slab.dtype != np.int16:
            raise ValueError(f"ISQ voxels are int16, got {slab.dtype}")
        if self._slices_written + slab.shape[0] > self.dims[2]:
            raise ValueError("more slices written than the ISQ dimensions allow")
        if slab.size:
            lo, hi = int(slab.min()), int(slab.max())
            self._min = lo if self._min is None else min(self._min, lo)
            self._max = hi if self._max is None else max(self._max, hi)
        self._file.write(memoryview(np.ascontiguousarray(slab, dtype="<i2")).cast("B"))
        self._slices_written += slab.shape[0]

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            if self._slices_written != self.dims[2]:
                raise ValueError(f"ISQ needs {self.dims[2]} slices, {self._slices_written} were written")
            pad = -(self._header_blocks * BLOCK + self._data_bytes) % BLOCK
            self._file.write(b"\x00" * pad)
            self._file.seek(80)
            self._file.write(struct.pack("<2i", self._min or 0, self._max or 0))
        finally:
            self._file.close()

    def abort(self) -> None:
        self._file.close()
        try:
            os.remove(self.path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_isq(path, volume, *, voxel_size_mm: Sequence[float], calibration: Optional[Calibration] = None,
              scanner: Optional[ScannerInfo] = None, slice_1_pos_um: int = 0,
              creation_date: Optional[_dt.datetime] = None, slices_per_write: int = 64) -> str:
    """Write an int16 volume indexed (z, y, x) as an ISQ file.

    The calibration block (µ water, density slope/intercept/unit, text) is written when the
    calibration has a µ of water or a density slope; mu_scaling always goes in the main header.
    The ISQ stores the volume extent in whole micrometres, so voxel sizes read back as
    ``round(size * 1000 * n) / n / 1000``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"ISQ volume must be 3-D (z, y, x), got shape {volume.shape}")
    z, y, x = volume.shape
    with IsqWriter(path, (x, y, z), voxel_size_mm=voxel_size_mm, calibration=calibration,
                   scanner=scanner, slice_1_pos_um=slice_1_pos_um, creation_date=creation_date) as writer:
        for start in range(0, z, slices_per_write):
            writer.write_slab(volume[start:start + slices_per_write])
    return os.fspath(path)


# ---- registration in the input seam ----------------------------------------------------------------
register_input_format(InputFormat(
    "ISQ",
    sniff=lambda head: "ISQ" if head[:16] == ISQ_MAGIC else None,
    header_bytes_needed=lambda first: isq_header_bytes_needed(first) if len(first) >= 512 else 512,
    parse_header=parse_isq_header))
