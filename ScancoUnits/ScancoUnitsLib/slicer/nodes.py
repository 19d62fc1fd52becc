"""The MRML nodes a load makes, and their removal: volume nodes on the scan's grid, their attributes,
units and display, the mask's colour table and segmentation, and the subject-hierarchy folder.

Every function takes the scene (or a node of it); Slicer and VTK are imported inside the functions only, so
importing this module needs neither. :mod:`~ScancoUnitsLib.slicer.loading` calls these while it fills the
nodes; :func:`remove_loaded_nodes` undoes a load (a failed or cancelled one too).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Tuple

import numpy as np

from ..core.header import ScancoHeader
from ..core.quantities import QUANTITIES
from ..pipeline.sampling import SamplingPlan
from ..pipeline.summaries import _fmt, format_threshold_number
from .node_attributes import FOLDER, MASK_COLORS, set_attributes

logger = logging.getLogger(__name__)

MASK_COLOR_RGB = (0.90, 0.85, 0.55)   # bone-ivory segment and label colour


def vtk_matrix(matrix: np.ndarray):
    """A vtkMatrix4x4 holding a 4x4 numpy matrix."""
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(matrix[r, c]))
    return out


def allocate_image(image, dtype, shape_zyx) -> np.ndarray:
    """Give ``image`` (a vtkImageData or vtkOrientedImageData, extent from 0) one component of ``dtype``
    voxels on a (z, y, x) grid, uninitialised, and return its numpy (z, y, x) view."""
    from vtk.util import numpy_support

    z, y, x = (int(v) for v in shape_zyx)
    image.SetDimensions(x, y, z)
    image.AllocateScalars(numpy_support.get_vtk_array_type(np.dtype(dtype)), 1)
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z, y, x)
    if array.dtype != np.dtype(dtype):  # e.g. VTK_CHAR mapped differently: never silently convert
        raise RuntimeError(f"VTK gave {array.dtype} for {np.dtype(dtype)} voxels")
    return array


def new_volume_node(scene, class_name: str, name: str, dtype: np.dtype, shape_zyx, ijk_to_ras: np.ndarray):
    """A volume node with allocated (uninitialised) image data and its numpy (z, y, x) view."""
    import vtk

    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    image = vtk.vtkImageData()
    array = allocate_image(image, dtype, shape_zyx)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    return node, array


def new_segment_image(shape_zyx, ijk_to_ras: np.ndarray):
    """A binary-labelmap representation for a segment on a volume node's grid, allocated (uninitialised)
    for the pass to fill: a uint8 ``vtkOrientedImageData`` with extent from 0, spacing 1 and origin 0,
    its geometry in the image-to-world matrix (what ``DeepCopy`` of the node's image data followed by
    ``SetImageToWorldMatrix(IJKToRAS)`` gives). Returns ``(image, numpy (z, y, x) view)``."""
    import slicer

    image = slicer.vtkOrientedImageData()
    array = allocate_image(image, np.uint8, shape_zyx)
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    return image, array


def calibration_attributes(header: ScancoHeader) -> Dict[str, object]:
    c = header.calibration
    return {
        "SourceFile": os.path.basename(header.path),
        "SourcePath": os.path.abspath(header.path),
        "Format": f"{header.format} {header.version}",
        "DataType": header.data_type_name,
        "MuScaling": _fmt(c.mu_scaling, 17) if c.mu_scaling is not None else None,
        "MuWater_per_cm": _fmt(c.mu_water_per_cm, 17) if c.mu_water_per_cm is not None else None,
        "DensitySlope": _fmt(c.density_slope, 17) if c.density_slope is not None else None,
        "DensityIntercept": _fmt(c.density_intercept, 17) if c.density_intercept is not None else None,
        "DensityUnitInFile": c.density_unit,
        "CalibrationText": c.calibration_text,
        "VoxelSize_mm": " ".join(_fmt(v, 17) for v in header.voxel_size_mm),
        "Origin_mm_LPS": " ".join(_fmt(v, 17) for v in header.origin_mm),
    }


def sampling_attributes(plan: SamplingPlan, header: ScancoHeader) -> Dict[str, object]:
    if plan.is_full and plan.stop_xyz == tuple(header.dimensions):
        return {"Sampling": "full resolution"}
    return {
        "Sampling": "sub-region/subsampled",
        "RegionStart_xyz": " ".join(str(v) for v in plan.start_xyz),
        "RegionStop_xyz": " ".join(str(v) for v in plan.stop_xyz),
        "SubsampleStep_xyz": " ".join(str(v) for v in plan.step_xyz),
    }


def threshold_attributes(spec, resolved, *, explicit: bool, header: ScancoHeader, char_mask: bool) -> Dict[str, object]:
    """The threshold attributes of the mask nodes: the thresholds asked for and the native pair they became
    (when thresholds were given, or the file is not a mask), or the char mask's rule."""
    if resolved is not None and (explicit or not header.is_mask):
        info = resolved.to_dict()
        return {
            "ThresholdUnit": spec.unit,
            "ThresholdLow": format_threshold_number(spec.low),
            "ThresholdHigh": format_threshold_number(spec.high),
            "ThresholdNative": f"{resolved.native_low} {resolved.native_high}",
            "MaskRule": info["mask_rule"],
            "ThresholdRounding": info["rounding"],
        }
    if char_mask:
        return {"MaskRule": "non-zero -> 1 (SCANCO char mask)"}
    return {}


