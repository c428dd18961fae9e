"""The talk's claims as tests with stated rules, the ablation and the "never worse than its input" counts.

Everything here is computed once from the per-case rows and statistics of each evaluated set, stored in
the evaluation record (``evaluation.json``) and only rendered by :mod:`.report`, so a report rendered
again from the record says the same.

Claims of S. Ozaki's ISCO 2023 talk ("Image quality enhancement of medical images by use of deep
learning with a small amount of training data") and of Ozaki, Kaji et al., Med. Phys. 49(6), 2022,
each with a verdict "agrees", "disagrees" or "not testable here" decided by the rule in
:data:`RULES` (alpha = :data:`ALPHA`):

1. ``nselfssim``: the converted image's NSelfSSIM is near the planning (kV) CT's.
2. ``dig``: the proposed model preserves structure better than a plain CycleGAN (lower DIG).
3. ``datasize``: a few hundred unpaired MV slices suffice (from a ``study-datasize`` folder).

Model naming convention (used where the user names nothing else): models named ``proposed*`` are the
proposed model, ``cyclegan*`` the plain CycleGAN; ``proposed<suffix>`` is compared with
``cyclegan<suffix>``; a model named ``<name>-unbounded`` is the unbounded (paper's) twin of the
bounded model ``<name>``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st

from ..engine.errors import InputError
from ..engine.metrics import body_mask
from . import stats
from .cases import INPUT_METHOD, REFERENCE_METHOD, find_cases, load_case, values
from .scores import ALL_METRICS, FULL_REFERENCE

ALPHA = 0.05
AGREES, DISAGREES, NOT_TESTABLE = "agrees", "disagrees", "not testable here"
#: Claim 1: "near" means the 95 % CI of the paired NSelfSSIM difference (model - kV) lies within this
#: fraction of the mean MVCT - kV gap on either side. The talk's own table (MVCT 0.9024, proposed
#: 0.7079, kV 0.7263) has the model 0.10 of the gap from the kV CT.
NEAR_FRACTION = 0.25
#: Claim 3: "a few hundred" MV slices means at most this many.
FEW_HUNDRED = 400
UNBOUNDED_SUFFIX = "-unbounded"
N_BOOT = 5000
PROCESSING_KINDS = ("denoiser", "calibrated", "model")

RULES = {
    "nselfssim": (f"For each proposed model and set: d = NSelfSSIM(model) − NSelfSSIM(kV) per case, gap = mean "
                  f"NSelfSSIM(MVCT) − NSelfSSIM(kV). **Agrees** when the bootstrap 95 % CI of mean(d) lies within "
                  f"±{NEAR_FRACTION:g}·gap (the talk's own numbers: 0.10·gap); **disagrees** otherwise; **not testable "
                  "here** without a kV row, a model, two cases, or when the kV CT is not less noisy than the MVCT "
                  "(gap ≤ 0)."),
    "dig": (f"For each pair (plain CycleGAN, proposed) and set: **agrees** when the Shirley-Williams test (one "
            f"step, one-sided, lower DIG, permutation null) gives p < {ALPHA:g} and the proposed model's mean DIG is "
            "lower; **disagrees** otherwise (either the CycleGAN's DIG is lower, or no significant difference); "
            "**not testable here** without both models. A comparator whose MAE is above the MVCT's in at least half "
            "of the cases is flagged: it failed, and a win over it says little about the losses."),
    "datasize": (f"From the training-set-size study: take the proposed model trained on the largest size ≤ "
                 f"{FEW_HUNDRED} MV slices. **Agrees** when its MAE is lower than the reference's in a paired "
                 f"one-sided Wilcoxon signed-rank test (p < {ALPHA:g}) on the study's test cases; the reference is "
                 "the `calib` row when it was evaluated on the same cases (what needs no training), else the MVCT. "
                 "**Disagrees** otherwise; **not testable here** without a study folder, a proposed run of at most "
                 f"{FEW_HUNDRED} slices, or a kV ground truth."),
}
CLAIMS = {
    "nselfssim": "The converted image's NSelfSSIM is near the planning CT's (the talk's NSelfSSIM table).",
    "dig": "The proposed model preserves structure better than a plain CycleGAN (lower DIG).",
    "datasize": "A few hundred unpaired MV slices suffice to train the model.",
}


# --------------------------------------------------------------------------------------------------
# Small statistics helpers
# --------------------------------------------------------------------------------------------------

def mean_ci(x: np.ndarray) -> tuple[float, float, str]:
    """Bootstrap 95 % CI of a mean (BCa, else percentile, else n/a)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan, math.nan, "n/a"
    for method in ("bca", "percentile"):
        try:
            ci = stats.bootstrap_mean_ci(x, n_boot=N_BOOT, method=method, seed=0)
            return ci.low, ci.high, method
        except InputError:
            continue
    return math.nan, math.nan, "n/a"


