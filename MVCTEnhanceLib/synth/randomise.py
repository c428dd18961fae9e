"""Domain-randomised training slices and the simulator-shift validation settings.

A model that only ever saw one simulator learns that simulator: on MVCT made another way it may turn
fat into air. Training MV slices are therefore simulated with settings drawn per slice
(:data:`.simulate.TRAINING_RANGES`: noise, blur, kernel, views, contrast, offsets, cupping, rings,
streaks), from bodies of 8 to 40 cm that sometimes fill or are cut by the field of view. Each also
gets a *clean twin*: the same slice and machine without noise and artefacts, what an ideal denoiser
would return.

The shift sets (:data:`SHIFT_SETS`) put held-out anatomy through settings at or beyond the edges of
those ranges, and through a second, independent simulator (:mod:`.independent`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from . import phantoms
from .independent import IndependentSettings, simulate_independent
from .simulate import SimulatorSettings, randomised_settings, simulate_slice

KERNELS = ("shepp-logan", "hann", "ramlak")
VIEWS = (180, 270, 360)
#: Body widths of training anatomy (mm), drawn log-uniformly: a child's neck to a large pelvis.
BODY_MM = (80.0, 400.0)
#: Width of the phantoms as drawn at 1 mm (the scale a rendering spacing is relative to).
PHANTOM_NATIVE_MM = 160.0
#: Probability that a training slice is cut to a smaller square field before simulation.
HARD_CUT_PROBABILITY = 0.25


def training_anatomy(seed: int, size: int, spacing_mm: float) -> tuple[np.ndarray, dict[str, Any]]:
    """A phantom slice (kV HU) of patient ``seed`` with a random body size, couch and field."""
    rng = np.random.default_rng([int(seed), 0xB0D])
    body_mm = float(np.exp(rng.uniform(math.log(BODY_MM[0]), math.log(BODY_MM[1]))))
    render_mm = spacing_mm * PHANTOM_NATIVE_MM / body_mm  # drawn on a finer/coarser grid, stored on ours
    img, info = phantoms.phantom_slice(seed, size=size, spacing_mm=render_mm, couch=bool(rng.random() < 0.7))
    info = {**info, "body_mm": round(body_mm, 1)}
    if rng.random() < HARD_CUT_PROBABILITY:
        img, field = cut_field(img, rng)
        info["field_px"] = field
    return img, info


def cut_field(img: np.ndarray, rng: np.random.Generator, lo: float = 0.375, hi: float = 0.78) -> tuple[np.ndarray, int]:
    """Air outside a square field (``lo``..``hi`` of the slice) around a random body pixel."""
    n = img.shape[0]
    field = int(rng.integers(int(lo * n), int(hi * n)))
    body = np.argwhere(img > -400)
    if not len(body):
        return img, n
    r, c = body[rng.integers(len(body))]
    keep = np.zeros(img.shape, bool)
    r0, c0 = max(0, int(r) - field // 2), max(0, int(c) - field // 2)
    keep[r0:r0 + field, c0:c0 + field] = True
    return np.where(keep, img, -1000.0).astype(np.float32), field


def training_settings(seed: int) -> SimulatorSettings:
    """The machine of training slice ``seed``: every range of TRAINING_RANGES plus kernel and views."""
    rng = np.random.default_rng([int(seed), 0x5E7])
    return randomised_settings(rng, kernel=str(rng.choice(KERNELS)), n_views=int(rng.choice(VIEWS)))


def clean_twin(settings: SimulatorSettings) -> SimulatorSettings:
    """The same machine without noise, rings, streaks, offset and cupping (blur and contrast kept)."""
    return dataclasses.replace(settings, noise_sd=0.0, ring_sd=0.0, streak_views=0, streak_gain=0.0, offset_hu=0.0,
                               cupping_hu=0.0)


def simulate_training_slice(kv: np.ndarray, spacing_mm: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(MV slice, its clean twin, the settings) of training slice ``seed``."""
    settings = training_settings(seed)
    rng = np.random.default_rng([int(seed), 0x5117])
    mv = simulate_slice(kv, (spacing_mm, spacing_mm), settings, rng)
    clean = simulate_slice(kv, (spacing_mm, spacing_mm), clean_twin(settings), np.random.default_rng(0))
    return mv, clean, settings.to_dict()


