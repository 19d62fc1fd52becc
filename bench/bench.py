"""Benchmark: ``scanco-units convert`` against the disk's speed and against the seed notebook pipeline.

    make bench                                   # 1 GiB scan, medians of 3
    make bench BENCH_ARGS="--size 1G,4G --repeat 3"
    .venv/bin/python bench/bench.py --size 1G,4G --skip-seed --repeat 3

For every size, a synthetic ISQ (1024 x 1024 slices of the ScancoUnitsLib.phantom scan, int16, with
a realistic calibration in its header) is written under ``--dir`` (default ``bench-output/``, removed
at the end unless ``--keep``). Then each pipeline runs as a child process, interleaved, ``--repeat``
times (medians reported):

* ``dd floor``     -- ``dd if=/dev/zero bs=1M`` of exactly as many bytes, into as many files in the same
  folder, as ``ours`` writes with raw NRRD output (no fsync, like every pipeline here);
* ``python floor`` -- the same bytes written by Python in 1 MiB ``os.write`` calls from one buffer;
* ``ours numpy``   -- ``scanco-units convert FILE -o DIR`` with ``SCANCO_UNITS_KERNEL=numpy`` (default
  outputs: int16 HU, float32 density in g/cc, uint8 mask);
* ``ours fast``    -- the same with ``SCANCO_UNITS_KERNEL=numba`` (the ``fast`` extra; skipped without numba);
* ``ours --compress`` -- gzip NRRD, with the kernel the engine chooses (numpy: no histogram is asked for);
* ``seed``         -- ``bench/seed_pipeline.py`` (itk.imread, ITK threshold filter, numpy density in
  float64, three ``itk.imwrite`` NRRDs; with itk-ioscanco 1.0.1 that is int16 HU, float64 density and
  an int16 mask, 12 bytes a voxel against our 7 (2 + 4 + 1)). Skipped with ``--skip-seed`` or when the
  machine has less available memory than about 11 times the input.

Before each run the previous outputs are deleted, dirty pages are flushed (``sync``) and the input is
read once so it sits in the page cache (warm cache). The seed's runs come first, so that the 11x the
input it allocates and frees each time (memory a VM gives back to its host) is not between the other
pipelines' runs; then one untimed run of ``ours``; then the rounds of the other pipelines, interleaved,
each round starting with the next pipeline (no pipeline always runs first or after the same one). ``--cold``
waits before each run instead, until memory freed by the previous run has gone back to the host of a
virtual machine with free page reporting (see ``prepare``). Reported per pipeline: median and best wall
time of the child process, its CPU time, its peak RSS (VmHWM of the child itself, read from
``/proc/<pid>/status``: by the Python children at exit, by polling for dd), MB/s of input and of
uncompressed output, bytes written, and ratios to the seed pipeline and to both floors.
MB = 10^6 bytes, GiB = 2^30 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ScancoUnits"))

SLICE_YX = (1024, 1024)
PATTERN_SLICES = 32              # distinct phantom slices, repeated along z
FLOOR_BLOCK_BYTES = 1 << 20     # dd bs=1M; larger writes were slower on the test VM, not faster
SEED_MEMORY_FACTOR = 11          # the seed needs about 10x the input in memory
COLD_PAUSE_S = 15.0              # --cold: time for freed memory to go back to the VM host


# ---------------------------------------------------------------------------------------------------
# sizes, input file, system state
# ---------------------------------------------------------------------------------------------------


REGION_STATS_ROW = "ours fast --statistics"
REGION_ROW = "ours fast --roi"


def parse_size(text: str) -> int:
    """'1G' / '512M' / '1.5GiB' / '1073741824' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 256M, 1G, 4G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    return value


