"""Compressed AIM voxel payloads: D1TbinCmp, D1TcharCmp and D3Tbit8.

Decoding is incremental: a :class:`CompressedVoxelDecoder` hands out whole z-slices, slab by slab, and
reads only as much of the compressed block as those slices need. Memory stays proportional to the
slab, never to the numbers in the header. Encoders produce the byte blocks our AIM writer stores.

Payload layouts (all little-endian; ``H`` = 4 bytes in AIM v020, 8 in v030):

* **D1TbinCmp** (0x00150001): ``[length (H bytes, counts itself)][value1][value2][run bytes...]``.
  Start with value1. A run byte ``L`` = 255 gives 254 voxels and keeps the value; any other ``L``
  gives ``L`` voxels and then switches to the other value (``L`` = 0 switches without output).
* **D1TcharCmp** (0x00080002): ``[length (H bytes)]`` then pairs ``(value int8, count uint8)``.
* **D3Tbit8** (0x00060001): no header; one byte per 2x2x2 cell, ``cx*cy*cz`` bytes (``c = ceil(dim/2)``)
  then one value byte. Voxel (x, y, z) is bit ``(z%2)*4 + (y%2)*2 + (x%2)`` of byte
  ``x//2 + cx*(y//2 + cy*(z//2))``. A set bit gives the value byte (127 when that byte is 0).

AIM ``off`` border: binCmp and charCmp payloads hold only the interior ``dim - 2*off``; the decoder
pastes it at ``off`` into zero-filled full-size slices. bit8 payloads always cover the full ``dim``.

Decoded voxels are int8, values as stored (a uint8 value byte 200 comes back as -56).
"""

from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ScancoFormatError
from .codecs.bincmp import BinCmpStreamEncoder, BinCmpStream, encode_bin_cmp
from .codecs.bit8 import Bit8Planes, encode_bit8
from .codecs.charcmp import CharCmpStream, encode_char_cmp
from .codecs.common import (
    COMPRESSED_TYPE_CODES,
    D1T_BIN_CMP,
    D1T_CHAR_CMP,
    D3T_BIT8,
    BlockBytes,
    check_length_field_bytes,
    int_triple,
    normalise_kind,
)
from .codecs.runs import RunStream

__all__ = [
    "D1T_BIN_CMP",
    "D1T_CHAR_CMP",
    "D3T_BIT8",
    "COMPRESSED_TYPE_CODES",
    "CompressedVoxelDecoder",
    "decode_all",
    "encode_bin_cmp",
    "encode_char_cmp",
    "encode_bit8",
    "BinCmpStreamEncoder",
    "normalise_kind",
]


# ---------------------------------------------------------------------------------------------------
# Public decoder
# ---------------------------------------------------------------------------------------------------



def _int8_target(shape, out: Optional[np.ndarray]) -> np.ndarray:
    """``out`` checked to take ``shape`` int8 voxels, or a new array."""
    if out is None:
        return np.empty(shape, dtype=np.int8)
    if out.shape != shape or out.dtype != np.int8:
        raise ValueError(f"out must be int8 with shape {shape}, got {out.dtype} {out.shape}")
    return out

