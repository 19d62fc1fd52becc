"""How an option is called where the user set it: a Python parameter or a command-line flag.

The library's messages name options through :func:`option_name`, so a Python caller reads
``thresholds=(low, high, unit)`` and a command-line user reads ``--low/--high``. The command line
switches to its flags inside :func:`command_line_vocabulary` (an environment variable, so the worker
processes of ``--jobs`` and a local Dask cluster inherit it).
"""

from __future__ import annotations

import contextlib
import os

_ENV = "SCANCO_UNITS_OPTION_NAMES"

#: option -> (Python parameter, command-line flag)
OPTION_NAMES = {
    "low": ("ThresholdSpec.low", "--low"),
    "high": ("ThresholdSpec.high", "--high"),
    "thresholds": ("thresholds=(low, high, unit)", "--low/--high"),
    "threshold_unit": ("the threshold unit", "--threshold-unit"),
    "permille_reference": ("permille_reference", "--permille-reference"),
    "density_unit": ("density_unit", "--density-unit"),
    "outputs": ("outputs", "--outputs"),
    "formats": ("formats", "--format"),
    "hu_dtype": ("hu_dtype", "--hu-dtype"),
    "detached": ("detached=True", "--detached"),
    "compress": ("compress=True", "--compress"),
    "overwrite": ("overwrite=True", "--overwrite"),
    "report": ("report=True", "--report"),
    "roi": ("regions=[\"NAME=PATH\"]", "--roi"),
    "roi_pattern": ("regions=[RegionSource(NAME, PATTERN, pattern=True)]", "--roi-pattern"),
}


def command_line_names() -> bool:
    """True when messages name command-line flags (set by the ``scanco-units`` command)."""
    return os.environ.get(_ENV) == "cli"


@contextlib.contextmanager
def command_line_vocabulary():
    """Messages name command-line flags inside the block (and in processes started inside it)."""
    before = os.environ.get(_ENV)
    os.environ[_ENV] = "cli"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = before


def option_name(key: str) -> str:
    """The name of option ``key`` in the caller's vocabulary (see :data:`OPTION_NAMES`)."""
    python, flag = OPTION_NAMES[key]
    return flag if command_line_names() else python


def outputs_phrase(roles) -> str:
    """``--outputs native,mask`` or ``outputs=("native", "mask")``."""
    roles = list(roles)
    if command_line_names():
        return f"--outputs {','.join(roles)}"
    return "outputs=(" + ", ".join(repr(r) for r in roles) + ("," if len(roles) == 1 else "") + ")"


def value_phrase(key: str, value) -> str:
    """``--hu-dtype float32`` or ``hu_dtype='float32'``."""
    if command_line_names():
        return f"{OPTION_NAMES[key][1]} {value}"
    return f"{key}={value!r}"
