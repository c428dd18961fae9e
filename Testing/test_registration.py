"""Rigid registration of the MVCT to the planning CT: the engine, the MRML transform node, the CLI report.

The moving MVCT is the bundled sample MVCT with its geometry moved by a known rigid transform (a
header change: every voxel keeps its value, so the truth is exact), registered back to the sample's
planning CT (kV: other intensities, the same anatomy).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import vtk


from MVCTEnhanceLib.engine.errors import InputError
from MVCTEnhanceLib.engine.registration import RigidTransform, register_rigid
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MVCTEnhance"))
import MVCTEnhanceMRML  # noqa: E402
from MVCTEnhanceMRML import registration as mrmlRegistration  # noqa: E402
import slicer_scenes  # noqa: E402

SAMPLE = REPO / "Resources" / "sample"
TINY_MODEL = REPO / "Resources" / "models" / "mvctenhance-tiny-test.pt"


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def _centre(v: Volume) -> np.ndarray:
    return np.asarray(v.origin) + v.direction_matrix @ ((np.array(v.array.shape[::-1]) - 1) / 2 * np.array(v.spacing))


def _moved(volume: Volume, rotation, shift) -> tuple[Volume, RigidTransform]:
    """``volume`` displaced rigidly about its centre (x -> R (x - c) + c + t) and the true MVCT -> planning map."""
    c = _centre(volume)
    origin = rotation @ (np.asarray(volume.origin) - c) + c + shift
    moved = Volume(volume.array, volume.spacing, tuple(origin), tuple((rotation @ volume.direction_matrix).ravel()))
    truth = RigidTransform(tuple(map(tuple, rotation.T)), tuple(c - rotation.T @ (c + shift)))
    return moved, truth


def _errors(found: RigidTransform, truth: RigidTransform, around) -> tuple[float, float]:
    """(residual rotation in degrees, largest displacement error in mm over a 200 x 200 x 60 mm box)."""
    residual = found.matrix @ np.linalg.inv(truth.matrix)
    angle = math.degrees(math.acos(min(1.0, (np.trace(residual[:3, :3]) - 1) / 2)))
    corners = np.asarray(around) + np.array([[x, y, z] for x in (-100, 100) for y in (-100, 100) for z in (-30, 30)])
    return angle, float(np.linalg.norm(found.apply(corners) - truth.apply(corners), axis=1).max())


@pytest.fixture(scope="module")
def sample():
    return read_volume(SAMPLE / "sample_planning_ct.nrrd"), read_volume(SAMPLE / "sample_mvct.nrrd")


def test_a_known_5_mm_3_degree_displacement_is_recovered_within_1_mm_and_1_degree(sample):
    planning, mvct = sample
    rotation = _rotation((0.3, 0.2, 1.0), 3.0)
    shift = np.array([3.0, -2.4, 3.2])
    assert np.linalg.norm(shift) == pytest.approx(5.0, abs=1e-9)
    moved, truth = _moved(mvct, rotation, shift)
    found = register_rigid(planning, moved)
    angle, displacement = _errors(found, truth, _centre(moved))
    assert angle < 1.0 and displacement < 1.0, (angle, displacement)
    assert found.rotation_deg == pytest.approx(3.0, abs=1.0)
    assert found.metric < 0 and found.iterations > 0  # Mattes MI: lower is better


def test_json_form_round_trips_and_refuses_what_is_not_rigid():
    t = RigidTransform(tuple(map(tuple, _rotation((1, 0, 0), 10.0))), (1.0, -2.0, 3.0), metric=-0.5, iterations=3,
                       stop="done", itk_parameters=(0.1, 0, 0, 1, 2, 3), itk_fixed_parameters=(0, 0, 0, 0))
    d = json.loads(json.dumps(t.to_dict()))
    back = RigidTransform.from_dict(d)
    np.testing.assert_allclose(back.matrix, t.matrix, atol=1e-15)
    assert d["space"] == "LPS" and d["rotation_deg"] == pytest.approx(10.0)
    assert d["itk"]["direction"].startswith("planning CT (fixed)")
    np.testing.assert_allclose(t.inverse().apply(t.apply([[5.0, 6.0, 7.0]])), [[5.0, 6.0, 7.0]], atol=1e-12)
    scaled = dict(d, matrix_mvct_to_planning=(np.diag([2.0, 1, 1, 1])).tolist())
    with pytest.raises(InputError, match="not a rigid transform"):
        RigidTransform.from_dict(scaled)
    with pytest.raises(InputError, match="4x4"):
        RigidTransform.from_dict({})


def _crop(v: Volume, rows=slice(48, 208), cols=slice(48, 208)) -> Volume:
    """A smaller field of view (faster to convert and register), with the geometry that goes with it."""
    origin = np.asarray(v.origin) + v.direction_matrix @ (np.array([cols.start, rows.start, 0]) * np.array(v.spacing))
    return Volume(np.ascontiguousarray(v.array[:, rows, cols]), v.spacing, tuple(origin), v.direction)


def _scene():
    return slicer_scenes.newScene()


def _node(scene, name, volume):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    MVCTEnhanceMRML.fillVolumeNode(node, volume)
    return node


def _worldRAS(node, ijk):
    """Where voxel ``ijk`` of ``node`` is shown (RAS), through every transform above it."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = np.array([m.GetElement(r, 0) * ijk[0] + m.GetElement(r, 1) * ijk[1] + m.GetElement(r, 2) * ijk[2]
                    + m.GetElement(r, 3) for r in range(3)])
    parent = node.GetParentTransformNode()
    if parent is not None:
        toWorld = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(toWorld)
        ras = np.array(toWorld.TransformPoint(*ras))
    return ras


