"""The page: pickers, Enhance with progress and Cancel, three linked Slicer views, overlay, legend, metrics.

    page = EnhancePage(server, dataDir=".", workRoot=tmp)     # then server.start(...)

State is one per server: everyone who opens the page sees and drives the same scene (one user's
tool, served on localhost by default). The job runs in a separate process through the module's
``runner.BackgroundEnhance`` (started by ``background.startEnhanceInBackground``, the Enhance
button's own path in Slicer); the page polls it every 200 ms, as the module's QTimer does, and makes
the result nodes with ``BackgroundJob.finish`` (``logic.createOutputNodes``), which also sets up
the comparison views (``display.setupComparisonViews``: enhanced + masked map in the Red view,
reference in the Yellow view, linked). The Green view shows the MVCT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from MVCTEnhanceWeb import BATCH_SCRIPT, RESOURCES, SAMPLE_DIR, addModulePath

addModulePath()

import slicer  # noqa: E402
from trame.ui.vuetify3 import SinglePageWithDrawerLayout  # noqa: E402
from trame.widgets import html  # noqa: E402
from trame.widgets import vuetify3 as v3  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition  # noqa: E402
from vtkmodules.vtkCommonCore import vtkObject  # noqa: E402

import MVCTEnhanceMRML  # noqa: E402
from MVCTEnhanceLib.engine.errors import MVCTEnhanceError  # noqa: E402
from MVCTEnhanceLib.engine.files import json_default  # noqa: E402
from MVCTEnhanceLib.engine.settings import EnhanceSettings  # noqa: E402
from MVCTEnhanceLib.engine.volume import read_volume  # noqa: E402
from MVCTEnhanceMRML import background, display, models, views  # noqa: E402
from MVCTEnhanceMRML.runner import BackgroundEnhance, pythonSlicerExecutable  # noqa: E402

log = logging.getLogger(__name__)

#: The three views, left to right: (Slicer view name, title). Red and Yellow are the views the
#: module's comparison uses (display.LEFT_VIEW: enhanced + map; display.RIGHT_VIEW: reference).
VIEWS = (("Green", "MVCT"), (display.LEFT_VIEW, "Enhanced"), (display.RIGHT_VIEW, "Planning CT"))
VIEW_COLORS = {"Red": "#F34A33", "Yellow": "#EFD64D", "Green": "#6DAD4A"}
OVERLAY_LABELS = {"nselfssim": "NSelfSSIM", "dig": "DIG", "tissuechange": "Tissue change", "none": "None"}
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
POLL_S = 0.2
MAX_LISTED = 500


def listInputs(dataDir: Path | None, depth: int = 3) -> list[dict[str, str]]:
    """The volumes the pickers offer: the bundled sample, then files (and DICOM series folders) under
    ``dataDir`` up to ``depth`` folders down, at most MAX_LISTED; hidden files and folders skipped."""
    items = [{"title": f"bundled sample: {p.name}", "value": str(p.resolve())}
             for p in sorted(SAMPLE_DIR.glob("*.nrrd"))]
    if dataDir is None or not dataDir.is_dir():
        return items
    root = dataDir.resolve()
    found: list[dict[str, str]] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        level = len(here.relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and level < depth)
        rel = here.relative_to(root)
        if any(f.lower().endswith(".dcm") for f in files):
            found.append({"title": f"{rel.as_posix() if rel.parts else '.'}/ (DICOM series)", "value": str(here)})
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(VOLUME_SUFFIXES):
                found.append({"title": (rel / name).as_posix(), "value": str(here / name)})
        if len(found) >= MAX_LISTED:
            break
    known = {i["value"] for i in items}
    return items + [i for i in found[:MAX_LISTED] if i["value"] not in known]


def formatNumber(value: float) -> str:
    """A table cell: 4 significant digits ('' for NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def legendGradient(colormap: str) -> str:
    """CSS gradient of one of display.COLORMAPS (the colours the map's colour table is made from)."""
    anchors = display.COLORMAPS[colormap]["anchors"]
    stops = [f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)}) {100 * i / max(len(anchors) - 1, 1):.0f}%"
             for i, (r, g, b) in enumerate(anchors)]
    return f"linear-gradient(to right, {', '.join(stops)})"


