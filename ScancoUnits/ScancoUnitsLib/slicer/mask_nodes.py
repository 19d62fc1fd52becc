"""Which mask a node holds, for Save mask as AIM and the "SCANCO AIM" file writer: a segmentation's
segments, whether a node records the SCANCO scan whose grid an AIM needs, and the file name to suggest.

Looks at nodes only (no import of Slicer or VTK); the writing itself is :mod:`~ScancoUnitsLib.slicer.mask_aim`.
"""

from __future__ import annotations

import os
from typing import List, Tuple

from .node_attributes import SOURCE_FILE, SOURCE_PATH


def mask_segments(node) -> List[Tuple[str, str]]:
    """``[(segment ID, name)]`` of a segmentation node; ``[]`` for anything else (None, a labelmap)."""
    if node is None or not node.IsA("vtkMRMLSegmentationNode"):
        return []
    segmentation = node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i).GetName())
            for i in range(segmentation.GetNumberOfSegments())]


def records_scanco_source(node) -> bool:
    """True when the node names the SCANCO scan it came from (set by the load, kept by Export to file's copy):
    only such a node has a grid an AIM can carry."""
    return bool(node.GetAttribute(SOURCE_PATH))


def suggested_mask_aim_path(node) -> str:
    """A file name for the AIM of ``node``: ``<source scan stem>_MASK.AIM`` next to the source scan when
    the node came from a loaded scan (its source file and path attributes), else the node name."""
    source = node.GetAttribute(SOURCE_PATH) or ""
    source_file = node.GetAttribute(SOURCE_FILE) or os.path.basename(source)
    stem = source_file.split(";")[0].rsplit(".", 1)[0] if source_file else node.GetName()
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "MASK"
    folder = os.path.dirname(source) if source else ""
    return os.path.join(folder, f"{stem}_MASK.AIM")
