"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("SCANCO_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real SCANCO files (../shared/data/real); tests using it skip where it is absent."""
    if not (REAL_DATA / "README.md").exists():
        pytest.skip("real SCANCO files (../shared/data/real) are not available")
    return REAL_DATA


@pytest.fixture()
def in_process_cli(monkeypatch):
    """In-process CLI runs must not replace pytest's own SIGTERM handler."""
    from ScancoUnitsLib import atomic_output

    monkeypatch.setattr(atomic_output, "install_signal_cleanup", lambda *a, **k: {})
