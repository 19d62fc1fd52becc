"""Benchmark: loading a SCANCO file into a (headless, slicer-core) Slicer scene against ``itk.imread``.

    make bench-slicer                                 # 1 GiB ISQ, medians of 3
    .venv/bin/python bench/slicer_load.py --size 1G --repeat 3

Slicer's own reader of a SCANCO file is ITK (ITKIOScanco), so ``itk.imread`` of the same file is the
time to beat. Each case runs in a child process of its own, interleaved with the others, each round
starting with the next case (no case always runs first, or always right after the one that freed the
most memory: on a virtual machine with free page reporting, memory freed a few seconds earlier is
faster to write than memory the host has taken back; ``--cold`` waits before every run until it has),
on a file that sits in the page cache (read once before every run). Both sides are timed fairly: in its child,
each side first reads a small warm-up ISQ the same way (itk loads its modules lazily, at the first
``imread``: seconds of import the big read must not be charged with; the scene side likewise pays its
first-call costs there), then the clock runs for the big file only:

* ``itk``          -- ``itk.imread(path)`` (ITK's reader; what a drop of the file into Slicer runs);
* ``hu``           -- ``load_scan_into_scene(scene, path, outputs=["hu"])``;
* ``four nodes``   -- ``load_scan_into_scene(scene, path)``: HU, density, mask labelmap and segmentation
  (the segment with its own copy of the mask: two nodes never share voxels).

Reported: wall time of the load itself (inside the child, after imports and the warm-up), the child's
peak RSS above its RSS after the warm-up (``VmHWM`` minus the RSS before loading; the warm-up file is
small, so its own peak is far below the big file's), and the bytes the created nodes own (their voxel
arrays).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ScancoUnits"))
sys.path.insert(0, str(REPO / "bench"))

from bench import COLD_PAUSE_S, parse_size, size_label, warm, write_input_isq  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, {lib!r})

def rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0

case, path, warmup = sys.argv[1], sys.argv[2], sys.argv[3]
if case == "itk":
    import itk
    itk.imread(warmup)   # loads the lazy itk modules and the SCANCO IO outside the clock
    base = rss_kib("VmRSS")
    t0 = time.perf_counter()
    image = itk.imread(path)
    seconds = time.perf_counter() - t0
    own = itk.array_view_from_image(image).nbytes
else:
    import slicer
    from ScancoUnitsLib.slicer.scene import load_scan_into_scene, remove_loaded_nodes
    from vtk.util import numpy_support
    scene = slicer.vtkMRMLScene()
    outputs = ["hu"] if case == "hu" else None
    remove_loaded_nodes(scene, load_scan_into_scene(scene, warmup, outputs=outputs))   # the same warm-up
    base = rss_kib("VmRSS")
    t0 = time.perf_counter()
    nodes = load_scan_into_scene(scene, path, outputs=outputs)
    seconds = time.perf_counter() - t0
    buffers = {{}}   # data address -> bytes: a buffer two nodes shared would count once
    for role, node in nodes.items():
        images = [node.GetImageData()] if node.IsA("vtkMRMLVolumeNode") else [
            node.GetSegmentation().GetNthSegment(i).GetRepresentation("Binary labelmap")
            for i in range(node.GetSegmentation().GetNumberOfSegments())]
        for image in images:
            if image is not None and image.GetPointData().GetScalars() is not None:
                a = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
                buffers[a.__array_interface__["data"][0]] = a.nbytes
    own = sum(buffers.values())
print(json.dumps({{"seconds": seconds, "peak_above_base_bytes": (rss_kib("VmHWM") - base) * 1024,
                  "node_bytes": own}}))
"""

CASES = ("itk", "hu", "four nodes")


def run_case(case: str, path: Path, warmup: Path, cold: bool = False) -> dict:
    if cold:
        time.sleep(COLD_PAUSE_S)
    warm(path)
    warm(warmup)
    code = CHILD.format(lib=str(REPO / "ScancoUnits"))
    out = subprocess.run([sys.executable, "-c", code, "four" if case == "four nodes" else case, str(path),
                          str(warmup)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_warmup_isq(path: Path) -> None:
    """A small ISQ (64 x 64 x 8) with the big file's calibration, for the warm-up read of both sides."""
    import numpy as np

    from ScancoUnitsLib.formats.isq import IsqWriter
    from ScancoUnitsLib.phantom import PHANTOM_CALIBRATION, PHANTOM_SCANNER

    volume = np.random.default_rng(1).integers(0, 20000, size=(8, 64, 64)).astype(np.int16)
    with IsqWriter(path, (64, 64, 8), voxel_size_mm=(0.0303, 0.0303, 0.0303), calibration=PHANTOM_CALIBRATION,
                   scanner=PHANTOM_SCANNER) as writer:
        writer.write_slab(volume)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--cold", action="store_true",
                        help=f"wait {COLD_PAUSE_S:.0f} s before every run (freed memory back to a VM's host)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        isq = Path(folder) / "SLICER.ISQ"
        warmup = Path(folder) / "WARMUP.ISQ"
        shape = write_input_isq(isq, args.size)
        write_warmup_isq(warmup)
        runs = {case: [] for case in CASES}
        for round_ in range(args.repeat):
            for k in range(len(CASES)):   # interleaved, each round starting with the next case
                case = CASES[(round_ + k) % len(CASES)]
                runs[case].append(run_case(case, isq, warmup, cold=args.cold))
    itk_s = statistics.median(r["seconds"] for r in runs["itk"])
    print(f"Slicer load of a {size_label(args.size)} ISQ {shape[2]}x{shape[1]}x{shape[0]} (medians of "
          f"{args.repeat}, interleaved, warm page cache, each side after a warm-up read in its own process"
          f"{', cold memory' if args.cold else ''})")
    print(f"{'case':<12} {'seconds':>8} {'x ITK':>7} {'peak above base MB':>19} {'node MB':>9} {'peak/node':>10}"
          f"  every run (s)")
    for case in CASES:
        seconds = statistics.median(r["seconds"] for r in runs[case])
        peak = statistics.median(r["peak_above_base_bytes"] for r in runs[case])
        own = statistics.median(r["node_bytes"] for r in runs[case])
        every = " ".join(f"{r['seconds']:.2f}" for r in runs[case])
        print(f"{case:<12} {seconds:8.2f} {seconds / itk_s:7.2f} {peak / 1e6:19.0f} {own / 1e6:9.0f} "
              f"{peak / max(own, 1):10.2f}  {every}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
