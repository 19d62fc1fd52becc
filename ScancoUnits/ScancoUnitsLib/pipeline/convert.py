"""One SCANCO file -> calibrated volumes (NRRD and the other registered formats), a metadata JSON, streamed.

Data flow: header (read once) + :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` ->
:func:`~ScancoUnitsLib.pipeline.request.plan_request` (which volumes, thresholds, refusals) -> one writer per
volume and format (:mod:`volume_writers`) as sinks of :func:`~ScancoUnitsLib.pipeline.engine.run_engine`, all
inside one :class:`~ScancoUnitsLib.io.transaction.AtomicOutputSet` (every output of a file appears
together, or none does). Every final path is known, and checked, before any voxel is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .regions import ROI_SUFFIX, ConversionRegions, is_region_name
from .. import __version__
from ..defaults import METADATA_SUFFIX, REPORT_SUFFIX  # noqa: F401 - public here too
from ..io.transaction import AtomicOutputSet, fingerprint, previous_outputs, sweep_stale_partials
from .engine import EngineOutput, SlabObserver, run_engine  # noqa: F401 - SlabObserver is public here
from ..errors import ConversionCancelled, RequestError, ScancoFormatError  # noqa: F401 - ConversionCancelled is public here
from ..core.header import ScancoHeader
from ..core.option_names import option_name, value_phrase
from ..core.quantities import QUANTITIES, storage_key, threshold_unit_label
from ..formats.reader import open_voxels, read_header
from .statistics import ScanStatistics
from .request import ConversionRequest, RequestPlan, plan_request  # noqa: F401
from ..core.thresholds import permille_of_native
from ..core.units import UnitConverter, describe_calibration
from ..formats.writers import VolumeSpec, get_format

#: role -> file suffix (from the quantity registry)
OUTPUT_SUFFIXES = {role: QUANTITIES[q].file_suffix for role, q in
                   (("hu", "hu"), ("density", "density_g_cc"), ("mask", "mask"), ("mu", "mu"),
                    ("native", "native"), ("char_mask", "char_mask"), ("float", "float"))}


@dataclass
class PlannedFile:
    """One volume in one format: the spec its writer gets and the final paths it makes."""

    role: str
    format: str
    spec: VolumeSpec
    paths: List[Path]


@dataclass
class ConversionResult:
    input_path: Path
    outputs: Dict[str, Path]
    metadata: dict
    seconds: float
    input_bytes: int
    warnings: List[str]


def output_stem(path) -> str:
    """``C0004255.ISQ;1`` -> ``C0004255``."""
    name = Path(os.fspath(path)).name
    name = re.sub(r";\d*$", "", name)
    stem, dot, ext = name.rpartition(".")
    return stem if dot and stem else name


def _calibration_key_values(header: ScancoHeader) -> Dict[str, str]:
    c = header.calibration
    kv = {"ScancoUnits_source_file": os.path.basename(header.path),
          "ScancoUnits_source_format": f"{header.format} {header.version}",
          "ScancoUnits_version": __version__}
    for key, value in (("mu_scaling", c.mu_scaling), ("mu_water_per_cm", c.mu_water_per_cm),
                       ("density_slope", c.density_slope), ("density_intercept", c.density_intercept),
                       ("density_unit", c.density_unit), ("calibration_text", c.calibration_text)):
        if value is not None:
            kv[f"ScancoUnits_{key}"] = repr(value) if isinstance(value, float) else str(value)
    kv["ScancoUnits_position_voxels"] = " ".join(str(p) for p in header.position_voxels)
    return kv


def _derivation(plan: RequestPlan, role: str) -> List[str]:
    """Lines saying how a volume was derived (for formats that keep a processing log)."""
    lines = [f"ScancoUnits {__version__}: {QUANTITIES[plan.output(role).quantity].title}"]
    r = plan.thresholds
    if role == "mask" and r is not None:
        lines.append(f"threshold {r.spec.low:g} {r.spec.high:g} "
                     f"{threshold_unit_label(r.spec.unit, plan.request.density_unit)} -> native "
                     f"{r.native_low} {r.native_high} (per mille {r.values['permille'][0]:.4f} "
                     f"{r.values['permille'][1]:.4f}); mask = native_low <= native <= native_high")
    elif role == "char_mask":
        lines.append("mask = native != 0")
    return lines


def plan_files(plan: RequestPlan, out_dir: Path, stem: str) -> List[PlannedFile]:
    """Every volume file of ``plan`` in every requested format (RequestError for a format that cannot
    hold a quantity, e.g. HU as AIM)."""
    request, header = plan.request, plan.header
    common = _calibration_key_values(header)
    formats = [get_format(name) for name in request.formats]
    holds = {o.role: [fmt for fmt in formats if fmt.accepts(storage_key(o.quantity))]
             for o in plan.outputs}  # a format that cannot hold a volume skips it (the plan's notes say so)
    refused = [f"{o.role} as {fmt.name}" for fmt in formats for o in plan.outputs if not holds[o.role]]
    if refused:
        raise RequestError(header.path, f"cannot write {', '.join(refused)}: "
                                        f"{', '.join(f.name for f in formats if f.quantities)} holds only "
                                        f"{', '.join(sorted({q for f in formats for q in (f.quantities or ())}))}")
    files = []
    for out in plan.outputs:
        quantity = QUANTITIES[out.quantity]
        kv = dict(common)
        kv.update({"ScancoUnits_quantity": quantity.title, "ScancoUnits_unit": quantity.unit_label})
        if out.quantity == "density_mg_ha_ccm" or out.quantity == "density_g_cc":
            kv["ScancoUnits_quantity"] = (f"bone mineral density "
                                          f"({header.calibration.density_unit or 'mg HA/ccm'} calibration)")
        if out.quantity == "mask" and plan.thresholds is not None:
            r = plan.thresholds
            kv.update({"ScancoUnits_threshold_native": f"{r.native_low} {r.native_high}",
                       "ScancoUnits_threshold_spec": f"{r.spec.low:g} {r.spec.high:g} {r.spec.unit}",
                       "ScancoUnits_mask_rule": "native_low <= native <= native_high"})
        for fmt in holds[out.role]:
            spec = VolumeSpec(base_path=out_dir / f"{stem}{quantity.file_suffix}", shape_zyx=header.shape_zyx,
                              dtype=out.dtype, spacing_mm=tuple(header.voxel_size_mm),
                              origin_mm=tuple(header.origin_mm), quantity=out.quantity,
                              unit_label=quantity.unit_label, description=kv["ScancoUnits_quantity"],
                              key_values=kv, source=header, derivation=tuple(_derivation(plan, out.role)),
                              compress=request.compress, detached=request.detached, threads=request.threads)
            files.append(PlannedFile(out.role, fmt.name, spec, fmt.paths(spec)))
    return files


class _WriterSink:
    """A volume writer as an engine sink; a writer that can write at known offsets also takes slabs
    straight from the engine's workers (``write_at``), in any order; a compressing writer has them
    compressed by the workers (``encode_slab``) and appends them in z order (``write_encoded``)."""

    def __init__(self, writer):
        self.writer = writer
        if getattr(writer, "positional", False):
            self.write_at = writer.write_at
        if getattr(writer, "encodes", False):
            self.encode_slab = writer.encode_slab
            self.write_encoded = writer.write_encoded
        #: a slice too large for the engine's memory budget may come in pieces of rows, in order
        self.accepts_rows = bool(getattr(writer, "accepts_rows", False))
        if self.accepts_rows:
            self.write_rows = self._write_rows

    def write(self, z, slab) -> None:
        self.writer.write_slab(slab)

    def _write_rows(self, z, y0, slab) -> None:
        self.writer.write_slab(slab)


def mask_coverage_warning(header: ScancoHeader, plan: RequestPlan, mask_voxels: int,
                           native_min, native_max) -> Optional[str]:
    """A warning when the threshold mask is empty or holds every voxel (thresholds and data range in
    per mille and mg HA/ccm), else None."""
    total = header.voxel_count
    if plan.thresholds is None or 0 < mask_voxels < total:
        return None
    r = plan.thresholds
    converter = UnitConverter(header.calibration, path=header.path)
    mg = "density_mg_ha_ccm"

    def both(native_low, native_high) -> str:
        text = f"{permille_of_native(native_low):.1f} to {permille_of_native(native_high):.1f} per mille"
        if converter.can_convert(mg):
            lo, hi = (float(converter.native_to(v, mg)) for v in (native_low, native_high))
            text += f" ({lo:.1f} to {hi:.1f} mg HA/ccm)"
        return text

    what = "empty: no voxel is" if mask_voxels == 0 else "full: every voxel is"
    data = both(native_min, native_max) if native_min is not None else "unknown"
    return (f"{header.path}: {MASK_COVERAGE_MARK}{what} inside the thresholds {both(r.native_low, r.native_high)}; "
            f"the data range is {data}. Choose thresholds inside the data range ({option_name('thresholds')}).")


#: where the mask-coverage sentence starts in its warning (the report shows it without the path)
MASK_COVERAGE_MARK = "the mask is "

#: the key of the metadata's own checksum (SHA-256 of the rest of the document, see metadata_checksum)
METADATA_CHECKSUM_KEY = "metadata_sha256"


def stem_file_names(stem: str) -> set:
    """Every file name a conversion can make for *stem*: each role's file in every format (compressed
    or not, attached or detached), the metadata and the report. Only such names are ever removed as an
    earlier output set (see :func:`~ScancoUnitsLib.io.transaction.previous_outputs`)."""
    from ..formats.writers import FORMAT_NAMES

    names = {f"{stem}{METADATA_SUFFIX}", f"{stem}{REPORT_SUFFIX}"}
    base = Path("/") / "names"
    for format_name in FORMAT_NAMES:
        try:
            fmt = get_format(format_name)
        except ImportError:  # an optional writer that is not installed made no file here
            continue
        for suffix in OUTPUT_SUFFIXES.values():
            for compress in (False, True):
                for detached in (False, True):
                    spec = VolumeSpec(base_path=base / f"{stem}{suffix}", shape_zyx=(1, 1, 1), dtype=None,
                                      spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0), quantity="native",
                                      unit_label="", description="", compress=compress, detached=detached)
                    try:
                        names.update(p.name for p in fmt.paths(spec))
                    except Exception:  # noqa: BLE001 - a combination the format does not make
                        continue
    return names


def stem_file_name_rule(stem: str) -> Callable[[str], bool]:
    """Whether a file name is one a conversion of *stem* can make: :func:`stem_file_names`, or a region
    written on the scan grid (``<stem>_roi_<NAME>`` with a volume suffix of a format, any region name)."""
    names = stem_file_names(stem)
    prefix = f"{stem}{ROI_SUFFIX.format(name='')}"
    mask_base = f"{stem}{OUTPUT_SUFFIXES['mask']}"
    volume_endings = {n[len(mask_base):] for n in names if n.startswith(mask_base)}

    def is_ours(name: str) -> bool:
        if name in names:
            return True
        if not name.startswith(prefix):
            return False
        rest = name[len(prefix):]
        return any(rest.endswith(end) and is_region_name(rest[:len(rest) - len(end)]) for end in volume_endings)

    return is_ours


def metadata_checksum(document: dict) -> str:
    """SHA-256 of a metadata document without its own checksum (canonical JSON): a hand-edited
    ``_metadata.json`` no longer matches it."""
    rest = {k: v for k, v in document.items() if k != METADATA_CHECKSUM_KEY}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


_OUR_MARK = b"ScancoUnits"  # in every NRRD header, AIM log, PNG text chunk and OME-Zarr attributes we write


def carries_our_mark(path) -> bool:
    """True when the first 64 KiB of *path* (for a folder: its ``.zattrs`` or ``zarr.json``) name
    ScancoUnits, as every NRRD header, AIM processing log, report and OME-Zarr we write does."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        return any(carries_our_mark(os.path.join(path, name)) for name in (".zattrs", "zarr.json")
                   if os.path.isfile(os.path.join(path, name)))
    try:
        with open(path, "rb") as f:
            return _OUR_MARK in f.read(1 << 16)
    except OSError:
        return False


