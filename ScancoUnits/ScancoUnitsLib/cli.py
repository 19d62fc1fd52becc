"""The ``scanco-units`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from . import __version__
from .errors import ScancoError

EXIT_OK = 0
EXIT_FAILED = 1      # at least one input could not be read or converted
EXIT_USAGE = 2       # bad command line (argparse's own code)
EXIT_INTERRUPTED = 130   # Ctrl-C (SIGINT); other signals: 128 + signal number (SIGTERM 143)
EXIT_TERMINATED = 143


def _cmd_info(args) -> int:
    from .info_text import format_header_summary
    from .reader import read_header

    status = EXIT_OK
    results = []
    for path in args.files:
        try:
            header = read_header(path)
        except ScancoError as exc:
            print(f"scanco-units: error: {exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        if args.json:
            results.append(header.to_dict())
        else:
            print(format_header_summary(header))
            print()
    if args.json:
        payload = results[0] if len(results) == 1 and len(args.files) == 1 else results
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
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
    info.add_argument("--json", action="store_true", help="print the complete header as JSON")
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
