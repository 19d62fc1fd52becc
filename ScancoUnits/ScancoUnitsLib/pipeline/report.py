"""QC picture of one conversion: ``<stem>_report.png``.

People check a conversion by looking at it: did the mask catch the bone, do the thresholds sit in the
valley of the histogram, does the density look right. The picture shows

* the three orthogonal mid-slices (axial z, coronal y, sagittal x) of the calibrated volume with the
  threshold mask outlined, each region (``--roi``) outlined in its own colour, and one colour bar in the
  shown unit;
* the histogram of the whole scan (log counts) with the low and high thresholds, its x axis in native
  values with secondary axes in per mille, HU and mg HA/ccm;
* a title with the file name, scanner, voxel size, dimensions and calibration.

It is built while the conversion streams (:meth:`ReportBuilder.observe` is a slab observer of
:func:`~ScancoUnitsLib.pipeline.convert.convert_header`): the histogram is accumulated slab by slab with exact
integer bins (:class:`~ScancoUnitsLib.pipeline.histogram.NativeHistogram`) and the mid-planes are copied as their
slabs pass, so there is never a second pass over the file and the memory added is three planes.
The planes are kept as native values and converted at the end with the same
:class:`~ScancoUnitsLib.core.units.UnitConverter` and threshold rule as the outputs, so the picture shows
exactly the written voxels.
The words of the picture are in :mod:`.report_text`, the plane gathering in :mod:`.report_planes`, the
regions' outlines and their column in :mod:`.report_regions`.

matplotlib is an optional extra (``pip install scanco-units[report]``), imported here inside functions
only, with the Agg canvas and no pyplot (no global state, safe inside 3D Slicer and in threads).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ScancoError
from ..core.header import ScancoHeader
from .histogram import NativeHistogram
from ..core.thresholds import PERMILLE_FULL_SCALE, ResolvedThresholds, mask_from_char
from .. import defaults
from ..core.quantities import QUANTITIES, density_quantity
from .summaries import header_summary
from ..core.units import UnitConverter
from .report_planes import MidPlanes
from .report_regions import draw_region_column, outline_region, region_colour
from .report_text import (UNIT_WORDS, calibration_text, drawable, num, outputs_text, shorten, shown_name, spec_text,
                          threshold_label)

#: size of the picture in pixels (width, height)
REPORT_SIZE_PX = (1600, 1000)
REPORT_DPI = 100
#: bins of the drawn histogram
HISTOGRAM_DRAW_BINS = 512

_MASK_COLOUR = "#ff8c00"
_LINE_COLOURS = {"low": "#e8590c", "high": "#c2255c"}
_HIST_COLOUR = "#4a6fa5"
# largest plane side drawn as a contour without subsampling
_CONTOUR_MAX_SIDE = 900


class ReportUnavailableError(ScancoError, ImportError):
    """The QC report needs matplotlib, which is not installed."""


def require_matplotlib():
    """Import matplotlib or raise :class:`ReportUnavailableError` naming the extra to install."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        raise ReportUnavailableError(
            "the QC report needs matplotlib: pip install scanco-units[report]") from exc
    return matplotlib


