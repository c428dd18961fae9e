"""Volume nodes <-> engine Volumes, and the checks that keep a wrong node out of the engine.

Slicer keeps geometry in RAS (IJKToRAS); the engine, like ITK and DICOM, works in LPS. The two differ
by the sign of the first two world axes, so the conversion flips the first two rows of the direction
matrix and the first two origin coordinates: exact in floating point, so a round trip is bit-identical.
The voxel array of a volume node is (k, j, i) in numpy order, which is the engine's order too.

Imports only MRML classes, vtk and the engine: this file runs (and is tested) without Qt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from MVCTEnhanceLib.engine.errors import InputError
from MVCTEnhanceLib.engine.volume import Volume

#: Prefix of every attribute this module writes on nodes.
ATTRIBUTE_PREFIX = "MVCTEnhance."

_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])


def nodeDescription(node: Any) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the selected node"


def checkScalarVolumeNode(node: Any, role: str = "input MVCT") -> None:
    """Raise InputError unless ``node`` is a 3D, single-component scalar volume with voxels.

    Label maps are scalar volumes in MRML's class tree but hold labels, not HU, so they are refused
    by class; segmentations, RGB/vector volumes and 2D images are refused with what to do instead.
    """
    if node is None:
        raise InputError(f"no {role} selected: choose a CT volume in HU")
    className = node.GetClassName()
    if node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"{nodeDescription(node)} is a segmentation, not an image: select the {role} CT volume")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{nodeDescription(node)} is a label map, not a CT image: select the {role} CT volume "
                         "(in HU) instead")
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"{nodeDescription(node)} ({className}) is not a volume: select the {role} CT volume")
    if (not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode")
            or node.IsA("vtkMRMLTensorVolumeNode")):
        # RGB/vector and tensor volumes derive from the scalar volume class in MRML: refuse by class.
        raise InputError(f"{nodeDescription(node)} is a {className.replace('vtkMRML', '').replace('Node', '')} "
                         f"(vector, RGB or tensor image): the {role} must be a scalar CT volume in HU")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{nodeDescription(node)} has no voxels loaded")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise InputError(f"{nodeDescription(node)} has {components} components per voxel (RGB or vector image); "
                         f"the {role} must be a single-component CT volume in HU")
    dims = image.GetDimensions()
    if min(dims) < 1 or 0 in dims:
        raise InputError(f"{nodeDescription(node)} is empty (dimensions {dims})")
    if sum(1 for d in dims if d > 1) < 3:
        raise InputError(f"{nodeDescription(node)} is a {sum(1 for d in dims if d > 1)}D image "
                         f"(dimensions {dims[0]}x{dims[1]}x{dims[2]}); MVCT Enhance needs a 3D volume with "
                         "several slices in every direction")


def geometryFromNode(node: Any) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing i,j,k; origin LPS; direction row-major LPS) of a volume node, ITK conventions."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    directionRAS = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)], dtype=np.float64)
    directionLPS = _LPS_FLIP @ directionRAS
    originRAS = np.array(node.GetOrigin(), dtype=np.float64)
    originLPS = _LPS_FLIP @ originRAS
    spacing = tuple(float(s) for s in node.GetSpacing())
    return spacing, tuple(originLPS.tolist()), tuple(directionLPS.ravel().tolist())


def volumeFromNode(node: Any, role: str = "input MVCT") -> Volume:
    """A copy of the node's voxels (float32) and geometry as an engine Volume; the node is not touched."""
    checkScalarVolumeNode(node, role)
    image = node.GetImageData()
    dims = image.GetDimensions()  # (i, j, k)
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array = np.array(voxels.reshape(dims[2], dims[1], dims[0]), dtype=np.float32, copy=True)
    spacing, origin, direction = geometryFromNode(node)
    return Volume(array, spacing, origin, direction, 3, {"source": f"MRML node {node.GetID()} ({node.GetName()})"})


def setNodeGeometry(node: Any, volume: Volume) -> None:
    """Set spacing, origin and IJK-to-RAS directions of ``node`` from an LPS volume."""
    directionRAS = _LPS_FLIP @ volume.direction_matrix
    originRAS = _LPS_FLIP @ np.asarray(volume.origin, dtype=np.float64)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(directionRAS[r, c]))
    node.SetIJKToRASDirectionMatrix(matrix)
    node.SetSpacing(*volume.spacing)
    node.SetOrigin(*(float(v) for v in originRAS))


def setNodeVoxels(node: Any, array: np.ndarray) -> None:
    """Deep-copy a (k, j, i) float32 array into the node's image data (a new vtkImageData)."""
    data = np.ascontiguousarray(array, dtype=np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(data.shape[2], data.shape[1], data.shape[0])
    vtkArray = numpy_support.numpy_to_vtk(data.ravel(), deep=True, array_type=vtk.VTK_FLOAT)
    vtkArray.SetNumberOfComponents(1)
    image.GetPointData().SetScalars(vtkArray)
    node.SetAndObserveImageData(image)


def fillVolumeNode(node: Any, volume: Volume) -> None:
    """Voxels and geometry of ``volume`` into an existing scalar volume node."""
    setNodeGeometry(node, volume)
    setNodeVoxels(node, volume.array)


def nodeFingerprint(node: Any) -> tuple:
    """What must not change on an input node: voxels digest, geometry, name, transform, modified time."""
    import hashlib

    image = node.GetImageData()
    digest = ""
    if image is not None and image.GetPointData().GetScalars() is not None:
        digest = hashlib.sha256(numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).tobytes()).hexdigest()
    return (digest, geometryFromNode(node), node.GetName(), node.GetTransformNodeID(), node.GetMTime(),
            image.GetMTime() if image is not None else None)
