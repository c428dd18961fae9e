"""What the user sees: the module's slice views rendered by Slicer's own vtkMRMLSliceLogic (slicer-core).

Three slice views (Red, Yellow, Green) are made as the application makes them, the module's logic
sets them up (``setupComparisonViews``), and the Red view is rendered to an image through the real
reslice / window-level / colour table / threshold / blend pipeline. No Qt, no mock of the scene.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import slicer

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.engine.metrics import body_mask
from MVCTEnhanceLib.engine.volume import Volume

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MVCTEnhance"))
import MVCTEnhanceMRML  # noqa: E402
from MVCTEnhanceMRML import display, offscreen  # noqa: E402
import slicer_scenes  # noqa: E402

TINY_MODEL = REPO / "Resources" / "models" / "mvctenhance-tiny-test.pt"
SHAPE = (5, 72, 64)


def _sceneWithViews():
    scene = slicer_scenes.newScene(sliceViews=True, size=(200, 180))
    return scene, scene._sliceLogics


def _fitHook(logics):
    """What the widget's layout hook does with the layout manager: align to the volume's planes and fit."""
    def hook(enhancedNode):
        for name in ("Red", "Yellow"):
            logics[name].GetSliceNode().RotateToVolumePlane(enhancedNode)
            logics[name].FitSliceToAll()
    return hook


def _addVolume(scene, name, volume):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    MVCTEnhanceMRML.fillVolumeNode(node, volume)
    return node


@pytest.fixture(scope="module")
def rendered():
    scene, logics = _sceneWithViews()
    mvctVolume = Volume(phantom_array(SHAPE, seed=5), spacing=(0.9, 1.0, 3.0), origin=(-30.0, 20.0, 4.0),
                        direction=ROTATED_DIRECTION)
    mvct = _addVolume(scene, "MVCT", mvctVolume)
    planning = _addVolume(scene, "Planning CT", mvctVolume.with_array(phantom_array(SHAPE, seed=6)))
    out = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), planningNode=planning, device="cpu",
                                            batchSize=4, overlayOpacity=0.5, layoutHook=_fitHook(logics))
    red = logics["Red"]
    red.GetSliceNode().SetSliceOffset(red.GetSliceNode().GetSliceOffset())  # middle slice after the fit
    body = body_mask(mvctVolume)
    bodyNode = _addVolume(scene, "body", mvctVolume.with_array(body.astype(np.float32)))
    insideBody = offscreen.sliceMaskPixels(red, scene, bodyNode)
    changedNode = out.tissueChangeVolume
    images = {}
    for which in ("none", "nselfssim", "dig", "tissuechange"):
        display.showOverlay(scene, out.enhancedVolume, which, 0.5)
        images[which] = offscreen.renderSliceView(red)
    composite = red.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(mvct.GetID())  # the MVCT itself, to check where the body lies
    MVCTEnhanceMRML.display.showEnhanced(scene, mvct)
    images["mvct"] = offscreen.renderSliceView(red)
    composite.SetBackgroundVolumeID(out.enhancedVolume.GetID())
    tissueValues = slicer.util.arrayFromVolume(changedNode)
    changedPixels = offscreen.sliceMaskPixels(red, scene, _addVolume(
        scene, "changed", mvctVolume.with_array((tissueValues == 1.0).astype(np.float32))))
    display.showOverlay(scene, out.enhancedVolume, "nselfssim", 0.5)
    return dict(scene=scene, logics=logics, out=out, images=images, inside=insideBody, changed=changedPixels,
                planning=planning, mvct=mvct)


def _tinted(r, which):
    return (r["images"][which] != r["images"]["none"]).any(axis=-1)


def test_the_red_view_shows_the_body_and_air(rendered):
    inside = rendered["inside"]
    assert 0.1 < inside.mean() < 0.8, "the rendered slice must show body and air around it"
    assert rendered["images"]["none"].shape == (180, 200, 3)
    mvct = rendered["images"]["mvct"]
    assert mvct[inside].mean() > mvct[~inside].mean() + 50  # the MVCT: soft tissue brighter than air


@pytest.mark.parametrize("which", ["nselfssim", "dig"])
def test_overlays_tint_the_body_and_leave_everything_outside_untouched(rendered, which):
    image, none, inside = rendered["images"][which], rendered["images"]["none"], rendered["inside"]
    np.testing.assert_array_equal(image[~inside], none[~inside])  # outside the body: the background alone
    assert _tinted(rendered, which)[inside].mean() > 0.95       # inside: coloured by the map


def test_tissue_change_overlay_tints_only_changed_voxels_inside_the_body(rendered):
    tinted, inside, changed = _tinted(rendered, "tissuechange"), rendered["inside"], rendered["changed"]
    assert not (tinted & ~inside).any()
    np.testing.assert_array_equal(tinted, changed)
    assert changed.any(), "the untrained tiny model changes some tissue; the map must show it"


def test_only_the_shown_maps_legend_is_visible_in_the_overlay_view(rendered):
    scene, out = rendered["scene"], rendered["out"]
    redSlice = rendered["logics"]["Red"].GetSliceNode()
    for which in ("nselfssim", "dig", "tissuechange"):
        display.showOverlay(scene, out.enhancedVolume, which, 0.5)
        for other in ("nselfssim", "dig", "tissuechange"):
            legend = display.colorLegendOf(out.mapNode(other))
            assert scene.GetNodeByID(legend.GetID()) is legend
            assert bool(legend.GetVisibility()) == (other == which)
            assert [legend.GetNthViewNodeID(i) for i in range(legend.GetNumberOfViewNodeIDs())] == [redSlice.GetID()]
    display.showOverlay(scene, out.enhancedVolume, "none", 0.5)
    assert not any(display.colorLegendOf(out.mapNode(w)).GetVisibility() for w in ("nselfssim", "dig", "tissuechange"))
    assert rendered["logics"]["Red"].GetSliceCompositeNode().GetForegroundVolumeID() is None


def test_the_reference_view_shows_the_planning_ct_without_overlay(rendered):
    yellow = rendered["logics"]["Yellow"].GetSliceCompositeNode()
    assert yellow.GetBackgroundVolumeID() == rendered["planning"].GetID()
    assert yellow.GetForegroundVolumeID() is None
    image = offscreen.renderSliceView(rendered["logics"]["Yellow"])
    assert image.std() > 10  # a real image, not blank


def test_offscreen_rendering_matches_the_volume_where_the_view_is_aligned():
    """The helper itself: an axis-aligned volume seen by the Red view gives its own grey levels."""
    scene, logics = _sceneWithViews()
    array = np.full((3, 40, 50), -1000.0, np.float32)
    array[:, 10:30, 5:25] = 40.0  # a block of soft tissue in air
    node = _addVolume(scene, "block", Volume(array, spacing=(1.0, 1.0, 2.0)))
    MVCTEnhanceMRML.display.showEnhanced(scene, node)
    red = logics["Red"]
    red.GetSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
    red.FitSliceToAll()
    image = offscreen.renderSliceView(red)
    grey = image[..., 0].astype(int)
    # Air black, 40 HU mid grey in the 400/40 window; in between only on the block's edge (interpolation).
    assert ((grey == 0) | (abs(grey - 127) <= 1)).mean() > 0.97
    block = abs(grey - 127) <= 1
    assert 0.15 < block.mean() < 0.35  # 20 x 20 of the 50 x 40 mm field, fitted into the view


# -- the user's layout ------------------------------------------------------------------------------

def _userViews(scene, logics, volumes):
    """A user's own arrangement before pressing Enhance: nothing like the module's comparison."""
    scene.GetFirstNodeByClass("vtkMRMLLayoutNode").SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    red, yellow, green = (logics[n] for n in ("Red", "Yellow", "Green"))
    red.GetSliceNode().SetOrientation("Sagittal")
    red.GetSliceNode().SetFieldOfView(123.0, 111.0, 1.0)
    red.GetSliceNode().SetSliceOffset(7.5)
    c = red.GetSliceCompositeNode()
    c.SetBackgroundVolumeID(volumes[0].GetID())
    c.SetForegroundVolumeID(volumes[1].GetID())
    c.SetForegroundOpacity(0.3)
    c.SetLinkedControl(False)
    yellow.GetSliceNode().SetOrientation("Coronal")
    yellow.GetSliceNode().SetSliceOffset(-4.0)
    yellow.GetSliceCompositeNode().SetBackgroundVolumeID(volumes[1].GetID())
    yellow.GetSliceCompositeNode().SetHotLinkedControl(True)
    green.GetSliceNode().SetOrientation("Axial")  # not Green's default either
    green.GetSliceNode().SetSliceOffset(3.0)
    green.GetSliceCompositeNode().SetBackgroundVolumeID(volumes[0].GetID())
    green.GetSliceCompositeNode().SetLinkedControl(True)  # the user links Green: it must not follow the module


def _greenState(scene):
    from MVCTEnhanceMRML import views

    return views.viewState(scene, ("Green",))["views"]["Green"]


def test_the_users_views_are_remembered_never_touch_green_and_come_back_exactly():
    from MVCTEnhanceMRML import views

    scene, logics = _sceneWithViews()
    volume = Volume(phantom_array(SHAPE, seed=7), spacing=(0.9, 1.0, 3.0), direction=ROTATED_DIRECTION)
    mvct = _addVolume(scene, "MVCT", volume)
    planning = _addVolume(scene, "Planning CT", volume.with_array(phantom_array(SHAPE, seed=8)))
    _userViews(scene, logics, (planning, mvct))
    original, green = views.viewState(scene), _greenState(scene)
    assert not views.hasRememberedViews(scene)

    for _ in range(2):  # a second run must not remember the module's own arrangement as the user's
        MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), planningNode=planning, device="cpu",
                                          batchSize=4, layoutHook=_fitHook(logics))
        assert views.hasRememberedViews(scene)
        changed = views.viewState(scene)
        assert changed["layout"] == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
        assert changed["views"]["Red"] != original["views"]["Red"]
        assert changed["views"]["Yellow"]["background"] == planning.GetID()
        assert changed["views"]["Red"]["linkedControl"] and changed["views"]["Yellow"]["linkedControl"]
        assert _greenState(scene) == green  # never changed, though the user linked it
    assert views.rememberedViews(scene) == json_round_trip(original)

    assert views.restoreViews(scene)
    restored = views.viewState(scene)
    assert restored == original  # every remembered property: layout, orientation, matrices, volumes, links
    assert logics["Red"].GetSliceNode().GetOrientation() == "Sagittal"
    assert _greenState(scene) == green
    assert not views.hasRememberedViews(scene) and not views.restoreViews(scene)  # nothing left to restore


def test_restore_shows_nothing_for_a_volume_removed_since():
    from MVCTEnhanceMRML import views

    scene, logics = _sceneWithViews()
    volume = Volume(phantom_array(SHAPE, seed=9), spacing=(0.9, 1.0, 3.0))
    mvct = _addVolume(scene, "MVCT", volume)
    other = _addVolume(scene, "other", volume)
    logics["Red"].GetSliceCompositeNode().SetBackgroundVolumeID(other.GetID())
    MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, str(TINY_MODEL), device="cpu", computeMetrics=False)
    scene.RemoveNode(other)
    assert views.restoreViews(scene)
    assert logics["Red"].GetSliceCompositeNode().GetBackgroundVolumeID() is None


def test_without_views_nothing_is_remembered():
    from MVCTEnhanceMRML import views

    scene = slicer.vtkMRMLScene()
    assert not views.rememberViews(scene) and not views.restoreViews(scene) and not views.hasRememberedViews(scene)


def json_round_trip(value):
    import json

    return json.loads(json.dumps(value))
