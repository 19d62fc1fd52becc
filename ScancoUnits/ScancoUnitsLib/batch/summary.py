"""The batch summary table: one CSV row per input (converted, skipped or failed), for a paper's table.

A row's facts come from the file's ``_metadata.json`` content (the conversion's own metadata, or the
existing one of a skipped file): scanner, geometry, calibration constants, the thresholds in per
mille, native, HU and mg HA/ccm, and the statistics of :mod:`~ScancoUnitsLib.pipeline.statistics`.
Written at the end of the batch through :class:`~ScancoUnitsLib.io.transaction.AtomicOutputSet`:
the file appears complete or not at all. Its path is checked like an output's before the batch
starts (:func:`summary_path_problem`): never an input of the run, never a SCANCO file, never an
existing file without ``--overwrite`` unless it is a summary of ours (its header row: a re-run of a
study refreshes its own summary). A cell that is not a number and starts with ``=``, ``+``,
``-`` or ``@`` (or a tab or carriage return) gets a leading ``'``, so a spreadsheet shows it as text
instead of running it as a formula (file names, scanner names and warnings come from the data).
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Iterable, Optional, Sequence

from ..pipeline.regions import region_columns, summary_region_columns
from ..pipeline.statistics import STATISTICS_FIELDS

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
    """The summary columns :data:`FACT_FIELDS` (and the regions' ``<region>_<field>``) from a
    ``_metadata.json`` dictionary (None: unknown)."""
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
    facts.update(region_columns(metadata))   # <region>_<field> per region (--roi), after the scan's own
    return facts


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))  # "-0.5", "1e-3", "-inf": a spreadsheet reads these as numbers, not formulas
    except ValueError:
        return False
    return True


def csv_cell(value) -> str:
    """A summary cell: numbers as they are, text that would start a spreadsheet formula behind a ``'``."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    text = str(value)
    if text.startswith(_FORMULA_STARTS) and not _is_number(value):
        return "'" + text
    return text


def summary_csv_text(results: Iterable) -> str:
    """CSV text (header row, then one row per :class:`~ScancoUnitsLib.batch.results.FileResult`)."""
    results = list(results)
    # the regions' columns (every region any input has) between the scan's statistics and the warnings
    columns = SUMMARY_COLUMNS[:-2] + tuple(summary_region_columns(results)) + SUMMARY_COLUMNS[-2:]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = {"input": result.input, "relative_path": getattr(result, "relative_path", None) or "",
               "status": result.status, "reason": result.reason or "",
               "error": result.error or "",
               "seconds": f"{result.seconds:.3f}", "warnings": "; ".join(result.warnings),
               "outputs": "; ".join(f"{role}={path}" for role, path in result.outputs.items())}
        row.update(result.facts or {})
        row.update({k: (result.stats or {}).get(k) for k in STATISTICS_FIELDS})
        writer.writerow({k: csv_cell(row.get(k)) for k in columns})
    return buffer.getvalue()


def summary_path_problem(path, inputs: Sequence = (), overwrite: bool = False) -> Optional[str]:
    """Why *path* cannot take the summary of a run over *inputs* (one line), or None. Checked before
    any voxel is read: an input of the run or a SCANCO file is never replaced, whatever the flags; an
    existing file only with ``overwrite``."""
    from ..io.transaction import InputSet
    from ..formats.reader import sniff_format

    shown = f"--summary {path}"
    inputs = inputs if isinstance(inputs, InputSet) else InputSet(inputs)
    for name in (os.path.abspath(path), os.path.realpath(path)):
        hit = inputs.by_name.get(os.path.normcase(name))
        if hit is not None:
            return f"{shown}: this is the input file {hit}; an input is never overwritten (name another file)"
    try:
        st = os.stat(path)
    except OSError:
        return None
    hit = inputs.by_id.get((st.st_dev, st.st_ino))
    if hit is not None:
        return f"{shown}: this is the input file {hit}; an input is never overwritten (name another file)"
    if os.path.isdir(path):
        return f"{shown}: is a folder; name a .csv file"
    kind = sniff_format(path)
    if kind is not None:
        return f"{shown}: this is a SCANCO file ({kind} by its content); it is never overwritten (name another file)"
    if not overwrite and not is_summary_file(path):
        return f"{shown}: the file exists already (--overwrite replaces it)"
    return None


def is_summary_file(path) -> bool:
    """True when *path* is a regular file whose first line is the header row of a summary of ours (its
    first columns): a re-run of a study may replace its own summary without ``--overwrite``."""
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            first = f.readline(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return os.path.isfile(path) and first.startswith(",".join(SUMMARY_COLUMNS[:5]) + ",")


def write_summary_csv(path, results: Iterable, *, overwrite: bool = True, protected: Sequence = ()) -> None:
    """Write the summary atomically. ``overwrite`` (the default of the Python API): replace an older
    file of that name; never an input in ``protected`` nor a SCANCO file, whatever ``overwrite`` says."""
    from ..io.transaction import AtomicOutputSet
    from ..pipeline.convert import refuse_scanco_content

    text = summary_csv_text(results)
    overwrite = overwrite or is_summary_file(path)
    with AtomicOutputSet(overwrite=overwrite, protected=protected, refuse=refuse_scanco_content()) as outputs:
        outputs.check_free([path])
        with outputs.add(path, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))  # a file name that is not UTF-8: its own bytes
