"""The calibrated conventional baselines: the MVCT through the MV -> kV tissue calibration, alone or
with a conventional denoiser (issue 12 item 6: the strongest conventional comparison).

Methods (``mvct-enhance evaluate --methods``, and :func:`calibrated_baseline` from Python):

* ``calib``: the MVCT through the monotone piecewise-linear calibration
  (:func:`engine.calibration.tissue_calibration`: ICRU Report 44 tissues at 1 MeV -> 70 keV, as in
  Ozaki, Kaji et al., Med. Phys. 49(6), 2022; or a clinic's own, ``EnhanceSettings.calibration``).
  Nothing is tuned.
* ``calib+tv``, ``calib+nlm``, ``calib+bm3d`` (the last only with the optional ``bm3d`` package):
  the calibration combined with a denoiser of :mod:`.denoisers`.

Order of the two steps. Denoising then calibrating works in MV HU, where the noise is the scanner's;
calibrating first stretches the fat-water range by about 1.5 and the bone range by 2, so noise and
edges are amplified unevenly before the denoiser sees them. Which is better is an empirical question,
so :func:`tune_calibrated` decides it on the validation case together with the denoiser's strength:
it scores both orders over the denoiser's whole grid (:data:`denoisers.GRIDS`) by the MAE in the
body against the kV ground truth and keeps the best (order, value); ties go to
denoise-then-calibrate (:data:`DEFAULT_ORDER`) and to the weaker value. The choice is made ONCE, on
the validation case, and recorded in the report; the test and shift sets are never looked at.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from ..engine.calibration import Calibration, tissue_calibration
from ..engine.errors import InputError
from ..engine.metrics import body_mask, mae_in_mask
from ..engine.volume import Volume
from .denoisers import GRIDS, PARAMETER, TUNING_SLICES, bm3d_available, denoise, denoise_slice, fixed_parameters, \
    tuning_slices

#: Method name -> the denoiser it uses (None: the calibration alone).
CALIBRATED_METHODS: dict[str, str | None] = {"calib": None, "calib+tv": "tv", "calib+nlm": "nlm",
                                             "calib+bm3d": "bm3d"}
DENOISE_FIRST, CALIBRATE_FIRST = "denoise-then-calibrate", "calibrate-then-denoise"
ORDERS = (DENOISE_FIRST, CALIBRATE_FIRST)
DEFAULT_ORDER = DENOISE_FIRST


@dataclasses.dataclass(frozen=True)
class BaselineSetting:
    """A tuned calibrated baseline: the denoiser's parameter (HU; None for ``calib``) and the order."""

    value: float | None = None
    order: str = DEFAULT_ORDER

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "order": self.order}


def _require(name: str) -> str | None:
    if name not in CALIBRATED_METHODS:
        raise InputError(f"unknown calibrated baseline '{name}'; use one of {', '.join(CALIBRATED_METHODS)}")
    den = CALIBRATED_METHODS[name]
    if den == "bm3d" and not bm3d_available():
        raise InputError("method 'calib+bm3d' needs the optional 'bm3d' package (pip install bm3d==4.0.3; "
                         "non-commercial licence); leave it out of --methods otherwise")
    return den


def available_methods() -> tuple[str, ...]:
    """The calibrated baselines this installation can run (``calib+bm3d`` only with bm3d)."""
    return tuple(n for n, d in CALIBRATED_METHODS.items() if d != "bm3d" or bm3d_available())


def _setting(name: str, setting: Any) -> BaselineSetting:
    den = _require(name)
    if isinstance(setting, BaselineSetting):
        s = setting
    elif setting is None:
        s = BaselineSetting()
    elif isinstance(setting, dict):
        s = BaselineSetting(setting.get("value"), setting.get("order", DEFAULT_ORDER))
    else:
        s = BaselineSetting(float(setting))
    if den is not None and s.value is None:
        raise InputError(f"baseline '{name}' needs its denoiser's parameter ({PARAMETER[den]}, HU): tune it with "
                         "tune_calibrated() on a validation case, or give it")
    return s


def _apply(img: np.ndarray, den: str | None, s: BaselineSetting, cal: Calibration) -> np.ndarray:
    """One slice (2D) or a stack of slices (first axis) through the baseline."""
    if den is None:
        return cal.apply(img)
    if s.order == DENOISE_FIRST:
        return cal.apply(np.stack([denoise_slice(x, den, s.value) for x in img]) if img.ndim == 3
                         else denoise_slice(img, den, s.value))
    c = cal.apply(img)
    return (np.stack([denoise_slice(x, den, s.value) for x in c]) if c.ndim == 3
            else denoise_slice(c, den, s.value))


