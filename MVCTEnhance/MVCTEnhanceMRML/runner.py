"""The enhance job in a separate process, so that Slicer stays responsive and Cancel is immediate.

    runner = BackgroundEnhance(pythonExecutable, batchScript, workRoot)
    runner.start(mvctVolume, modelPath, planningVolume, settings)   # engine Volumes, from the nodes
    ... every 100-200 ms (the widget's QTimer):  for event in runner.poll(): show(event)
    runner.cancel()                                                  # SIGTERM, then SIGKILL; nothing left
    results = runner.results(mask)                                   # only once runner.state == "finished"

The process is the module's batch script (``Scripts/mvct_enhance_batch.py``: the same code as
``mvct-enhance enhance``) run by Slicer's ``PythonSlicer`` (``sys.executable`` outside Slicer). The
inputs are written into a fresh folder under ``workRoot``; the job writes its outputs there as one
all-or-nothing output set and reports its progress as JSON lines on stderr (``--progress json``).
The results are read back (enhanced volume, maps, report) only when the process has exited with 0,
and turned into a :class:`logic.JobResults`, from which ``logic.createOutputNodes`` makes the nodes
exactly as for a run in Slicer's own process. Cancel terminates the process at once: SIGTERM (the
CLI unwinds and removes its temporaries), SIGKILL after a short grace; then the work folder is
removed, so a cancelled or failed job leaves no file behind.

No Qt here (reader threads and a queue): the class is tested outside Slicer with the real script.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from MVCTEnhanceLib.engine.errors import EnhanceCancelled, MVCTEnhanceError
from MVCTEnhanceLib.engine.settings import EnhanceSettings

#: Exit codes of the batch script (MVCTEnhanceLib.cli and the script's own).
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_DEPENDENCY, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
#: Seconds between SIGTERM and SIGKILL on cancel.
TERMINATE_GRACE_S = 0.5
OUTPUT_FILES = {"output": "enhanced.nrrd", "dig": "dig.nrrd", "nselfssim": "nselfssim.nrrd",
                "tissue_change": "tissue_change.nrrd", "report": "report.json"}


class BackgroundJobError(MVCTEnhanceError):
    """The background job failed; the message is the job's own last error line."""


@dataclasses.dataclass(frozen=True)
class Event:
    """What the job said: ``kind`` 'progress' (stage, done, total) or 'log' (one line of text)."""

    kind: str
    stage: str = ""
    done: int = 0
    total: int = 0
    text: str = ""


def pythonSlicerExecutable(*folders: str | os.PathLike | None) -> str:
    """Slicer's ``PythonSlicer`` (the Python that runs scripts with Slicer's packages, torch included):
    in one of ``folders`` (Slicer's bin folders) or on PATH; ``sys.executable`` outside Slicer."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    for folder in folders:
        if folder and (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return shutil.which("PythonSlicer") or sys.executable


def batchArguments(inputPath: Path, outputs: dict[str, Path], modelPath: str | os.PathLike,
                   planningPath: Path | None, settings: EnhanceSettings, register: bool = False) -> list[str]:
    """The batch script's command-line arguments for one job (the ``mvct-enhance enhance`` options)."""
    args = ["--input", str(inputPath), "-o", str(outputs["output"]), "--report", str(outputs["report"]),
            "--model", str(modelPath), "--device", settings.device, "--precision", settings.precision,
            "--progress", "json"]
    if settings.batch_size:
        args += ["--batch-size", str(int(settings.batch_size))]
    if not settings.resample:
        args.append("--no-resample")
    if settings.assess:
        for key, option in (("dig", "--dig"), ("nselfssim", "--nselfssim"), ("tissue_change", "--tissue-change")):
            args += [option, str(outputs[key])]
        m = settings.metrics
        args += ["--noise-sd", repr(m.noise_sd), f"--window={m.window[0]!r},{m.window[1]!r}", "--seed", str(m.seed)]
    else:
        args.append("--no-metrics")
    if planningPath is not None:
        args += ["--planning-ct", str(planningPath)]
    if register:
        args.append("--register")
    return args


