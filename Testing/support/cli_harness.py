"""Running the ``scanco-units`` command line in-process, for the CLI and fault tests."""

from __future__ import annotations

from ScancoUnitsLib.cli import main as cli


def run_cli(capsys, *argv):
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def error_lines(err: str):
    return [line for line in err.splitlines() if line.startswith("scanco-units: error:")]
