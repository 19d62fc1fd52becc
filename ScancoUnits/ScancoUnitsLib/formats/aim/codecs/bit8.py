"""D3Tbit8 (0x00060001): one byte per 2x2x2 cell, then one value byte. Random access by planes of
cells for the decoder, and the encoder.

Voxel (x, y, z) is bit ``(z%2)*4 + (y%2)*2 + (x%2)`` of byte ``x//2 + cx*(y//2 + cy*(z//2))``
(``c = ceil(dim/2)``). A set bit gives the value byte (127 when that byte is 0).
"""

from __future__ import annotations

from typing import List

import numpy as np

from ....errors import ScancoFormatError
from .common import BIT8_EMPTY_VALUE, BlockBytes, byte_volume

class Bit8Planes:
    def __init__(self, block: BlockBytes, data_size, dims_xyz, warnings: List[str]):
        self.block = block
        self.path = block.path
        dx, dy, dz = dims_xyz
        self.dims_xyz = dims_xyz
        self.cells_xyz = ((dx + 1) // 2, (dy + 1) // 2, (dz + 1) // 2)
        cx, cy, cz = self.cells_xyz
        self.plane_bytes = cx * cy
        needed = cx * cy * cz + 1
        block_size = block.available if data_size is None else int(data_size)
        if block_size < needed:
            raise ScancoFormatError(
                self.path,
                f"bit8 data block is {block_size} bytes but dimensions {dx}x{dy}x{dz} need {needed}",
            )
        if block.available < needed:
            raise ScancoFormatError(
                self.path,
                f"bit8 data needs {needed} bytes but the file ends after {block.available} bytes of the data block "
                "(truncated file?)",
            )
        if block_size > needed:
            warnings.append(f"bit8 data block is {block_size} bytes, {block_size - needed} more than needed (ignored)")
        stored = int(block.read(needed - 1, 1)[0])
        self.value_byte = stored
        value = stored if stored else BIT8_EMPTY_VALUE
        if not stored:
            warnings.append(
                f"bit8 value byte is 0; set voxels get {BIT8_EMPTY_VALUE} (as ITK does; AimIO would return all zeros)"
            )
        self.value = np.array([value], dtype=np.uint8).view(np.int8)[0]

    def read(self, z0: int, z1: int, out: np.ndarray):
        dx, dy, _ = self.dims_xyz
        cx, cy, _ = self.cells_xyz
        plane0 = z0 // 2
        plane1 = (z1 + 1) // 2  # exclusive
        raw = self.block.read(plane0 * self.plane_bytes, (plane1 - plane0) * self.plane_bytes)
        planes = raw.reshape(plane1 - plane0, cy, cx)
        bits = np.unpackbits(planes[..., np.newaxis], axis=-1, bitorder="little")
        bits = bits.reshape(plane1 - plane0, cy, cx, 2, 2, 2)  # bit index = zbit*4 + ybit*2 + xbit
        voxels = bits.transpose(0, 3, 1, 4, 2, 5).reshape(2 * (plane1 - plane0), 2 * cy, 2 * cx)
        first = z0 - 2 * plane0
        np.multiply(voxels[first : first + (z1 - z0), :dy, :dx].view(np.int8), self.value, out=out)


    def read_rows(self, z: int, y0: int, y1: int, out: np.ndarray):
        """Rows y0..y1-1 of slice z: only the cell rows that hold them are read and unpacked."""
        dx = self.dims_xyz[0]
        cx = self.cells_xyz[0]
        c0, c1 = y0 // 2, (y1 + 1) // 2
        raw = self.block.read((z // 2) * self.plane_bytes + c0 * cx, (c1 - c0) * cx)
        bits = np.unpackbits(raw.reshape(c1 - c0, cx)[..., np.newaxis], axis=-1, bitorder="little")
        bits = bits.reshape(c1 - c0, cx, 2, 2, 2)  # bit index = zbit*4 + ybit*2 + xbit
        voxels = bits[:, :, z % 2].transpose(0, 2, 1, 3).reshape(2 * (c1 - c0), 2 * cx)
        first = y0 - 2 * c0
        np.multiply(voxels[first : first + (y1 - y0), :dx].view(np.int8), self.value, out=out[0])


def encode_bit8(volume) -> bytes:
    """D3Tbit8 block for an int8/uint8/bool (z, y, x) volume: non-zero voxels become set bits, and the
    value byte holds their common value (127 for an all-zero volume). ValueError when the non-zero
    voxels do not share one value."""
    array = byte_volume(volume, "bit8")
    nonzero_values = np.unique(array[array != 0])
    if nonzero_values.size > 1:
        raise ValueError(f"bit8 holds one non-zero value, the volume has {nonzero_values.size}")
    value = int(nonzero_values[0]) if nonzero_values.size else BIT8_EMPTY_VALUE
    dz, dy, dx = array.shape
    cx, cy, cz = (dx + 1) // 2, (dy + 1) // 2, (dz + 1) // 2
    bits = np.zeros((2 * cz, 2 * cy, 2 * cx), dtype=np.uint8)
    bits[:dz, :dy, :dx] = array != 0
    cells = bits.reshape(cz, 2, cy, 2, cx, 2).transpose(0, 2, 4, 1, 3, 5).reshape(cz, cy, cx, 8)
    packed = np.packbits(cells, axis=-1, bitorder="little").reshape(-1)
    value_byte = np.array([value], dtype=np.int8).view(np.uint8)
    return packed.tobytes() + value_byte.tobytes()
