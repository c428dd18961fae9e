"""``mvct-enhance evaluate``: every method on every case of a test set, scored in one body mask per
case, and the report (per-case and summary CSV, statistics, Markdown with the paper's tables, figures).

The test-set convention, the methods and the scoring are in :mod:`.cases`; statistics and Markdown in
:mod:`.report`, figures in :mod:`.plots`.
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
from .cases import (LoadedCase, Method, Progress, _dataset_subfolder, find_cases, load_case, parse_methods,
                    score_case, validation_case)
from .denoisers import tune_denoisers

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


def evaluate(test_set: str | os.PathLike, methods: Sequence[str] | Sequence[Method], out_dir: str | os.PathLike, *,
             validation: str | os.PathLike | None = None, settings: EnhanceSettings | None = None,
             figure_case: str | None = None, figure_slice: int | None = None, title: str = "MVCTEnhance evaluation",
             notes: Sequence[str] = (), command: str | None = None, overwrite: bool = False,
             dig_pairs: Sequence[tuple[str, str]] | None = None, progress: Progress = None) -> dict[str, Any]:
    """Run every method on every case of ``test_set`` and write the report into ``out_dir``.

    Writes per_case.csv, summary.csv, evaluation.json, report.md and the PNG figures (box plots, the
    visual comparison montage, the DIG/NSelfSSIM maps of ``figure_case``, default the first case).
    Denoisers are tuned once on the validation case (see :func:`validation_case`) before any test
    case is read. ``dig_pairs`` lists (comparator, method) pairs for the DIG comparison (default:
    :func:`report.default_dig_pairs`). Returns the evaluation record (also in evaluation.json).
    """
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    if methods and all(isinstance(m, Method) for m in methods):
        meths: list[Method] = list(methods)  # type: ignore[arg-type]
    else:
        meths = parse_methods([str(m) for m in methods])
    cases = find_cases(test_set)
    if figure_case is not None and figure_case not in {c.name for c in cases}:
        raise InputError(f"figure case '{figure_case}' is not in the test set "
                         f"(cases: {', '.join(c.name for c in cases)})")
    if dig_pairs is not None:
        names = {m.name for m in meths}
        for a, b in dig_pairs:
            if a not in names or b not in names:
                raise InputError(f"DIG pair '{a}:{b}' names a method not in --methods "
                                 f"({', '.join(m.name for m in meths)})")
    out = _prepare_out_dir(out_dir, overwrite, REPORT_FILES)
    models = {m.name: load_model(m.model) for m in meths if m.kind == "model"}
    settings = settings or EnhanceSettings()
    ms = settings.metrics

    denoisers = [m.name for m in meths if m.kind == "denoiser"]
    tuning = None
    val_info: dict[str, Any] | None = None
    if denoisers:
        # the validation case is fixed before any test case is read; the first test case is opened
        # only for its grid size when a validation case must be simulated
        like = None
        if validation is None and _dataset_subfolder(Path(test_set), "validation") is None \
                and _dataset_subfolder(Path(test_set).parent, "validation") is None:
            like_mv = read_volume(cases[0].mvct)
            like = LoadedCase(cases[0], like_mv, None, None)
        val, val_info = validation_case(test_set, validation, cases, like=like)
        say(f"tuning {', '.join(denoisers)} on validation case {val.case.name}")
        tuning = tune_denoisers(denoisers, val.mvct, val.ground_truth, case_name=val.case.name)
    tuned = tuning.settings if tuning else {}

    fig_name = figure_case or cases[0].name
    rows: list[dict[str, Any]] = []
    kept: dict[str, Any] = {}
    fig_lc: LoadedCase | None = None
    for i, c in enumerate(cases):
        say(f"case {i + 1}/{len(cases)}: {c.name}")
        lc = load_case(c)
        r, k = score_case(lc, meths, tuned, models, settings, keep=c.name == fig_name)
        rows.extend(r)
        if c.name == fig_name:
            kept, fig_lc = k, lc
    has_gt = any(not math.isnan(r["mae"]) for r in rows)
    record: dict[str, Any] = {
        "title": title,
        "test_set": str(Path(test_set)),
        "cases": [{"name": c.name, "mvct": str(c.mvct), "kv": str(c.kv) if c.kv else None} for c in cases],
        "methods": [{"name": m.name, "kind": m.kind, "model": str(m.model) if m.model else None,
                     **({"model_card": _card_summary(models[m.name])} if m.kind == "model" else {})} for m in meths],
        "metric_settings": {"noise_sd": ms.noise_sd, "window": list(ms.window), "seed": ms.seed,
                            "body_mask": "metrics.body_mask of each case's MVCT (-400 HU), one mask per case"},
        "denoiser_tuning": tuning.to_dict() if tuning else None,
        "validation": val_info,
        "ground_truth": has_gt,
        "notes": list(notes),
        "command": command,
        "seconds": None,
    }
    say("statistics and figures")
    files = report.write_report(out, rows, record, meths, fig_lc, kept, figure_slice=figure_slice,
                                 dig_pairs=dig_pairs)
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
            "preset": training.get("preset"),
            "architecture": {k: card.architecture.get(k) for k in ("ngf", "encoder_res_blocks", "decoder_res_blocks")}}