def refuse_scanco_content(ours=(), only_ours: bool = False):
    """A ``refuse`` rule for :class:`~ScancoUnitsLib.io.transaction.AtomicOutputSet`: an existing file
    that is a SCANCO file by its content (ISQ or AIM magic) is never replaced nor removed, unless it is
    one of *ours* (an output this stem's earlier metadata recorded with its size and checksum).
    ``only_ours`` (a set without its metadata, redone by --skip-existing): every other existing file
    must carry our mark (:func:`carries_our_mark`) too, and a SCANCO file is refused all the same."""
    from ..formats.reader import sniff_format

    mine = {os.path.abspath(os.fspath(p)) for p in ours}

    def refuse(path) -> Optional[str]:
        if os.path.abspath(os.fspath(path)) in mine:
            return None
        kind = sniff_format(path) if os.path.isfile(path) else None
        if kind is not None:  # even one carrying our mark: a mask AIM exported from Slicer is a user's file
            return (f"this is a SCANCO file ({kind} by its content) that this run did not write; a SCANCO "
                    "file is never replaced (choose another output folder with -o)")
        if only_ours and not carries_our_mark(path):
            return ("the file exists already, without the metadata of a ScancoUnits run and without its mark "
                    "(--overwrite replaces it)")
        return None
    return refuse


