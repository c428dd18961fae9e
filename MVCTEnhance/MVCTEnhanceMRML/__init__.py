"""MRML side of the MVCT Enhance module: volume nodes <-> engine Volumes, output nodes, display, views.

Imports only Slicer's MRML classes, vtk and MVCTEnhanceLib (no Qt, no ScriptedLoadableModule), so it
runs in batch mode without a main window and is tested with pytest on slicer-core's real MRML scene.
Functions follow Slicer's camelCase naming.
"""

from .display import (OUTSIDE_BODY_VALUE, colorLegendOf, colorNodeForMap, setOverlayMap, setOverlayOpacity,
                      setupComparisonViews, showOverlay)
from .logic import OVERLAY_CHOICES, EnhanceOutputs, JobResults, createOutputNodes, enhanceVolumeNode
from .metricstable import tableRows
from .nodes import (ATTRIBUTE_PREFIX, checkScalarVolumeNode, fillVolumeNode, geometryFromNode, nodeFingerprint,
                    volumeFromNode)

__all__ = [
    "ATTRIBUTE_PREFIX", "OUTSIDE_BODY_VALUE", "OVERLAY_CHOICES", "EnhanceOutputs", "JobResults",
    "checkScalarVolumeNode", "colorLegendOf", "colorNodeForMap", "createOutputNodes", "enhanceVolumeNode",
    "fillVolumeNode", "geometryFromNode", "nodeFingerprint", "setOverlayMap", "setOverlayOpacity",
    "setupComparisonViews", "showOverlay", "tableRows", "volumeFromNode",
]
