"""Shared pytest fixtures and the hypothesis profiles.

Hypothesis profiles (``HYPOTHESIS_PROFILE`` picks one; ``deterministic`` when unset):

* ``deterministic`` (``make test``): the same examples on every run (``derandomize=True``), no example
  database (no state carried between runs), no deadline and no ``too_slow`` health check (timing
  depends on the machine's load, not on the code). A red ``make test`` is a real failure and repeats.
* ``explore`` (``make fuzz-long``): random examples, different on every run; a failure prints the
  ``@reproduce_failure`` blob that replays it. Still no deadline and no example database.

A test's own ``@settings`` override single values of the profile; the fuzz and round-trip tests set
only their example counts and health checks, so the profile decides whether they are random.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parents[1]
# Testing/ mirrors the package (core/, formats/, ...); what the tests share (oracles, stubs, the CLI
# harness) lives in Testing/support/ and is imported by name
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
# ../shared/data/real from the project root; from a worktree (<root>/wt/<name>) ../../shared/data/real
_REAL_DATA_CANDIDATES = [REPO_ROOT.parent / "shared" / "data" / "real",
                         REPO_ROOT.parents[1] / "shared" / "data" / "real"]
REAL_DATA = Path(os.environ.get("SCANCO_REAL_DATA") or next(
    (p for p in _REAL_DATA_CANDIDATES if (p / "README.md").exists()), _REAL_DATA_CANDIDATES[0]))

HYPOTHESIS_PROFILES = ("deterministic", "explore")
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None, print_blob=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "deterministic")
if _PROFILE not in HYPOTHESIS_PROFILES:
    raise pytest.UsageError(f"HYPOTHESIS_PROFILE={_PROFILE!r}: expected one of {', '.join(HYPOTHESIS_PROFILES)}")
settings.load_profile(_PROFILE)


def pytest_report_header(config):
    return f"hypothesis profile: {_PROFILE}"


#: packages of the optional extras and the test oracles (pyproject.toml): a test module that imports one
#: that is not installed is skipped, not an error (the core suite runs with numpy, pytest and hypothesis
#: alone: ``make test-oldest``)
OPTIONAL_TEST_PACKAGES = frozenset({
    "nrrd", "itk", "aimio", "aimio_py", "slicer", "vtk", "vtkmodules", "ctk", "qt", "PySide6", "matplotlib",
    "pooch", "isal", "numba", "nibabel", "zarr", "numcodecs", "ome_zarr", "ome_zarr_models", "dask", "distributed",
})


class _ModuleWithOptionalImports(pytest.Module):
    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as exc:
            missing = exc.__cause__
            name = getattr(missing, "name", None) or ""
            if isinstance(missing, ModuleNotFoundError) and name.split(".")[0] in OPTIONAL_TEST_PACKAGES:
                pytest.skip(f"needs the optional package {name!r}, which is not installed", allow_module_level=True)
            raise


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.name.startswith("test_"):
        return _ModuleWithOptionalImports.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real SCANCO files (../shared/data/real); tests using it skip where it is absent."""
    if not (REAL_DATA / "README.md").exists():
        pytest.skip("real SCANCO files (../shared/data/real) are not available")
    return REAL_DATA


@pytest.fixture()
def in_process_cli(monkeypatch):
    """In-process CLI runs must not replace pytest's own SIGTERM handler."""
    from ScancoUnitsLib.io import transaction as atomic_output

    monkeypatch.setattr(atomic_output, "install_signal_cleanup", lambda *a, **k: {})


@pytest.fixture()
def no_leftover_registry():
    """After the test: no temporary output file or folder may still be registered (it would leak on a
    signal)."""
    from ScancoUnitsLib.io.transaction import live_partials, remove_all_partials

    yield
    leftovers = live_partials()
    remove_all_partials()
    assert leftovers == [], "a test left registered temporary files or folders"
