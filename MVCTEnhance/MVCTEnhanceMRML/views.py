"""The user's views, remembered before the module changes them and restored on request.

The comparison (``display.setupComparisonViews``) changes the layout, the Red and Yellow slice views
(orientation, position, field of view) and their composite nodes (volumes, opacity, linking). Before
the first change, :func:`rememberViews` stores all of that as JSON on the layout node (so it is saved
with the scene); :func:`restoreViews` puts every remembered property back and forgets them. The Green
view is never changed, so it is not remembered either. Pure MRML: tested on slicer-core.
"""

from __future__ import annotations

import json
from typing import Any

#: The views the comparison uses (left: enhanced + map; right: the reference).
CHANGED_VIEWS = ("Red", "Yellow")
#: Layout node attribute holding the remembered state (JSON).
SAVED_VIEWS_ATTRIBUTE = "MVCTEnhance.SavedViews"


def nodesByLayoutName(scene: Any, className: str) -> dict[str, Any]:
    """The scene's nodes of ``className`` (slice or slice composite nodes) keyed by view name."""
    nodes = {}
    for i in range(scene.GetNumberOfNodesByClass(className)):
        node = scene.GetNthNodeByClass(i, className)
        nodes[node.GetLayoutName()] = node
    return nodes


def compositeNodes(scene: Any) -> dict[str, Any]:
    return nodesByLayoutName(scene, "vtkMRMLSliceCompositeNode")


def sliceNodes(scene: Any) -> dict[str, Any]:
    return nodesByLayoutName(scene, "vtkMRMLSliceNode")


def _layoutNode(scene: Any) -> Any | None:
    return scene.GetFirstNodeByClass("vtkMRMLLayoutNode")


def _matrix(m: Any) -> list[float]:
    return [m.GetElement(r, c) for r in range(4) for c in range(4)]


def viewState(scene: Any, viewNames: tuple[str, ...] = CHANGED_VIEWS) -> dict[str, Any]:
    """Layout, and for each view: orientation, slice-to-RAS, field of view, origin, volumes, opacity, linking."""
    layout = _layoutNode(scene)
    state: dict[str, Any] = {"layout": layout.GetViewArrangement() if layout is not None else None, "views": {}}
    slices, composites = sliceNodes(scene), compositeNodes(scene)
    for name in viewNames:
        view: dict[str, Any] = {}
        if name in slices:
            s = slices[name]
            view.update(orientation=s.GetOrientation(), sliceToRAS=_matrix(s.GetSliceToRAS()),
                        fieldOfView=list(s.GetFieldOfView()), xyzOrigin=list(s.GetXYZOrigin()))
        if name in composites:
            c = composites[name]
            view.update(background=c.GetBackgroundVolumeID(), foreground=c.GetForegroundVolumeID(),
                        label=c.GetLabelVolumeID(), foregroundOpacity=c.GetForegroundOpacity(),
                        labelOpacity=c.GetLabelOpacity(), linkedControl=c.GetLinkedControl(),
                        hotLinkedControl=c.GetHotLinkedControl())
        state["views"][name] = view
    return state


def hasRememberedViews(scene: Any) -> bool:
    layout = _layoutNode(scene)
    return layout is not None and bool(layout.GetAttribute(SAVED_VIEWS_ATTRIBUTE))


def rememberViews(scene: Any) -> bool:
    """Store the current views unless a state is already remembered (so a second run keeps the user's
    own, not the module's). Returns True if it stored one; False without a layout node (batch)."""
    layout = _layoutNode(scene)
    if layout is None or hasRememberedViews(scene):
        return False
    layout.SetAttribute(SAVED_VIEWS_ATTRIBUTE, json.dumps(viewState(scene)))
    return True


def rememberedViews(scene: Any) -> dict[str, Any] | None:
    layout = _layoutNode(scene)
    text = layout.GetAttribute(SAVED_VIEWS_ATTRIBUTE) if layout is not None else None
    return json.loads(text) if text else None


def restoreViews(scene: Any) -> bool:
    """Put back the remembered layout and views and forget them; False when nothing was remembered.

    A volume that was removed from the scene since is shown as nothing.
    """
    state = rememberedViews(scene)
    if state is None:
        return False
    slices, composites = sliceNodes(scene), compositeNodes(scene)
    for name, view in state["views"].items():
        if name in composites and "background" in view:
            c = composites[name]
            c.SetLinkedControl(False)  # no propagation to other linked views while restoring
            for setter, key in ((c.SetBackgroundVolumeID, "background"), (c.SetForegroundVolumeID, "foreground"),
                                (c.SetLabelVolumeID, "label")):
                nodeID = view[key]
                setter(nodeID if nodeID and scene.GetNodeByID(nodeID) is not None else None)
            c.SetForegroundOpacity(view["foregroundOpacity"])
            c.SetLabelOpacity(view["labelOpacity"])
            c.SetHotLinkedControl(view["hotLinkedControl"])
        if name in slices and "sliceToRAS" in view:
            s = slices[name]
            wasModifying = s.StartModify()
            s.GetSliceToRAS().DeepCopy(view["sliceToRAS"])
            s.SetFieldOfView(*view["fieldOfView"])
            s.SetXYZOrigin(*view["xyzOrigin"])
            s.UpdateMatrices()
            s.EndModify(wasModifying)
    for name, view in state["views"].items():
        if name in composites and "linkedControl" in view:
            composites[name].SetLinkedControl(view["linkedControl"])
    layout = _layoutNode(scene)
    if state["layout"] is not None:
        layout.SetViewArrangement(state["layout"])
    layout.RemoveAttribute(SAVED_VIEWS_ATTRIBUTE)
    return True
