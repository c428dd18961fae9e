"""The Slicer module's MRML logic on slicer-core's real MRML scene, with the real tiny generator.

Also the batch script, run as a separate process like users run it (outside Slicer here: it runs the
same MVCTEnhanceLib code it runs inside Slicer's Python).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vtk
from vtk.util import numpy_support

import slicer

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.engine.errors import EnhanceCancelled, InputError, ModelError
from MVCTEnhanceLib.engine.inference import enhance
from MVCTEnhanceLib.engine.metrics import assess, body_mask
from MVCTEnhanceLib.engine.modelfile import file_sha256
from MVCTEnhanceLib.engine.version import __version__ as ENGINE_VERSION
from MVCTEnhanceLib.engine.volume import Volume, write_volume

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MVCTEnhance"))
import MVCTEnhanceMRML  # noqa: E402
from MVCTEnhanceMRML import display, metricstable  # noqa: E402
import slicer_scenes  # noqa: E402

TINY_MODEL = REPO / "Resources" / "models" / "mvctenhance-tiny-test.pt"
BATCH_SCRIPT = REPO / "MVCTEnhance" / "Scripts" / "mvct_enhance_batch.py"
SHAPE = (5, 40, 36)  # small: every run here converts and assesses the whole volume on the CPU


def _newScene(views: bool = False):
    return slicer_scenes.newScene(viewNodes=views)


def _phantomVolume(seed: int = 0, origin=(-30.5, 12.25, -7.0)) -> Volume:
    return Volume(phantom_array(SHAPE, seed=seed), spacing=(0.9, 1.1, 3.0), origin=origin, direction=ROTATED_DIRECTION)


def _addVolume(scene, name: str, volume: Volume):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    MVCTEnhanceMRML.fillVolumeNode(node, volume)
    return node


def _matrix(node) -> list[float]:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return [m.GetElement(r, c) for r in range(4) for c in range(4)]


def _voxels(node) -> np.ndarray:
    image = node.GetImageData()
    d = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(d[2], d[1], d[0])


def _nodeIDs(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


@pytest.fixture(scope="module")
def run():
    """One full run (MVCT + planning CT, views present) shared by the checks below."""
    scene = _newScene(views=True)
    mvctVolume = _phantomVolume(seed=1)
    planningVolume = _phantomVolume(seed=2, origin=(-31.0, 12.0, -7.5))
    mvct = _addVolume(scene, "MVCT", mvctVolume)
    planning = _addVolume(scene, "Planning CT", planningVolume)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "couch shift")
    mvct.SetAndObserveTransformNodeID(transform.GetID())
    before = MVCTEnhanceMRML.nodeFingerprint(mvct)
    fractions, hooked = [], []
    outputs = MVCTEnhanceMRML.enhanceVolumeNode(
        scene, mvct, str(TINY_MODEL), planningNode=planning, device="cpu", batchSize=2,
        progress=lambda f, m: fractions.append((f, m)), layoutHook=hooked.append, overlayOpacity=0.4)
    return dict(scene=scene, mvct=mvct, planning=planning, mvctVolume=mvctVolume, planningVolume=planningVolume,
                outputs=outputs, before=before, fractions=fractions, hooked=hooked, transform=transform)


# -- geometry ----------------------------------------------------------------------------------------

def test_node_geometry_is_ras_and_round_trips_exactly():
    scene = _newScene()
    vol = _phantomVolume()
    node = _addVolume(scene, "v", vol)
    # Slicer's IJKToRAS = diag(-1,-1,1) . direction(LPS) . diag(spacing); origin with x, y negated.
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ vol.direction_matrix @ np.diag(vol.spacing)
    expected[:3, 3] = [-vol.origin[0], -vol.origin[1], vol.origin[2]]
    np.testing.assert_allclose(np.array(_matrix(node)).reshape(4, 4), expected, rtol=0, atol=1e-12)
    back = MVCTEnhanceMRML.volumeFromNode(node)
    assert back.same_geometry(vol)  # bit-exact
    assert np.array_equal(back.array, vol.array)
    assert back.array is not vol.array and back.array.dtype == np.float32


def test_slicer_nrrd_reader_agrees_with_the_engine_geometry(tmp_path):
    """A file written by the engine (SimpleITK, LPS) and read by Slicer's own NRRD reader gives the same Volume."""
    vol = _phantomVolume()
    path = write_volume(vol, tmp_path / "phantom.nrrd")
    scene = _newScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    back = MVCTEnhanceMRML.volumeFromNode(node)
    assert back.array.shape == vol.array.shape
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.direction, vol.direction, rtol=0, atol=1e-9)


