"""The regions (``--roi``) in the QC report (:mod:`~ScancoUnitsLib.pipeline.report`): each region's outline
on the three slices in its own colour, and a column beside the text panel with a legend entry per region
and its vBMD, BV/TV and TMD (from the conversion's metadata, ``metadata["regions"]["regions"][NAME]``, as
:class:`~ScancoUnitsLib.pipeline.regions.ConversionRegions` writes it). matplotlib is imported inside
functions only.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

from .report_text import drawable, shorten

#: region outlines, in turn: Okabe & Ito's colour-blind-safe set without its orange and vermillion (the
#: mask outline and the threshold lines are orange and red) and without black (lost on the dark slices)
REGION_COLOURS = ("#56b4e9", "#009e73", "#cc79a7", "#0072b2", "#f0e442")
#: height of one legend entry and of one line of the table, in pixels (9.5 pt at 100 dpi)
_LEGEND_ROW_PX, _LINE_PX = 21.0, 15.5
#: the column may reach down to here (figure fraction): above the mask-coverage line of the footer
_COLUMN_FLOOR = 0.15


def region_colour(index: int) -> str:
    return REGION_COLOURS[index % len(REGION_COLOURS)]


def outline_region(ax, plane: np.ndarray, row_mm: float, col_mm: float, colour: str, max_side: int) -> None:
    """The region's outline on one slice (uint8 0/1 ``plane``, voxel ``row_mm`` x ``col_mm``): the plane
    padded with a zero border, so a region reaching the edge of the slice (or filling it) is outlined along
    the edge; nothing when the slice misses the region. Planes over ``max_side`` are subsampled."""
    if not plane.any():
        return
    rows, cols = plane.shape
    step = max(1, math.ceil(max(rows, cols) / max_side))
    padded = np.pad(plane[::step, ::step], 1)
    ys = (np.concatenate(([-1], np.arange(0, rows, step), [rows])) + 0.5) * row_mm
    xs = (np.concatenate(([-1], np.arange(0, cols, step), [cols])) + 0.5) * col_mm
    limits = ax.get_xlim(), ax.get_ylim()
    ax.contour(xs, ys, padded, levels=[0.5], colors=[colour], linewidths=1.2)
    ax.set_xlim(limits[0])  # the padding lies outside the slice: the axes keep the slice's extent
    ax.set_ylim(limits[1])


def region_lines(names: Sequence[str], metadata) -> List[str]:
    """The table of the region column: one line per region name, vBMD, BV/TV and TMD from the metadata
    ("–" where the metadata has no value)."""
    regions = ((metadata.get("regions") or {}).get("regions") or {}) if isinstance(metadata, dict) else {}
    lines = [f"{'region':11s}{'vBMD':>8s}{'BV/TV':>8s}{'TMD':>8s}"]
    for name in names:
        values = regions.get(name) or {}
        lines.append(f"{shorten(drawable(name), 10):11s}" + _cell(values.get("vbmd_mg_ha_ccm"), "{:.1f}")
                     + _cell(values.get("bv_tv"), "{:.4f}") + _cell(values.get("tmd_mg_ha_ccm"), "{:.1f}"))
    lines.append("vBMD, TMD in mg HA/ccm")
    return lines


def _cell(value, fmt: str) -> str:
    return f"{'–' if value is None else fmt.format(value):>8s}"


def draw_region_column(ax, planes: Dict[str, tuple], metadata, figure_height_px: float) -> None:
    """Legend (outline colour and name; "not in these slices" for a region none of the three slices
    meets) and the table, as many regions as there is room for down to the footer; the rest are
    counted."""
    from matplotlib.lines import Line2D

    ax.set_axis_off()
    height_px = ax.get_position().height * figure_height_px
    room_px = (ax.get_position().y1 - _COLUMN_FLOOR) * figure_height_px
    names = list(planes)
    room = int((room_px - 14.0 - 3 * _LINE_PX) // (_LEGEND_ROW_PX + _LINE_PX))
    shown = names if len(names) <= room else names[:max(room - 1, 0)]
    handles = []
    for k, name in enumerate(shown):
        where = "" if any(p.any() for p in planes[name]) else " (not in these slices)"
        handles.append(Line2D([], [], color=region_colour(k), lw=1.8,
                              label=f"region {shorten(drawable(name), 40 - len(where))}{where}"))
    lines = region_lines(shown, metadata)
    if len(shown) < len(names):
        lines.append(f"… and {len(names) - len(shown)} more regions (in the metadata)")
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1.0), fontsize=9.5, frameon=False,
                  borderaxespad=0.0, handlelength=1.8)
    top = 1.0 - (_LEGEND_ROW_PX * len(handles) + 14.0) / max(height_px, 1.0)
    ax.text(0.0, top, "\n".join(lines), transform=ax.transAxes, ha="left", va="top", fontsize=9.5,
            family="DejaVu Sans Mono")
