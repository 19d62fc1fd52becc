"""``--skip-existing``: is the output set of one input up to date, to be redone, or another input's?

A file whose complete output set exists, made from the same input (its resolved path, size and
modification time, recorded in its ``_metadata.json``) with the same options (those that change the
output bytes: not overwrite, threads, slab size or fsync) is ``skipped`` — but only when every file of
the set still has the size and checksum the metadata recorded, and the metadata its own checksum. An
incomplete, changed or stale set of the same input is converted again, replacing that set; a set made
from another input (same stem, other path) is neither believed nor replaced: that file fails with the
other input's name, unless ``--overwrite`` was given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from ..defaults import METADATA_SUFFIX, REPORT_SUFFIX
from ..errors import ScancoError

UP_TO_DATE = "outputs exist, made from this input (same size and modification time) with the same options"
# options that do not change the bytes of an output (the conversion is exact whatever the slab size)
_OPTIONS_NOT_COMPARED = ("overwrite", "threads", "slab_slices", "statistics", "fsync")


def _comparable_options(options: dict) -> dict:
    plain = json.loads(json.dumps(options))  # tuples -> lists, as read back from a metadata file
    return {k: v for k, v in plain.items() if k not in _OPTIONS_NOT_COMPARED}


@dataclass(frozen=True)
class ExistingSet:
    """What ``--skip-existing`` found for one input. ``state``: ``"missing"`` (no metadata),
    ``"up_to_date"`` (``metadata`` is believed: same input, options, files and checksums),
    ``"redo"`` (a set of this same input that is stale, incomplete or changed: ``reason`` says which)
    or ``"other_input"`` (made from ``other_input``, another file with the same stem)."""

    state: str
    metadata: Optional[dict] = None
    reason: str = ""
    other_input: Optional[str] = None


def _read_metadata(path: Path) -> Optional[dict]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def existing_set(header, out_dir, options, stem: str) -> ExistingSet:
    """Judge the output set of ``stem`` in ``out_dir`` for the input ``header`` describes.

    The metadata is only believed when its own checksum matches (a hand-edit shows), it names this
    input by resolved path, size and mtime, the options are the same, and every planned file exists
    with the size and checksum recorded for it (a 0-byte, truncated or edited file shows)."""
    from ..io.transaction import fingerprint
    from ..pipeline.convert import METADATA_CHECKSUM_KEY, metadata_checksum, plan_files
    from ..pipeline.regions import regions_changed
    from ..pipeline.request import plan_request

    out_dir = Path(out_dir)
    meta_path = out_dir / f"{stem}{METADATA_SUFFIX}"
    if not os.path.lexists(meta_path):
        return ExistingSet("missing")
    metadata = _read_metadata(meta_path)
    if metadata is None:
        return ExistingSet("redo", reason="its metadata is unreadable")
    try:
        source = metadata["input"]
        recorded_path = source.get("resolved_path") or source.get("path") or ""
        if os.path.normcase(os.path.realpath(recorded_path)) != os.path.normcase(os.path.realpath(header.path)):
            return ExistingSet("other_input", metadata, other_input=str(source.get("path") or recorded_path))
        if metadata.get(METADATA_CHECKSUM_KEY) != metadata_checksum(metadata):
            return ExistingSet("redo", reason="its metadata was edited or written by another release")
        st = os.stat(header.path)
        if (source.get("size_bytes"), source.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            return ExistingSet("redo", reason="the input changed since")
        if _comparable_options(metadata.get("options") or {}) != _comparable_options(options.to_dict()):
            return ExistingSet("redo", reason="other options")
        if options.statistics and not metadata.get("statistics"):  # asked for now, not made then
            return ExistingSet("redo", reason="no statistics")
        planned = plan_files(plan_request(header, options), out_dir, stem)
        recorded_outputs = metadata.get("outputs") or {}
        if set(recorded_outputs) != {f.role for f in planned}:
            return ExistingSet("redo", reason="other outputs")
        wanted = [p for f in planned for p in f.paths]
        changed = regions_changed(metadata, options, header.path, out_dir)
        if changed:
            return ExistingSet("redo", reason=changed)
        wanted += [out_dir / name for entry in ((metadata.get("regions") or {}).get("regions") or {}).values()
                   for name in entry.get("files_on_scan_grid") or ()]
        if options.report:
            wanted.append(out_dir / f"{stem}{REPORT_SUFFIX}")
        files = metadata.get("files") or {}
        for path in wanted:
            if path.name not in files or fingerprint(path) != files[path.name]:
                return ExistingSet("redo", reason=f"{path.name} is missing or not the file that was written")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ScancoError):
        return ExistingSet("redo", reason="its metadata is incomplete")
    return ExistingSet("up_to_date", metadata)


def existing_metadata(header, out_dir, options, stem: str) -> Optional[dict]:
    """The ``_metadata.json`` content of an up-to-date output set of this input (see
    :func:`existing_set`), or None when the set is missing, incomplete, changed or stale."""
    found = existing_set(header, out_dir, options, stem)
    return found.metadata if found.state == "up_to_date" else None


def outputs_of(metadata: dict, out_dir: Path, stem: str, report: bool) -> Dict[str, str]:
    """Role -> path of the outputs an up-to-date set's metadata records (a skipped file's outputs)."""
    outputs = {role: str(out_dir / entry["file"]) for role, entry in (metadata.get("outputs") or {}).items()}
    outputs["metadata"] = str(out_dir / f"{stem}{METADATA_SUFFIX}")
    if report:
        outputs["report"] = str(out_dir / f"{stem}{REPORT_SUFFIX}")
    return outputs