def calibrated_baseline(volume: Volume, name: str, setting: float | BaselineSetting | dict | None = None, *,
                        calibration: Calibration | None = None) -> Volume:
    """``volume`` (MVCT, HU) through the calibrated baseline ``name`` (``calib``, ``calib+tv``, ...).

    ``setting``: the denoiser's parameter in HU (denoise-then-calibrate), a :class:`BaselineSetting`
    (parameter and order, as :func:`tune_calibrated` returns them), or None for ``calib``.
    ``calibration``: default :func:`engine.calibration.tissue_calibration`. Same geometry as the input.
    """
    den = _require(name)
    s = _setting(name, setting)
    cal = calibration or tissue_calibration()
    if den is None:
        return volume.with_array(cal.apply(volume.array), calibrated_by=cal.source)
    if s.order == DENOISE_FIRST:
        out = cal.apply(denoise(volume, den, s.value).array)
    else:
        out = denoise(volume.with_array(cal.apply(volume.array)), den, s.value).array
    return volume.with_array(out, calibrated_by=cal.source, denoised_by=den, **{PARAMETER[den]: float(s.value)},
                             order=s.order)


@dataclasses.dataclass
class BaselineTuning:
    """What :func:`tune_calibrated` chose and how (recorded in the evaluation report)."""

    settings: dict[str, BaselineSetting]
    grid_mae: dict[str, dict[str, dict[str, float]]]   # method -> order -> {str(value): MAE (HU)}
    validation: dict[str, Any]
    calibration: dict[str, Any]
    objective: str = "MAE (HU) inside the body mask of the validation MVCT against its kV ground truth"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"settings": {k: v.to_dict() for k, v in self.settings.items()}, "grid_mae": self.grid_mae,
                "validation": self.validation, "calibration": self.calibration, "objective": self.objective,
                "seconds": self.seconds, "orders": list(ORDERS), "tie_break": f"{DEFAULT_ORDER}, then the weaker value",
                "parameters": {n: {"denoiser": CALIBRATED_METHODS[n],
                                   "name": PARAMETER.get(CALIBRATED_METHODS[n] or "", None),
                                   **(fixed_parameters(CALIBRATED_METHODS[n]) if CALIBRATED_METHODS[n] else {})}
                               for n in self.settings}}


def tune_calibrated(names: Sequence[str], mvct: Volume, ground_truth: Volume, *, case_name: str = "validation",
                    calibration: Calibration | None = None, mask: np.ndarray | None = None,
                    grids: dict[str, Sequence[float]] | None = None, n_slices: int = TUNING_SLICES) -> BaselineTuning:
    """Pick each calibrated baseline's (order, parameter) on a validation case (see the module docstring).

    ``ground_truth`` is the kV image on the MVCT's grid; ``grids`` overrides a denoiser's grid.
    """
    t0 = time.perf_counter()
    if not mvct.same_geometry(ground_truth):
        raise InputError(f"validation case '{case_name}': its kV ground truth is not on the MVCT's voxel grid")
    dens = {n: _require(n) for n in names}
    cal = calibration or tissue_calibration()
    grids = {**GRIDS, **(grids or {})}
    mask = body_mask(mvct) if mask is None else mask
    axis = mvct.axial_axis()
    picks = tuning_slices(mask, axis, n_slices)
    mv0, gt0, m0 = (np.moveaxis(np.take(a, picks, axis=axis), axis, 0) for a in (mvct.array, ground_truth.array, mask))
    settings: dict[str, BaselineSetting] = {}
    grid_mae: dict[str, dict[str, dict[str, float]]] = {}
    for name, den in dens.items():
        if den is None:
            settings[name] = BaselineSetting()
            grid_mae[name] = {DEFAULT_ORDER: {"-": mae_in_mask(cal.apply(mv0), gt0, m0)}}
            continue
        scores: dict[str, dict[str, float]] = {}
        best: tuple[float, int, int] | None = None
        for oi, order in enumerate(ORDERS):
            scores[order] = {}
            for vi, value in enumerate(grids[den]):
                s = BaselineSetting(float(value), order)
                mae = mae_in_mask(_apply(mv0, den, s, cal), gt0, m0)
                scores[order][repr(float(value))] = mae
                key = (mae, oi, vi)
                if best is None or key < best:
                    best = key
        assert best is not None
        settings[name] = BaselineSetting(float(grids[den][best[2]]), ORDERS[best[1]])
        grid_mae[name] = scores
    info = {"case": case_name, "slices": picks, "axial_axis": axis, "mvct_mae_hu": mae_in_mask(mv0, gt0, m0)}
    return BaselineTuning(settings, grid_mae, info, cal.to_dict(), seconds=time.perf_counter() - t0)
