"""The one blocking call behind the Enhance button, the Python console and the self-test.

    outputs = enhanceVolumeNode(scene, mvctNode, modelPath, planningNode=ctNode)

reads the MVCT node (never writes it), runs the engine's enhance job (``MVCTEnhanceLib.engine.job
.run_enhance``: the same code as the command line and the evaluation) and only then creates the new
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
from MVCTEnhanceLib.engine.files import json_default
from MVCTEnhanceLib.engine.job import EnhanceSettings
from MVCTEnhanceLib.engine.settings import ShouldCancel

from . import display
from .metricstable import fillTableNode, summaryRows
from .models import checkSHA256, unverifiedWarning
from .registration import applyRegistration, checkRegistrable
from .nodes import ATTRIBUTE_PREFIX, checkScalarVolumeNode, fillVolumeNode, nodeDescription, volumeFromNode

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]  # (fraction 0..1, what is running)
OVERLAY_CHOICES = display.OVERLAY_CHOICES  # ("nselfssim", "dig", "tissuechange", "none")
#: Map name -> node name suffix and EnhanceOutputs field.
MAP_NODES = {"dig": ("DIG", "digVolume"), "nselfssim": ("NSelfSSIM", "nselfssimVolume"),
             "tissuechange": ("tissue change", "tissueChangeVolume")}


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
    report: dict[str, Any]  # engine.job.Outcome.report(), with the nodes' names and IDs
    tissueChangeVolume: Any | None = None
    registrationTransform: Any | None = None  # MVCT -> planning CT (rigid), when registration was asked

    def nodes(self) -> list[Any]:
        return [n for n in (self.enhancedVolume, self.digVolume, self.nselfssimVolume, self.tissueChangeVolume,
                            self.resultsTable) if n is not None]

    def mapNode(self, which: str) -> Any | None:
        """The node of map 'dig', 'nselfssim' or 'tissuechange' (None for 'none' or when not computed)."""
        return getattr(self, MAP_NODES[which][1]) if which in MAP_NODES else None


@dataclasses.dataclass
class JobResults:
    """What the output nodes are made from, whichever way the job ran: in this process (the engine's
    ``Outcome``, :func:`resultsFromOutcome`) or in a background process (its output files and report,
    ``runner.resultsFromFiles``). Both paths then make the nodes with :func:`createOutputNodes`."""

    result: Any                       # the enhanced engine Volume
    maps: dict[str, Any]              # "dig", "nselfssim", "tissuechange" -> engine Volume (empty: not assessed)
    mask: Any                         # the body mask the maps were summarised in (None: not assessed)
    metrics: dict[str, Any]           # engine.job.Outcome.metrics
    details: dict[str, Any]           # {"mvct": summaries[, "planning_ct": summaries]} for the table's attribute
    warnings: list[str]
    model: dict[str, str]             # name, version, sha256, not_for_diagnosis
    seconds: float
    report: dict[str, Any]
    parameters: dict[str, Any]
    registration: dict[str, Any] | None = None  # engine.registration.RigidTransform.to_dict()


def resultsFromOutcome(outcome: Any, report: dict[str, Any], parameters: dict[str, Any]) -> JobResults:
    a = outcome.assessment
    maps = {}
    details: dict[str, Any] = {}
    if a is not None:
        maps = {"dig": a.dig, "nselfssim": a.nselfssim_output, "tissuechange": a.tissue_change}
        maps = {k: v for k, v in maps.items() if v is not None}
        details["mvct"] = a.summaries
        if outcome.planning_assessment is not None:
            details["planning_ct"] = outcome.planning_assessment.summaries
    card = outcome.model.card
    return JobResults(outcome.result, maps, a.mask if a is not None else None, outcome.metrics, details,
                      list(outcome.warnings), modelInfo(card, outcome.model.sha256), outcome.enhanced.seconds,
                      report, parameters, report.get("registration"))


def modelInfo(card: Any, sha256: str) -> dict[str, str]:
    return {"name": card.name, "version": card.version, "sha256": sha256, "not_for_diagnosis": card.not_for_diagnosis}


STAGE_MESSAGES = {"register": "Registering the MVCT to the planning CT", "enhance": "Enhancing slices",
                  "metrics": "Computing DIG and NSelfSSIM", "planning": "NSelfSSIM of the planning CT"}
STAGE_WEIGHTS = {"register": 0.1, "enhance": 0.5, "metrics": 0.4, "planning": 0.1}


def jobStages(settings: EnhanceSettings, planning: bool, register: bool) -> list[str]:
    """The stages a job reports, in order."""
    return [s for s in STAGE_WEIGHTS if (s == "register" and register) or s == "enhance"
            or (settings.assess and (s == "metrics" or (s == "planning" and planning)))]


class _Stages:
    """Maps the job's (stage, done, total) onto one 0..1 progress with a message."""

    def __init__(self, progress: ProgressFn | None, stages: list[str]) -> None:
        self.progress = progress
        total = sum(STAGE_WEIGHTS[s] for s in stages)
        self.spans: dict[str, tuple[float, float]] = {}
        start = 0.0
        for name in stages:
            self.spans[name] = (start / total, STAGE_WEIGHTS[name] / total)
            start += STAGE_WEIGHTS[name]

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            start, span = self.spans[stage]
            self.progress(start + span * (done / total if total else 1.0), STAGE_MESSAGES[stage])

    def done(self, message: str) -> None:
        if self.progress is not None:
            self.progress(1.0, message)


