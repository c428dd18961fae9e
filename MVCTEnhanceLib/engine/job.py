"""The enhance job: the one implementation behind the CLI, the Slicer module and the evaluation.

    outcome = run_enhance(mvct, loaded_model, planning_ct, EnhanceSettings(), progress, cancel)

converts the MVCT, assesses the input and the result (DIG, NSelfSSIM, in the input's body mask) and
the planning CT (its NSelfSSIM: the level a converted image should approach), and collects every
warning and the provenance (model card and sha256, engine version, device, settings, timings).
Callers only move volumes in and out: files (``filejobs``), MRML nodes (the Slicer module) or a
study's cases. Every default of the job is written once, in :mod:`.settings`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from .errors import EnhanceCancelled, InputError
from .inference import EnhanceResult, enhance, resolve_threads, torch_threads
from .calibration import Calibration, tissue_calibration
from .metrics import Assessment, assess, body_mask
from .modelfile import LoadedModel
from .settings import EnhanceSettings, JobProgress, MetricSettings, ShouldCancel, StepProgress  # noqa: F401  (MetricSettings: part of the job's interface)
from .version import __version__
from .volume import Volume

#: progress(stage, done, total): stage is one of STAGES; done/total count slices of that stage.
STAGES = ("enhance", "metrics", "planning")
#: A planning CT normally covers the whole MVCT (it is acquired over a longer range to plan on): when
#: less than this fraction of the MVCT's extent lies inside it, it is another patient, unregistered, or
#: other anatomy, and the montage's "nearest slice" (clamped to its end) shows an unrelated slice.
PLANNING_OVERLAP_WARN_FRACTION = 0.5
#: Above this fraction of the body with a changed tissue class the job warns (a good conversion
#: changes only voxels at tissue boundaries; erasing a structure changes many).
TISSUE_CHANGE_WARN_FRACTION = 0.01


@dataclasses.dataclass
class Outcome:
    """Everything one enhance job produced; :meth:`report` is what every front end records."""

    input: Volume
    planning: Volume | None
    result: Volume
    enhanced: EnhanceResult
    assessment: Assessment | None
    planning_assessment: Assessment | None
    warnings: list[str]
    model: LoadedModel
    settings: EnhanceSettings
    timings_s: dict[str, float]

    @property
    def metrics(self) -> dict[str, Any]:
        """Summaries: ``dig.output``, ``nselfssim.{input,output,planning_ct}``, ``body_mask``, ``parameters``."""
        if self.assessment is None:
            return {}
        summaries = dict(self.assessment.summaries)
        if self.planning_assessment is not None:
            summaries["nselfssim"] = {**summaries["nselfssim"],
                                      "planning_ct": self.planning_assessment.summaries["nselfssim"]["input"]}
        return summaries

    def report(self) -> dict[str, Any]:
        """The JSON-able record shared by the CLI report, the Slicer node attributes and the table."""
        return {
            "engine_version": __version__,
            "input": geometry_dict(self.input),
            "planning_ct": geometry_dict(self.planning) if self.planning is not None else None,
            "model": {"path": str(self.model.path), "sha256": self.model.sha256, "card": self.model.card.to_dict()},
            "device": self.enhanced.device,
            "settings": self.settings.to_dict(),
            "parameters": self.enhanced.parameters,
            "warnings": list(self.warnings),
            "timings_s": dict(self.timings_s),
            "metrics": self.metrics,
        }


def geometry_dict(volume: Volume) -> dict[str, Any]:
    return {"shape": list(volume.array.shape), "spacing": list(volume.spacing), "origin": list(volume.origin),
            "direction": list(volume.direction), "axial_axis": volume.axial_axis()}


def physical_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box (LPS, mm; low and high corners) of the voxels' extent in patient space."""
    shape_ijk = np.asarray(volume.array.shape[::-1], dtype=np.float64)
    corners = np.array([[-0.5 if bit == "0" else n - 0.5 for bit, n in zip(f"{c:03b}", shape_ijk)] for c in range(8)])
    points = np.asarray(volume.origin) + (corners * np.asarray(volume.spacing)) @ volume.direction_matrix.T
    return points.min(axis=0), points.max(axis=0)


def planning_overlap_warnings(mvct: Volume, planning: Volume) -> list[str]:
    """A warning when the planning CT does not cover most of the MVCT in patient coordinates."""
    lo_m, hi_m = physical_bounds(mvct)
    lo_p, hi_p = physical_bounds(planning)
    inter = np.clip(np.minimum(hi_m, hi_p) - np.maximum(lo_m, lo_p), 0.0, None)
    fraction = float(np.prod(inter) / max(float(np.prod(hi_m - lo_m)), 1e-12))
    if fraction >= PLANNING_OVERLAP_WARN_FRACTION:
        return []
    where = "does not overlap the MVCT in space" if fraction == 0.0 else \
        f"covers only {100.0 * fraction:.0f}% of the MVCT's extent"
    return [f"planning CT {where} (bounding boxes in patient coordinates): it is another patient, not registered "
            "to the MVCT, or other anatomy; the montage shows an unrelated slice of it"]


