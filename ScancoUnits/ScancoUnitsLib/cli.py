"""The ``scanco-units`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

# The command line does no linear algebra: one OpenBLAS thread instead of one per core, which spun
# at numpy's import and took about 1.5 % of the CPU of a conversion (set before numpy is imported;
# an explicit setting of the user's wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import __version__  # noqa: E402
from .errors import ScancoError  # noqa: E402

EXIT_OK = 0
EXIT_FAILED = 1      # at least one input could not be read or converted
EXIT_USAGE = 2       # bad command line (argparse's own code)
EXIT_INTERRUPTED = 130   # Ctrl-C (SIGINT); other signals: 128 + signal number (SIGTERM 143)
EXIT_TERMINATED = 143


def _cmd_info(args) -> int:
    """Text: a readable summary per file. ``--json``: one JSON object per file and line (JSON Lines),
    in the order given: ``{"input", "status": "ok", "error": null, ...the whole header...}``, or
    ``{"input", "status": "failed", "error": "<one line>"}`` for a file that cannot be read."""
    from .header import printable
    from .info_text import format_header_summary
    from .reader import read_header

    status = EXIT_OK
    for path in args.files:
        try:
            header = read_header(path)
        except ScancoError as exc:
            message = " ".join(str(exc).split())
            print(f"scanco-units: error: {printable(message)}", file=sys.stderr)  # no raw ESC of a name
            status = EXIT_FAILED
            if args.json:
                print(json.dumps({"input": str(path), "status": "failed", "error": message}), flush=True)
            continue
        if args.json:
            record = {"input": str(path), "status": "ok", "error": None}
            record.update(header.to_dict())
            print(json.dumps(record, allow_nan=False), flush=True)
        else:
            print(format_header_summary(header))
            print()
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanco-units",
        description="Read SCANCO micro-CT files (ISQ, AIM) and convert them to calibrated NRRD volumes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="print a readable summary of the header")
    info.add_argument("files", nargs="+", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON object per file and line: the complete header, or an error object")
    info.set_defaults(func=_cmd_info)

    _add_more_commands(sub)
    return parser


def _add_more_commands(sub) -> None:
    """Conversion, demo and sample commands (defined in their own modules)."""
    try:
        from .cli_convert import add_commands
    except ImportError:
        return
    add_commands(sub)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", None)
        print("scanco-units: interrupted", file=sys.stderr)
        return 128 + signum if isinstance(signum, int) else EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `scanco-units info *.ISQ | head`: the reader went away
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
