"""What the module's panel shows and asks for, decided without Qt: the texts of a file, which outputs its
calibration can give, the option dicts of a load, whether Apply can run, thresholds in another unit, and the
node the threshold preview belongs on.

The widget (ScancoUnits.py) reads its parameter node and widgets, calls these and writes the answers back;
everything here takes plain values (and, where it looks at nodes, the scene), so it runs headless. Texts
that the widget translates (empty panel, tooltips) stay in the widget.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Tuple

from .. import defaults
from ..core.header import ScancoHeader
from ..core.quantities import NODE_ROLES
from ..core.thresholds import ThresholdSpec, resolve_thresholds
from ..pipeline.summaries import (
    calibration_warning,
    header_summary_html,
    memory_estimate_text,
    threshold_equivalents,
    threshold_equivalents_html,
)
from .node_attributes import SOURCE_FILE

#: the panel's load modes (the values of the module's LoadMode)
LOAD_MODES = ("full", "subsample", "region")
#: the volumes the threshold preview may be shown on, in order of preference
PREVIEW_ROLES = ("hu", "density")
#: the volumes a load shows as background, in order of preference
BACKGROUND_ROLES = ("hu", "density", "mu", "native")


def library_defaults() -> Dict[str, object]:
    """The panel's defaults, read from :mod:`ScancoUnitsLib.defaults` when asked (never copied): the
    threshold pair in per mille and the density unit the command line and the Python API use. The keys are
    the parameter node's names; the module turns the unit names into its enums."""
    low, high = defaults.THRESHOLDS_PERMILLE
    return {"thresholdUnit": "permille", "lowerThreshold": float(low), "upperThreshold": float(high),
            "densityUnit": defaults.DENSITY_UNIT}


def threshold_spec(low: float, high: float, unit: str) -> Tuple[float, float, str]:
    """The panel's thresholds as ``(low, high, unit)``, the smaller first whatever order they were typed in."""
    low, high = sorted((low, high))
    return (low, high, unit)


def takes_thresholds(header: Optional[ScancoHeader]) -> bool:
    """True for a grey-value file the thresholds and calibrated outputs apply to (not a SCANCO mask, not a
    float file)."""
    return header is not None and not header.is_mask and not header.voxel_type.startswith("float")


def calibrated_outputs(header: Optional[ScancoHeader]) -> Dict[str, bool]:
    """Which calibrated outputs the file's calibration can give: ``{"hu": .., "density": .., "mu": ..}``."""
    grey = takes_thresholds(header)
    calibration = header.calibration if grey else None
    return {"hu": grey and calibration.has_hu, "density": grey and calibration.has_density,
            "mu": grey and calibration.has_mu}


def selected_roles(wanted: Mapping[str, bool], enabled: Mapping[str, bool]) -> List[str]:
    """The roles to load, in :data:`~ScancoUnitsLib.core.quantities.NODE_ROLES` order: wanted and (when
    ``enabled`` names the role) enabled."""
    return [role for role in NODE_ROLES if wanted.get(role) and enabled.get(role, True)]


def sampling_options(load_mode: str, subsample_step: int, region_first_last) -> Dict[str, object]:
    """The sampling keywords of a load (``subsample_step`` or ``region``, none for the full volume).

    ``region_first_last``: ``((z first, z last), (y ..), (x ..))`` as the panel holds them, inclusive, a
    negative last meaning "to the end"."""
    if load_mode == "subsample":
        return {"subsample_step": subsample_step}
    if load_mode == "region":
        return {"region": tuple((first, None if last < 0 else last + 1) for first, last in region_first_last)}
    return {}


def logic_sampling_options(sampling: Mapping[str, object]) -> Dict[str, object]:
    """:func:`sampling_options` with the Logic's keyword names (``subsampleStep``, ``region``)."""
    return {"subsampleStep": sampling.get("subsample_step", 1), "region": sampling.get("region")}


def header_texts(header: ScancoHeader, thresholds, outputs, sampling: Mapping[str, object]) -> Dict[str, str]:
    """The panel's texts for a file: ``summary`` (HTML), ``warning`` (calibration, "" when none),
    ``equivalents`` (the thresholds in every unit, HTML) and ``memory`` (what the chosen nodes need, or why
    the sampling is refused)."""
    texts = {"summary": header_summary_html(header), "warning": calibration_warning(header),
             "equivalents": threshold_equivalents_html(header, thresholds)}
    try:
        texts["memory"] = memory_estimate_text(header, outputs, **sampling)
    except ValueError as exc:
        texts["memory"] = str(exc)
    return texts


def can_apply(header: Optional[ScancoHeader], outputs, export_enabled: bool, export_directory: str) -> bool:
    """Apply can run: a readable file, at least one output and, for the export, a folder."""
    return header is not None and bool(outputs) and not (export_enabled and not export_directory)


def convert_thresholds(header: ScancoHeader, low: float, high: float, from_unit: str,
                       to_unit: str) -> Optional[Tuple[float, float]]:
    """(low, high) of the same native mask in ``to_unit`` (a threshold unit), or None when the calibration
    cannot express it."""
    key = {"density": "density_mg_ha_ccm"}.get(to_unit, to_unit)
    try:
        values = threshold_equivalents(header, (min(low, high), max(low, high), from_unit))["values"]
    except Exception:
        return None
    pair = values.get(key)
    if pair is None:
        return None
    return (float(pair[0]), float(pair[1]))


def resolve_panel_thresholds(header: ScancoHeader, low: float, high: float, unit: str):
    """:class:`~ScancoUnitsLib.core.thresholds.ResolvedThresholds` (native integers and every unit) of the
    panel's thresholds for ``header``'s file."""
    return resolve_thresholds(ThresholdSpec(low, high, unit), header.calibration,
                              header_max_data_value=header.raw_field("max_data_value"), path=header.path)


def preview_target(scene, loaded_nodes: Mapping[str, object], header: ScancoHeader):
    """The loaded volume the threshold preview goes on: the HU (else density) node of the last load, when
    it is still in ``scene`` and was loaded from ``header``'s file; else None."""
    source = os.path.basename(header.path)
    return next((node for node in (loaded_nodes.get(r) for r in PREVIEW_ROLES)
                 if node is not None and scene.IsNodePresent(node)
                 and node.GetAttribute(SOURCE_FILE) == source), None)


def layers_to_show(nodes: Mapping[str, object]):
    """``(background, label)`` for the slice views after a load: the first calibrated volume and the mask
    labelmap, no label when there is a segmentation (shown as an outline; the labelmap would hide it)."""
    background = next((nodes[r] for r in BACKGROUND_ROLES if r in nodes), None)
    label = None if "mask_segmentation" in nodes else nodes.get("mask_labelmap")
    return background, label


def one_line_error(exc: BaseException) -> str:
    """The text of an error as one line, for an error dialog (which shows no traceback; it goes to the log)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
