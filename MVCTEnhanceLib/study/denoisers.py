"""Conventional denoisers the evaluation compares the networks with, and their one-off tuning.

Each denoiser works slice by slice along the axial axis, directly in HU (so its strength parameter
is in HU), and returns a Volume with the input's geometry:

* ``nlm``: non-local means, ``skimage.restoration.denoise_nl_means`` (fast mode, 5x5 patches,
  13x13 search window); the tuned parameter is the cut-off distance ``h`` (HU).
* ``tv``: total-variation denoising, ``skimage.restoration.denoise_tv_chambolle``; the tuned
  parameter is ``weight`` (HU: the ROF functional is scale-equivariant, so the weight scales with
  the image's units).
* ``bm3d``: BM3D (the ``bm3d`` package of Tampere University, optional: it is installed only if the
  user wants it, and its licence allows non-commercial use only); the tuned parameter is the noise
  SD ``sigma_psd`` (HU) it assumes. Slices are cropped to the body's bounding box first, because
  BM3D costs seconds per slice and air carries no information.

:func:`tune_denoisers` picks each parameter ONCE from a grid on a validation case with a ground
truth, minimising the MAE inside the body; the test cases are never looked at.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

from ..engine.errors import InputError
from ..engine.metrics import body_mask, mae_in_mask
from ..engine.volume import Volume

#: Parameter grids (HU) searched on the validation case. They bracket the ~20-40 HU noise of
#: TomoTherapy-like MVCT from well below to well above, so an optimum on a grid edge would show.
GRIDS: dict[str, tuple[float, ...]] = {
    "nlm": (10.0, 20.0, 30.0, 45.0, 60.0, 90.0),
    "tv": (5.0, 10.0, 20.0, 40.0, 80.0, 160.0),
    "bm3d": (10.0, 20.0, 30.0, 45.0, 60.0),
}
PARAMETER = {"nlm": "h_hu", "tv": "weight_hu", "bm3d": "sigma_psd_hu"}
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
TV_MAX_ITER = 200
#: Slices of the validation case used for tuning (evenly spaced among those with body): BM3D costs
#: seconds per slice and the optimum does not need the whole volume.
TUNING_SLICES = 4
BODY_THRESHOLD_HU = -400.0
DENOISERS = tuple(GRIDS)


def bm3d_available() -> bool:
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def _require(name: str) -> None:
    if name not in GRIDS:
        raise InputError(f"unknown denoiser '{name}'; use one of {', '.join(GRIDS)}")
    if name == "bm3d" and not bm3d_available():
        raise InputError("method 'bm3d' needs the optional 'bm3d' package (pip install bm3d==4.0.3; "
                         "non-commercial licence); leave bm3d out of --methods otherwise")


def _body_box(hu: np.ndarray, margin: int = 8) -> tuple[slice, slice]:
    rows, cols = np.nonzero(hu > BODY_THRESHOLD_HU)
    if rows.size == 0:
        return slice(0, hu.shape[0]), slice(0, hu.shape[1])
    return (slice(max(0, rows.min() - margin), min(hu.shape[0], rows.max() + margin + 1)),
            slice(max(0, cols.min() - margin), min(hu.shape[1], cols.max() + margin + 1)))


def denoise_slice(hu: np.ndarray, name: str, value: float) -> np.ndarray:
    """One 2D slice (HU, float) denoised by ``name`` with its parameter ``value`` (HU)."""
    _require(name)
    img = np.asarray(hu, dtype=np.float64)
    if name == "nlm":
        out = denoise_nl_means(img, h=float(value), patch_size=NLM_PATCH_SIZE, patch_distance=NLM_PATCH_DISTANCE,
                               fast_mode=True)
    elif name == "tv":
        out = denoise_tv_chambolle(img, weight=float(value), max_num_iter=TV_MAX_ITER)
    else:
        import bm3d

        out = img.copy()
        box = _body_box(img)
        out[box] = bm3d.bm3d(img[box], sigma_psd=float(value))
    return np.asarray(out, dtype=np.float32)


def denoise(volume: Volume, name: str, value: float,
            progress: Callable[[int, int], None] | None = None) -> Volume:
    """The volume denoised slice by slice along its axial axis; same geometry."""
    _require(name)
    axis = volume.axial_axis()
    src = np.moveaxis(volume.array, axis, 0)
    out = np.empty(src.shape, np.float32)
    for k in range(src.shape[0]):
        out[k] = denoise_slice(src[k], name, value)
        if progress is not None:
            progress(k + 1, src.shape[0])
    return volume.with_array(np.ascontiguousarray(np.moveaxis(out, 0, axis)), denoised_by=name,
                             **{PARAMETER[name]: float(value)})


@dataclasses.dataclass
class Tuning:
    """What tuning chose and how: recorded in the evaluation report."""

    settings: dict[str, float]                  # denoiser -> chosen parameter value (HU)
    grid_mae: dict[str, dict[str, float]]       # denoiser -> {str(value): MAE in body (HU)}
    validation: dict[str, Any]                  # which case, which slices, its input MAE
    objective: str = "MAE (HU) inside the body mask of the validation MVCT against its kV ground truth"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parameters"] = {name: {"name": PARAMETER[name], "value": v, **fixed_parameters(name)}
                           for name, v in self.settings.items()}
        return d


def fixed_parameters(name: str) -> dict[str, Any]:
    """The settings of a denoiser that are not tuned (for the report)."""
    if name == "nlm":
        return {"patch_size": NLM_PATCH_SIZE, "patch_distance": NLM_PATCH_DISTANCE, "fast_mode": True,
                "function": "skimage.restoration.denoise_nl_means"}
    if name == "tv":
        return {"max_num_iter": TV_MAX_ITER, "function": "skimage.restoration.denoise_tv_chambolle"}
    return {"function": "bm3d.bm3d (both stages), on the body's bounding box + 8 px"}


def tuning_slices(mask: np.ndarray, axis: int, n: int = TUNING_SLICES) -> list[int]:
    """Up to ``n`` evenly spaced slice indices along ``axis`` that contain body."""
    counts = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).sum(1)
    with_body = np.flatnonzero(counts > 0)
    if with_body.size == 0:
        raise InputError("the validation case has no body (nothing above -400 HU); give a CT in HU")
    if with_body.size <= n:
        return [int(i) for i in with_body]
    pick = np.linspace(0, with_body.size - 1, n).round().astype(int)
    return [int(with_body[i]) for i in pick]


def tune_denoisers(names: Sequence[str], mvct: Volume, ground_truth: Volume, *, case_name: str = "validation",
                   mask: np.ndarray | None = None, grids: dict[str, Sequence[float]] | None = None,
                   n_slices: int = TUNING_SLICES) -> Tuning:
    """Pick each denoiser's parameter from its grid by the MAE in the body on a validation case.

    ``ground_truth`` is the kV image on the MVCT's grid. Ties go to the weaker setting (the first
    in the grid), so a flat objective never makes a denoiser stronger than it needs to be.
    """

    t0 = time.perf_counter()
    if not mvct.same_geometry(ground_truth):
        raise InputError(f"validation case '{case_name}': its kV ground truth is not on the MVCT's voxel grid")
    for name in names:
        _require(name)
    grids = {**GRIDS, **(grids or {})}
    mask = body_mask(mvct) if mask is None else mask
    axis = mvct.axial_axis()
    picks = tuning_slices(mask, axis, n_slices)
    mv = np.take(mvct.array, picks, axis=axis)
    gt = np.take(ground_truth.array, picks, axis=axis)
    m = np.take(mask, picks, axis=axis)
    mv0, gt0, m0 = (np.moveaxis(a, axis, 0) for a in (mv, gt, m))
    settings: dict[str, float] = {}
    grid_mae: dict[str, dict[str, float]] = {}
    for name in names:
        scores: dict[str, float] = {}
        for value in grids[name]:
            out = np.stack([denoise_slice(s, name, value) for s in mv0])
            scores[repr(float(value))] = mae_in_mask(out, gt0, m0)
        best = min(scores, key=lambda k: (scores[k], list(scores).index(k)))
        settings[name] = float(best)
        grid_mae[name] = scores
    info = {"case": case_name, "slices": picks, "axial_axis": axis,
            "mvct_mae_hu": mae_in_mask(mv0, gt0, m0)}
    return Tuning(settings, grid_mae, info, seconds=time.perf_counter() - t0)