def wilcoxon_p(a: np.ndarray, b: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p of a − b (``alternative`` "less": a < b); 1 when every difference is 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return math.nan
    d = a - b
    if np.all(d == 0):
        return 1.0
    return float(_st.wilcoxon(a, b, alternative=alternative).pvalue)


def _paired_arrays(rows, a: str, b: str, metric: str, cases: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list]:
    x, y = values(rows, a, metric, cases), values(rows, b, metric, cases)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok], [c for c, k in zip(cases, ok) if k]


# --------------------------------------------------------------------------------------------------
# Naming convention
# --------------------------------------------------------------------------------------------------

def proposed_models(methods: Sequence[Any]) -> list[str]:
    """Models named ``proposed*``; without any, every model."""
    models = [m.name for m in methods if m.kind == "model"]
    named = [n for n in models if n.startswith("proposed")]
    return named or models


def primary_model(methods: Sequence[Any]) -> str | None:
    cands = proposed_models(methods)
    return "proposed" if "proposed" in cands else (cands[0] if cands else None)


def default_ablation_pairs(methods: Sequence[Any]) -> list[tuple[str, str, str]]:
    """(with, without, what it isolates) pairs by the naming convention, for the methods present."""
    names = [m.name for m in methods]
    kinds = {m.name: m.kind for m in methods}
    pairs: list[tuple[str, str, str]] = []
    if "calib" in names and INPUT_METHOD in names:
        pairs.append(("calib", INPUT_METHOD, "the calibration alone"))
    for den in ("tv", "nlm", "bm3d"):
        if f"calib+{den}" in names and den in names:
            pairs.append((f"calib+{den}", den, f"the calibration, after {den.upper()} denoising"))
    for n in names:
        if kinds[n] == "model" and f"{n}{UNBOUNDED_SUFFIX}" in names:
            pairs.append((n, f"{n}{UNBOUNDED_SUFFIX}", "the bound: the bounded model vs its unbounded twin"))
    best_conv = next((c for c in ("calib+tv", "calib+nlm", "calib+bm3d") if c in names), None)
    if best_conv:
        for n in names:
            if kinds[n] == "model" and n.startswith("proposed"):
                pairs.append((n, best_conv, f"the learned change over {best_conv}"))
    return pairs


def check_pairs(pairs: Sequence[tuple[str, str]], methods: Sequence[Any], what: str) -> None:
    names = {m.name for m in methods}
    for a, b in pairs:
        if a not in names or b not in names:
            raise InputError(f"{what} pair '{a}:{b}' names a method not in --methods ({', '.join(sorted(names))})")
        if a == b:
            raise InputError(f"{what} pair '{a}:{b}' compares a method with itself")


# --------------------------------------------------------------------------------------------------
# Headline, never-worse
# --------------------------------------------------------------------------------------------------

HEADLINE_METRICS = ("mae", "dig", "nselfssim")


def headline(sets: Sequence[dict[str, Any]], methods: Sequence[Any]) -> dict[str, Any]:
    """metric -> method -> set -> {"mean", "ci_low", "ci_high", "n"} for the headline table."""
    out: dict[str, Any] = {}
    for metric in HEADLINE_METRICS:
        out[metric] = {}
        for m in methods:
            cells = {}
            for s in sets:
                x = values(s["rows"], m.name, metric, s["cases"])
                x = x[np.isfinite(x)]
                if x.size == 0:
                    continue
                lo, hi, _ = mean_ci(x)
                cells[s["name"]] = {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi, "n": int(x.size)}
            if cells:
                out[metric][m.name] = cells
    return out


