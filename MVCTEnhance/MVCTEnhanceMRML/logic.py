"""The one blocking call behind the Enhance button, the Python console and the self-test.

    outputs = enhanceVolumeNode(scene, mvctNode, modelPath, planningNode=ctNode)

reads the MVCT node (never writes it), converts it with ``MVCTEnhanceLib.engine.inference.enhance``,
computes the quality maps with ``MVCTEnhanceLib.engine.metrics.assess`` and only then creates the new
nodes. A cancel or an error before that point leaves the scene exactly as it was; an error while
creating nodes removes every node the call added.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

from MVCTEnhanceLib.engine.errors import EnhanceCancelled, InputError, ModelError

from . import display
from .metricstable import fillTableNode, summaryRows
from .nodes import ATTRIBUTE_PREFIX, checkScalarVolumeNode, fillVolumeNode, nodeDescription, volumeFromNode

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]  # (fraction 0..1, what is running)
CancelFn = Callable[[], bool]
OVERLAY_CHOICES = ("nselfssim", "dig", "none")


@dataclasses.dataclass
class EnhanceOutputs:
    """The nodes one run created, and what the engine said about it."""

    enhancedVolume: Any
    digVolume: Any | None
    nselfssimVolume: Any | None
    resultsTable: Any | None
    warnings: list[str]
    parameters: dict[str, Any]
    seconds: float

    def nodes(self) -> list[Any]:
        return [n for n in (self.enhancedVolume, self.digVolume, self.nselfssimVolume, self.resultsTable) if n is not None]


class _Stages:
    """Maps each engine stage's (done, total) onto one 0..1 progress with a message."""

    def __init__(self, progress: ProgressFn | None, weights: dict[str, float]) -> None:
        self.progress = progress
        total = sum(weights.values())
        self.spans: dict[str, tuple[float, float]] = {}
        start = 0.0
        for name, weight in weights.items():
            self.spans[name] = (start / total, weight / total)
            start += weight

    def callback(self, name: str, message: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        start, span = self.spans[name]

        def report(done: int, total: int) -> None:
            self.progress(start + span * (done / total if total else 1.0), message)

        return report

    def done(self, message: str) -> None:
        if self.progress is not None:
            self.progress(1.0, message)


def enhanceVolumeNode(scene: Any, inputNode: Any, modelPath: str | os.PathLike | Any, *,
                      planningNode: Any = None, device: str = "auto", batchSize: int = 0,
                      precision: str = "auto", computeMetrics: bool = True, noiseSD: float = 20.0,
                      nselfssimWindow: tuple[float, float] = (-160.0, 240.0), seed: int = 0,
                      overlayMap: str = "nselfssim", overlayOpacity: float = 0.5,
                      progress: ProgressFn | None = None, shouldCancel: CancelFn | None = None,
                      layoutHook: Callable[[Any], None] | None = None) -> EnhanceOutputs:
    """Convert ``inputNode`` (MVCT, HU) and add the enhanced volume, quality maps and results table.

    ``modelPath`` is a model file (or an already loaded ``LoadedModel``). Raises
    :class:`MVCTEnhanceLib.engine.errors.MVCTEnhanceError` subclasses for anything the user can fix;
    :class:`EnhanceCancelled` when ``shouldCancel()`` returned True. Either way no node is left behind.
    """
    from MVCTEnhanceLib.engine.inference import enhance
    from MVCTEnhanceLib.engine.modelfile import LoadedModel, load_model

    if scene is None:
        raise InputError("no MRML scene given")
    overlayMap = (overlayMap or "none").lower()
    if overlayMap not in OVERLAY_CHOICES:
        raise InputError(f"overlay map '{overlayMap}' is not one of {', '.join(OVERLAY_CHOICES)}")
    if overlayMap != "none" and not computeMetrics:
        overlayMap = "none"
    checkScalarVolumeNode(inputNode, "input MVCT")
    if planningNode is not None:
        checkScalarVolumeNode(planningNode, "planning CT")
        if planningNode is inputNode:
            raise InputError("the planning CT and the input MVCT are the same node: select the planning kV CT, "
                             "or no planning CT")
    if isinstance(modelPath, LoadedModel):
        loaded = modelPath
    else:
        if modelPath is None or not str(modelPath).strip() or str(modelPath).strip() == ".":
            raise ModelError("no model file selected: choose a model file (.pt)")
        loaded = load_model(modelPath)

    mvct = volumeFromNode(inputNode, "input MVCT")
    planning = volumeFromNode(planningNode, "planning CT") if planningNode is not None else None

    weights = {"enhance": 0.5}
    if computeMetrics:
        weights["metrics"] = 0.4
        if planning is not None:
            weights["planning"] = 0.1
    stages = _Stages(progress, weights)

    result = enhance(mvct, loaded, device=device, batch_size=int(batchSize) or None, precision=precision,
                     progress=stages.callback("enhance", "Enhancing slices"), should_cancel=shouldCancel)
    assessment = planningAssessment = None
    if computeMetrics:
        from MVCTEnhanceLib.engine.metrics import assess

        metricArgs = dict(noise_sd=float(noiseSD), window=(float(nselfssimWindow[0]), float(nselfssimWindow[1])),
                          seed=int(seed), device=device, should_cancel=shouldCancel)
        assessment = assess(mvct, result.volume, progress=stages.callback("metrics", "Computing DIG and NSelfSSIM"),
                            **metricArgs)
        if planning is not None:
            planningAssessment = assess(planning, None, progress=stages.callback("planning", "NSelfSSIM of the planning CT"),
                                        **metricArgs)
    if shouldCancel is not None and shouldCancel():
        raise EnhanceCancelled("cancelled before the results were added to the scene; nothing was created")

    warnings = list(result.warnings)
    card = loaded.card
    if "untrained" in json.dumps(card.training_data).lower() or "test" in card.intended_use.lower().split():
        warnings.insert(0, f"model '{card.name}' is an untrained test model: its output is not a kV-like image")
    parameters = {
        "input": {"node": inputNode.GetName(), "id": inputNode.GetID()},
        "planning": {"node": planningNode.GetName(), "id": planningNode.GetID()} if planningNode is not None else None,
        "model_path": str(loaded.path),
        "requested_device": device,
        "enhance": result.parameters,
        "metrics": assessment.summaries.get("parameters") if assessment is not None else None,
    }

    outputs = _createNodes(scene, inputNode, planningNode, result, assessment, planningAssessment, loaded,
                           warnings, parameters, overlayMap, overlayOpacity, layoutHook)
    for w in warnings:
        log.warning(w)
    stages.done("Done")
    return outputs


def _createNodes(scene: Any, inputNode: Any, planningNode: Any, result: Any, assessment: Any,
                 planningAssessment: Any, loaded: Any, warnings: list[str], parameters: dict[str, Any],
                 overlayMap: str, overlayOpacity: float, layoutHook: Callable[[Any], None] | None) -> EnhanceOutputs:
    before = _nodeIDs(scene)
    try:
        name = inputNode.GetName() or "MVCT"
        enhanced = _newVolume(scene, f"{name} enhanced", inputNode, result.volume)
        display.showEnhanced(scene, enhanced)
        digNode = nssNode = table = None
        if assessment is not None:
            digNode = _newVolume(scene, f"{name} DIG", inputNode, assessment.dig)
            display.showMap(scene, digNode, "dig", assessment.dig.array, assessment.mask)
            nssNode = _newVolume(scene, f"{name} NSelfSSIM", inputNode, assessment.nselfssim_output)
            display.showMap(scene, nssNode, "nselfssim", assessment.nselfssim_output.array, assessment.mask)
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} quality metrics"))
            planningSummary = None
            details = {"mvct": assessment.summaries}
            if planningAssessment is not None:
                planningSummary = planningAssessment.summaries["nselfssim"]["input"]
                details["planning_ct"] = planningAssessment.summaries
            fillTableNode(table, summaryRows(assessment.summaries, planningSummary), details)
        outputs = EnhanceOutputs(enhanced, digNode, nssNode, table, warnings, parameters, result.seconds)
        roles = {"enhanced": enhanced, "dig": digNode, "nselfssim": nssNode, "metrics": table}
        for role, node in roles.items():
            if node is not None:
                _annotate(node, role, inputNode, loaded, warnings, parameters)
        _placeBesideInput(scene, inputNode, outputs.nodes())
        overlay = {"nselfssim": nssNode, "dig": digNode}.get(overlayMap)
        reference = planningNode if planningNode is not None else inputNode
        display.setupComparisonViews(scene, enhanced, overlay, reference, overlayOpacity, layoutHook)
        return outputs
    except BaseException:
        _removeNewNodes(scene, before)
        raise