def model_warnings(loaded: LoadedModel) -> list[str]:
    """Warnings that come from the model itself, whatever the input."""
    card = loaded.card
    if card.is_test_model():
        return [f"model '{card.name}' is an untrained test model: its output is not a kV-like image"]
    return []


def with_calibration(model: LoadedModel, calibration: Calibration) -> LoadedModel:
    """``model`` with its card's physics anchor replaced (the report's card then shows the one used)."""
    if model.card.anchor() is None:
        raise InputError(f"model '{model.card.name}' has no physics anchor (its generator outputs the image, as the "
                         "paper's does): a calibration applies only to bounded models")
    card = dataclasses.replace(model.card, calibration=calibration.to_dict())
    return model._replace(card=card)


def tissue_change_warnings(summary: dict[str, Any]) -> list[str]:
    """A warning when the conversion changed the tissue class of more than a sliver of the body."""
    if summary["fraction"] <= TISSUE_CHANGE_WARN_FRACTION:
        return []
    worst = sorted(summary["transitions_cm3"].items(), key=lambda kv: -kv[1])[:3]
    detail = ", ".join(f"{name} {cm3:.1f} cm³" for name, cm3 in worst)
    return [f"the conversion changed the tissue class of {summary['volume_cm3']:.1f} cm³ "
            f"({100 * summary['fraction']:.1f} % of the body; {detail}): anatomy may have been altered; "
            "look at the tissue-change map before using the image"]


def _stage(progress: JobProgress | None, name: str) -> StepProgress | None:
    return (lambda done, total: progress(name, done, total)) if progress is not None else None


def run_enhance(volume: Volume, model: LoadedModel, planning: Volume | None = None,
                settings: EnhanceSettings | None = None, progress: JobProgress | None = None,
                cancel: ShouldCancel | None = None, on_ready: Callable[[str, Volume], None] | None = None,
                mask: np.ndarray | None = None) -> Outcome:
    """Convert ``volume`` with ``model``; assess the input, the result and ``planning`` (see the module).

    Raises :class:`EnhanceCancelled` as soon as ``cancel()`` returns True (checked between batches
    and map chunks): nothing is returned then. Input errors are :class:`InputError`.
    ``on_ready(name, volume)`` is called with each result as soon as it exists: "output" (the enhanced
    volume, before the maps), then "nselfssim", "dig" and "tissue_change" (:func:`assess`); the file
    jobs write them meanwhile. The job may still fail or be cancelled after a call. ``mask``: the
    input's :func:`body_mask`, when the caller has computed it already (the file jobs do, beside
    torch's import).
    """
    settings = settings or EnhanceSettings()
    if not isinstance(model, LoadedModel):
        raise InputError(f"run_enhance() needs a loaded model (load_model(path)), got {type(model).__name__}")
    if settings.calibration is not None:
        model = with_calibration(model, Calibration.from_dict(settings.calibration, "the given calibration"))
    t0 = time.perf_counter()
    threads = resolve_threads(settings.threads)
    with torch_threads(threads):  # the network's and the maps' intra-op threads, restored afterwards
        enhanced = enhance(volume, model, device=settings.device, batch_size=settings.batch_size,
                           precision=settings.precision, resample=settings.resample, body_crop=settings.body_crop,
                           progress=_stage(progress, "enhance"), should_cancel=cancel)
        enhanced.parameters["threads"] = {"intra_op": threads, "source": "automatic: the physical cores this process "
                                          "may use, less those other processes keep busy now"
                                          if settings.threads is None else "given"}
        t1 = time.perf_counter()
        if on_ready is not None:
            on_ready("output", enhanced.volume)
        assessment = planning_assessment = None
        if settings.assess:
            ms = settings.metrics
            kw = dict(noise_sd=ms.noise_sd, window=ms.window, seed=ms.seed, device=settings.device,
                      should_cancel=cancel)
            # the calibration itself, applied by the tissue-change map inside the body's box only
            anchor = model.card.anchor() or tissue_calibration()
            if mask is None:
                mask = body_mask(volume)
            elif mask.shape != volume.array.shape:
                raise InputError(f"the body mask's shape {mask.shape} differs from the volume's {volume.array.shape}")
            assessment = assess(volume, enhanced.volume, mask=mask, anchor=anchor, on_ready=on_ready,
                                progress=_stage(progress, "metrics"), **kw)
            if planning is not None:
                planning_assessment = assess(planning, progress=_stage(progress, "planning"), **kw)
    if cancel is not None and cancel():
        raise EnhanceCancelled("cancelled after the conversion; no output was produced")
    t2 = time.perf_counter()
    warnings = model_warnings(model) + list(volume.warnings) + list(enhanced.warnings)
    if assessment is not None:
        warnings += tissue_change_warnings(assessment.summaries["tissue_change"]["output"])
    if planning is not None:
        warnings += [f"planning CT: {w}" for w in planning.warnings] + planning_overlap_warnings(volume, planning)
    timings = {"enhance": round(t1 - t0, 4), "metrics": round(t2 - t1, 4),
               "slices_per_s": round(enhanced.parameters["slices"] / max(enhanced.seconds, 1e-9), 3)}
    return Outcome(volume, planning, enhanced.volume, enhanced, assessment, planning_assessment, warnings, model, settings,
                   timings)
