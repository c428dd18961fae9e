"""The MVCT-to-planning-CT registration as an MRML linear transform node.

The engine (``MVCTEnhanceLib.engine.registration``) works in LPS; Slicer's transforms are in RAS.
With F = diag(-1, -1, 1, 1), the node's matrix (to parent) is ``F @ M_lps @ F``. The node is made a
child of the planning CT's own transform (if any), so the MVCT lands on the planning CT wherever that
is shown, and the MVCT and every output of the run observe it. The MVCT's transform is the one thing
a registered run changes on the input node: it is refused when the MVCT already sits under another
transform (the user's own), and reused when it is the transform of an earlier registration.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import vtk

from MVCTEnhanceLib.engine.errors import InputError
from MVCTEnhanceLib.engine.registration import RigidTransform

from .nodes import ATTRIBUTE_PREFIX, nodeDescription

ROLE = "registration"
_F = np.diag([-1.0, -1.0, 1.0, 1.0])


def rasMatrix(matrixLPS: Any) -> vtk.vtkMatrix4x4:
    """A vtkMatrix4x4 (RAS) from a 4x4 LPS matrix."""
    m = _F @ np.asarray(matrixLPS, dtype=np.float64) @ _F
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def lpsMatrix(transformNode: Any) -> np.ndarray:
    """The node's matrix to parent, in LPS (the engine's convention)."""
    m = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToParent(m)
    ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return _F @ ras @ _F


def isRegistrationTransform(node: Any) -> bool:
    return node is not None and node.GetAttribute(ATTRIBUTE_PREFIX + "Role") == ROLE


def checkRegistrable(scene: Any, inputNode: Any, planningNode: Any) -> None:
    """InputError when a registered run cannot be done: no planning CT, or the MVCT under a user's transform."""
    if planningNode is None:
        raise InputError("registration needs a planning CT: select one, or run without registration")
    parentID = inputNode.GetTransformNodeID()
    parent = scene.GetNodeByID(parentID) if parentID else None
    if parent is not None and not isRegistrationTransform(parent):
        raise InputError(f"the MVCT {nodeDescription(inputNode)} is under the transform {nodeDescription(parent)}: "
                         "registering would replace it. Harden or remove that transform first (Data module), "
                         "or run without registration")


def applyRegistration(scene: Any, inputNode: Any, planningNode: Any, record: dict[str, Any], nodes: list[Any]) -> Any:
    """Make (or update) the registration transform node from the engine's JSON record and make the
    MVCT and ``nodes`` observe it; returns the transform node."""
    transform = RigidTransform.from_dict(record)
    existing = scene.GetNodeByID(inputNode.GetTransformNodeID()) if inputNode.GetTransformNodeID() else None
    if isRegistrationTransform(existing):
        node = existing
    else:
        name = scene.GenerateUniqueName(f"{inputNode.GetName()} to {planningNode.GetName()} (rigid)")
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        node.SetAttribute(ATTRIBUTE_PREFIX + "Role", ROLE)
    node.SetMatrixTransformToParent(rasMatrix(transform.matrix))
    node.SetAndObserveTransformNodeID(planningNode.GetTransformNodeID())
    node.SetAttribute(ATTRIBUTE_PREFIX + "Registration", json.dumps(record))
    node.SetAttribute(ATTRIBUTE_PREFIX + "FixedVolumeID", planningNode.GetID())
    node.SetAttribute(ATTRIBUTE_PREFIX + "MovingVolumeID", inputNode.GetID())
    for target in [inputNode, *nodes]:
        if target is not None and hasattr(target, "SetAndObserveTransformNodeID"):
            target.SetAndObserveTransformNodeID(node.GetID())
    return node

