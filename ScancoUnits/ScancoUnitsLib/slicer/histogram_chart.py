"""The scan's histogram with the threshold lines as a 3D Slicer plot, and a live mask preview.

* :func:`create_histogram_chart` puts a :class:`~ScancoUnitsLib.pipeline.histogram.NativeHistogram` into the scene
  as a ``vtkMRMLTableNode`` (bin centres in native and in the chosen unit, voxel counts, and the two
  threshold lines as vertical columns) shown by a ``vtkMRMLPlotChartNode`` with log counts. Every series
  is a ``PlotTypeScatter`` (points at their X column's values, joined by a line, no markers): Slicer's
  ``PlotTypeLine`` ignores the X column and spaces the points evenly (``IsXColumnRequired()`` is true only
  for Scatter and ScatterBar in vtkMRMLPlotSeriesNode.cxx), which would draw the histogram against bin
  index and the threshold lines as ramps.
  :func:`histogram_chart_for_scan` does it for a scan's file, :func:`remove_histogram_chart` undoes it.
* :func:`update_threshold_lines` moves the lines when the thresholds change (one table update).
* :func:`preview_threshold_on_volume` shows the would-be mask on the slice views before anything is
  computed: the threshold display of a volume's display node (voxels outside the range transparent);
  :func:`threshold_range_for_quantity` gives the range to use on an HU, density, µ or native node.

Everything here works headless with the ``slicer-core`` wheel (``slicer.vtkMRMLScene()``); Slicer and
VTK are imported inside the functions only, so ``import ScancoUnitsLib.slicer.histogram_chart`` works anywhere.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from ..core.header import Calibration
from ..pipeline.histogram import NativeHistogram
from ..core.quantities import QUANTITIES
from ..core.thresholds import PERMILLE_FULL_SCALE, VALUE_UNITS, ResolvedThresholds
from ..core.units import UnitConverter
from .node_attributes import QUANTITY, attribute_name

#: x-axis units of the chart (the keys of ResolvedThresholds.values)
CHART_UNITS = VALUE_UNITS
#: axis titles: the quantity registry's axis labels, plus per mille (a threshold unit, not a quantity)
UNIT_LABELS = {unit: QUANTITIES[unit].axis_label(short=True) for unit in CHART_UNITS if unit in QUANTITIES}
UNIT_LABELS.update(native="native value", permille="per mille (‰, 1000 ‰ = native 32767)")
# table columns
COLUMN_NATIVE = "native"
COLUMN_X = "x"
COLUMN_VOXELS = "voxels"
COLUMN_LOW_X, COLUMN_LOW_Y = "low threshold x", "low threshold y"
COLUMN_HIGH_X, COLUMN_HIGH_Y = "high threshold x", "high threshold y"
# node attributes that remember how the table was made
ATTRIBUTE_UNIT = attribute_name("histogramUnit")
ATTRIBUTE_MAX_COUNT = attribute_name("histogramMaxCount")

#: plot type of every series: one that places points at the X column's values (see the module docstring)
PLOT_TYPE = "Scatter"

_HISTOGRAM_COLOUR = (0.29, 0.435, 0.647)
_LINE_COLOURS = {"low": (0.91, 0.35, 0.05), "high": (0.76, 0.15, 0.36)}


def native_to_unit(native, unit: str, calibration: Optional[Calibration] = None) -> np.ndarray:
    """Native value(s) in ``unit`` (float64): per mille is native / 32.767 (IPL); µ, HU and densities use
    the file's calibration (``CalibrationMissingError`` when it lacks the constants)."""
    values = np.asarray(native, dtype=np.float64)
    if unit == "native":
        return values
    if unit == "permille":
        return values * (1000.0 / PERMILLE_FULL_SCALE)
    if unit not in CHART_UNITS:
        raise ValueError(f"unknown chart unit {unit!r}; expected one of {', '.join(CHART_UNITS)}")
    return np.asarray(UnitConverter(calibration).native_to(values, unit), dtype=np.float64)


