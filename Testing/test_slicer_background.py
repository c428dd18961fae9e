"""The Enhance job in a separate process: the module's runner with the real batch script.

Outside Slicer the runner starts ``sys.executable`` (inside Slicer: PythonSlicer) on
``MVCTEnhance/Scripts/mvct_enhance_batch.py``, as the module does; nothing is replaced.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import slicer

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.engine.errors import InputError, ModelError
from MVCTEnhanceLib.engine.files import TEST_PAUSE_ENV
from MVCTEnhanceLib.engine.settings import EnhanceSettings
from MVCTEnhanceLib.engine.volume import Volume

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MVCTEnhance"))
import MVCTEnhanceMRML  # noqa: E402
from MVCTEnhanceMRML import background, models  # noqa: E402
from MVCTEnhanceMRML.runner import BackgroundEnhance, pythonSlicerExecutable  # noqa: E402
import slicer_scenes  # noqa: E402

BATCH_SCRIPT = REPO / "MVCTEnhance" / "Scripts" / "mvct_enhance_batch.py"
TINY_MODEL = REPO / "Resources" / "models" / "mvctenhance-tiny-test.pt"
DEFAULT_MODEL = REPO / "Resources" / "models" / "mvctenhance-default.pt"
SHAPE = (6, 48, 44)


def _volume(seed=1, shape=SHAPE):
    return Volume(phantom_array(shape, seed=seed), spacing=(0.9, 1.0, 3.0), origin=(-20.0, 10.0, 5.0),
                  direction=ROTATED_DIRECTION)


def _runner(tmp_path):
    return BackgroundEnhance(pythonSlicerExecutable(), BATCH_SCRIPT, tmp_path / "work")


def _scene():
    return slicer_scenes.newScene(sliceViews=True)


def _addVolume(scene, name, volume):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    MVCTEnhanceMRML.fillVolumeNode(node, volume)
    return node


def _voxels(node):
    return slicer.util.arrayFromVolume(node)


def test_outside_slicer_the_runner_uses_this_python():
    assert pythonSlicerExecutable() == sys.executable or Path(pythonSlicerExecutable()).name.startswith("PythonSlicer")
    fake = Path(sys.executable).parent
    assert pythonSlicerExecutable(fake) == sys.executable or "PythonSlicer" in pythonSlicerExecutable(fake)


def test_progress_arrives_and_the_job_finishes_with_the_in_process_results(tmp_path):
    """The module's background path gives the nodes the in-process path gives, number for number."""
    scene = _scene()
    mvct = _addVolume(scene, "MVCT", _volume(1))
    planning = _addVolume(scene, "Planning CT", _volume(2))
    library = models.ModelLibrary(REPO / "Resources" / "models", tmp_path / "user")
    runner = _runner(tmp_path)
    job = background.startEnhanceInBackground(scene, mvct, TINY_MODEL, runner, planningNode=planning, device="cpu",
                                              batchSize=2, models=library, overlayOpacity=0.4)
    assert job.state == "running"
    seen, lines, polls = [], [], 0
    while job.state == "running":  # what the widget's QTimer does
        fraction, message, new = job.poll()
        seen.append((round(fraction, 6), message))
        lines += new
        polls += 1
        time.sleep(0.05)
    assert job.state == "finished", job.error
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    steps = [f for f, _ in job.history]
    assert steps == sorted(steps) and len(steps) >= 3 + 3  # batches of slices, then map chunks
    assert {m for _, m in job.history} == {"Enhancing slices", "Computing DIG and NSelfSSIM",
                                           "NSelfSSIM of the planning CT"}
    assert any("untrained test model" in line for line in lines)  # the job's own log lines arrive too
    ids = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    outputs = job.finish()
    assert job.state == "loaded" and list((tmp_path / "work").iterdir()) == []  # the job's files are gone

    inProcess = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, TINY_MODEL, planningNode=planning, device="cpu",
                                                  batchSize=2, models=library, overlayOpacity=0.4)
    for a, b in zip(outputs.nodes()[:4], inProcess.nodes()[:4]):
        np.testing.assert_array_equal(_voxels(a), _voxels(b))
        assert a.GetName() != b.GetName() and a.GetID() not in ids
        ma, mb = (np.zeros((4, 4)), np.zeros((4, 4)))
        import vtk

        for node, m in ((a, ma), (b, mb)):
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            m[:] = [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
        np.testing.assert_array_equal(ma, mb)
    assert [r[:2] for r in MVCTEnhanceMRML.tableRows(outputs.resultsTable)] == \
        [r[:2] for r in MVCTEnhanceMRML.tableRows(inProcess.resultsTable)]
    for ra, rb in zip(MVCTEnhanceMRML.tableRows(outputs.resultsTable), MVCTEnhanceMRML.tableRows(inProcess.resultsTable)):
        np.testing.assert_allclose(np.array(ra[2:6], float), np.array(rb[2:6], float), rtol=1e-12, equal_nan=True)
    assert outputs.warnings == inProcess.warnings
    for key in ("ModelName", "ModelVersion", "ModelSHA256", "Role", "SourceVolumeID"):
        assert outputs.enhancedVolume.GetAttribute("MVCTEnhance." + key) == \
            inProcess.enhancedVolume.GetAttribute("MVCTEnhance." + key)
    report = json.loads(outputs.enhancedVolume.GetAttribute("MVCTEnhance.Report"))
    assert report["input"]["node"] == "MVCT" and report["planning_ct"]["id"] == planning.GetID()
    assert json.loads(outputs.enhancedVolume.GetAttribute("MVCTEnhance.Parameters"))["enhance"]["batch_size"] == 2
    red = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)][0]
    assert red.GetLayoutName() == "Red"


