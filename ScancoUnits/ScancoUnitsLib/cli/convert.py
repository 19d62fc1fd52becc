"""``scanco-units convert``, ``demo`` and ``sample``: parse the command line, print results.

The batch itself (discovery, parallel jobs, signals, per-file results) lives in
:mod:`~ScancoUnitsLib.batch.jobs` and :mod:`~ScancoUnitsLib.batch.discovery`; Dask runs in
:mod:`~ScancoUnitsLib.batch.dask`. Here: options, one line per file (or one JSON object per file
with ``--json``), the summary table, the summary CSV and the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List

from .arguments import add_request_arguments, request_from_args
from ..batch.jobs import (Batch, BatchProgress, FileResult, NOT_STARTED, ignore_further_signals,
                    remove_partials_of, signal_name)
from ..core.header import printable
from . import exit_codes
from .info import format_thresholds
from .. import defaults
from ..defaults import METADATA_SUFFIX, REPORT_SUFFIX
from ..batch.discovery import (LAYOUTS, PathNote, assign_stems, discover, find_inputs,  # noqa: F401 - find_inputs: public
                        place_outputs, skip_kind)


__all__ = ["add_commands", "add_convert_arguments", "assign_stems", "find_inputs", "remove_partials_of"]


def _options_from_args(args):
    return request_from_args(args)


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if missing)")
    add_request_arguments(p)
    p.add_argument("--jobs", type=int, default=1, help="convert several files at once")
    p.add_argument("--threads", type=int, default=2, help="compression threads per output")
    p.add_argument("--slab-slices", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only failures, warnings and the final counts (no line per file, no table rows "
                        "for the files that went well)")


_LAYOUT_HELP = {
    "mirror": "each input's outputs go into -o / its folder relative to the folder given (out/s1/v1/C0001_HU.nrrd)",
    "flat": "every output into -o, same names told apart by their folder names (s1_v1_C0001_HU.nrrd)",
}


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of whole studies: discovery, re-runs, machine-readable results, Dask."""
    p.add_argument("-r", "--recursive", action="store_true",
                   help="search folders at any depth (files recognised by name or by their SCANCO magic)")
    p.add_argument("--layout", choices=LAYOUTS, default=defaults.LAYOUT,
                   help="; ".join(f"{name}{' (default)' if name == defaults.LAYOUT else ''}: {text}"
                                  for name, text in _LAYOUT_HELP.items()))
    p.add_argument("--skip-existing", action="store_true",
                   help="keep a file's outputs when its complete set exists, made from the same input (size, "
                        "modification time) with the same options; an incomplete or stale set is redone")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (inputs found, skipped with reasons, outputs per file, thresholds in every "
                        "unit) and write nothing")
    p.add_argument("--strict", action="store_true",
                   help="a file with any warning (empty or full mask, clipped HU, a conflicting header) fails "
                        "(its complete outputs are kept, for inspection); exit status 1")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per input on stdout (JSON Lines) as each finishes")
    p.add_argument("--summary", metavar="FILE.csv",
                   help="write one CSV row per input: scanner, geometry, calibration, thresholds, statistics")
    dask = p.add_mutually_exclusive_group()
    dask.add_argument("--dask-scheduler", metavar="ADDRESS",
                      help="send each file as a task to a running Dask cluster (e.g. tcp://host:8786); "
                           "paths must be visible to its workers (needs scanco-units[dask])")
    dask.add_argument("--dask-local", type=int, metavar="N",
                      help="start a local Dask cluster of N worker processes (needs scanco-units[dask])")