def _vertical_line_y(rows: int, max_count: float) -> np.ndarray:
    """y values of a vertical line from 1 voxel to above the highest bin (evenly spaced on a log axis)."""
    top = max(float(max_count), 1.0) * 2.0
    if rows == 1:
        return np.array([top])
    return np.geomspace(1.0, top, rows)


def _threshold_pair(thresholds, unit: str) -> Tuple[float, float]:
    if isinstance(thresholds, ResolvedThresholds):
        pair = thresholds.values.get(unit)
        if pair is None:
            raise ValueError(f"the thresholds cannot be expressed in {unit}: the file's calibration lacks it")
        return float(pair[0]), float(pair[1])
    low, high = thresholds
    return float(low), float(high)


def _set_column(table, name: str, values: np.ndarray) -> None:
    """Create or overwrite a vtkDoubleArray column of the vtkTable."""
    import vtk

    column = table.GetColumnByName(name)
    new = column is None
    if new:
        column = vtk.vtkDoubleArray()
        column.SetName(name)
    elif column.GetNumberOfTuples() != len(values):
        raise ValueError(f"column {name!r} has {column.GetNumberOfTuples()} rows, not {len(values)}")
    column.SetNumberOfTuples(len(values))  # sized before AddColumn: a vtkTable refuses ragged columns
    for i, v in enumerate(values):
        column.SetValue(i, float(v))
    if new:
        table.AddColumn(column)
    column.Modified()


def _column_values(table, name: str) -> np.ndarray:
    column = table.GetColumnByName(name)
    if column is None:
        raise ValueError(f"the table has no column {name!r}: was it made by create_histogram_chart?")
    return np.array([column.GetValue(i) for i in range(column.GetNumberOfTuples())], dtype=np.float64)


def _series_name(which: str, thresholds, unit: str) -> str:
    if isinstance(thresholds, ResolvedThresholds):
        native = thresholds.native_low if which == "low" else thresholds.native_high
        permille = thresholds.values["permille"][0 if which == "low" else 1]
        return f"{which} threshold: native {native} ({permille:.1f} ‰)"
    value = _threshold_pair(thresholds, unit)[0 if which == "low" else 1]
    return f"{which} threshold: {value:.6g} {UNIT_LABELS.get(unit, unit)}"


def _new_series(scene, name: str, table_node, x_column: str, y_column: str, colour):
    """A plot series drawn as a line through (X, Y) points of ``table_node`` (no markers)."""
    import slicer

    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x_column)
    series.SetYColumnName(y_column)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.GetPlotTypeFromString(PLOT_TYPE))
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetLineWidth(2)
    series.SetColor(*colour)
    return series