def set_voxel_value_units(node, quantity: str) -> None:
    import slicer

    q = QUANTITIES[quantity]
    code, scheme, meaning = q.ucum, "UCUM", q.ucum_meaning
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(code, scheme, meaning)
    node.SetVoxelValueUnits(entry)


def configure_scalar_display(node, window: Optional[Tuple[float, float]]) -> None:
    """The display node ``vtkMRMLScalarVolumeNode::CreateDefaultDisplayNodes`` makes (a scalar volume
    display node with the default colour map), but with our window set BEFORE the node observes it: with
    automatic window/level on, observing computes a histogram of every voxel,
    which our known bone window makes useless. Without a window (float images) Slicer's automatic one."""
    if window is None:
        node.CreateDefaultDisplayNodes()
        return
    scene = node.GetScene()
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.AutoWindowLevelOff()
    if not display.GetColorNodeID():
        display.SetDefaultColorMap()
    low, high = window
    if not high > low:
        high = low + 1.0
    display.SetWindowLevelMinMax(low, high)
    node.SetAndObserveDisplayNodeID(display.GetID())


def mask_color_node(scene, base_name: str, label_name: str):
    color = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(base_name + " colors"))
    color.SetTypeToUser()
    color.SetNumberOfColors(2)
    color.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    color.SetColor(1, label_name, *MASK_COLOR_RGB, 1.0)
    color.SetAttribute(MASK_COLORS, "1")   # ours: removed with its labelmap
    return color


def remove_loaded_nodes(scene, nodes) -> None:
    """Remove nodes made by :func:`~ScancoUnitsLib.slicer.loading.load_scan_into_scene` with their display and storage nodes and the
    mask colour table it created (``nodes``: the returned dict or any iterable of nodes)."""
    if isinstance(nodes, dict):
        nodes = list(nodes.values())
    doomed = []
    for node in nodes:
        if node is None:
            continue
        helpers = []
        for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                              ("GetNthStorageNode", "GetNumberOfStorageNodes")):
            if hasattr(node, count):
                helpers += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
        for helper in helpers:
            color = helper.GetColorNode() if helper is not None and hasattr(helper, "GetColorNode") else None
            if color is not None and color.GetAttribute(MASK_COLORS):
                doomed.append(color)
        doomed += [h for h in helpers if h is not None] + [node]
    folders = _our_folders(scene, nodes)
    _remove_hierarchy_items(scene, doomed)
    for node in doomed:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
    _remove_empty_folders(scene, folders)


