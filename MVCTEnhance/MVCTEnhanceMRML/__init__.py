"""MRML side of the MVCT Enhance module: volume nodes <-> engine Volumes, output nodes, display, views.

Imports only Slicer's MRML classes, vtk and MVCTEnhanceLib (no Qt, no ScriptedLoadableModule), so it
runs in batch mode without a main window and is tested with pytest on slicer-core's real MRML scene.
Functions follow Slicer's camelCase naming.
"""

from .display import colorNodeForMap, setOverlayMap, setOverlayOpacity, setupComparisonViews
from .logic import OVERLAY_CHOICES, EnhanceOutputs, enhanceVolumeNode
from .metricstable import tableRows
from .nodes import (ATTRIBUTE_PREFIX, checkScalarVolumeNode, fillVolumeNode, geometryFromNode, nodeFingerprint,
                    volumeFromNode)

__all__ = [
    "ATTRIBUTE_PREFIX", "OVERLAY_CHOICES", "EnhanceOutputs", "checkScalarVolumeNode", "colorNodeForMap",
    "enhanceVolumeNode", "fillVolumeNode", "geometryFromNode", "nodeFingerprint", "setOverlayMap",
    "setOverlayOpacity", "setupComparisonViews", "tableRows", "volumeFromNode",
]