# -- shift sets ------------------------------------------------------------------------------------

def _project(settings: SimulatorSettings) -> Callable[[np.ndarray, float, int], np.ndarray]:
    def run(kv: np.ndarray, spacing_mm: float, seed: int) -> np.ndarray:
        return simulate_slice(kv, (spacing_mm, spacing_mm), settings, np.random.default_rng([int(seed), 0x5117]))

    run.settings = settings.to_dict()  # type: ignore[attr-defined]
    return run


def _independent(settings: IndependentSettings) -> Callable[[np.ndarray, float, int], np.ndarray]:
    def run(kv: np.ndarray, spacing_mm: float, seed: int) -> np.ndarray:
        return simulate_independent(kv, spacing_mm, settings, seed=seed)

    run.settings = {"simulator": "independent", **dataclasses.asdict(settings)}  # type: ignore[attr-defined]
    return run


#: name -> (what it tests, how a kV slice becomes its MVCT, how the anatomy is prepared: "whole",
#: "fill" (the body fills the field: cropped to its bounding box), "cut" (a field smaller than the
#: body), "small" (the body drawn about 8 cm wide)).
SHIFT_SETS: dict[str, tuple[str, Callable[[np.ndarray, float, int], np.ndarray], str]] = {
    "no_blur": ("no MV blur at all (detector PSF 0): sharper than any training slice",
                _project(SimulatorSettings(psf_fwhm_mm=0.0)), "whole"),
    "noise45": ("noise 45 HU, near the top of the training range", _project(SimulatorSettings(noise_sd=45.0)), "whole"),
    "fov_fill": ("the body fills the field of view", _project(SimulatorSettings()), "fill"),
    "fov_cut": ("the body is cut by the field of view", _project(SimulatorSettings()), "cut"),
    "small": ("objects of about 8 cm", _project(SimulatorSettings()), "small"),
    "contrast": ("another MV contrast curve: soft tissue x0.85, bone x1.2 (beyond the +-10 % trained)",
                 _project(SimulatorSettings(soft_gain=0.85, bone_gain=1.2)), "whole"),
    "independent": ("a second simulator: 3.5 MV bremsstrahlung spectrum, two-material beam hardening, scatter, "
                    "other noise model and reconstruction", _independent(IndependentSettings()), "whole"),
}


#: Width of the "small" shift set's bodies (mm).
SMALL_BODY_MM = 80.0


def prepare_anatomy(img: np.ndarray, how: str, seed: int, spacing_mm: float) -> np.ndarray:
    """A test slice arranged as a shift set asks (see :data:`SHIFT_SETS`)."""
    if how == "whole":
        return img
    rng = np.random.default_rng([int(seed), 0xF0F])
    body = np.argwhere(img > -400)
    if not len(body):
        return img
    n = img.shape[0]
    if how == "fill":  # zoom the body's bounding box to the whole field: the body touches the border
        r0, c0 = body.min(0)
        r1, c1 = body.max(0) + 1
        side = max(r1 - r0, c1 - c0)
        r0, c0 = max(0, (r0 + r1 - side) // 2), max(0, (c0 + c1 - side) // 2)
        box = img[r0:r0 + side, c0:c0 + side]
        inner = int(0.9 * side)  # crop 5 % inside the outline on each side: the field cuts the skin
        m = (box.shape[0] - inner) // 2
        box = box[m:m + inner, m:m + inner]
        return ndimage.zoom(box, n / box.shape[0], order=1).astype(np.float32)[:n, :n]
    if how == "cut":
        return cut_field(img, rng, 0.3, 0.5)[0]
    if how == "small":
        extent_mm = (int((body.max(0) - body.min(0)).max()) + 1) * spacing_mm
        scale = min(1.0, SMALL_BODY_MM / extent_mm)
        small = ndimage.zoom(img, scale, order=1, cval=-1000.0)
        out = np.full_like(img, -1000.0)
        o = (n - small.shape[0]) // 2
        out[o:o + small.shape[0], o:o + small.shape[1]] = small
        return out
    raise ValueError(f"unknown anatomy preparation '{how}'")