def test_cancel_during_the_conversion_stops_the_process_within_a_second_and_leaves_nothing(tmp_path):
    """The default model on the CPU runs for many seconds; cancel as soon as conversion progress arrives."""
    runner = _runner(tmp_path)
    runner.start(_volume(3, shape=(40, 160, 160)), DEFAULT_MODEL, None, EnhanceSettings(device="cpu", batch_size=1))
    deadline = time.monotonic() + 90
    progressed = False
    while not progressed and time.monotonic() < deadline:
        progressed = any(e.kind == "progress" and e.stage == "enhance" for e in runner.poll())
        assert runner.state == "running", runner.error
        time.sleep(0.02)
    assert progressed, "no conversion progress arrived"
    t0 = time.monotonic()
    runner.cancel()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"cancel took {elapsed:.2f} s"
    assert runner.process.poll() is not None and runner.state == "cancelled"
    assert list((tmp_path / "work").iterdir()) == []
    with pytest.raises(Exception, match="cancelled"):
        runner.results(None)


def test_cancel_while_outputs_are_being_written_lets_the_job_remove_its_own_temporaries(tmp_path, monkeypatch):
    """SIGTERM while the output set is half written: the CLI unwinds (exit 143), nothing is left."""
    monkeypatch.setenv(TEST_PAUSE_ENV, "stage:30")
    runner = _runner(tmp_path)
    runner.start(_volume(4), TINY_MODEL, None, EnhanceSettings(device="cpu"))
    outputs = runner.workDir / "outputs"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(outputs.glob(".mvct-tmp-*/*")):
        runner.poll()
        time.sleep(0.05)
    assert any(outputs.glob(".mvct-tmp-*/*")), "the job never staged a file"
    runner.cancel(grace=10.0)  # time for the job's own handler (the 1 s bound is the default grace's test above)
    assert runner.returncode == 143  # terminated cleanly by its own handler, not killed
    assert list((tmp_path / "work").iterdir()) == []


def test_a_failing_job_reports_its_own_error_and_leaves_nothing(tmp_path):
    runner = _runner(tmp_path)
    runner.start(_volume(5), TINY_MODEL, None, EnhanceSettings(device="cuda:7"))
    assert runner.wait(timeout=120) == "failed"
    assert runner.returncode == 2 and "cuda" in runner.error
    assert list((tmp_path / "work").iterdir()) == []


def test_what_can_be_checked_is_refused_before_any_process_starts(tmp_path):
    scene = _scene()
    mvct = _addVolume(scene, "MVCT", _volume(6))
    runner = _runner(tmp_path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a TorchScript model file"):
        background.startEnhanceInBackground(scene, mvct, broken, runner)
    with pytest.raises(InputError, match="no input MVCT selected"):
        background.startEnhanceInBackground(scene, None, TINY_MODEL, runner)
    library = models.ModelLibrary(tmp_path / "shipped", tmp_path / "user")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "models.json").write_text(json.dumps(
        {"schema": "mvctenhance-models", "models": [{"file": "tiny.pt", "sha256": "0" * 64}]}))
    (tmp_path / "shipped" / "tiny.pt").write_bytes(TINY_MODEL.read_bytes())
    with pytest.raises(ModelError, match="does not match its listed sha256"):
        background.startEnhanceInBackground(scene, mvct, tmp_path / "shipped" / "tiny.pt", runner, models=library)
    assert runner.process is None and not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


def test_without_metrics_only_the_enhanced_volume_is_made(tmp_path):
    scene = _scene()
    mvct = _addVolume(scene, "MVCT", _volume(7))
    job = background.startEnhanceInBackground(scene, mvct, TINY_MODEL, _runner(tmp_path), device="cpu",
                                              computeMetrics=False)
    job.runner.wait(timeout=120)
    outputs = job.finish()
    assert outputs.digVolume is None and outputs.resultsTable is None and outputs.tissueChangeVolume is None
    assert json.loads(outputs.enhancedVolume.GetAttribute("MVCTEnhance.Report"))["metrics"] == {}