# ---- printing ----------------------------------------------------------------------------------------------
class _Printer:
    """One line (or JSON object) per file as it finishes; errors on stderr, one line each."""

    def __init__(self, args, progress: BatchProgress):
        self.json = args.json
        self.quiet = args.quiet
        self.progress = progress
        self.done = 0
        self.total = 0
        self.stdout_lost = False
        self.stdout_lines = 0

    def _out(self, stream, text: str) -> None:
        if stream is sys.stdout and self.stdout_lost:
            return
        try:
            self.progress.print_line(stream, printable(text))  # names may hold ESC; JSON has none raw
        except (OSError, ValueError) as exc:  # a closed pipe (`--json | head -1`), a full disk under `>`
            if stream is sys.stdout:
                self.lose_stdout(exc)
            return  # stderr gone: nobody to tell
        if stream is sys.stdout:
            self.stdout_lines += 1

    def lose_stdout(self, exc: BaseException) -> None:
        """Standard output cannot be written any more: say so once on stderr; the batch goes on (its
        outputs are what matters) and the exit status is 1. Later writes, and Python's own flush at
        exit, go to the null device instead of raising."""
        if self.stdout_lost:
            return
        self.stdout_lost = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        why = getattr(exc, "strerror", None) or type(exc).__name__
        try:
            self.progress.print_line(sys.stderr, f"scanco-units: error: standard output cannot be written ({why}) "
                                                 f"after {self.stdout_lines} line(s): the batch goes on, its "
                                                 "further per-file output is not shown; exit status 1")
        except (OSError, ValueError):
            pass

    def result(self, result: FileResult) -> None:
        counted = result.status != "skipped" or skip_kind(result.reason) is None
        if counted:
            self.done += 1
        if result.error and result.status == "failed":  # interrupted ones: one message at the end
            self._out(sys.stderr, f"scanco-units: error: {_one_line(result.error)}")
        for note in result.warnings if result.status == "converted" else ():  # never silent, -q or not
            self._out(sys.stderr, f"scanco-units: warning: {_one_line(note)}")
        if self.json:
            self._out(sys.stdout, json.dumps(result.to_dict(), allow_nan=False, default=str))
        elif not self.quiet and counted and result.status in ("converted", "skipped"):
            what = "wrote" if result.status == "converted" else "kept (up to date)"
            names = ", ".join(Path(p).name for p in result.outputs.values())
            self._out(sys.stdout, f"[{self.done}/{self.total}] {_shown_name(result)}: {what} {names}")


def _shown_name(result: FileResult) -> str:
    """The input's path relative to the folder given (its name when given by name), control
    characters visible."""
    return printable(result.relative_path or result.name)


def _one_line(text: str) -> str:
    """One terminal line: line breaks as blanks, every other control character (ESC of a file name)
    as a visible \\xNN."""
    return printable(" ".join(str(text).split("\n")).replace("\r", " "))


def _summary(results: List[FileResult], stream, quiet: bool = False) -> None:
    """The end-of-run table (``quiet``: only the files that failed or were interrupted) and the
    counts line."""
    if not results:
        print("scanco-units: no input files", file=sys.stderr)
        return
    rows = [r for r in results if not quiet or r.status in ("failed", "interrupted")]
    if rows:
        print(file=stream)
        print(f"{'file':40s} {'status':11s} {'seconds':>8s} {'MB/s':>8s}  outputs / reason", file=stream)
    for r in rows:
        rate = (f"{r.input_bytes / 1e6 / r.seconds:8.1f}" if r.status == "converted" and r.seconds > 0
                else f"{'':8s}")
        if r.status in ("converted", "skipped") and r.outputs:
            detail = ", ".join(Path(p).name for p in r.outputs.values())
        else:
            detail = r.error or r.reason or ""
        seconds = f"{r.seconds:8.2f}" if r.status != "skipped" or r.outputs else f"{'':8s}"
        print(f"{_shown_name(r):40s} {r.status:11s} {seconds} {rate}  {_one_line(detail)}", file=stream)
    count = {s: 0 for s in ("converted", "skipped", "failed", "interrupted")}
    ignored = own = regions = not_started = 0
    for r in results:
        kind = skip_kind(r.reason) if r.status == "skipped" else None
        if kind == "other":
            ignored += 1
        elif kind == "region":
            regions += 1
        elif kind == "own":
            own += 1
        elif r.status == "interrupted" and r.error and NOT_STARTED in r.error:
            not_started += 1
        else:
            count[r.status] += 1
    line = f"{count['converted']} converted, {count['failed']} failed"
    if count["skipped"]:
        line += f", {count['skipped']} skipped (up to date)"
    if count["interrupted"] or not_started:
        line += f", {count['interrupted']} interrupted, {not_started} not started"
    if ignored:
        line += f"; {ignored} other file(s) in the folders ignored (not SCANCO files)"
    if own:
        line += f"; {own} output(s) of earlier runs not read as inputs"
    if regions:
        line += f"; {regions} region file(s) used as regions, not converted"
    print(line, file=stream)
    coverage = [r.mask_coverage for r in results if r.status in ("converted", "skipped", "failed")]
    warned = sum(1 for r in results if r.warnings and r.status in ("converted", "skipped", "failed"))
    if coverage.count("empty") or coverage.count("full") or warned:
        print(f"masks: {coverage.count('empty')} empty, {coverage.count('full')} full; "
              f"{warned} file(s) with warnings" + (f" (also in their {METADATA_SUFFIX})" if warned else ""),
              file=stream)