def _opened_identity(path: str, fd: int) -> os.stat_result:
    """The identity of the file behind *fd*; refuses when *path* no longer names it."""
    opened = os.fstat(fd)
    _check_still_named(path, opened)
    return opened


def _check_still_named(path: str, opened: os.stat_result) -> None:
    """The file *path* names now must be the one opened (same device, inode, size and mtime)."""
    try:
        now = os.stat(path)
    except OSError as exc:
        raise ScancoFormatError(path, f"the file changed while it was being converted (it is gone: "
                                      f"{exc.strerror or exc}); no output was written") from None
    if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        what = "replaced by another file"
    elif (now.st_size, now.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns):
        what = "modified in place"
    else:
        return
    raise ScancoFormatError(path, f"the file changed while it was being converted ({what}); no output was "
                                  "written (convert it again once it is complete)")


def _check_same_header(header: ScancoHeader, fd: int) -> None:
    """The header was read by an earlier open: the voxels must come from the same file."""
    opened = os.fstat(fd)
    if opened.st_size != header.file_size:
        raise ScancoFormatError(header.path, "the file changed between reading its header and its voxels; "
                                             "no output was written")
    if sys.platform.startswith("win") or not os.path.exists(f"/dev/fd/{fd}"):
        return
    again = read_header(f"/dev/fd/{fd}")  # the header of the open file itself, whatever the path names now
    first, second = header.to_dict(), again.to_dict()
    for d in (first, second):
        d.pop("path", None)
    # as text: a NaN constant in a (crafted) header must compare equal to itself
    if json.dumps(first, sort_keys=True, default=repr) != json.dumps(second, sort_keys=True, default=repr):
        raise ScancoFormatError(header.path, "the file changed between reading its header and its voxels; "
                                             "no output was written")


