"""The batch summary table: one CSV row per input (converted, skipped or failed), for a paper's table.

A row's facts come from the file's ``_metadata.json`` content (the conversion's own metadata, or the
existing one of a skipped file): scanner, geometry, calibration constants, the thresholds in per
mille, native, HU and mg HA/ccm, and the statistics of :mod:`~ScancoUnitsLib.scan_statistics`.
Written at the end of the batch through :class:`~ScancoUnitsLib.atomic_output.atomic_output_file`:
the file appears complete or not at all.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable, Optional

from .scan_statistics import STATISTICS_FIELDS

# the threshold units of the summary: (column suffix, key in metadata "thresholds"/"values")
_THRESHOLD_UNITS = (("permille", "permille"), ("native", "native"), ("hu", "hu"),
                    ("mg_ha_ccm", "density_mg_ha_ccm"))
_CALIBRATION_FIELDS = ("mu_scaling", "mu_water_per_cm", "density_slope", "density_intercept")

FACT_FIELDS = (
    ("format", "scanner_id", "scanner_type", "dim_x", "dim_y", "dim_z",
     "voxel_size_x_mm", "voxel_size_y_mm", "voxel_size_z_mm")
    + _CALIBRATION_FIELDS
    + tuple(f"threshold_{end}_{suffix}" for suffix, _ in _THRESHOLD_UNITS for end in ("low", "high"))
    + ("notes",)  # what was decided for the file (e.g. thresholds not applied to a char mask)
)
SUMMARY_COLUMNS = ("input", "relative_path", "status", "reason", "error", "seconds") + FACT_FIELDS + STATISTICS_FIELDS + ("warnings", "outputs")


def facts_from_metadata(metadata: Optional[dict]) -> dict:
    """The summary columns :data:`FACT_FIELDS` from a ``_metadata.json`` dictionary (None: unknown)."""
    facts = dict.fromkeys(FACT_FIELDS)
    if not metadata:
        return facts
    header = metadata.get("header") or {}
    scanner = header.get("scanner") or {}
    calibration = header.get("calibration") or {}
    facts["format"] = " ".join(str(header[k]) for k in ("format", "version") if header.get(k)) or None
    facts["scanner_id"] = scanner.get("scanner_id")
    facts["scanner_type"] = scanner.get("scanner_type")
    for axis, n, size in zip("xyz", header.get("dimensions") or (None,) * 3,
                             header.get("voxel_size_mm") or (None,) * 3):
        facts[f"dim_{axis}"] = n
        facts[f"voxel_size_{axis}_mm"] = size
    for name in _CALIBRATION_FIELDS:
        facts[name] = calibration.get(name)
    values = (metadata.get("thresholds") or {}).get("values") or {}
    for suffix, key in _THRESHOLD_UNITS:
        pair = values.get(key)
        if pair:
            facts[f"threshold_low_{suffix}"], facts[f"threshold_high_{suffix}"] = pair
    facts["notes"] = "; ".join(str(n) for n in metadata.get("notes") or ()) or None
    return facts


def summary_csv_text(results: Iterable) -> str:
    """CSV text (header row, then one row per :class:`~ScancoUnitsLib.batch.FileResult`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = {"input": result.input, "relative_path": getattr(result, "relative_path", None) or "",
               "status": result.status, "reason": result.reason or "",
               "error": result.error or "",
               "seconds": f"{result.seconds:.3f}", "warnings": "; ".join(result.warnings),
               "outputs": "; ".join(f"{role}={path}" for role, path in result.outputs.items())}
        row.update(result.facts or {})
        row.update({k: (result.stats or {}).get(k) for k in STATISTICS_FIELDS})
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in SUMMARY_COLUMNS})
    return buffer.getvalue()


def write_summary_csv(path, results: Iterable) -> None:
    """Write the summary atomically (replacing an older summary of the same name)."""
    from .atomic_output import atomic_output_file

    text = summary_csv_text(results)
    with atomic_output_file(path, "wb", overwrite=True) as f:
        f.write(text.encode("utf-8", "surrogateescape"))  # a file name that is not UTF-8: its own bytes
