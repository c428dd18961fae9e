"""Anatomy augmentation for the few real slices: elastic deformation, rotation, scale and flips.

One coordinate mapping (flip, then rotation and isotropic scale about the body centre, plus a smooth
random displacement field) is applied with linear interpolation, so the result is one resampling of
the original (no accumulated blur). Everything is drawn from a seed and returned as parameters, so a
dataset manifest can say exactly how each augmented slice was made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

AIR = -1000.0


def draw_params(seed: int, max_rotation_deg: float = 15.0, scale_range: tuple[float, float] = (0.9, 1.1),
                flip_probability: float = 0.5, elastic_alpha_mm: float = 4.0,
                elastic_sigma_mm: float = 15.0) -> dict[str, Any]:
    """Random augmentation parameters of ``seed`` (JSON-serialisable)."""
    rng = np.random.default_rng([int(seed), 0xA06])
    return {
        "seed": int(seed),
        "rotation_deg": round(float(rng.uniform(-max_rotation_deg, max_rotation_deg)), 4),
        "scale": round(float(rng.uniform(*scale_range)), 4),
        "flip_lr": bool(rng.random() < flip_probability),
        "elastic_alpha_mm": round(float(rng.uniform(0.5, 1.0) * elastic_alpha_mm), 4),
        "elastic_sigma_mm": float(elastic_sigma_mm),
    }


def augment_slice(hu: np.ndarray, params: dict[str, Any], spacing_mm: float = 1.0) -> np.ndarray:
    """Apply ``params`` (see :func:`draw_params`) to a 2D HU slice; air fills what comes in from outside."""
    rows, cols = hu.shape
    body = hu > -400
    cr, cc = ndimage.center_of_mass(body) if body.any() else ((rows - 1) / 2, (cols - 1) / 2)
    rr, ccg = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    # output pixel -> source pixel: inverse rotation/scale about the body centre
    a = np.deg2rad(params["rotation_deg"])
    s = float(params["scale"])
    dr, dc = rr - cr, ccg - cc
    src_r = cr + (np.cos(a) * dr + np.sin(a) * dc) / s
    src_c = cc + (-np.sin(a) * dr + np.cos(a) * dc) / s
    if params["flip_lr"]:
        src_c = 2 * cc - src_c
    alpha = float(params["elastic_alpha_mm"]) / spacing_mm
    if alpha > 0:
        rng = np.random.default_rng([int(params["seed"]), 0xE1A])
        sigma = float(params["elastic_sigma_mm"]) / spacing_mm
        fields = []
        for _ in range(2):
            f = ndimage.gaussian_filter(rng.standard_normal((rows, cols)).astype(np.float32), sigma)
            f /= max(float(np.abs(f).max()), 1e-6)
            fields.append(f * alpha)
        src_r = src_r + fields[0]
        src_c = src_c + fields[1]
    out = ndimage.map_coordinates(hu, [src_r, src_c], order=1, mode="constant", cval=AIR)
    return out.astype(np.float32)
