"""``mvct-enhance evaluate``: every method on every case of a test set (and of every simulator-shift
set of a make-dataset folder), scored in one body mask per case, and the report (per-case and summary
CSV, statistics, Markdown with the paper's tables and the talk's claims, figures).

The test-set convention, the sets, the methods and the scoring are in :mod:`.cases`; the calibrated
baselines in :mod:`.baselines`; the study's metrics in :mod:`.scores`; verdicts and the ablation in
:mod:`.claims`; statistics and Markdown in :mod:`.report`, figures in :mod:`.plots`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine.errors import InputError, OutputError
from ..engine.files import write_json
from ..engine.job import EnhanceSettings
from ..engine.modelfile import load_model
from ..engine.volume import read_volume
from . import report
from .baselines import tune_calibrated
from .cases import (LoadedCase, Method, Progress, dataset_validation_folder, find_cases, load_case, parse_methods,
                    resolve_sets, score_case, study_calibration, validation_case)
from .claims import check_pairs, read_datasize
from .denoisers import tune_denoisers

#: The files of a one-set evaluation (a multi-set one adds headline.png and per-set figures:
#: :func:`report.report_file_names`).
REPORT_FILES = ("per_case.csv", "summary.csv", "evaluation.json", "report.md", "boxplots.png", "montage.png",
                "maps.png")


def _prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool, names: Sequence[str]) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"report folder '{out}' is a file; give a folder")
    if not out.exists():
        if not out.parent.is_dir():
            raise OutputError(f"cannot create report folder '{out}': '{out.parent}' does not exist")
        out.mkdir()
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise OutputError(f"report folder '{out}' already holds {', '.join(clash)}; use --overwrite to replace them")
    return out


def _ablation_pairs(pairs: Sequence[Sequence[str]] | None, meths: Sequence[Method]) -> list[tuple[str, str, str]] | None:
    if pairs is None:
        return None
    out = []
    for p in pairs:
        if len(p) not in (2, 3):
            raise InputError(f"an ablation pair is (WITH, WITHOUT[, what it isolates]), got {tuple(p)}")
        out.append((str(p[0]), str(p[1]), str(p[2]) if len(p) == 3 else f"{p[0]} vs {p[1]} (given)"))
    check_pairs([(a, b) for a, b, _ in out], meths, "ablation")
    return out


def evaluate(test_set: str | os.PathLike, methods: Sequence[str] | Sequence[Method], out_dir: str | os.PathLike, *,
             validation: str | os.PathLike | None = None, settings: EnhanceSettings | None = None,
             figure_case: str | None = None, figure_slice: int | None = None, title: str = "MVCTEnhance evaluation",
             notes: Sequence[str] = (), command: str | None = None, overwrite: bool = False,
             dig_pairs: Sequence[tuple[str, str]] | None = None, progress: Progress = None,
             sets: str | Sequence[str] | None = None,
             ablation_pairs: Sequence[Sequence[str]] | None = None,
             datasize: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run every method on every case of every set of ``test_set`` and write the report into ``out_dir``.

    ``test_set``: a folder of cases (one set), or a make-dataset folder: then ``sets`` picks the sets
    (see :func:`cases.resolve_sets`; default: the standard test set and every shift set). Writes
    per_case.csv and summary.csv (a ``set`` column), evaluation.json, report.md and the PNG figures
    (box plots of the first set, per set the visual comparison montage and the DIG/NSelfSSIM maps of
    ``figure_case`` (default the set's first case), and with several sets headline.png).
    Denoisers and calibrated baselines are tuned once on the validation case (see
    :func:`validation_case`; never a case of any evaluated set) before any test case is read.
    ``dig_pairs`` lists (comparator, method) pairs for the DIG comparison (default:
    :func:`report.default_dig_pairs`); ``ablation_pairs`` (with, without[, what]) pairs for the
    ablation (default: :func:`claims.default_ablation_pairs`); ``datasize`` a study-datasize folder
    for the claim "a few hundred slices suffice". Returns the evaluation record (also in
    evaluation.json); its top-level ``cases``, ``summary`` and ``statistics`` are the first set's,
    ``sets`` holds every set's.
    """
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    if methods and all(isinstance(m, Method) for m in methods):
        meths: list[Method] = list(methods)  # type: ignore[arg-type]
    else:
        meths = parse_methods([str(m) for m in methods])
    eval_sets = resolve_sets(test_set, sets)
    set_cases = [(es, find_cases(es.folder)) for es in eval_sets]
    cases = set_cases[0][1]
    if figure_case is not None and figure_case not in {c.name for c in cases}:
        raise InputError(f"figure case '{figure_case}' is not in the test set "
                         f"(cases: {', '.join(c.name for c in cases)})")
    if dig_pairs is not None:
        check_pairs(dig_pairs, meths, "DIG")
    abl = _ablation_pairs(ablation_pairs, meths)
    if datasize is not None:
        read_datasize(datasize)  # a bad folder fails now, not after the evaluation
    out = _prepare_out_dir(out_dir, overwrite, report.report_file_names([es.name for es in eval_sets],
                                                                        datasize is not None))
    models = {m.name: load_model(m.model) for m in meths if m.kind == "model"}
    settings = settings or EnhanceSettings()
    ms = settings.metrics

    denoisers = [m.name for m in meths if m.kind == "denoiser"]
    baselines = [m.name for m in meths if m.kind == "calibrated"]
    needs_tuning = bool(denoisers) or any(n != "calib" for n in baselines)
    tuning = btuning = None
    val_info: dict[str, Any] | None = None
    if needs_tuning:
        # the validation case is fixed before any test case is read; the first test case is opened
        # only for its grid size when a validation case must be simulated
        like = None
        if validation is None and dataset_validation_folder(test_set) is None:
            like_mv = read_volume(cases[0].mvct)
            like = LoadedCase(cases[0], like_mv, None, None)
        every_case = [c for _, cs in set_cases for c in cs]
        val, val_info = validation_case(test_set, validation, every_case, like=like)
        if denoisers:
            say(f"tuning {', '.join(denoisers)} on validation case {val.case.name}")
            tuning = tune_denoisers(denoisers, val.mvct, val.ground_truth, case_name=val.case.name)
        if baselines:
            say(f"tuning {', '.join(baselines)} (order and strength) on validation case {val.case.name}")
            btuning = tune_calibrated(baselines, val.mvct, val.ground_truth, case_name=val.case.name,
                                      calibration=study_calibration(settings))
    tuned: dict[str, Any] = {**(tuning.settings if tuning else {}), **(btuning.settings if btuning else {})}

    set_results: list[dict[str, Any]] = []
    for es, cs in set_cases:
        names = {c.name for c in cs}
        fig_name = figure_case if figure_case in names else cs[0].name
        rows: list[dict[str, Any]] = []
        kept: dict[str, Any] = {}
        fig_lc: LoadedCase | None = None
        for i, c in enumerate(cs):
            say(f"{es.name}: case {i + 1}/{len(cs)}: {c.name}" if len(set_cases) > 1 else
                f"case {i + 1}/{len(cs)}: {c.name}")
            lc = load_case(c)
            r, k = score_case(lc, meths, tuned, models, settings, keep=c.name == fig_name, set_name=es.name)
            rows.extend(r)
            if c.name == fig_name:
                kept, fig_lc = k, lc
        set_results.append({"set": es, "rows": rows, "cases": [c.name for c in cs], "fig_lc": fig_lc, "kept": kept})
    has_gt = any(not math.isnan(r["mae"]) for sr in set_results for r in sr["rows"])
    record: dict[str, Any] = {
        "title": title,
        "test_set": str(Path(test_set)),
        "cases": [{"name": c.name, "mvct": str(c.mvct), "kv": str(c.kv) if c.kv else None} for c in cases],
        "set_cases": {es.name: [{"name": c.name, "mvct": str(c.mvct), "kv": str(c.kv) if c.kv else None}
                                for c in cs] for es, cs in set_cases},
        "methods": [{"name": m.name, "kind": m.kind, "model": str(m.model) if m.model else None,
                     **({"model_card": _card_summary(models[m.name])} if m.kind == "model" else {})} for m in meths],
        "metric_settings": {"noise_sd": ms.noise_sd, "window": list(ms.window), "seed": ms.seed,
                            "body_mask": "metrics.body_mask of each case's MVCT (-400 HU), one mask per case"},
        "denoiser_tuning": tuning.to_dict() if tuning else None,
        "baseline_tuning": btuning.to_dict() if btuning else None,
        "validation": val_info,
        "ground_truth": has_gt,
        "notes": list(notes),
        "command": command,
        "seconds": None,
    }
    say("statistics and figures")
    files = report.write_report(out, set_results, record, meths, figure_slice=figure_slice, dig_pairs=dig_pairs,
                                ablation_pairs=abl, datasize=datasize)
    record["seconds"] = time.perf_counter() - t_start
    record["files"] = {k: str(v) for k, v in files.items()}
    write_json(json_safe(record), out / "evaluation.json")
    return record


def json_safe(x: Any) -> Any:
    """A copy with NaN and infinities as None: evaluation.json stays strict JSON for other tools."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def _card_summary(loaded: Any) -> dict[str, Any]:
    card = loaded.card
    training = card.extra.get("training", {}) if isinstance(card.extra, dict) else {}
    return {"name": card.name, "version": card.version, "sha256": loaded.sha256, "losses": card.losses,
            "iterations": training.get("iterations"), "iterations_total": training.get("iterations_total"),
            "preset": training.get("preset"), "max_change_hu": getattr(card, "max_change_hu", None),
            "architecture": {k: card.architecture.get(k) for k in ("ngf", "encoder_res_blocks", "decoder_res_blocks")}}