@pytest.fixture(scope="module")
def cropped(sample):
    planning, mvct = (_crop(v) for v in sample)
    moved, truth = _moved(mvct, _rotation((0.0, 0.3, 1.0), 3.0), np.array([4.0, 3.0, 0.0]))
    return planning, mvct, moved, truth


def _checkShownOnPlanning(mvctNode, alignedMvct: Volume, tolerance_mm=1.0):
    """The registered MVCT node's voxels are shown where the aligned MVCT's voxels are (RAS)."""
    shape = alignedMvct.array.shape[::-1]
    for ijk in [(0, 0, 0), (shape[0] - 1, 0, shape[2] - 1), (shape[0] // 2, shape[1] // 2, shape[2] // 2),
                (0, shape[1] - 1, shape[2] // 2)]:
        lps = np.asarray(alignedMvct.origin) + alignedMvct.direction_matrix @ (np.array(ijk) * np.array(alignedMvct.spacing))
        expected = lps * np.array([-1.0, -1.0, 1.0])
        assert np.linalg.norm(_worldRAS(mvctNode, ijk) - expected) < tolerance_mm


def test_the_transform_node_puts_the_mvct_and_outputs_on_the_planning_ct(cropped):
    planning, aligned, moved, truth = cropped
    scene = _scene()
    planningNode = _node(scene, "Planning CT", planning)
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "planning CT placement")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 12.0)  # the planning CT is itself placed somewhere: the MVCT must follow it
    parent.SetMatrixTransformToParent(shift)
    mvctNode = _node(scene, "MVCT", moved)
    out = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvctNode, TINY_MODEL, planningNode=planningNode, device="cpu",
                                            computeMetrics=False, register=True)
    transform = out.registrationTransform
    assert transform.IsA("vtkMRMLLinearTransformNode") and transform.GetName() == "MVCT to Planning CT (rigid)"
    assert mvctNode.GetTransformNodeID() == transform.GetID() == out.enhancedVolume.GetTransformNodeID()
    record = json.loads(out.enhancedVolume.GetAttribute("MVCTEnhance.Report"))["registration"]
    np.testing.assert_allclose(mrmlRegistration.lpsMatrix(transform), record["matrix_mvct_to_planning"], atol=1e-9)
    angle, displacement = _errors(RigidTransform.from_dict(record), truth, _centre(moved))
    assert angle < 1.0 and displacement < 1.0
    _checkShownOnPlanning(mvctNode, aligned)
    _checkShownOnPlanning(out.enhancedVolume, aligned)

    planningNode.SetAndObserveTransformNodeID(parent.GetID())
    transform.SetAndObserveTransformNodeID(parent.GetID())  # what applyRegistration does with a placed planning CT
    placed = Volume(aligned.array, aligned.spacing, tuple(np.asarray(aligned.origin) + [-12.0, 0, 0]), aligned.direction)
    _checkShownOnPlanning(mvctNode, placed)

    # A second registered run reuses the registration transform (the MVCT is under it, that is allowed).
    again = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvctNode, TINY_MODEL, planningNode=planningNode, device="cpu",
                                              computeMetrics=False, register=True)
    assert again.registrationTransform is transform
    assert transform.GetTransformNodeID() == parent.GetID()
    assert scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode") == 2


