"""The command line's view of a request: the options that build a
:class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` and the translation of the parsed options
into one.

The rules (defaults, what a file gives, the messages) stay in :mod:`ScancoUnitsLib.pipeline.request`
and :mod:`ScancoUnitsLib.pipeline.regions`; here only the flags, their help texts and
:func:`request_from_args`.
"""

from __future__ import annotations

import argparse

from .. import defaults
from ..core.quantities import DENSITY_UNITS, FILE_ROLES, HU_DTYPES, THRESHOLD_UNITS, canonical_density_unit, \
    threshold_unit_label
from ..core.thresholds import PERMILLE_REFERENCES, ThresholdSpec
from ..formats.writers import FORMAT_NAMES
from ..pipeline.regions import ROI_ROLE, ROI_SUFFIX, parse_region_argument, region_sources
from ..pipeline.request import DEFAULT_THRESHOLDS, ConversionRequest

__all__ = ["add_threshold_arguments", "add_request_arguments", "add_region_arguments", "threshold_spec_from_args",
           "region_request_values", "request_from_args"]


def add_threshold_arguments(p: argparse.ArgumentParser) -> None:
    """--low, --high, --threshold-unit, --permille-reference and --density-unit (convert, demo, info)."""
    default_unit = threshold_unit_label(DEFAULT_THRESHOLDS.unit)
    p.add_argument("--low", type=float, default=None,
                   help=f"lower threshold (default {DEFAULT_THRESHOLDS.low:g} {default_unit})")
    p.add_argument("--high", type=float, default=None,
                   help=f"upper threshold (default {DEFAULT_THRESHOLDS.high:g} {default_unit})")
    p.add_argument("--threshold-unit", choices=THRESHOLD_UNITS, default=DEFAULT_THRESHOLDS.unit,
                   help="unit of --low/--high: permille (1000 = native 32767), native, mu (1/cm), hu, "
                        f"mgHA/ccm, g/cc, or density = the --density-unit (default {DEFAULT_THRESHOLDS.unit})")
    p.add_argument("--permille-reference", choices=PERMILLE_REFERENCES, default=DEFAULT_THRESHOLDS.permille_reference,
                   help="1000 per mille = native 32767 (IPL, default) or the header's Maximum data value "
                        "(the seed notebook's reading)")
    p.add_argument("--density-unit", type=_density_unit_argument, default=defaults.DENSITY_UNIT,
                   metavar="{" + ",".join(DENSITY_UNITS) + "}",
                   help="unit of the density output and of --threshold-unit density (default "
                        f"{defaults.DENSITY_UNIT}; SCANCO's spelling 'mg HA/ccm' is accepted too)")


def add_request_arguments(p: argparse.ArgumentParser) -> None:
    """The options that build a :class:`ConversionRequest` (convert and demo share them)."""
    d = ConversionRequest()
    p.add_argument("--outputs", default=None,
                   help=f"comma-separated: {', '.join(FILE_ROLES)} (default {','.join(defaults.FILE_ROLES)}; "
                        "a char AIM gives its mask, a float AIM its values as stored; "
                        f"{ROI_ROLE}: each --roi region on the scan's grid, <stem>{ROI_SUFFIX.format(name='NAME')})")
    add_threshold_arguments(p)
    add_region_arguments(p)
    p.add_argument("--hu-dtype", choices=HU_DTYPES, default=d.hu_dtype)
    p.add_argument("--format", default=defaults.OUTPUT_FORMAT,
                   help=f"comma-separated output formats: {', '.join(FORMAT_NAMES)} (default {defaults.OUTPUT_FORMAT})")
    p.add_argument("--compress", action="store_true", help="gzip-compressed NRRD / .nii.gz (what Slicer writes)")
    p.add_argument("--detached", action="store_true", help="write .nhdr + .raw pairs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output set of the same name (every file of its earlier metadata)")
    p.add_argument("--statistics", action="store_true",
                   help=f"per-scan statistics (mask volume, mean density, TMD...) in {defaults.METADATA_SUFFIX}; on with "
                        "--summary and --json")
    p.add_argument("--report", action="store_true",
                   help=f"also write <name>{defaults.REPORT_SUFFIX}: mid-slices with the mask outline and the histogram with "
                        "the thresholds (needs matplotlib: pip install scanco-units[report])")
    p.add_argument("--no-fsync", dest="fsync", action="store_false",
                   help=f"do not wait until each file set is on disk before its {defaults.METADATA_SUFFIX} is placed "
                        "(faster; a power loss may then leave a set that looks complete)")


