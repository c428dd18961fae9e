"""Real slicer-core scenes for the MRML tests, and their orderly release.

Every scene is made here, with what Slicer's application gives a scene (application logic, colour
logic with the default colour tables, optionally slice logics that render views without Qt), and is
released here. The release order matters: the colour logic removes its default colour nodes when it
is destroyed, and those removals notify the other logics; left to Python's exit, VTK destroys the
survivors in any order and the notification reaches an already destroyed logic (a segmentation
fault after the last test, i.e. a red CI run with every test passed).
"""

from __future__ import annotations

from typing import Any

import slicer

from MVCTEnhanceMRML import offscreen

_live: list[Any] = []


def newScene(sliceViews: bool = False, viewNodes: bool = False, size: tuple[int, int] = (256, 256)) -> Any:
    """A scene as ``slicer.mrmlScene`` (slicer.util uses it). ``sliceViews``: one vtkMRMLSliceLogic per
    view (scene._sliceLogics), rendering offscreen; ``viewNodes``: the slice and composite nodes of the
    application's three views only (Red axial, Yellow sagittal, Green coronal), without logics."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    colorLogic = slicer.vtkSlicerColorLogic()
    colorLogic.SetMRMLScene(scene)  # adds Slicer's default (non-file) colour tables
    logics = offscreen.createSliceViews(scene, appLogic, size=size) if sliceViews else {}
    if viewNodes:
        scene.AddNode(slicer.vtkMRMLLayoutNode())
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
        for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
            sliceNode = scene.CreateNodeByClass("vtkMRMLSliceNode")
            sliceNode.SetLayoutName(name)
            scene.AddNode(sliceNode)
            sliceNode.UnRegister(None)
            assert sliceNode.SetOrientation(orientation)
            composite = slicer.vtkMRMLSliceCompositeNode()
            composite.SetLayoutName(name)
            scene.AddNode(composite)
    scene._keepAlive = (appLogic, colorLogic)
    scene._sliceLogics = logics
    _live.append(scene)
    return scene


def release(scene: Any) -> None:
    """Detach the scene's logics (slice logics first, the colour logic last but one) and clear it."""
    appLogic, colorLogic = scene._keepAlive
    for logic in scene._sliceLogics.values():
        logic.SetMRMLScene(None)
    colorLogic.SetMRMLScene(None)
    appLogic.SetMRMLScene(None)
    scene.Clear(True)
    scene._sliceLogics = {}


def releaseAll() -> None:
    """Release every scene made here (conftest calls it when the session ends)."""
    while _live:
        release(_live.pop())
