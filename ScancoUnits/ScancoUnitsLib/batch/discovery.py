"""Which files a batch converts: paths as given, folders searched (at any depth with ``recursive``),
and where each one's outputs go (:func:`place_outputs`).

A file given by name is an input (a bad one fails with its reason). In a folder, a file is an input
when its name ends in .isq / .aim (any case, VMS ``;N`` versions too) or when its first bytes carry a
SCANCO magic (:func:`~ScancoUnitsLib.formats.reader.sniff_format`: extensionless files from a scanner's
export). Never an input, wherever it is met: a file that an output set of ours lists (the
``outputs`` of a ScancoUnits ``_metadata.json`` in the same folder), and that metadata file itself.
Every other entry met in a folder (other files, FIFOs, sockets, dangling links, links to folders,
folders named like a scan when not searching recursively) is reported as skipped, with the reason,
never dropped silently; nothing but a regular file is ever opened.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import defaults
from ..defaults import METADATA_SUFFIX

from ..formats.reader import SCANCO_NAME, sniff_format
from ..pipeline.regions import USED_AS_REGION, region_files_among

NOT_SCANCO = "not a SCANCO file (name is not .ISQ/.AIM and no ISQ or AIM magic in its first bytes)"
OWN_OUTPUT = "an output of ScancoUnits, never read as an input"
EMPTY_FOLDER = "folder holds no .ISQ or .AIM file"
MISSING = "no such file or folder"
NOT_REGULAR = {  # what an entry that is not a regular file is; never opened
    "fifo": "a named pipe (FIFO), not a file",
    "socket": "a socket, not a file",
    "device": "a device, not a file",
    "dangling": "a symbolic link to nothing (dangling)",
    "folder": "a folder, not a file (named like a scan; -r searches it)",
    "folder_link": "a symbolic link to a folder (not followed)",
}
_METADATA_MAX_BYTES = 64 << 20  # a metadata file of ours is a few kB; anything larger is not read

#: output layouts under -o: ``mirror`` (the default) repeats each input's folder below the folder given
#: on the command line (its root), so a file's outputs depend on its own path only; ``flat`` puts every
#: output in -o, inputs with the same name told apart by their folder names
LAYOUTS = ("mirror", "flat")


@dataclass(frozen=True)
class PathNote:
    """A path that is not converted and why; ``relative``: its path relative to the folder given."""

    path: str
    reason: str
    relative: Optional[str] = None


@dataclass(frozen=True)
class OutputPlace:
    """Where one input's outputs go: ``folder`` / ``stem`` + suffix; ``relative``: the input's path
    relative to the folder given on the command line (its name, for a file given by name)."""

    folder: Path
    stem: str
    relative: str


@dataclass
class Discovery:
    """``inputs``: files to convert (absolute, unique, in order); ``problems``: paths given on the
    command line that cannot be used (missing, a folder without any SCANCO file): failures;
    ``skipped``: entries met in folders that are not converted (not SCANCO files, our own outputs,
    not regular files); ``roots``: input -> the folder given that holds it (a file given by name:
    its folder)."""

    inputs: List[Path] = field(default_factory=list)
    problems: List[PathNote] = field(default_factory=list)
    skipped: List[PathNote] = field(default_factory=list)
    roots: Dict[Path, Path] = field(default_factory=dict)


def skip_kind(reason: Optional[str]) -> Optional[str]:
    """``"own"`` (an output of ours), ``"region"`` (another input's region), ``"other"`` (any other entry
    discovery skipped) or None (not a discovery reason: e.g. a set that is up to date)."""
    if not reason:
        return None
    if reason.startswith(OWN_OUTPUT):
        return "own"
    if reason == NOT_SCANCO or reason in NOT_REGULAR.values():
        return "other"
    if reason.startswith(USED_AS_REGION):
        return "region"
    return None


def own_outputs_in(folder: Path) -> Dict[str, str]:
    """Names in ``folder`` that an output set of ours lists -> the metadata file listing them (the
    metadata files themselves included). A metadata file is ours when its ``software.name`` is
    ScancoUnits; unreadable ones list nothing."""
    owned: Dict[str, str] = {}
    try:
        names = [n for n in os.listdir(folder) if n.endswith(METADATA_SUFFIX)]
    except OSError:
        return owned
    for name in sorted(names):
        path = Path(folder) / name
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _METADATA_MAX_BYTES:
                continue
            with open(path, "r", encoding="utf-8", errors="surrogateescape") as f:
                metadata = json.load(f)
            if (metadata.get("software") or {}).get("name") != "ScancoUnits":
                continue
            listed = []
            for entry in (metadata.get("outputs") or {}).values():
                listed += [n for n in (entry.get("files") or []) + [entry.get("file")] if isinstance(n, str)]
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        owned.setdefault(name, name)
        for listed_name in listed:
            if listed_name and os.path.basename(listed_name) == listed_name:  # a plain name in this folder
                owned.setdefault(listed_name, name)
    return owned


def _own_reason(name: str, metadata_name: str) -> str:
    if name == metadata_name:
        return f"{OWN_OUTPUT} (the record of an output set)"
    return f"{OWN_OUTPUT} (listed in {metadata_name})"


def _is_scanco(path: Path) -> bool:
    if SCANCO_NAME.search(path.name):
        return True
    return sniff_format(path) is not None


def _not_regular(path: Path) -> Optional[str]:
    """The kind of a non-regular entry (a key of NOT_REGULAR), or None for a regular file (or a link
    to one)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling" if os.path.islink(path) else None
    except OSError:
        return None  # unreadable: let the conversion say why
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "folder_link" if os.path.islink(path) else "folder"
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "device"