# -- a full run --------------------------------------------------------------------------------------

def test_outputs_are_new_scalar_volumes_with_the_input_geometry(run):
    out, mvct = run["outputs"], run["mvct"]
    vols = (out.enhancedVolume, out.digVolume, out.nselfssimVolume, out.tissueChangeVolume)
    assert [n.GetName() for n in vols] == ["MVCT enhanced", "MVCT DIG", "MVCT NSelfSSIM", "MVCT tissue change"]
    assert len({n.GetID() for n in vols} | {mvct.GetID()}) == 5
    for node in vols:
        assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
        assert node.GetImageData().GetDimensions() == mvct.GetImageData().GetDimensions()
        assert _matrix(node) == _matrix(mvct)  # exact, rotated direction included
        assert node.GetImageData().GetScalarType() == vtk.VTK_FLOAT
        assert node.GetTransformNodeID() == run["transform"].GetID()  # overlays the input wherever it is
    assert out.resultsTable.GetClassName() == "vtkMRMLTableNode"


@pytest.fixture(scope="module")
def reference(run):
    """What the library itself computes for the run's volumes."""
    result = enhance(run["mvctVolume"], str(TINY_MODEL), device="cpu", batch_size=2)
    return dict(result=result, assessment=assess(run["mvctVolume"], result.volume, device="cpu"),
                planning=assess(run["planningVolume"], device="cpu"))


def test_voxels_are_the_engines_output(run, reference):
    """The nodes hold exactly what the library computes for the same Volume (no second implementation);
    the maps inside the engine's body mask, the outside-body value elsewhere."""
    from MVCTEnhanceLib.engine.calibration import tissue_calibration
    from MVCTEnhanceLib.engine.metrics import tissue_change_map

    result, assessment = reference["result"], reference["assessment"]
    np.testing.assert_array_equal(_voxels(run["outputs"].enhancedVolume), result.volume.array)
    body = body_mask(run["mvctVolume"])
    np.testing.assert_array_equal(assessment.mask, body)
    assert 0.2 < body.mean() < 0.9  # the phantom has air around it
    anchor = run["mvctVolume"].with_array(tissue_calibration().apply(run["mvctVolume"].array))
    tissue, _ = tissue_change_map(anchor, result.volume, body)
    for node, engineMap in ((run["outputs"].digVolume, assessment.dig.array),
                            (run["outputs"].nselfssimVolume, assessment.nselfssim_output.array),
                            (run["outputs"].tissueChangeVolume, tissue.array)):
        voxels = _voxels(node)
        np.testing.assert_array_equal(voxels[body], engineMap[body])
        assert (voxels[~body] == display.OUTSIDE_BODY_VALUE).all()
        assert node.GetAttribute("MVCTEnhance.OutsideBodyValue") == "-2.0"
    assert not np.array_equal(result.volume.array, run["mvctVolume"].array)  # the tiny model does change it


def test_input_node_is_untouched(run):
    after = MVCTEnhanceMRML.nodeFingerprint(run["mvct"])
    assert after == run["before"]  # voxels digest, geometry, name, transform, modified times
    np.testing.assert_array_equal(_voxels(run["mvct"]), run["mvctVolume"].array)