def never_worse(sets: Sequence[dict[str, Any]], methods: Sequence[Any]) -> dict[str, Any]:
    """method -> set -> {"worse", "n", "cases"}: cases whose MAE is above the MVCT's (the method's input)."""
    out: dict[str, Any] = {}
    for m in methods:
        if m.kind not in PROCESSING_KINDS:
            continue
        for s in sets:
            x, y, cases = _paired_arrays(s["rows"], m.name, INPUT_METHOD, "mae", s["cases"])
            if not cases:
                continue
            worse = [c for c, a, b in zip(cases, x, y) if a > b + 1e-9]
            out.setdefault(m.name, {})[s["name"]] = {"worse": len(worse), "n": len(cases), "cases": worse,
                                                     "kind": m.kind}
    return out


# --------------------------------------------------------------------------------------------------
# Claim 1: NSelfSSIM near the planning CT's
# --------------------------------------------------------------------------------------------------

def _claim_summary(claim: str, rows: list[dict[str, Any]], primary: dict[str, Any] | None,
                   reason_if_none: str) -> dict[str, Any]:
    others = [r for r in rows if r is not primary and r["verdict"] != NOT_TESTABLE]
    out = {"claim": CLAIMS[claim], "rule": RULES[claim], "rows": rows,
           "verdict": primary["verdict"] if primary else NOT_TESTABLE,
           "reason": primary["reason"] if primary else reason_if_none,
           "primary": ({k: primary[k] for k in ("set", "model", "versus") if k in primary} if primary else None),
           "others": {v: sum(r["verdict"] == v for r in others) for v in (AGREES, DISAGREES)}}
    return out


def claim_nselfssim(sets: Sequence[dict[str, Any]], methods: Sequence[Any]) -> dict[str, Any]:
    names = {m.name for m in methods}
    models = proposed_models(methods)
    rows: list[dict[str, Any]] = []
    if not models or REFERENCE_METHOD not in names or INPUT_METHOD not in names:
        missing = [w for w, ok in (("a model", bool(models)), ("the kv row", REFERENCE_METHOD in names),
                                   ("the mvct row", INPUT_METHOD in names)) if not ok]
        return _claim_summary("nselfssim", [], None, f"needs {' and '.join(missing)} in --methods")
    for s in sets:
        for model in models:
            row: dict[str, Any] = {"set": s["name"], "model": model, "versus": REFERENCE_METHOD}
            mv = values(s["rows"], INPUT_METHOD, "nselfssim", s["cases"])
            kv = values(s["rows"], REFERENCE_METHOD, "nselfssim", s["cases"])
            md = values(s["rows"], model, "nselfssim", s["cases"])
            ok = np.isfinite(mv) & np.isfinite(kv) & np.isfinite(md)
            row["n"] = int(ok.sum())
            if ok.sum() < 2:
                row.update(verdict=NOT_TESTABLE, reason="fewer than 2 cases with NSelfSSIM of the MVCT, the kV CT and "
                                                        "the model")
                rows.append(row)
                continue
            gap = float(np.mean(mv[ok] - kv[ok]))
            d = md[ok] - kv[ok]
            lo, hi, how = mean_ci(d)
            row.update(mvct=float(mv[ok].mean()), kv=float(kv[ok].mean()), mean=float(md[ok].mean()), gap=gap,
                       difference=float(d.mean()), ci_low=lo, ci_high=hi, ci_method=how,
                       margin=NEAR_FRACTION * gap if gap > 0 else math.nan,
                       gap_fraction=float(d.mean()) / gap if gap > 0 else math.nan)
            if gap <= 0:
                row.update(verdict=NOT_TESTABLE, reason=f"the kV CT is not less noisy than the MVCT here (gap {gap:.4f})")
            elif not (math.isfinite(lo) and math.isfinite(hi)):
                row.update(verdict=NOT_TESTABLE, reason="no confidence interval (too few distinct values)")
            elif -row["margin"] <= lo and hi <= row["margin"]:
                row.update(verdict=AGREES, reason=f"95 % CI of NSelfSSIM({model}) − NSelfSSIM(kV) is "
                                                  f"[{lo:.4f}, {hi:.4f}], within ±{row['margin']:.4f} "
                                                  f"({NEAR_FRACTION:g} of the MVCT−kV gap {gap:.4f})")
            else:
                side = "less noisy than the kV CT" if hi < 0 else "noisier than the kV CT" if lo > 0 else \
                    "not shown to be near the kV CT (interval too wide)"
                row.update(verdict=DISAGREES, reason=f"95 % CI of NSelfSSIM({model}) − NSelfSSIM(kV) is "
                                                     f"[{lo:.4f}, {hi:.4f}], beyond ±{row['margin']:.4f} "
                                                     f"({NEAR_FRACTION:g} of the gap {gap:.4f}): {side}")
            rows.append(row)
    primary_name = primary_model(methods)
    primary = next((r for r in rows if r["model"] == primary_name and r["set"] == sets[0]["name"]), None) \
        if sets else None
    return _claim_summary("nselfssim", rows, primary, "no set evaluated")


