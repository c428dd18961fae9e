"""How the outputs look: colour tables, window/level, and the side-by-side comparison views.

Everything here is MRML: the view arrangement is a property of the layout node and what each slice
view shows is a property of its slice composite node, so the views are set up without Qt. Fitting
the slices to the volume needs the layout manager; that part is the caller's optional hook.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import slicer

#: Perceptually uniform maps (anchors: matplotlib's tables at 0, 0.1, ..., 1): viridis for NSelfSSIM
#: (a similarity), inferno for DIG (a magnitude).
#: Slicer's own tables (file-based, present in the application) are used when they exist; otherwise
#: (e.g. the Qt-free slicer-core) a table with the same anchor colours is created once per scene.
COLORMAPS: dict[str, dict[str, Any]] = {
    "viridis": {
        "slicerID": "vtkMRMLColorTableNodeFileViridis.txt",
        "anchors": [(0.267, 0.005, 0.329), (0.283, 0.141, 0.458), (0.254, 0.265, 0.530), (0.207, 0.372, 0.553),
                    (0.164, 0.471, 0.558), (0.128, 0.567, 0.551), (0.135, 0.659, 0.518), (0.267, 0.749, 0.441),
                    (0.478, 0.821, 0.318), (0.741, 0.873, 0.150), (0.993, 0.906, 0.144)],
    },
    "inferno": {
        "slicerID": "vtkMRMLColorTableNodeFileInferno.txt",
        "anchors": [(0.001, 0.000, 0.014), (0.087, 0.045, 0.225), (0.258, 0.039, 0.406), (0.416, 0.090, 0.433),
                    (0.578, 0.148, 0.404), (0.736, 0.216, 0.330), (0.865, 0.317, 0.226), (0.955, 0.469, 0.100),
                    (0.988, 0.645, 0.040), (0.964, 0.844, 0.273), (0.988, 0.998, 0.645)],
    },
}
COLORMAP_FOR_MAP = {"dig": "inferno", "nselfssim": "viridis"}

#: Soft-tissue window of the enhanced volume (HU): the window NSelfSSIM is computed in (-160..240).
ENHANCED_WINDOW_LEVEL = (400.0, 40.0)
#: NSelfSSIM shown from 0.4 (clean kV CT about 0.7, MVCT about 0.85-0.9 in a soft-tissue window) to 1.
NSELFSSIM_RANGE = (0.4, 1.0)

#: Views of the comparison: left the enhanced volume with the map over it, right the reference.
LEFT_VIEW, RIGHT_VIEW = "Red", "Yellow"


def colorNodeForMap(scene: Any, which: str) -> Any:
    """The colour node for 'dig' or 'nselfssim' (Slicer's built-in table, else our own singleton)."""
    name = COLORMAP_FOR_MAP[which]
    spec = COLORMAPS[name]
    node = scene.GetNodeByID(spec["slicerID"])
    if node is not None:
        return node
    tag = f"MVCTEnhance{name.capitalize()}"
    node = scene.GetNodeByID(f"vtkMRMLColorTableNode{tag}")
    if node is not None:
        return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetSingletonTag(tag)  # scene ID becomes vtkMRMLColorTableNode<tag>: reused by later runs
    node.SetName(f"MVCTEnhance {name}")
    node.SetTypeToUser()
    node.SetAttribute("Category", "MVCTEnhance")
    node.SetHideFromEditors(False)
    anchors = np.asarray(spec["anchors"], dtype=np.float64)
    n = 256
    node.SetNumberOfColors(n)
    positions = np.linspace(0.0, 1.0, len(anchors))
    for i in range(n):
        t = i / (n - 1)
        rgb = [float(np.interp(t, positions, anchors[:, c])) for c in range(3)]
        node.SetColor(i, f"{name} {i}", rgb[0], rgb[1], rgb[2], 1.0)
    node.SetNamesInitialised(True)
    scene.AddNode(node)
    return node


def ensureDisplayNode(scene: Any, volumeNode: Any) -> Any:
    display = volumeNode.GetDisplayNode()
    if display is None:
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        volumeNode.SetAndObserveDisplayNodeID(display.GetID())
    return display


def showEnhanced(scene: Any, node: Any) -> None:
    display = ensureDisplayNode(scene, node)
    grey = scene.GetNodeByID("vtkMRMLColorTableNodeGrey")
    if grey is not None:
        display.SetAndObserveColorNodeID(grey.GetID())
    display.AutoWindowLevelOff()
    window, level = ENHANCED_WINDOW_LEVEL
    display.SetWindowLevel(window, level)


def showMap(scene: Any, node: Any, which: str, values: np.ndarray, mask: np.ndarray | None) -> None:
    """Colour table and window of a DIG ('dig') or NSelfSSIM ('nselfssim') map.

    NSelfSSIM is shown over 0.4..1 (where MVCT and kV CT values fall); DIG has no fixed scale, so its window spans 0
    to the 99th percentile inside the body (outliers at edges would otherwise wash out the map).
    """
    display = ensureDisplayNode(scene, node)
    display.SetAndObserveColorNodeID(colorNodeForMap(scene, which).GetID())
    display.AutoWindowLevelOff()
    if which == "nselfssim":
        lo, hi = NSELFSSIM_RANGE
    else:
        inside = values[mask] if mask is not None and mask.any() else values
        finite = inside[np.isfinite(inside)]
        hi = float(np.percentile(finite, 99.0)) if finite.size else 1.0
        lo = 0.0
        if not hi > lo:
            hi = lo + 1.0
    display.SetWindowLevelMinMax(lo, hi)


def _nodesByLayoutName(scene: Any, className: str) -> dict[str, Any]:
    """The scene's nodes of ``className`` (slice or slice composite nodes) keyed by view name."""
    nodes = {}
    for i in range(scene.GetNumberOfNodesByClass(className)):
        node = scene.GetNthNodeByClass(i, className)
        nodes[node.GetLayoutName()] = node
    return nodes


def _compositeNodes(scene: Any) -> dict[str, Any]:
    return _nodesByLayoutName(scene, "vtkMRMLSliceCompositeNode")


def _sliceNodes(scene: Any) -> dict[str, Any]:
    return _nodesByLayoutName(scene, "vtkMRMLSliceNode")


def setupComparisonViews(scene: Any, enhancedNode: Any, overlayNode: Any | None, referenceNode: Any,
                         opacity: float, layoutHook: Callable[[Any], None] | None = None) -> bool:
    """Side-by-side views: enhanced (+ map as foreground) on the left, reference on the right, linked.

    Returns False (and changes nothing) where the scene has no slice views, as in batch runs without
    a main window. ``layoutHook(enhancedNode)`` runs last, for what needs the layout manager.
    """
    composites = _compositeNodes(scene)
    if LEFT_VIEW not in composites or RIGHT_VIEW not in composites:
        return False
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is not None:
        layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    left, right = composites[LEFT_VIEW], composites[RIGHT_VIEW]
    left.SetBackgroundVolumeID(enhancedNode.GetID())
    left.SetForegroundVolumeID(overlayNode.GetID() if overlayNode is not None else None)
    left.SetForegroundOpacity(float(opacity) if overlayNode is not None else 0.0)
    left.SetLabelVolumeID(None)
    right.SetBackgroundVolumeID(referenceNode.GetID())
    right.SetForegroundVolumeID(None)
    right.SetLabelVolumeID(None)
    sliceNodes = _sliceNodes(scene)
    for viewName in (LEFT_VIEW, RIGHT_VIEW):
        if viewName in sliceNodes:
            sliceNodes[viewName].SetOrientation("Axial")  # compare like with like
    for composite in composites.values():
        composite.SetLinkedControl(True)
    if layoutHook is not None:
        layoutHook(enhancedNode)
    return True


def setOverlayOpacity(scene: Any, mapNodeIDs: Iterable[str], opacity: float) -> int:
    """Set the foreground opacity of every slice view showing one of the maps; returns how many."""
    ids = {i for i in mapNodeIDs if i}
    changed = 0
    for composite in _compositeNodes(scene).values():
        if composite.GetForegroundVolumeID() in ids:
            composite.SetForegroundOpacity(float(opacity))
            changed += 1
    return changed


def setOverlayMap(scene: Any, enhancedNodeID: str, mapNodeID: str | None, opacity: float) -> int:
    """Show ``mapNodeID`` (or nothing) over every slice view whose background is the enhanced volume."""
    changed = 0
    for composite in _compositeNodes(scene).values():
        if composite.GetBackgroundVolumeID() == enhancedNodeID:
            composite.SetForegroundVolumeID(mapNodeID)
            composite.SetForegroundOpacity(float(opacity) if mapNodeID else 0.0)
            changed += 1
    return changed


__all__ = ["colorNodeForMap", "showEnhanced", "showMap", "setupComparisonViews", "setOverlayOpacity",
           "setOverlayMap", "COLORMAPS", "ENHANCED_WINDOW_LEVEL", "LEFT_VIEW", "RIGHT_VIEW"]