class BackgroundEnhance:
    """One enhance job in its own process (see the module)."""

    def __init__(self, pythonExecutable: str | None, batchScript: str | os.PathLike,
                 workRoot: str | os.PathLike | None = None) -> None:
        self.pythonExecutable = pythonExecutable or sys.executable
        self.batchScript = str(Path(batchScript).resolve())
        self.workRoot = Path(workRoot) if workRoot else Path(tempfile.gettempdir())
        self.workDir: Path | None = None
        self.process: subprocess.Popen | None = None
        self.state = "idle"  # idle, running, finished, failed, cancelled
        self.returncode: int | None = None
        self.error = ""
        self.log: list[str] = []
        self._events: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._outputs: dict[str, Path] = {}
        self._settings = EnhanceSettings()
        self.startedAt = 0.0

    # -- starting ------------------------------------------------------------------------------------

    def start(self, volume: Any, modelPath: str | os.PathLike, planning: Any = None,
              settings: EnhanceSettings | None = None, register: bool = False) -> list[str]:
        """Write the inputs (engine Volumes) into a new work folder and start the job; returns its command."""
        from MVCTEnhanceLib.engine.volume import write_volume

        if self.state == "running":
            raise MVCTEnhanceError("a background job is already running; cancel it first")
        self._settings = settings or EnhanceSettings()
        self.workRoot.mkdir(parents=True, exist_ok=True)
        self.workDir = Path(tempfile.mkdtemp(prefix="MVCTEnhance-job-", dir=self.workRoot))
        try:
            inputs = self.workDir / "inputs"
            inputs.mkdir()
            inputPath = write_volume(volume, inputs / "mvct.nrrd")
            planningPath = write_volume(planning, inputs / "planning_ct.nrrd") if planning is not None else None
            outputDir = self.workDir / "outputs"
            outputDir.mkdir()
            self._outputs = {key: outputDir / name for key, name in OUTPUT_FILES.items()}
            command = [self.pythonExecutable, self.batchScript,
                       *batchArguments(inputPath, self._outputs, Path(modelPath).resolve(), planningPath,
                                       self._settings, register)]
            env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, cwd=str(self.workDir), env=env,
                                            text=True, encoding="utf-8", errors="replace", bufsize=1)
        except BaseException:
            self._removeWorkDir()
            raise
        self.state = "running"
        self.startedAt = time.monotonic()
        self._readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                         for stream in (self.process.stdout, self.process.stderr)]
        for reader in self._readers:
            reader.start()
        return command

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._events.put(_parse(line.rstrip("\r\n")))
        stream.close()

    # -- while it runs -----------------------------------------------------------------------------

    def poll(self) -> list[Event]:
        """The events since the last call (never blocks); updates ``state`` when the process has ended."""
        events = self._drain()
        if self.state == "running" and self.process is not None and self.process.poll() is not None:
            for reader in self._readers:
                reader.join(timeout=5.0)  # the last lines of a finished process
            events += self._drain()
            self.returncode = self.process.returncode
            if self.returncode == EXIT_OK and self._outputs["output"].is_file():
                self.state = "finished"
            else:
                self.state = "failed"
                self.error = self._errorText()
                self._removeWorkDir()
        return events

    def _drain(self) -> list[Event]:
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event.kind == "log" and event.text:
                self.log.append(event.text)
            events.append(event)

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until the job ends (for batch use and tests); returns the final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == "running":
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the background job is still running after {timeout} s")
            time.sleep(interval)
        return self.state

    def cancel(self, grace: float = TERMINATE_GRACE_S) -> None:
        """Stop the job now: SIGTERM, SIGKILL after ``grace`` seconds; then remove every file of the job."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.returncode = self.process.returncode
            for reader in self._readers:
                reader.join(timeout=1.0)
            self._drain()
        if self.state in ("running", "finished", "idle"):
            self.state = "cancelled"
        self._removeWorkDir()

    def _errorText(self) -> str:
        lines = [line for line in self.log if line.strip()]
        errors = [line for line in lines if "error:" in line]
        last = (errors or lines or [""])[-1]
        if self.returncode == EXIT_DEPENDENCY:
            return last or "a package the conversion needs is missing from Slicer's Python"
        if self.returncode in (EXIT_INTERRUPTED, EXIT_TERMINATED) or (self.returncode or 0) < 0:
            return "the conversion process was stopped before it finished"
        return last or f"the conversion process failed (exit code {self.returncode})"

    # -- results -----------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return json.loads(self._outputs["report"].read_text(encoding="utf-8"))

    def results(self, mask: Any, parameters: dict[str, Any] | None = None) -> Any:
        """The finished job's outputs as a :class:`logic.JobResults` (``mask``: the input's body mask, the
        mask the job's maps were summarised in); the work folder is removed afterwards."""
        from MVCTEnhanceLib.engine.volume import read_volume

        from .logic import JobResults

        if self.state == "cancelled":
            raise EnhanceCancelled("the background job was cancelled; nothing was created")
        if self.state != "finished":
            raise BackgroundJobError(self.error or f"the background job has not finished (state {self.state})")
        try:
            report = self.report()
            result = read_volume(self._outputs["output"])
            maps = {}
            if self._settings.assess:
                for key, which in (("dig", "dig"), ("nselfssim", "nselfssim"), ("tissue_change", "tissuechange")):
                    maps[which] = read_volume(self._outputs[key], check_hu=False)
        finally:
            self._removeWorkDir()
        metrics = report.get("metrics") or {}
        details: dict[str, Any] = {}
        if metrics:
            nselfssim = dict(metrics.get("nselfssim", {}))
            planning = nselfssim.pop("planning_ct", None)
            details["mvct"] = {**metrics, "nselfssim": nselfssim}
            if planning is not None:
                details["planning_ct"] = {"nselfssim": {"input": planning}}
        card = report["model"]["card"]
        model = {"name": card["name"], "version": card["version"], "sha256": report["model"]["sha256"],
                 "not_for_diagnosis": card.get("not_for_diagnosis", "")}
        return JobResults(result, maps, mask if maps else None, metrics, details, list(report.get("warnings", [])),
                          model, float(report.get("timings_s", {}).get("enhance", 0.0)), report,
                          parameters or {}, report.get("registration"))

    def _removeWorkDir(self) -> None:
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)
            self.workDir = None


def _parse(line: str) -> Event:
    if line.startswith("{"):
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("event") == "progress":
            return Event("progress", str(data.get("stage", "")), int(data.get("done", 0)), int(data.get("total", 0)))
    return Event("log", text=line)