# --------------------------------------------------------------------------------------------------
# Claim 2: DIG of the proposed model below plain CycleGAN's
# --------------------------------------------------------------------------------------------------

def claim_dig(sets: Sequence[dict[str, Any]], methods: Sequence[Any], given: bool = False) -> dict[str, Any]:
    """Claim 2 on the DIG pairs of each set's statistics: those given by the user (``given``), else only the
    naming convention's (``cyclegan<suffix>``, ``proposed<suffix>``); the DIG table's fallback (the first two
    models) is no CycleGAN comparison."""
    rows: list[dict[str, Any]] = []
    names = {m.name for m in methods}
    for s in sets:
        dig = s["statistics"].get("dig") or {}
        pairs = dig.get("pairs") or []
        declared = dig.get("declared_pairs") or [[p["versus"], p["method"]] for p in pairs]
        if not given:
            declared = [(a, b) for a, b in declared if a.startswith("cyclegan") and b.startswith("proposed")]
        for comparator, model in declared:
            row: dict[str, Any] = {"set": s["name"], "model": model, "versus": comparator}
            p = next((x for x in pairs if x["method"] == model and x["versus"] == comparator), None)
            if p is None:
                row.update(verdict=NOT_TESTABLE, reason="no paired DIG test (fewer than 2 cases with DIG of both)")
                rows.append(row)
                continue
            row.update(p=p["p"], wilcoxon_p=p["wilcoxon_p"], difference=p["mean_difference"],
                       lower_in=p["better_in_cases"], n=(s["statistics"].get("dig") or {}).get("n_cases"))
            # the comparator's own sanity: is it worse than its input?
            if INPUT_METHOD in names:
                x, y, cs = _paired_arrays(s["rows"], comparator, INPUT_METHOD, "mae", s["cases"])
                if cs:
                    row["comparator_worse_than_input"] = int(np.sum(x > y + 1e-9))
                    row["comparator_cases"] = len(cs)
            if p["p"] is not None and p["p"] < ALPHA and p["mean_difference"] < 0:
                row.update(verdict=AGREES, reason=f"DIG({model}) − DIG({comparator}) = {p['mean_difference']:.4g} "
                                                  f"HU²/mm², Shirley-Williams p = {_p(p['p'])}, lower in "
                                                  f"{p['better_in_cases']}/{row['n']} cases")
            elif p["mean_difference"] > 0 and p.get("wilcoxon_p") is not None and p["wilcoxon_p"] < ALPHA:
                row.update(verdict=DISAGREES, reason=f"the CycleGAN's DIG is lower: difference "
                                                     f"{p['mean_difference']:.4g} HU²/mm², Wilcoxon p = "
                                                     f"{_p(p['wilcoxon_p'])}")
            else:
                row.update(verdict=DISAGREES, reason=f"no significant difference: DIG({model}) − DIG({comparator}) = "
                                                     f"{p['mean_difference']:.4g} HU²/mm², Shirley-Williams p = "
                                                     f"{_p(p['p'])} (not reproduced)")
            worse, n = row.get("comparator_worse_than_input"), row.get("comparator_cases")
            if worse is not None and n and worse >= n / 2:
                row["reason"] += (f"; note: the comparator {comparator} has an MAE above the MVCT's in {worse}/{n} "
                                  "cases (it failed), so this comparison says little about the losses")
            rows.append(row)
    primary = next((r for r in rows if sets and r["set"] == sets[0]["name"]), None)
    return _claim_summary("dig", rows, primary, "needs a plain CycleGAN and a proposed model (cyclegan*/proposed* "
                                                "names or --dig-pairs)")