def create_histogram_chart(scene, histogram: NativeHistogram, thresholds=None, *, unit: str = "native",
                           calibration: Optional[Calibration] = None, bins: int = 512,
                           name: str = "ScancoUnits histogram"):
    """Add the histogram (and the threshold lines) to ``scene`` as a plot chart.

    ``thresholds``: a :class:`~ScancoUnitsLib.core.thresholds.ResolvedThresholds` (its ``values`` give the lines
    in every unit), a ``(low, high)`` pair already in ``unit``, or None (no lines).
    ``unit``: the x axis, one of :data:`CHART_UNITS`; µ, HU and density need ``calibration`` (the file's
    :class:`~ScancoUnitsLib.core.header.Calibration`). ``bins``: at most this many bins (the histogram is
    rebinned, each native value in exactly one bin).

    Returns ``(chart_node, table_node, series_nodes)`` with ``series_nodes`` a dict with keys
    ``"histogram"``, and ``"low"`` and ``"high"`` when thresholds were given. Show it in Slicer with
    ``slicer.modules.plots.logic().ShowChartInLayout(chart_node)``.
    """
    import slicer

    if unit not in CHART_UNITS:
        raise ValueError(f"unknown chart unit {unit!r}; expected one of {', '.join(CHART_UNITS)}")
    edges, counts = histogram.rebinned(bins)
    if counts.size == 0:
        raise ValueError("the histogram is empty: no voxels were accumulated")
    native_centres = (edges[:-1] + edges[1:]) / 2.0
    x = native_to_unit(native_centres, unit, calibration)
    max_count = float(counts.max())

    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    table_node.SetAttribute(ATTRIBUTE_UNIT, unit)
    table_node.SetAttribute(ATTRIBUTE_MAX_COUNT, repr(max_count))
    table = table_node.GetTable()
    _set_column(table, COLUMN_NATIVE, native_centres)
    _set_column(table, COLUMN_X, x)
    _set_column(table, COLUMN_VOXELS, counts.astype(np.float64))

    chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart_node.SetTitle(name)
    chart_node.SetXAxisTitle(UNIT_LABELS[unit])
    chart_node.SetYAxisTitle("voxels (log)")
    chart_node.SetYAxisLogScale(True)
    chart_node.SetLegendVisibility(True)

    series: Dict[str, object] = {}
    hist_series = _new_series(scene, f"{name}: voxels", table_node, COLUMN_X, COLUMN_VOXELS, _HISTOGRAM_COLOUR)
    chart_node.AddAndObservePlotSeriesNodeID(hist_series.GetID())
    series["histogram"] = hist_series

    if thresholds is not None:
        for which, (x_column, y_column) in (("low", (COLUMN_LOW_X, COLUMN_LOW_Y)),
                                            ("high", (COLUMN_HIGH_X, COLUMN_HIGH_Y))):
            line = _new_series(scene, _series_name(which, thresholds, unit), table_node, x_column, y_column,
                               _LINE_COLOURS[which])
            line.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            chart_node.AddAndObservePlotSeriesNodeID(line.GetID())
            series[which] = line
        update_threshold_lines(table_node, thresholds, series_nodes=series)
    return chart_node, table_node, series


def histogram_chart_for_scan(scene, header, histogram: NativeHistogram, thresholds=None):
    """:func:`create_histogram_chart` of a scan's histogram: HU axis when the file is calibrated for HU,
    native values otherwise, named after the file. Returns ``(chart node, table node, {role: series node})``."""
    calibration = header.calibration
    return create_histogram_chart(scene, histogram, thresholds, unit="hu" if calibration.has_hu else "native",
                                  calibration=calibration, name=f"{os.path.basename(header.path)} histogram")


def remove_histogram_chart(scene, chart) -> None:
    """Remove the nodes of a chart made by :func:`create_histogram_chart` that are still in ``scene``."""
    chart_node, table_node, series_nodes = chart
    for node in (chart_node, table_node, *series_nodes.values()):
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)


def update_threshold_lines(table_node, thresholds, *, series_nodes: Optional[dict] = None) -> Tuple[float, float]:
    """Move the threshold lines of a table made by :func:`create_histogram_chart`.

    ``thresholds``: a ResolvedThresholds (taken in the table's unit) or a ``(low, high)`` pair in that unit.
    ``series_nodes``: the dict :func:`create_histogram_chart` returned, to rename the lines' legend
    entries too. Returns the ``(low, high)`` drawn, in the table's unit.
    """
    unit = table_node.GetAttribute(ATTRIBUTE_UNIT)
    if unit is None:
        raise ValueError("the table was not made by create_histogram_chart (no histogram unit attribute)")
    max_count = float(table_node.GetAttribute(ATTRIBUTE_MAX_COUNT) or 1.0)
    low, high = _threshold_pair(thresholds, unit)
    table = table_node.GetTable()
    rows = table.GetNumberOfRows()
    y = _vertical_line_y(rows, max_count)
    was_modifying = table_node.StartModify()
    try:
        _set_column(table, COLUMN_LOW_X, np.full(rows, low))
        _set_column(table, COLUMN_LOW_Y, y)
        _set_column(table, COLUMN_HIGH_X, np.full(rows, high))
        _set_column(table, COLUMN_HIGH_Y, y)
        table.Modified()
        table_node.Modified()
    finally:
        table_node.EndModify(was_modifying)
    for which in ("low", "high"):
        node = (series_nodes or {}).get(which)
        if node is not None:
            node.SetName(_series_name(which, thresholds, unit))
    return low, high


