"""``scanco-units convert``, ``demo`` and ``sample``: batch conversion with progress and a summary."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .errors import ScancoError
from .request import add_request_arguments, request_from_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # SIGTERM: 143 (128 + 15)
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
    return request_from_args(args)


def _convert_one(path: Path, out_dir: Path, options, stem: str, show_progress: bool):
    """Convert one input; return (status, message, outputs, seconds, input_bytes). Never raises for
    bad input: the batch goes on. The message is one line that names the input file."""
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
        return ("failed", _naming_input(path, str(exc)), {}, time.perf_counter() - started, 0)
    except MemoryError:
        return ("failed", f"{path}: out of memory", {}, time.perf_counter() - started, 0)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a bug of ours must not stop the batch either
        return ("failed", f"{path}: internal error ({type(exc).__name__}: {exc})", {},
                time.perf_counter() - started, 0)


def _naming_input(path: Path, message: str) -> str:
    """Errors about outputs (disk full, permission denied) name the output; put the input first."""
    if not message.startswith(str(path)):
        message = f"{path}: {message}"
    return message


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).replace("\r", " ")


# ---- interruption (Ctrl-C, SIGTERM) -------------------------------------------------------------------
def _signum(interrupt: BaseException) -> int:
    signum = getattr(interrupt, "signum", None)
    return signum if isinstance(signum, int) else int(signal.SIGINT)  # plain KeyboardInterrupt: Ctrl-C


def _exit_code_for(interrupt: BaseException) -> int:
    """128 + signal number, as shells report it: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 128 + _signum(interrupt)


def _signal_name(interrupt: BaseException) -> str:
    signum = _signum(interrupt)
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else name


