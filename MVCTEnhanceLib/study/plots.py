"""Figures of the evaluation: box plots per metric, the visual comparison montage and the maps,
drawn with matplotlib's Agg backend and written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.figures import DISPLAY_WINDOW, axial_slice, nearest_slice, slice_centre_lps
from ..engine.metrics import METRICS
from .cases import values

def plot_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=dpi)
    plot_figure().close(fig)
    os.replace(tmp, path)
    return path


def boxplots_png(path: Path, rows, methods) -> Path | None:
    plt = plot_figure()
    cases = sorted({r["case"] for r in rows})
    panels = []
    for metric in METRICS:
        names = [m.name for m in methods
                 if np.isfinite(values(rows, m.name, metric, cases)).any()
                 and not (metric == "dig" and m.kind == "input")]
        if names:
            panels.append((metric, names))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6), squeeze=False)
    for ax, (metric, names) in zip(axes[0], panels):
        data = [(lambda v: v[np.isfinite(v)])(values(rows, n, metric, cases)) for n in names]
        ax.boxplot(data, tick_labels=names, showmeans=True, meanprops={"marker": "D", "markersize": 4})
        for i, d in enumerate(data, start=1):
            ax.plot(np.full(d.size, i) + np.linspace(-0.12, 0.12, d.size) if d.size > 1 else [i], d, ".",
                    color="0.35", ms=3)
        info = METRICS[metric]
        ax.set_title(info.label + (f" ({info.unit})" if info.unit else ""), fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
        if metric == "dig" and all(d.size and d.min() > 0 for d in data):
            ax.set_yscale("log")
    fig.suptitle(f"{len(cases)} test case(s); diamond = mean", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def pick_slice(mask: np.ndarray, axis: int) -> int:
    """The slice with the most body: a representative slice for the figures."""
    counts = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).sum(1)
    return int(np.argmax(counts))


def _slice_of(volume, index: int, ref) -> np.ndarray:
    if volume.same_geometry(ref) or volume.array.shape == ref.array.shape:
        return axial_slice(volume, index)
    return axial_slice(volume, nearest_slice(volume, slice_centre_lps(ref, index)))


def montage_png(path: Path, lc, kept, methods, index: int) -> Path:
    """Every method's image of one slice side by side, in one display window."""
    plt = plot_figure()
    panels = []
    for m in methods:
        img = kept["images"].get(m.name)
        if img is None and m.kind == "reference" and lc.kv is not None:
            img = lc.kv
        if img is None:
            continue
        panels.append((m.name, _slice_of(img, index, lc.mvct)))
    n = len(panels)
    cols = n if n <= 5 else math.ceil(n / 2)
    rows_ = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.0 * cols, 3.25 * rows_ + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img) in zip(axes.ravel(), panels):
        ax.imshow(img, cmap="gray", vmin=DISPLAY_WINDOW[0], vmax=DISPLAY_WINDOW[1], interpolation="nearest")
        ax.set_title(name, fontsize=11)
    fig.suptitle(f"case {lc.case.name}, axial slice {index}; window W400 L40 HU "
                 f"({DISPLAY_WINDOW[0]:g}..{DISPLAY_WINDOW[1]:g}); not for diagnosis", fontsize=9)
    return save_figure(fig, path, dpi=100)


def maps_png(path: Path, lc, kept, methods, index: int) -> Path | None:
    """DIG (top row, shared logarithmic scale) and NSelfSSIM (bottom row) of one slice, one column per method."""
    from matplotlib.colors import LogNorm

    plt = plot_figure()
    names = [m.name for m in methods if kept["nselfssim"].get(m.name) is not None]
    if not names:
        return None
    kinds = {m.name: m.kind for m in methods}
    mask = axial_slice(lc.mvct.with_array(kept["mask"].astype(np.float32)), index) > 0.5
    dig = {n: axial_slice(kept["dig"][n], index) for n in names
           if kinds[n] != "input" and kept["dig"].get(n) is not None}
    body = [d[mask] for d in dig.values() if mask.any()]
    top = float(np.percentile(np.concatenate(body), 99.5)) if body else 10.0
    norm = LogNorm(vmin=1.0, vmax=max(top, 10.0))
    cols = len(names)
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols + 1.2, 5.8), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    im_d = im_n = None
    for j, name in enumerate(names):
        if name in dig:
            d = dig[name]
            im_d = axes[0, j].imshow(np.where(mask, np.maximum(d, 1.0), np.nan), cmap="inferno", norm=norm,
                                     interpolation="nearest")
            mean = float(d[mask].mean()) if mask.any() else float("nan")
            axes[0, j].set_title(f"DIG {name}\nslice mean {mean:.3g}", fontsize=9)
        else:
            axes[0, j].set_title(f"DIG {name}\n0 by definition" if kinds[name] == "input" else f"DIG {name}\nn/a",
                                 fontsize=9)
        s = axial_slice(kept["nselfssim"][name], index)
        im_n = axes[1, j].imshow(np.where(mask, s, np.nan), cmap="viridis", vmin=0.0, vmax=1.0,
                                 interpolation="nearest")
        mean = float(s[mask].mean()) if mask.any() else float("nan")
        axes[1, j].set_title(f"NSelfSSIM {name}\nslice mean {mean:.3f}", fontsize=9)
    if im_d is not None:
        fig.colorbar(im_d, ax=list(axes[0]), fraction=0.02, pad=0.01,
                     label="DIG, HU²/mm² (log, values < 1 shown as 1)")
    if im_n is not None:
        fig.colorbar(im_n, ax=list(axes[1]), fraction=0.02, pad=0.01, label="NSelfSSIM")
    fig.suptitle(f"case {lc.case.name}, axial slice {index}; maps inside the body mask of the MVCT", fontsize=9)
    return save_figure(fig, path, dpi=100)


