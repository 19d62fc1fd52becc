"""Temporary files a killed conversion left behind: those of one input, and the start-of-run sweep.

Only files whose writer is provably gone are removed (this host, this boot, process no longer running;
see :func:`~ScancoUnitsLib.io.partials.scan_partials`); finished outputs and other writers' files stay.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional


def _output_name_rule(stem: str):
    from ..pipeline.convert import stem_file_name_rule

    return stem_file_name_rule(stem)


def remove_partials_of(out_dir: Path, stem: str, newer_than: float = 0.0) -> List[Path]:
    """Delete the temporary and backup files of one input's outputs (``.<name>.partial-<writer>-...``)
    whose writer is provably gone (:func:`~ScancoUnitsLib.io.transaction.scan_partials`: this host, this
    boot, process no longer running; or this process's own registered ones), e.g. after its worker
    process was killed, and modified after
    ``newer_than`` (a time.time() value). Finished outputs, other inputs' files and files of a live
    writer, another host or another boot are not touched."""
    from ..io.partials import remove_path, scan_partials
    from ..io.signals import live_partials, unregister

    is_output_name = _output_name_rule(stem)
    removed = []
    scan = scan_partials(out_dir, stem)
    ours = set(live_partials())  # this process's own, of a conversion that was unwound: ours to remove
    for path in scan.stale + [p for p in scan.live if p in ours]:
        base = atomic_base_name(path.name)
        if base is not None and not is_output_name(base) and "~" not in base:  # "~": a shortened long name
            continue
        try:
            if os.lstat(path).st_mtime < newer_than:
                continue  # older than this batch: the start-of-run sweep reported it
            remove_path(path)
            unregister(str(path))
        except OSError:
            continue
        removed.append(path)
    return removed


def atomic_base_name(temporary_name: str) -> Optional[str]:
    """``.<name>.partial-<writer>-<random>`` -> ``<name>`` (None for other names)."""
    from ..io.partials import ID_PATTERN

    match = ID_PATTERN.match(temporary_name)
    return match["base"] if match else None


@dataclass
class SweepReport:
    """What the start-of-run sweep of an output folder did: ``removed`` temporary files of killed runs
    (this host and boot, writer gone), ``left`` those it cannot judge (another host or boot, unknown
    writer: maybe a live run elsewhere)."""

    folder: Path
    removed: List[Path] = field(default_factory=list)
    left: List[Path] = field(default_factory=list)

    def lines(self) -> List[str]:
        """One line each for stderr (none when there was nothing)."""
        out = []
        for paths, what in ((self.removed, "removed {n} temporary file(s) left by killed runs"),
                            (self.left, "left {n} temporary file(s) of another host or boot, or of an unknown "
                                        "writer, in place (remove them yourself once no run uses them)")):
            if paths:
                shown = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
                out.append(f"{self.folder}: {what.format(n=len(paths))}: {shown}")
        return out


def sweep_output_folder(out_dir) -> SweepReport:
    """At the start of a run: remove every stale temporary file of our writers in ``out_dir`` (any
    input's, not only this run's) and list the ones that cannot be judged."""
    from ..io.transaction import scan_partials, sweep_stale_partials

    out_dir = Path(out_dir)
    report = SweepReport(out_dir)
    if not out_dir.is_dir():
        return report
    report.removed = sweep_stale_partials(out_dir, warn=False)
    report.left = scan_partials(out_dir).foreign
    return report

