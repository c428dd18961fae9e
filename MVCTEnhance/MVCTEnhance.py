"""MVCT Enhance: converts megavoltage CT (MVCT) to a kV-CT-like image in HU, with quality maps.

Slicer scripted module (Slicer 5.10 or later: Python 3.12, parameterNodeWrapper). The conversion and
the metrics are MVCTEnhanceLib's (the same code the ``mvct-enhance`` command line runs); everything
that touches MRML is in MVCTEnhanceMRML (no Qt, tested on slicer-core). This file holds the GUI, the
dependency installation and the self-test. torch is imported only when the user presses Enhance.
"""

import hashlib
import logging
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent


def _ensureImportPaths() -> None:
    """Make MVCTEnhanceMRML (beside this file) and MVCTEnhanceLib importable.

    Installed, both live in this module's folder. Run from a source checkout (additional module path
    = <repo>/MVCTEnhance), the library is one folder up.
    """
    for folder in (MODULE_DIR, MODULE_DIR.parent):
        if (folder / "MVCTEnhanceLib" / "__init__.py").exists() or (folder / "MVCTEnhanceMRML").is_dir():
            if str(folder) not in sys.path:
                sys.path.append(str(folder))


_ensureImportPaths()

from MVCTEnhanceLib.engine.settings import EnhanceSettings  # noqa: E402  (pure Python)
from MVCTEnhanceMRML.display import OVERLAY_CHOICES  # noqa: E402  (MRML and numpy only)

_DEFAULTS = EnhanceSettings()  # the engine's defaults, shown as the parameter node's

TINY_MODEL_FILE = "mvctenhance-tiny-test.pt"

#: Bundled sample data (a synthetic MVCT and its planning CT). The checksums are checked by the
#: SampleData module when loading and by Testing/test_slicer_static.py against the files, so they
#: cannot go stale: when the sample files change, update these two constants.
SAMPLE_DATA_NAME = "MVCTEnhanceSample"
SAMPLE_MVCT_FILE = "sample_mvct.nrrd"
SAMPLE_PLANNING_CT_FILE = "sample_planning_ct.nrrd"
SAMPLE_MVCT_SHA256 = "01e1688d15d0b793e2ae83a30789c49a24090d6d3fdcc49a84b71b9605d50cca"
SAMPLE_PLANNING_CT_SHA256 = "6ece49f4115bc78d195a90aa8514ce6ab985e6bbb5fde44f942d9919f09b8c6d"
SAMPLE_NODE_NAMES = ("SampleMVCT", "SamplePlanningCT")


def resourceFile(relative: str) -> Optional[Path]:
    """A shipped resource: <module>/Resources/... when installed, <repo>/Resources/... in a checkout."""
    for root in (MODULE_DIR / "Resources", MODULE_DIR.parent / "Resources"):
        candidate = root / relative
        if candidate.exists():
            return candidate
    return None


#
# MVCTEnhance
#


