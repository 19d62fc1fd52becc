"""What the "SCANCO AIM" file writer (ScancoUnitsFileWriter in ScancoUnits.py) writes for a node: the segment
to write, or the one-line reason it refuses (no such node, a node of the main scene, a segmentation with other
than one segment). Looks at nodes only; the writing itself is :mod:`.mask_aim`.
"""

from __future__ import annotations

from typing import Optional

from .mask_nodes import mask_segments
from .translation import tr


def segment_to_write(node, node_id: str, main_scene) -> Optional[str]:
    """The ID of the segment to write for ``node`` (None for a labelmap); ValueError naming the problem."""
    if node is None:
        raise ValueError(tr("no node with ID {id}").format(id=node_id))
    if node.GetScene() is main_scene:
        # Save Data (and slicer.util.saveNode) save a node of the scene: the scene then refers to the node's
        # storage node, which cannot read an AIM back; an AIM is an export (Export to file writes a copy in
        # its own scene), so the scene's storage is left as it is
        raise ValueError(tr("SCANCO AIM is an export format: use Export to file... (or Scanco Units > "
                            "Save mask as AIM); Save Data keeps the node in a format the scene can "
                            "load again (e.g. NRRD)"))
    if not node.IsA("vtkMRMLSegmentationNode"):
        return None
    segments = mask_segments(node)
    if len(segments) != 1:
        raise ValueError(tr("{name} has {count} segments; an AIM holds one mask: use Scanco Units > "
                            "Save mask as AIM to choose the segment").format(name=node.GetName(),
                                                                            count=len(segments)))
    return segments[0][0]