def _scan_folder(found: Discovery, inputs: List[Path], root: Path, recursive: bool) -> None:
    """Add the inputs of ``root`` (``recursive``: and of its sub-folders) and note what is skipped."""
    def skip(path: Path, reason: str) -> None:
        found.skipped.append(PathNote(os.path.abspath(path), reason, relative_path(path, root)))

    def entries(folder: Path, names: List[str], subfolders: List[str]) -> None:
        owned = own_outputs_in(folder)
        for name in list(subfolders):
            if name in owned:  # an OME-Zarr output of ours: neither searched nor listed file by file
                subfolders.remove(name)
                skip(folder / name, _own_reason(name, owned[name]))
            elif os.path.islink(folder / name):
                skip(folder / name, NOT_REGULAR["folder_link"])
            elif not recursive and SCANCO_NAME.search(name):
                skip(folder / name, NOT_REGULAR["folder"])
        for name in sorted(names):
            path = folder / name
            if name in owned:
                skip(path, _own_reason(name, owned[name]))
                continue
            kind = _not_regular(path)
            if kind is not None:
                skip(path, NOT_REGULAR[kind])
            elif _is_scanco(path):
                inputs.append(path)
                found.roots.setdefault(Path(os.path.abspath(path)), Path(os.path.abspath(root)))
            else:
                skip(path, NOT_SCANCO)

    if not recursive:
        try:
            with os.scandir(root) as it:
                listed = list(it)
        except OSError:
            return
        files = [e.name for e in listed if not _is_folder(e)]
        folders = sorted(e.name for e in listed if _is_folder(e))
        entries(root, files, folders)
        return
    for folder, dirs, files in os.walk(root, onerror=None):
        dirs.sort()
        links = [d for d in dirs if os.path.islink(Path(folder) / d)]
        entries(Path(folder), files, dirs)
        dirs[:] = [d for d in dirs if d not in links]  # os.walk does not follow them either


def _is_folder(entry) -> bool:
    try:
        return entry.is_dir()  # follows links: a link to a folder is listed as such
    except OSError:
        return False


def discover(paths: Sequence, recursive: bool = False, request=None) -> Discovery:
    """Inputs from files and folders (``recursive``: sub-folders at any depth). With ``request`` (a
    :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` with regions), a file that is another
    input's region (``--roi``/``--roi-pattern``) is skipped, not converted as a scan."""
    found = Discovery()
    inputs: List[Path] = []
    own_cache: Dict[Path, Dict[str, str]] = {}
    for raw in paths:
        raw = os.fspath(raw)
        p = Path(raw)
        if p.is_dir():
            before = len(inputs)
            _scan_folder(found, inputs, p, recursive)
            if len(inputs) == before:
                found.problems.append(PathNote(raw, EMPTY_FOLDER + (" (searched recursively)" if recursive else "")))
        elif os.path.lexists(p):
            kind = _not_regular(p)
            parent = Path(os.path.abspath(p)).parent
            owned = own_cache.setdefault(parent, own_outputs_in(parent))
            if kind is not None:
                found.problems.append(PathNote(raw, NOT_REGULAR[kind] if kind != "folder" else "not a file"))
            elif p.name in owned:
                found.skipped.append(PathNote(os.path.abspath(p), _own_reason(p.name, owned[p.name]), p.name))
            else:
                inputs.append(p)
                found.roots.setdefault(Path(os.path.abspath(p)), parent)
        else:
            found.problems.append(PathNote(raw, MISSING))
    found.inputs = list(dict.fromkeys(Path(os.path.abspath(i)) for i in inputs))
    if request is not None:
        for path, reason in region_files_among(found.inputs, request).items():   # a scan's region is not a scan
            found.inputs.remove(path)
            root = found.roots.get(path, path.parent)
            found.skipped.append(PathNote(str(path), reason, os.path.relpath(path, root)))
    return found


def find_inputs(paths: Sequence[str], recursive: bool = False) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Files as given; folders searched for SCANCO files. Returns (inputs, [(path, problem)])."""
    found = discover(paths, recursive)
    return found.inputs, [(n.path, n.reason) for n in found.problems]


def relative_path(path: Path, root: Optional[Path]) -> str:
    """``path`` relative to ``root`` (its name when it is not below it)."""
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return Path(path).name


def place_outputs(found: Discovery, out_dir, layout: str = defaults.LAYOUT) -> Dict[Path, OutputPlace]:
    """Each input's output folder and stem. ``mirror``: ``out_dir`` / the input's folder relative to
    its root; ``flat``: ``out_dir``. Inputs that would share a stem in one output folder get as many
    of their folder names in front as tell them apart (:func:`assign_stems`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    out_dir = Path(out_dir)
    relative = {i: relative_path(i, found.roots.get(i)) for i in found.inputs}
    folder_of = {i: (out_dir / Path(relative[i]).parent if layout == "mirror" else out_dir) for i in found.inputs}
    groups: Dict[str, List[Path]] = {}
    for i in found.inputs:
        groups.setdefault(os.path.normcase(str(folder_of[i])), []).append(i)
    places: Dict[Path, OutputPlace] = {}
    for members in groups.values():
        stems = assign_stems(members)
        for i in members:
            places[i] = OutputPlace(folder_of[i], stems[i], relative[i])
    return {i: places[i] for i in found.inputs}


def assign_stems(inputs: Sequence[Path]) -> Dict[Path, str]:
    """Output stems; inputs sharing a stem (from different folders) get as many of their folder
    names in front as tell them apart (``a_C0001``; ``subj1_visit1_C0001`` in a nested study)."""
    from ..pipeline.convert import output_stem

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