def test_display_colour_tables_and_windows(run):
    scene, out = run["scene"], run["outputs"]
    enhancedDisplay = out.enhancedVolume.GetDisplayNode()
    assert enhancedDisplay.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert (enhancedDisplay.GetWindow(), enhancedDisplay.GetLevel()) == display.ENHANCED_WINDOW_LEVEL
    nss = out.nselfssimVolume.GetDisplayNode()
    dig = out.digVolume.GetDisplayNode()
    # slicer-core has no file-based tables, so the module's own viridis/inferno tables are used.
    assert nss.GetColorNodeID() == "vtkMRMLColorTableNodeMVCTEnhanceViridis"
    assert dig.GetColorNodeID() == "vtkMRMLColorTableNodeMVCTEnhanceInferno"
    viridis = scene.GetNodeByID(nss.GetColorNodeID())
    assert viridis.GetNumberOfColors() == 256
    first, last = [0.0] * 4, [0.0] * 4
    viridis.GetColor(0, first)
    viridis.GetColor(255, last)
    np.testing.assert_allclose(first[:3], (0.267, 0.005, 0.329), atol=2 / 255)  # dark purple (stored as 8-bit)
    np.testing.assert_allclose(last[:3], (0.993, 0.906, 0.144), atol=2 / 255)  # yellow
    assert (nss.GetWindowLevelMin(), nss.GetWindowLevelMax()) == pytest.approx(display.NSELFSSIM_RANGE)
    digValues = _voxels(out.digVolume)
    assert dig.GetWindowLevelMin() == 0.0
    assert 0.0 < dig.GetWindowLevelMax() <= float(digValues.max())
    tissue = out.tissueChangeVolume.GetDisplayNode()
    assert tissue.GetColorNodeID() == "vtkMRMLColorTableNodeMVCTEnhanceMagenta"
    assert (tissue.GetWindowLevelMin(), tissue.GetWindowLevelMax()) == (0.0, 1.0)
    # Transparent outside the body (and, for the tissue-change map, where nothing changed); voxel by voxel.
    for node, lower in ((nss, -1.5), (dig, -1.5), (tissue, 0.5)):
        assert node.GetApplyThreshold() and not node.GetAutoThreshold()
        assert node.GetLowerThreshold() == lower and display.OUTSIDE_BODY_VALUE < lower
        assert node.GetUpperThreshold() > float(_voxels(node.GetDisplayableNode()).max())
        assert node.GetInterpolate() == 0


def test_colour_tables_define_every_entry_without_deprecated_calls():
    """SetNamesInitialised is deprecated (a VTK error on Slicer >= 5.10): named SetColor defines each entry."""
    scene = _newScene()
    for which in ("nselfssim", "dig", "tissuechange"):
        table = display.colorNodeForMap(scene, which)
        assert all(table.GetColorDefined(i) for i in range(table.GetNumberOfColors()))
        assert table.GetColorName(0).startswith(display.MAP_STYLES[which].colormap)
    assert "SetNamesInitialised" not in (REPO / "MVCTEnhance" / "MVCTEnhanceMRML" / "display.py").read_text()


def test_each_map_has_a_colour_legend_with_its_unit(run):
    out = run["outputs"]
    titles = {}
    for which in ("nselfssim", "dig", "tissuechange"):
        legend = display.colorLegendOf(out.mapNode(which))
        assert legend is not None and legend.IsA("vtkMRMLColorLegendDisplayNode")
        assert legend.GetPrimaryDisplayNode() is out.mapNode(which).GetDisplayNode()
        titles[which] = legend.GetTitleText()
    assert titles == {"nselfssim": "NSelfSSIM (unitless, 1 = noisy)", "dig": "DIG (HU^2/mm^2)",
                      "tissuechange": "Tissue class changed (1 = changed)"}


def test_builtin_colour_table_is_preferred_when_present():
    scene = _newScene()
    builtin = slicer.vtkMRMLColorTableNode()
    builtin.SetSingletonTag("FileViridis.txt")  # how Slicer's file-based Viridis table is identified
    scene.AddNode(builtin)
    assert builtin.GetID() == "vtkMRMLColorTableNodeFileViridis.txt"
    assert display.colorNodeForMap(scene, "nselfssim") is builtin
    assert display.colorNodeForMap(scene, "dig").GetID() == "vtkMRMLColorTableNodeMVCTEnhanceInferno"


