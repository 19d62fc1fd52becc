"""Full-resolution export with the scene's option names: the files hold what the nodes hold.

The same :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest`, plan and engine as the command line
(:func:`~ScancoUnitsLib.pipeline.convert.convert_header`), streamed slab by slab, never the whole volume in
memory. :func:`planned_export_files` and :func:`existing_export_files` say what an export would write (to ask
before replacing files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from .. import defaults
from ..defaults import METADATA_SUFFIX
from ..core.header import ScancoHeader
from ..core.quantities import NODE_ROLES
from ..errors import ConversionCancelled
from ..formats.reader import read_header
from ..pipeline.convert import convert_header, output_stem, plan_files
from ..pipeline.request import ConversionRequest, normalise_roles, plan_request, threshold_spec_from
from .loading import ProgressCallback, is_cancelled


def export_request(header: ScancoHeader, outputs=None, *, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
                   hu_dtype: str = defaults.HU_DTYPE, compress: bool = True, overwrite: bool = False):
    """The :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` and node-role plan matching scene options,
    so the files hold what the nodes hold, at full resolution."""
    request = ConversionRequest(thresholds=threshold_spec_from(thresholds), density_unit=density_unit,
                                hu_dtype=hu_dtype, compress=bool(compress), overwrite=bool(overwrite))
    node_outputs = None if outputs is None else normalise_roles(outputs, NODE_ROLES)
    plan = plan_request(header, request, node_outputs=node_outputs, adapt_defaults=True, warn=lambda _t: None)
    return request, plan


def planned_export_files(path, out_dir, outputs=None, *, header: Optional[ScancoHeader] = None, **options):
    """Paths :func:`export_scan` would write (to ask before overwriting), metadata JSON included."""
    header = header or read_header(path)
    _request, plan = export_request(header, outputs, **options)
    stem = output_stem(header.path)
    return [p for f in plan_files(plan, Path(out_dir), stem) for p in f.paths] + \
        [Path(out_dir) / f"{stem}{METADATA_SUFFIX}"]


def export_scan(path, out_dir, outputs=None, *, thresholds=None, density_unit: str = defaults.DENSITY_UNIT,
                hu_dtype: str = defaults.HU_DTYPE, compress: bool = True, overwrite: bool = False,
                progress: Optional[ProgressCallback] = None, cancel=None,
                header: Optional[ScancoHeader] = None) -> Dict[str, object]:
    """Write the outputs of ``path`` in ``out_dir`` at full resolution, streamed slab by slab (never the
    whole volume in memory): ``{role: Path}`` as returned by :func:`~ScancoUnitsLib.pipeline.convert.convert_header`.
    Options have the meaning of :func:`~ScancoUnitsLib.slicer.loading.load_scan_into_scene` (both mask roles map to the one mask file).
    ``progress(fraction)``; ``cancel`` as there: raises :class:`ConversionCancelled` and leaves no file.
    """
    header = header or read_header(path)
    request, plan = export_request(header, outputs, thresholds=thresholds, density_unit=density_unit,
                                   hu_dtype=hu_dtype, compress=compress, overwrite=overwrite)

    def on_progress(done: int, total: int):
        if progress is not None:
            progress(done / max(total, 1))
        return not is_cancelled(cancel)

    if is_cancelled(cancel):
        raise ConversionCancelled(header.path)
    result = convert_header(header, out_dir, request, progress=on_progress, plan=plan)
    return dict(result.outputs)


def existing_export_files(path, out_dir, outputs=None, *, header: Optional[ScancoHeader] = None,
                          **options) -> List[str]:
    """The files of :func:`planned_export_files` that exist already, as strings (``header``: the one read
    for this action, reused)."""
    return [str(p) for p in planned_export_files(path, out_dir, outputs, header=header, **options)
            if os.path.exists(p)]
