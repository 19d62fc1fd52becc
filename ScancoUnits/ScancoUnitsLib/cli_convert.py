"""``scanco-units convert``, ``demo`` and ``sample``: batch conversion with progress and a summary."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ScancoError
from .thresholds import PERMILLE_REFERENCES, UNITS, ThresholdSpec

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
_SCANCO_NAME = re.compile(r"\.(isq|aim)(;\d*)?$", re.IGNORECASE)


def find_inputs(paths: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Files as given; folders searched (not recursively) for *.isq / *.aim in any case, ``;N`` too.
    Returns (inputs, problems)."""
    inputs: List[Path] = []
    problems: List[Tuple[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and _SCANCO_NAME.search(c.name))
            if not found:
                problems.append((raw, "folder holds no .ISQ or .AIM file"))
            inputs.extend(found)
        elif p.exists():
            inputs.append(p)
        else:
            problems.append((raw, "no such file or folder"))
    unique = list(dict.fromkeys(Path(os.path.abspath(i)) for i in inputs))
    return unique, problems


def assign_stems(inputs: Sequence[Path]) -> Dict[Path, str]:
    """Output stems; inputs sharing a stem (from different folders) get their folder name in front."""
    from .convert import output_stem

    stems = {i: output_stem(i) for i in inputs}
    counts: Dict[str, int] = {}
    for s in stems.values():
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    taken = set()
    result = {}
    for i in inputs:
        s = stems[i]
        if counts[s.lower()] > 1:
            s = f"{i.parent.name}_{s}"
        base, n = s, 2
        while s.lower() in taken:
            s, n = f"{base}_{n}", n + 1
        taken.add(s.lower())
        result[i] = s
    return result


class Progress:
    """One line on stderr redrawn per slab when stderr is a terminal; silent otherwise."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int):
        if not self.enabled:
            return None
        width = 30
        filled = int(width * done / max(total, 1))
        pct = 100.0 * done / max(total, 1)
        sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}%  {self.label}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
        return None


def _options_from_args(args):
    from .convert import ConversionOptions

    outputs = tuple(o.strip() for o in args.outputs.split(",") if o.strip())
    spec = ThresholdSpec(args.low, args.high, args.threshold_unit, args.permille_reference)
    return ConversionOptions(outputs=outputs, thresholds=spec, density_unit=args.density_unit,
                             hu_dtype=args.hu_dtype, compress=args.compress, detached=args.detached,
                             overwrite=args.overwrite, slab_slices=args.slab_slices, threads=args.threads)


def _convert_one(path: Path, out_dir: Path, options, stem: str, show_progress: bool):
    """Convert one input; return (status, message, outputs, seconds, input_bytes). Never raises for
    bad input: the batch goes on."""
    from .convert import convert_header
    from .reader import read_header

    started = time.perf_counter()
    try:
        header = read_header(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = convert_header(header, out_dir, options, stem=stem,
                                    progress=Progress(path.name, show_progress))
        notes = "; ".join(str(w.message) for w in caught)
        return ("ok", notes, {k: str(v) for k, v in result.outputs.items()}, result.seconds, header.data_size)
    except ScancoError as exc:
        return ("failed", str(exc), {}, time.perf_counter() - started, 0)
    except MemoryError:
        return ("failed", f"{path}: out of memory", {}, time.perf_counter() - started, 0)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a bug of ours must not stop the batch either
        return ("failed", f"{path}: internal error ({type(exc).__name__}: {exc})", {},
                time.perf_counter() - started, 0)


def _cmd_convert(args) -> int:
    from .atomic_output import install_signal_cleanup

    try:
        options = _options_from_args(args)
    except ValueError as exc:
        print(f"scanco-units: error: {exc}", file=sys.stderr)
        return 2
    inputs, problems = find_inputs(args.paths)
    for raw, why in problems:
        print(f"scanco-units: error: {raw}: {why}", file=sys.stderr)
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"scanco-units: error: {out_dir}: cannot create output folder ({exc.strerror or exc})",
              file=sys.stderr)
        return EXIT_FAILED
    stems = assign_stems(inputs)
    install_signal_cleanup()
    rows = []
    show = sys.stderr.isatty() and not args.quiet
    try:
        if args.jobs > 1 and len(inputs) > 1:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                futures = {pool.submit(_convert_one, i, out_dir, options, stems[i], False): i for i in inputs}
                for f in as_completed(futures):
                    rows.append(_report(futures[f], f.result(), args.quiet))
        else:
            for i in inputs:
                rows.append(_report(i, _convert_one(i, out_dir, options, stems[i], show), args.quiet))
    except KeyboardInterrupt:
        print("scanco-units: interrupted: the file being converted left no output; finished files are kept",
              file=sys.stderr)
        _summary(rows, problems)
        return EXIT_INTERRUPTED
    _summary(rows, problems)
    failed = any(r[1] != "ok" for r in rows) or problems or not inputs
    return EXIT_FAILED if failed else EXIT_OK


def _report(path: Path, result, quiet: bool):
    status, message, outputs, seconds, nbytes = result
    if status == "ok":
        if not quiet:
            print(f"{path.name}: wrote {', '.join(Path(p).name for p in outputs.values())}")
        if message:
            print(f"scanco-units: warning: {message}", file=sys.stderr)
    else:
        print(f"scanco-units: error: {message}", file=sys.stderr)
    return (path, status, message, outputs, seconds, nbytes)


def _summary(rows, problems) -> None:
    if not rows and not problems:
        print("scanco-units: no input files", file=sys.stderr)
        return
    print()
    print(f"{'file':40s} {'status':8s} {'seconds':>8s} {'MB/s':>8s}  outputs / reason")
    for path, status, message, outputs, seconds, nbytes in rows:
        rate = f"{nbytes / 1e6 / seconds:8.1f}" if status == "ok" and seconds > 0 else f"{'':8s}"
        detail = ", ".join(Path(p).name for p in outputs.values()) if status == "ok" else message
        print(f"{path.name[:40]:40s} {status:8s} {seconds:8.2f} {rate}  {detail}")
    for raw, why in problems:
        print(f"{raw[:40]:40s} {'failed':8s} {'':8s} {'':8s}  {why}")
    ok = sum(1 for r in rows if r[1] == "ok")
    print(f"{ok} converted, {len(rows) - ok + len(problems)} failed")


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--outputs", default="hu,density,mask",
                   help="comma-separated: hu, density, mask, mu, native (default hu,density,mask)")
    p.add_argument("--low", type=float, default=250.0, help="lower threshold (default 250 per mille)")
    p.add_argument("--high", type=float, default=1000.0, help="upper threshold (default 1000 per mille)")
    p.add_argument("--threshold-unit", choices=UNITS, default="permille",
                   help="unit of --low/--high (density in mg HA/ccm; default permille)")
    p.add_argument("--permille-reference", choices=PERMILLE_REFERENCES, default="32767",
                   help="1000 per mille = native 32767 (IPL, default) or the header's Maximum data value "
                        "(the seed notebook's reading)")
    p.add_argument("--density-unit", choices=("g/cc", "mgHA/ccm"), default="g/cc")
    p.add_argument("--hu-dtype", choices=("int16", "float32"), default="int16")
    p.add_argument("--compress", action="store_true", help="gzip-compressed NRRD (what Slicer writes)")
    p.add_argument("--detached", action="store_true", help="write .nhdr + .raw pairs")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--jobs", type=int, default=1, help="convert several files at once")
    p.add_argument("--threads", type=int, default=2, help="compression threads per output")
    p.add_argument("--slab-slices", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")


def add_commands(sub) -> None:
    convert = sub.add_parser("convert", help="convert files or folders to calibrated NRRD volumes")
    convert.add_argument("paths", nargs="+", metavar="PATH", help="ISQ/AIM files or folders of them")
    add_convert_arguments(convert)
    convert.set_defaults(func=_cmd_convert)

    try:
        from .demo import add_demo_command
    except ImportError:
        pass
    else:
        add_demo_command(sub)
    try:
        from .sample_data import add_sample_command
    except ImportError:
        pass
    else:
        add_sample_command(sub)