def enhanceVolumeNode(scene: Any, inputNode: Any, modelPath: str | os.PathLike | Any, *,
                      planningNode: Any = None, settings: EnhanceSettings | None = None,
                      overlayMap: str = "nselfssim", overlayOpacity: float = 0.5,
                      progress: ProgressFn | None = None, shouldCancel: ShouldCancel | None = None,
                      layoutHook: Callable[[Any], None] | None = None, models: Any = None,
                      register: bool = False, **settingsOverrides: Any) -> EnhanceOutputs:
    """Convert ``inputNode`` (MVCT, HU) with ``engine.job.run_enhance`` and add the enhanced volume,
    quality maps and results table.

    ``modelPath`` is a model file (or an already loaded ``LoadedModel``). ``settings`` are the job's
    (:class:`EnhanceSettings`); the module's parameter names are accepted as overrides
    (``device``, ``batchSize``, ``precision``, ``computeMetrics``, ``noiseSD``, ``nselfssimWindow``,
    ``seed``). With ``models`` (a :class:`models.ModelLibrary`) the model file's sha256 must be the one
    its list records (ModelError otherwise), and a file outside the lists runs with a warning that it
    is unverified. ``register``: register the MVCT rigidly to the planning CT first
    (``engine.registration``); the transform becomes a linear transform node that the MVCT and the
    outputs observe. Raises :class:`MVCTEnhanceLib.engine.errors.MVCTEnhanceError` subclasses for anything
    the user can fix; :class:`EnhanceCancelled` when ``shouldCancel()`` returned True. Either way
    no node is left behind.
    """
    from MVCTEnhanceLib.engine.job import run_enhance
    from MVCTEnhanceLib.engine.modelfile import LoadedModel, load_model

    settings = settingsFromParameters(settings, **settingsOverrides)
    overlayMap = checkJobInputs(scene, inputNode, planningNode, overlayMap, settings, register)
    if isinstance(modelPath, LoadedModel):
        loaded = modelPath
    else:
        if modelPath is None or not str(modelPath).strip() or str(modelPath).strip() == ".":
            raise ModelError("no model file selected: choose a model file (.pt)")
        expected = models.expectedSHA256(modelPath) if models is not None else None
        loaded = load_model(modelPath)
        checkSHA256(modelPath, loaded.sha256, expected)

    mvct = volumeFromNode(inputNode, "input MVCT")
    planning = volumeFromNode(planningNode, "planning CT") if planningNode is not None else None
    stages = _Stages(progress, jobStages(settings, planning is not None, register))
    registration = None
    if register:
        from MVCTEnhanceLib.engine.registration import register_rigid

        stages("register", 0, 1)
        registration = register_rigid(planning, mvct).to_dict()
        stages("register", 1, 1)
        if shouldCancel is not None and shouldCancel():
            raise EnhanceCancelled("cancelled after the registration; nothing was created")
    outcome = run_enhance(mvct, loaded, planning, settings, stages, shouldCancel)
    if models is not None and models.expectedSHA256(loaded.path) is None:
        outcome.warnings.append(unverifiedWarning(loaded.path))
    if shouldCancel is not None and shouldCancel():
        raise EnhanceCancelled("cancelled before the results were added to the scene; nothing was created")

    report = nodeReport(outcome.report(), inputNode, planningNode)
    if registration is not None:
        report["registration"] = registration
    parameters = runParameters(report, inputNode, planningNode, settings)
    outputs = createOutputNodes(scene, inputNode, planningNode, resultsFromOutcome(outcome, report, parameters),
                                overlayMap, overlayOpacity, layoutHook)
    for w in outcome.warnings:
        log.warning(w)
    stages.done("Done")
    return outputs


