"""Convert one input of a batch into a :class:`~ScancoUnitsLib.batch.results.FileResult`.

:func:`convert_one` is what every runner (one after the other, worker processes, Dask) calls for each
file: it never raises for a bad input, so the batch goes on, and it applies ``--skip-existing``
(:mod:`~ScancoUnitsLib.batch.skip_existing`).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..defaults import METADATA_SUFFIX
from ..errors import ScancoError
from ..io.transaction import OutputExistsError, OutputIsInputError
from .results import FileResult, naming_input
from .skip_existing import UP_TO_DATE, existing_set, outputs_of


def convert_one(path, out_dir, options, stem: str, *, skip_existing: bool = False,
                progress: Optional[Callable[[int, int], Optional[bool]]] = None,
                protected: Sequence = ()) -> FileResult:
    """Convert one input (or skip it, see the module docstring). Never raises for a bad input or a
    bug of ours: the batch goes on. KeyboardInterrupt (Ctrl-C, SIGTERM as
    :class:`~ScancoUnitsLib.io.transaction.Interrupted`) passes through, outputs cleaned up.
    ``protected``: the other inputs of the run (no output may replace one, whatever the flags)."""
    from ..pipeline import convert as convert_module
    from .summary import facts_from_metadata
    from ..formats.reader import read_header

    path = Path(path)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0

    def failed(message: str) -> FileResult:
        return FileResult(str(path), "failed", error=naming_input(path, message),
                          seconds=time.perf_counter() - started, input_bytes=size)

    only_ours = False
    try:
        header = read_header(path)
        if skip_existing:
            found = existing_set(header, out_dir, options, stem)
            if found.state == "up_to_date":
                metadata = found.metadata
                return FileResult(str(path), "skipped", outputs=outputs_of(metadata, out_dir, stem, options.report),
                                  warnings=list(metadata.get("warnings") or []),
                                  seconds=time.perf_counter() - started, stats=metadata.get("statistics"),
                                  reason=UP_TO_DATE, input_bytes=size, facts=facts_from_metadata(metadata))
            if found.state == "other_input" and not options.overwrite:
                return failed(f"{out_dir / (stem + METADATA_SUFFIX)}: the outputs named {stem}_* were made from "
                              f"another input, {found.other_input}; they are kept (--overwrite replaces them; "
                              "or choose another output folder with -o)")
            if found.state != "other_input" and not options.overwrite:
                # this input's set, stale, incomplete or changed (or a commit that never finished): redone.
                # Only names this plan makes and files the earlier metadata recorded are replaced; with
                # no metadata at all, only files that carry our mark.
                options = replace(options, overwrite=True)
                only_ours = found.state == "missing"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = convert_module.convert_header(header, out_dir, options, stem=stem, progress=progress,
                                                   protected=protected,
                                                   replace_only_ours=only_ours)
        notes = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
        return FileResult(str(path), "converted", outputs={k: str(v) for k, v in result.outputs.items()},
                          warnings=notes, seconds=time.perf_counter() - started,
                          stats=result.metadata.get("statistics"), input_bytes=size,
                          facts=facts_from_metadata(result.metadata))
    except OutputExistsError as exc:
        return failed(f"{exc.path}: the file exists already (--overwrite replaces it; --skip-existing "
                      "keeps finished outputs)")
    except OutputIsInputError as exc:  # an input, or a SCANCO file: no flag replaces it
        return failed(f"{exc.path}: {exc.reason}")
    except ScancoError as exc:
        return failed(str(exc))
    except MemoryError:
        return failed("out of memory")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not stop the batch either
        return failed(f"internal error ({type(exc).__name__}: {exc})")