def threshold_lines(table_node) -> Tuple[float, float]:
    """The (low, high) the table's threshold lines are at, in its unit."""
    table = table_node.GetTable()
    return float(_column_values(table, COLUMN_LOW_X)[0]), float(_column_values(table, COLUMN_HIGH_X)[0])


def threshold_range_for_quantity(thresholds: ResolvedThresholds, quantity: str,
                                 calibration: Optional[Calibration] = None) -> Tuple[float, float]:
    """The display-threshold range that shows the mask on a volume node holding ``quantity``.

    ``quantity``: "native", "mu", "hu", "density_mg_ha_ccm" or "density_g_cc" (the node's values). The
    range is the quantity half a native step outside the mask's integers,
    ``f(native_low - 0.5) .. f(native_high + 0.5)``, so on a float node (density, µ) or a native node the
    preview selects exactly the voxels of the mask; on an int16 HU node, whose rounding merges
    neighbouring native values, the edge can be off by one native step.
    """
    if quantity not in ("native", "mu", "hu", "density_mg_ha_ccm", "density_g_cc"):
        raise ValueError(f"unknown volume quantity {quantity!r}")
    ends = native_to_unit([thresholds.native_low - 0.5, thresholds.native_high + 0.5], quantity, calibration)
    return float(min(ends)), float(max(ends))


def preview_threshold_on_volume(volume_node, low: float, high: float, *, enabled: bool = True):
    """Show only the voxels within ``low .. high`` (the volume's own unit) on the slice views, through
    the threshold of its scalar display node (created when missing). Returns the display node."""
    if not low <= high:
        raise ValueError(f"lower preview threshold {low} is above the upper one {high}")
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    if display is None or not hasattr(display, "SetApplyThreshold"):
        raise ValueError(f"{volume_node.GetName()}: the volume has no scalar display node to threshold")
    was_modifying = display.StartModify()
    try:
        display.SetAutoThreshold(False)
        display.SetThreshold(float(low), float(high))
        display.SetApplyThreshold(bool(enabled))
    finally:
        display.EndModify(was_modifying)
    return display


def clear_threshold_preview(volume_node) -> None:
    """Switch the threshold preview off (the volume shows all its voxels again)."""
    display = volume_node.GetDisplayNode()
    if display is not None and hasattr(display, "SetApplyThreshold"):
        display.SetApplyThreshold(False)


#: node attribute where ScancoUnitsLib.slicer.loading records what a volume node holds
QUANTITY_ATTRIBUTE = QUANTITY


def preview_mask_on_scan_node(volume_node, thresholds: ResolvedThresholds,
                              calibration: Optional[Calibration] = None, *, enabled: bool = True):
    """:func:`preview_threshold_on_volume` for a node made by ``load_scan_into_scene``: the range comes
    from the node's ``ScancoUnits.Quantity`` attribute (hu, density_mg_ha_ccm, density_g_cc, mu, native)
    and :func:`threshold_range_for_quantity`. Returns the display node."""
    quantity = volume_node.GetAttribute(QUANTITY_ATTRIBUTE)
    if quantity is None:
        raise ValueError(f"{volume_node.GetName()}: not a ScancoUnits volume (no {QUANTITY_ATTRIBUTE} attribute)")
    low, high = threshold_range_for_quantity(thresholds, quantity, calibration)
    return preview_threshold_on_volume(volume_node, low, high, enabled=enabled)
