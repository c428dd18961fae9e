"""Slice views without a window: Slicer's own vtkMRMLSliceLogic pipeline rendered to an RGB array.

In the application the layout manager creates one slice logic per view (Red, Yellow, Green); here
:func:`createSliceViews` makes the same logics, slice nodes and composite nodes on any scene, and
:func:`renderSliceView` runs the logic's reslice, window/level, colour table, threshold and blend of
background and foreground exactly as a slice view does before it is drawn on screen. Used by the
rendering tests and by ``scripts/make_screenshot.py``; no Qt, no OpenGL.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from vtk.util import numpy_support

import slicer

DEFAULT_VIEWS = ("Red", "Yellow", "Green")


def createSliceViews(scene: Any, appLogic: Any, names: Iterable[str] = DEFAULT_VIEWS,
                     size: tuple[int, int] = (256, 256)) -> dict[str, Any]:
    """One vtkMRMLSliceLogic per view name (with its slice and composite nodes and Slicer's default
    orientations: Red axial, Yellow sagittal, Green coronal), and a layout node if there is none."""
    if scene.GetFirstNodeByClass("vtkMRMLLayoutNode") is None:
        scene.AddNode(slicer.vtkMRMLLayoutNode())
    if scene.GetNumberOfNodesByClass("vtkMRMLSliceNode") == 0:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    logics = {}
    for name in names:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        sliceNode = logic.AddSliceNode(name)
        sliceNode.SetDimensions(int(size[0]), int(size[1]), 1)
        logics[name] = logic
    return logics


def renderSliceView(sliceLogic: Any) -> np.ndarray:
    """What the view shows now: (rows, columns, 3) uint8, first row at the top of the view.

    The blend's RGBA is drawn over the view's black background, as the slice view draws it: outside
    every volume the layers are transparent (alpha 0), so the view is black there."""
    connection = sliceLogic.GetImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    columns, rows, _ = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, components)
    pixels = pixels[::-1].astype(np.uint16)  # VTK's first row is the bottom one
    if components == 4:
        rgb = (pixels[..., :3] * pixels[..., 3:4] + 127) // 255
    else:
        rgb = pixels[..., :3]
    return rgb.astype(np.uint8)


def sliceMaskPixels(sliceLogic: Any, scene: Any, maskNode: Any) -> np.ndarray:
    """Which pixels of the view lie on a voxel where ``maskNode`` (a 0/1 volume) is 1: the mask rendered
    by the same view geometry, nearest neighbour, as the background of a temporary composite state."""
    composite = sliceLogic.GetSliceCompositeNode()
    saved = (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetForegroundOpacity())
    display = maskNode.GetDisplayNode()
    if display is None:
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        maskNode.SetAndObserveDisplayNodeID(display.GetID())
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetInterpolate(0)
    try:
        composite.SetBackgroundVolumeID(maskNode.GetID())
        composite.SetForegroundVolumeID(None)
        pixels = renderSliceView(sliceLogic)
    finally:
        composite.SetBackgroundVolumeID(saved[0])
        composite.SetForegroundVolumeID(saved[1])
        composite.SetForegroundOpacity(saved[2])
    return pixels[..., 0] > 127