def _print_summary(printer: _Printer, results: List[FileResult], stream, quiet: bool) -> None:
    if stream is sys.stdout and printer.stdout_lost:
        return
    try:
        _summary(results, stream, quiet=quiet)
        stream.flush()
    except (OSError, ValueError) as exc:
        if stream is sys.stdout:
            printer.lose_stdout(exc)


# ---- the command -------------------------------------------------------------------------------------------
def _usage_error(args, message: str) -> int:
    from .main import usage_error  # one line and a hint, as argparse's own errors

    return usage_error(args, message)


def _usage_problem(args):
    if args.jobs < 1:
        return f"--jobs must be at least 1, not {args.jobs}"
    if args.threads < 1:
        return f"--threads must be at least 1, not {args.threads}"
    if args.dask_local is not None and args.dask_local < 1:
        return f"--dask-local must be at least 1, not {args.dask_local}"
    if (args.dask_local is not None or args.dask_scheduler) and args.jobs > 1:
        return "--jobs applies to local runs; with Dask the cluster's workers convert the files"
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        return f"-o {args.output}: cannot create output folder: it is an existing file, not a folder"
    if args.summary and os.path.isdir(args.summary):
        return f"--summary {args.summary}: is a folder; name a .csv file"
    return None


def _prepare_summary_folder(path) -> bool:
    """The summary's folder is made (like -o) and checked before any file is converted, not after a
    night-long batch."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        print(f"scanco-units: error: --summary {path}: cannot create its folder {folder} "
              f"({exc.strerror or exc})", file=sys.stderr)
        return False
    if not os.access(folder, os.W_OK | os.X_OK):
        print(f"scanco-units: error: --summary {path}: its folder {folder} is not writable", file=sys.stderr)
        return False
    return True


def _write_summary_csv(path, results, overwrite: bool = True, protected=()) -> bool:
    from ..batch.summary import write_summary_csv
    from ..errors import ScancoError

    try:
        write_summary_csv(path, results, overwrite=overwrite, protected=protected)
    except (ScancoError, OSError) as exc:
        print(f"scanco-units: error: {path}: cannot write the summary ({exc})", file=sys.stderr)
        return False
    return True


def _names_as_bytes_on_the_streams() -> None:
    """File names are bytes on POSIX; one that is not UTF-8 is carried as surrogate escapes and
    printed as its own bytes, whatever the locale or PYTHONIOENCODING asked for (never a
    UnicodeEncodeError in the middle of a batch)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError, OSError):  # not a text stream of io (a test's capture)
            pass


