"""How the outputs look: colour tables, window/level, body-masked overlays with a colour legend, and
the side-by-side comparison views.

Everything here is MRML: the view arrangement is a property of the layout node and what each slice
view shows is a property of its slice composite node, so the views are set up without Qt. Fitting
the slices to the volume needs the layout manager; that part is the caller's optional hook.

A quality map means something only inside the body (the summaries are taken there). Its node holds
the engine's values inside the body mask and :data:`OUTSIDE_BODY_VALUE` outside; the display node's
threshold starts above that value, so Slicer draws the overlay fully transparent outside the body
and the background (the enhanced image) shows unchanged there. Maps are drawn voxel by voxel
(no interpolation), so no interpolated value leaks a tint across the body's edge.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np
import slicer

from . import views
from .metricstable import DIG_UNIT

#: Perceptually uniform maps (anchors: matplotlib's tables at 0, 0.1, ..., 1): viridis for NSelfSSIM
#: (a similarity), inferno for DIG (a magnitude); the tissue-change map (0/1) is one colour.
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
    "magenta": {  # no Slicer table: always the module's own
        "slicerID": None,
        "anchors": [(1.0, 0.0, 0.8), (1.0, 0.0, 0.8)],
    },
}

#: Map voxels outside the body hold this value: below every map's range (SSIM >= -1, DIG >= 0,
#: tissue change 0 or 1) and below every display threshold, so the overlay is transparent there.
OUTSIDE_BODY_VALUE = -2.0


@dataclasses.dataclass(frozen=True)
class MapStyle:
    """How one quality map is shown: colour table, legend title (with the unit), threshold."""

    colormap: str
    title: str
    unit: str
    #: Voxels below this are transparent: just above OUTSIDE_BODY_VALUE for the continuous maps; 0.5
    #: for the tissue-change map, so only changed voxels are tinted.
    lowerThreshold: float

    @property
    def legendTitle(self) -> str:
        return f"{self.title} ({self.unit})" if self.unit else self.title


MAP_STYLES: dict[str, MapStyle] = {
    "nselfssim": MapStyle("viridis", "NSelfSSIM", "unitless, 1 = noisy", -1.5),
    "dig": MapStyle("inferno", "DIG", DIG_UNIT, -1.5),
    "tissuechange": MapStyle("magenta", "Tissue class changed", "1 = changed", 0.5),
}
#: Kept for callers of the earlier name.
COLORMAP_FOR_MAP = {which: style.colormap for which, style in MAP_STYLES.items()}
#: The overlay choices of the module, "none" included.
OVERLAY_CHOICES = (*MAP_STYLES, "none")

#: Soft-tissue window of the enhanced volume (HU): the window NSelfSSIM is computed in (-160..240).
ENHANCED_WINDOW_LEVEL = (400.0, 40.0)
#: NSelfSSIM shown from 0.4 (clean kV CT about 0.7, MVCT about 0.85-0.9 in a soft-tissue window) to 1.
NSELFSSIM_RANGE = (0.4, 1.0)

#: Views of the comparison: left the enhanced volume with the map over it, right the reference.
LEFT_VIEW, RIGHT_VIEW = "Red", "Yellow"


def colorNodeForMap(scene: Any, which: str) -> Any:
    """The colour node for 'dig', 'nselfssim' or 'tissuechange' (Slicer's built-in table, else our own singleton)."""
    name = MAP_STYLES[which].colormap
    spec = COLORMAPS[name]
    node = scene.GetNodeByID(spec["slicerID"]) if spec["slicerID"] else None
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
        node.SetColor(i, f"{name} {i}", rgb[0], rgb[1], rgb[2], 1.0)  # named: defines the entry
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


def maskedMap(volume: Any, mask: np.ndarray | None) -> Any:
    """The map with :data:`OUTSIDE_BODY_VALUE` outside ``mask`` (an engine Volume; None: unmasked)."""
    if mask is None:
        return volume
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume.array.shape:
        raise ValueError(f"body mask shape {mask.shape} differs from the map's {volume.array.shape}")
    return volume.with_array(np.where(mask, volume.array, np.float32(OUTSIDE_BODY_VALUE)).astype(np.float32))


def showMap(scene: Any, node: Any, which: str, values: np.ndarray, mask: np.ndarray | None) -> Any:
    """Colour table, window, body threshold and colour legend of a map ('dig', 'nselfssim',
    'tissuechange'); returns the legend display node (hidden until the map is the shown overlay).

    NSelfSSIM is shown over 0.4..1 (where MVCT and kV CT values fall); DIG has no fixed scale, so its
    window spans 0 to the 99th percentile inside the body (outliers at edges would otherwise wash out
    the map); the tissue-change map over 0..1. ``values`` are the engine's map, ``mask`` the body.
    """
    style = MAP_STYLES[which]
    display = ensureDisplayNode(scene, node)
    display.SetAndObserveColorNodeID(colorNodeForMap(scene, which).GetID())
    display.AutoWindowLevelOff()
    if which == "nselfssim":
        lo, hi = NSELFSSIM_RANGE
    elif which == "tissuechange":
        lo, hi = 0.0, 1.0
    else:
        inside = values[mask] if mask is not None and mask.any() else values
        finite = inside[np.isfinite(inside)]
        hi = float(np.percentile(finite, 99.0)) if finite.size else 1.0
        lo = 0.0
        if not hi > lo:
            hi = lo + 1.0
    display.SetWindowLevelMinMax(lo, hi)
    display.SetInterpolate(0)  # voxel by voxel: the masked edge stays exact
    display.AutoThresholdOff()
    display.SetThreshold(style.lowerThreshold, max(float(np.nanmax(values)) if values.size else 1.0, hi) + 1.0)
    display.ApplyThresholdOn()
    node.SetAttribute("MVCTEnhance.OutsideBodyValue", repr(OUTSIDE_BODY_VALUE))
    node.SetAttribute("MVCTEnhance.Unit", style.unit)
    return ensureColorLegend(scene, node, which)


def ensureColorLegend(scene: Any, node: Any, which: str) -> Any | None:
    """The map's colour legend display node (Slicer's vtkMRMLColorLegendDisplayNode), titled with the
    map's name and unit; created hidden. None where the scene cannot create one (no Colors module)."""
    logic = getattr(slicer, "vtkSlicerColorLogic", None)
    if logic is None or not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        return None
    legend = logic.GetColorLegendDisplayNode(node)
    if legend is None:
        legend = logic.AddDefaultColorLegendDisplayNode(node)
        if legend is None:
            return None
        legend.SetVisibility(False)
    legend.SetTitleText(MAP_STYLES[which].legendTitle)
    return legend


def colorLegendOf(node: Any) -> Any | None:
    """The colour legend display node of ``node``, or None."""
    logic = getattr(slicer, "vtkSlicerColorLogic", None)
    return logic.GetColorLegendDisplayNode(node) if logic is not None and node is not None else None


def _compositeNodes(scene: Any) -> dict[str, Any]:
    return views.compositeNodes(scene)


def _sliceNodes(scene: Any) -> dict[str, Any]:
    return views.sliceNodes(scene)


def setupComparisonViews(scene: Any, enhancedNode: Any, overlayNode: Any | None, referenceNode: Any,
                         opacity: float, layoutHook: Callable[[Any], None] | None = None) -> bool:
    """Side-by-side views: enhanced (+ map as foreground) on the left, reference on the right, the two
    linked; the Green view is left as it is.

    What is changed is remembered first (:func:`views.rememberViews`; :func:`views.restoreViews` puts
    it back). Returns False (and changes nothing) where the scene has no slice views, as in batch runs
    without a main window. ``layoutHook(enhancedNode)`` runs last, for what needs the layout manager.
    """
    composites = _compositeNodes(scene)
    if LEFT_VIEW not in composites or RIGHT_VIEW not in composites:
        return False
    views.rememberViews(scene)
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is not None:
        layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    left, right = composites[LEFT_VIEW], composites[RIGHT_VIEW]
    left.SetBackgroundVolumeID(enhancedNode.GetID())
    left.SetLabelVolumeID(None)
    right.SetBackgroundVolumeID(referenceNode.GetID())
    right.SetForegroundVolumeID(None)
    right.SetLabelVolumeID(None)
    sliceNodes = _sliceNodes(scene)
    if LEFT_VIEW in sliceNodes:  # the legends belong to the view with the overlay
        for mapNode in mapNodesOf(scene, enhancedNode.GetID()).values():
            legend = colorLegendOf(mapNode)
            if legend is not None:
                legend.SetDisplayableOnlyInView(sliceNodes[LEFT_VIEW].GetID())
    setOverlayMap(scene, enhancedNode.GetID(), overlayNode.GetID() if overlayNode is not None else None, opacity)
    for viewName in (LEFT_VIEW, RIGHT_VIEW):
        if viewName in sliceNodes:
            sliceNodes[viewName].SetOrientation("Axial")  # compare like with like
    for viewName in (LEFT_VIEW, RIGHT_VIEW):
        composites[viewName].SetLinkedControl(True)
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


def mapNodesOf(scene: Any, enhancedNodeID: str | None) -> dict[str, Any]:
    """The quality-map nodes made with the enhanced volume ``enhancedNodeID``, by map name (found by
    their attributes, so also in a saved and reloaded scene)."""
    nodes: dict[str, Any] = {}
    if not enhancedNodeID:
        return nodes
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        role = node.GetAttribute("MVCTEnhance.Role")
        if role in MAP_STYLES and node.GetAttribute("MVCTEnhance.EnhancedVolumeID") == enhancedNodeID:
            nodes[role] = node
    return nodes


def setOverlayMap(scene: Any, enhancedNodeID: str, mapNodeID: str | None, opacity: float) -> int:
    """Show ``mapNodeID`` (or nothing) over every slice view whose background is the enhanced volume,
    and only its colour legend; returns how many views changed."""
    changed = 0
    for composite in _compositeNodes(scene).values():
        if composite.GetBackgroundVolumeID() == enhancedNodeID:
            composite.SetForegroundVolumeID(mapNodeID)
            composite.SetForegroundOpacity(float(opacity) if mapNodeID else 0.0)
            changed += 1
    for node in mapNodesOf(scene, enhancedNodeID).values():
        legend = colorLegendOf(node)
        if legend is not None:
            legend.SetVisibility(node.GetID() == mapNodeID and changed > 0)
    return changed


def showOverlay(scene: Any, enhancedNode: Any, which: str, opacity: float) -> Any | None:
    """Show the map called ``which`` ('nselfssim', 'dig', 'tissuechange' or 'none') of the run that made
    ``enhancedNode``; returns the map node shown (None: none)."""
    if enhancedNode is None:
        return None
    mapNode = mapNodesOf(scene, enhancedNode.GetID()).get(which)
    setOverlayMap(scene, enhancedNode.GetID(), mapNode.GetID() if mapNode is not None else None, opacity)
    return mapNode


__all__ = ["colorNodeForMap", "colorLegendOf", "ensureColorLegend", "maskedMap", "mapNodesOf", "showEnhanced",
           "showMap", "showOverlay", "setupComparisonViews", "setOverlayOpacity", "setOverlayMap", "COLORMAPS",
           "ENHANCED_WINDOW_LEVEL", "LEFT_VIEW", "MAP_STYLES", "OUTSIDE_BODY_VALUE", "OVERLAY_CHOICES", "RIGHT_VIEW"]
