"""Regions in a conversion: the ``--roi``/``--roi-pattern`` request fields, the region statistics
observer in the conversion's one pass, ``--outputs roi`` files and the metadata/summary columns.
The command line's options for them are in :mod:`~ScancoUnitsLib.cli.arguments`; the summary's
columns come from :func:`region_columns`.

* ``--roi NAME=PATH``: the file PATH (relative to the working folder) for every input;
* ``--roi-pattern 'NAME={stem}_TRAB_MASK.AIM'``: a path relative to each input's folder, ``{stem}``
  = the input's name without extension and VMS version (``{name}``: the whole file name);
* a region file that does not exist fails that input (one line), or, with ``--roi-optional``, is left
  out with a warning in the metadata.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import RequestError
from ..core.header import ScancoHeader
from .region_measures import REGION_FIELDS, RegionStatisticsObserver
from ..formats.regions import RegionLoading

#: the ``--outputs`` role that writes each region on the scan's grid
ROI_ROLE = "roi"
#: file name of a region written on the scan grid: <stem>_roi_<NAME><format suffix>
ROI_SUFFIX = "_roi_{name}"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def is_region_name(text: str) -> bool:
    """A region name: a letter, then letters, digits or ``_`` (it becomes a file name and CSV columns)."""
    return bool(_NAME.match(text))


@dataclass(frozen=True)
class RegionSource:
    """Where one region comes from: ``path`` a plain path, or (``pattern``) a template relative to
    each input's folder with ``{stem}`` and ``{name}``."""
    name: str
    path: str
    pattern: bool = False

    def path_for(self, scan_path: str) -> Path:
        if not self.pattern:
            return Path(self.path)
        scan = Path(scan_path)
        name = re.sub(r";\d*$", "", scan.name)
        stem, dot, _ = name.rpartition(".")
        return scan.parent / self.path.format(stem=stem if dot and stem else name, name=scan.name)