def _remove_hierarchy_items(scene, nodes) -> None:
    """Drop the subject-hierarchy items of ``nodes`` (not the nodes): headless, nobody else does it."""
    try:
        import slicer

        if scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
            return
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for node in nodes:
            item = sh.GetItemByDataNode(node)
            if item:
                sh.RemoveItem(item, False, False)
    except Exception as exc:  # pragma: no cover - best effort
        logger.debug("subject hierarchy clean-up skipped: %s", exc)


def _our_folders(scene, nodes):
    """Subject-hierarchy folders made by :func:`place_in_subject_hierarchy` that hold ``nodes``."""
    try:
        import slicer

        if scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
            return set()   # never create the hierarchy just to look into it
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        folders = set()
        for node in nodes:
            item = sh.GetItemByDataNode(node) if node is not None else 0
            parent = sh.GetItemParent(item) if item else 0
            if parent and sh.GetItemAttribute(parent, FOLDER):
                folders.add(parent)
        return folders
    except Exception:  # pragma: no cover - best effort
        return set()


def _remove_empty_folders(scene, folders) -> None:
    if not folders:
        return
    try:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for folder in folders:
            if sh.GetNumberOfItemChildren(folder) == 0:
                sh.RemoveItem(folder)
    except Exception as exc:  # pragma: no cover - best effort
        logger.debug("subject hierarchy clean-up skipped: %s", exc)


def place_in_subject_hierarchy(scene, folder_name: str, nodes) -> None:
    """Group the new nodes in one subject-hierarchy folder (best effort; never fails the load)."""
    try:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if sh is None:
            return
        folder = sh.CreateFolderItem(sh.GetSceneItemID(), folder_name)
        sh.SetItemAttribute(folder, FOLDER, "1")
        for node in nodes:
            item = sh.GetItemByDataNode(node)
            if not item:
                item = sh.CreateItem(folder, node)
            else:
                sh.SetItemParent(item, folder)
    except Exception as exc:  # pragma: no cover - depends on the Slicer build
        logger.debug("subject hierarchy grouping skipped: %s", exc)


def segmentation_from_labelmap(scene, labelmap, name: str, label_name: str, common, threshold_attributes,
                                own_copy: bool = True, image=None):
    """A segmentation with one segment whose binary labelmap holds the labelmap node's voxels.

    ``image``: the segment's own ``vtkOrientedImageData`` (:func:`new_segment_image`), already filled
    with the labelmap's voxels by the pass that filled the labelmap: it is used as it is, no copy.
    Without it, with ``own_copy`` (the labelmap node stays in the scene) the segment gets its own copy of
    the voxels (``vtkOrientedImageData::DeepCopy``). Either way two nodes never share one buffer, so
    Segment Editor's edits of the segment (merge modes write into the segment's image) do not reach the
    labelmap node behind its back, and zeroing the labelmap's array does not empty the segment. Without
    ``own_copy`` (the labelmap is only the segmentation's source and is removed right after) the buffer
    is handed over with ``ShallowCopy``: no copy, and after the removal the segment is its only owner.
    ``vtkSegment::AddRepresentation`` keeps the given ``vtkOrientedImageData`` (a smart pointer). The
    segment's label value is vtkSegment's default, 1, the mask's foreground. An empty mask gives a
    named, empty segment on the same grid.
    """
    import slicer
    import vtk

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    try:
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetIJKToRASMatrix(matrix)
        if image is None:
            image = slicer.vtkOrientedImageData()
            if own_copy:
                image.DeepCopy(labelmap.GetImageData())
            else:
                image.ShallowCopy(labelmap.GetImageData())
        else:
            image.Modified()   # written through numpy by the pass
        image.SetImageToWorldMatrix(matrix)   # the labelmap node's grid, whichever way the voxels came
        segment = slicer.vtkSegment()
        segment.SetName(label_name)
        segment.SetColor(*MASK_COLOR_RGB)
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(),
                                  image)
        segmentation.GetSegmentation().AddSegment(segment)
        attributes = dict(common)
        attributes.update(threshold_attributes)
        attributes["SegmentName"] = label_name
        set_attributes(segmentation, attributes)
    except BaseException:
        remove_loaded_nodes(scene, [segmentation])
        raise
    return segmentation