def _p(p: float | None) -> str:
    return "n/a" if p is None or not math.isfinite(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


# --------------------------------------------------------------------------------------------------
# Claim 3: a few hundred slices suffice (from a study-datasize folder)
# --------------------------------------------------------------------------------------------------

def read_datasize(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """datasize.json and the per-case rows of datasize.csv of a study-datasize folder."""
    root = Path(folder)
    j, c = root / "datasize.json", root / "datasize.csv"
    if not j.is_file() or not c.is_file():
        raise InputError(f"'{root}' is not a study-datasize folder (needs datasize.json and datasize.csv); run "
                         "mvct-enhance study-datasize first")
    try:
        record = json.loads(j.read_text())
    except ValueError as exc:
        raise InputError(f"'{j}' is not valid JSON ({exc})") from None
    rows = []
    with open(c, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for k in ("n_requested", "n_slices"):
                row[k] = int(row[k])
            for k in ("dig", "mae", "psnr", "ssim", "nselfssim"):
                row[k] = float(row[k]) if row.get(k) not in ("", None) else math.nan
            rows.append(row)
    return record, rows


def _reference_mae(study: dict[str, Any], sets: Sequence[dict[str, Any]], methods: Sequence[Any],
                   cases: Sequence[str]) -> tuple[str, dict[str, float], str]:
    """Per-case MAE of the claim's reference on the study's test cases: (name, {case: MAE}, where from)."""
    folder = Path(str(study.get("test_set") or ""))
    names = {m.name for m in methods}
    for s in sets:
        try:
            same = Path(s["folder"]).resolve() == folder.resolve()
        except OSError:
            same = False
        if same:
            ref = "calib" if "calib" in names else INPUT_METHOD
            v = values(s["rows"], ref, "mae", cases)
            if np.isfinite(v).all():
                return ref, dict(zip(cases, map(float, v))), f"the evaluation's `{ref}` rows of set `{s['name']}`"
    if not folder.is_dir():
        return INPUT_METHOD, {}, f"the study's test set '{folder}' is not here"
    out = {}
    for c in find_cases(folder):
        if c.name not in cases:
            continue
        lc = load_case(c)
        if lc.ground_truth is None:
            continue
        out[c.name] = FULL_REFERENCE["mae"](lc.mvct, lc.ground_truth, body_mask(lc.mvct))
    return INPUT_METHOD, out, f"the MVCT of the study's test set '{folder}', scored here"


def claim_datasize(folder: str | Path | None, sets: Sequence[dict[str, Any]], methods: Sequence[Any]) -> dict[str, Any]:
    if folder is None:
        out = _claim_summary("datasize", [], None, "no training-set-size study given (evaluate --datasize "
                                                   "STUDY_DIR); not tested here")
        out["study"] = None
        return out
    study, drows = read_datasize(folder)
    cases = list(dict.fromkeys(r["case"] for r in drows))
    ref_name, ref, ref_from = _reference_mae(study, sets, methods, cases)
    table = []
    for preset in sorted({r["preset"] for r in drows}):
        for n in sorted({r["n_slices"] for r in drows if r["preset"] == preset}):
            sel = [r for r in drows if r["preset"] == preset and r["n_slices"] == n]
            mae = np.array([r["mae"] for r in sel])
            dig = np.array([r["dig"] for r in sel])
            entry: dict[str, Any] = {"preset": preset, "n_slices": n, "n_cases": len(sel)}
            for key, x in (("mae", mae), ("dig", dig)):
                fin = x[np.isfinite(x)]
                lo, hi, _ = mean_ci(fin)
                entry[key] = {"mean": float(fin.mean()) if fin.size else math.nan, "ci_low": lo, "ci_high": hi}
            paired = [(r["mae"], ref[r["case"]]) for r in sel if r["case"] in ref and math.isfinite(r["mae"])]
            if len(paired) >= 2:
                a, b = np.array(paired).T
                entry["reference_mae"] = float(b.mean())
                entry["p_below_reference"] = wilcoxon_p(a, b, "less")
                entry["below_reference_in"] = int(np.sum(a < b))
                entry["n_paired"] = len(paired)
            table.append(entry)
    rows: list[dict[str, Any]] = []
    cands = [e for e in table if e["preset"] == "proposed" and e["n_slices"] <= FEW_HUNDRED]
    reduced = study.get("reduced") or {}
    training = (f"{reduced.get('iterations')} iterations, {reduced.get('crop_size')} px crops, ngf "
                f"{reduced.get('ngf')}" if reduced else "settings in datasize.json")
    primary = None
    if not cands:
        reason = f"the study has no proposed run on at most {FEW_HUNDRED} MV slices"
    elif not ref:
        reason = f"no per-case reference MAE ({ref_from})"
    else:
        e = max(cands, key=lambda x: x["n_slices"])
        row: dict[str, Any] = {"set": "study test set", "model": f"proposed-n{e['n_slices']}", "versus": ref_name,
                               "n_slices": e["n_slices"]}
        p = e.get("p_below_reference", math.nan)
        smallest = min((x["n_slices"] for x in cands if x.get("p_below_reference", 1.0) < ALPHA), default=None)
        row["smallest_sufficient"] = smallest
        if p is not None and math.isfinite(p) and p < ALPHA:
            row.update(verdict=AGREES, reason=f"trained on {e['n_slices']} MV slices, MAE {e['mae']['mean']:.2f} HU vs "
                                              f"{ref_name} {e['reference_mae']:.2f} HU (lower in "
                                              f"{e['below_reference_in']}/{e['n_paired']} cases, Wilcoxon p = {_p(p)}); "
                                              f"smallest size that beats {ref_name}: {smallest}")
        else:
            row.update(verdict=DISAGREES, reason=f"trained on {e['n_slices']} MV slices, MAE "
                                                 f"{e['mae']['mean']:.2f} HU vs {ref_name} "
                                                 f"{e.get('reference_mae', math.nan):.2f} HU (Wilcoxon one-sided "
                                                 f"p = {_p(p)}): not below what needs no training")
        row["reason"] += f"; study training: {training}"
        rows.append(row)
        primary = row
        reason = ""
    out = _claim_summary("datasize", rows, primary, reason)
    out["study"] = {"folder": str(folder), "reference": ref_name, "reference_from": ref_from, "table": table,
                    "training": reduced, "skipped": study.get("skipped") or [], "command": study.get("command"),
                    "kv_slices": study.get("kv_slices"), "cases": cases}
    return out


# --------------------------------------------------------------------------------------------------
# Ablation
# --------------------------------------------------------------------------------------------------

ABLATION_METRICS = ("mae", "dig", "tissue_change")


def ablation(sets: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Per (with, without) pair, set and metric: means, paired difference with bootstrap CI, Wilcoxon p."""
    out = []
    for a, b, what in pairs:
        for s in sets:
            for metric in ABLATION_METRICS:
                x, y, cs = _paired_arrays(s["rows"], a, b, metric, s["cases"])
                if not cs:
                    continue
                d = x - y
                lo, hi, _ = mean_ci(d)
                p = wilcoxon_p(x, y)
                better = ALL_METRICS[metric].better
                lower = int(np.sum(x < y))
                effect = "no significant difference"
                if math.isfinite(p) and p < ALPHA and d.mean() != 0:
                    a_better = (d.mean() < 0) == (better == "lower")
                    effect = f"{a if a_better else b} better"
                out.append({"with": a, "without": b, "what": what, "set": s["name"], "metric": metric,
                            "n": len(cs), "mean_with": float(x.mean()), "mean_without": float(y.mean()),
                            "difference": float(d.mean()), "ci_low": lo, "ci_high": hi, "wilcoxon_p": p,
                            "lower_in": lower, "effect": effect})
    return out
