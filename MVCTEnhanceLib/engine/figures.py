"""PNG figures people look at instead of reading numbers: the conversion montage.

Matplotlib with the Agg backend (no display needed); imported lazily by callers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume import Volume

#: Soft-tissue display window (level 40, width 400 HU): where MVCT noise and contrast differences show.
DISPLAY_WINDOW = (-160.0, 240.0)


def axial_slice(volume: Volume, index: int) -> np.ndarray:
    return np.take(volume.array, index, axis=volume.axial_axis())


def slice_centre_lps(volume: Volume, index: int) -> np.ndarray:
    """Physical (LPS, mm) centre of axial slice ``index``."""
    axis = volume.axial_axis()
    shape = volume.array.shape
    ijk_numpy = [(s - 1) / 2.0 for s in shape]
    ijk_numpy[axis] = float(index)
    ijk = np.array(ijk_numpy[::-1])  # numpy (k, j, i) -> ITK (i, j, k)
    return np.asarray(volume.origin) + volume.direction_matrix @ (np.asarray(volume.spacing) * ijk)


def nearest_slice(volume: Volume, point_lps: np.ndarray) -> int:
    """Index of ``volume``'s axial slice nearest to a physical point (clamped to the volume)."""
    ijk = np.linalg.solve(volume.direction_matrix * np.asarray(volume.spacing), point_lps - np.asarray(volume.origin))
    axis = volume.axial_axis()
    index = ijk[::-1][axis]
    return int(np.clip(np.rint(index), 0, volume.array.shape[axis] - 1))


def montage_png(path: str | os.PathLike, mvct: Volume, enhanced: Volume, planning: Volume | None = None,
                dig: Volume | None = None, nselfssim: Volume | None = None, index: int | None = None,
                title: str = "") -> Path:
    """MVCT | enhanced | planning CT | DIG | NSelfSSIM of one axial slice (default: the middle one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = mvct.axial_axis()
    index = mvct.array.shape[axis] // 2 if index is None else index
    panels: list[tuple[str, np.ndarray, dict]] = [
        ("MVCT", axial_slice(mvct, index), {"cmap": "gray", "vmin": DISPLAY_WINDOW[0], "vmax": DISPLAY_WINDOW[1]}),
        ("enhanced (kV-like)", axial_slice(enhanced, index),
         {"cmap": "gray", "vmin": DISPLAY_WINDOW[0], "vmax": DISPLAY_WINDOW[1]}),
    ]
    if planning is not None:
        same = planning.same_geometry(mvct)
        p_index = index if same else nearest_slice(planning, slice_centre_lps(mvct, index))
        panels.append(("planning CT" if same else f"planning CT (nearest slice {p_index})", axial_slice(planning, p_index),
                       {"cmap": "gray", "vmin": DISPLAY_WINDOW[0], "vmax": DISPLAY_WINDOW[1]}))
    if dig is not None:
        d = axial_slice(dig, index)
        panels.append(("DIG (HU²/mm²)", d, {"cmap": "inferno", "vmin": 0.0, "vmax": float(np.percentile(d, 99.5)) or 1.0}))
    if nselfssim is not None:
        panels.append(("NSelfSSIM (enhanced)", axial_slice(nselfssim, index), {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0}))

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, img, style) in zip(axes[0], panels):
        im = ax.imshow(img, interpolation="nearest", **style)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        if style["cmap"] != "gray":
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title or f"axial slice {index}; grey panels W400 L40 HU; not for diagnosis", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out