class MVCTEnhance(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MVCT Enhance")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy"),
                                  translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []  # PyTorchUtils is used when present (EXTENSION_DEPENDS PyTorch)
        # The maintainers' own names go here when the project is published ("First Last (Role, Affiliation)").
        self.parent.contributors = ["MVCTEnhance maintainers (Development and maintenance)"]
        self.parent.helpText = _("""
Converts a noisy megavoltage CT (MVCT, e.g. from a helical tomotherapy unit) into a kV-CT-like image in
Hounsfield units with a generator trained as an extended CycleGAN, slice by slice, keeping the input's
geometry. It also computes two no-reference quality maps: DIG (difference of image gradients between
the MVCT and the result: high where the conversion added, removed or moved structure) and NSelfSSIM
(structural similarity of an image with a copy of itself with added noise: high where the image is
already noisy, lower where it is clean, as a kV CT is).
<br><br>
Select the MVCT (and, optionally, the planning kV CT to compare with), keep the default model and press
<b>Enhance</b>. The result is shown beside the planning CT with a quality map as a coloured overlay.
<br><br>
<b>Not for diagnosis</b> and not for dose calculation without a commissioning study.
See the <a href="https://github.com/mvctenhance/MVCTEnhance/blob/main/docs/SLICER.md">user guide</a>.
""")
        self.parent.acknowledgementText = _("""
The method follows S. Ozaki, S. Kaji, K. Nawa, T. Imae, A. Aoki, T. Nakamoto, T. Ohta, Y. Nozawa,
H. Yamashita, A. Haga, K. Nakagawa: "Training of deep cross-modality conversion models with a small
data set, and their application in megavoltage CT to kilovoltage CT conversion",
Medical Physics 49(6), 2022, doi:10.1002/mp.15586 (preprint arXiv:2107.05238).
This implementation is independent of the authors' code. PyTorch is provided through the PyTorch
extension (PyTorchUtils).
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data
#


def _fileUri(path: Path) -> str:
    return urllib.parse.urljoin("file:", urllib.request.pathname2url(str(path)))


def sampleDataFiles() -> Optional[tuple[Path, Path]]:
    mvct = resourceFile(f"sample/{SAMPLE_MVCT_FILE}")
    planning = resourceFile(f"sample/{SAMPLE_PLANNING_CT_FILE}")
    return (mvct, planning) if mvct is not None and planning is not None else None


def registerSampleData() -> None:
    """Register the bundled MVCT + planning CT pair (local files, checksummed) in Sample Data."""
    import SampleData

    files = sampleDataFiles()
    if files is None:
        logging.warning("MVCT Enhance: sample data files are missing from this installation; "
                        "the sample is not registered")
        return
    iconPath = MODULE_DIR / "Resources" / "Icons" / "MVCTEnhance.png"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MVCT Enhance",
        sampleName=SAMPLE_DATA_NAME,
        thumbnailFileName=str(iconPath),
        uris=[_fileUri(files[0]), _fileUri(files[1])],
        # Names in Slicer's download cache: prefixed so that they cannot collide with other samples.
        fileNames=[f"MVCTEnhance-{SAMPLE_MVCT_FILE}", f"MVCTEnhance-{SAMPLE_PLANNING_CT_FILE}"],
        nodeNames=list(SAMPLE_NODE_NAMES),
        checksums=[f"SHA256:{SAMPLE_MVCT_SHA256}", f"SHA256:{SAMPLE_PLANNING_CT_SHA256}"],
        loadFileType=["VolumeFile", "VolumeFile"],
    )


#
# Parameter node
#


@parameterNodeWrapper
class MVCTEnhanceParameterNode:
    """Everything the Enhance button uses; saved with the scene.

    inputVolume - the MVCT (HU). planningVolume - optional planning kV CT shown beside the result.
    registerToPlanning - register the MVCT rigidly to the planning CT first (a transform node).
    modelPath - model file (.pt, TorchScript with its model card). device - auto, cpu, cuda, cuda:N or mps
    (the widget offers only those this computer has: it is bound in code, not through the .ui).
    batchSize - slices per batch (0: auto, 8 on CUDA, 2 on CPU). computeMetrics - DIG and NSelfSSIM maps and summaries.
    noiseSD, nselfssimWindowLow/High - NSelfSSIM settings (HU). overlayMap, overlayOpacity - which map
    is shown over the enhanced volume, and how opaque. enhancedVolume, digVolume, nselfssimVolume,
    tissueChangeVolume, resultsTable - outputs of the last run.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    planningVolume: vtkMRMLScalarVolumeNode
    registerToPlanning: bool = False
    modelPath: Path
    device: str = _DEFAULTS.device
    batchSize: Annotated[int, WithinRange(0, 256)] = 0  # 0: the engine's choice for the device
    computeMetrics: bool = _DEFAULTS.assess
    noiseSD: Annotated[float, WithinRange(1.0, 200.0)] = _DEFAULTS.metrics.noise_sd
    nselfssimWindowLow: Annotated[float, WithinRange(-1024.0, 3000.0)] = _DEFAULTS.metrics.window[0]
    nselfssimWindowHigh: Annotated[float, WithinRange(-1024.0, 3000.0)] = _DEFAULTS.metrics.window[1]
    overlayMap: Annotated[str, Choice(list(OVERLAY_CHOICES))] = "nselfssim"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    enhancedVolume: vtkMRMLScalarVolumeNode
    digVolume: vtkMRMLScalarVolumeNode
    nselfssimVolume: vtkMRMLScalarVolumeNode
    tissueChangeVolume: vtkMRMLScalarVolumeNode
    resultsTable: vtkMRMLTableNode


#
# MVCTEnhanceWidget
#


class MVCTEnhanceWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._deviceValues: list[str] = []
        self._job = None  # the running background job (MVCTEnhanceMRML.background.BackgroundJob)
        self._timer = qt.QTimer()
        self._timer.setInterval(150)
        self._modelPaths: list[str] = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MVCTEnhance.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MVCTEnhanceLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self._timer.connect("timeout()", self._onTimer)
        self.ui.enhanceButton.connect("clicked(bool)", self.onEnhanceButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.restoreViewsButton.connect("clicked(bool)", self.onRestoreViewsButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModelButton)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setValue(0)
        self.ui.warningsLabel.setVisible(False)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:  # Slicer closes: stop the conversion process too
            self._job.cancel()
            self._job = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not (firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode")
                                        or firstVolumeNode.IsA("vtkMRMLVectorVolumeNode")):
                self._parameterNode.inputVolume = firstVolumeNode
        if not self.logic.isUsableModelPath(self._parameterNode.modelPath):
            default = self.logic.defaultModelPath()
            if default is not None:
                self._parameterNode.modelPath = default

    def setParameterNode(self, inputParameterNode: Optional[MVCTEnhanceParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        ready = bool(p.inputVolume) and self.logic.isUsableModelPath(p.modelPath)
        self.ui.enhanceButton.enabled = ready and not self._running
        if not p.inputVolume:
            self.ui.enhanceButton.toolTip = _("Select the input MVCT volume")
        elif not self.logic.isUsableModelPath(p.modelPath):
            self.ui.enhanceButton.toolTip = _("Select a model file (.pt)")
        else:
            self.ui.enhanceButton.toolTip = _("Convert the MVCT and compute the quality maps")
        info, warning = self.logic.describeModel(p.modelPath)
        self.ui.modelInfoLabel.text = info
        self.ui.modelWarningLabel.text = warning
        self.ui.modelWarningLabel.setVisible(bool(warning))
        for widget in (self.ui.noiseSDSpinBox, self.ui.windowLowSpinBox, self.ui.windowHighSpinBox,
                       self.ui.overlayMapComboBox):
            widget.enabled = p.computeMetrics
        self.ui.registerCheckBox.enabled = bool(p.planningVolume)
        # The last run's outputs (also after loading a saved scene): table and live overlay changes.
        self.ui.resultsTableView.setMRMLTableNode(p.resultsTable)
        self.logic.applyOverlay(p)
        self.ui.restoreViewsButton.enabled = self.logic.hasRememberedViews()
        self._showDevices(p.device)
        self._showModels(p.modelPath)

    @staticmethod
    def _fillComboBox(combo, entries: list[tuple[str, str]], current: str, shown: list[str]) -> list[str]:
        """Show (value, label) ``entries`` in ``combo`` with ``current`` selected; returns the values."""
        values = [value for value, _label in entries]
        wasBlocked = combo.blockSignals(True)
        if values != shown:
            combo.clear()
            for _value, label in entries:
                combo.addItem(label)
        combo.currentIndex = values.index(current) if current in values else -1
        combo.blockSignals(wasBlocked)
        return values

    def _showModels(self, current: Any) -> None:
        from MVCTEnhanceMRML.models import modelChoices

        entries = modelChoices(self.logic.models, current)
        self._modelPaths = self._fillComboBox(self.ui.modelComboBox, entries, str(current or ""), self._modelPaths)

    def onModelChosen(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(self._modelPaths):
            self._parameterNode.modelPath = Path(self._modelPaths[index])

    def onImportModelButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import a model"), "",
                                              _("MVCT Enhance model (*.pt)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
            self._parameterNode.modelPath = self.logic.importModel(path)

    def _showDevices(self, current: str) -> None:
        from MVCTEnhanceMRML.devices import deviceChoices

        self._deviceValues = self._fillComboBox(self.ui.deviceComboBox, deviceChoices(current), current,
                                                self._deviceValues)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(self._deviceValues):
            self._parameterNode.device = self._deviceValues[index]

    def onRestoreViewsButton(self) -> None:
        self.logic.restoreViews()
        self.ui.restoreViewsButton.enabled = False

    @staticmethod
    def fitViews(enhancedVolume) -> None:
        """Layout hook: align the comparison views to the volume's planes and fit them (GUI only)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for viewName in ("Red", "Yellow"):
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                continue
            sliceWidget.mrmlSliceNode().RotateToVolumePlane(enhancedVolume)
            sliceWidget.sliceLogic().FitSliceToAll()

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self.ui.cancelButton.enabled = running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = not running
        self._onParameterNodeModified()

    def onCancelButton(self) -> None:
        """Stops the conversion process at once; nothing is added to the scene."""
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self._job = None
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
        self._setRunning(False)

    def onEnhanceButton(self) -> None:
        from MVCTEnhanceLib.engine.errors import MVCTEnhanceError
        from MVCTEnhanceMRML.dependencies import DependencyError

        self.ui.warningsLabel.setVisible(False)
        self.ui.progressBar.setValue(0)
        self._setRunning(True)
        try:
            self.ui.statusLabel.text = _("Checking dependencies...")
            slicer.app.processEvents()
            self.logic.ensureDependencies(confirm=lambda message: slicer.util.confirmOkCancelDisplay(
                message, windowTitle=_("MVCT Enhance")))
            self._job = self.logic.startInBackground(self._parameterNode)
        except (MVCTEnhanceError, DependencyError) as exc:
            self._setRunning(False)
            self.ui.statusLabel.text = _("Failed: nothing was added to the scene.")
            slicer.util.errorDisplay(str(exc), windowTitle=_("MVCT Enhance"))
            return
        self._timer.start()  # the conversion runs in its own process; the GUI polls it

    def _onTimer(self) -> None:
        from MVCTEnhanceLib.engine.errors import MVCTEnhanceError

        fraction, message, lines = self._job.poll()
        self.ui.progressBar.setValue(int(round(100.0 * fraction)))
        self.ui.statusLabel.text = message
        for line in lines:
            logging.info("MVCT Enhance: %s", line)
        if self._job.state == "running":
            return
        self._timer.stop()
        job, self._job = self._job, None
        try:
            outputs = self.logic.finishInBackground(self._parameterNode, job, layoutHook=self.fitViews)
        except MVCTEnhanceError as exc:
            self.ui.statusLabel.text = _("Failed: nothing was added to the scene.")
            slicer.util.errorDisplay(str(exc), windowTitle=_("MVCT Enhance"), detailedText="\n".join(job.runner.log))
            return
        except Exception as exc:  # a bug: show it with its traceback so it can be reported
            import traceback

            self.ui.statusLabel.text = _("Failed: nothing was added to the scene.")
            slicer.util.errorDisplay(_("Unexpected error: {error}").format(error=exc), windowTitle=_("MVCT Enhance"),
                                     detailedText=traceback.format_exc())
            return
        finally:
            self._setRunning(False)
        self.ui.resultsTableView.setMRMLTableNode(outputs.resultsTable)
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s on {device}.").format(
            seconds=outputs.seconds, device=outputs.parameters["enhance"]["device"])
        if outputs.warnings:
            self.ui.warningsLabel.text = "\n".join("\u26a0 " + w for w in outputs.warnings)
            self.ui.warningsLabel.setVisible(True)


#
# MVCTEnhanceLogic
#


class MVCTEnhanceLogic(ScriptedLoadableModuleLogic):
    """GUI-free entry points: ``run`` is one blocking call usable from the Python console.

    Example (Python console)::

        logic = slicer.util.getModuleLogic("MVCTEnhance")
        outputs = logic.run(getNode("SampleMVCT"), planningVolume=getNode("SamplePlanningCT"))
        outputs.enhancedVolume, outputs.digVolume, outputs.nselfssimVolume, outputs.resultsTable
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MVCTEnhanceParameterNode(super().getParameterNode())

    # -- models ------------------------------------------------------------------------------------

    @property
    def models(self):
        """The shipped models (Resources/models) and the user's (beside Slicer's settings), checked by sha256."""
        from MVCTEnhanceMRML.models import ModelLibrary, userModelsFolder

        shipped = resourceFile("models/models.json")
        return ModelLibrary(shipped.parent if shipped else None, userModelsFolder(slicer.app.slicerUserSettingsFilePath))

    def defaultModelPath(self) -> Optional[Path]:
        """The shipped trained model, else the tiny untrained test model (flagged in the GUI)."""
        entry = self.models.defaultModel()
        return entry.path if entry is not None else None

    @staticmethod
    def isUsableModelPath(path: Any) -> bool:
        return path is not None and str(path) not in ("", ".") and Path(path).is_file()

    def describeModel(self, path: Any) -> tuple[str, str]:
        """(description with the training data, warning or '') from the model card, read once per file."""
        return self.models.describe(path)

    def importModel(self, path: Any) -> Path:
        """Validate a model file and copy it into the user's models folder; returns the imported copy."""
        return self.models.importModel(path).path

    # -- dependencies ------------------------------------------------------------------------------

    @staticmethod
    def ensureDependencies(confirm: Optional[Callable[[str], bool]] = None) -> None:
        """torch (PyTorch extension) and Resources/requirements.txt; ``confirm(message)`` asks the user
        (None: install without asking). Never installs under --testing. Raises DependencyError."""
        from MVCTEnhanceMRML import dependencies

        dependencies.ensureTorch(confirm, slicer.app.testingEnabled())
        dependencies.ensurePackages(resourceFile("requirements.txt"), confirm, slicer.app.testingEnabled(),
                                    slicer.util.pip_install)

    # -- running -----------------------------------------------------------------------------------

    @staticmethod
    def _settingsOf(p: MVCTEnhanceParameterNode) -> dict[str, Any]:
        return dict(device=p.device, batchSize=p.batchSize, computeMetrics=p.computeMetrics, noiseSD=p.noiseSD,
                    nselfssimWindow=(p.nselfssimWindowLow, p.nselfssimWindowHigh), overlayMap=p.overlayMap,
                    overlayOpacity=p.overlayOpacity, register=bool(p.registerToPlanning and p.planningVolume))

    def process(self, parameterNode: MVCTEnhanceParameterNode, progress: Optional[Callable[[float, str], None]] = None,
                shouldCancel: Optional[Callable[[], bool]] = None,
                layoutHook: Optional[Callable[[Any], None]] = None):
        """Run in this process with the parameter node's settings; store the outputs in it. Returns EnhanceOutputs."""
        p = parameterNode
        outputs = self.run(p.inputVolume, planningVolume=p.planningVolume, modelPath=p.modelPath, progress=progress,
                           shouldCancel=shouldCancel, layoutHook=layoutHook, **self._settingsOf(p))
        self._storeOutputs(p, outputs)
        return outputs

    def startInBackground(self, parameterNode: MVCTEnhanceParameterNode):
        """Start the parameter node's job in a PythonSlicer process (the batch script); returns the job to
        poll (MVCTEnhanceMRML.background.BackgroundJob). Inputs and the model are checked first."""
        from MVCTEnhanceMRML import background, runner

        p = parameterNode
        modelPath = p.modelPath if self.isUsableModelPath(p.modelPath) else self.defaultModelPath()
        process = runner.BackgroundEnhance(runner.pythonSlicerExecutable(Path(slicer.app.slicerHome) / "bin"),
                                           MODULE_DIR / "Scripts" / "mvct_enhance_batch.py", slicer.app.temporaryPath)
        return background.startEnhanceInBackground(slicer.mrmlScene, p.inputVolume, modelPath, process,
                                                   planningNode=p.planningVolume, models=self.models,
                                                   **self._settingsOf(p))

    def finishInBackground(self, parameterNode: MVCTEnhanceParameterNode, job, layoutHook=None):
        """Make the nodes of a finished background job and store them in the parameter node."""
        outputs = job.finish(layoutHook)
        self._storeOutputs(parameterNode, outputs)
        return outputs

    @staticmethod
    def _storeOutputs(p: MVCTEnhanceParameterNode, outputs) -> None:
        p.enhancedVolume = outputs.enhancedVolume
        p.digVolume = outputs.digVolume
        p.nselfssimVolume = outputs.nselfssimVolume
        p.tissueChangeVolume = outputs.tissueChangeVolume
        p.resultsTable = outputs.resultsTable

    def run(self, inputVolume, planningVolume=None, modelPath=None, overlayMap: str = "nselfssim",
            overlayOpacity: float = 0.5, progress=None, shouldCancel=None, layoutHook=None, **settings):
        """One blocking call: convert ``inputVolume`` and return the new nodes (EnhanceOutputs).

        ``modelPath`` defaults to the shipped model; ``settings`` are the parameter node's names
        (device, batchSize, computeMetrics, noiseSD, nselfssimWindow, seed; register=True registers
        the MVCT to ``planningVolume`` first), the engine's defaults otherwise. Raises MVCTEnhanceError subclasses for bad input, a bad model, or a cancel;
        nothing is added to the scene then.
        """
        import MVCTEnhanceMRML

        if modelPath is None or str(modelPath) in ("", "."):
            modelPath = self.defaultModelPath()
        return MVCTEnhanceMRML.enhanceVolumeNode(
            slicer.mrmlScene, inputVolume, modelPath, planningNode=planningVolume, overlayMap=overlayMap,
            overlayOpacity=overlayOpacity, progress=progress, shouldCancel=shouldCancel, layoutHook=layoutHook,
            models=self.models, **settings)

    @staticmethod
    def restoreViews() -> bool:
        """Put back the layout and views as they were before the first Enhance changed them."""
        from MVCTEnhanceMRML import views

        return views.restoreViews(slicer.mrmlScene)

    @staticmethod
    def hasRememberedViews() -> bool:
        from MVCTEnhanceMRML import views

        return views.hasRememberedViews(slicer.mrmlScene)

    @staticmethod
    def applyOverlay(parameterNode: MVCTEnhanceParameterNode) -> None:
        """Show the chosen map over the last enhanced volume at the chosen opacity (no-op before a run)."""
        from MVCTEnhanceMRML import display

        p = parameterNode
        display.showOverlay(slicer.mrmlScene, p.enhancedVolume, p.overlayMap, p.overlayOpacity)


#
# MVCTEnhanceTest
#


class MVCTEnhanceTest(ScriptedLoadableModuleTest):
    """Loads the bundled sample, runs the tiny test generator and checks what a user would see."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sampleDataChecksums()
        if not self._dependenciesReady():
            return
        self.setUp()
        self.test_enhanceSample()
        self.setUp()
        self.test_backgroundJob()
        self.setUp()
        self.test_cancelLeavesSceneUnchanged()
        self.setUp()
        self.test_badInput()

    def _dependenciesReady(self) -> bool:
        """torch and the requirements: skipped with a clear message under --testing (never installs),
        otherwise installed only after the user agrees."""
        from MVCTEnhanceMRML.dependencies import selfTestReadiness

        testing = slicer.app.testingEnabled()
        reason = selfTestReadiness(resourceFile("requirements.txt"), None if testing else (
            lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle=_("MVCT Enhance self-test"))),
            testing, slicer.util.pip_install)
        if not reason:
            return True
        logging.warning(reason)
        if testing:
            self.skipTest(reason)  # reported as skipped by the test runner, not as a failure
        self.delayDisplay(reason)
        return False

    def _tinyModel(self) -> Path:
        path = resourceFile(f"models/{TINY_MODEL_FILE}")
        self.assertIsNotNone(path, "the tiny test model is not installed with the module")
        return path

    def _loadSample(self):
        import SampleData

        registerSampleData()
        nodes = SampleData.downloadSamples(SAMPLE_DATA_NAME)
        self.assertEqual(len(nodes), 2)
        return nodes

    def test_sampleDataChecksums(self):
        files = sampleDataFiles()
        self.assertIsNotNone(files, "sample data files are missing")
        for path, expected in zip(files, (SAMPLE_MVCT_SHA256, SAMPLE_PLANNING_CT_SHA256)):
            self.assertEqual(hashlib.sha256(path.read_bytes()).hexdigest(), expected, f"checksum of {path}")

    def test_enhanceSample(self):
        import numpy as np

        import MVCTEnhanceMRML

        self.delayDisplay("Loading the sample MVCT and planning CT")
        mvct, planning = self._loadSample()
        before = MVCTEnhanceMRML.nodeFingerprint(mvct)
        logic = MVCTEnhanceLogic()

        self.delayDisplay("Enhancing with the tiny test generator")
        fractions = []
        outputs = logic.run(mvct, planningVolume=planning, modelPath=self._tinyModel(), device="cpu",
                            progress=lambda f, m: fractions.append(f), layoutHook=MVCTEnhanceWidget.fitViews)

        self.assertEqual(MVCTEnhanceMRML.nodeFingerprint(mvct)[:4], before[:4], "the input node was modified")
        self.assertAlmostEqual(fractions[-1], 1.0)
        for node in (outputs.enhancedVolume, outputs.digVolume, outputs.nselfssimVolume):
            self.assertEqual(node.GetClassName(), "vtkMRMLScalarVolumeNode")
            self.assertEqual(node.GetImageData().GetDimensions(), mvct.GetImageData().GetDimensions())
            a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(a)
            mvct.GetIJKToRASMatrix(b)
            self.assertEqual([a.GetElement(r, c) for r in range(4) for c in range(4)],
                             [b.GetElement(r, c) for r in range(4) for c in range(4)])
            self.assertEqual(node.GetAttribute("MVCTEnhance.ModelName"), "mvctenhance-tiny-test")
            self.assertEqual(len(node.GetAttribute("MVCTEnhance.ModelSHA256")), 64)
            self.assertIsNotNone(node.GetDisplayNode())
        self.assertEqual(outputs.resultsTable.GetClassName(), "vtkMRMLTableNode")
        rows = MVCTEnhanceMRML.tableRows(outputs.resultsTable)
        self.assertIn(("NSelfSSIM", "planning CT"), [r[:2] for r in rows])
        nss = slicer.util.arrayFromVolume(outputs.nselfssimVolume)
        self.assertTrue(np.isfinite(nss).all())
        self.assertTrue(outputs.warnings and "untrained" in outputs.warnings[0])
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            red = layoutManager.sliceWidget("Red").mrmlSliceCompositeNode()
            self.assertEqual(red.GetBackgroundVolumeID(), outputs.enhancedVolume.GetID())
            self.assertEqual(red.GetForegroundVolumeID(), outputs.nselfssimVolume.GetID())
            yellow = layoutManager.sliceWidget("Yellow").mrmlSliceCompositeNode()
            self.assertEqual(yellow.GetBackgroundVolumeID(), planning.GetID())
        self.delayDisplay("Test passed")

    def test_backgroundJob(self):
        """What the Enhance button does: PythonSlicer runs the batch script; Cancel stops it at once."""
        import time

        mvct, planning = self._loadSample()
        logic = MVCTEnhanceLogic()
        p = logic.getParameterNode()
        p.inputVolume, p.planningVolume, p.modelPath, p.device = mvct, planning, self._tinyModel(), "cpu"
        self.delayDisplay("Enhancing in a PythonSlicer process")
        job = logic.startInBackground(p)
        while job.state == "running":
            job.poll()
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertEqual(job.state, "finished", job.error)
        outputs = logic.finishInBackground(p, job)
        self.assertIs(p.enhancedVolume, outputs.enhancedVolume)
        self.assertIsNotNone(outputs.tissueChangeVolume)

        ids = sorted(slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes()))
        job = logic.startInBackground(p)
        started = time.monotonic()
        job.cancel()
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertIsNotNone(job.runner.process.poll())
        after = sorted(slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes()))
        self.assertEqual(ids, after)

    def test_cancelLeavesSceneUnchanged(self):
        from MVCTEnhanceLib.engine.errors import EnhanceCancelled

        mvct, _planning = self._loadSample()
        ids = sorted(slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes()))
        with self.assertRaises(EnhanceCancelled):
            MVCTEnhanceLogic().run(mvct, modelPath=self._tinyModel(), device="cpu", shouldCancel=lambda: True)
        after = sorted(slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes()))
        self.assertEqual(ids, after)

    def test_badInput(self):
        from MVCTEnhanceLib.engine.errors import InputError, ModelError

        mvct, _planning = self._loadSample()
        logic = MVCTEnhanceLogic()
        with self.assertRaises(InputError):
            logic.run(None, modelPath=self._tinyModel())
        label = slicer.modules.volumes.logic().CreateAndAddLabelVolume(mvct, "label")
        with self.assertRaises(InputError):
            logic.run(label, modelPath=self._tinyModel())
        broken = Path(slicer.app.temporaryPath) / "MVCTEnhance-not-a-model.pt"
        broken.write_bytes(b"not a model")
        with self.assertRaises(ModelError):
            logic.run(mvct, modelPath=broken)
