"""Which files a batch converts: paths as given, folders searched (at any depth with ``recursive``).

A file given by name is always an input (a bad one fails with its reason). In a folder, a file is
an input when its name ends in .isq / .aim (any case, VMS ``;N`` versions too) or when its first
bytes carry a SCANCO magic (:func:`~ScancoUnitsLib.scene.sniff_format`: extensionless files from a
scanner's export). Every other file met in a folder is reported as skipped, with the reason, never
dropped silently. Output stems are unique within a batch (:func:`assign_stems`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

SCANCO_NAME = re.compile(r"\.(isq|aim)(;\d*)?$", re.IGNORECASE)
NOT_SCANCO = "not a SCANCO file (name is not .ISQ/.AIM and no ISQ or AIM magic in its first bytes)"
EMPTY_FOLDER = "folder holds no .ISQ or .AIM file"
MISSING = "no such file or folder"


@dataclass(frozen=True)
class PathNote:
    """A path that is not converted and why."""

    path: str
    reason: str


@dataclass
class Discovery:
    """``inputs``: files to convert (absolute, unique, in order); ``problems``: paths given on the
    command line that cannot be used (missing, a folder without any SCANCO file): failures;
    ``skipped``: files met in folders that are not SCANCO files."""

    inputs: List[Path] = field(default_factory=list)
    problems: List[PathNote] = field(default_factory=list)
    skipped: List[PathNote] = field(default_factory=list)


def _is_scanco(path: Path) -> bool:
    if SCANCO_NAME.search(path.name):
        return True
    from .scene import sniff_format

    return sniff_format(path) is not None


def _folder_files(folder: Path, recursive: bool):
    if not recursive:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.is_file():
                yield entry
        return
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                yield path


def discover(paths: Sequence, recursive: bool = False) -> Discovery:
    """Inputs from files and folders (``recursive``: sub-folders at any depth)."""
    found = Discovery()
    inputs: List[Path] = []
    for raw in paths:
        raw = os.fspath(raw)
        p = Path(raw)
        if p.is_dir():
            before = len(inputs)
            for candidate in _folder_files(p, recursive):
                if _is_scanco(candidate):
                    inputs.append(candidate)
                else:
                    found.skipped.append(PathNote(os.path.abspath(candidate), NOT_SCANCO))
            if len(inputs) == before:
                found.problems.append(PathNote(raw, EMPTY_FOLDER + (" (searched recursively)" if recursive else "")))
        elif p.exists():
            inputs.append(p)
        else:
            found.problems.append(PathNote(raw, MISSING))
    found.inputs = list(dict.fromkeys(Path(os.path.abspath(i)) for i in inputs))
    return found


def find_inputs(paths: Sequence[str], recursive: bool = False) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Files as given; folders searched for SCANCO files. Returns (inputs, [(path, problem)])."""
    found = discover(paths, recursive)
    return found.inputs, [(n.path, n.reason) for n in found.problems]


def assign_stems(inputs: Sequence[Path]) -> Dict[Path, str]:
    """Output stems; inputs sharing a stem (from different folders) get as many of their folder
    names in front as tell them apart (``a_C0001``; ``subj1_visit1_C0001`` in a nested study)."""
    from .convert import output_stem

    stems = {i: output_stem(i) for i in inputs}
    groups: Dict[str, List[Path]] = {}
    for i in inputs:
        groups.setdefault(stems[i].lower(), []).append(i)
    named: Dict[Path, str] = {}
    for members in groups.values():
        if len(members) == 1:
            named[members[0]] = stems[members[0]]
            continue
        depth_max = max(len(m.parent.parts) for m in members)
        for depth in range(1, depth_max + 1):
            names = {m: "_".join([*[part for part in m.parent.parts[-depth:] if part != m.anchor], stems[m]])
                     for m in members}
            if len({n.lower() for n in names.values()}) == len(members):
                break
        named.update(names)
    taken = set()
    result = {}
    for i in inputs:
        s = base = named[i]
        n = 2
        while s.lower() in taken:
            s, n = f"{base}_{n}", n + 1
        taken.add(s.lower())
        result[i] = s
    return result
