"""Which files of an earlier output set are provably ours to replace: the commit record's file list,
checked against the size and checksum it recorded for each (:func:`fingerprint`).

A metadata file is only a claim (hand-edited, foreign, tampered with), so it never steers deletion by
itself; :func:`previous_outputs` lists only the files that still match their recorded fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import List, Optional

from ..defaults import METADATA_SUFFIX, REPORT_SUFFIX

__all__ = ["previous_outputs", "fingerprint", "FINGERPRINT_WHOLE_BYTES", "FINGERPRINT_BLOCKS",
           "FINGERPRINT_BLOCK_BYTES"]


def previous_outputs(metadata_json_path, names=None, *, refused: Optional[list] = None) -> List[Path]:
    """The existing files of the output set an earlier conversion recorded in *metadata_json_path*,
    limited to what is provably ours.

    A metadata file is only a claim (it may be hand-edited, foreign or tampered with), so it never
    steers deletion by itself. A listed entry counts only when

    * its name is in *names* (a set, or a rule: :func:`ScancoUnitsLib.pipeline.convert.stem_file_name_rule`;
      None: any plain name in the folder), and
    * the file, or the folder with everything in it, still has the size and checksum that metadata
      recorded for it (``"files": {name: fingerprint}``, see :func:`fingerprint`). An entry without a
      recorded fingerprint (metadata of an older release), a changed file, or a folder holding anything
      else is never listed; its path goes to *refused* (when given) so the caller can say so.

    The metadata itself is listed first. A missing, unreadable or broken JSON lists nothing; names with
    a folder part are ignored.
    """
    meta = Path(os.path.abspath(os.fspath(metadata_json_path)))
    folder = meta.parent
    try:
        with open(meta, "r", encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(document, dict):
        return []
    allowed = None if names is None else names if callable(names) else set(names).__contains__
    recorded = document.get("files") if isinstance(document.get("files"), dict) else {}
    claimed: List[str] = []
    outputs = document.get("outputs")
    for entry in (outputs.values() if isinstance(outputs, dict) else ()):
        if not isinstance(entry, dict):
            continue
        claimed += [entry.get("file")] + (entry.get("files") if isinstance(entry.get("files"), list) else [])
    claimed += list(recorded)
    if meta.name.endswith(METADATA_SUFFIX):
        claimed.append(meta.name[: -len(METADATA_SUFFIX)] + REPORT_SUFFIX)
    found: List[Path] = [meta]
    for name in dict.fromkeys(n for n in claimed if _plain_name(n) and n != meta.name):
        path = folder / name
        if not os.path.lexists(path):
            continue
        if allowed is not None and not allowed(name):
            if refused is not None:
                refused.append(path)
            continue
        expected = recorded.get(name)
        if not isinstance(expected, dict) or fingerprint(path) != expected:
            if refused is not None:
                refused.append(path)
            continue
        found.append(path)
    return [p for p in found if os.path.lexists(p)]


# ---------------------------------------------------------------------------------------------------
# fingerprints: is this still the file we wrote?
# ---------------------------------------------------------------------------------------------------

FINGERPRINT_WHOLE_BYTES = 8 << 20   # files up to this size are hashed whole
FINGERPRINT_BLOCKS = 64             # larger ones: this many blocks, evenly spaced, first and last included
FINGERPRINT_BLOCK_BYTES = 64 << 10


def _file_fingerprint(path, size: int) -> dict:
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0))
    try:
        if size <= FINGERPRINT_WHOLE_BYTES:
            offsets = [(0, size)]
        else:
            step = (size - FINGERPRINT_BLOCK_BYTES) / (FINGERPRINT_BLOCKS - 1)
            offsets = [(int(round(i * step)), FINGERPRINT_BLOCK_BYTES) for i in range(FINGERPRINT_BLOCKS)]
        for offset, length in offsets:
            done = 0
            while done < length:
                piece = os.pread(fd, min(length - done, 1 << 20), offset + done) if hasattr(os, "pread") \
                    else (os.lseek(fd, offset + done, 0), os.read(fd, min(length - done, 1 << 20)))[1]
                if not piece:
                    break
                digest.update(piece)
                done += len(piece)
    finally:
        os.close(fd)
    return {"bytes": size, "sha256": digest.hexdigest(),
            "sampled": size > FINGERPRINT_WHOLE_BYTES}


def fingerprint(path) -> Optional[dict]:
    """Size and checksum of a file, or of a folder with everything in it; None when it cannot be read.

    Files up to 8 MiB are hashed whole (SHA-256 of the size and the bytes). Larger ones are hashed from
    64 blocks of 64 KiB spread evenly over the file, the first and the last included (``"sampled":
    true``): reading 4 MiB per file keeps ``--skip-existing`` fast on GB volumes and catches truncated,
    emptied, replaced or re-headed files, but not every single-voxel edit. A folder (OME-Zarr) is its
    total size, its file count and the hash of every relative name with its file's fingerprint; a
    symbolic link inside it makes it unreadable (None), so it never counts as ours.
    """
    path = os.fspath(path)
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return _file_fingerprint(path, st.st_size)
        if not stat.S_ISDIR(st.st_mode):
            return None
        lines, total, count = [], 0, 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(dirs + files):
                full = os.path.join(root, name)
                st = os.lstat(full)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                if stat.S_ISDIR(st.st_mode):
                    lines.append(f"{rel}/")
                elif stat.S_ISREG(st.st_mode):
                    lines.append(f"{rel} {_file_fingerprint(full, st.st_size)['sha256']}")
                    total += st.st_size
                    count += 1
                else:
                    return None
        digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
        return {"bytes": total, "files": count, "sha256": digest}
    except OSError:
        return None


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name
            and "/" not in name and "\\" not in name and "\0" not in name)