def checkJobInputs(scene: Any, inputNode: Any, planningNode: Any, overlayMap: str, settings: EnhanceSettings,
                   register: bool = False) -> str:
    """Refuse what cannot run (InputError) before any work; returns the overlay to show."""
    if scene is None:
        raise InputError("no MRML scene given")
    overlayMap = (overlayMap or "none").lower()
    if overlayMap not in OVERLAY_CHOICES:
        raise InputError(f"overlay map '{overlayMap}' is not one of {', '.join(OVERLAY_CHOICES)}")
    if overlayMap != "none" and not settings.assess:
        overlayMap = "none"
    checkScalarVolumeNode(inputNode, "input MVCT")
    if planningNode is not None:
        checkScalarVolumeNode(planningNode, "planning CT")
        if planningNode is inputNode:
            raise InputError("the planning CT and the input MVCT are the same node: select the planning kV CT, "
                             "or no planning CT")
    if register:
        checkRegistrable(scene, inputNode, planningNode)
    return overlayMap


def nodeReport(report: dict[str, Any], inputNode: Any, planningNode: Any) -> dict[str, Any]:
    """The job's report with the nodes' names and IDs (what only Slicer knows)."""
    report = dict(report)
    report["input"] = {"node": inputNode.GetName(), "id": inputNode.GetID(), **report["input"]}
    if planningNode is not None:
        report["planning_ct"] = {"node": planningNode.GetName(), "id": planningNode.GetID(), **report["planning_ct"]}
    return report


def runParameters(report: dict[str, Any], inputNode: Any, planningNode: Any, settings: EnhanceSettings) -> dict[str, Any]:
    """The 'Parameters' attribute of the output nodes, from the job's report."""
    return {
        "input": {"node": inputNode.GetName(), "id": inputNode.GetID()},
        "planning": {"node": planningNode.GetName(), "id": planningNode.GetID()} if planningNode is not None else None,
        "model_path": str(report["model"]["path"]),
        "requested_device": settings.device,
        "enhance": report["parameters"],
        "metrics": (report.get("metrics") or {}).get("parameters"),
    }


def settingsFromParameters(settings: EnhanceSettings | None = None, *, device: str | None = None,
                           batchSize: int | None = None, precision: str | None = None,
                           computeMetrics: bool | None = None, noiseSD: float | None = None,
                           nselfssimWindow: tuple[float, float] | None = None, seed: int | None = None) -> EnhanceSettings:
    """The job's settings with the module's parameters (None: keep the setting; batch size 0: the device's default)."""
    settings = settings or EnhanceSettings()
    metricChanges = {k: v for k, v in (("noise_sd", noiseSD), ("window", nselfssimWindow), ("seed", seed))
                     if v is not None}
    changes: dict[str, Any] = {k: v for k, v in (("device", device), ("precision", precision),
                                                 ("assess", computeMetrics)) if v is not None}
    if batchSize is not None:
        changes["batch_size"] = int(batchSize) or None
    if metricChanges:
        changes["metrics"] = dataclasses.replace(settings.metrics, **metricChanges)
    return dataclasses.replace(settings, **changes)