def _newVolume(scene: Any, name: str, inputNode: Any, volume: Any) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    fillVolumeNode(node, volume)
    node.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())  # overlay the input wherever it is
    return node


def _annotate(node: Any, role: str, inputNode: Any, loaded: Any, warnings: list[str], parameters: dict[str, Any]) -> None:
    from MVCTEnhanceLib.engine.version import __version__

    card = loaded.card
    attributes = {
        "Role": role,
        "SourceVolumeID": inputNode.GetID(),
        "SourceVolumeName": inputNode.GetName(),
        "ModelName": card.name,
        "ModelVersion": card.version,
        "ModelSHA256": loaded.sha256,
        "EngineVersion": __version__,
        "Parameters": json.dumps(parameters, default=str),
        "Warnings": json.dumps(warnings),
    }
    if role == "enhanced":
        attributes["NotForDiagnosis"] = card.not_for_diagnosis
    for key, value in attributes.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))


def _placeBesideInput(scene: Any, inputNode: Any, nodes: list[Any]) -> None:
    """Put the outputs in the input's subject hierarchy folder (study), where users look for them."""
    shNode = scene.GetSubjectHierarchyNode() if hasattr(scene, "GetSubjectHierarchyNode") else None
    if shNode is None:
        return
    inputItem = shNode.GetItemByDataNode(inputNode)
    if not inputItem:
        return
    parent = shNode.GetItemParent(inputItem)
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item and parent:
            shNode.SetItemParent(item, parent)


def _nodeIDs(scene: Any) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _removeNewNodes(scene: Any, before: set[str]) -> None:
    for nodeID in sorted(_nodeIDs(scene) - before):
        node = scene.GetNodeByID(nodeID)
        if node is not None:
            scene.RemoveNode(node)


def describeNode(node: Any) -> str:
    return nodeDescription(node)