def convert_header(header: ScancoHeader, out_dir, options: Optional[ConversionRequest] = None, *,
                   stem: Optional[str] = None,
                   progress: Optional[Callable[[int, int], Optional[bool]]] = None,
                   observers: Sequence[SlabObserver] = (), cancel=None,
                   extra_sinks: Optional[Dict[str, list]] = None, plan: Optional[RequestPlan] = None,
                   protected: Sequence = (), replace_only_ours: bool = False) -> ConversionResult:
    """Convert the file ``header`` describes. ``progress(done_slices, total_slices)`` is called after
    each slab; returning False cancels (nothing is left on disk). Each observer is called once per
    slab as ``observer(z0, native_slab, {role: converted_slab})`` (read-only views, valid only during
    the call): this is how the QC report sees the data without a second pass. ``extra_sinks``
    (role -> sinks) receive the same slabs (Slicer nodes filled in the same pass as the files).
    ``protected``: the other inputs of the run; no output may be one of them, whatever ``overwrite``
    says (nor any file that is a SCANCO file by its content). ``replace_only_ours`` (with ``overwrite``):
    an existing file is replaced only when it carries our mark (a set whose commit never finished)."""
    request = options or ConversionRequest()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    stem = stem or request.output_stem or output_stem(header.path)
    plan = plan or plan_request(header, request)
    files = plan_files(plan, out_dir, stem)
    # regions are checked by their headers (or refused) before anything is written; their voxels are
    # read and placed in threads of their own while the pass runs
    regions = ConversionRegions(header, request, plan, out_dir, stem) if request.regions else None
    try:
        meta_path = out_dir / f"{stem}{METADATA_SUFFIX}"
        report_path = out_dir / f"{stem}{REPORT_SUFFIX}" if request.report else None
        region_paths = regions.paths if regions is not None else []
        finals = [p for f in files for p in f.paths] + region_paths + [meta_path] + \
            ([report_path] if report_path else [])
        # every collision is found before any voxel is read; with --overwrite the earlier set of this stem
        # is replaced as a whole, but only the files that are provably its own: names this stem can have,
        # with the size and checksum its metadata recorded. An input is never written over, nor a SCANCO file.
        refused: List[Path] = []
        ours = previous_outputs(meta_path, stem_file_name_rule(stem), refused=refused) \
            if os.path.lexists(meta_path) else []
        stale = ours if request.overwrite else []
        set_warnings = []  # said on stderr and kept in the metadata
        if request.overwrite and os.path.lexists(meta_path) and not stale:
            set_warnings.append(f"{meta_path}: unreadable; only outputs with the same names are replaced")
        left = [p for p in refused if p not in finals]
        if request.overwrite and left:
            set_warnings.append(
                f"{meta_path}: left in place, not provably written by ScancoUnits for {stem} (name, size or "
                f"checksum): {', '.join(p.name for p in left[:5])}{' ...' if len(left) > 5 else ''}")
        output_set = AtomicOutputSet(overwrite=request.overwrite, fsync=request.fsync,
                                     protected=[header.path, *protected, *(regions.read_paths if regions else ())],
                                     replace_also=stale,
                                     refuse=refuse_scanco_content(ours, only_ours=replace_only_ours))
        output_set.check_free(finals)
        out_dir.mkdir(parents=True, exist_ok=True)
        removed = sweep_stale_partials(out_dir, stem=stem)

        observers = list(observers)
        report_builder = None
        if request.report:
            from .report import ReportBuilder  # optional: needs matplotlib

            report_builder = ReportBuilder(header, request, plan.thresholds, regions=regions.regions if regions else ())
            observers.append(report_builder.observe)
        if regions is not None and regions.observer is not None:  # in the same pass as every output
            observers.append(regions.observer)
        set_warnings.extend(regions.warnings if regions is not None else ())   # files left out (--roi-optional)
        statistics = ScanStatistics(header, plan.thresholds, request.threshold_spec) if request.statistics else None
        if statistics is not None and not statistics.counted:  # int32/float scans: summed slab by slab
            observers.append(statistics.observe)
        caught: List[str] = list(plan.warnings) + set_warnings
        if removed:
            caught.append(f"{out_dir}: removed {len(removed)} temporary file(s) left by a killed run: "
                          + ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))

        with output_set, open_voxels(header) as source:
            fd = source._file.fileno()
            _check_same_header(header, fd)
            opened = _opened_identity(header.path, fd)  # identity of what is read, taken at open
            engine_outputs = {o.role: EngineOutput(o.role, o.quantity, o.dtype) for o in plan.outputs}
            for f in files:
                writer = get_format(f.format).open(f.spec, output_set)
                engine_outputs[f.role].sinks.append(_WriterSink(writer))
            for role, sinks in (extra_sinks or {}).items():
                engine_outputs[role].sinks.extend(sinks)
            region_files = regions.open_files(output_set) if regions is not None else None
            if region_files is not None:
                observers.append(region_files)
            result = run_engine(header, source, list(engine_outputs.values()), thresholds=plan.thresholds,
                                hu_dtype=request.hu_dtype, slab_slices=request.slab_slices, observers=observers,
                                progress=progress, cancel=cancel,
                                histogram=statistics is not None and statistics.counted)
            if statistics is not None and statistics.counted:
                statistics.add_histogram(result.native_histogram)
            for sink_list in engine_outputs.values():
                for sink in sink_list.sinks:
                    if isinstance(sink, _WriterSink):
                        sink.writer.close()
            region_outputs = regions.written() if regions is not None else {}
            if regions is not None:   # read to the end, unchanged; the part outside the scan said
                caught.extend(regions.finish())

            stats = result.statistics
            caught.extend(text for text in result.warnings if text not in caught)  # e.g. an over-long stream
            hu_clipped = sum(s.hu_clipped_voxels for s in stats.values())
            nonfinite = sum(s.nonfinite_voxels for s in stats.values())
            mask_voxels = sum(s.mask_voxels for s in stats.values())
            if hu_clipped:
                caught.append(f"{header.path}: {hu_clipped} voxels were clipped to the int16 HU range "
                              f"(use {value_phrase('hu_dtype', 'float32')} to keep them)")
            if nonfinite:
                caught.append(f"{header.path}: the float image holds {nonfinite} NaN or infinite voxels "
                              "(written as stored)")
            coverage = mask_coverage_warning(header, plan, mask_voxels, result.native_min, result.native_max) \
                if plan.output("mask") is not None else None
            if coverage:
                caught.append(coverage)
            for text in caught[len(plan.warnings):]:
                warnings.warn(text, stacklevel=2)
            metadata = _metadata(header, plan, files, stats, mask_voxels, hu_clipped, result, caught, opened)
            metadata["statistics"] = statistics.to_dict() if statistics is not None else None
            if regions is not None:
                metadata["regions"] = regions.metadata()
            if coverage:
                metadata["mask_coverage"] = coverage[coverage.index(MASK_COVERAGE_MARK):]
            if report_builder is not None:
                with output_set.add(report_path, "wb") as f:
                    report_builder.save(f, metadata)
            # the record of the set: every file's size and checksum, then the document's own checksum
            metadata["files"] = {final.name: fingerprint(output_set.temp_path(final)) for final in finals
                                 if final != meta_path}
            metadata[METADATA_CHECKSUM_KEY] = metadata_checksum(metadata)
            with output_set.add(meta_path, "w", encoding="utf-8") as f:
                json.dump(metadata, f, indent=2, allow_nan=False)
                f.write("\n")
            # the metadata is the commit record, placed last. The input replaced or modified meanwhile: fail,
            # write nothing (checked now, and again once the files are on disk, just before the record)
            _check_still_named(header.path, opened)
            output_set.set_record(meta_path, check=lambda: _check_still_named(header.path, opened))
            output_set.commit()
    except BaseException:
        if regions is not None:
            regions.stop()   # the regions' reading threads
        raise
    result_outputs: Dict[str, Path] = {}
    for f in files:  # the first format that holds a volume gives its plain key, the others role_format
        key = f.role if f.role not in result_outputs else f"{f.role}_{f.format.replace('-', '_')}"
        result_outputs[key] = f.paths[0]
    result_outputs.update(region_outputs)
    result_outputs["metadata"] = meta_path
    if report_path is not None:
        result_outputs["report"] = report_path
    return ConversionResult(Path(header.path), result_outputs, metadata, time.perf_counter() - started,
                            header.data_size, caught)