def test_attributes_record_model_engine_and_parameters(run):
    sha = file_sha256(TINY_MODEL)
    for role, node in (("enhanced", run["outputs"].enhancedVolume), ("dig", run["outputs"].digVolume),
                       ("nselfssim", run["outputs"].nselfssimVolume),
                       ("tissuechange", run["outputs"].tissueChangeVolume), ("metrics", run["outputs"].resultsTable)):
        get = lambda key: node.GetAttribute("MVCTEnhance." + key)  # noqa: E731
        assert get("Role") == role
        assert get("ModelName") == "mvctenhance-tiny-test"
        assert get("ModelVersion") == "0.1.0"
        assert get("ModelSHA256") == sha
        assert get("EngineVersion") == ENGINE_VERSION
        assert get("SourceVolumeID") == run["mvct"].GetID()
        params = json.loads(get("Parameters"))
        assert params["enhance"]["batch_size"] == 2
        assert params["enhance"]["model"]["sha256"] == sha
        assert params["metrics"]["noise_sd"] == 20.0 and params["metrics"]["window"] == [-160.0, 240.0]
        assert params["planning"]["id"] == run["planning"].GetID()
        assert "untrained" in json.loads(get("Warnings"))[0]
    assert "not for diagnosis" in run["outputs"].enhancedVolume.GetAttribute("MVCTEnhance.NotForDiagnosis")


def test_results_table_holds_the_engines_summaries(run, reference):
    rows = MVCTEnhanceMRML.tableRows(run["outputs"].resultsTable)
    assert [r[:2] for r in rows] == [("NSelfSSIM", "MVCT (input)"), ("NSelfSSIM", "enhanced"),
                                     ("NSelfSSIM", "planning CT"), ("DIG", "enhanced vs MVCT"),
                                     ("Tissue change", "enhanced vs MVCT")]
    assert rows[3][6] == "HU^2/mm^2"
    tissue = run["outputs"].report["metrics"]["tissue_change"]["output"]
    assert rows[4][2] == pytest.approx(tissue["fraction"], rel=1e-12) and rows[4][5] == tissue["n_voxels"]
    assert rows[4][6] == "fraction of body"
    changed = _voxels(run["outputs"].tissueChangeVolume) == 1.0
    assert int(changed.sum()) == tissue["n_voxels"]
    mvctSummaries = reference["assessment"].summaries
    planningSummary = reference["planning"].summaries["nselfssim"]["input"]
    for row, summary in zip(rows, (mvctSummaries["nselfssim"]["input"], mvctSummaries["nselfssim"]["output"],
                                   planningSummary, mvctSummaries["dig"]["output"])):
        assert row[2:6] == pytest.approx((summary["mean"], summary["median"], summary["p95"], summary["n_voxels"]),
                                         rel=1e-12)
    details = json.loads(run["outputs"].resultsTable.GetAttribute("MVCTEnhance.Summaries"))
    assert len(details["mvct"]["nselfssim"]["output"]["per_slice_mean"]) == SHAPE[run["mvctVolume"].axial_axis()]


def test_progress_is_monotonic_and_completes(run):
    values = [f for f, _ in run["fractions"]]
    assert values == sorted(values) and values[0] >= 0.0 and values[-1] == 1.0
    assert {m for _, m in run["fractions"]} >= {"Enhancing slices", "Computing DIG and NSelfSSIM"}


def test_views_side_by_side_linked_with_overlay(run):
    scene, out = run["scene"], run["outputs"]
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    composites = {scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLayoutName():
                  scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)}
    red, yellow = composites["Red"], composites["Yellow"]
    assert red.GetBackgroundVolumeID() == out.enhancedVolume.GetID()
    assert red.GetForegroundVolumeID() == out.nselfssimVolume.GetID()
    assert red.GetForegroundOpacity() == pytest.approx(0.4)
    assert yellow.GetBackgroundVolumeID() == run["planning"].GetID()
    assert red.GetLinkedControl() and yellow.GetLinkedControl()
    assert not composites["Green"].GetLinkedControl()  # the Green view is never changed
    sliceNodes = {scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").GetLayoutName():
                  scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(3)}
    assert sliceNodes["Yellow"].GetOrientation() == "Axial"
    assert run["hooked"] == [out.enhancedVolume]
    # The GUI's opacity slider and overlay choice act on the same composite nodes.
    assert MVCTEnhanceMRML.setOverlayOpacity(scene, [out.nselfssimVolume.GetID()], 0.8) == 1
    assert red.GetForegroundOpacity() == pytest.approx(0.8)
    assert MVCTEnhanceMRML.setOverlayMap(scene, out.enhancedVolume.GetID(), out.digVolume.GetID(), 0.3) == 1
    assert red.GetForegroundVolumeID() == out.digVolume.GetID()


