"""SCANCO AIM v020 / v030: header parsing and writing.

v020: five int32 block sizes [20, 140, log, data, assoc] at byte 0, a 140-byte image struct, the
processing log, then the voxel block. v030: the magic ``AIMDATA_V030   \\0``, five int64 block sizes
[40, 224, ...] at byte 16, a 224-byte struct with int64 geometry and element sizes in nanometres.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import struct
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .log import (
    build_log,
    calibration_from_log,
    calibration_lines,
    data_range_from_log,
    decode_log,
    parse_log,
    replace_calibration,
    scanner_from_log,
    scanner_lines,
)
from ...errors import ScancoFormatError
from ..inputs import InputFormat, register_input_format
from ...core.header import Calibration, ScancoHeader, ScannerInfo
from ..vms import VmsEncodingError, datetime_to_log_date, float_to_vax_f, vax_f_to_float

AIM_V030_MAGIC = b"AIMDATA_V030   \x00"
MAX_DIMENSION = 1 << 20


@dataclass(frozen=True)
class AimDataType:
    code: int
    name: str
    voxel_type: Optional[str]      # numpy dtype of decoded voxels
    compression: Optional[str]     # None, "binCmp", "charCmp", "bit8"
    vax_float: bool = False


_TYPES = {t.code: t for t in (
    AimDataType(0x00010001, "D1Tchar", "int8", None),
    AimDataType(0x000D0001, "D1Tpixel", "uint8", None),
    AimDataType(0x00160001, "D1Tuchar", "uint8", None),
    AimDataType(0x00020002, "D1Tshort", "int16", None),
    AimDataType(0x00170002, "D1Tushort", "uint16", None),
    AimDataType(0x00030004, "D1Tint32", "int32", None),
    AimDataType(0x00040004, "D1Tfloat", "float32", None, vax_float=True),
    AimDataType(0x001A0004, "D1Ti3efloat", "float32", None),
    AimDataType(0x00140008, "D1Tdouble", "float64", None),
    AimDataType(0x00150001, "D1TbinCmp", "int8", "binCmp"),
    AimDataType(0x00080002, "D1TcharCmp", "int8", "charCmp"),
    AimDataType(0x00060001, "D3Tbit8", "int8", "bit8"),
)}
_UNSUPPORTED = {
    0x00030008: "D1Tint (int64)",
    0x00120003: "D1Trgb (3-channel)",
    0x00060003: "D3Tchar (3-channel)",
    0x00080003: "D1TcharCmp2",
    0x00640001: "D1TZBencoded",
}
_WRITE_TYPES = {"int16": 0x00020002, "int8": 0x00010001, "uint8": 0x00160001, "uint16": 0x00170002,
                "int32": 0x00030004}


def aim_data_type(code: int) -> Optional[AimDataType]:
    return _TYPES.get(code)


def detect_aim_version(head: bytes) -> Optional[int]:
    """30 or 20 when ``head`` starts like an AIM of that version, else None."""
    if head[:16] == AIM_V030_MAGIC or head[:15] == AIM_V030_MAGIC[:15]:
        return 30
    if len(head) >= 8 and struct.unpack_from("<2i", head, 0) == (20, 140):
        return 20
    return None


def is_legacy_aim(head: bytes) -> bool:
    if len(head) < 8:
        return False
    first, second = struct.unpack_from("<2i", head, 0)
    return first == 16 and second in (92, 96)


def parse_aim_header(head: bytes, path: str, file_size: int) -> ScancoHeader:
    """Decode an AIM header. ``head`` must hold the pre-header, struct and processing log (the
    caller reads ``aim_header_bytes_needed`` bytes)."""
    version = detect_aim_version(head)
    if version is None:
        raise ScancoFormatError(path, "not an AIM file (no AIMDATA_V030 magic, no v020 block sizes 20/140)")
    if version == 30:
        pre_at, fmt = 16, "<5q"
        expected_pre, expected_struct = 40, 224
    else:
        pre_at, fmt = 0, "<5i"
        expected_pre, expected_struct = 20, 140
    if file_size < pre_at + expected_pre or len(head) < pre_at + expected_pre:
        raise ScancoFormatError(path, f"truncated AIM pre-header: file has {file_size} bytes")
    pre_len, struct_len, log_len, data_len, assoc_len = struct.unpack_from(fmt, head, pre_at)
    if pre_len != expected_pre or struct_len != expected_struct:
        raise ScancoFormatError(
            path, f"AIM v0{version} block sizes {pre_len}/{struct_len} differ from {expected_pre}/{expected_struct}")
    for label, n in (("processing log", log_len), ("image data", data_len), ("associated data", assoc_len)):
        if n < 0:
            raise ScancoFormatError(path, f"negative {label} length {n}")
    struct_at = pre_at + pre_len
    log_at = struct_at + struct_len
    data_offset = log_at + log_len
    if log_at > file_size:
        raise ScancoFormatError(path, f"truncated: the image struct ends at byte {log_at}, file has {file_size}")
    if data_offset > file_size:
        raise ScancoFormatError(path, f"truncated: processing log of {log_len} bytes runs past the end of the file "
                                      f"({file_size} bytes)")
    if len(head) < data_offset:
        raise ScancoFormatError(path, f"the header was read only to byte {len(head)} of {data_offset}")

    if version == 30:
        s = struct_at
        struct_version, ident, ref, type_code = struct.unpack_from("<4i", head, s)
        pos = struct.unpack_from("<3q", head, s + 16)
        dims = struct.unpack_from("<3q", head, s + 40)
        off = struct.unpack_from("<3q", head, s + 64)
        extra = {name: list(struct.unpack_from("<3q", head, s + at))
                 for name, at in (("supdim", 88), ("suppos", 112), ("subdim", 136), ("testoff", 160))}
        el_nm = struct.unpack_from("<3q", head, s + 184)
        voxel_size_mm = tuple(v * 1e-6 for v in el_nm)
        assoc = list(struct.unpack_from("<4i", head, s + 208))
        raw_el = {"element_size_nm": list(el_nm)}
    else:
        s = struct_at
        struct_version, _plog, _pdat, ident, ref, type_code = struct.unpack_from("<6i", head, s)
        pos = struct.unpack_from("<3i", head, s + 24)
        dims = struct.unpack_from("<3i", head, s + 36)
        off = struct.unpack_from("<3i", head, s + 48)
        extra = {name: list(struct.unpack_from("<3i", head, s + at))
                 for name, at in (("supdim", 60), ("suppos", 72), ("subdim", 84), ("testoff", 96))}
        try:
            voxel_size_mm = tuple(vax_f_to_float(head[s + 108 + 4 * i: s + 112 + 4 * i]) for i in range(3))
        except VmsEncodingError as exc:
            raise ScancoFormatError(path, f"element size is not a valid VAX float ({exc})") from None
        assoc = list(struct.unpack_from("<5i", head, s + 120))
        raw_el = {}

    for axis, n in zip("xyz", dims):
        if not 0 < n <= MAX_DIMENSION:
            raise ScancoFormatError(path, f"absurd dimension {axis} = {n} voxels")
    for axis, size in zip("xyz", voxel_size_mm):
        if not (math.isfinite(size) and size > 0):
            raise ScancoFormatError(path, f"element size along {axis} is not positive ({size} mm)")
    for axis, n, border in zip("xyz", dims, off):
        if border < 0 or (border > 0 and 2 * border >= n):
            raise ScancoFormatError(path, f"border (off) {border} along {axis} does not fit dimension {n}")

    dtype = _TYPES.get(type_code)
    if dtype is None:
        label = _UNSUPPORTED.get(type_code)
        what = f"unsupported voxel type {label}" if label else f"unknown voxel type code 0x{type_code:08x}"
        raise ScancoFormatError(path, f"{what}")

    voxel_count = dims[0] * dims[1] * dims[2]
    available = file_size - data_offset
    if dtype.compression is None:
        itemsize = np.dtype(dtype.voxel_type).itemsize
        data_size = voxel_count * itemsize
        if data_size > available:
            raise ScancoFormatError(
                path, f"truncated: {dims[0]}x{dims[1]}x{dims[2]} {dtype.name} voxels need {data_size} bytes "
                      f"from byte {data_offset}, the file has {available}")
    else:
        data_size = data_len
        if data_len > available:
            raise ScancoFormatError(
                path, f"truncated: compressed image block of {data_len} bytes starts at byte {data_offset}, "
                      f"the file has {available}")
        if data_len == 0:
            raise ScancoFormatError(path, "compressed image block is empty")
        _check_compressed_capacity(path, dtype, dims, off, data_len, 8 if version == 30 else 4)

    log_text = decode_log(head[log_at:data_offset])
    items = parse_log(log_text)
    calibration = calibration_from_log(items, dtype.voxel_type)
    scanner = scanner_from_log(items)
    min_value, max_value = data_range_from_log(items)
    origin_mm = tuple(float(p) * size for p, size in zip(pos, voxel_size_mm))

    raw_fields = [
        ("struct_version", struct_version),
        ("id", ident),
        ("ref", ref),
        ("block_sizes", [pre_len, struct_len, log_len, data_len, assoc_len]),
        *((k, v) for k, v in extra.items()),
        *raw_el.items(),
        ("assoc", assoc),
        ("min_data_value", min_value),
        ("max_data_value", max_value),
    ]
    return ScancoHeader(
        path=path,
        format="AIM",
        version=f"AIMDATA_V0{version}",
        dimensions=tuple(int(n) for n in dims),
        voxel_size_mm=voxel_size_mm,
        position_voxels=tuple(int(p) for p in pos),
        origin_mm=origin_mm,
        voxel_type=dtype.voxel_type,
        data_type_code=type_code,
        data_type_name=dtype.name,
        data_offset=data_offset,
        data_size=data_size,
        compression=dtype.compression,
        border_voxels=tuple(int(b) for b in off),
        file_size=file_size,
        calibration=calibration,
        scanner=scanner,
        processing_log=log_text,
        processing_log_items=items,
        raw_fields=tuple(raw_fields),
    )


def _check_compressed_capacity(path, dtype: AimDataType, dims, off, data_len: int, length_field_bytes: int) -> None:
    """Refuse dimensions that the compressed block cannot possibly hold, so that no reader allocates
    voxel buffers from header numbers alone (binCmp: at most 254 voxels a byte, charCmp: 255 a pair,
    bit8: one byte per 2x2x2 cell plus the value byte)."""
    if dtype.compression == "bit8":
        cells = ((dims[0] + 1) // 2) * ((dims[1] + 1) // 2) * ((dims[2] + 1) // 2)
        if data_len < cells + 1:
            raise ScancoFormatError(
                path, f"bit8 image block of {data_len} bytes is too small for {dims[0]}x{dims[1]}x{dims[2]} "
                      f"voxels (needs {cells + 1})")
        return
    interior = [n - 2 * b for n, b in zip(dims, off)]
    voxels = interior[0] * interior[1] * interior[2]
    if dtype.compression == "binCmp":
        capacity = max(data_len - length_field_bytes - 2, 0) * 254
    else:  # charCmp
        capacity = max(data_len - length_field_bytes, 0) // 2 * 255
    if voxels > capacity:
        raise ScancoFormatError(
            path, f"{dtype.name} image block of {data_len} bytes can hold at most {capacity} voxels, "
                  f"but the header's dimensions {dims[0]}x{dims[1]}x{dims[2]} need {voxels}")


def aim_header_bytes_needed(head: bytes) -> int:
    """Bytes from the file start to the voxel block, from the pre-header alone (unchecked)."""
    version = detect_aim_version(head)
    if version == 30 and len(head) >= 56:
        pre, st, log = struct.unpack_from("<3q", head, 16)
        return 16 + max(pre, 0) + max(st, 0) + max(log, 0)
    if version == 20 and len(head) >= 20:
        pre, st, log = struct.unpack_from("<3i", head, 0)
        return max(pre, 0) + max(st, 0) + max(log, 0)
    return len(head)


# ---- writing -----------------------------------------------------------------------------------------
def _log_text(processing_log: Optional[str], calibration: Optional[Calibration],
              scanner: Optional[ScannerInfo]) -> str:
    if processing_log is None:
        pairs = (calibration_lines(calibration) if calibration else []) + \
                (scanner_lines(scanner) if scanner else [])
        return build_log(pairs, created_by="ScancoUnits",
                         time_text=datetime_to_log_date(_dt.datetime.now()))
    text = processing_log.split("\x00", 1)[0]
    if calibration is not None:
        text = replace_calibration(text, calibration)
    if text and not text.endswith("\n"):
        text += "\n"
    return text


def write_aim(path, volume, *, version: int = 20, voxel_size_mm: Sequence[float],
              position_voxels: Sequence[int] = (0, 0, 0), calibration: Optional[Calibration] = None,
              processing_log: Optional[str] = None, scanner: Optional[ScannerInfo] = None,
              compression: Optional[str] = None) -> str:
    """Write a volume indexed (z, y, x) as an AIM v020 or v030 file, SCANCO style.

    * voxel types: int16 (D1Tshort), int8 (D1Tchar), uint8 (D1Tuchar), uint16, int32, and float32
      (VAX D1Tfloat in v020, IEEE D1Ti3efloat in v030, as AIMPACK writes floats);
    * ``compression``: None, ``"binCmp"`` (two-value masks) or ``"charCmp"`` (int8/uint8 only);
    * the file is padded with zeros to a multiple of 512 bytes, as SCANCO's own files are;
    * the processing log is given text (calibration lines replaced by ``calibration`` if both are
      given) or generated from ``calibration`` and ``scanner``; it ends with a NUL as SCANCO's do.
    """
    if version not in (20, 30):
        raise ValueError(f"AIM version must be 20 or 30, got {version!r}")
    volume = np.asarray(volume)
    if volume.ndim != 3 or 0 in volume.shape:
        raise ValueError(f"AIM volume must be a non-empty 3-D array (z, y, x), got shape {volume.shape}")
    sizes = tuple(float(s) for s in voxel_size_mm)
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"voxel size must be three positive numbers in mm, got {voxel_size_mm}")
    pos = tuple(int(p) for p in position_voxels)
    z, y, x = volume.shape
    length_bytes = 8 if version == 30 else 4

    if compression is None:
        if volume.dtype == np.float32:
            if version == 30:
                type_code, payload = 0x001A0004, np.ascontiguousarray(volume, "<f4").tobytes()
            else:
                type_code, payload = 0x00040004, _float32_to_vax_bytes(volume)
        else:
            type_code = _WRITE_TYPES.get(volume.dtype.name)
            if type_code is None:
                raise ValueError(f"cannot write {volume.dtype} voxels to an AIM")
            payload = np.ascontiguousarray(volume, volume.dtype.newbyteorder("<")).tobytes()
    else:
        from . import compression as aim_compression

        if volume.dtype not in (np.int8, np.uint8):
            raise ValueError(f"{compression} compression needs int8/uint8 voxels, got {volume.dtype}")
        data = volume.astype(np.int8, copy=False) if volume.dtype == np.uint8 else volume
        if compression == "binCmp":
            type_code, payload = 0x00150001, aim_compression.encode_bin_cmp(data, length_bytes)
        elif compression == "charCmp":
            type_code, payload = 0x00080002, aim_compression.encode_char_cmp(data, length_bytes)
        else:
            raise ValueError(f"unknown compression {compression!r} (binCmp or charCmp)")

    log = _log_text(processing_log, calibration, scanner).encode("latin-1", errors="replace") + b"\x00"
    if version == 20 and len(payload) >= 1 << 31:
        raise ValueError("AIM v020 cannot hold more than 2 GiB of voxel data; write version 30")
    head = aim_header_bytes(version, type_code, (x, y, z), pos, sizes, len(log), len(payload))
    total = len(head) + len(log) + len(payload)
    with open(path, "wb") as f:
        f.write(head)
        f.write(log)
        f.write(payload)
        f.write(b"\x00" * (-total % 512))  # VMS-style 512-byte records, as SCANCO's files (ITK needs >= 512)
    return os.fspath(path)


def aim_header_bytes(version: int, type_code: int, dims_xyz: Sequence[int], position_voxels: Sequence[int],
                     voxel_size_mm: Sequence[float], log_bytes: int, data_bytes: int) -> bytes:
    """Pre-header and image struct of an AIM v020 / v030, SCANCO style (version words 16 / 24,
    VAX-F element sizes in v020, nanometres rounded to nearest in v030); the processing log
    (``log_bytes`` long, NUL included) and the voxel block (``data_bytes``) follow them."""
    x, y, z = (int(n) for n in dims_xyz)
    pos = tuple(int(p) for p in position_voxels)
    sizes = tuple(float(s) for s in voxel_size_mm)
    if version == 20:
        pre = struct.pack("<5i", 20, 140, log_bytes, data_bytes, 0)
        body = bytearray(140)
        struct.pack_into("<6i", body, 0, 16, 0, 0, 0, 0, type_code)
        struct.pack_into("<3i", body, 24, *pos)
        struct.pack_into("<3i", body, 36, x, y, z)
        for i, size in enumerate(sizes):
            body[108 + 4 * i: 112 + 4 * i] = float_to_vax_f(size)
        return pre + bytes(body)
    if version != 30:
        raise ValueError(f"AIM version must be 20 or 30, got {version!r}")
    pre = AIM_V030_MAGIC + struct.pack("<5q", 40, 224, log_bytes, data_bytes, 0)
    body = bytearray(224)
    struct.pack_into("<4i", body, 0, 24, 0, 0, type_code)
    struct.pack_into("<3q", body, 16, *pos)
    struct.pack_into("<3q", body, 40, x, y, z)
    struct.pack_into("<3q", body, 184, *(round(s * 1e6) for s in sizes))
    return pre + bytes(body)


def _float32_to_vax_bytes(volume: np.ndarray) -> bytes:
    scaled = np.ascontiguousarray(volume, "<f4") * np.float32(4.0)
    if not np.all(np.isfinite(scaled)):
        raise ValueError("float volume has values that a VAX F-float cannot hold")
    halves = scaled.view("<u2").reshape(-1, 2)[:, ::-1]
    out = np.ascontiguousarray(halves)
    return out.tobytes()


# ---- registration in the input seam ----------------------------------------------------------------
def _sniff_aim(head: bytes) -> Optional[str]:
    version = detect_aim_version(head)
    return None if version is None else f"AIM v{version:03d}"


register_input_format(InputFormat(
    "AIM", sniff=_sniff_aim, header_bytes_needed=aim_header_bytes_needed, parse_header=parse_aim_header,
    refusal=lambda head: ("legacy AIM v010/v011 files are not supported (only v020 and v030)"
                          if is_legacy_aim(head) else None)))
