"""The three orthogonal planes the QC report shows (:mod:`~ScancoUnitsLib.pipeline.report`), kept while a
volume streams slab by slab: the axial plane (y, x) is copied from the one slab that holds it, the
coronal (z, x) and sagittal (z, y) planes are filled row by row from every slab. Only the planes are
held, never a volume. A region (:class:`~ScancoUnitsLib.formats.regions.PlacedRegion`) hands its own box of
each slab (:meth:`MidPlanes.take_part`), so a region's planes cost no full-width slab.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

Triple = Tuple[int, int, int]


class MidPlanes:
    """Planes through ``mid_zyx`` of a volume of ``shape_zyx``: :attr:`axial` (None until its slab is
    seen, or zeros with ``axial_zeros``), :attr:`coronal` and :attr:`sagittal` (zeros where no slab was
    seen)."""

    def __init__(self, shape_zyx: Triple, mid_zyx: Triple, dtype, axial_zeros: bool = False):
        nz, ny, nx = shape_zyx
        self.shape_zyx = (nz, ny, nx)
        self.mid_zyx = tuple(mid_zyx)
        self.dtype = np.dtype(dtype)
        self.axial: Optional[np.ndarray] = np.zeros((ny, nx), self.dtype) if axial_zeros else None
        self.coronal = np.zeros((nz, nx), dtype=self.dtype)
        self.sagittal = np.zeros((nz, ny), dtype=self.dtype)

    def take(self, z0: int, slab: np.ndarray) -> None:
        """The planes' part of the slab ``slab`` (z, y, x over the whole y and x) starting at slice ``z0``."""
        n = slab.shape[0]
        zm, ym, xm = self.mid_zyx
        if z0 <= zm < z0 + n:
            self.axial = np.array(slab[zm - z0], dtype=self.dtype)
        self.coronal[z0:z0 + n] = slab[:, ym, :]
        self.sagittal[z0:z0 + n] = slab[:, :, xm]

    def take_part(self, z0: int, part: np.ndarray, ys: slice, xs: slice) -> None:
        """The planes' part of a box ``part`` covering slices ``z0 ...``, rows ``ys`` and columns ``xs``
        (a region's own box: the rest of the planes stays as it is)."""
        n = part.shape[0]
        zm, ym, xm = self.mid_zyx
        if self.axial is None:
            self.axial = np.zeros(self.shape_zyx[1:], dtype=self.dtype)
        if z0 <= zm < z0 + n:
            self.axial[ys, xs] = part[zm - z0]
        if ys.start <= ym < ys.stop:
            self.coronal[z0:z0 + n, xs] = part[:, ym - ys.start, :]
        if xs.start <= xm < xs.stop:
            self.sagittal[z0:z0 + n, ys] = part[:, :, xm - xs.start]

    def axial_or_zeros(self) -> np.ndarray:
        return self.axial if self.axial is not None else np.zeros(self.shape_zyx[1:], dtype=self.dtype)

    def three(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(axial, coronal, sagittal)."""
        return self.axial_or_zeros(), self.coronal, self.sagittal
