"""What became of one input of a batch: :class:`FileResult`, its statuses, and ``--strict``.

Every runner (one after the other, worker processes, Dask) reports each file as a :class:`FileResult`;
the command line prints it, the summary tabulates it and ``--json`` writes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional

STATUSES = ("converted", "skipped", "failed", "interrupted")
NOT_STARTED = "not started (batch interrupted)"


@dataclass
class FileResult:
    """What became of one input. ``outputs``: role -> path; ``stats``: the scan statistics
    (:mod:`~ScancoUnitsLib.pipeline.statistics`); ``facts``: scanner, geometry, calibration and threshold
    columns of the summary (:func:`~ScancoUnitsLib.batch.summary.facts_from_metadata`); ``reason``:
    why a file was skipped."""

    input: str
    status: str
    outputs: Dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    stats: Optional[dict] = None
    reason: Optional[str] = None
    input_bytes: int = 0
    facts: Optional[dict] = None
    relative_path: Optional[str] = None
    mask_coverage: Optional[str] = None   # "empty" or "full" when the threshold mask is (see mask_coverage_of)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")

    @property
    def name(self) -> str:
        return Path(self.input).name or self.input

    def to_dict(self) -> dict:
        """JSON-ready; the shape of one ``--json`` line."""
        return asdict(self)


def mask_coverage_of(result: FileResult) -> Optional[str]:
    """"empty" / "full" when a result's warnings say its threshold mask holds no / every voxel (the
    warning of :func:`~ScancoUnitsLib.pipeline.convert.mask_coverage_warning`), else None."""
    from ..pipeline.convert import MASK_COVERAGE_MARK

    for note in result.warnings:
        for kind in ("empty", "full"):
            if f"{MASK_COVERAGE_MARK}{kind}" in note:
                return kind
    return None


STRICT_FAILURE = "failed because of --strict (a warning is a failure)"


def strict_result(result: FileResult) -> FileResult:
    """``--strict``: a converted (or kept) file with any warning (empty or full mask, clipped HU, a
    conflicting header...) is a failure; its outputs are complete and stay, for inspection."""
    if result.status not in ("converted", "skipped") or not result.warnings:
        return result
    kept = "its outputs were written and are kept" if result.status == "converted" else "its outputs are kept"
    return replace(result, status="failed",
                   error=f"{naming_input(Path(result.input), result.warnings[0])} [{STRICT_FAILURE}; {kept}]")


def naming_input(path: Path, message: str) -> str:
    """Errors about outputs (disk full, permission denied) name the output; put the input first."""
    if not message.startswith(str(path)):
        message = f"{path}: {message}"
    return " ".join(str(message).split("\n")).replace("\r", " ")