def _metadata(header, plan: RequestPlan, files: List[PlannedFile], stats, mask_voxels, hu_clipped,
              result, caught, opened: Optional[os.stat_result] = None) -> dict:
    outputs = {}
    for out in plan.outputs:
        mine = [f for f in files if f.role == out.role]
        quantity = QUANTITIES[out.quantity]
        stored = {f.format: s for f in mine if (s := get_format(f.format).stored_as(out.quantity, out.dtype))}
        outputs[out.role] = {"file": mine[0].paths[0].name if mine else None,
                             "files": [p.name for f in mine for p in f.paths],
                             "formats": [f.format for f in mine],
                             "dtype": out.dtype.name, "unit": quantity.unit_label, "ucum": quantity.ucum,
                             "quantity": mine[0].spec.description if mine else quantity.title,
                             "formula": quantity.formula,
                             "min": stats[out.role].min, "max": stats[out.role].max}
        if stored:   # a format whose file holds the values differently (AIM masks: int8 0/127)
            outputs[out.role]["stored"] = stored
    thresholds = None
    if plan.thresholds is not None:
        thresholds = plan.thresholds.to_dict()
        thresholds["unit_label"] = threshold_unit_label(plan.thresholds.spec.unit, plan.request.density_unit)
    return {
        "software": {"name": "ScancoUnits", "version": __version__},
        "input": _input_identity(header, opened),
        "header": header.to_dict(),
        "formulas": {
            **{("mu_per_cm" if key == "mu" else key): q.formula for key, q in QUANTITIES.items() if q.steps},
            "computed_in": "float64 from native values; HU int16 rounded to nearest (half to even) and clipped",
        },
        "calibration": describe_calibration(header.calibration),
        "thresholds": thresholds,
        "options": plan.request.to_dict(),
        "outputs": outputs,
        "mask_voxels": mask_voxels if any(o.quantity in ("mask", "char_mask") for o in plan.outputs) else None,
        "hu_clipped_voxels": hu_clipped,
        "native_range": [result.native_min, result.native_max],
        "geometry": {"space": "left-posterior-superior", "origin_mm": list(header.origin_mm),
                     "spacing_mm": list(header.voxel_size_mm),
                     "origin_convention": "ITKIOScanco: AIM position * element size; ISQ 0"},
        "notes": list(plan.notes),
        "warnings": list(caught),
    }


