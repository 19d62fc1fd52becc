"""A realistic synthetic scan made in code: a bone (cortical shell around a trabecular-like core)
beside calibration rods of known density, as in a SCANCO QC phantom.

Native values are set from the densities through the calibration itself, so converting the file
must give the rods' densities back; Gaussian noise makes it look like a scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np

from .core.header import Calibration, ScannerInfo

# A µCT-like calibration (70 kVp, mu_scaling 4096), as in SCANCO µCT headers.
PHANTOM_CALIBRATION = Calibration(
    mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6,
    density_unit="mg HA/ccm", calibration_type=2,
    calibration_text="70 kVp, 0.5mm Al, BH: 1200mg HA/ccm, Scaling 4096 (ScancoUnits phantom)")
PHANTOM_SCANNER = ScannerInfo(scanner_id=2135, scanner_type=10, energy_v=70000, intensity_ua=114, site=4,
                              measurement_index=1, patient_index=1, patient_name="ScancoUnits phantom")
ROD_DENSITIES_MG_HA_CCM = (0.0, 100.0, 200.0, 400.0, 800.0)
TISSUE_DENSITIES_MG_HA_CCM = {"cortical": 1100.0, "trabecular": 950.0, "marrow": 30.0}


@dataclass(frozen=True)
class Rod:
    density_mg_ha_ccm: float
    center_yx: Tuple[float, float]
    radius_voxels: float


def density_to_native(density_mg_ha_ccm: float, calibration: Calibration = PHANTOM_CALIBRATION) -> float:
    c = calibration
    return (density_mg_ha_ccm - c.density_intercept) / c.density_slope * c.mu_scaling


def phantom_layout(ny: int, nx: int) -> List[Rod]:
    """Rods along the right edge of the field of view, each away from the bone."""
    radius = max(2.0, min(ny, nx) * 0.055)
    xs = nx * 0.86
    rods = []
    n = len(ROD_DENSITIES_MG_HA_CCM)
    for i, rho in enumerate(ROD_DENSITIES_MG_HA_CCM):
        y = ny * (0.12 + 0.76 * i / max(n - 1, 1))
        rods.append(Rod(rho, (y, xs), radius))
    return rods


def phantom_slabs(shape_zyx: Tuple[int, int, int], *, slices: int = 16, noise_native: float = 40.0,
                  seed: int = 1) -> Iterator[np.ndarray]:
    """int16 slabs (n, y, x) of the phantom, z ascending; memory stays one slab."""
    nz, ny, nx = shape_zyx
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = ny * 0.5, nx * 0.4
    r = np.hypot((yy - cy) / (ny * 0.36), (xx - cx) / (nx * 0.30))
    cortex = (r >= 0.82) & (r <= 1.0)
    inside = r < 0.82
    rods = phantom_layout(ny, nx)
    rod_masks = [(np.hypot(yy - rod.center_yx[0], xx - rod.center_yx[1]) <= rod.radius_voxels, rod)
                 for rod in rods]
    period = max(6.0, min(ny, nx) / 14.0)
    k = np.float32(2 * np.pi / period)
    native = {name: density_to_native(rho) for name, rho in TISSUE_DENSITIES_MG_HA_CCM.items()}
    air = 0.0
    for z0 in range(0, nz, slices):
        n = min(slices, nz - z0)
        slab = np.full((n, ny, nx), air, dtype=np.float32)
        for i in range(n):
            z = np.float32(z0 + i)
            # gyroid sheets: a connected, plate-and-rod network like trabecular bone
            g = (np.sin(k * xx) * np.cos(k * yy) + np.sin(k * yy) * np.cos(k * z)
                 + np.sin(k * z) * np.cos(k * xx))
            trabecular = inside & (np.abs(g) < 0.45)
            plane = slab[i]
            plane[inside] = native["marrow"]
            plane[trabecular] = native["trabecular"]
            plane[cortex] = native["cortical"]
            for mask, rod in rod_masks:
                plane[mask] = density_to_native(rod.density_mg_ha_ccm)
        slab += rng.normal(0.0, noise_native, size=slab.shape).astype(np.float32)
        yield np.clip(np.rint(slab), -32768, 32767).astype(np.int16)


def rod_measurement_masks(ny: int, nx: int, erode_voxels: float = 1.5) -> List[Tuple[Rod, np.ndarray]]:
    """Per rod, a 2-D mask of its interior (eroded, away from partial-volume edges)."""
    yy, xx = np.mgrid[0:ny, 0:nx]
    return [(rod, np.hypot(yy - rod.center_yx[0], xx - rod.center_yx[1]) <= rod.radius_voxels - erode_voxels)
            for rod in phantom_layout(ny, nx)]


def write_phantom_isq(path, shape_zyx=(96, 256, 256), voxel_size_mm=0.02, seed: int = 1) -> str:
    from .formats.isq import IsqWriter

    nz, ny, nx = shape_zyx
    with IsqWriter(path, (nx, ny, nz), voxel_size_mm=(voxel_size_mm,) * 3, calibration=PHANTOM_CALIBRATION,
                   scanner=PHANTOM_SCANNER) as writer:
        for slab in phantom_slabs(shape_zyx, seed=seed):
            writer.write_slab(slab)
    return str(path)