def _cmd_convert(args) -> int:
    from ..io.transaction import install_signal_cleanup

    _names_as_bytes_on_the_streams()

    problem = _usage_problem(args)
    if problem:
        return _usage_error(args, problem)
    try:
        options = _options_from_args(args)
    except ValueError as exc:
        return _usage_error(args, str(exc))
    from ..errors import ScancoError
    from ..pipeline.request import format_skip_note, require_formats

    try:
        require_formats(options.formats)  # a missing extra: one line up front, not one per file
    except ScancoError as exc:
        print(f"scanco-units: error: {exc}", file=sys.stderr)
        return exit_codes.USAGE

    skipped = format_skip_note(options.outputs or defaults.FILE_ROLES, options.formats)
    if skipped:  # said once, up front; each file's metadata notes say it too
        print(f"scanco-units: note: {skipped}", file=sys.stderr)
    if options.report:
        from ..pipeline.report import ReportUnavailableError, require_matplotlib

        try:
            require_matplotlib()
        except ReportUnavailableError as exc:  # say it once, not once per file
            print(f"scanco-units: error: {exc}", file=sys.stderr)
            return exit_codes.USAGE
    if args.dask_scheduler or args.dask_local:
        from ..batch.dask import DaskUnavailableError, require_dask

        try:
            require_dask()
        except DaskUnavailableError as exc:
            print(f"scanco-units: error: {exc}", file=sys.stderr)
            return exit_codes.USAGE
    found = discover(args.paths, recursive=args.recursive, request=options)   # a scan's region is not a scan
    if args.dry_run:
        return _dry_run(args, found, place_outputs(found, Path(args.output), args.layout), options)
    progress = BatchProgress(found.inputs, sys.stderr, live=sys.stderr.isatty() and not args.quiet)
    printer = _Printer(args, progress)
    printer.total = len(found.inputs) + len(found.problems)  # the problems are counted as they are printed
    found_results = [FileResult(n.path, "failed", error=f"{n.path}: {n.reason}") for n in found.problems]
    found_results += [FileResult(n.path, "skipped", reason=n.reason, relative_path=n.relative) for n in found.skipped]
    for r in found_results:
        printer.result(r)
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"scanco-units: error: {out_dir}: cannot create output folder ({exc.strerror or exc})",
              file=sys.stderr)
        return exit_codes.FAILED
    if args.summary and not _prepare_summary_folder(args.summary):
        return exit_codes.FAILED
    places = place_outputs(found, out_dir, args.layout)
    batch = Batch(found.inputs, out_dir, options, places=places, skip_existing=args.skip_existing, strict=args.strict,
                  on_result=printer.result, progress=progress)
    if args.summary:  # checked like an output, before any voxel is read
        from ..batch.summary import summary_path_problem

        problem = summary_path_problem(args.summary, batch.protected, overwrite=args.overwrite)
        if problem:
            print(f"scanco-units: error: {problem}", file=sys.stderr)
            return exit_codes.USAGE
    from ..batch.jobs import sweep_output_folder

    for folder in sorted({out_dir, *(place.folder for place in places.values())}):
        for line in sweep_output_folder(folder).lines():  # leftovers of killed runs, whichever input
            print(f"scanco-units: note: {line}", file=sys.stderr)
    install_signal_cleanup()
    summary_stream = sys.stderr if args.json else sys.stdout
    try:
        with progress:
            if args.dask_scheduler or args.dask_local:
                from ..batch.dask import DaskConnectionError, run_on_dask

                try:
                    run_on_dask(batch, scheduler=args.dask_scheduler, local_workers=args.dask_local)
                except DaskConnectionError as exc:
                    print(f"scanco-units: error: {exc}", file=sys.stderr)
                    return exit_codes.FAILED
            else:
                batch.run(args.jobs)
    except KeyboardInterrupt as interrupt:
        ignore_further_signals()
        what = signal_name(interrupt)
        for path in batch.not_started():
            batch.add(path, FileResult(str(path), "interrupted", error=f"{path}: {NOT_STARTED}"))
        stopped = [r.name for r in batch.results if r.status == "interrupted" and NOT_STARTED not in (r.error or "")]
        finished = sum(1 for r in batch.results if r.status == "converted")
        not_started = sum(1 for r in batch.results if NOT_STARTED in (r.error or ""))
        where = f" while converting {', '.join(stopped)}" if stopped else ""
        print(f"scanco-units: interrupted by {what}{where}: partial outputs were removed; "
              f"{finished} finished file(s) kept, {not_started} not started", file=sys.stderr)
        results = found_results + batch.results
        if not args.quiet or not args.json:
            _print_summary(printer, results, summary_stream, quiet=args.quiet)
        if args.summary:
            _write_summary_csv(args.summary, results, args.overwrite, [batch.protected])
        return exit_codes.exit_code_for(interrupt)
    results = found_results + batch.results
    if not (args.json and args.quiet):
        _print_summary(printer, results, summary_stream, quiet=args.quiet)
    summary_ok = _write_summary_csv(args.summary, results, args.overwrite, [batch.protected]) \
        if args.summary else True
    failed = any(r.status == "failed" for r in results) or not found.inputs or not summary_ok or printer.stdout_lost
    return exit_codes.FAILED if failed else exit_codes.OK