def test_registration_is_refused_without_planning_ct_or_over_the_users_own_transform(cropped):
    planning, _aligned, moved, _truth = cropped
    scene = _scene()
    planningNode = _node(scene, "Planning CT", planning)
    mvctNode = _node(scene, "MVCT", moved)
    with pytest.raises(InputError, match="needs a planning CT"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvctNode, TINY_MODEL, device="cpu", register=True)
    users = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "couch shift")
    mvctNode.SetAndObserveTransformNodeID(users.GetID())
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="under the transform 'couch shift'"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvctNode, TINY_MODEL, planningNode=planningNode, device="cpu",
                                          register=True)
    assert mvctNode.GetTransformNodeID() == users.GetID() and scene.GetNumberOfNodes() == count


def test_cli_and_background_job_record_the_same_registration(cropped, tmp_path):
    from MVCTEnhanceLib.cli import main
    from MVCTEnhanceMRML import background
    from MVCTEnhanceMRML.runner import BackgroundEnhance

    planning, aligned, moved, truth = cropped
    mvctFile, planningFile = write_volume(moved, tmp_path / "mvct.nrrd"), write_volume(planning, tmp_path / "ct.nrrd")
    report = tmp_path / "report.json"
    assert main(["enhance", str(mvctFile), "-o", str(tmp_path / "e.nrrd"), "--report", str(report), "--planning-ct",
                 str(planningFile), "--register", "--no-metrics", "--model", str(TINY_MODEL), "--device", "cpu",
                 "--progress", "none"]) == 0
    fromCli = json.loads(report.read_text())["registration"]
    angle, displacement = _errors(RigidTransform.from_dict(fromCli), truth, _centre(moved))
    assert angle < 1.0 and displacement < 1.0
    assert main(["enhance", str(mvctFile), "-o", str(tmp_path / "f.nrrd"), "--register", "--model", str(TINY_MODEL)]) == 2

    scene = _scene()
    planningNode, mvctNode = _node(scene, "Planning CT", planning), _node(scene, "MVCT", moved)
    runner = BackgroundEnhance(sys.executable, REPO / "MVCTEnhance" / "Scripts" / "mvct_enhance_batch.py", tmp_path / "w")
    job = background.startEnhanceInBackground(scene, mvctNode, TINY_MODEL, runner, planningNode=planningNode,
                                              device="cpu", computeMetrics=False, register=True)
    import time

    while job.state == "running":  # as the widget's timer does
        job.poll()
        time.sleep(0.05)
    assert "Registering the MVCT to the planning CT" in {m for _, m in job.history}
    out = job.finish()
    fromJob = RigidTransform.from_dict(json.loads(out.enhancedVolume.GetAttribute("MVCTEnhance.Report"))["registration"])
    np.testing.assert_allclose(mrmlRegistration.lpsMatrix(out.registrationTransform), fromJob.matrix, atol=1e-12)
    # The same code on the same voxels; ITK's threads sum the metric in varying order, so not bit-identical.
    angle, displacement = _errors(fromJob, RigidTransform.from_dict(fromCli), _centre(moved))
    assert angle < 0.1 and displacement < 0.2
    _checkShownOnPlanning(out.enhancedVolume, aligned)
