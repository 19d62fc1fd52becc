"""The panel's choices as the enums of the module's parameter node (ScancoUnitsParameterNode): the threshold
unit, the density unit and the load mode, each with the label its combo box shows, and the library's
defaults in those types.

Slicer's parameterNodeWrapper stores an enum by member name and fills a QComboBox with each member's
``label()``; the values are the library's own names (threshold units, density units, load modes), so the
panel hands them to ScancoUnitsLib unchanged.
"""

from __future__ import annotations

import enum
from typing import Dict

from ..core.quantities import canonical_density_unit, threshold_unit_label
from .panel import library_defaults
from .translation import tr


class ThresholdUnit(enum.Enum):
    """Unit of the panel's thresholds; values are ScancoUnitsLib.core.thresholds unit names."""

    permille = "permille"
    native = "native"
    mu = "mu"
    hu = "hu"
    density = "density"

    def label(self):
        # the panel's density thresholds are IPL's mg HA/ccm, whatever the density output's unit
        text = threshold_unit_label(self.value, "mgHA/ccm")
        return tr(text) if self.value in ("permille", "native") else text


class DensityUnit(enum.Enum):
    """Values are accepted by ScancoUnitsLib.core.quantities.canonical_density_unit."""

    mg_ha_ccm = "mg HA/ccm"
    g_cc = "g/cc"

    def label(self):
        return self.value

    @classmethod
    def of(cls, spelling):
        """The member of a density unit in any spelling the library accepts ("g/cc", "mgHA/ccm", ...)."""
        canonical = canonical_density_unit(spelling)
        return next(m for m in cls if canonical_density_unit(m.value) == canonical)


class LoadMode(enum.Enum):
    """What the panel loads: every voxel, every n-th voxel, or a sub-region (values: panel.LOAD_MODES)."""

    full = "full"
    subsample = "subsample"
    region = "region"

    def label(self):
        return {"full": tr("Full volume"), "subsample": tr("Every n-th voxel"),
                "region": tr("Sub-region")}[self.value]


def parameter_node_defaults() -> Dict[str, object]:
    """The panel's defaults, read from ScancoUnitsLib.defaults when asked (never copied into the module file),
    as the parameter node's types (panel.library_defaults with the unit names turned into the enums)."""
    values = library_defaults()
    return dict(values, thresholdUnit=ThresholdUnit(values["thresholdUnit"]),
                densityUnit=DensityUnit.of(values["densityUnit"]))