def test_without_planning_ct_the_mvct_is_the_reference_and_no_views_is_fine():
    scene = _newScene(views=True)
    mvct = _addVolume(scene, "MVCT", _phantomVolume())
    out = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), device="cpu", overlayMap="dig")
    yellow = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)
              if scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLayoutName() == "Yellow"][0]
    assert yellow.GetBackgroundVolumeID() == mvct.GetID()
    assert [r[:2] for r in MVCTEnhanceMRML.tableRows(out.resultsTable)][2] == ("DIG", "enhanced vs MVCT")
    # A scene without slice views (batch, no main window): nodes are made, no view nodes appear.
    bare = _newScene()
    node = _addVolume(bare, "MVCT", _phantomVolume())
    out = MVCTEnhanceMRML.enhanceVolumeNode(bare, node, str(TINY_MODEL), device="cpu", computeMetrics=False)
    assert out.digVolume is None and out.resultsTable is None
    assert bare.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 0
    assert bare.GetNumberOfNodesByClass("vtkMRMLLayoutNode") == 0


def test_nrrd_written_by_the_storage_node_reloads_equal(run, tmp_path):
    scene, enhanced = run["scene"], run["outputs"].enhancedVolume
    path = tmp_path / "enhanced.nrrd"
    writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(writer)
    writer.SetFileName(str(path))
    assert writer.WriteData(enhanced)
    reloaded = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "reloaded")
    reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(reader)
    reader.SetFileName(str(path))
    assert reader.ReadData(reloaded)
    np.testing.assert_array_equal(_voxels(reloaded), _voxels(enhanced))
    np.testing.assert_allclose(_matrix(reloaded), _matrix(enhanced), rtol=0, atol=1e-12)
    scene.RemoveNode(reloaded)
    scene.RemoveNode(writer)
    scene.RemoveNode(reader)


# -- cancel and errors: nothing half-made ------------------------------------------------------------

@pytest.mark.parametrize("cancelAt", [0.0, 0.6])
def test_cancel_leaves_the_scene_as_before(cancelAt):
    """Cancel during conversion (at once) and during the metrics: same nodes, same IDs, input intact."""
    scene = _newScene(views=True)
    mvct = _addVolume(scene, "MVCT", _phantomVolume())
    ids, before = _nodeIDs(scene), MVCTEnhanceMRML.nodeFingerprint(mvct)
    state = {"fraction": 0.0, "asked": 0}

    def shouldCancel():
        state["asked"] += 1
        return state["fraction"] >= cancelAt

    with pytest.raises(EnhanceCancelled):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), device="cpu", batchSize=2,
                                          progress=lambda f, m: state.update(fraction=f),
                                          shouldCancel=shouldCancel)
    assert state["asked"] >= 1
    assert _nodeIDs(scene) == ids
    assert MVCTEnhanceMRML.nodeFingerprint(mvct) == before


def test_error_while_adding_nodes_removes_every_new_node():
    scene = _newScene(views=True)
    mvct = _addVolume(scene, "MVCT", _phantomVolume())
    ids = _nodeIDs(scene)

    def brokenLayout(node):
        raise RuntimeError("layout manager went away")

    with pytest.raises(RuntimeError, match="layout manager"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), device="cpu", computeMetrics=False,
                                          layoutHook=brokenLayout)
    assert _nodeIDs(scene) == ids


def _labelmap(scene, source):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    MVCTEnhanceMRML.fillVolumeNode(node, MVCTEnhanceMRML.volumeFromNode(source))
    return node


def _threeComponents(scene, className, name, scalarType):
    node = scene.AddNewNodeByClass(className, name)
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 3)
    image.AllocateScalars(scalarType, 3)
    node.SetAndObserveImageData(image)
    return node


