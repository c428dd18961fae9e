"""Figures of the evaluation: box plots per metric, the visual comparison montage and the maps,
drawn with matplotlib's Agg backend and written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.figures import DISPLAY_WINDOW, axial_slice, nearest_slice, slice_centre_lps
from .cases import values
from .scores import ALL_METRICS

#: Box plots per row of the figure (the study has more metrics than fit side by side).
BOXPLOTS_PER_ROW = 6

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
    for metric in ALL_METRICS:
        names = [m.name for m in methods
                 if np.isfinite(values(rows, m.name, metric, cases)).any()
                 and not (metric == "dig" and m.kind == "input")]
        if names:
            panels.append((metric, names))
    if not panels:
        return None
    ncols = min(len(panels), BOXPLOTS_PER_ROW)
    nrows = math.ceil(len(panels) / ncols)
    width = max(3.3, 0.32 * max(len(n) for _, n in panels) + 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (metric, names) in zip(axes.ravel(), panels):
        data = [(lambda v: v[np.isfinite(v)])(values(rows, n, metric, cases)) for n in names]
        ax.boxplot(data, tick_labels=names, showmeans=True, meanprops={"marker": "D", "markersize": 4})
        for i, d in enumerate(data, start=1):
            ax.plot(np.full(d.size, i) + np.linspace(-0.12, 0.12, d.size) if d.size > 1 else [i], d, ".",
                    color="0.35", ms=3)
        info = ALL_METRICS[metric]
        ax.set_title(info.label + (f" ({info.unit})" if info.unit else ""), fontsize=10)
        if info.better == "zero":
            ax.axhline(0.0, color="0.6", lw=0.8)
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


def montage_png(path: Path, lc, kept, methods, index: int, title: str | None = None) -> Path:
    """Every method's image of one slice side by side, in one display window (``title`` before the case)."""
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
    fig.suptitle(f"{title + ', ' if title else ''}case {lc.case.name}, axial slice {index}; window W400 L40 HU "
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


def headline_png(path: Path, headline: dict[str, Any], methods, set_names) -> Path | None:
    """MAE, DIG and NSelfSSIM per method (one line each) across the sets: mean and bootstrap 95 % CI."""
    plt = plot_figure()
    panels = [m for m in ("mae", "dig", "nselfssim") if headline.get(m)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 0.75 * len(set_names) + 2.0) * len(panels), 4.4),
                             squeeze=False, layout="constrained")
    x = np.arange(len(set_names))
    markers = "osD^v<>phX*"
    shown = [m for m in methods if any(m.name in headline.get(k, {}) for k in panels)]
    offsets = np.linspace(-0.25, 0.25, len(shown)) if len(shown) > 1 else np.zeros(1)
    for ax, metric in zip(axes[0], panels):
        for j, m in enumerate(shown):
            cells = headline[metric].get(m.name)
            if not cells:
                continue
            mean = np.array([(cells.get(n) or {}).get("mean", np.nan) if n in cells else np.nan for n in set_names],
                            dtype=float)
            lo = np.array([(cells.get(n) or {}).get("ci_low", np.nan) if n in cells else np.nan for n in set_names],
                          dtype=float)
            hi = np.array([(cells.get(n) or {}).get("ci_high", np.nan) if n in cells else np.nan for n in set_names],
                          dtype=float)
            err = np.vstack([np.where(np.isfinite(lo), mean - lo, 0.0), np.where(np.isfinite(hi), hi - mean, 0.0)])
            ls = ":" if m.kind in ("input", "reference") else "-"
            ax.errorbar(x + offsets[j], mean, yerr=err, fmt=markers[j % len(markers)], ls=ls, lw=0.8, ms=4,
                        capsize=2, label=m.name)
        info = ALL_METRICS[metric]
        ax.set_title(info.label + (f" ({info.unit})" if info.unit else "") + f", {info.better} is better", fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(set_names, rotation=40, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3)
        if metric == "dig":
            vals = [c.get("mean") for cells in headline[metric].values() for c in cells.values()]
            if vals and all(v is not None and v > 0 for v in vals):
                ax.set_yscale("log")
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("mean and bootstrap 95 % CI over the cases of each set", fontsize=9)
    return save_figure(fig, path, dpi=90)
