"""numba kernels of :mod:`ScancoUnitsLib.pipeline.kernels` (the ``fast`` extra).

Imported only by :func:`ScancoUnitsLib.pipeline.kernels.numba_kernels`, never at package import. Compiled once
per type signature and cached on disk (``cache=True``: numba's default cache folder, or
``NUMBA_CACHE_DIR``); ``nogil=True`` so that two workers convert two slabs at the same time. No
``fastmath``: every float operation is the IEEE one numpy does, so the outputs are bit-identical.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def lut_slab(src, flip, counts, luts1, outs1, n1, luts2, outs2, n2, luts4, outs4, n4):
    """One pass over a slab of 8/16-bit natives: histogram and every output through its table.

    ``src``: the natives' bit patterns (uint8/uint16, 1-D); the table index of a voxel is
    ``bit pattern ^ flip`` (= native - dtype minimum). ``counts`` (uint32: half the cache footprint
    of int64; the caller keeps a slab below 2**32 voxels) gains one per voxel at that index.
    ``lutsK`` (2-D, K-byte unsigned) hold one table per row; ``outsK`` (a tuple of 1-D arrays of the
    same unsigned type, the first ``nK`` are real) get ``table[index]``. Voxel by voxel, every output
    at once: each native voxel is read once.
    """
    for i in range(src.shape[0]):
        k = np.intp(src[i]) ^ flip
        counts[k] += 1
        for j in range(n1):
            outs1[j][i] = luts1[j, k]
        for j in range(n2):
            outs2[j][i] = luts2[j, k]
        for j in range(n4):
            outs4[j][i] = luts4[j, k]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _reference(x, ops, vals, j):
    """Row ``j`` of a step program (quantities.Step, one IEEE float64 operation each, in order):
    ``ops`` 1 + - 2 - 3 * 4 /, 0 ends the row; ``vals`` the operands."""
    for k in range(ops.shape[1]):
        op = ops[j, k]
        if op == 0:
            break
        v = vals[j, k]
        if op == 1:
            x = x + v
        elif op == 2:
            x = x - v
        elif op == 3:
            x = x * v
        else:
            x = x / v
    return x


@numba.njit(cache=True, nogil=True, boundscheck=False)
def float_slab(src, ops_f, vals_f, outs_f, n_f, mins_f, maxs_f, nonfinite_f,
               ops_h, vals_h, outs_h, n_h, mins_h, maxs_h,
               outs_m, n_m, mask_kind, low, high):
    """One pass over a slab of wide natives (int32, float32, float64...), float64 formulas.

    float32 outputs (``outs_f``, step programs ``ops_f``/``vals_f``): reference cast to float32; their finite
    min/max go into ``mins_f``/``maxs_f``, NaN/inf are counted in ``nonfinite_f``. int16 outputs
    (``outs_h``, programs ``ops_h``/``vals_h``): ``rint`` of the reference, clipped to int16; min/max into ``mins_h``/``maxs_h``.
    Masks (``outs_m``, uint8): ``mask_kind`` 0 = ``low <= v <= high``, 1 = ``v != 0``.
    Returns ``(hu clipped voxels, mask voxels, NaN natives seen by an int16 HU output)``; on NaN the
    caller refuses the slab, as UnitConverter does.
    """
    n = src.shape[0]
    clipped = 0
    ones = 0
    nan_hu = 0
    for i in range(n):
        v = src[i]
        x = np.float64(v)
        for j in range(n_f):
            r = np.float32(_reference(x, ops_f, vals_f, j))
            outs_f[j][i] = r
            if np.isfinite(r):
                if r < mins_f[j]:
                    mins_f[j] = r
                if r > maxs_f[j]:
                    maxs_f[j] = r
            else:
                nonfinite_f[j] += 1
        for j in range(n_h):
            r = np.rint(_reference(x, ops_h, vals_h, j))
            if np.isnan(r):
                nan_hu += 1
                r = 0.0
            elif r < -32768.0:
                r = -32768.0
                clipped += 1
            elif r > 32767.0:
                r = 32767.0
                clipped += 1
            h = np.int16(r)
            outs_h[j][i] = h
            if h < mins_h[j]:
                mins_h[j] = h
            if h > maxs_h[j]:
                maxs_h[j] = h
        for j in range(n_m):
            if mask_kind == 0:
                bit = np.uint8(1) if (v >= low and v <= high) else np.uint8(0)
            else:
                bit = np.uint8(1) if v != 0 else np.uint8(0)
            outs_m[j][i] = bit
            ones += bit
    return clipped, ones, nan_hu


@numba.njit(cache=True, nogil=True, boundscheck=False)
def count_in_mask(bits, mask, counts):
    """Region statistics: ``counts[bit pattern] += 1`` for every voxel of ``bits`` (uint8/uint16,
    3-D, any strides) where ``mask`` (bool, same shape) is set; one pass, no gathered copy."""
    nz, ny, nx = bits.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if mask[z, y, x]:
                    counts[np.intp(bits[z, y, x])] += 1
