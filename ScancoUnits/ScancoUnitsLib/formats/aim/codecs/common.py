"""What every AIM compressed-voxel codec shares: type codes and kind names, the format's constants,
argument checks, random access to a data block's bytes, and the encoders' input check."""

from __future__ import annotations

import io
import os
from typing import Tuple

import numpy as np

from ....errors import InputReadError, ScancoFormatError

D1T_BIN_CMP = 0x00150001
D1T_CHAR_CMP = 0x00080002
D3T_BIT8 = 0x00060001

#: AIM data-type code -> kind name used by this module.
COMPRESSED_TYPE_CODES = {D1T_BIN_CMP: "binCmp", D1T_CHAR_CMP: "charCmp", D3T_BIT8: "bit8"}

_KIND_ALIASES = {
    "bincmp": "binCmp",
    "d1tbincmp": "binCmp",
    "charcmp": "charCmp",
    "d1tcharcmp": "charCmp",
    "bit8": "bit8",
    "d3tbit8": "bit8",
}

BIN_KEEP_BYTE = 255  # run byte meaning "254 voxels, keep the value"
BIN_KEEP_RUN = 254  # voxels produced by that byte; also the longest run a switching byte can hold
CHAR_MAX_RUN = 255
BIT8_EMPTY_VALUE = 127  # value used when the bit8 value byte is 0
INT32_MAX = 2**31 - 1


def normalise_kind(kind) -> str:
    """``"binCmp"``, ``"charCmp"`` or ``"bit8"`` for a kind name (any case, with or without the
    ``D1T``/``D3T`` prefix) or an AIM data-type code; ValueError otherwise."""
    if isinstance(kind, (int, np.integer)) and not isinstance(kind, bool):
        name = COMPRESSED_TYPE_CODES.get(int(kind))
        if name is None:
            raise ValueError(f"AIM data type 0x{int(kind):08x} is not a compressed type")
        return name
    if isinstance(kind, str):
        name = _KIND_ALIASES.get(kind.strip().lower())
        if name is not None:
            return name
    raise ValueError(f"unknown compression kind {kind!r} (expected binCmp, charCmp or bit8)")


def check_length_field_bytes(length_field_bytes) -> int:
    if length_field_bytes not in (4, 8):
        raise ValueError(f"length_field_bytes must be 4 (AIM v020) or 8 (AIM v030), not {length_field_bytes!r}")
    return int(length_field_bytes)


def int_triple(values, name: str) -> Tuple[int, int, int]:
    try:
        items = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three integers, got {values!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must be three integers, got {values!r}")
    return items  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Byte access
# ---------------------------------------------------------------------------------------------------


class BlockBytes:
    """Random access to the bytes of one data block in a file object or a bytes-like object."""

    def __init__(self, source, data_offset: int, path):
        self.path = path
        self._file = None
        self._buffer = None
        try:  # buffer protocol first: an mmap also has read/seek, but slicing it is cheaper
            self._buffer = np.frombuffer(source, dtype=np.uint8)
        except (TypeError, ValueError, BufferError, AttributeError):
            if not (hasattr(source, "read") and hasattr(source, "seek")):
                raise ValueError(
                    f"source must be a binary file object or a bytes-like object, not {type(source).__name__}"
                ) from None
            self._file = source
            total = self._file_size(source)
        else:
            total = self._buffer.size
        if data_offset < 0:
            raise ScancoFormatError(path, f"data block offset {data_offset} is negative")
        self.start = int(data_offset)
        #: bytes of the block that physically exist (the file may be truncated)
        self.available = max(0, total - self.start)

    @staticmethod
    def _file_size(fileobj) -> int:
        try:
            return os.fstat(fileobj.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            here = fileobj.tell()
            try:
                fileobj.seek(0, io.SEEK_END)
                return fileobj.tell()
            finally:
                fileobj.seek(here)

    def read(self, rel_offset: int, count: int) -> np.ndarray:
        """Up to ``count`` bytes at ``rel_offset`` from the block start (shorter at the end of the data)."""
        count = max(0, min(count, self.available - rel_offset))
        if count == 0:
            return np.zeros(0, dtype=np.uint8)
        if self._buffer is not None:
            begin = self.start + rel_offset
            return self._buffer[begin : begin + count]
        try:
            self._file.seek(self.start + rel_offset)
            data = self._file.read(count)
        except OSError as exc:  # EIO of a failing disk: one line naming the file
            raise InputReadError(self.path, exc) from None
        return np.frombuffer(data, dtype=np.uint8)

    def release(self):
        self._buffer = None
        self._file = None


def byte_volume(volume, what: str) -> np.ndarray:
    """C-ordered int8 view of an int8 / uint8 / bool volume (uint8 reinterpreted as two's complement)."""
    array = np.asarray(volume)
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    if array.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise ValueError(f"{what} needs an int8, uint8 or bool volume, got {array.dtype}")
    if array.ndim != 3:
        raise ValueError(f"{what} needs a 3-D (z, y, x) volume, got {array.ndim} dimensions")
    if array.size == 0:
        raise ValueError(f"{what} cannot encode an empty volume {array.shape}")
    return np.ascontiguousarray(array).view(np.int8)