class EnhancePage:
    """The page's scene, job and widgets (see the module)."""

    def __init__(self, server: Any, dataDir: str | os.PathLike | None, workRoot: str | os.PathLike,
                 device: str = "auto", modelPath: str | os.PathLike | None = None) -> None:
        self.server, self.state = server, server.state
        self.dataDir = Path(dataDir) if dataDir else None
        self.workRoot = Path(workRoot)
        self.device = device
        self.app = SlicerApp()
        self.scene = self.app.scene
        slicer.mrmlScene = self.scene  # slicer.util's helpers (and the module's code) look here
        if not self.scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
            # trame-slicer registers the MRML colour logic, not Slicer's (which registers the legend node
            # class): the maps' colour legends (display.ensureColorLegend) need the class.
            self.scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        self.library = models.ModelLibrary(RESOURCES / "models", None)
        self.inputs: dict[str, Any] = {"mvct": None, "planning": None}
        self.job: background.BackgroundJob | None = None
        self.outputs: Any = None
        self._pollTask: asyncio.Task | None = None
        self._startedAt = 0.0

        register_rca_factories(self.app.view_manager, server, slice_view_ui_f=self._viewLabel, rca_encoder="png",
                               blur_fps=10.0)
        self.layoutManager = LayoutManager(self.scene, self.app.view_manager, server)
        warnings = vtkObject.GetGlobalWarningDisplay()
        vtkObject.GlobalWarningDisplayOff()  # VTK 9.6 warns once per view about an event trame-slicer observes
        try:
            self.layoutManager.register_layout("MVCTEnhance", Layout(LayoutDirection.Horizontal, [
                ViewLayoutDefinition.slice_view("Axial", label=name, color=VIEW_COLORS[name]) for name, _ in VIEWS]))
            self.layoutManager.set_layout("MVCTEnhance")
        finally:
            vtkObject.SetGlobalWarningDisplay(warnings)
        self._initialState(modelPath)
        self._buildUi()
        self.server.controller.on_server_ready.add(self._startPolling)
        self.server.controller.on_server_exited.add(self.shutdown)
        self.state.change("overlay")(self._onOverlay)
        self.state.change("opacity")(self._onOpacity)
        self.state.change("slice_offset")(self._onSliceOffset)

    # -- state and widgets ---------------------------------------------------------------------------

    def _initialState(self, modelPath: Any) -> None:
        s = self.state
        s.trame__title = "MVCT Enhance"
        files = listInputs(self.dataDir)
        s.files = files
        s.planning_files = [{"title": "(none)", "value": ""}, *files]
        s.mvct_file = s.planning_file = ""
        choices = models.modelChoices(self.library, modelPath)
        s.models = [{"title": label, "value": path} for path, label in choices]
        default = modelPath or (self.library.defaultModel().path if self.library.defaultModel() else "")
        s.model = str(Path(default).resolve()) if default else ""
        s.inputs_loaded = False
        s.busy = False
        s.job_state = "idle"  # idle, running, finished, failed, cancelled
        s.progress = 0
        s.progress_message = ""
        s.status = "Choose an MVCT (and its planning CT), then Load."
        s.error = ""
        s.overlay = "nselfssim"
        s.overlay_items = [{"title": OVERLAY_LABELS[k], "value": k} for k in display.OVERLAY_CHOICES]
        s.opacity = 0.5
        s.legend = None
        s.metrics_rows = []
        s.warnings = []
        s.report_json = ""
        s.scene_volumes = []
        s.view_titles = {name: title for name, title in VIEWS}
        s.slice_offset = 0.0
        s.slice_min, s.slice_max, s.slice_step = 0.0, 1.0, 1.0

    def _viewLabel(self, server: Any, viewId: str, sliceView: Any) -> None:
        name = sliceView.get_singleton_tag()
        html.Div(f"{{{{ view_titles['{name}'] }}}}", classes="mvct-view-label", data_view=name,
                 __properties=[("data_view", "data-view")],
                 style=f"position:absolute; top:0; left:0; padding:2px 8px; font:13px sans-serif; color:#000; "
                       f"background:{VIEW_COLORS.get(name, '#ccc')}; pointer-events:none; z-index:2")

    def _buildUi(self) -> None:
        disabled = ("busy",)
        with SinglePageWithDrawerLayout(self.server, width=460) as layout:
            self.ui = layout
            layout.title.set_text("MVCT Enhance")
            with layout.toolbar:
                v3.VSpacer()
                html.Span("Research software: the enhanced image is synthetic, not for diagnosis",
                          classes="text-caption mr-4")
            with layout.drawer, html.Div(classes="pa-3", style="font-size: 14px"):
                html.Div("Inputs (files on this server)", classes="text-subtitle-2 mb-1")
                v3.VSelect(label="MVCT", v_model=("mvct_file",), items=("files",), density="compact",
                           hide_details=True, disabled=disabled, classes="mb-2", id="mvct-file")
                v3.VSelect(label="Planning CT", v_model=("planning_file",), items=("planning_files",),
                           density="compact", hide_details=True, disabled=disabled, classes="mb-2",
                           id="planning-file")
                with html.Div(classes="d-flex ga-2 mb-3"):
                    v3.VBtn("Load", click=self.loadSelected, disabled=("busy || !mvct_file",), size="small",
                            id="load")
                    v3.VBtn("Load bundled sample", click=self.loadSample, disabled=disabled, size="small",
                            id="load-sample")
                    v3.VBtn("Refresh list", click=self.refreshFiles, disabled=disabled, size="small",
                            variant="text")
                v3.VSelect(label="Model", v_model=("model",), items=("models",), density="compact",
                           hide_details=True, disabled=disabled, classes="mb-2", id="model")
                with html.Div(classes="d-flex ga-2 mb-2"):
                    v3.VBtn("Enhance", click=self.enhance, color="primary", disabled=("busy || !inputs_loaded",),
                            id="enhance")
                    v3.VBtn("Cancel", click=self.cancel, disabled=("!busy",), id="cancel")
                v3.VProgressLinear(model_value=("progress",), height=16, color="primary", id="progress",
                                   classes="mb-1")
                html.Div("{{ progress_message }}", classes="text-caption", id="progress-message")
                html.Div("{{ status }}", id="status", data_state=("job_state",), classes="my-2",
                         __properties=[("data_state", "data-state")])
                html.Div("{{ error }}", v_show="error", id="error", classes="text-error my-2")
                v3.VDivider(classes="my-2")
                html.Div("Overlay on the enhanced view (inside the body only)", classes="text-subtitle-2")
                with v3.VBtnToggle(v_model=("overlay",), mandatory=True, density="compact", divided=True,
                                   variant="outlined", classes="my-1", id="overlay"):
                    for key in display.OVERLAY_CHOICES:
                        v3.VBtn(OVERLAY_LABELS[key], value=key, size="small")
                v3.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, label="Opacity", thumb_label=True,
                           density="compact", hide_details=True, id="opacity")
                with html.Div(v_if="legend", id="legend", classes="my-2"):
                    html.Div("{{ legend.title }}", classes="text-caption", id="legend-title")
                    html.Div(style=("{height: '12px', background: legend.gradient, border: '1px solid #888'}",))
                    with html.Div(classes="d-flex text-caption"):
                        html.Span("{{ legend.low }}", id="legend-low")
                        v3.VSpacer()
                        html.Span("{{ legend.high }}", id="legend-high")
                v3.VDivider(classes="my-2")
                html.Div("Quality metrics (inside the body)", classes="text-subtitle-2")
                with html.Div(style="overflow-x:auto"), html.Table(id="metrics-table", v_if="metrics_rows.length",
                                style="font-size:11px; border-collapse:collapse"):
                    with html.Thead(), html.Tr():
                        for column in ("Metric", "Image", "Mean", "Median", "P95", "Voxels", "Unit"):
                            html.Th(column, style="text-align:left; border-bottom:1px solid #999; padding-right:6px")
                    with html.Tbody():
                        with html.Tr(v_for="(row, i) in metrics_rows", key="i"):
                            for key in ("metric", "image", "mean", "median", "p95", "voxels", "unit"):
                                html.Td(f"{{{{ row.{key} }}}}", data_column=key, __properties=[("data_column", "data-column")],
                                        style="white-space:nowrap; padding-right:6px")
                html.Div("No results yet.", v_if="!metrics_rows.length", classes="text-caption")
                with html.Ul(v_if="warnings.length", id="warnings", classes="text-caption text-warning my-2 ml-4"):
                    html.Li("{{ w }}", v_for="(w, i) in warnings", key="i")
                with html.Details(v_if="report_json", classes="my-2"):
                    html.Summary("Report (JSON)")
                    html.Pre("{{ report_json }}", id="report-json",
                             style="font-size:10px; max-height:240px; overflow:auto; white-space:pre-wrap")
                v3.VDivider(classes="my-2")
                html.Div("Volumes in the scene", classes="text-subtitle-2")
                with html.Ul(id="scene-volumes", classes="text-caption ml-4"):
                    html.Li("{{ v }}", v_for="(v, i) in scene_volumes", key="i")
            with layout.content:
                with html.Div(style="height:calc(100vh - 90px); display:flex; flex-direction:column"):
                    with html.Div(style="flex:1; display:flex; min-height:0", id="views"):
                        self.layoutManager.initialize_layout_grid(layout)
                    with html.Div(classes="px-4 pt-1", style="flex:0 0 auto"):
                        v3.VSlider(v_model=("slice_offset",), min=("slice_min",), max=("slice_max",),
                                   step=("slice_step",), label="Slice (all views)", density="compact",
                                   hide_details=True, disabled=("!inputs_loaded",), id="slice")

    # -- inputs ----------------------------------------------------------------------------------------

    def refreshFiles(self) -> None:
        files = listInputs(self.dataDir)
        self.state.files = files
        self.state.planning_files = [{"title": "(none)", "value": ""}, *files]

    def _allowed(self, value: str) -> bool:
        """Only what the pickers list can be loaded (the client names an entry, never a free path)."""
        return any(item["value"] == value for item in self.state.files)

    def loadSample(self) -> None:
        self.state.mvct_file = str((SAMPLE_DIR / "sample_mvct.nrrd").resolve())
        self.state.planning_file = str((SAMPLE_DIR / "sample_planning_ct.nrrd").resolve())
        self.loadSelected()

    def loadSelected(self) -> None:
        s = self.state
        s.error = ""
        if self.job is not None and self.job.state == "running":
            s.error = "a conversion is running: cancel it first"
            return
        chosen = {"mvct": s.mvct_file, "planning": s.planning_file}
        if not chosen["mvct"]:
            s.error = "choose an MVCT first"
            return
        for key, value in chosen.items():
            if value and not self._allowed(value):
                s.error = f"'{value}' is not one of the listed files"
                return
        try:
            volumes = {key: read_volume(value) if value else None for key, value in chosen.items()}
        except MVCTEnhanceError as exc:
            s.error = str(exc)
            return
        self._clearScene()
        for key, volume in volumes.items():
            if volume is None:
                continue
            name = Path(chosen[key]).name.split(".")[0] or key
            node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(name))
            MVCTEnhanceMRML.fillVolumeNode(node, volume)
            display.showEnhanced(self.scene, node)  # the grey soft-tissue window all three views share
            self.inputs[key] = node
        composites = self._composites()
        composites["Green"].SetBackgroundVolumeID(self.inputs["mvct"].GetID())
        composites[display.LEFT_VIEW].SetBackgroundVolumeID(None)
        composites[display.RIGHT_VIEW].SetBackgroundVolumeID(
            self.inputs["planning"].GetID() if self.inputs["planning"] is not None else None)
        for composite in composites.values():
            composite.SetForegroundVolumeID(None)
            composite.SetLinkedControl(True)
        s.view_titles = {"Green": f"MVCT: {self.inputs['mvct'].GetName()}", display.LEFT_VIEW: "Enhanced (not yet)",
                         display.RIGHT_VIEW: (f"Planning CT: {self.inputs['planning'].GetName()}"
                                              if self.inputs["planning"] is not None else "Planning CT (none)")}
        s.inputs_loaded = True
        s.job_state, s.progress, s.progress_message = "idle", 0, ""
        s.status = "Loaded. Press Enhance."
        self._fitViews()
        self._updateSceneList()

    def _clearScene(self) -> None:
        """Remove the previous inputs and results (a new pair of inputs starts a new comparison)."""
        self._removeOutputs()
        for key, node in self.inputs.items():
            if node is not None and self.scene.GetNodeByID(node.GetID()) is node:
                self.scene.RemoveNode(node)
            self.inputs[key] = None
        for composite in self._composites().values():
            composite.SetBackgroundVolumeID(None)
            composite.SetForegroundVolumeID(None)
        s = self.state
        s.metrics_rows, s.warnings, s.report_json, s.legend = [], [], "", None

    def _removeOutputs(self) -> None:
        if self.outputs is None:
            return
        for node in self.outputs.nodes():
            if self.scene.GetNodeByID(node.GetID()) is node:
                self.scene.RemoveNode(node)
        self.outputs = None

    # -- the job -----------------------------------------------------------------------------------

    def enhance(self) -> None:
        s = self.state
        s.error = ""
        if self.inputs["mvct"] is None:
            s.error = "load an MVCT first"
            return
        if self.job is not None and self.job.state == "running":
            return
        if not any(item["value"] == s.model for item in s.models):
            s.error = "choose one of the listed models"
            return
        runner = BackgroundEnhance(pythonSlicerExecutable(), BATCH_SCRIPT, self.workRoot)
        try:
            self.job = background.startEnhanceInBackground(
                self.scene, self.inputs["mvct"], s.model, runner, planningNode=self.inputs["planning"],
                settings=EnhanceSettings(device=self.device), overlayMap=s.overlay, overlayOpacity=float(s.opacity),
                models=self.library)
        except MVCTEnhanceError as exc:
            s.error = str(exc)
            return
        self._startedAt = time.monotonic()
        s.busy, s.job_state = True, "running"
        s.progress, s.progress_message = 0, self.job.message
        s.status = "Converting..."

    def cancel(self) -> None:
        if self.job is None or self.job.state != "running":
            return
        self.job.cancel()
        s = self.state
        s.busy, s.job_state = False, "cancelled"
        s.progress, s.progress_message = 0, ""
        s.status = "Cancelled: nothing was created."
        self._updateSceneList()

    def _startPolling(self, **_: Any) -> None:
        self._pollTask = asyncio.ensure_future(self._pollLoop())

    async def _pollLoop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if self.job is not None and self.job.state == "running":
                try:
                    with self.state:
                        self.poll()
                except Exception:  # a bug: say so in the page and the log, keep the page alive
                    log.exception("polling the conversion failed")
                    self.job.cancel()
                    with self.state:
                        self.state.busy, self.state.job_state = False, "failed"
                        self.state.error = "internal error while reading the conversion's results (see the server log)"

    def poll(self) -> None:
        """One look at the running job (what the module's QTimer does)."""
        job, s = self.job, self.state
        fraction, message, lines = job.poll()
        s.progress, s.progress_message = round(100 * fraction), message
        if job.state == "finished":
            previous = self.outputs
            try:
                outputs = job.finish(self._layoutHook)
            except MVCTEnhanceError as exc:
                s.busy, s.job_state, s.error = False, "failed", str(exc)
                s.status = "Failed: nothing was created."
                return
            if previous is not None:  # the page compares one result at a time
                self.outputs = previous
                self._removeOutputs()
            self.outputs = outputs
            self._showResults(outputs)
        elif job.state == "failed":
            s.busy, s.job_state, s.error = False, "failed", job.error
            s.status = "Failed: nothing was created."

    def _layoutHook(self, enhancedNode: Any) -> None:
        composites = self._composites()
        composites["Green"].SetBackgroundVolumeID(self.inputs["mvct"].GetID())
        composites["Green"].SetLinkedControl(True)
        self._fitViews()

    def _showResults(self, outputs: Any) -> None:
        s = self.state
        rows = MVCTEnhanceMRML.tableRows(outputs.resultsTable) if outputs.resultsTable is not None else []
        keys = ("metric", "image", "mean", "median", "p95", "voxels", "unit")
        s.metrics_rows = [{k: (formatNumber(v) if isinstance(v, (int, float)) else v) for k, v in zip(keys, row)}
                          for row in rows]
        s.warnings = list(outputs.warnings)
        s.report_json = json.dumps(outputs.report, indent=1, default=json_default)
        names = dict(s.view_titles)
        names[display.LEFT_VIEW] = f"Enhanced: {outputs.enhancedVolume.GetName()}"
        s.view_titles = names
        s.busy, s.job_state, s.progress, s.progress_message = False, "finished", 100, "Done"
        s.status = (f"Done in {time.monotonic() - self._startedAt:.0f} s (conversion {outputs.seconds:.1f} s, then "
                    f"the quality maps). The enhanced image is synthetic: not for diagnosis.")
        self._onOverlay(s.overlay)
        self._updateSceneList()

    # -- display ------------------------------------------------------------------------------------

    def _onOverlay(self, overlay: str, **_: Any) -> None:
        if self.outputs is None:
            return
        mapNode = display.showOverlay(self.scene, self.outputs.enhancedVolume, overlay, float(self.state.opacity))
        legendNode = display.colorLegendOf(mapNode) if mapNode is not None else None
        if legendNode is not None:
            # The page's views are narrow: in the view the legend is titled with the map's name only (a
            # title with its unit runs off the view); the page's legend beside the views has both.
            legendNode.SetTitleText(display.MAP_STYLES[overlay].title)
        self.state.legend = self._legend(overlay, mapNode)

    def _onOpacity(self, opacity: float, **_: Any) -> None:
        if self.outputs is not None:
            ids = [n.GetID() for n in display.mapNodesOf(self.scene, self.outputs.enhancedVolume.GetID()).values()]
            display.setOverlayOpacity(self.scene, ids, float(opacity))

    def _legend(self, overlay: str, mapNode: Any) -> dict[str, str] | None:
        """The page's copy of the map's colour legend: title with unit (display.MAP_STYLES), the colours
        of its colour table and the range its display node shows (as in Slicer's legend in the view)."""
        if mapNode is None:
            return None
        style = display.MAP_STYLES[overlay]
        title = style.legendTitle
        displayNode = mapNode.GetDisplayNode()
        low, high = displayNode.GetWindowLevelMin(), displayNode.GetWindowLevelMax()
        return {"title": title, "gradient": legendGradient(style.colormap), "low": f"{low:.3g}", "high": f"{high:.3g}"}

    def _onSliceOffset(self, slice_offset: float, **_: Any) -> None:
        for view in self.app.view_manager.get_slice_views():
            if abs(view.get_slice_value() - float(slice_offset)) > 1e-6:
                view.set_slice_value(float(slice_offset))

    def _composites(self) -> dict[str, Any]:
        return views.compositeNodes(self.scene)

    def _fitViews(self) -> None:
        sliceViews = self.app.view_manager.get_slice_views()
        for view in sliceViews:
            view.fit_view_to_content()
        green = [v for v in sliceViews if v.get_singleton_tag() == "Green"]
        if green:
            (low, high), step = green[0].get_slice_range(), green[0].get_slice_step()
            s = self.state
            s.slice_min, s.slice_max, s.slice_step = float(low), float(high), float(step) or 1.0
            s.slice_offset = float(green[0].get_slice_value())

    def _updateSceneList(self) -> None:
        nodes = [self.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                 for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        tables = self.scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
        self.state.scene_volumes = [n.GetName() for n in nodes] + [f"{tables} table(s)"] * bool(tables)

    def shutdown(self, **_: Any) -> None:
        """Stop a running job (its process and files) when the server stops."""
        if self.job is not None and self.job.state == "running":
            self.job.cancel()


def serve(host: str = "127.0.0.1", port: int = 8080, dataDir: str | os.PathLike | None = None,
          workRoot: str | os.PathLike | None = None, device: str = "auto",
          modelPath: str | os.PathLike | None = None, openBrowser: bool = False) -> int:
    """Build the page and serve it until interrupted (blocking)."""
    import tempfile

    from trame.app import get_server

    os.environ["TRAME_ARGS"] = "--server"  # trame must not parse mvct-enhance's own arguments
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no X server: EGL, offscreen
    work = Path(workRoot) if workRoot else Path(tempfile.mkdtemp(prefix="mvct-enhance-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    server = get_server("mvct-enhance", client_type="vue3")
    page = EnhancePage(server, dataDir, work, device=device, modelPath=modelPath)
    print(f"mvct-enhance serve: http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.start(host=host, port=port, open_browser=openBrowser, show_connection_info=False, timeout=0)
    finally:
        page.shutdown()
    return 0
