"""``mvct-enhance study-datasize``: how DIG and MAE depend on the number of unpaired MV training
slices (the paper's training-set-size study), resumable run by run.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine.errors import InputError, OutputError
from ..engine.files import write_json
from ..engine.job import EnhanceSettings
from ..engine.metrics import METRICS
from ..engine.modelfile import load_model
from ..training.data import mv_twins, open_domain
from ..training.export import export_run
from ..training.options import PRESETS, TrainConfig
from ..training.runfolder import load_run_config
from ..training.trainer import train
from .cases import (INPUT_METHOD, REFERENCE_METHOD, Method, Progress, find_cases, load_case, score_case,
                    write_csv)
from .evaluate import json_safe
from .plots import plot_figure, save_figure

DATASIZE_SIZES = (25, 50, 100, 200, 400)
DATASIZE_PRESETS = ("proposed", "cyclegan")
#: Reduced training for the study (CPU-sized; the report says so): short runs at small crops and
#: a narrow network. Every run of the study uses the same values.
DATASIZE_DEFAULTS = {"iterations": 400, "crop_size": 64, "ngf": 8, "ndf": 16}
DATASIZE_FIELDS = ("preset", "n_requested", "n_slices", "case", "dig", "mae", "psnr", "ssim", "nselfssim")


def _run_finished(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text()).get("status") == "finished"
    except ValueError:
        return False


def study_datasize(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   sizes: Sequence[int] = DATASIZE_SIZES, presets: Sequence[str] = DATASIZE_PRESETS,
                   iterations: int = DATASIZE_DEFAULTS["iterations"], crop_size: int = DATASIZE_DEFAULTS["crop_size"],
                   ngf: int = DATASIZE_DEFAULTS["ngf"], ndf: int = DATASIZE_DEFAULTS["ndf"],
                   base_config: str | os.PathLike | None = None, mv: Sequence[str] | None = None,
                   kv: Sequence[str] | None = None, test_set: str | os.PathLike | None = None, seed: int = 0,
                   settings: EnhanceSettings | None = None, train_missing: bool = True, command: str | None = None,
                   progress: Progress = None) -> dict[str, Any]:
    """Train every preset on the first N MVCT slices for each N (kV set fixed), then DIG/MAE on the test set.

    ``data_dir`` is a make-dataset output (train_mv/, train_kv/, test/); ``mv``, ``kv`` and
    ``test_set`` override its folders. Runs go to ``out_dir/runs/<preset>-n<N>`` and models to
    ``out_dir/models/<preset>-n<N>.pt``; the study resumes: finished runs and exported models are
    reused, interrupted runs are resumed. Sizes run largest first. Subsets are nested (the first N of
    one seeded permutation, :class:`datasets.SliceDataset`). With ``train_missing=False`` nothing is
    trained: only finished runs are evaluated and the others are listed as skipped (the report of a
    study cut short). Writes datasize.csv (per case), datasize_summary.csv, datasize.png, datasize.md
    and datasize.json.
    """
    say = progress or (lambda _msg: None)
    data = Path(data_dir)
    if not data.is_dir():
        raise InputError(f"data folder '{data}' does not exist; create it with mvct-enhance make-dataset")
    mv_src = [str(p) for p in (mv or [data / "train_mv"])]
    kv_src = [str(p) for p in (kv or [data / "train_kv"])]
    for p in (*mv_src, *kv_src):
        if not Path(p).exists():
            raise InputError(f"training data '{p}' does not exist; give --mv/--kv or a make-dataset folder")
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise InputError(f"training-set sizes must be positive integers, got {list(sizes)}")
    for p in presets:
        if p not in PRESETS:
            raise InputError(f"unknown preset '{p}'; use {', '.join(PRESETS)}")
    cases = find_cases(test_set if test_set is not None else data / "test" if (data / "test").is_dir() else data)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"study folder '{out}' is a file")
    if not out.parent.is_dir():
        raise OutputError(f"cannot create study folder '{out}': '{out.parent}' does not exist")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)

    base = None
    if base_config is not None:
        bp = Path(base_config)
        if bp.is_dir():
            base = load_run_config(bp)
        elif bp.is_file():
            try:
                base = TrainConfig.from_dict(json.loads(bp.read_text()))
            except (ValueError, TypeError) as exc:
                raise InputError(f"base config '{bp}' is not a training configuration ({exc})") from None
        else:
            raise InputError(f"base config '{bp}' does not exist; give a run folder or its config.json")
    settings = settings or EnhanceSettings()
    template = base.to_dict() if base else TrainConfig(mv=mv_src, kv=kv_src, out_dir="").to_dict()
    for name in ("w_adversarial", "w_cycle", "w_identity", "w_perceptual", "w_autoencoder", "w_air"):
        template[name] = None  # the preset decides: proposed vs plain CycleGAN differ only there
    template.update(mv=mv_src, kv=kv_src, iterations=int(iterations), crop_size=int(crop_size), ngf=int(ngf),
                    ndf=int(ndf), seed=int(seed), device=settings.device, progress=False, resume=False,
                    sample_every=int(iterations), checkpoint_every=max(50, int(iterations) // 4),
                    log_every=max(1, int(iterations) // 40))
    if mv is None and (data / "train_mv_clean").is_dir():
        template["mv_clean"] = [str(data / "train_mv_clean")]  # this dataset's twins, not the base run's
    probe = TrainConfig.from_dict({**template, "out_dir": str(out / "runs" / "probe")})
    probe.validate()
    # The recipe's own loaders (field truncation, clean twins for the denoise term), as train builds them.
    kv_set = open_domain("kV-CT", kv_src, probe, probe.seed + 1)
    say(f"kV set: {len(kv_set)} slices (fixed); test set: {len(cases)} cases")
    loaded = [load_case(c) for c in cases]
    ms = settings.metrics
    # the input and the kV ground truth as reference lines of the plots
    ref_rows = [r for lc in loaded for r in score_case(lc, [Method(INPUT_METHOD, "input"),
                                                            Method(REFERENCE_METHOD, "reference")], {}, {}, settings,
                                                       keep=False)[0]]
    reference = {m: {k: float(np.nanmean([r[k] for r in ref_rows if r["method"] == m]))
                     for k in ("dig", "mae", "nselfssim")
                     if any(np.isfinite(r[k]) for r in ref_rows if r["method"] == m)}
                 for m in (INPUT_METHOD, REFERENCE_METHOD)}

    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    # largest first: the runs that matter most (and that evaluate reuses) finish first if time runs out
    for n in sorted(sizes, reverse=True):
        subset = TrainConfig.from_dict({**template, "max_slices": n, "out_dir": str(out / "runs" / "probe")})
        mv_set = open_domain("MVCT", mv_src, subset, subset.seed, mv_twins(subset))
        for preset in presets:
            tag = f"{preset}-n{n}"
            run_dir = out / "runs" / tag
            model_path = out / "models" / f"{tag}.pt"
            cfg = TrainConfig.from_dict({**template, "preset": preset, "max_slices": n, "out_dir": str(run_dir)})
            t0 = time.perf_counter()
            if not _run_finished(run_dir) and not train_missing:
                say(f"skipping {tag}: not trained (or not finished)")
                skipped.append(tag)
                continue
            if not _run_finished(run_dir):
                cfg.resume = (run_dir / "checkpoint.pt").exists()
                say(f"training {tag} ({len(mv_set)} MV slices, {iterations} iterations"
                    f"{', resuming' if cfg.resume else ''})")
                train(cfg, mv_dataset=mv_set, kv_dataset=kv_set)
            if not model_path.exists():
                export_run(run_dir, model_path, name=f"datasize-study-{tag}", version="0.0.1",
                           intended_use="Training-set-size study of the evaluation only; reduced training, "
                                        "not for use on images.")
            train_s = time.perf_counter() - t0
            say(f"evaluating {tag}")
            model = {tag: load_model(model_path)}
            method = Method(tag, "model", model_path)
            for lc in loaded:
                r, _ = score_case(lc, [method], {}, model, settings, keep=False)
                rows.append({"preset": preset, "n_requested": n, "n_slices": len(mv_set), "case": lc.case.name,
                             **{k: r[0][k] for k in ("dig", "mae", "psnr", "ssim", "nselfssim")}})
            info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
            runs.append({"preset": preset, "n_requested": n, "n_slices": len(mv_set), "run": str(run_dir),
                         "model": str(model_path), "elapsed_s": info.get("elapsed_s"),
                         "seconds_this_call": train_s})
            write_csv(rows, out / "datasize.csv", fields=DATASIZE_FIELDS)  # partial results survive a stop
    record = {"data": str(data), "mv": mv_src, "kv": kv_src, "kv_slices": len(kv_set),
              "test_set": str(cases[0].mvct.parent), "cases": [c.name for c in cases], "sizes": sizes,
              "presets": list(presets), "config": {k: v for k, v in template.items() if k not in ("out_dir",)},
              "reduced": {"iterations": iterations, "crop_size": crop_size, "ngf": ngf, "ndf": ndf},
              "metric_settings": {"noise_sd": ms.noise_sd, "window": list(ms.window), "seed": ms.seed},
              "reference": reference, "runs": runs, "skipped": skipped, "command": command}
    record["summary"] = write_datasize_outputs(out, rows, record)
    write_json(json_safe(record), out / "datasize.json")
    return record


def _datasize_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["preset"], r["n_slices"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for preset, n in keys:
        sel = [r for r in rows if r["preset"] == preset and r["n_slices"] == n]
        entry: dict[str, Any] = {"preset": preset, "n_slices": n, "n_cases": len(sel)}
        for metric in ("dig", "mae", "psnr", "ssim", "nselfssim"):
            x = np.array([float(r[metric]) for r in sel], dtype=np.float64)
            x = x[np.isfinite(x)]
            entry[f"{metric}_mean"] = float(x.mean()) if x.size else math.nan
            entry[f"{metric}_sd"] = float(x.std(ddof=1)) if x.size > 1 else math.nan
        out.append(entry)
    return out


def write_datasize_outputs(out: Path, rows: Sequence[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """datasize_summary.csv, datasize.png (DIG, MAE and NSelfSSIM vs MV slices, one curve per preset), datasize.md."""
    summary = _datasize_summary(rows)
    fields = ["preset", "n_slices", "n_cases"] + [f"{m}_{s}" for m in ("dig", "mae", "psnr", "ssim", "nselfssim")
                                                  for s in ("mean", "sd")]
    write_csv(summary, out / "datasize_summary.csv", fields=fields)
    plt = plot_figure()
    panels = [("dig", "DIG (HU²/mm²), lower = anatomy kept"), ("mae", "MAE vs kV in body (HU)"),
              ("nselfssim", "NSelfSSIM (kV-like ≈ lower)")]
    if not any(math.isfinite(s["mae_mean"]) for s in summary):
        panels = [p for p in panels if p[0] != "mae"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ref = record.get("reference") or {}
    sizes = sorted({s["n_slices"] for s in summary})
    for ax, (metric, label) in zip(axes[0], panels):
        for preset, style in zip(sorted({s["preset"] for s in summary}), ("o-", "s--", "^-.")):
            sel = [s for s in summary if s["preset"] == preset]
            sem = [s[f"{metric}_sd"] / math.sqrt(s["n_cases"]) if math.isfinite(s[f"{metric}_sd"]) else 0.0
                   for s in sel]
            ax.errorbar([s["n_slices"] for s in sel], [s[f"{metric}_mean"] for s in sel], yerr=sem, fmt=style,
                        capsize=3, label=preset)
        for name, style in ((INPUT_METHOD, ":"), (REFERENCE_METHOD, "-.")):
            v = ref.get(name, {}).get(metric)
            if v is not None and math.isfinite(v) and not (metric == "dig" and name == INPUT_METHOD):
                ax.axhline(v, color="0.4", ls=style, lw=1, label=f"{name} (reference)")
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("MV training slices (kV set fixed)")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    red = record.get("reduced", {})
    fig.suptitle(f"mean ± SEM over {len(record.get('cases', []))} test cases; reduced training: "
                 f"{red.get('iterations')} iterations, {red.get('crop_size')} px crops, ngf {red.get('ngf')}",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, out / "datasize.png")
    L = ["# Training-set-size study", "",
         f"Proposed model and plain CycleGAN trained on N MV slices (nested subsets) against a fixed kV set of "
         f"{record.get('kv_slices')} slices, identical reduced settings for every run: {red.get('iterations')} "
         f"iterations, {red.get('crop_size')} px crops, ngf {red.get('ngf')}, ndf {red.get('ndf')} (CPU-sized; the "
         "talk's models were trained far longer at full size). Metrics on the held-out test set "
         f"({len(record.get('cases', []))} cases), inside the body mask of each MVCT.", ""]
    if record.get("command"):
        L += ["```", record["command"], "```", ""]
    for name in (INPUT_METHOD, REFERENCE_METHOD):
        r = ref.get(name) or {}
        if r:
            L.append(f"Reference, {name}: " + ", ".join(f"{METRICS[k].label} {v:.4g}" for k, v in r.items()
                                                        if math.isfinite(v)) + " (mean over the test cases).")
    L += ["", "| preset | MV slices | DIG mean ± SD (HU²/mm²) | MAE mean ± SD (HU) | NSelfSSIM mean ± SD |",
          "|---|---|---|---|---|"]
    for s in summary:
        L.append(f"| {s['preset']} | {s['n_slices']} | {s['dig_mean']:.4g} ± {s['dig_sd']:.3g} | "
                 f"{s['mae_mean']:.2f} ± {s['mae_sd']:.2f} | {s['nselfssim_mean']:.4f} ± {s['nselfssim_sd']:.4f} |")
    if record.get("skipped"):
        L += ["", f"Not trained when this report was written (left out): {', '.join(record['skipped'])}."]
    L += ["", "![data-size study](datasize.png)", "", "Per case: [datasize.csv](datasize.csv); settings and runs: "
          "[datasize.json](datasize.json).", ""]
    tmp = out / ".datasize.md.partial"
    tmp.write_text("\n".join(L), encoding="utf-8")
    os.replace(tmp, out / "datasize.md")
    return summary
