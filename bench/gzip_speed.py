"""Measure the gzip NRRD writer: MB/s of volume data written with 1 and 2 compression threads.

    .venv/bin/python bench/gzip_speed.py [--mib 256] [--dtype float32|int16] [--dir /tmp] [--level 1]

The test volume looks like a calibrated micro-CT scan: a noisy cylinder of "tissue/bone" in noisy air,
with smooth structure, stored as int16 native values and converted to float32 through a linear
calibration (as the HU/density outputs are). It is generated once, then written slab by slab (16
slices per slab, like the conversion pipeline). Throughput is reported in MB/s (10^6 bytes/s) of
uncompressed volume data and of compressed file bytes. The CPU time of the process is shown too: on a
shared machine, "MB/s per CPU-second" times the number of free cores is what the writer can reach.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ScancoUnits"))

from ScancoUnitsLib.formats.nrrd import NrrdVolumeWriter, gzip_backend  # noqa: E402


def make_volume(total_bytes: int, dtype: str, seed: int = 0) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    ny = nx = 1024
    nz = max(1, total_bytes // (ny * nx * itemsize))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx].astype(np.float32)
    radius2 = (yy - ny / 2) ** 2 + (xx - nx / 2) ** 2
    inside = radius2 < (0.42 * nx) ** 2
    core = radius2 < (0.25 * nx) ** 2
    # smooth structure: coarse random field, upsampled by repetition and blurred with shifted sums
    coarse = rng.standard_normal((nz // 8 + 2, ny // 16, nx // 16)).astype(np.float32)
    volume = np.empty((nz, ny, nx), dtype=dtype)
    for z in range(nz):
        smooth = np.kron(coarse[z // 8], np.ones((16, 16), np.float32))
        smooth = (smooth + np.roll(smooth, 8, 0) + np.roll(smooth, 8, 1) + np.roll(smooth, 8, (0, 1))) / 4
        noise = rng.standard_normal((ny, nx), dtype=np.float32)
        native = np.where(core, 2600 + 300 * smooth, np.where(inside, 1200 + 80 * smooth, 40.0)) + 30 * noise
        native = np.rint(native).astype(np.int16)
        if np.dtype(dtype).kind == "f":
            volume[z] = native.astype(np.float32) * np.float32(0.3447) - np.float32(1000.0)  # HU-like
        else:
            volume[z] = native
    return volume


def run(volume: np.ndarray, folder: Path, threads: int, level: int, slab: int = 16):
    path = folder / f"speed_{threads}t.nrrd"
    start = time.perf_counter()
    cpu_start = time.process_time()
    with NrrdVolumeWriter(path, volume.shape, volume.dtype, spacing_mm=(0.03, 0.03, 0.03),
                          encoding="gzip", compress_level=level, threads=threads, overwrite=True) as writer:
        for z0 in range(0, volume.shape[0], slab):
            writer.write_slab(volume[z0:z0 + slab])
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    size = path.stat().st_size
    path.unlink()
    return seconds, size, cpu_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="volume size in MiB (default 256)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "int16"])
    parser.add_argument("--dir", default=None, help="folder for the output file (default: system temp)")
    parser.add_argument("--level", type=int, default=1, help="compress_level 0..9 (default 1)")
    parser.add_argument("--threads", default="1,2", help="thread counts to try (default 1,2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per thread count; the best is shown")
    args = parser.parse_args(argv)

    volume = make_volume(args.mib << 20, args.dtype)
    module, level, name = gzip_backend(args.level)
    print(f"volume {volume.shape} {volume.dtype}, {volume.nbytes / 2**20:.0f} MiB; backend {name} "
          f"level {level}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for threads in [int(t) for t in args.threads.split(",")]:
            best = min((run(volume, Path(folder), threads, args.level) for _ in range(args.repeat)),
                       key=lambda r: r[0])
            seconds, size, cpu_seconds = best
            print(f"threads={threads}: {volume.nbytes / seconds / 1e6:7.1f} MB/s of volume data, "
                  f"{size / seconds / 1e6:7.1f} MB/s of compressed output, ratio {size / volume.nbytes:.3f}, "
                  f"{seconds:.2f} s wall, {cpu_seconds:.2f} s CPU "
                  f"({volume.nbytes / cpu_seconds / 1e6:.0f} MB/s per CPU-second)")


if __name__ == "__main__":
    main()
