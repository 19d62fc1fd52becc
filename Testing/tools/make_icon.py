"""Draw the ScancoUnits icon: a stylised bone cross-section coloured by an HU/density ramp.

Writes the 128x128 extension icon (repo root ScancoUnits.png) and the module icon
(ScancoUnits/Resources/Icons/ScancoUnits.png). Deterministic (fixed seed), numpy + matplotlib only.

    .venv/bin/python Testing/tools/make_icon.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SIZE_PX = 128
SUPERSAMPLE = 4


def _smooth_noise(n: int, rng: np.random.Generator, cutoff: float) -> np.ndarray:
    """Gaussian-low-passed white noise, normalised to unit standard deviation."""
    white = rng.standard_normal((n, n))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    kernel = np.exp(-(fx**2 + fy**2) / (2 * cutoff**2))
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    return field / field.std()


def _ramp(values: np.ndarray) -> np.ndarray:
    """Bone ramp: marrow dark blue -> teal -> amber -> white (low to high density)."""
    stops = np.array([0.0, 0.35, 0.65, 0.85, 1.0])
    colours = np.array([
        [0.07, 0.12, 0.30],
        [0.10, 0.45, 0.62],
        [0.93, 0.62, 0.18],
        [0.99, 0.86, 0.55],
        [1.00, 1.00, 0.97],
    ])
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, stops, colours[:, c]) for c in range(3)], axis=-1)


def draw_icon(size_px: int = SIZE_PX) -> np.ndarray:
    """Return an RGBA float image (size_px, size_px, 4)."""
    n = size_px * SUPERSAMPLE
    rng = np.random.default_rng(4255)
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / n * 2.0 - 1.0   # [-1, 1]

    # rounded-square tile
    corner = 0.22
    qx = np.maximum(np.abs(xx) - (1 - corner - 0.02), 0)
    qy = np.maximum(np.abs(yy) - (1 - corner - 0.02), 0)
    tile = np.hypot(qx, qy) <= corner

    # slightly elliptical, wobbly bone outline (a tibia-like cross-section)
    angle = np.arctan2(yy, xx)
    radius = np.hypot(xx / 1.0, (yy + 0.04) / 0.9)
    wobble = 0.035 * np.sin(3 * angle + 0.6) + 0.02 * np.sin(5 * angle + 1.3)
    outer = 0.74 + wobble
    inner = outer - (0.11 + 0.035 * np.sin(2 * angle + 0.4))
    cortex = (radius <= outer) & (radius >= inner)
    marrow = radius < inner

    # trabecular network: thin level-set bands of a smooth random field
    field = _smooth_noise(n, rng, cutoff=0.018)
    trabeculae = marrow & (np.abs(field) < 0.30)

    density = np.zeros((n, n))
    density[marrow] = 0.12
    shade = 0.5 + 0.25 * _smooth_noise(n, rng, cutoff=0.01)
    density[trabeculae] = 0.52 + 0.16 * shade[trabeculae]
    density[cortex] = 0.80 + 0.20 * np.clip(shade[cortex], 0, 1)

    rgb = np.empty((n, n, 3))
    rgb[:] = (0.10, 0.11, 0.16)                        # tile background
    bone = cortex | marrow
    rgb[bone] = _ramp(density[bone])

    # colour-ramp bar along the bottom edge: the unit scale
    bar = (yy > 0.80) & (yy < 0.90) & (np.abs(xx) < 0.62)
    rgb[bar] = _ramp((xx[bar] + 0.62) / 1.24)
    # threshold tick on the bar (the 250 per mille lower threshold position)
    tick = (yy > 0.77) & (yy < 0.93) & (np.abs(xx - (-0.62 + 1.24 * 0.45)) < 0.018)
    rgb[tick] = (0.95, 0.25, 0.25)

    rgba = np.concatenate([rgb, tile[..., None].astype(float)], axis=-1)
    # box-filter down-sample for anti-aliasing
    rgba = rgba.reshape(size_px, SUPERSAMPLE, size_px, SUPERSAMPLE, 4).mean(axis=(1, 3))
    return rgba


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    image = draw_icon()
    for target in (REPO / "ScancoUnits.png", REPO / "ScancoUnits" / "Resources" / "Icons" / "ScancoUnits.png"):
        target.parent.mkdir(parents=True, exist_ok=True)
        mpimg.imsave(target, np.clip(image, 0, 1))
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
