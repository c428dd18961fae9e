"""Figures of a training run: the loss curves (``losses.csv`` -> ``losses.png``) and the sample
conversions (``samples/``). matplotlib is imported inside the functions, with the Agg backend, so
that importing the trainer stays cheap and works without a display."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

#: losses.csv columns that are not losses (the rest get one panel each).
NON_LOSS_COLUMNS = ("iteration", "lr_g", "lr_d", "seconds_per_iteration")
SAMPLE_TITLES = ("MVCT", "MVCT -> kV", "kV-CT", "kV-CT -> MV")
SAMPLE_WINDOW_HU = (-400.0, 400.0)


def read_loss_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a run's losses.csv as lists of floats."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        cols: dict[str, list[float]] = {h: [] for h in header}
        for row in reader:
            for h, v in zip(header, row):
                cols[h].append(float(v))
    return cols


def plot_losses(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """One panel per loss (unweighted, both directions summed) against iteration; PNG via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_loss_csv(csv_path)
    it = cols.get("iteration", [])
    names = [c for c in cols if c not in NON_LOSS_COLUMNS]
    if not it or not names:
        return
    n = len(names)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        ax.plot(it, cols[name], lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        if all(v > 0 for v in cols[name]):
            ax.set_yscale("log")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.92, wspace=0.3, hspace=0.55)
    tmp = Path(png_path).with_name(Path(png_path).name + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)


def plot_sample(images_hu: Sequence[np.ndarray], iteration: int, png_path: str | os.PathLike) -> None:
    """MVCT, its conversion, kV-CT, its conversion (HU, in :data:`SAMPLE_TITLES` order) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = SAMPLE_WINDOW_HU
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, img, title in zip(axes, images_hu, SAMPLE_TITLES):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"iteration {iteration} (display window {lo:g}..{hi:g} HU)")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.85, wspace=0.04)
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
