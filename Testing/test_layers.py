"""The package's layers: imports point one way (down), whatever the import's place in a module.

Ranks, bottom up: errors (and defaults); core; io; formats; pipeline; batch and slicer (siblings, neither
imports the other); cli. A module may import its own layer and the layers below it; the top-level sample
modules (phantom, sample_data) sit with pipeline. Imports inside functions count the same as the others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "ScancoUnits" / "ScancoUnitsLib"
RANK = {"errors": 0, "defaults": 0, "core": 1, "io": 2, "formats": 3, "pipeline": 4, "phantom": 4,
        "sample_data": 4, "batch": 5, "slicer": 5, "cli": 6}


def _layer(dotted: str) -> str:
    parts = dotted.split(".")
    assert parts[0] == "ScancoUnitsLib"
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source=None):
    """(line, imported ScancoUnitsLib module or package) for every import in the file."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    if source is None:
        source = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ScancoUnitsLib"):
                if node.module is None or target == "ScancoUnitsLib":
                    # from . import x: x may be a module of that package
                    for alias in node.names:
                        yield node.lineno, f"{target}.{alias.name}"
                else:
                    yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ScancoUnitsLib"):
                    yield node.lineno, alias.name


MODULES = sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    for path in MODULES:
        if path == LIB / "__init__.py":
            continue
        assert _layer(_module_name(path)) in RANK, f"{path.relative_to(LIB)}: no layer (add it to RANK)"


def _upward_imports(path: Path, source=None):
    mine = _layer(_module_name(path))
    wrong = []
    for line, target in _imports(path, source):
        theirs = _layer(target)
        if theirs not in RANK:  # a name of the package itself (__version__)
            continue
        if theirs != mine and RANK[theirs] >= RANK[mine]:
            wrong.append(f"line {line}: {target} ({theirs} is not below {mine})")
    return wrong


@pytest.mark.parametrize("path", [p for p in MODULES if p != LIB / "__init__.py"],
                         ids=lambda p: str(p.relative_to(LIB)))
def test_imports_point_down(path):
    wrong = _upward_imports(path)
    assert not wrong, f"{path.relative_to(LIB)} imports upward or sideways: {wrong}"


def test_the_checker_sees_upward_and_sideways_imports():
    # the rule is not vacuous: imports inside functions, relative and absolute, are all seen
    probe = LIB / "core" / "probe.py"
    assert _upward_imports(probe, "def f():\n    from ..pipeline.engine import run_engine\n") == [
        "line 2: ScancoUnitsLib.pipeline.engine (pipeline is not below core)"]
    assert _upward_imports(probe, "from .units import UnitConverter\nfrom ..errors import ScancoError\n") == []
    sideways = LIB / "batch" / "probe.py"
    assert _upward_imports(sideways, "import ScancoUnitsLib.slicer.scene\n") == [
        "line 1: ScancoUnitsLib.slicer.scene (slicer is not below batch)"]
    assert _upward_imports(LIB / "formats" / "aim" / "probe.py", "from ... import cli\n") == [
        "line 1: ScancoUnitsLib.cli (cli is not below formats)"]


def test_only_the_slicer_module_imports_the_scene_layer():
    # ScancoUnits/ScancoUnits.py (the Slicer module) is the one user of slicer/; cli/ never loads it
    users = sorted({str(path.relative_to(LIB)) for path in MODULES
                    for _, target in _imports(path) if _layer(target) == "slicer"
                    and _layer(_module_name(path)) != "slicer"})
    assert users == []