def _rgb(scene, source):
    return _threeComponents(scene, "vtkMRMLVectorVolumeNode", "photo", vtk.VTK_UNSIGNED_CHAR)


def _rgbAsScalarClass(scene, source):
    return _threeComponents(scene, "vtkMRMLScalarVolumeNode", "three components", vtk.VTK_FLOAT)


def _flat(scene, source):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "one slice")
    MVCTEnhanceMRML.fillVolumeNode(node, Volume(phantom_array((1, 32, 32)), spacing=(1.0, 1.0, 3.0)))
    return node


def _empty(scene, source):
    return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")


def _segmentation(scene, source):
    return scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segments")


@pytest.mark.parametrize("make, message", [
    (lambda scene, source: None, "no input MVCT selected"),
    (_labelmap, "label map"),
    (_segmentation, "segmentation"),
    (_rgb, "scalar CT volume"),
    (_rgbAsScalarClass, "3 components per voxel"),
    (_flat, "2D image"),
    (_empty, "no voxels"),
])
def test_bad_input_is_refused_with_a_clear_message_and_nothing_added(make, message):
    scene = _newScene(views=True)
    mvct = _addVolume(scene, "MVCT", _phantomVolume())
    bad = make(scene, mvct)
    ids = _nodeIDs(scene)
    with pytest.raises(InputError, match=message):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, bad, str(TINY_MODEL), device="cpu")
    assert _nodeIDs(scene) == ids


def test_bad_model_planning_and_overlay_are_refused_before_any_node(tmp_path):
    scene = _newScene()
    mvct = _addVolume(scene, "MVCT", _phantomVolume())
    ids = _nodeIDs(scene)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a TorchScript model file"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(broken), device="cpu")
    with pytest.raises(ModelError, match="does not exist"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ModelError, match="no model file selected"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, "", device="cpu")
    with pytest.raises(InputError, match="same node"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), planningNode=mvct, device="cpu")
    with pytest.raises(InputError, match="label map"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), planningNode=_labelmap(scene, mvct))
    scene.RemoveNode(scene.GetFirstNodeByName("labels"))
    with pytest.raises(InputError, match="overlay map"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), overlayMap="rainbow")
    assert _nodeIDs(scene) == ids


def test_second_run_reuses_colour_tables_and_names_outputs_uniquely(run):
    scene, mvct = run["scene"], run["mvct"]
    colourCount = scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")
    again = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), device="cpu")
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == colourCount
    assert again.enhancedVolume.GetName() != run["outputs"].enhancedVolume.GetName()
    assert again.enhancedVolume.GetName().startswith("MVCT enhanced")
    for node in again.nodes():
        scene.RemoveNode(node)


def test_metric_rows_from_summaries_keep_missing_values_visible():
    rows = metricstable.summaryRows({"nselfssim": {"input": {"mean": 0.5, "median": None, "p95": 0.9,
                                                              "n_voxels": 10}}})
    assert rows[0][:2] == ("NSelfSSIM", "MVCT (input)")
    assert np.isnan(rows[0][3]) and rows[0][5] == 10


# -- batch script ------------------------------------------------------------------------------------