# ---- --dry-run ----------------------------------------------------------------------------------------------
def _thresholds_lines(resolved) -> List[str]:
    """The thresholds of one file in every unit, as ``info`` shows them."""
    return format_thresholds(resolved).splitlines()


def _plan_of_file(path: Path, place, options, skip_existing: bool) -> tuple:
    """(status word, lines) of one input in a dry run: reads its header only."""
    from ..batch.jobs import existing_metadata
    from ..pipeline.convert import plan_files
    from ..errors import ScancoError
    from ..formats.reader import read_header
    from ..pipeline.request import plan_request

    try:
        header = read_header(path)
        plan = plan_request(header, options)
        files = plan_files(plan, place.folder, place.stem)
    except ScancoError as exc:
        return "would fail", [_one_line(exc)]
    paths = [p for f in files for p in f.paths] + [place.folder / f"{place.stem}{METADATA_SUFFIX}"]
    if options.report:
        paths.append(place.folder / f"{place.stem}{REPORT_SUFFIX}")
    lines = []
    if skip_existing and existing_metadata(header, place.folder, options, place.stem) is not None:
        status = "would keep (up to date)"
    else:
        existing = [p for p in paths if os.path.lexists(p)]
        if existing and not (options.overwrite or skip_existing):
            status = "would fail"
            lines.append(f"{existing[0]}: the file exists already (--overwrite replaces it; --skip-existing "
                         "keeps finished outputs)")
        else:
            status = "would convert" + (" (replacing an earlier set)" if existing else "")
    lines.append("outputs: " + ", ".join(str(p) for p in paths))
    if plan.thresholds is not None:
        lines += _thresholds_lines(plan.thresholds)
    lines += [f"note: {_one_line(n)}" for n in plan.notes] + [f"warning: {_one_line(w)}" for w in plan.warnings]
    return status, lines


def _dry_run(args, found, places, options) -> int:
    """Print what a run would do; write nothing (no folder, no summary). Exit 1 when some input
    would fail."""
    out = sys.stdout
    print(f"dry run: nothing is written. {len(found.inputs)} input(s), {len(found.skipped)} skipped, "
          f"{len(found.problems)} problem(s); outputs under {args.output} ({args.layout} layout)", file=out)
    failing = len(found.problems)
    for note in found.problems:
        print(f"{note.path}: would fail: {note.reason}", file=out)
    for note in found.skipped:
        print(f"{note.relative or note.path}: skipped: {note.reason}", file=out)
    for path in found.inputs:
        place = places[path]
        status, lines = _plan_of_file(path, place, options, args.skip_existing)
        failing += status == "would fail"
        print(f"{place.relative}: {status}", file=out)
        for line in lines:
            print(f"    {line}", file=out)
    if args.summary:
        print(f"summary: would be written to {args.summary}", file=out)
    return exit_codes.FAILED if failing or not found.inputs else exit_codes.OK


CONVERT_EPILOG = """\
Inputs are only read. Each file's outputs appear together when it is finished, or not at all
(temporary .<name>.partial-* files are removed on any error, Ctrl-C or SIGTERM). Existing files are
never replaced without --overwrite. A bad input prints one line on stderr naming the file and the
reason, and the batch goes on; the summary lists every failure.

--recursive searches sub-folders; --skip-existing keeps finished, up-to-date output sets (a re-run
of a study only converts what is new or changed); --json prints one JSON object per input as it
finishes; --summary FILE.csv writes one row per input with the scan's statistics.

"""



def add_commands(sub) -> None:
    convert = sub.add_parser("convert", help="convert files or folders to calibrated NRRD volumes",
                             epilog=CONVERT_EPILOG + exit_codes.HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    convert.add_argument("paths", nargs="+", metavar="PATH", help="ISQ/AIM files or folders of them")
    add_convert_arguments(convert)
    add_batch_arguments(convert)
    convert.set_defaults(func=_cmd_convert, _parser=convert)

    try:
        from .demo import add_demo_command
    except ImportError:
        pass
    else:
        add_demo_command(sub)
    try:
        from ..sample_data import add_sample_command
    except ImportError:
        pass
    else:
        add_sample_command(sub)