class ReportBuilder:
    """Collects what the QC picture needs while a conversion streams, then draws it.

    ``options``: the :class:`~ScancoUnitsLib.pipeline.request.ConversionRequest` (its ``outputs`` and
    ``density_unit`` choose the unit shown); ``resolved``: the thresholds of the mask, or None (char and
    float AIMs, or no mask asked for); ``regions``: the placed regions
    (:class:`~ScancoUnitsLib.formats.regions.PlacedRegion`) outlined in the slices. Call :meth:`observe`
    once per slab, z ascending or not, then :meth:`save`.
    """

    def __init__(self, header: ScancoHeader, options=None, resolved: Optional[ResolvedThresholds] = None,
                 regions: Sequence = ()):
        require_matplotlib()
        self.header = header
        self.options = options
        self.resolved = resolved
        self.dtype = np.dtype(header.voxel_type)
        nz, ny, nx = header.shape_zyx
        self.shape_zyx = (nz, ny, nx)
        self.mid_zyx = (nz // 2, ny // 2, nx // 2)
        self.histogram = NativeHistogram(self.dtype)
        self._planes = MidPlanes(self.shape_zyx, self.mid_zyx, self.dtype)  # native values
        self.regions = tuple(regions)
        for region in self.regions:
            if tuple(region.scan_shape_zyx) != self.shape_zyx:
                raise ValueError(f"region {region.name} is placed on a grid of shape {region.scan_shape_zyx}, "
                                 f"not on this scan's {self.shape_zyx}")
        self._region_planes = [MidPlanes(self.shape_zyx, self.mid_zyx, np.uint8, axial_zeros=True)
                               for _ in self.regions]
        self._seen = np.zeros(nz, dtype=bool)
        self.quantity = self._choose_quantity()

    # ---- streaming ------------------------------------------------------------------------------
    def observe(self, z0: int, native_slab, views: Optional[Dict[str, np.ndarray]] = None) -> None:
        """Take one slab of native values starting at slice ``z0``; ``views`` (converted slabs by role)
        are not needed: everything is derived from the native values."""
        native = np.asarray(native_slab)
        nz, ny, nx = self.shape_zyx
        if native.ndim != 3 or native.shape[1:] != (ny, nx) or not 0 <= z0 <= nz - native.shape[0]:
            raise ValueError(f"slab of shape {native.shape} at z {z0} does not fit a volume of shape "
                             f"{self.shape_zyx}")
        n = native.shape[0]
        self.histogram.accumulate(native)
        self._planes.take(z0, native)
        for region, planes in zip(self.regions, self._region_planes):
            part = region.slab(z0, z0 + n)  # the region's own box in these slices, or None
            if part is not None:
                (a, _), box, (ys, xs) = part
                planes.take_part(z0 + a, box, ys, xs)
        self._seen[z0:z0 + n] = True

    # ---- what is shown --------------------------------------------------------------------------
    @property
    def is_char(self) -> bool:
        return self.dtype.kind in "iu" and self.dtype.itemsize == 1

    @property
    def is_float(self) -> bool:
        return self.dtype.kind == "f"

    def _choose_quantity(self) -> str:
        """Unit of the slices: what was written, density first, then HU, then µ; native values when
        none of them was written (``outputs`` None: the default set, whose density is shown)."""
        if self.is_char:
            return "char"
        if self.is_float:
            return "float"
        converter = UnitConverter(self.header.calibration)
        density_unit = getattr(self.options, "density_unit", "g/cc")
        density = density_quantity(density_unit)
        by_role = {"density": density, "hu": "hu", "mu": "mu"}
        asked = getattr(self.options, "outputs", None)
        asked = defaults.FILE_ROLES if asked is None else tuple(asked)
        for role in ("density", "hu", "mu"):
            if role in asked and converter.can_convert(by_role[role]):
                return by_role[role]
        return "native"

    def quantity_label(self) -> str:
        """Words and unit of the shown values, e.g. ``density [g HA/cc]``."""
        if self.quantity == "char":
            return "char mask as stored"
        if self.quantity == "float":
            return "float image as stored"
        if self.quantity == "native":
            return "native values"
        return QUANTITIES[self.quantity].axis_label()

    def planes(self) -> List[Tuple[str, np.ndarray, Optional[np.ndarray], Tuple[float, float]]]:
        """The three mid-planes: ``(name, values, mask or None, (row mm, column mm))``.

        Values are float64 in the shown unit (the reference formula of units.py; HU rounded and clipped
        as the int16 output when that is the HU type); masks are uint8 0/1 by the conversion's mask rule.
        """
        sx, sy, sz = self.header.voxel_size_mm
        zm, ym, xm = self.mid_zyx
        axial, coronal, sagittal = self._planes.three()
        out = []
        for name, native, spacing in ((f"axial  z = {zm}", axial, (sy, sx)),
                                      (f"coronal  y = {ym}", coronal, (sz, sx)),
                                      (f"sagittal  x = {xm}", sagittal, (sz, sy))):
            out.append((name, self._values(native), self._mask(native), spacing))
        return out

    def region_planes(self) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each region's (axial, coronal, sagittal) planes, uint8 0/1, by region name (those of
        :meth:`planes`, in that order)."""
        return {region.name: planes.three() for region, planes in zip(self.regions, self._region_planes)}

    def _values(self, native: np.ndarray) -> np.ndarray:
        if self.quantity in ("char", "float", "native"):
            return native.astype(np.float64)
        converter = UnitConverter(self.header.calibration)
        values = np.asarray(converter.native_to(native, self.quantity), dtype=np.float64)
        if self.quantity == "hu" and getattr(self.options, "hu_dtype", "int16") == "int16":
            values = np.clip(np.rint(values), -32768, 32767)  # as the int16 HU output holds them
        return values

    def _mask(self, native: np.ndarray) -> Optional[np.ndarray]:
        if self.is_char:
            return mask_from_char(native)
        if self.resolved is not None:
            return self.resolved.mask(native)
        return None

    def threshold_counts(self) -> Optional[int]:
        """Voxels of the histogram within the thresholds (equals the mask's voxel count)."""
        if self.resolved is None:
            return None
        return self.histogram.counts_between(self.resolved.native_low, self.resolved.native_high)

    # ---- drawing --------------------------------------------------------------------------------
    def figure(self, metadata: Optional[dict] = None):
        """The matplotlib Figure (Agg canvas attached), 1600 x 1000 px at 100 dpi."""
        require_matplotlib()
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        metadata = metadata or {}
        width, height = REPORT_SIZE_PX
        fig = Figure(figsize=(width / REPORT_DPI, height / REPORT_DPI), dpi=REPORT_DPI, facecolor="white")
        FigureCanvasAgg(fig)
        image_axes, colour_axis, images_bottom_px = self._image_axes(fig)
        # the histogram takes whatever height the slices leave (room for the per-mille axis above it)
        hist_top = min(0.56, (images_bottom_px - 34.0 - 75.0) / REPORT_SIZE_PX[1])
        ratios = [0.74, 0.26] if not self.regions else [0.56, 0.22, 0.22]  # regions: a column of their own
        bottom = fig.add_gridspec(1, len(ratios), width_ratios=ratios, wspace=0.04, left=0.05, right=0.985,
                                  top=hist_top, bottom=0.205)
        hist_axis = fig.add_subplot(bottom[0, 0])
        panel_axis = fig.add_subplot(bottom[0, 1])
        if self.regions:
            draw_region_column(fig.add_subplot(bottom[0, 2]), self.region_planes(), metadata, REPORT_SIZE_PX[1])
        self._draw_title(fig, metadata)
        self._draw_planes(image_axes, colour_axis)
        self._draw_histogram(hist_axis)
        self._draw_panel(panel_axis, metadata)
        self._draw_footer(fig, metadata, panel_axis.get_position().x0 if self.regions else 0.745)
        return fig

    def _image_axes(self, fig):
        """Place the three slice axes and the colour bar, in pixels, to make the images as large as
        possible: either three in a row, or axial on the left with the flat coronal and sagittal
        planes stacked beside it (long thin scans such as HR-pQCT)."""
        width_px, height_px = REPORT_SIZE_PX
        nz, ny, nx = self.shape_zyx
        sx, sy, sz = self.header.voxel_size_mm
        aspects = [(nx * sx) / max(ny * sy, 1e-12), (nx * sx) / max(nz * sz, 1e-12),
                   (ny * sy) / max(nz * sz, 1e-12)]  # width / height of axial, coronal, sagittal
        left, right = 75.0, width_px - 110.0        # colour bar and its labels on the right
        bottom, top = 535.0, 850.0                  # below the title block, above the histogram
        title_px, label_px, gap_px = 22.0, 34.0, 78.0
        room_w = right - left

        def row_layout():
            h = top - bottom - title_px - label_px
            h = min(h, (room_w - 2 * gap_px) / sum(aspects))
            boxes, x = [], left
            for a in aspects:  # hung from the top: height the row does not need goes to the histogram
                boxes.append((x, top - title_px - h, a * h, h))
                x += a * h + gap_px
            return boxes

        def stacked_layout():
            ha = top - bottom - title_px - label_px
            wa = min(ha * aspects[0], 0.45 * room_w)
            ha = wa / aspects[0]
            x1 = left + wa + gap_px
            rest_w = right - x1
            hs = (top - bottom - 2 * (title_px + label_px) - 16.0) / 2.0
            boxes = [(left, top - title_px - ha, wa, ha)]
            # coronal and sagittal share one scale (pixels per mm): both are nz*sz high
            h = min(hs, rest_w / max(aspects[1], aspects[2]))
            for i in (1, 2):
                y = top - title_px - h if i == 1 else top - 2 * title_px - label_px - 16.0 - 2 * h
                boxes.append((x1, y, aspects[i] * h, h))
            return boxes

        def area(boxes):
            return sum(w * h for _, _, w, h in boxes)

        boxes = max((row_layout(), stacked_layout()), key=area)
        axes = [fig.add_axes((x / width_px, y / height_px, w / width_px, h / height_px))
                for x, y, w, h in boxes]
        edge = max(x + w for x, _, w, _ in boxes)
        low = min(y for _, y, _, _ in boxes)
        high = max(y + h for _, y, _, h in boxes)
        colour_axis = fig.add_axes(((edge + 22) / width_px, low / height_px, 16 / width_px,
                                    (high - low) / height_px))
        return axes, colour_axis, low

    def save(self, fileobj, metadata: Optional[dict] = None) -> None:
        """Write the PNG to ``fileobj`` (a binary file object or a path)."""
        from .. import __version__

        fig = self.figure(metadata)
        fig.savefig(fileobj, format="png", dpi=REPORT_DPI,
                    metadata={"Software": f"ScancoUnits {__version__}",
                              "Title": f"QC report of {shown_name(self.header.path)}"})

    def _draw_title(self, fig, metadata) -> None:
        h, c = self.header, self.header.calibration
        name = shown_name(h.path)
        fig.text(0.05, 0.965, name, fontsize=19, fontweight="bold", va="top", ha="left")
        fig.text(0.985, 0.965, "ScancoUnits QC report", fontsize=12, color="#555555", va="top", ha="right")
        line1 = header_summary(h).one_line()
        fig.text(0.05, 0.922, shorten(line1, 175), fontsize=10.5, va="top", ha="left")
        if self.is_char or self.is_float:  # never rescaled: the calibration is information only
            calibration = calibration_text(c) if c.has_mu else "none in the file (not needed: values shown as stored)"
            colour = "#222222"
        else:
            calibration = calibration_text(c)
            colour = "#222222" if c.has_mu else "#b00020"
        fig.text(0.05, 0.895, shorten("calibration: " + calibration, 175), fontsize=10.5, va="top",
                 ha="left", color=colour)
        # its own line: beside the header line it ran into it (the header line is up to 175 characters)
        fig.text(0.05, 0.868, f"slices: {self.quantity_label()}", fontsize=10.5, va="top", ha="left",
                 color="#333333")

    def _draw_planes(self, axes, colour_axis) -> None:

        planes = self.planes()
        values = np.concatenate([p[1].ravel() for p in planes])
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            vmin, vmax = 0.0, 1.0
        elif self.is_char:
            vmin, vmax = float(min(finite.min(), 0)), float(max(finite.max(), 1))
        else:
            vmin, vmax = (float(v) for v in np.percentile(finite, [0.5, 99.8]))
            if vmax <= vmin:
                vmin, vmax = float(finite.min()), float(finite.max())
            if vmax <= vmin:
                vmax = vmin + 1.0
        image = None
        region_planes = list(self.region_planes().values())
        for i, (ax, (name, plane, mask, (row_mm, col_mm))) in enumerate(zip(axes, planes)):
            rows, cols = plane.shape
            height_mm, width_mm = rows * row_mm, cols * col_mm
            axial = name.startswith("axial")
            extent = (0, width_mm, height_mm, 0) if axial else (0, width_mm, 0, height_mm)
            image = ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, extent=extent,
                              origin="upper" if axial else "lower", interpolation="nearest")
            if mask is not None and mask.any() and not mask.all():
                step = max(1, math.ceil(max(rows, cols) / _CONTOUR_MAX_SIDE))
                ys = (np.arange(0, rows, step) + 0.5) * row_mm
                xs = (np.arange(0, cols, step) + 0.5) * col_mm
                ax.contour(xs, ys, mask[::step, ::step], levels=[0.5], colors=[_MASK_COLOUR],
                           linewidths=0.9)
            for k, three in enumerate(region_planes):
                outline_region(ax, three[i], row_mm, col_mm, region_colour(k), _CONTOUR_MAX_SIDE)
            ax.set_title(name, fontsize=11)
            ax.tick_params(labelsize=8)
            x_name, y_name = {"axial": ("x", "y"), "corona": ("x", "z"), "sagitt": ("y", "z")}[name[:6].strip()]
            ax.set_xlabel(f"{x_name} [mm]", fontsize=9, labelpad=1)
            ax.set_ylabel(f"{y_name} [mm]", fontsize=9, labelpad=1)
            if not self._seen.all():
                ax.text(0.5, 0.02, "(slices not seen left black)", transform=ax.transAxes, fontsize=8,
                        ha="center", color="#b00020")
        cbar = colour_axis.figure.colorbar(image, cax=colour_axis)
        cbar.set_label(self.quantity_label(), fontsize=10)
        cbar.ax.tick_params(labelsize=8)

    def _view_range(self) -> Tuple[float, float, Dict[str, float]]:
        """x range of the histogram: the data (without the outermost millionth when there are many
        voxels), widened to a threshold when it is near; thresholds far outside are returned apart."""
        hist = self.histogram
        many = hist.finite_count > 10 ** 6
        lo_data = hist.quantile(1e-6) if many else hist.min_value
        hi_data = hist.quantile(1 - 1e-6) if many else hist.max_value
        span = max(hi_data - lo_data, hist.bin_width)
        view_lo, view_hi = lo_data, hi_data
        far: Dict[str, float] = {}
        if self.resolved is not None:
            for which, native in (("low", self.resolved.native_low), ("high", self.resolved.native_high)):
                if lo_data - 0.5 * span <= native <= hi_data + 0.5 * span:
                    view_lo, view_hi = min(view_lo, native), max(view_hi, native)
                else:
                    far[which] = native
        pad = max(0.03 * (view_hi - view_lo), hist.bin_width)
        return view_lo - pad, view_hi + pad, far

    def _draw_histogram(self, ax) -> None:
        hist = self.histogram
        self._legend_handles = []
        if hist.finite_count == 0:
            ax.text(0.5, 0.5, "no voxels seen", transform=ax.transAxes, ha="center")
            return
        from matplotlib.patches import Patch

        view_lo, view_hi, far = self._view_range()
        edges, counts = hist.rebinned(HISTOGRAM_DRAW_BINS, low=view_lo, high=view_hi)
        bin_width = float(edges[1] - edges[0]) if counts.size else hist.bin_width
        if 0 < counts.size <= 96:  # few values (masks, tiny test files): one bar per bin
            centres = (edges[:-1] + edges[1:]) / 2.0
            keep = counts > 0
            ax.bar(centres[keep], counts[keep], width=0.8 * bin_width, color=_HIST_COLOUR, alpha=0.85)
        else:
            ax.stairs(counts.astype(np.float64), edges, fill=True, color=_HIST_COLOUR, alpha=0.85,
                      baseline=0.5)
        word = "native" if not (self.is_char or self.is_float) else "value"
        self._legend_handles.append(Patch(color=_HIST_COLOUR, alpha=0.85,
                                          label=f"voxels per bin ({bin_width:.4g} {word} wide)"))
        ax.set_yscale("log")
        top = max(float(counts.max()) if counts.size else 1.0, 1.0)
        decades = math.log10(top / 0.7)
        headroom = 0.38 * decades + 0.4 if self.resolved is not None else 0.1 * decades + 0.2
        ax.set_ylim(0.7, top * 10 ** headroom)  # with thresholds, the top third is left for their labels
        ax.set_xlim(view_lo, view_hi)
        ax.set_ylabel("voxels (log)", fontsize=10)
        ax.tick_params(labelsize=8.5)
        ax.grid(True, which="major", axis="y", alpha=0.25)
        unit_axes = not (self.is_char or self.is_float)
        ax.set_xlabel("native value" if unit_axes else "value as stored", fontsize=10, labelpad=2)
        if unit_axes:
            self._unit_axes(ax)
        if self.resolved is not None:
            self._threshold_lines(ax, self.resolved, far, view_lo, view_hi)

    def _unit_axes(self, ax) -> None:
        """Per mille on top; HU and mg HA/ccm under the native axis (where the calibration has them)."""
        scale = float(PERMILLE_FULL_SCALE) / 1000.0
        top = ax.secondary_xaxis("top", functions=(lambda v: v / scale, lambda p: p * scale))
        top.set_xlabel("per mille (IPL: 1000 ‰ = native 32767)", fontsize=9.5)
        top.tick_params(labelsize=8.5)
        converter = UnitConverter(self.header.calibration)
        height_px = ax.get_position().height * REPORT_SIZE_PX[1]
        step = -52.0 / max(height_px, 1.0)  # one unit axis every 52 px below the native axis
        position = step
        for quantity, label in (("hu", "HU"), ("density_mg_ha_ccm", "mg HA/ccm")):
            if not converter.can_convert(quantity):
                continue
            a = float(converter.native_to(1.0, quantity)) - float(converter.native_to(0.0, quantity))
            b = float(converter.native_to(0.0, quantity))
            sec = ax.secondary_xaxis(position, functions=(lambda v, a=a, b=b: a * v + b,
                                                          lambda u, a=a, b=b: (u - b) / a))
            sec.set_xlabel(label, fontsize=9.5, labelpad=1)
            sec.tick_params(labelsize=8.5)
            position += step

    def _threshold_lines(self, ax, resolved: ResolvedThresholds, far, view_lo, view_hi) -> None:
        from matplotlib.patches import Patch
        from matplotlib.transforms import blended_transform_factory

        low, high = resolved.native_low, resolved.native_high
        ax.axvspan(max(low, view_lo), min(high, view_hi), color=_MASK_COLOUR, alpha=0.12, lw=0)
        self._legend_handles.append(Patch(color=_MASK_COLOUR, alpha=0.25,
                                          label=f"mask range, native {low} … {high}"))
        trans = blended_transform_factory(ax.transAxes, ax.transAxes)
        width = view_hi - view_lo
        label_w = 0.17  # about one label box, in axes widths
        placed = []
        for which, native in (("high", high), ("low", low)):
            text = threshold_label(which, resolved, 0 if which == "low" else 1)
            colour = _LINE_COLOURS[which]
            if which in far:
                to_left = which == "low"
                anchor, offset = (0.0, 4) if to_left else (1.0, -4)
                text = f"{'←' if to_left else '→'} {text}\n(beyond the data)"
            else:
                ax.axvline(native, color=colour, lw=1.6, ls="--")
                anchor = (native - view_lo) / width
                to_left = anchor <= 0.6
                offset = 6 if to_left else -6
            span = (anchor, anchor + label_w) if to_left else (anchor - label_w, anchor)
            y = 0.965
            if any(span[0] < other[1] and other[0] < span[1] for other in placed):
                y = 0.60  # the other label is in the way: go below it
            placed.append(span)
            ax.annotate(text, xy=(anchor, y), xycoords=trans, xytext=(offset, 0), textcoords="offset points",
                        ha="left" if to_left else "right", va="top", fontsize=8.5, color=colour, zorder=5,
                        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=colour, alpha=0.92))

    def _draw_panel(self, ax, metadata) -> None:
        """Numbers beside the histogram: mask rule, thresholds in every unit, voxel counts."""
        from matplotlib.lines import Line2D

        ax.set_axis_off()
        hist = self.histogram
        sx, sy, sz = self.header.voxel_size_mm
        lines: List[str] = []
        resolved = self.resolved
        if resolved is not None:
            lines += [f"mask rule  {resolved.native_low} ≤ native ≤ {resolved.native_high}",
                      f"asked      {spec_text(resolved)}", "",
                      f"{'':11s}{'low':>11s}{'high':>11s}"]
            units = (("native", "native", "{:.0f}"), ("‰", "permille", "{:.1f}"), ("HU", "hu", "{:.0f}"),
                     ("mg HA/ccm", "density_mg_ha_ccm", "{:.1f}"), ("g HA/cc", "density_g_cc", "{:.4f}"),
                     ("µ [1/cm]", "mu", "{:.4f}"))
            for label, key, fmt in units:
                pair = resolved.values.get(key)
                if pair is not None:
                    lines.append(f"{label:11s}{fmt.format(pair[0]):>11s}{fmt.format(pair[1]):>11s}")
            lines.append("")
        lines.append(f"voxels     {hist.total:>14,}")
        inside = self.threshold_counts()
        mask_voxels = metadata.get("mask_voxels") if isinstance(metadata, dict) else None
        if inside is not None and not hist.exact and mask_voxels is not None:
            inside = mask_voxels  # wide bins (int32 data) only bound the count; the conversion counted it
        if inside is not None:
            fraction = 100.0 * inside / max(hist.total, 1)
            lines.append(f"in mask    {inside:>14,}  ({fraction:.2f} %)")
            lines.append(f"mask vol.  {inside * sx * sy * sz:>14.5g}  mm³")
            if mask_voxels is not None and mask_voxels != inside:
                lines.append(f"MISMATCH: mask output has {mask_voxels:,}")
        elif self.is_char:
            count = hist.total - hist.counts_between(0, 0)
            lines.append(f"non-zero   {count:>14,}  ({100.0 * count / max(hist.total, 1):.2f} %)")
        if hist.nonfinite:
            lines.append(f"NaN / inf  {hist.nonfinite:>14,}  (not drawn)")
        word = "native" if not (self.is_char or self.is_float) else "values"
        lines.append(f"{word:11s}{num(hist.min_value)} … {num(hist.max_value)}")
        top = 1.0
        handles = list(getattr(self, "_legend_handles", []))
        if resolved is not None or self.is_char:
            handles.insert(0, Line2D([], [], color=_MASK_COLOUR, lw=1.8, label="mask outline in the slices"))
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1.0), fontsize=9.5,
                      frameon=False, borderaxespad=0.0, handlelength=1.8)
            height_px = ax.get_position().height * REPORT_SIZE_PX[1]
            top = 1.0 - (21.0 * len(handles) + 14.0) / max(height_px, 1.0)
        ax.text(0.0, top, "\n".join(lines), transform=ax.transAxes, ha="left", va="top", fontsize=9.5,
                family="DejaVu Sans Mono")

    def _draw_footer(self, fig, metadata, panel_x: float) -> None:
        from .. import __version__

        parts = [f"ScancoUnits {__version__}"]
        if self.resolved is not None:
            r = self.resolved
            parts.append(f"mask rule: {r.native_low} ≤ native ≤ {r.native_high} "
                         f"(asked {r.spec.low:g} … {r.spec.high:g} {UNIT_WORDS.get(r.spec.unit, r.spec.unit)})")
        outputs = metadata.get("outputs") if isinstance(metadata, dict) else None
        if outputs:
            parts.append(outputs_text(outputs))
        fig.text(0.05, 0.012, drawable("   ·   ".join(parts)), fontsize=8.5, color="#555555", ha="left", va="bottom")
        warnings = list(metadata.get("warnings") or []) if isinstance(metadata, dict) else []
        coverage = metadata.get("mask_coverage") if isinstance(metadata, dict) else None
        if coverage:  # an empty or full mask is the first thing to see: its own line, in full
            import textwrap

            fig.text(panel_x, 0.135, textwrap.fill("MASK " + coverage, 58), fontsize=8.5, fontweight="bold",
                     color="#b00020", ha="left", va="top", linespacing=1.25)
            warnings = [w for w in warnings if coverage not in str(w)]
        if warnings:
            fig.text(0.05, 0.034, drawable("warning: " + " | ".join(str(w) for w in warnings)[:260]), fontsize=8.5,
                     color="#b00020", ha="left", va="bottom")