def _input_identity(header: ScancoHeader, opened: Optional[os.stat_result] = None) -> dict:
    """Where the input is and which version of it was read: resolved path, size and mtime of the open
    file (what --skip-existing compares)."""
    st = opened if opened is not None else os.stat(header.path)
    return {"path": os.path.abspath(header.path), "resolved_path": os.path.realpath(header.path),
            "bytes": header.file_size, "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def convert_file(path, out_dir, options: Optional[ConversionRequest] = None, *,
                 progress: Optional[Callable[[int, int], Optional[bool]]] = None,
                 stem: Optional[str] = None, **option_values) -> Dict[str, Path]:
    """Convert one SCANCO file into ``out_dir``; return the written paths by role.

    Options are a :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` or its fields as keywords, e.g.
    ``convert_file(p, "out", outputs=("hu", "mask"), thresholds=ThresholdSpec(300, 1000))``.
    """
    if options is None:
        options = ConversionRequest(**option_values)
    elif option_values:
        options = replace(options, **option_values)
    header = read_header(path)
    return convert_header(header, out_dir, options, stem=stem, progress=progress).outputs


__all__ = ["ConversionRequest", "ConversionResult", "ConversionCancelled", "convert_file",
           "convert_header", "output_stem", "plan_files", "OUTPUT_SUFFIXES", "stem_file_names", "stem_file_name_rule", "metadata_checksum"]