def createOutputNodes(scene: Any, inputNode: Any, planningNode: Any, results: JobResults, overlayMap: str = "nselfssim",
                      overlayOpacity: float = 0.5, layoutHook: Callable[[Any], None] | None = None) -> EnhanceOutputs:
    """The enhanced volume, the body-masked maps and the table from ``results``, then the views.

    All or nothing: an error while making them removes every node this call added.
    """
    before = _nodeIDs(scene)
    inputTransformID = inputNode.GetTransformNodeID()
    try:
        name = inputNode.GetName() or "MVCT"
        enhanced = _newVolume(scene, f"{name} enhanced", inputNode, results.result)
        display.showEnhanced(scene, enhanced)
        mapNodes: dict[str, Any] = {}
        for which, volume in results.maps.items():
            node = _newVolume(scene, f"{name} {MAP_NODES[which][0]}", inputNode, display.maskedMap(volume, results.mask))
            node.SetAttribute(ATTRIBUTE_PREFIX + "Role", which)
            node.SetAttribute(ATTRIBUTE_PREFIX + "EnhancedVolumeID", enhanced.GetID())
            display.showMap(scene, node, which, volume.array, results.mask)
            mapNodes[which] = node
        table = None
        if results.maps:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} quality metrics"))
            fillTableNode(table, summaryRows(results.metrics), results.details)
        outputs = EnhanceOutputs(enhanced, mapNodes.get("dig"), mapNodes.get("nselfssim"), table,
                                 list(results.warnings), results.parameters, results.seconds, results.report,
                                 tissueChangeVolume=mapNodes.get("tissuechange"))
        roles = {"enhanced": enhanced, **mapNodes, "metrics": table}
        for role, node in roles.items():
            if node is not None:
                _annotate(node, role, inputNode, results.model, results.warnings, results.parameters)
        enhanced.SetAttribute(ATTRIBUTE_PREFIX + "Report", json.dumps(results.report, default=json_default))
        presetDicomExport(scene, enhanced, results.model)
        _placeBesideInput(scene, inputNode, outputs.nodes())
        if results.registration is not None:  # the one change to the input node: its transform
            outputs.registrationTransform = applyRegistration(scene, inputNode, planningNode, results.registration,
                                                              outputs.nodes())
        reference = planningNode if planningNode is not None else inputNode
        display.setupComparisonViews(scene, enhanced, mapNodes.get(overlayMap), reference, overlayOpacity, layoutHook)
        return outputs
    except BaseException:
        if inputNode.GetTransformNodeID() != inputTransformID:
            inputNode.SetAndObserveTransformNodeID(inputTransformID)
        _removeNewNodes(scene, before)
        raise


def _newVolume(scene: Any, name: str, inputNode: Any, volume: Any) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    fillVolumeNode(node, volume)
    node.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())  # overlay the input wherever it is
    return node


def _annotate(node: Any, role: str, inputNode: Any, model: dict[str, str], warnings: list[str],
              parameters: dict[str, Any]) -> None:
    from MVCTEnhanceLib.engine.version import __version__

    attributes = {
        "Role": role,
        "SourceVolumeID": inputNode.GetID(),
        "SourceVolumeName": inputNode.GetName(),
        "ModelName": model["name"],
        "ModelVersion": model["version"],
        "ModelSHA256": model["sha256"],
        "EngineVersion": __version__,
        "Parameters": json.dumps(parameters, default=str),
        "Warnings": json.dumps(warnings),
    }
    if role == "enhanced":
        attributes["NotForDiagnosis"] = model["not_for_diagnosis"]
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


#: Series tags the DICOM module's export dialog starts from for the enhanced volume (subject hierarchy
#: attributes "DICOM.<tag>": the dialog reads them), so an export says what the image is.
DICOM_EXPORT_TAGS = {"SeriesDescription": "MVCT Enhance kV-like CT - NOT FOR DIAGNOSIS", "Modality": "CT",
                     "Manufacturer": "MVCT Enhance (research software)"}


def presetDicomExport(scene: Any, node: Any, model: dict[str, str]) -> None:
    """Pre-fill Slicer's DICOM export of ``node`` (Export to DICOM...): description, modality, model."""
    import slicer

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return
    # The application gives every data node an item; a scene without the GUI (batch) may not have one yet.
    item = shNode.GetItemByDataNode(node) or shNode.CreateItem(shNode.GetSceneItemID(), node)
    prefix = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMAttributePrefix()
    tags = {**DICOM_EXPORT_TAGS, "Model": f"{model['name']} {model['version']}"[:64]}
    for tag, value in tags.items():
        shNode.SetItemAttribute(item, prefix + tag, value)


def _nodeIDs(scene: Any) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _removeNewNodes(scene: Any, before: set[str]) -> None:
    for nodeID in sorted(_nodeIDs(scene) - before):
        node = scene.GetNodeByID(nodeID)
        if node is not None:
            scene.RemoveNode(node)


def describeNode(node: Any) -> str:
    return nodeDescription(node)