def parse_region_argument(text: str, pattern: bool = False) -> RegionSource:
    """``NAME=PATH`` -> :class:`RegionSource` (ValueError with the rule otherwise)."""
    name, sep, path = str(text).partition("=")
    name = name.strip()
    option = "--roi-pattern" if pattern else "--roi"
    if not sep or not path or not _NAME.match(name):
        raise ValueError(f"{option} {text!r}: expected NAME=PATH with NAME a letter then letters, digits or _ "
                         "(e.g. TRAB=scan_TRAB_MASK.AIM)")
    if pattern:
        try:
            path.format(stem="x", name="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"--roi-pattern {text!r}: only {{stem}} and {{name}} may be used ({exc})") from None
    else:
        path = os.path.abspath(path)
    return RegionSource(name, path, pattern)


def region_sources(values) -> Tuple[RegionSource, ...]:
    """Normalise ``ConversionRequest.regions``: RegionSource, ``"NAME=PATH"`` or (name, path) items."""
    out: List[RegionSource] = []
    for value in values or ():
        if isinstance(value, RegionSource):
            out.append(value)
        elif isinstance(value, str):
            out.append(parse_region_argument(value))
        else:
            name, path = value
            out.append(parse_region_argument(f"{name}={os.fspath(path)}"))
    names = [s.name for s in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"region name(s) given twice: {', '.join(duplicates)}")
    return tuple(out)


def split_roi_role(outputs):
    """(outputs without ``roi``, whether ``roi`` was asked for); outputs None stays None, ``roi`` alone
    gives no other output (an empty tuple)."""
    if outputs is None:
        return None, False
    parts = outputs.replace(",", " ").split() if isinstance(outputs, str) else list(outputs)
    kept = [p for p in parts if str(p).strip().lower() != ROI_ROLE]
    if len(kept) == len(parts):
        return outputs, False
    return tuple(kept), True


# ---- one conversion -----------------------------------------------------------------------------
class ConversionRegions:
    """The regions of one conversion: placed (or refused) before any output is written; their
    observer joins the engine's pass; :meth:`write_files` writes ``--outputs roi``."""

    def __init__(self, header: ScancoHeader, request, plan, out_dir: Path, stem: str):
        self.header = header
        self.request = request
        self.warnings: List[str] = []
        self.skipped: Dict[str, str] = {}
        self.identities: Dict[str, dict] = {}
        loading: List[RegionLoading] = []
        try:
            for source in region_sources(getattr(request, "regions", ())):
                path = source.path_for(header.path)
                if not path.exists():
                    if getattr(request, "regions_optional", False):
                        self.skipped[source.name] = str(path)
                        self.warnings.append(f"{header.path}: region {source.name}: {path} does not exist; left "
                                             "out (--roi-optional)")
                        continue
                    raise RequestError(header.path, f"region {source.name}: {path} does not exist "
                                                    "(--roi-optional converts without it)")
                self.identities[source.name] = file_identity(path)
                # the header checks now; the voxels are read and placed while the pass runs
                loading.append(RegionLoading(path, like=header, name=source.name))
            self.regions: Tuple = tuple(loading)
            self.observer = RegionStatisticsObserver(header, self.regions, plan.thresholds) if self.regions else None
            self.files = self._plan_files(plan, out_dir, stem) if getattr(request, "region_files", False) else []
        except BaseException:
            for region in loading:
                region.stop()
            raise

    def finish(self) -> List[str]:
        """After the pass: every region read to its end and placed (the reading's error raised here if
        it came after the last slice the pass needed); the file unchanged since its identity was taken.
        Returns the new warnings (voxels outside the scan), also kept in :attr:`warnings`."""
        new = []
        for region in self.regions:
            region.wait()
            if file_identity(region.path) != self.identities[region.name]:
                raise RequestError(region.path, f"region {region.name}: the file changed while it was read")
            if region.outside_voxels:
                new.append(f"{region.path}: region {region.name}: {region.outside_voxels} of its "
                           f"{region.voxels + region.outside_voxels} voxels lie outside the scan "
                           f"{os.path.basename(self.header.path)} and are left out")
        self.warnings.extend(new)
        return new

    def stop(self) -> None:
        """Stop reading the regions (the conversion failed or was cancelled)."""
        for region in self.regions:
            region.stop()

    @property
    def read_paths(self) -> List[str]:
        """The region files this conversion reads: inputs of the run, never written over."""
        return [region.path for region in self.regions]

    @property
    def active(self) -> bool:
        return bool(self.regions) or bool(self.skipped)

    @property
    def paths(self) -> List[Path]:
        return [p for _, _, paths in self.files for p in paths]

    def _plan_files(self, plan, out_dir: Path, stem: str):
        from ..formats.writers import VolumeSpec, get_format

        files = []
        for region in self.regions:
            for fmt_name in self.request.formats:
                fmt = get_format(fmt_name)
                if not fmt.accepts("mask"):
                    raise RequestError(self.header.path, f"a region cannot be written as {fmt_name}")
                description = f"region {region.name} on the scan grid (from {os.path.basename(region.path)})"
                spec = VolumeSpec(base_path=out_dir / f"{stem}{ROI_SUFFIX.format(name=region.name)}",
                                  shape_zyx=self.header.shape_zyx, dtype=np.dtype("uint8"),
                                  spacing_mm=tuple(self.header.voxel_size_mm), origin_mm=tuple(self.header.origin_mm),
                                  quantity="mask", unit_label="", description=description,
                                  key_values={"ScancoUnits_quantity": description,
                                              "ScancoUnits_region_file": region.path,
                                              "ScancoUnits_region_offset_voxels": " ".join(map(str, region.offset_voxels))},
                                  source=self.header, derivation=(f"region {region.name}: {region.path} placed by "
                                                                  f"position, offset {list(region.offset_voxels)} "
                                                                  "voxels, not resampled",),
                                  compress=self.request.compress, detached=self.request.detached,
                                  threads=self.request.threads)
                files.append((region, fmt, spec, fmt.paths(spec)))
        return [(r, (fmt, spec), paths) for r, fmt, spec, paths in files]

    def open_files(self, output_set) -> Optional["_RegionFileWriter"]:
        """The ``--outputs roi`` writers as an observer of the conversion's pass (None when none asked):
        each slab of the scan gives the regions' slices, so no region is held on the whole scan grid."""
        if not self.files:
            return None
        self._writer = _RegionFileWriter([(region, fmt.open(spec, output_set)) for region, (fmt, spec), _ in self.files])
        return self._writer

    def written(self) -> Dict[str, Path]:
        """Close the region files (after the pass) and name them like the volumes: ``roi_<NAME>`` for
        the first format, ``roi_<NAME>_<format>`` for the others."""
        if not self.files:
            return {}
        self._writer.close()
        written = {}
        for region, (fmt, _), paths in self.files:
            key = f"roi_{region.name}" if fmt.name == self.request.formats[0] else \
                f"roi_{region.name}_{fmt.name.replace('-', '_')}"
            written[key] = paths[0]
        return written

    def metadata(self) -> Optional[dict]:
        if not self.active:
            return None
        out = self.observer.result().to_dict() if self.observer is not None else {"regions": {}}
        for region in self.regions:
            entry = out["regions"][region.name]
            entry["files_on_scan_grid"] = [p.name for r, _, paths in self.files if r is region for p in paths]
            entry["file_identity"] = self.identities[region.name]
        out["skipped"] = dict(self.skipped)
        out["placement"] = ("by position: offset = region position - scan position in whole voxels of the same "
                            "element size; never resampled; the part outside the scan is left out and counted")
        return out


class _RegionFileWriter:
    """Engine observer writing each region's slices on the scan grid, slab by slab in z order."""

    def __init__(self, writers):
        self.writers = writers

    def __call__(self, z0: int, native, outputs=None) -> None:
        z1 = z0 + native.shape[0]
        for region, writer in self.writers:
            writer.write_slab(region.slab_mask(z0, z1))

    def close(self) -> None:
        for _, writer in self.writers:
            writer.close()


#: the start of the reason a region file found among the inputs is not converted itself
USED_AS_REGION = "used as a region"


def region_files_among(inputs: Sequence, request) -> Dict[Path, str]:
    """The inputs that are another input's region (``--roi``/``--roi-pattern``) -> why they are not
    converted themselves: a mask AIM beside its scan is the scan's region, not a scan of the study."""
    sources = region_sources(getattr(request, "regions", ()))
    if not sources:
        return {}
    by_real = {os.path.realpath(p): Path(p) for p in inputs}
    found: Dict[Path, str] = {}
    for scan in inputs:
        for source in sources:
            real = os.path.realpath(source.path_for(os.fspath(scan)))
            if real in by_real and by_real[real] != Path(scan) and by_real[real] not in found:
                found[by_real[real]] = f"{USED_AS_REGION} ({source.name} of {Path(scan).name}), not converted"
    return found


def file_identity(path) -> dict:
    """What says a region file is still the one that was read: size and modification time."""
    st = os.stat(path)
    return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def regions_changed(metadata: dict, request, scan_path: str, out_dir: Path) -> Optional[str]:
    """Why an earlier output set's regions are not those this request would give (``--skip-existing``):
    a region file changed, appeared or is gone, or a region file on the scan grid is not recorded.
    None when they are the same."""
    recorded = ((metadata.get("regions") or {}).get("regions") or {})
    skipped = ((metadata.get("regions") or {}).get("skipped") or {})
    for source in region_sources(getattr(request, "regions", ())):
        path = source.path_for(scan_path)
        exists = path.exists()
        if source.name in skipped or source.name not in recorded:
            if exists or source.name not in skipped:
                return f"region {source.name} ({path.name}) was not measured then"
            continue
        if not exists or recorded[source.name].get("file_identity") != file_identity(path):
            return f"region file {path.name} changed since"
    files = metadata.get("files") or {}
    for entry in recorded.values():
        for name in entry.get("files_on_scan_grid") or ():
            if name not in files:
                return f"{name} is not recorded"
    return None


def region_columns(metadata: Optional[dict]) -> Dict[str, object]:
    """Summary-CSV columns ``<region>_<field>`` from a ``_metadata.json`` dictionary."""
    regions = ((metadata or {}).get("regions") or {}).get("regions") or {}
    return {f"{name}_{field}": values.get(field) for name, values in regions.items() for field in REGION_FIELDS}


def summary_region_columns(results: Sequence) -> List[str]:
    """The region columns of a batch's results, in first-seen order."""
    names: Dict[str, None] = {}
    for result in results:
        for key in (getattr(result, "facts", None) or {}):
            if key.endswith(tuple(f"_{f}" for f in REGION_FIELDS)) and key not in names:
                names[key] = None
    return list(names)
