"""The ``scanco-units`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

# The command line does no linear algebra: one OpenBLAS thread instead of one per core (they spin
# at numpy's import; set before numpy is imported; an explicit setting of the user's wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .. import __version__  # noqa: E402
from ..errors import ScancoError  # noqa: E402
from . import exit_codes  # noqa: E402


def _cmd_info(args) -> int:
    """Text: a readable summary per file. ``--json``: one JSON object per file and line (JSON Lines),
    in the order given: ``{"input", "status": "ok", "error": null, ...the whole header...}``, or
    ``{"input", "status": "failed", "error": "<one line>"}`` for a file that cannot be read."""
    from ..core.header import printable
    from .info import format_header_summary, native_range_in_units, thresholds_text
    from ..formats.reader import read_header
    from ..pipeline.request import DEFAULT_THRESHOLDS
    from .arguments import threshold_spec_from_args

    try:
        spec = threshold_spec_from_args(args)
    except ValueError as exc:
        return usage_error(args, str(exc))
    show_thresholds = spec != DEFAULT_THRESHOLDS or args.low is not None or args.high is not None
    status = exit_codes.OK
    for path in args.files:
        try:
            header = read_header(path)
        except ScancoError as exc:
            message = " ".join(str(exc).split())
            print(f"scanco-units: error: {printable(message)}", file=sys.stderr)  # no raw ESC of a name
            status = exit_codes.FAILED
            if args.json:
                print(json.dumps({"input": str(path), "status": "failed", "error": message}), flush=True)
            continue
        if args.json:
            record = {"input": str(path), "status": "ok", "error": None}
            record.update(header.to_dict())
            record["data_range"] = _data_range_record(header, native_range_in_units)
            if show_thresholds:
                record["thresholds"] = _thresholds_record(header, spec)
            print(json.dumps(record, allow_nan=False), flush=True)
        else:
            print(format_header_summary(header))
            if show_thresholds:
                print(thresholds_text(header, spec))
            print()
    return status


def _data_range_record(header, native_range_in_units):
    low, high = header.raw_field("min_data_value"), header.raw_field("max_data_value")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
        return None
    return {unit: (None if pair is None else [float(pair[0]), float(pair[1])])
            for unit, pair in native_range_in_units(header, low, high).items()}


def _thresholds_record(header, spec):
    """The thresholds resolved for this file (``ResolvedThresholds.to_dict``), or why not."""
    from ..errors import CalibrationMissingError, RequestError
    from ..core.thresholds import resolve_thresholds

    if header.is_mask:
        return {"applied": False, "reason": "a SCANCO mask gives its non-zero voxels"}
    if header.voxel_type.startswith("float") and spec.unit != "native":
        return {"applied": False, "reason": f"a {header.voxel_type} image is thresholded in native units only"}
    try:
        resolved = resolve_thresholds(spec, header.calibration, voxel_type=header.voxel_type,
                                      header_max_data_value=header.raw_field("max_data_value"), path=header.path)
    except (RequestError, CalibrationMissingError) as exc:
        return {"applied": False, "reason": " ".join(str(exc).split())}
    return dict(resolved.to_dict(), applied=True)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line and a hint, not the whole usage."""

    def error(self, message):
        usage_error_line(self.prog, message)
        self.exit(exit_codes.USAGE)


def usage_error_line(prog: str, message: str) -> None:
    """``scanco-units convert: error: MESSAGE`` and ``see 'scanco-units convert --help'`` on stderr."""
    print(f"scanco-units: error: {' '.join(str(message).split())}", file=sys.stderr)
    print(f"(see '{prog} --help')", file=sys.stderr)


def usage_error(args, message: str) -> int:
    """Print a usage error of a parsed command line (one line and the hint); return exit status 2."""
    parser = getattr(args, "_parser", None)
    usage_error_line(parser.prog if parser is not None else "scanco-units", message)
    return exit_codes.USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scanco-units",
        description="Read SCANCO micro-CT files (ISQ, AIM) and convert them to calibrated NRRD volumes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="print a readable summary of the header")
    info.add_argument("files", nargs="+", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON object per file and line: the complete header, or an error object")
    from .arguments import add_threshold_arguments

    add_threshold_arguments(info)  # --low/--high/--threshold-unit: the thresholds in every unit
    info.set_defaults(func=_cmd_info, _parser=info)

    _add_more_commands(sub)
    return parser


def _add_more_commands(sub) -> None:
    """Conversion, demo and sample commands (defined in their own modules)."""
    try:
        from .convert import add_commands
    except ImportError:
        return
    add_commands(sub)


def main(argv: Optional[List[str]] = None) -> int:
    from ..core.option_names import command_line_vocabulary

    with command_line_vocabulary():  # the library's messages name --flags, not Python parameters
        return _main(argv)


def _main(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        print("scanco-units: interrupted", file=sys.stderr)
        return exit_codes.exit_code_for(exc)
    except BrokenPipeError:  # e.g. `scanco-units info *.ISQ | head`: the reader went away
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return exit_codes.FAILED


if __name__ == "__main__":
    sys.exit(main())
