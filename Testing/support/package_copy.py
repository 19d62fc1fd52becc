"""A copy of the module folder with one file edited, and a probe script run on it in a subprocess: how the
tests show that one edit (a default, a registry entry) is all a change needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


def edited_copy(tmp_path: Path, relative: str, edit: Callable[[str], str]) -> Path:
    """``<tmp>/module/ScancoUnits`` with ``ScancoUnits/<relative>`` replaced by ``edit(its text)``."""
    copy = tmp_path / "module" / "ScancoUnits"
    shutil.copytree(REPO / "ScancoUnits", copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / relative
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return copy


def run_probe(copy: Path, probe: str, *args: str, cwd: Path, timeout: int = 600) -> dict:
    """Run ``probe`` with only the copy on the path; its last stdout line is a JSON object."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    env.pop("SCANCO_UNITS_KERNEL", None)
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env,
                          cwd=str(cwd), timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