def _runBatch(args, tmp_path, prelude: str = ""):
    code = (f"import sys, runpy\n{prelude}\nsys.argv = {[str(BATCH_SCRIPT)] + [str(a) for a in args]!r}\n"
            f"runpy.run_path({str(BATCH_SCRIPT)!r}, run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)


def test_batch_script_writes_volumes_maps_and_report(tmp_path):
    mvct = write_volume(_phantomVolume(), tmp_path / "patient mvct.nrrd")
    out = tmp_path / "out"
    out.mkdir()
    args = ["--input", mvct, "--output-dir", out, "--model", TINY_MODEL, "--device", "cpu", "--batch-size", "2"]
    done = _runBatch(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= {"patient mvct_dig.nrrd", "patient mvct_enhanced.nrrd",
                                               "patient mvct_nselfssim.nrrd", "patient mvct_report.json"}
    report = json.loads((out / "patient mvct_report.json").read_text())
    assert report["model"]["sha256"] == file_sha256(TINY_MODEL)
    assert report["parameters"]["batch_size"] == 2
    assert report["outputs"]["output"].endswith("patient mvct_enhanced.nrrd")


def test_batch_script_exit_codes_for_user_and_dependency_errors(tmp_path):
    missingInput = _runBatch(["--input", tmp_path / "nope.nrrd", "--output-dir", tmp_path, "--model", TINY_MODEL],
                             tmp_path)
    assert missingInput.returncode == 2 and "does not exist" in missingInput.stderr
    noInput = _runBatch(["--output-dir", tmp_path], tmp_path)
    assert noInput.returncode == 2 and "--input" in noInput.stderr
    noTorch = _runBatch(["--input", tmp_path / "x.nrrd", "--output-dir", tmp_path], tmp_path,
                        prelude="sys.modules['torch'] = None")  # torch not importable, as in a fresh Slicer
    assert noTorch.returncode == 3 and "PyTorch" in noTorch.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_engine_domain_warnings_reach_the_outputs():
    """Out-of-domain notes from the engine (here: pixel spacing far from the model's) are not swallowed."""
    scene = _newScene()
    coarse = Volume(phantom_array(SHAPE), spacing=(2.5, 2.5, 3.0), direction=ROTATED_DIRECTION)
    mvct = _addVolume(scene, "coarse MVCT", coarse)
    out = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), device="cpu", computeMetrics=False)
    spacingNotes = [w for w in out.warnings if "pixel spacing" in w]
    assert spacingNotes, out.warnings
    assert spacingNotes[0] in json.loads(out.enhancedVolume.GetAttribute("MVCTEnhance.Warnings"))
    assert json.loads(out.enhancedVolume.GetAttribute("MVCTEnhance.Parameters"))["enhance"]["resampled"] is True
    assert _matrix(out.enhancedVolume) == _matrix(mvct)  # resampled internally, returned on the input grid


# -- one enhance job -------------------------------------------------------------------------------

def _fieldPaths(d, prefix=""):
    """Every key path of a nested report ('metrics.nselfssim.output.mean', ...), lists as leaves."""
    paths = set()
    for key, value in d.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= _fieldPaths(value, path + ".")
    return paths


def test_cli_and_slicer_run_the_same_job_and_report_the_same_fields(tmp_path):
    """The command line and the Slicer logic both call engine.job.run_enhance: same fields, same numbers."""
    from MVCTEnhanceLib import cli

    volume = _phantomVolume(seed=3)
    planningVolume = _phantomVolume(seed=4)
    mvctFile = write_volume(volume, tmp_path / "mvct.nrrd")
    planningFile = write_volume(planningVolume, tmp_path / "planning.nrrd")
    reportFile = tmp_path / "report.json"
    assert cli.main(["enhance", str(mvctFile), "-o", str(tmp_path / "out.nrrd"), "--report", str(reportFile),
                     "--planning-ct", str(planningFile), "--model", str(TINY_MODEL), "--device", "cpu"]) == 0
    fromCli = json.loads(reportFile.read_text())

    scene = _newScene()
    mvct = _addVolume(scene, "MVCT", volume)
    planning = _addVolume(scene, "Planning CT", planningVolume)
    outputs = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), planningNode=planning, device="cpu")
    fromSlicer = json.loads(outputs.enhancedVolume.GetAttribute("MVCTEnhance.Report"))
    assert fromSlicer == json.loads(json.dumps(outputs.report, default=str))

    # What only a front end knows: files for the CLI, nodes for Slicer.
    frontEnd = {"outputs", "output_type", "input.path", "planning_ct.path", "input.node", "input.id",
                "planning_ct.node", "planning_ct.id", "timings_s.load", "timings_s.write", "timings_s.total"}
    def shared(paths):
        return {p for p in paths if not any(p == f or p.startswith(f + ".") for f in frontEnd)}

    assert shared(_fieldPaths(fromCli)) == shared(_fieldPaths(fromSlicer))
    assert "metrics.nselfssim.planning_ct.mean" in shared(_fieldPaths(fromSlicer))
    for key in ("metrics.nselfssim.input.mean", "metrics.nselfssim.output.mean",
                "metrics.nselfssim.planning_ct.mean", "metrics.dig.output.mean"):
        a, b = fromCli, fromSlicer
        for part in key.split("."):
            a, b = a[part], b[part]
        assert a == pytest.approx(b, rel=1e-9), key
    assert fromCli["warnings"] == fromSlicer["warnings"] and "untrained" in fromCli["warnings"][0]
    assert fromCli["settings"] == fromSlicer["settings"]


