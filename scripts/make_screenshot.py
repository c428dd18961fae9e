"""Render the extension's screenshot (docs/slicer-screenshot.png) from Slicer's real slice pipeline.

    .venv/bin/python scripts/make_screenshot.py [--model Resources/models/mvctenhance-default.pt] [--out PNG]

Loads the bundled sample (synthetic MVCT and planning CT) into a slicer-core MRML scene, runs the
module's own logic (``MVCTEnhanceMRML.enhanceVolumeNode``: conversion, body-masked NSelfSSIM overlay,
the module's side-by-side views), and renders the Red and Yellow slice views with Slicer's
vtkMRMLSliceLogic (reslice, window/level, colour tables, threshold, blend) exactly as the views show
them, plus the MVCT itself in the Red view for comparison. The panels and the colour legend of the
overlay (the map's colour table and unit) are put side by side with matplotlib. No Qt is needed,
so the picture is the slice views' content, without Slicer's window around it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "MVCTEnhance")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "Resources" / "models" / "mvctenhance-default.pt"))
    parser.add_argument("--out", default=str(REPO / "docs" / "slicer-screenshot.png"))
    parser.add_argument("--size", type=int, default=360, help="slice view size in pixels (square)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    import slicer
    import MVCTEnhanceMRML
    from MVCTEnhanceLib.engine.volume import read_volume
    from MVCTEnhanceMRML import display, offscreen

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    colorLogic = slicer.vtkSlicerColorLogic()
    colorLogic.SetMRMLScene(scene)
    views = offscreen.createSliceViews(scene, appLogic, size=(args.size, args.size))

    def node(name, path):
        n = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        MVCTEnhanceMRML.fillVolumeNode(n, read_volume(path))
        return n

    mvct = node("SampleMVCT", REPO / "Resources" / "sample" / "sample_mvct.nrrd")
    planning = node("SamplePlanningCT", REPO / "Resources" / "sample" / "sample_planning_ct.nrrd")

    def fit(enhancedNode):  # what the widget's layout hook does with the layout manager
        for name in ("Red", "Yellow"):
            views[name].GetSliceNode().RotateToVolumePlane(enhancedNode)
            views[name].FitSliceToAll()

    out = MVCTEnhanceMRML.enhanceVolumeNode(scene, mvct, args.model, planningNode=planning, device="cpu",
                                            overlayMap="nselfssim", overlayOpacity=0.5, layoutHook=fit)
    red = views["Red"]
    withOverlay = offscreen.renderSliceView(red)
    composite = red.GetSliceCompositeNode()
    composite.SetForegroundVolumeID(None)
    composite.SetBackgroundVolumeID(mvct.GetID())
    display.showEnhanced(scene, mvct)  # all three panels in the module's soft-tissue window (400/40 HU)
    display.showEnhanced(scene, planning)
    mvctView = offscreen.renderSliceView(red)
    reference = offscreen.renderSliceView(views["Yellow"])

    table = display.colorNodeForMap(scene, "nselfssim")
    colours = np.array([[0.0] * 4 for _ in range(table.GetNumberOfColors())])
    for i in range(table.GetNumberOfColors()):
        rgba = [0.0] * 4
        table.GetColor(i, rgba)
        colours[i] = rgba
    style = display.MAP_STYLES["nselfssim"]
    lo, hi = display.NSELFSSIM_RANGE

    fig = plt.figure(figsize=(11.0, 4.1), dpi=100)
    grid = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 0.05], wspace=0.06, left=0.01, right=0.95, top=0.86,
                            bottom=0.03)
    card = out.enhancedVolume.GetAttribute("MVCTEnhance.ModelName"), out.enhancedVolume.GetAttribute(
        "MVCTEnhance.ModelVersion")
    for i, (image, title) in enumerate(((mvctView, "MVCT (input)"),
                                        (withOverlay, f"Enhanced ({card[0]} {card[1]})\n+ NSelfSSIM overlay, body only"),
                                        (reference, "Planning kV CT (linked view)"))):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    bar = fig.add_subplot(grid[0, 3])
    gradient = np.linspace(lo, hi, 256)[:, None]
    bar.imshow(gradient, aspect="auto", origin="lower", cmap=ListedColormap(colours[:, :3]),
               extent=(0, 1, lo, hi))
    bar.yaxis.tick_right()
    bar.set_xticks([])
    bar.set_ylabel(style.legendTitle, fontsize=9)
    bar.yaxis.set_label_position("right")
    fig.suptitle("MVCT Enhance (3D Slicer): slice views rendered by Slicer's vtkMRMLSliceLogic. "
                 "Synthetic sample; research tool, not for diagnosis", fontsize=10)
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    print(f"wrote {target} ({target.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
