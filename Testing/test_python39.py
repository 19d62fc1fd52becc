"""Every project module must run on the oldest Python that 3D Slicer ships (5.8: Python 3.9).

``ast.parse(..., feature_version=(3, 9))`` refuses the grammar that came later (``match``, ``except*``,
parenthesised context managers, ...). What parses but fails at run time on 3.9 is checked by hand:
``X | Y`` in an annotation without ``from __future__ import annotations`` (evaluated at definition
time), ``X | Y`` as the type of ``isinstance``, and the 3.10 keywords ``dataclass(slots=, kw_only=)`` and
``zip(strict=)``. ``make test-oldest`` runs the whole suite on Python 3.9 with numpy 1.26.4.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
OLDEST = (3, 9)
_LATER_KEYWORDS = {"dataclass": {"slots", "kw_only", "match_args"}, "zip": {"strict"}}


def project_modules() -> List[Path]:
    roots = [REPO / "ScancoUnits", REPO / "Testing", REPO / "bench"]
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*.py")
                  if "__pycache__" not in p.parts)


def _is_union(node) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)


def _annotations(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def problems_for_python39(source: str, name: str = "<source>") -> List[str]:
    """What in ``source`` would not run on Python 3.9 (empty when nothing)."""
    try:
        tree = ast.parse(source, filename=name, feature_version=OLDEST)
    except SyntaxError as exc:
        return [f"{name}:{exc.lineno}: not Python 3.9 syntax: {exc.msg}"]
    found = []
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not future:
        for annotation in _annotations(tree):
            if any(_is_union(n) for n in ast.walk(annotation)):
                found.append(f"{name}:{annotation.lineno}: 'X | Y' annotation needs "
                             "'from __future__ import annotations' on Python 3.9")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if func == "isinstance" and len(node.args) == 2 and _is_union(node.args[1]):
            found.append(f"{name}:{node.lineno}: isinstance(x, A | B) needs Python 3.10; use (A, B)")
        later = _LATER_KEYWORDS.get(func, set()) & {k.arg for k in node.keywords}
        if later:
            found.append(f"{name}:{node.lineno}: {func}({', '.join(sorted(later))}=...) needs Python 3.10")
    return found


def test_the_checker_finds_what_python39_cannot_run():
    assert problems_for_python39("x = 1\ndef f(a: 'int') -> None: pass\n") == []
    assert problems_for_python39("from __future__ import annotations\ndef f(a: int | None): pass\n") == []
    later = [
        "match x:\n    case 1:\n        pass\n",
        "try:\n    pass\nexcept* ValueError:\n    pass\n",
        "def f(a: int | None): pass\n",
        "x: int | str = 1\n",
        "isinstance(1, int | str)\n",
        "from dataclasses import dataclass\n@dataclass(slots=True)\nclass A:\n    pass\n",
        "zip([1], [2], strict=True)\n",
    ]
    for source in later:
        assert problems_for_python39(source), source


def test_every_project_module_runs_on_python39():
    modules = project_modules()
    assert len(modules) > 40 and any(p.name == "engine.py" for p in modules)
    found = [problem for path in modules
             for problem in problems_for_python39(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not found, "\n".join(found)


def test_the_oldest_stack_is_pinned_once():
    """``make test-oldest`` installs the test-oldest extra: numpy 1.26.4, the oldest numpy Slicer ships."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the oldest stack itself runs the tests above
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    oldest = project["optional-dependencies"]["test-oldest"]
    assert "numpy==1.26.4" in oldest
    assert {p.split("==")[0] for p in oldest} == {"numpy", "pytest", "hypothesis"}
    assert project["requires-python"] == ">=3.9"
    assert "test-oldest:" in (REPO / "Makefile").read_text() and "$(MAKE) test-oldest" in (REPO / "Makefile").read_text()