# -- dependencies ----------------------------------------------------------------------------------

def test_missing_requirements_are_found_and_installs_need_consent(tmp_path):
    from MVCTEnhanceMRML import dependencies

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.0  # installed here\nnumpy<1.0\n"
                            "mvctenhance-no-such-package>=1\n--index-url https://example.invalid\n")
    assert dependencies.missingRequirements(requirements) == ["numpy<1.0", "mvctenhance-no-such-package>=1"]
    installed = []
    with pytest.raises(dependencies.DependencyError, match="--testing"):
        dependencies.ensurePackages(requirements, None, True, installed.extend)
    with pytest.raises(dependencies.DependencyError, match="not installed: numpy<1.0"):
        dependencies.ensurePackages(requirements, lambda message: False, False, installed.extend)
    assert installed == []  # nothing installed without consent
    satisfied = tmp_path / "ok.txt"
    satisfied.write_text("numpy>=1.0\n")
    assert dependencies.ensurePackages(satisfied, lambda message: False, False, installed.extend) == []
    assert dependencies.torchProblem() == ""  # torch 2.13 here
    assert "too old" in dependencies.torchProblem(">=99")


def test_the_enhanced_volume_is_prefilled_for_slicers_dicom_export(run):
    """Slicer's export dialog reads 'DICOM.<tag>' subject hierarchy attributes of the series item."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(run["scene"])
    item = shNode.GetItemByDataNode(run["outputs"].enhancedVolume)
    assert item
    get = lambda tag: shNode.GetItemAttribute(item, "DICOM." + tag)  # noqa: E731
    assert "NOT FOR DIAGNOSIS" in get("SeriesDescription") and len(get("SeriesDescription")) <= 64
    assert get("Modality") == "CT" and get("Model") == "mvctenhance-tiny-test 0.1.0"


def test_self_test_skips_under_testing_and_asks_before_installing(tmp_path):
    """The module's self-test: what it does when torch or a package is missing (the build server has no torch)."""
    from MVCTEnhanceMRML import dependencies

    ok = tmp_path / "ok.txt"
    ok.write_text("numpy>=1.0\n")
    missing = tmp_path / "missing.txt"
    missing.write_text("mvctenhance-no-such-package>=1\n")
    installed, asked = [], []
    assert dependencies.selfTestReadiness(ok, None, True, installed.extend) == ""  # all there: run
    reason = dependencies.selfTestReadiness(missing, None, True, installed.extend)
    assert reason.startswith("MVCT Enhance self-test skipped: missing Python packages: mvctenhance-no-such-package>=1")
    assert "--testing" in reason and installed == []
    reason = dependencies.selfTestReadiness(missing, lambda m: asked.append(m) or False, False, installed.extend)
    assert reason.startswith("MVCT Enhance self-test not run:") and installed == []
    assert asked and "mvctenhance-no-such-package" in asked[0]  # asked, refused, nothing installed
    assert dependencies.selfTestReadiness(missing, lambda m: True, False, installed.extend) == ""
    assert installed == ["mvctenhance-no-such-package>=1"]  # installed only after consent
    # Without torch (a fresh Slicer, the extension build server): skipped with a clear message.
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, %r)\n"
            "from MVCTEnhanceMRML import dependencies\n"
            "print(dependencies.selfTestReadiness(None, None, True, print))\n" % str(REPO / "MVCTEnhance"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MVCT Enhance self-test skipped: PyTorch is not available.")


def test_screenshot_script_renders_the_module_views(tmp_path):
    out = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_screenshot.py"), "--model", str(TINY_MODEL),
                           "--out", str(out), "--size", "96"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
