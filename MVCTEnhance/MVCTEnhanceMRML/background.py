"""The Enhance button's job, run in a separate process (``runner.BackgroundEnhance``), with the nodes.

    job = startEnhanceInBackground(scene, mvctNode, modelPath, runner, planningNode=ct, models=library)
    every 100-200 ms (the widget's QTimer):
        fraction, message, lines = job.poll()        # never blocks
        if job.state == "finished": outputs = job.finish(layoutHook)   # the nodes, as in-process
        if job.state == "failed": show(job.error)
    job.cancel()                                     # at once; the scene and the disk stay as they were

Inputs are checked and the model's sha256 verified before the process starts; the nodes are made
only from a complete job, by ``logic.createOutputNodes`` (the helper the in-process path uses), and
only after checking that the job used the verified model file. No Qt: tested on slicer-core.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from MVCTEnhanceLib.engine.errors import InputError, ModelError
from MVCTEnhanceLib.engine.job import EnhanceSettings

from .logic import (EnhanceOutputs, _Stages, checkJobInputs, createOutputNodes, jobStages,
                    nodeReport, runParameters, settingsFromParameters)
from .models import checkSHA256, unverifiedWarning
from .nodes import volumeFromNode
from .runner import BackgroundEnhance, BackgroundJobError


class BackgroundJob:
    """One Enhance of the module running in another process (see the module)."""

    def __init__(self, scene: Any, runner: BackgroundEnhance, inputNode: Any, planningNode: Any,
                 settings: EnhanceSettings, modelPath: str, expectedSHA256: str | None, verified: bool,
                 overlayMap: str, overlayOpacity: float, register: bool) -> None:
        self.scene, self.runner = scene, runner
        self.inputNode, self.planningNode = inputNode, planningNode
        self.settings, self.modelPath = settings, modelPath
        self.expectedSHA256, self.verified = expectedSHA256, verified
        self.overlayMap, self.overlayOpacity, self.register = overlayMap, overlayOpacity, register
        self.fraction, self.message = 0.0, "Starting the conversion process"
        self.history: list[tuple[float, str]] = []  # every progress step received, in order
        self._progress = _Stages(self._setProgress, jobStages(settings, planningNode is not None, register))

    def _setProgress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = fraction, message
        self.history.append((fraction, message))

    @property
    def state(self) -> str:
        """running, finished (results ready to load), failed, cancelled, or loaded."""
        return self.runner.state

    @property
    def error(self) -> str:
        return self.runner.error

    def poll(self) -> tuple[float, str, list[str]]:
        """(progress 0..1, what runs, new log lines) since the last call."""
        lines = []
        for event in self.runner.poll():
            if event.kind == "progress" and event.stage in self._progress.spans:
                self._progress(event.stage, event.done, event.total)
            elif event.kind == "log":
                lines.append(event.text)
        return self.fraction, self.message, lines

    def cancel(self) -> None:
        self.runner.cancel()

    def finish(self, layoutHook: Callable[[Any], None] | None = None) -> EnhanceOutputs:
        """Make the nodes from the finished job (all or nothing), then set up the views."""
        from MVCTEnhanceLib.engine.metrics import body_mask

        if self.runner.state == "failed":
            raise BackgroundJobError(self.runner.error)
        if self.scene.GetNodeByID(self.inputNode.GetID()) is not self.inputNode:
            self.runner.cancel()
            raise InputError("the input MVCT was removed from the scene during the conversion; nothing was created")
        mask = body_mask(volumeFromNode(self.inputNode)) if self.settings.assess else None
        report = self.runner.report() if self.runner.state == "finished" else None
        if report is not None:
            try:
                checkSHA256(self.modelPath, report["model"]["sha256"], self.expectedSHA256)
            except ModelError:
                self.runner.cancel()
                raise
        results = self.runner.results(mask)
        if self.register and results.registration is None:
            raise BackgroundJobError("the background job did not report the registration it was asked for")
        if not self.verified:
            results.warnings.append(unverifiedWarning(self.modelPath))
        results.report = nodeReport({**results.report, "warnings": list(results.warnings)}, self.inputNode,
                                    self.planningNode)
        results.parameters = runParameters(results.report, self.inputNode, self.planningNode, self.settings)
        outputs = createOutputNodes(self.scene, self.inputNode, self.planningNode, results, self.overlayMap,
                                    self.overlayOpacity, layoutHook)
        self.runner.state = "loaded"
        self._setProgress(1.0, "Done")
        return outputs


def startEnhanceInBackground(scene: Any, inputNode: Any, modelPath: str | os.PathLike, runner: BackgroundEnhance, *,
                             planningNode: Any = None, settings: EnhanceSettings | None = None,
                             overlayMap: str = "nselfssim", overlayOpacity: float = 0.5, models: Any = None,
                             register: bool = False, **settingsOverrides: Any) -> BackgroundJob:
    """Check everything that can be checked here, then start the job in ``runner``'s process.

    The same checks and errors as ``enhanceVolumeNode`` for the nodes; the model file is checked
    (its card) and, with ``models``, its sha256 against its list, before the process starts.
    """
    from MVCTEnhanceLib.engine.modelfile import file_sha256, read_card

    settings = settingsFromParameters(settings, **settingsOverrides)
    overlayMap = checkJobInputs(scene, inputNode, planningNode, overlayMap, settings, register)
    if modelPath is None or not str(modelPath).strip() or str(modelPath).strip() == ".":
        raise ModelError("no model file selected: choose a model file (.pt)")
    read_card(modelPath)  # a bad file is refused here, in words, not by the process
    expected = models.expectedSHA256(modelPath) if models is not None else None
    checkSHA256(modelPath, file_sha256(modelPath), expected)
    mvct = volumeFromNode(inputNode, "input MVCT")
    planning = volumeFromNode(planningNode, "planning CT") if planningNode is not None else None
    runner.start(mvct, modelPath, planning, settings, register=register)
    return BackgroundJob(scene, runner, inputNode, planningNode, settings, str(modelPath), expected,
                         models is None or expected is not None, overlayMap, overlayOpacity, register)