def _ignore_further_signals() -> None:
    """While cleaning up after the first signal, a second one must not leave a traceback."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            try:
                signal.signal(getattr(signal, name), signal.SIG_IGN)
            except (ValueError, OSError):  # not the main thread
                pass


def _output_names(stem: str):
    from .convert import OUTPUT_SUFFIXES

    suffixes = list(OUTPUT_SUFFIXES.values()) + ["_metadata", "_report"]
    for suffix in suffixes:
        for ext in (".nrrd", ".nhdr", ".raw", ".json", ".png"):
            yield f"{stem}{suffix}{ext}"


def remove_partials_of(out_dir: Path, stem: str, newer_than: float = 0.0) -> List[Path]:
    """Delete the temporary files (``.<name>.partial-<random>``) of one input's outputs modified
    after ``newer_than`` (a time.time() value), e.g. after its worker process was killed or a signal
    came while a temporary file was being created. Finished outputs and other inputs' files are not
    touched."""
    prefixes = tuple(f".{name}.partial-" for name in _output_names(stem))
    removed = []
    try:
        names = os.listdir(out_dir)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefixes):
            try:
                if os.lstat(out_dir / name).st_mtime < newer_than:
                    continue  # older than this batch: not ours
                os.unlink(out_dir / name)
                removed.append(out_dir / name)
            except OSError:
                pass
    return removed


_worker_state = {"busy": False, "stopping": False, "signalled": False}


def _worker_signal(signum, frame):  # pragma: no cover - runs in worker processes
    """Busy: stop the conversion (its with-blocks remove its temporary files). Idle, or already
    unwinding: ignore it; the parent ends the pool cleanly (a worker that exited here could die
    holding a queue lock and hang the others)."""
    from .atomic_output import Interrupted

    _worker_state["signalled"] = True  # start nothing new
    if _worker_state["busy"] and not _worker_state["stopping"]:
        _worker_state["stopping"] = True
        raise Interrupted(signum)


def _worker_init() -> None:  # pragma: no cover - runs in worker processes
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _worker_signal)


def _worker_convert(path, out_dir, options, stem):  # pragma: no cover - runs in worker processes
    if _worker_state["signalled"]:  # a call queued before the interrupt: do not start it
        return ("skipped", f"{path}: not started (batch interrupted)", {}, 0.0, 0)
    _worker_state["busy"], _worker_state["stopping"] = True, False
    try:
        return _convert_one(path, out_dir, options, stem, False)
    except KeyboardInterrupt:
        from .atomic_output import remove_all_partials

        remove_all_partials()  # worker processes end without running atexit handlers
        raise
    finally:
        _worker_state["busy"] = False


class _Batch:
    """Rows of the summary and what was going on when an interrupt came."""

    def __init__(self, inputs, out_dir: Path, stems, quiet: bool):
        self.inputs = list(inputs)
        self.out_dir = out_dir
        self.stems = stems
        self.quiet = quiet
        self.rows = []          # (path, status, message, outputs, seconds, nbytes)
        self.reported = set()
        self.current = None     # the input being converted (sequential runs)
        self.started = time.time() - 60.0  # temporary files older than this are not this batch's

    def add(self, path: Path, result) -> None:
        self.rows.append(_report(path, result, self.quiet))
        self.reported.add(path)

    def interrupted(self, path: Path, why: str) -> None:
        """Its with-blocks removed its temporary files on the way out; the sweep catches the ones a
        signal or a killed worker left behind (e.g. a signal just as a file was being created)."""
        remove_partials_of(self.out_dir, self.stems[path], newer_than=self.started)
        self.rows.append((path, "stopped", why, {}, 0.0, 0))
        self.reported.add(path)

    def not_started(self):
        return [i for i in self.inputs if i not in self.reported]


def _run_sequential(batch: _Batch, options, show: bool) -> None:
    for path in batch.inputs:
        batch.current = path
        result = _convert_one(path, batch.out_dir, options, batch.stems[path], show)
        batch.current = None
        batch.add(path, result)


def _run_parallel(batch: _Batch, options, jobs: int) -> None:
    from concurrent.futures import wait
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init)
    futures = {pool.submit(_worker_convert, i, batch.out_dir, options, batch.stems[i]): i for i in batch.inputs}
    try:
        for f in as_completed(futures):
            path = futures[f]
            try:
                batch.add(path, f.result())
            except BrokenProcessPool:
                remove_partials_of(batch.out_dir, batch.stems[path], newer_than=batch.started)
                batch.add(path, ("failed", f"{path}: the worker process converting it died (out of memory?); "
                                           "its partial outputs were removed", {}, 0.0, 0))
            except Exception as exc:  # noqa: BLE001
                batch.add(path, ("failed", f"{path}: internal error ({type(exc).__name__}: {exc})", {}, 0.0, 0))
    except KeyboardInterrupt as interrupt:
        _ignore_further_signals()
        for f in futures:
            f.cancel()  # not dispatched yet: never started
        processes = list((getattr(pool, "_processes", None) or {}).values())
        # Busy workers turn SIGTERM into Interrupted and clean up; idle ones ignore it. Repeat, since a
        # worker may pick up a call that was already queued when the signal came.
        pending = [f for f in futures if not f.done()]
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for process in processes:
                if process.exitcode is None:
                    try:
                        os.kill(process.pid, signal.SIGTERM)
                    except OSError:
                        pass
            pending = list(wait(pending, timeout=0.5).not_done)
        if pending:  # stuck workers (a hung network drive...): stop them the hard way
            for process in processes:
                try:
                    process.kill()
                except (OSError, ValueError, AttributeError):
                    pass
        for f, path in futures.items():
            if path in batch.reported or f.cancelled():
                continue  # reported already / never started
            if f.done() and f.exception() is None:
                if f.result()[0] != "skipped":
                    batch.add(path, f.result())  # it finished before the signal reached it
            else:
                batch.interrupted(path, f"interrupted by {_signal_name(interrupt)}; partial outputs removed")
        pool.shutdown(wait=not pending, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _cmd_convert(args) -> int:
    from .atomic_output import install_signal_cleanup

    try:
        options = _options_from_args(args)
    except ValueError as exc:
        print(f"scanco-units: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if options.report:
        from .report import ReportUnavailableError, require_matplotlib

        try:
            require_matplotlib()
        except ReportUnavailableError as exc:  # say it once, not once per file
            print(f"scanco-units: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
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
    batch = _Batch(inputs, out_dir, stems, args.quiet)
    show = sys.stderr.isatty() and not args.quiet
    try:
        if args.jobs > 1 and len(inputs) > 1:
            _run_parallel(batch, options, args.jobs)
        else:
            _run_sequential(batch, options, show)
    except KeyboardInterrupt as interrupt:
        _ignore_further_signals()
        what = _signal_name(interrupt)
        if batch.current is not None:
            batch.interrupted(batch.current, f"interrupted by {what}; partial outputs removed")
        stopped = [r[0].name for r in batch.rows if r[1] == "stopped"]
        finished = sum(1 for r in batch.rows if r[1] == "ok")
        where = f" while converting {', '.join(stopped)}" if stopped else ""
        print(f"scanco-units: interrupted by {what}{where}: partial outputs were removed; "
              f"{finished} finished file(s) kept, {len(batch.not_started())} not started", file=sys.stderr)
        _summary(batch.rows, problems, batch.not_started())
        return _exit_code_for(interrupt)
    _summary(batch.rows, problems, [])
    failed = any(r[1] != "ok" for r in batch.rows) or problems or not inputs
    return EXIT_FAILED if failed else EXIT_OK


def _report(path: Path, result, quiet: bool):
    status, message, outputs, seconds, nbytes = result
    message = _one_line(message)
    if status == "ok":
        if not quiet:
            print(f"{path.name}: wrote {', '.join(Path(p).name for p in outputs.values())}")
        if message:
            print(f"scanco-units: warning: {message}", file=sys.stderr)
    else:
        print(f"scanco-units: error: {message}", file=sys.stderr)
    return (path, status, message, outputs, seconds, nbytes)


def _summary(rows, problems, not_started) -> None:
    if not rows and not problems and not not_started:
        print("scanco-units: no input files", file=sys.stderr)
        return
    print()
    print(f"{'file':40s} {'status':8s} {'seconds':>8s} {'MB/s':>8s}  outputs / reason")
    for path, status, message, outputs, seconds, nbytes in rows:
        rate = f"{nbytes / 1e6 / seconds:8.1f}" if status == "ok" and seconds > 0 else f"{'':8s}"
        detail = ", ".join(Path(p).name for p in outputs.values()) if status == "ok" else message
        print(f"{path.name:40s} {status:8s} {seconds:8.2f} {rate}  {detail}")
    for raw, why in problems:  # names in full: a row must say which file it is about
        print(f"{Path(raw).name or raw:40s} {'failed':8s} {'':8s} {'':8s}  {raw}: {why}")
    for path in not_started:
        print(f"{path.name:40s} {'skipped':8s} {'':8s} {'':8s}  not started (batch interrupted)")
    ok = sum(1 for r in rows if r[1] == "ok")
    failed = sum(1 for r in rows if r[1] == "failed") + len(problems)
    stopped = sum(1 for r in rows if r[1] == "stopped")
    line = f"{ok} converted, {failed} failed"
    if stopped or not_started:
        line += f", {stopped} interrupted, {len(not_started)} not started"
    print(line)


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if missing)")
    add_request_arguments(p)
    p.add_argument("--jobs", type=int, default=1, help="convert several files at once")
    p.add_argument("--threads", type=int, default=2, help="compression threads per output")
    p.add_argument("--slab-slices", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")


CONVERT_EPILOG = """\
Inputs are only read. Each file's outputs appear together when it is finished, or not at all
(temporary .<name>.partial-* files are removed on any error, Ctrl-C or SIGTERM). Existing files are
never replaced without --overwrite. A bad input prints one line on stderr naming the file and the
reason, and the batch goes on; the summary lists every failure.

exit status:
  0    every input converted
  1    at least one input failed (or no input was found)
  2    bad command line
  130  interrupted by Ctrl-C (SIGINT); 143 for SIGTERM, 129 for SIGHUP (128 + signal number)
"""


def add_commands(sub) -> None:
    convert = sub.add_parser("convert", help="convert files or folders to calibrated NRRD volumes",
                             epilog=CONVERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