def size_label(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{nbytes} B"


def write_input_isq(path: Path, nbytes: int) -> tuple:
    """A phantom ISQ of about *nbytes* of voxel data (1024 x 1024 int16 slices); returns shape_zyx."""
    import numpy as np

    from ScancoUnitsLib.formats.isq import IsqWriter
    from ScancoUnitsLib.phantom import PHANTOM_CALIBRATION, PHANTOM_SCANNER, phantom_slabs

    ny, nx = SLICE_YX
    nz = max(1, nbytes // (ny * nx * 2))
    pattern = np.concatenate(list(phantom_slabs((min(nz, PATTERN_SLICES), ny, nx), slices=8, seed=7)))
    with IsqWriter(path, (nx, ny, nz), voxel_size_mm=(0.0303, 0.0303, 0.0303),
                   calibration=PHANTOM_CALIBRATION, scanner=PHANTOM_SCANNER) as writer:
        for z0 in range(0, nz, len(pattern)):
            writer.write_slab(pattern[: min(len(pattern), nz - z0)])
    return (nz, ny, nx)


def write_region_aim(path: Path, isq: Path) -> int:
    """A binCmp mask AIM on the ISQ's grid: a centred cylinder over the middle 80% of the slices (about
    half the voxels), as IPL exports a trabecular region; returns its voxel count."""
    import numpy as np

    from ScancoUnitsLib import read_header
    from ScancoUnitsLib.formats.aim.format import write_aim

    header = read_header(isq)
    nz, ny, nx = header.shape_zyx
    yy, xx = np.mgrid[:ny, :nx]
    disc = ((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) < (0.4 * min(ny, nx)) ** 2
    z0, z1 = nz // 10, nz - nz // 10
    mask = np.zeros((z1 - z0, ny, nx), dtype=np.int8)
    mask[:] = np.where(disc, 127, 0).astype(np.int8)
    position = tuple(int(p) for p in header.position_voxels)
    write_aim(path, mask, voxel_size_mm=header.voxel_size_mm, position_voxels=(position[0], position[1], position[2] + z0),
              compression="binCmp")
    return int(disc.sum()) * (z1 - z0)


def warm(path: Path) -> None:
    """Read the file once so that it is in the page cache."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass


def meminfo_kib(field_name: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def settle(timeout_s: float = 120.0) -> None:
    """Flush dirty pages and wait until writeback is done, so that runs start from the same state."""
    os.sync()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if meminfo_kib("Dirty") + meminfo_kib("Writeback") < 64 * 1024:
            break
        time.sleep(0.2)
        os.sync()


# ---------------------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    wall_s: float
    max_rss_bytes: int
    cpu_s: float
    written_bytes: int
    returncode: int
    log: str = ""


# Python children run through this wrapper: at exit it writes its own VmHWM (peak resident set of the
# process itself, not inherited across fork/exec as ru_maxrss is) to the file named by BENCH_HWM_FILE.
_HWM_WRAPPER = r"""
import atexit, os, runpy, sys
def _hwm():
    try:
        with open("/proc/self/status") as f:
            kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        with open(os.environ["BENCH_HWM_FILE"], "w") as f:
            f.write(str(kib * 1024))
    except Exception:
        pass
atexit.register(_hwm)
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def python_child(args: List[str]) -> List[str]:
    """Command that runs ``python ARGS`` (a script path or ``-m module ...``) and reports its VmHWM."""
    return [sys.executable, "-c", _HWM_WRAPPER] + args


def _poll_hwm(pid: int, box: list, stop: threading.Event) -> None:
    """Largest VmHWM seen in /proc/<pid>/status and its children's (for non-Python children such as dd)."""
    while not stop.is_set():
        for p in [pid] + _children(pid):
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            box[0] = max(box[0], int(line.split()[1]) * 1024)
            except OSError:
                pass
        stop.wait(0.02)


def _children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run_child(cmd: List[str], log_path: Path, env: Dict[str, str] = None) -> tuple:
    """Run *cmd*; return (wall seconds, peak RSS bytes, CPU seconds, return code).

    Peak RSS: the VmHWM the child reported at exit (Python children started through
    :func:`python_child`), else the largest VmHWM seen while polling it and its children.
    stdout/stderr go to *log_path*."""
    hwm_file = log_path.with_suffix(".hwm")
    if hwm_file.exists():
        hwm_file.unlink()
    child_env = dict(os.environ, BENCH_HWM_FILE=str(hwm_file), **(env or {}))
    box, stop = [0], threading.Event()
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=child_env)
        poller = threading.Thread(target=_poll_hwm, args=(proc.pid, box, stop), daemon=True)
        poller.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    rss = box[0]
    if hwm_file.exists():
        try:
            rss = int(hwm_file.read_text())
        except ValueError:
            pass
    return wall, rss, usage.ru_utime + usage.ru_stime, proc.returncode


def folder_bytes(folder: Path, pattern: str = "*.nrrd") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def clear_folder(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def prepare(out: Path, isq: Path, cold: bool) -> None:
    """Same starting point for every run: previous outputs deleted, no dirty pages, input cached.

    On a virtual machine whose free memory goes back to the host (virtio-balloon free page
    reporting), writing into pages freed a few seconds earlier is several times faster than into
    pages the host has taken back. Without ``cold`` a run starts right after the previous run's
    outputs are deleted (back-to-back conversions); with ``cold`` it waits COLD_PAUSE_S first.
    """
    clear_folder(out)
    settle()
    if cold:
        time.sleep(COLD_PAUSE_S)
    warm(isq)


KERNELS = ("numpy", "numba")


def run_ours(isq: Path, out: Path, logs: Path, compress: bool, kernel: str = None, cold: bool = False,
             fsync: bool = True, extra: Sequence[str] = (), label: str = "") -> Run:
    """``kernel``: "numpy" or "numba" (SCANCO_UNITS_KERNEL), None for the engine's own choice;
    ``fsync=False``: with --no-fsync (the files are not waited for before the metadata is placed)."""
    prepare(out, isq, cold)
    cmd = python_child(["-m", "ScancoUnitsLib.cli.main", "convert", str(isq), "-o", str(out), "-q"])
    name = {"numpy": "ours numpy", "numba": "ours fast"}.get(kernel, "ours")
    if compress:
        cmd.append("--compress")
        name += " --compress"
    if not fsync:
        cmd.append("--no-fsync")
        name += " --no-fsync"
    cmd += list(extra)
    name += label
    log = logs / (name.replace(" ", "_").replace("-", "") + ".log")
    wall, rss, cpu, rc = run_child(cmd, log, env={"SCANCO_UNITS_KERNEL": kernel or "",
                                                  "PYTHONPATH": str(REPO / "ScancoUnits")})
    return Run(name, wall, rss, cpu, folder_bytes(out), rc, log.read_text(errors="replace")[-2000:])


def run_seed(isq: Path, out: Path, logs: Path, cold: bool = False) -> Run:
    prepare(out, isq, cold)
    log = logs / "seed.log"
    wall, rss, cpu, rc = run_child(python_child([str(REPO / "bench" / "seed_pipeline.py"), str(isq), str(out)]),
                                   log)
    return Run("seed notebook", wall, rss, cpu, folder_bytes(out), rc, log.read_text(errors="replace")[-2000:])


_FLOOR_CHILD = r"""
import os, sys
block = os.urandom(int(sys.argv[1]))
view = memoryview(block)
for i, size in enumerate(int(s) for s in sys.argv[3:]):
    fd = os.open(os.path.join(sys.argv[2], f"floor_{i}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = size
    while left:
        n = os.write(fd, view[: min(left, len(view))])
        left -= n
    os.close(fd)
"""


def run_python_floor(isq: Path, out: Path, logs: Path, sizes: List[int], block_bytes: int = FLOOR_BLOCK_BYTES,
                     cold: bool = False) -> Run:
    script = logs / "python_floor.py"
    script.write_text(_FLOOR_CHILD)
    prepare(out, isq, cold)
    log = logs / "python_floor.log"
    cmd = python_child([str(script), str(block_bytes), str(out)] + [str(s) for s in sizes])
    wall, rss, cpu, rc = run_child(cmd, log)
    return Run("python floor", wall, rss, cpu, folder_bytes(out, "floor_*.bin"), rc,
               log.read_text(errors="replace")[-2000:])


def run_dd_floor(isq: Path, out: Path, logs: Path, sizes: List[int], block_bytes: int = FLOOR_BLOCK_BYTES,
                 cold: bool = False) -> Run:
    """``dd if=/dev/zero bs=1M`` of each output's byte count into the output folder (GNU dd:
    ``iflag=count_bytes`` counts bytes, so the sizes match exactly)."""
    prepare(out, isq, cold)
    log = logs / "dd_floor.log"
    script = "; ".join(f"dd if=/dev/zero of={shlex.quote(str(out / f'floor_{i}.bin'))} bs={block_bytes} "
                       f"count={size} iflag=count_bytes status=none || exit 1" for i, size in enumerate(sizes))
    wall, rss, cpu, rc = run_child(["sh", "-c", script], log)
    return Run("dd floor", wall, rss, cpu, folder_bytes(out, "floor_*.bin"), rc,
               log.read_text(errors="replace")[-2000:])


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    size_bytes: int
    name: str
    runs: List[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.returncode == 0 for r in self.runs)

    @property
    def wall_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def best_s(self) -> float:
        return min(r.wall_s for r in self.runs)

    @property
    def cpu_s(self) -> float:
        return statistics.median(r.cpu_s for r in self.runs)

    @property
    def max_rss_bytes(self) -> int:
        return max(r.max_rss_bytes for r in self.runs)

    @property
    def written_bytes(self) -> int:
        return self.runs[-1].written_bytes


def print_table(rows: List[Row], input_bytes: Dict[int, int], out=sys.stdout) -> None:
    header = (f"{'input':>7s}  {'pipeline':22s} {'wall s':>7s} {'best s':>7s} {'CPU s':>6s} {'peak RSS MB':>11s} "
              f"{'in MB/s':>8s} {'out MB/s':>8s} {'written MB':>10s} {'x seed':>6s} {'/ dd':>5s} {'/ py':>5s}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for size in sorted({r.size_bytes for r in rows}):
        group = [r for r in rows if r.size_bytes == size]
        seed = next((r for r in group if r.name.startswith("seed") and r.ok), None)
        dd = next((r for r in group if r.name == "dd floor" and r.ok), None)
        py = next((r for r in group if r.name == "python floor" and r.ok), None)
        raw = next((r for r in group if r.name.startswith("ours") and "compress" not in r.name and r.ok), None)
        for r in group:
            if not r.ok:
                rc = r.runs[-1].returncode if r.runs else "?"
                print(f"{size_label(size):>7s}  {r.name:22s} FAILED (exit code {rc})", file=out)
                continue
            in_rate = input_bytes[size] / 1e6 / r.wall_s
            # output rate: uncompressed volume bytes per second (for --compress: the raw output's size)
            out_bytes = raw.written_bytes if (raw is not None and r.name.startswith("ours")) else r.written_bytes
            vs_seed = f"{seed.wall_s / r.wall_s:6.1f}" if seed is not None and r is not seed else f"{'':6s}"
            vs_dd = f"{r.wall_s / dd.wall_s:5.2f}" if dd is not None and r is not dd else f"{'':5s}"
            vs_py = f"{r.wall_s / py.wall_s:5.2f}" if py is not None and r is not py else f"{'':5s}"
            print(f"{size_label(size):>7s}  {r.name:22s} {r.wall_s:7.2f} {r.best_s:7.2f} {r.cpu_s:6.1f} "
                  f"{r.max_rss_bytes / 1e6:11.0f} {in_rate:8.0f} {out_bytes / 1e6 / r.wall_s:8.0f} "
                  f"{r.written_bytes / 1e6:10.0f} {vs_seed} {vs_dd} {vs_py}", file=out)
    print(file=out)
    print("wall s: median wall time over the runs; best s: fastest run; CPU s: user + system time of the child "
          "(median);\npeak RSS: largest VmHWM of the child over the runs; in MB/s: input voxel bytes / median "
          "wall;\nout MB/s: uncompressed output bytes / median wall (for --compress: the size of the raw output); "
          "written MB: bytes on disk;\nx seed: seed wall / this wall; / dd, / py: this wall / the dd or Python "
          "floor's wall (medians; floors = the same bytes written sequentially).", file=out)


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1G",
                   help="input size(s), comma-separated, e.g. 1G or 1G,4G (default 1G)")
    p.add_argument("--skip-seed", action="store_true", help="do not run the seed pipeline")
    p.add_argument("--no-compress", action="store_true", help="do not run ours with --compress")
    p.add_argument("--repeat", type=int, default=3, help="runs per pipeline; the median is reported (default 3)")
    p.add_argument("--dir", default=str(REPO / "bench-output"), help="work folder (default bench-output/)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (inputs and outputs)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--cold", action="store_true",
                   help=f"wait {COLD_PAUSE_S:g} s before each run, so that memory freed by the previous run has "
                        "gone back to a VM host (default: runs start right after the previous outputs are deleted)")
    p.add_argument("--floor-block", type=parse_size, default=FLOOR_BLOCK_BYTES,
                   help="write size of the floor (default 1M)")
    p.add_argument("--no-fsync-too", action="store_true",
                   help="also run ours (numpy kernel) with --no-fsync: what waiting for the disk costs")
    p.add_argument("--regions", action="store_true",
                   help="also run ours (fast kernel) with --statistics and with --roi (a cylinder over half "
                        "the voxels, binCmp mask AIM): what the per-scan and per-region statistics add")
    p.add_argument("--make-input", nargs=2, metavar=("PATH", "BYTES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make_input:
        shape = write_input_isq(Path(args.make_input[0]), int(args.make_input[1]))
        print(json.dumps(shape))
        return 0
    sizes = [parse_size(s) for s in args.size.split(",") if s.strip()]
    if args.repeat < 1:
        p.error("--repeat must be at least 1")

    import importlib.util

    numba_ok = importlib.util.find_spec("numba") is not None
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    rows: List[Row] = []
    input_bytes: Dict[int, int] = {}
    print(f"machine: {os.cpu_count()} CPUs, {meminfo_kib('MemTotal') / (1 << 20):.1f} GiB memory; "
          f"work folder {work}; load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        for size in sizes:
            isq = work / f"bench_{size_label(size).replace(' ', '')}.isq"
            started = time.perf_counter()
            # in a child: this process stays small, because a child's peak RSS counts the memory it
            # shared with its parent between fork and exec
            made = subprocess.run([sys.executable, __file__, "--make-input", str(isq), str(size)],
                                  check=True, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
            shape = tuple(json.loads(made.stdout.strip().splitlines()[-1]))
            input_bytes[size] = shape[0] * shape[1] * shape[2] * 2
            print(f"\n{size_label(size)}: wrote {isq.name} {shape[2]}x{shape[1]}x{shape[0]} int16 "
                  f"({isq.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s", flush=True)
            kernels = [k for k in KERNELS if k == "numpy" or numba_ok]
            rows_now = {name: Row(size, name) for name in
                        ["dd floor", "python floor"] + [f"ours {'numpy' if k == 'numpy' else 'fast'}" for k in kernels]
                        + ([] if args.no_compress else ["ours --compress"])
                        + (["ours numpy --no-fsync"] if args.no_fsync_too else [])
                        + ([REGION_STATS_ROW, REGION_ROW] if args.regions else []) + ["seed notebook"]}
            run_seed_now = not args.skip_seed
            if run_seed_now:
                need = SEED_MEMORY_FACTOR * input_bytes[size]
                avail = meminfo_kib("MemAvailable") * 1024
                if avail < need:
                    print(f"  seed skipped: needs about {need / 1e9:.1f} GB of memory, "
                          f"{avail / 1e9:.1f} GB available", flush=True)
                    run_seed_now = False
            out = work / "out"
            cold = args.cold
            best_kernel = kernels[-1]
            i = 0

            def record(name, run):
                rows_now[name].runs.append(run)
                extra = "" if run.returncode == 0 else f" FAILED:\n{run.log}"
                print(f"  run {i + 1}: {name:16s} {run.wall_s:6.2f} s, {run.cpu_s:5.1f} s CPU, "
                      f"{run.max_rss_bytes / 1e6:5.0f} MB peak RSS, {run.written_bytes / 1e6:.0f} MB written{extra}",
                      flush=True)

            if run_seed_now:
                # the seed's runs come first, all of them: each allocates and frees about 11x the input
                # (on a VM that memory goes back to the host), not between the other pipelines' runs
                for i in range(args.repeat):
                    record("seed notebook", run_seed(isq, out, logs, cold=cold))
            # untimed: the first run after writing the input (or after the seed) would start from other
            # memory; its outputs give the floors their byte counts
            run_ours(isq, out, logs, compress=False, kernel=best_kernel)
            raw_sizes = sorted((q.stat().st_size for q in out.glob("*.nrrd")), reverse=True)
            timed = [(f"ours {'numpy' if k == 'numpy' else 'fast'}",
                      lambda k=k: run_ours(isq, out, logs, compress=False, kernel=k, cold=cold)) for k in kernels]
            timed += [("dd floor", lambda: run_dd_floor(isq, out, logs, raw_sizes, args.floor_block, cold=cold)),
                      ("python floor", lambda: run_python_floor(isq, out, logs, raw_sizes, args.floor_block,
                                                                cold=cold))]
            if not args.no_compress:
                timed.append(("ours --compress", lambda: run_ours(isq, out, logs, compress=True, cold=cold)))
            if args.no_fsync_too:
                timed.append(("ours numpy --no-fsync", lambda: run_ours(isq, out, logs, compress=False, kernel="numpy",
                                                                        cold=cold, fsync=False)))
            if args.regions:
                region = work / "bench_region.AIM"
                started = time.perf_counter()
                voxels = write_region_aim(region, isq)
                print(f"  region: {region.name}, {voxels} voxels, {region.stat().st_size / 1e6:.1f} MB, "
                      f"in {time.perf_counter() - started:.1f} s", flush=True)
                timed.append((REGION_STATS_ROW, lambda: run_ours(isq, out, logs, compress=False, kernel=best_kernel,
                                                                cold=cold, extra=["--statistics"],
                                                                label=" --statistics")))
                timed.append((REGION_ROW, lambda: run_ours(isq, out, logs, compress=False, kernel=best_kernel,
                                                          cold=cold, extra=["--roi", f"TRAB={region}"],
                                                          label=" --roi")))
            for i in range(args.repeat):
                # each round starts with another pipeline: no pipeline always runs first, or always
                # right after another one (a run disturbs the memory and the disk of the next one)
                shift = i % len(timed)
                for name, run in timed[shift:] + timed[:shift]:
                    record(name, run())
                clear_folder(out)
            rows += [r for r in rows_now.values() if r.runs]
            isq.unlink()
            settle()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows, input_bytes)
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes compete for the CPUs and the disk)")
    print(f"(this benchmark process peaked at {own / 1e6:.0f} MB; a child's peak RSS cannot be below it, "
          "as the child shares it until exec)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"input_bytes": input_bytes[r.size_bytes], "pipeline": r.name, "ok": r.ok,
              "wall_s": [x.wall_s for x in r.runs], "cpu_s": [x.cpu_s for x in r.runs],
              "max_rss_bytes": [x.max_rss_bytes for x in r.runs],
              "written_bytes": r.written_bytes if r.runs else None} for r in rows], indent=2) + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
