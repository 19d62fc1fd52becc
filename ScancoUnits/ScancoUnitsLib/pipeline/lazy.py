"""A SCANCO file as a lazy dask array of a calibrated quantity: :func:`to_dask`.

Nothing is read when the array is made. Computing a block opens the file, reads only the slices the
block covers (:meth:`~ScancoUnitsLib.formats.reader.VoxelSource.read_slab`) and converts them with the same
code as the NRRD writer (:class:`~ScancoUnitsLib.core.units.UnitConverter`, the thresholds' mask rule), so
the computed array equals the converted volume voxel for voxel. Arrays are indexed (z, y, x).

Needs dask (``pip install scanco-units[dask]``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import ScancoError
from ..core.thresholds import ThresholdSpec, mask_from_char, resolve_thresholds
from ..core.units import QUANTITIES, UnitConverter

#: what :func:`to_dask` can give: the unit quantities, the file's own values and the threshold mask
LAZY_QUANTITIES = QUANTITIES + ("native", "mask")
_DEFAULT_CHUNK_VOXELS = 1 << 24  # 16 Mi voxels a block (32 MB of int16)


def _block(header, quantity: str, hu_dtype: str, resolved, block_info=None):
    from ..formats.reader import open_voxels

    (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    with open_voxels(header) as source:
        native = source.read_slab(z0, z1)
    native = np.ascontiguousarray(native[:, y0:y1, x0:x1])
    if quantity == "native":
        return native
    if quantity == "mask":
        if resolved is None:
            return mask_from_char(native)
        return resolved.mask(native)
    return UnitConverter(header.calibration, path=header.path).convert(native, quantity, hu_dtype=hu_dtype)


def to_dask(path, quantity: str = "density_mg_ha_ccm", chunks=None, *,
            thresholds: Optional[ThresholdSpec] = None, hu_dtype: Optional[str] = None):
    """Lazy (z, y, x) dask array of ``quantity`` for the SCANCO file ``path``.

    ``quantity``: one of :data:`LAZY_QUANTITIES` ("mu", "hu", "density_mg_ha_ccm", "density_g_cc",
    "native", "mask"). ``chunks``: anything ``dask.array`` accepts for a (z, y, x) array; default:
    whole slices, about 16 Mi voxels a block. ``thresholds`` (for "mask"): default those of
    :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest`; char AIMs give their own mask (non-zero -> 1).
    ``hu_dtype``: "int16" (default, as the NRRD) or "float32". Bad files and missing calibrations
    raise here, before any block is computed.
    """
    try:
        import dask.array as da
    except ImportError as exc:
        from ..errors import DaskUnavailableError

        raise DaskUnavailableError("to_dask needs dask: pip install scanco-units[dask]") from exc
    from .request import ConversionRequest
    from ..formats.reader import read_header

    if quantity not in LAZY_QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {', '.join(LAZY_QUANTITIES)}")
    defaults = ConversionRequest()
    hu_dtype = hu_dtype or defaults.hu_dtype
    header = read_header(path)
    native_dtype = np.dtype(header.voxel_type)
    char = native_dtype.kind in "iu" and native_dtype.itemsize == 1
    resolved = None
    if quantity == "native":
        dtype = native_dtype
    elif quantity == "mask":
        dtype = np.dtype("uint8")
        if not char:
            resolved = resolve_thresholds(thresholds or defaults.thresholds, header.calibration,
                                          voxel_type=header.voxel_type,
                                          header_max_data_value=header.raw_field("max_data_value"),
                                          path=header.path)
    else:
        if native_dtype.kind == "f" or char:
            raise ScancoError(f"{header.path}: a {header.voxel_type} AIM is not rescaled to {quantity}; "
                              "use quantity='native'" + ("" if native_dtype.kind == "f" else " or 'mask'"))
        converter = UnitConverter(header.calibration, path=header.path)
        converter.require(quantity)
        dtype = converter.output_dtype(quantity, hu_dtype=hu_dtype)
    nz, ny, nx = header.shape_zyx
    if chunks is None:
        chunks = (max(1, min(nz, _DEFAULT_CHUNK_VOXELS // max(1, nx * ny))), ny, nx)
    normalized = da.core.normalize_chunks(chunks, shape=(nz, ny, nx), dtype=dtype)
    name = f"scanco-{quantity}-{da.core.tokenize(header.path, header.file_size, quantity, hu_dtype, resolved)}"
    return da.map_blocks(_block, header, quantity, hu_dtype, resolved, chunks=normalized, dtype=dtype,
                         meta=np.empty((0, 0, 0), dtype=dtype), name=name)
