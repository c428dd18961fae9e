"""The study's metric registry: the engine's :data:`engine.metrics.METRICS` plus the full-reference
scores that only the evaluation computes (errors per tissue against the kV ground truth).

Every per-case column of ``per_case.csv``, every summary, test and box plot iterates
:data:`ALL_METRICS`; how a full-reference column is computed is :data:`FULL_REFERENCE`. Adding a
full-reference metric to the study is one entry in :data:`_STUDY_SCORES` (its :class:`MetricInfo`
and its scorer ``score(output, ground_truth, body_mask) -> float``); nothing else changes.

Tissues are classed by the **kV ground truth** (what the voxel is), inside the body mask of the MVCT:

* bone: kV > 300 HU
* fat: -150 <= kV < -30 HU
* soft tissue: -30 <= kV <= 100 HU

For each tissue the study reports the mean signed error (output - kV truth; negative = too dark, a
metric with ``better="zero"``: no one-sided test is run on it) and the MAE. A case without voxels of a
tissue gets NaN for that tissue (empty cell in the CSV); the statistics then use the cases that have it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..engine.metrics import METRICS, MetricInfo, mae_in_mask, psnr_synthrad, ssim_synthrad
from ..engine.volume import Volume

#: (low kV HU, low bound included, high kV HU, high bound included), by tissue.
TISSUE_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "bone": (300.0, False, math.inf, True),
    "fat": (-150.0, True, -30.0, False),
    "soft": (-30.0, True, 100.0, True),
}
TISSUE_LABELS = {"bone": "bone", "fat": "fat", "soft": "soft tissue"}
TISSUE_DEFINITIONS = {"bone": "kV > 300 HU", "fat": "-150 <= kV < -30 HU", "soft": "-30 <= kV <= 100 HU"}


def _array(x: Any) -> np.ndarray:
    return np.asarray(x.array if isinstance(x, Volume) else x, dtype=np.float64)


def tissue_mask(truth: Any, body: Any, tissue: str) -> np.ndarray:
    """Voxels of ``tissue`` (see :data:`TISSUE_RANGES`) by the kV ground truth, inside ``body``."""
    lo, lo_in, hi, hi_in = TISSUE_RANGES[tissue]
    t = _array(truth)
    inside = ((t >= lo) if lo_in else (t > lo)) & ((t <= hi) if hi_in else (t < hi))
    return inside & np.asarray(body, dtype=bool)


def tissue_error(output: Any, truth: Any, body: Any, tissue: str, signed: bool) -> float:
    """Mean signed error (``signed``) or MAE (HU) of ``output`` against ``truth`` in one tissue; NaN if absent."""
    m = tissue_mask(truth, body, tissue)
    if not m.any():
        return math.nan
    d = _array(output)[m] - _array(truth)[m]
    return float(d.mean() if signed else np.abs(d).mean())


def _tissue_scorer(tissue: str, signed: bool) -> Callable[[Volume, Volume, np.ndarray], float]:
    return lambda out, gt, mask: tissue_error(out, gt, mask, tissue, signed)


#: The study's own full-reference metrics: (info, scorer). Engine metrics with a ground truth are
#: scored by :data:`_ENGINE_SCORES`.
_STUDY_SCORES: tuple[tuple[MetricInfo, Callable[[Volume, Volume, np.ndarray], float]], ...] = tuple(
    item for tissue in TISSUE_RANGES for item in (
        (MetricInfo(f"me_{tissue}", f"ME {TISSUE_LABELS[tissue]}", "HU", "zero", needs_reference=True,
                    note=f"mean signed error (output − kV) in {TISSUE_LABELS[tissue]} ({TISSUE_DEFINITIONS[tissue]}); "
                         "closer to 0 is better"),
         _tissue_scorer(tissue, signed=True)),
        (MetricInfo(f"mae_{tissue}", f"MAE {TISSUE_LABELS[tissue]}", "HU", "lower", needs_reference=True,
                    note=f"lower (in {TISSUE_LABELS[tissue]}: {TISSUE_DEFINITIONS[tissue]})"),
         _tissue_scorer(tissue, signed=False)),
    ))
_ENGINE_SCORES: dict[str, Callable[[Volume, Volume, np.ndarray], float]] = {
    "mae": mae_in_mask, "psnr": psnr_synthrad, "ssim": ssim_synthrad}

#: Study-level metrics (not in the engine's registry), in reading order.
STUDY_METRICS: dict[str, MetricInfo] = {info.name: info for info, _ in _STUDY_SCORES}
#: Every metric column of the evaluation, in reading order: the engine's, then the study's.
ALL_METRICS: dict[str, MetricInfo] = {**METRICS, **STUDY_METRICS}
#: How each full-reference metric is scored against the ground truth, inside the body mask.
FULL_REFERENCE: dict[str, Callable[[Volume, Volume, np.ndarray], float]] = {
    **_ENGINE_SCORES, **{info.name: score for info, score in _STUDY_SCORES}}


def testable(metric: str) -> bool:
    """Whether a one-sided "better than" test makes sense for ``metric`` (not for signed errors)."""
    return ALL_METRICS[metric].better in ("lower", "higher")
