"""Segmentation nodes for the scene tests (slicer-core): segments added the way Segment Editor adds them."""

from __future__ import annotations


def add_empty_segments(node, names, ids=None):
    """Add one empty binary-labelmap segment per name to the segmentation ``node`` (AddEmptySegment
    needs converter rules slicer-core does not register); ``ids``: their segment IDs (default: chosen
    by the segmentation). Returns ``node``."""
    import slicer
    import vtk

    for i, name in enumerate(names):
        image = slicer.vtkOrientedImageData()
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(),
                                  image)
        added = node.GetSegmentation().AddSegment(segment, ids[i]) if ids else node.GetSegmentation().AddSegment(segment)
        assert added
    return node