def _density_unit_argument(text: str) -> str:
    """--density-unit in any spelling :func:`canonical_density_unit` accepts, made canonical."""
    try:
        return canonical_density_unit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def threshold_spec_from_args(args) -> ThresholdSpec:
    """The thresholds the parsed command line asks for (``density`` follows --density-unit);
    ValueError for a unit other than per mille without both bounds."""
    unit = args.threshold_unit
    if unit == "density":
        unit = canonical_density_unit(args.density_unit)
    explicit = args.low is not None or args.high is not None or unit != DEFAULT_THRESHOLDS.unit \
        or args.permille_reference != DEFAULT_THRESHOLDS.permille_reference
    if not explicit:
        return DEFAULT_THRESHOLDS
    low = args.low if args.low is not None else (DEFAULT_THRESHOLDS.low if unit == DEFAULT_THRESHOLDS.unit else None)
    high = args.high if args.high is not None else (DEFAULT_THRESHOLDS.high if unit == DEFAULT_THRESHOLDS.unit else None)
    if low is None or high is None:
        raise ValueError(f"--threshold-unit {args.threshold_unit} needs both --low and --high")
    return ThresholdSpec(low, high, unit, args.permille_reference)


def request_from_args(args, **overrides) -> ConversionRequest:
    """The request the parsed command line asks for (``density`` thresholds follow --density-unit)."""
    values = dict(outputs=args.outputs, thresholds=threshold_spec_from_args(args), density_unit=args.density_unit,
                  statistics=bool(getattr(args, "statistics", False) or getattr(args, "summary", None)
                                  or getattr(args, "json", False)),
                  hu_dtype=args.hu_dtype, formats=getattr(args, "format", defaults.OUTPUT_FORMAT),
                  compress=args.compress, detached=args.detached, overwrite=args.overwrite,
                  slab_slices=getattr(args, "slab_slices", None), threads=getattr(args, "threads", 2),
                  report=getattr(args, "report", False), fsync=getattr(args, "fsync", True))
    values.update(region_request_values(args))
    values.update(overrides)
    return ConversionRequest(**values)


def add_region_arguments(p: argparse.ArgumentParser) -> None:
    """--roi, --roi-pattern and --roi-optional (the region fields of the request)."""
    p.add_argument("--roi", action="append", default=[], metavar="NAME=PATH",
                   help="a region (char mask AIM or GOBJ, placed by its position): per-region vBMD, BV/TV, TMD "
                        "in the statistics; repeatable")
    p.add_argument("--roi-pattern", action="append", default=[], metavar="NAME=PATTERN",
                   help="a region beside each input, e.g. 'TRAB={stem}_TRAB_MASK.AIM' ({stem}: the input's name "
                        "without extension)")
    p.add_argument("--roi-optional", action="store_true",
                   help="an input whose region file is missing is converted without it (warning) instead of failing")


def region_request_values(args) -> dict:
    """The request fields the region options give (empty when none was used)."""
    sources = [parse_region_argument(t) for t in getattr(args, "roi", None) or []]
    sources += [parse_region_argument(t, pattern=True) for t in getattr(args, "roi_pattern", None) or []]
    values = {}
    if sources:
        values["regions"] = region_sources(sources)
        values["statistics"] = True
    if getattr(args, "roi_optional", False):
        values["regions_optional"] = True
    return values