class CompressedVoxelDecoder:
    """Slab-wise decoder of one compressed AIM data block.

    Parameters
    ----------
    source:
        binary file object (seekable), bytes-like object (bytes, bytearray, memoryview, mmap), or a
        path (opened here and closed by :meth:`close` / the context manager).
    data_offset:
        byte offset of the data block in ``source``.
    data_size:
        block size from the AIM pre-header, or None for "up to the end of the source".
    dims_xyz, off_xyz:
        image dimensions (including the border) and AIM ``off`` border width, voxels.
    kind:
        ``"binCmp"``, ``"charCmp"``, ``"bit8"`` or the AIM type code.
    length_field_bytes:
        4 for AIM v020, 8 for v030 (not used by bit8).
    path:
        file name used in error messages.

    Slices come out in file order (z ascending) as int8 arrays shaped (n, y, x). Problems with the
    data raise :class:`ScancoFormatError`; tolerable oddities (padding after the stream, a length
    field shorter than the block...) are appended to :attr:`warnings` as one-line strings.

    Attributes: ``kind``, ``dims_xyz``, ``off_xyz``, ``interior_xyz`` (voxels the payload covers),
    ``shape_zyx``, ``next_slice``, ``values`` ((value1, value2) for binCmp, (0, value) for bit8,
    None for charCmp), ``warnings``.
    """

    def __init__(
        self,
        source,
        data_offset: int,
        data_size: Optional[int],
        dims_xyz: Sequence[int],
        kind,
        length_field_bytes: int = 4,
        off_xyz: Sequence[int] = (0, 0, 0),
        path=None,
    ):
        self.kind = normalise_kind(kind)
        self.dims_xyz = int_triple(dims_xyz, "dims_xyz")
        self.off_xyz = int_triple(off_xyz, "off_xyz")
        self._owned_file = None
        if isinstance(source, (str, os.PathLike)):
            if path is None:
                path = source
            try:
                self._owned_file = open(source, "rb")
            except OSError as exc:
                raise ScancoFormatError(path, f"cannot open: {exc.strerror or exc}") from None
            source = self._owned_file
        self.path = path
        self.warnings: List[str] = []
        dx, dy, dz = self.dims_xyz
        if min(self.dims_xyz) < 1:
            raise ScancoFormatError(path, f"image dimensions {dx}x{dy}x{dz} are not all positive")
        if data_size is not None and data_size < 0:
            raise ScancoFormatError(path, f"data block size {data_size} is negative")
        try:
            block = BlockBytes(source, int(data_offset), path)
            self._next_z = 0
            if self.kind == "bit8":
                self._bit8: Optional[Bit8Planes] = Bit8Planes(block, data_size, self.dims_xyz, self.warnings)
                self._runs: Optional[RunStream] = None
                self.interior_xyz = self.dims_xyz
                self.values = (0, int(self._bit8.value))
            else:
                ox, oy, oz = self.off_xyz
                if min(self.off_xyz) < 0:
                    raise ScancoFormatError(path, f"AIM off border ({ox}, {oy}, {oz}) is negative")
                interior = (dx - 2 * ox, dy - 2 * oy, dz - 2 * oz)
                if min(interior) < 1:
                    raise ScancoFormatError(
                        path, f"AIM off border ({ox}, {oy}, {oz}) leaves no interior in dimensions {dx}x{dy}x{dz}"
                    )
                self.interior_xyz = interior
                count = interior[0] * interior[1] * interior[2]
                lfb = check_length_field_bytes(length_field_bytes)
                stream_class = BinCmpStream if self.kind == "binCmp" else CharCmpStream
                self._runs = stream_class(block, data_size, lfb, count, self.warnings)
                self._bit8 = None
                self._finished = False
                if self.kind == "binCmp":
                    self.values = tuple(int(v) for v in self._runs.values)
                else:
                    self.values = None
        except BaseException:
            self.close()
            raise

    # -- housekeeping ------------------------------------------------------------------------------
    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        dx, dy, dz = self.dims_xyz
        return (dz, dy, dx)

    @property
    def next_slice(self) -> int:
        """Index of the slice :meth:`read_slices` returns next."""
        return self._next_z

    def close(self):
        if self._owned_file is not None:
            self._owned_file.close()
            self._owned_file = None
        # drop every view of a caller's buffer so that, e.g., an mmap can be closed afterwards
        runs = getattr(self, "run_lengths_of", None)
        if runs is not None:
            runs.block.release()
            runs._buf = np.zeros(0, dtype=np.uint8)
        bit8 = getattr(self, "_bit8", None)
        if bit8 is not None:
            bit8.block.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- reading -----------------------------------------------------------------------------------
    def read_slices(self, n_slices: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The next ``n_slices`` slices, shape (n, y, x) int8. Raises ValueError past the last slice."""
        n_slices = int(n_slices)
        if n_slices < 0 or self._next_z + n_slices > self.dims_xyz[2]:
            raise ValueError(
                f"cannot read {n_slices} slices from slice {self._next_z}: the image has {self.dims_xyz[2]}"
            )
        return self.read_slab(self._next_z, self._next_z + n_slices, out=out)

    def read_slab(self, z0: int, z1: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Slices ``z0 <= z < z1`` as (z1-z0, y, x) int8.

        Sequential calls are cheapest. For run-length kinds, a jump forward decodes and discards the
        slices in between, a jump backward starts again at the beginning of the stream.
        """
        dx, dy, dz = self.dims_xyz
        z0, z1 = int(z0), int(z1)
        if not 0 <= z0 <= z1 <= dz:
            raise ValueError(f"slab {z0}:{z1} is outside the image's {dz} slices")
        shape = (z1 - z0, dy, dx)
        out = _int8_target(shape, out)
        if z1 > z0:
            if self._bit8 is not None:
                self._bit8.read(z0, z1, out)
            else:
                self._read_runs(z0, z1, out)
        self._next_z = z1
        return out

    def iter_slabs(self, slices: int = 16) -> Iterator[np.ndarray]:
        """Slabs of ``slices`` slices (the last one may be shorter) from the current position on."""
        if slices < 1:
            raise ValueError("slices must be at least 1")
        while self._next_z < self.dims_xyz[2]:
            yield self.read_slices(min(slices, self.dims_xyz[2] - self._next_z))

    def read_all(self) -> np.ndarray:
        """The whole volume (z, y, x) int8."""
        return self.read_slab(0, self.dims_xyz[2])

    def read_rows(self, z: int, y0: int, y1: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``y0 <= y < y1`` of slice ``z`` as (1, y1-y0, x) int8: a piece of a slice too large to
        hold whole. Pieces read in file order (z, then y ascending) cost no more than whole slabs."""
        dx, dy, dz = self.dims_xyz
        z, y0, y1 = int(z), int(y0), int(y1)
        if not (0 <= z < dz and 0 <= y0 <= y1 <= dy):
            raise ValueError(f"rows {y0}:{y1} of slice {z} are outside the image's {dx}x{dy}x{dz} voxels")
        shape = (1, y1 - y0, dx)
        out = _int8_target(shape, out)
        if y1 > y0:
            if self._bit8 is not None:
                self._bit8.read_rows(z, y0, y1, out)
            else:
                self._read_runs(z, z + 1, out, y0, y1)
        self._next_z = z + 1 if y1 == dy else z
        return out

    def _read_runs(self, z0: int, z1: int, out: np.ndarray, y0: int = 0, y1: Optional[int] = None):
        """Slices z0..z1-1, rows y0..y1-1 into ``out``: whole slices, or rows of a single slice (either
        way one contiguous run of the interior stream)."""
        runs = self._runs
        dx, dy, dz = self.dims_xyz
        y1 = dy if y1 is None else y1
        ox, oy, oz = self.off_xyz
        ix, iy, iz = self.interior_xyz
        slice_voxels = ix * iy
        first = max(z0, oz) - oz  # interior slice range of this slab
        stop = min(z1, oz + iz) - oz
        row0 = max(y0, oy) - oy  # interior row range
        row1 = min(y1, oy + iy) - oy
        bordered = ox or oy or oz
        if bordered:
            out[...] = 0
        if stop > first and row1 > row0:
            if (row0, row1) != (0, iy) and stop - first != 1:
                raise ValueError("rows of several slices are not one run of the stream: read whole slices")
            start = first * slice_voxels + row0 * ix  # voxels of the stream before this piece
            if start < runs.emitted:
                runs.reset()  # warnings about the end of the stream were recorded the first time
            if start > runs.emitted:
                runs.skip(start - runs.emitted)
            count = (stop - first) * (row1 - row0) * ix
            target = out[first + oz - z0 : stop + oz - z0, row0 + oy - y0 : row1 + oy - y0]
            if not bordered and target.flags.c_contiguous:
                runs.produce(count, target.reshape(-1))
            else:
                decoded = np.empty(count, dtype=np.int8)
                runs.produce(count, decoded)
                target[:, :, ox : ox + ix] = decoded.reshape(stop - first, row1 - row0, ix)
            if runs.emitted == iz * slice_voxels and not self._finished:
                self._finished = True
                runs.finish_check()


def decode_all(
    buffer,
    dims_xyz: Sequence[int],
    kind,
    length_field_bytes: int = 4,
    off_xyz: Sequence[int] = (0, 0, 0),
    path=None,
) -> np.ndarray:
    """Decode a whole compressed block held in memory (exactly the data block) to (z, y, x) int8."""
    size = np.frombuffer(buffer, dtype=np.uint8).size
    with CompressedVoxelDecoder(buffer, 0, size, dims_xyz, kind, length_field_bytes, off_xyz, path) as decoder:
        return decoder.read_all()
