"""The evaluation report: summary statistics, the talk's tables (Markdown), and PNG figures.

Statistics come from :mod:`stats` (Friedman omnibus, Shirley-Williams step-down test for repeated
measures, paired effect sizes, bootstrap CIs), per set; the claims' verdicts, the ablation and the
"never worse than its input" counts from :mod:`claims`; figures are drawn with matplotlib's Agg
backend. The column order given to the Shirley-Williams test is the order of ``--methods``: the
protocol fixes it before the data are seen (input first, then conventional denoisers, calibrated
baselines, CycleGAN, proposed, kV), as the test requires.

Layout of report.md: title, command, sets; methods; headline (MAE, DIG, NSelfSSIM per method and set,
"never worse than its input"); a section per claim of the talk with its verdict; the ablation; then
per set the talk's tables, the errors per tissue, the statistics and the figures (with one set, as
level-2 sections as before); the tuning; discussion; references.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine.errors import InputError
from ..engine.files import read_json_object
from ..engine.modelcard import iterations_text
from ..engine.version import __version__
from . import claims, stats
from .cases import STANDARD_SET, Method, values, write_csv
from .plots import boxplots_png, headline_png, maps_png, montage_png, pick_slice
from .scores import ALL_METRICS, TISSUE_DEFINITIONS, TISSUE_LABELS, TISSUE_RANGES, testable

#: Talk's NSelfSSIM table (head and neck; S. Ozaki, ISCO 2023), for the side-by-side comparison.
TALK_NSELFSSIM = {"mvct": (0.9024, 0.0106), "proposed": (0.7079, 0.0794), "kv": (0.7263, 0.0825)}
#: One-sided alternative of the Shirley-Williams test per metric (direction of "better than the
#: control"): processing lowers NSelfSSIM (less noise) and MAE, raises PSNR and SSIM; for DIG the
#: control is the first model (CycleGAN in the protocol) and the others are expected lower.
N_BOOT = 5000
N_PERM = 20000
ALPHA = 0.05


def _complete(rows, methods: Sequence[str], metric: str, cases: Sequence[str]) -> list[str]:
    """Methods with a finite value of ``metric`` on every case."""
    return [m for m in methods if np.isfinite(values(rows, m, metric, cases)).all()]


def _ci(x: np.ndarray) -> tuple[float, float, str]:
    return claims.mean_ci(x)


def summarize_rows(rows: Sequence[dict[str, Any]], methods: Sequence[Any]) -> list[dict[str, Any]]:
    """Per method and metric: n, mean, SD (ddof 1), median and the bootstrap 95 % CI of the mean."""
    cases = sorted({r["case"] for r in rows})
    out = []
    for m in methods:
        for metric in ALL_METRICS:
            x = values(rows, m.name, metric, cases)
            x = x[np.isfinite(x)]
            if x.size == 0:
                continue
            low, high, how = _ci(x) if x.size >= 2 else (math.nan, math.nan, "n/a")
            out.append({"method": m.name, "kind": m.kind, "metric": metric, "n": int(x.size),
                        "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else math.nan,
                        "median": float(np.median(x)), "ci_low": low, "ci_high": high, "ci_method": how})
    return out


def _stat_columns(methods: Sequence[Any], metric: str) -> list[str]:
    """Columns (in protocol order) that the tests of ``metric`` compare."""
    if metric == "dig":
        # DIG of the input is 0 by definition and the kV row is a reference: the processing methods
        return [m.name for m in methods if m.kind in ("denoiser", "calibrated", "model")]
    if ALL_METRICS[metric].needs_reference:
        return [m.name for m in methods if m.kind != "reference"]
    return [m.name for m in methods]


def default_dig_pairs(methods: Sequence[Any]) -> list[tuple[str, str]]:
    """(comparator, method) pairs of the talk's DIG comparison when none are given.

    Every model named ``proposed<suffix>`` is paired with ``cyclegan<suffix>`` when that exists
    (e.g. proposed/cyclegan, proposed-reduced/cyclegan-reduced); without such names the first two
    models, the first as the comparator.
    """
    models = [m.name for m in methods if m.kind == "model"]
    pairs = [(f"cyclegan{n[len('proposed'):]}", n) for n in models
             if n.startswith("proposed") and f"cyclegan{n[len('proposed'):]}" in models]
    if not pairs and len(models) >= 2:
        pairs = [(models[0], models[1])]
    return pairs


def _paired(stats: Any, a: np.ndarray, b: np.ndarray, alternative: str) -> dict[str, Any]:
    return {"mean_difference": float(np.mean(a - b)), "cohens_dz": stats.cohens_dz(a, b),
            "rank_biserial": stats.rank_biserial_paired(a, b),
            "better_in_cases": int(np.sum((a < b) if alternative == "less" else (a > b)))}


def statistics(rows: Sequence[dict[str, Any]], methods: Sequence[Any],
               dig_pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Per metric: Friedman over the compared methods, Shirley-Williams (step-down against the first
    column, one-sided in the direction of improvement) and paired effect sizes against that control.

    DIG has no meaningful control among the methods (the input's DIG is 0 by definition), so its
    trend test is run per (comparator, method) pair instead, e.g. (cyclegan, proposed): one step,
    alternative "less"; see :func:`default_dig_pairs`.

    Cases where no compared method has a value (a case without bone for the bone errors, without a
    ground truth for MAE) are left out of that metric's tests; then methods without a value on every
    remaining case. Signed errors (``better="zero"``) get no test: "better" has no direction there.
    """
    all_cases = sorted({r["case"] for r in rows})
    names = {m.name for m in methods}
    pairs_given = list(dig_pairs) if dig_pairs is not None else default_dig_pairs(methods)
    for a, b in pairs_given:
        if a not in names or b not in names:
            raise InputError(f"DIG pair '{a}:{b}' names a method that is not evaluated ({', '.join(sorted(names))})")
    out: dict[str, Any] = {}
    for metric in ALL_METRICS:
        candidates = _stat_columns(methods, metric)
        cases = [c for c in all_cases
                 if any(np.isfinite(values(rows, m, metric, [c])).all() for m in candidates)]
        cols = _complete(rows, candidates, metric, cases)
        entry: dict[str, Any] = {"columns": cols, "n_cases": len(cases)}
        if metric == "dig":
            entry["declared_pairs"] = [list(p) for p in pairs_given]
        out[metric] = entry
        if not testable(metric):
            entry["skipped"] = "signed error: no one-sided direction (see the MAE of the same tissue)"
            continue
        if len(cols) < 2 or len(cases) < 2:
            entry["skipped"] = ("fewer than 2 methods with values" if len(cols) < 2 else "fewer than 2 cases")
            continue
        table = np.stack([values(rows, c, metric, cases) for c in cols], axis=1)
        fr = stats.friedman(table)
        entry["friedman"] = {"test": fr.test, "statistic": fr.statistic, "df": fr.df, "p": fr.p,
                             "kendall_w": fr.kendall_w, "note": fr.note}
        alt = ALL_METRICS[metric].alternative
        if metric == "dig":
            entry["pairs"] = []
            for comparator, method in pairs_given:
                if comparator not in cols or method not in cols:
                    continue
                t2 = table[:, [cols.index(comparator), cols.index(method)]]
                sw = stats.shirley_williams(t2, names=[comparator, method], alternative=alt, method="permutation",
                                            n_perm=N_PERM, seed=0, alpha=ALPHA)
                wx = stats.friedman(t2)  # two columns: the Wilcoxon signed-rank test (two-sided)
                c = sw.comparisons[0]
                entry["pairs"].append({"method": method, "versus": comparator, "p": c.p, "mark": c.mark,
                                       "statistic": c.statistic, "exact": sw.exact, "wilcoxon_p": wx.p,
                                       **_paired(stats, t2[:, 1], t2[:, 0], alt)})
            continue
        sw = stats.shirley_williams(table, names=cols, alternative=alt, method="permutation", n_perm=N_PERM, seed=0,
                                    alpha=ALPHA)
        entry["shirley_williams"] = {"control": sw.control, "alternative": sw.alternative, "exact": sw.exact,
                                     "n_perm": sw.n_perm, "comparisons": sw.to_rows()}
        entry["paired"] = [{"method": c, "versus": cols[0], **_paired(stats, table[:, j], table[:, 0], alt)}
                           for j, c in enumerate(cols) if j > 0]
    return out


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------

def _fmt(v: float, metric: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a" if not (isinstance(v, float) and math.isinf(v)) else ("inf" if v > 0 else "-inf")
    if metric in ("nselfssim", "ssim"):
        return f"{v:.4f}"
    if metric == "dig":
        return f"{v:.4g}"
    return f"{v:.2f}"


def _num(v: Any, spec: str = ".2f") -> str:
    """A number for a table; n/a for None or NaN (values read back from evaluation.json)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def _p(p: float) -> str:
    return "n/a" if p is None or not math.isfinite(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


def _mark(st: dict[str, Any], metric: str, method: str) -> str:
    """† where the step-down test rejects at this method's step and the method itself moved in the tested
    direction; (†) where it rejects only because of the groups ordered before it (a monotone trend test
    pools them), while this method is not better than the control on average."""
    if metric == "dig":
        return "".join(p["mark"] for p in st.get("dig", {}).get("pairs", []) if p["method"] == method)
    entry = st.get(metric, {})
    sw = entry.get("shirley_williams")
    if not sw:
        return ""
    for c in sw["comparisons"]:
        if c["group"] == method and c["significant"]:
            pair = next((p for p in entry.get("paired", []) if p["method"] == method), None)
            d = pair["mean_difference"] if pair else None
            agrees = d is not None and ((d < 0) if sw["alternative"] == "less" else (d > 0))
            return c["mark"] if agrees else f"({c['mark']})"
    return ""


def _metric_table(summary, st, methods, metric: str, talk: dict | None = None) -> list[str]:
    info = ALL_METRICS[metric]
    unit = f" ({info.unit})" if info.unit else ""
    head = f"| method | {info.label}{unit} mean ± SD | 95 % CI of the mean | median | n |"
    sep = "|---|---|---|---|---|"
    if talk is not None:
        head += " talk (mean ± SD) |"
        sep += "---|"
    lines = [head, sep]
    for m in methods:
        s = next((x for x in summary if x["method"] == m.name and x["metric"] == metric), None)
        if s is None:
            continue
        mark = _mark(st, metric, m.name)
        ci = (f"{_fmt(s['ci_low'], metric)} – {_fmt(s['ci_high'], metric)}"
              if s["ci_low"] is not None and math.isfinite(s["ci_low"]) else "n/a")
        line = (f"| {m.name}{' ' + mark if mark else ''} | {_fmt(s['mean'], metric)} ± {_fmt(s['sd'], metric)} | "
                f"{ci} | {_fmt(s['median'], metric)} | {s['n']} |")
        if talk is not None:
            t = talk.get(m.name) or next((v for k, v in talk.items() if m.kind == "model" and m.name.startswith(k)), None)
            line += f" {t[0]:.4f} ± {t[1]:.4f} |" if t else " |"
        lines.append(line)
    return lines


def _tissue_table(summary, st, methods) -> list[str]:
    """Rows = methods; columns = mean signed error and MAE per tissue (mean ± SD over the cases)."""
    tissues = list(TISSUE_RANGES)
    head = "| method | " + " | ".join(f"{TISSUE_LABELS[t]}: ME | {TISSUE_LABELS[t]}: MAE" for t in tissues) + " |"
    lines = [head, "|---|" + "---|---|" * len(tissues)]
    for m in methods:
        cells = []
        for t in tissues:
            for metric in (f"me_{t}", f"mae_{t}"):
                s = next((x for x in summary if x["method"] == m.name and x["metric"] == metric), None)
                mark = _mark(st, metric, m.name) if metric.startswith("mae") else ""
                cells.append("n/a" if s is None else f"{_fmt(s['mean'], metric)} ± {_fmt(s['sd'], metric)}"
                             + (f" {mark}" if mark else ""))
        if any(c != "n/a" for c in cells):
            lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
    return lines


def _stats_lines(st: dict[str, Any]) -> list[str]:
    lines = ["| metric | methods compared (protocol order) | omnibus test | statistic | p | Kendall W |",
             "|---|---|---|---|---|---|"]
    for metric, e in st.items():
        label = ALL_METRICS[metric].label
        if "friedman" not in e:
            if not testable(metric):
                continue
            lines.append(f"| {label} | {', '.join(e['columns']) or '-'} | skipped: {e.get('skipped')} | | | |")
            continue
        f = e["friedman"]
        w = f"{f['kendall_w']:.3f}" if f["kendall_w"] is not None else "-"
        df = f" (df {f['df']})" if f["df"] is not None else ""
        lines.append(f"| {label} | {', '.join(e['columns'])} | {f['test']}{df} | {_num(f['statistic'], '.3f')} | "
                     f"{_p(f['p'])} | {w} |")
    lines += ["", "DIG's trend test is run per pair (see the DIG section). For the other metrics: "
              "Shirley-Williams step-down test against the first column (control), one-sided in the "
              "direction of improvement, within-case ranks, permutation null; † = step-down adjusted p < 0.05. "
              "(†) = rejected at this step only through the monotone (isotonic) pooling with the groups ordered "
              "before it while this method's own mean is not better than the control: the trend test assumes the "
              "protocol order is monotone, and this row shows where that assumption fails. The step-down also "
              "stops at the first non-rejection from the top, so a clearly better method below a worse top group "
              "gets no mark: read the raw p and the paired columns too. "
              "Effect sizes are paired (method minus control): Cohen's d_z and the matched-pairs "
              "rank-biserial correlation. Signed errors per tissue are not tested (no one-sided direction).", "",
              "| metric | method | vs control | alternative | t | p (raw) | p (step-down) | mark | "
              "mean difference | d_z | rank-biserial | better in cases |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for metric, e in st.items():
        sw = e.get("shirley_williams")
        if not sw:
            continue
        label = ALL_METRICS[metric].label
        pairs = {p["method"]: p for p in e["paired"]}
        for c in sw["comparisons"]:
            p = pairs.get(c["group"], {})
            lines.append(f"| {label} | {c['group']} | {sw['control']} | {sw['alternative']} | "
                         f"{_num(c['statistic'], '.3f')} | {_p(c['p_raw'])} | {_p(c['p'])} | "
                         f"{_mark(st, metric, c['group'])} | {_fmt(p.get('mean_difference', math.nan), metric)} | "
                         f"{_num(p.get('cohens_dz', math.nan))} | {_num(p.get('rank_biserial', math.nan))} | "
                         f"{p.get('better_in_cases', '')}/{e['n_cases']} |")
    return lines


def _methods_lines(record: dict[str, Any]) -> list[str]:
    L = ["| method | kind | details |", "|---|---|---|"]
    tuning = record.get("denoiser_tuning") or {}
    btuning = record.get("baseline_tuning") or {}
    for m in record["methods"]:
        if m["kind"] == "model":
            c = m["model_card"]
            arch = c.get("architecture") or {}
            details = (f"`{m['model']}`: {c['name']} {c['version']}, sha256 {c['sha256'][:12]}, preset "
                       f"{c.get('preset') or '?'}, {iterations_text(c)}, ngf {arch.get('ngf')}")
            if c.get("max_change_hu") is not None:
                details += f", bounded (max change {c['max_change_hu']:g} HU)"
            elif "max_change_hu" in c:
                details += ", unbounded"
        elif m["kind"] == "denoiser":
            p = tuning.get("parameters", {}).get(m["name"], {})
            details = f"{p.get('function', '')}, {p.get('name')} = {p.get('value'):g} (tuned on the validation case)"
        elif m["kind"] == "calibrated":
            st = (btuning.get("settings") or {}).get(m["name"]) or {}
            p = (btuning.get("parameters") or {}).get(m["name"]) or {}
            cal = (btuning.get("calibration") or {}).get("source") or "ICRU tissue calibration"
            if p.get("denoiser"):
                details = (f"{st.get('order')}: {p.get('function', '')}, {p.get('name')} = "
                           f"{_num(st.get('value'), 'g')} and the MV→kV calibration ({cal}); order and value tuned "
                           "on the validation case")
            else:
                details = f"the MVCT through the MV→kV calibration ({cal}); nothing tuned"
        elif m["kind"] == "input":
            details = "the MVCT itself (DIG 0 by definition)"
        else:
            details = "kV ground truth / planning CT (reference row)"
        L.append(f"| {m['name']} | {m['kind']} | {details} |")
    return L


def _set_title(s: dict[str, Any]) -> str:
    return f"`{s['name']}`" + (f": {s['what']}" if s.get("what") else "")


def _headline_lines(record: dict[str, Any], methods) -> list[str]:
    sets = record["sets"]
    hl = record.get("headline") or {}
    names = [s["name"] for s in sets]
    L = ["## Headline", "",
         "Mean over the cases of each set (per-set sections: SD, bootstrap CIs, tests). MAE in the body against "
         "the kV ground truth (HU), DIG (HU²/mm², lower = anatomy kept), NSelfSSIM (lower = less noise; the kV CT "
         "is the target).", ""]
    for metric in claims.HEADLINE_METRICS:
        info = ALL_METRICS[metric]
        table = hl.get(metric) or {}
        if not table:
            continue
        L += [f"**{info.label}**{f' ({info.unit})' if info.unit else ''}:", "",
              "| method | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
        for m in methods:
            cells = table.get(m.name)
            if not cells:
                continue
            L.append(f"| {m.name} | " + " | ".join(_fmt((cells.get(n) or {}).get("mean"), metric) if n in cells
                                                   else "n/a" for n in names) + " |")
        L.append("")
    nw = record.get("never_worse") or {}
    if nw:
        L += ["### Never worse than its input", "",
              "Cases whose MAE is above the MVCT's (the method's own input), per set:", "",
              "| method | " + " | ".join(f"`{n}`" for n in names) + " | all sets |", "|---|" + "---|" * (len(names) + 1)]
        for m in methods:
            cells = nw.get(m.name)
            if not cells:
                continue
            worse = sum(c["worse"] for c in cells.values())
            n = sum(c["n"] for c in cells.values())
            L.append(f"| {m.name} | " + " | ".join(f"{cells[x]['worse']}/{cells[x]['n']}" if x in cells else "n/a"
                                                   for x in names) + f" | {worse}/{n} |")
        L.append("")
        for m in methods:
            cells = nw.get(m.name)
            if not cells or m.kind != "model":
                continue
            worse = sum(c["worse"] for c in cells.values())
            n = sum(c["n"] for c in cells.values())
            if worse == 0:
                L.append(f"- **{m.name}**: never worse than its input ({n} cases in {len(cells)} set(s)).")
            else:
                where = "; ".join(f"`{x}`: {c['worse']}/{c['n']} ({', '.join(c['cases'][:5])}"
                                  f"{', …' if len(c['cases']) > 5 else ''})" for x, c in cells.items() if c["worse"])
                L.append(f"- **{m.name}**: worse than its input in {worse} of {n} cases — {where}.")
        L.append("")
    fig = record.get("headline_figure")
    if fig:
        L += [f"![headline]({fig})", "", "Mean and bootstrap 95 % CI of MAE, DIG and NSelfSSIM per method and set.", ""]
    return L


def _claim_lines(record: dict[str, Any]) -> list[str]:
    cl = record.get("claims") or {}
    if not cl:
        return []
    L = ["## The talk's claims", "",
         "Each claim of S. Ozaki's ISCO 2023 talk (and of Ozaki, Kaji et al., Med. Phys. 49(6), 2022) as a test with "
         "a rule fixed before the numbers; the verdict on the standard test set (first set) is the headline, the "
         "other sets and models follow in the table.", ""]
    titles = {"nselfssim": "1. Converted NSelfSSIM near the planning CT's",
              "dig": "2. The proposed model preserves structure better than CycleGAN (DIG)",
              "datasize": "3. A few hundred unpaired slices suffice"}
    for key in ("nselfssim", "dig", "datasize"):
        c = cl.get(key)
        if not c:
            continue
        L += [f"### {titles[key]}", "", f"Claim: {c['claim']}", "", f"Rule: {c['rule']}", ""]
        prim = c.get("primary") or {}
        where = (f" ({prim.get('model')} vs {prim.get('versus')}, set `{prim.get('set')}`)" if prim else "")
        L += [f"**Verdict: {c['verdict']}**{where}: {c['reason']}", ""]
        others = c.get("others") or {}
        if sum(others.values()):
            L += [f"Other sets and models: agrees in {others.get('agrees', 0)}, disagrees in "
                  f"{others.get('disagrees', 0)}.", ""]
        rows = c.get("rows") or []
        if key == "nselfssim" and rows:
            L += ["| set | model | NSelfSSIM model | kV | MVCT | model − kV [95 % CI] | margin (±) | share of gap | "
                  "verdict |", "|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                L.append(f"| `{r['set']}` | {r['model']} | {_num(r.get('mean'), '.4f')} | {_num(r.get('kv'), '.4f')} | "
                         f"{_num(r.get('mvct'), '.4f')} | {_num(r.get('difference'), '.4f')} "
                         f"[{_num(r.get('ci_low'), '.4f')}, {_num(r.get('ci_high'), '.4f')}] | "
                         f"{_num(r.get('margin'), '.4f')} | {_num(r.get('gap_fraction'), '.2f')} | {r['verdict']} |")
            L += ["", "Talk (head and neck): MVCT 0.9024, proposed 0.7079, kV 0.7263: model − kV = −0.0184, 0.10 of "
                  "the gap.", ""]
        elif key == "dig" and rows:
            L += ["| set | model − comparator | mean DIG difference (HU²/mm²) | lower in | Shirley-Williams p | "
                  "Wilcoxon p | comparator worse than MVCT (MAE) | verdict |", "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                cw = (f"{r['comparator_worse_than_input']}/{r['comparator_cases']}"
                      if r.get("comparator_cases") else "n/a")
                L.append(f"| `{r['set']}` | {r['model']} − {r['versus']} | {_num(r.get('difference'), '.4g')} | "
                         f"{r.get('lower_in', 'n/a')}/{r.get('n', 'n/a')} | {_p(r.get('p'))} | "
                         f"{_p(r.get('wilcoxon_p'))} | {cw} | {r['verdict']} |")
            L.append("")
        elif key == "datasize":
            study = c.get("study")
            if study:
                tr = study.get("training") or {}
                L += [f"Study: `{study['folder']}`; {study.get('kv_slices')} kV slices (fixed); training per run: "
                      f"{tr.get('iterations')} iterations, {tr.get('crop_size')} px crops, ngf {tr.get('ngf')}, "
                      f"ndf {tr.get('ndf')}; reference: {study['reference']} ({study['reference_from']}).", ""]
                if study.get("command"):
                    L += ["```", study["command"], "```", ""]
                L += ["| preset | MV slices | cases | MAE mean [95 % CI] (HU) | DIG mean [95 % CI] (HU²/mm²) | "
                      "reference MAE | lower than reference in | Wilcoxon p (one-sided) |",
                      "|---|---|---|---|---|---|---|---|"]
                for e in study.get("table") or []:
                    mae, dig = e["mae"], e["dig"]
                    L.append(f"| {e['preset']} | {e['n_slices']} | {e['n_cases']} | {_num(mae['mean'])} "
                             f"[{_num(mae['ci_low'])}, {_num(mae['ci_high'])}] | {_num(dig['mean'], '.4g')} "
                             f"[{_num(dig['ci_low'], '.4g')}, {_num(dig['ci_high'], '.4g')}] | "
                             f"{_num(e.get('reference_mae'))} | "
                             f"{e.get('below_reference_in', 'n/a')}/{e.get('n_paired', 'n/a')} | "
                             f"{_p(e.get('p_below_reference'))} |")
                if study.get("skipped"):
                    L += ["", f"Not trained when the study was last written: {', '.join(study['skipped'])}."]
                L.append("")
                if record.get("datasize_figure"):
                    L += [f"![data-size study]({record['datasize_figure']})", ""]
    return L


def _ablation_lines(record: dict[str, Any]) -> list[str]:
    ab = record.get("ablation") or {}
    pairs = ab.get("pairs") or []
    L = ["## Ablation: what the bound and the calibration add", ""]
    if not pairs:
        return L + ["Not testable here: no pair of methods that differ by one component was evaluated (by the "
                    "naming convention: `calib` and `mvct`; `calib+tv` and `tv`; a model `X` and its unbounded twin "
                    "`X-unbounded`; or give pairs with `--ablation WITH:WITHOUT`).", ""]
    L += [f"Pairs ({ab.get('source', 'naming convention')}): "
          + "; ".join(f"**{a}** vs **{b}** ({w})" for a, b, w in pairs) + ". Difference = with − without, per "
          "case; 95 % bootstrap CI of the mean difference; Wilcoxon signed-rank p (two-sided); a method is "
          f"\"better\" where p < {claims.ALPHA:g}.", ""]
    rows = ab.get("rows") or []
    for a, b, w in pairs:
        sel = [r for r in rows if r["with"] == a and r["without"] == b]
        if not sel:
            continue
        L += [f"**{a} vs {b}** ({w}):", "",
              "| set | metric | with | without | difference [95 % CI] | lower in | Wilcoxon p | effect |",
              "|---|---|---|---|---|---|---|---|"]
        for r in sel:
            m = r["metric"]
            L.append(f"| `{r['set']}` | {ALL_METRICS[m].label} | {_fmt(r['mean_with'], m)} | "
                     f"{_fmt(r['mean_without'], m)} | {_fmt(r['difference'], m)} [{_fmt(r['ci_low'], m)}, "
                     f"{_fmt(r['ci_high'], m)}] | {r['lower_in']}/{r['n']} | {_p(r['wilcoxon_p'])} | {r['effect']} |")
        L.append("")
    return L


FIGURE_CAPTIONS = {"boxplots": "Per-case values of each metric (box plots).",
                   "montage": "Visual comparison: the same slice of the same case, same window (W400 L40 HU), "
                              "every method.",
                   "maps": "DIG (top) and NSelfSSIM (bottom) maps of the same slice."}


def _set_lines(record: dict[str, Any], s: dict[str, Any], methods, h: str, tuning_lines: list[str]) -> list[str]:
    """One set's tables, statistics and figures; ``h`` the heading level of its sections."""
    summary, st = s["summary"], s["statistics"]
    L = [f"{h} NSelfSSIM (the talk's table)", "",
         "Lower means less noise; the talk's point is that the converted image comes close to the planning kV CT."
         " † marks a Shirley-Williams step-down p < 0.05 against the MVCT ((†): see Statistics).", ""]
    L += _metric_table(summary, st, methods, "nselfssim", talk=TALK_NSELFSSIM)
    L += ["", f"{h} DIG (structure preservation)", "",
          "Lower is better: edges in the MVCT − output difference mean anatomy was added, removed or moved. "
          "The input has DIG 0 by definition; the kV row is the DIG a perfect conversion to the ground truth would "
          "have (it includes the removed noise and the kV/MV HU differences).", ""]
    L += _metric_table(summary, st, methods, "dig")
    dig = st.get("dig", {})
    if dig.get("pairs"):
        L += ["", "Paired DIG comparisons (the talk: the proposed model beats plain CycleGAN). p: Shirley-Williams "
              "with the comparator as control, one step, one-sided (lower DIG), within-case ranks, exact permutation "
              "null where feasible; † p < 0.05. Wilcoxon: two-sided signed-rank test.", "",
              "| method − comparator | mean difference (HU²/mm²) | d_z | rank-biserial | lower in cases | p | "
              "Wilcoxon p |", "|---|---|---|---|---|---|---|"]
        for p in dig["pairs"]:
            L.append(f"| {p['method']} − {p['versus']} | {_num(p['mean_difference'], '.4g')} | "
                     f"{_num(p['cohens_dz'])} | {_num(p['rank_biserial'])} | {p['better_in_cases']}/{dig['n_cases']} | "
                     f"{_p(p['p'])} {p['mark']} | {_p(p['wilcoxon_p'])} |")
    if s.get("ground_truth", record["ground_truth"]):
        L += ["", f"{h} Against the kV ground truth", ""]
        for metric in ("mae", "psnr", "ssim"):
            L += [f"**{ALL_METRICS[metric].label}** ({ALL_METRICS[metric].better_text}; † vs MVCT):", ""]
            L += _metric_table(summary, st, [m for m in methods if m.kind != "reference"], metric)
            L.append("")
        L += [f"{h} Errors per tissue", "",
              "Inside the body, tissue by the kV ground truth: " +
              "; ".join(f"{TISSUE_LABELS[t]} {TISSUE_DEFINITIONS[t]}" for t in TISSUE_RANGES) +
              ". ME = mean signed error (output − kV, HU; negative = too dark), MAE in HU (mean ± SD over the cases "
              "that have the tissue; † Shirley-Williams vs MVCT on the MAE).", ""]
        L += _tissue_table(summary, st, [m for m in methods if m.kind != "reference"])
        L.append("")
    L += [f"{h} Tissue change", "",
          "Volume (cm³) whose tissue class (air, lung, fat, soft tissue, bone) differs between the calibrated MVCT "
          "and the method's image (engine.metrics.tissue_change_map); lower = fewer voxels changed tissue.", ""]
    L += _metric_table(summary, st, methods, "tissue_change")
    L += ["", f"{h} Statistics", ""]
    L += _stats_lines(st)
    L += tuning_lines
    figures = s.get("figures") or {}
    L += ["", f"{h} Figures", ""]
    for key, name in figures.items():
        L += [f"![{key}]({name})", "", FIGURE_CAPTIONS.get(key, ""), ""]
    return L


def _tuning_lines(record: dict[str, Any], h: str) -> list[str]:
    tuning = record.get("denoiser_tuning") or {}
    btuning = record.get("baseline_tuning") or {}
    if not tuning and not btuning:
        return []
    val = record.get("validation") or {}
    seeds = val.get("patient_seeds") or [None]
    where = (f"{val.get('n_slices')} simulated phantom slices (patient seeds {seeds[0]}-{seeds[-1]}, none used by "
             f"any set of the manifest; simulator noise {val.get('simulator', {}).get('noise_sd')} HU as in the "
             "manifest)"
             if val.get("source") == "simulated" else f"case `{val.get('case')}` of `{val.get('folder')}`")
    L = ["", f"{h} Tuning (once, on a validation case; never on a test or shift set)", ""]
    first = tuning or btuning
    L += [f"Validation case: {where}; slices {first['validation']['slices']}; objective: {first['objective']}. "
          f"MVCT input MAE there: {first['validation']['mvct_mae_hu']:.2f} HU. The same case for every evaluated set "
          "(standard and shift).", ""]
    for name, grid in (tuning.get("grid_mae") or {}).items():
        chosen = tuning["settings"][name]
        cells = ", ".join(f"{float(k):g}: {v:.2f}" + (" ◀" if float(k) == chosen else "") for k, v in grid.items())
        L.append(f"- **{name}** ({tuning['parameters'][name]['name']}): MAE by value: {cells}")
    for name, orders in (btuning.get("grid_mae") or {}).items():
        chosen = btuning["settings"][name]
        par = (btuning.get("parameters") or {}).get(name) or {}
        if not par.get("denoiser"):
            L.append(f"- **{name}**: nothing to tune; MAE {next(iter(next(iter(orders.values())).values())):.2f} HU")
            continue
        parts = []
        for order, grid in orders.items():
            cells = ", ".join(f"{float(k):g}: {v:.2f}" + (" ◀" if order == chosen["order"] and
                                                          float(k) == chosen["value"] else "")
                              for k, v in grid.items())
            parts.append(f"{order}: {cells}")
        L.append(f"- **{name}** ({par.get('name')}; both orders, the better kept): MAE by value: " + "; ".join(parts))
    return L


REFERENCES = [
    "S. Ozaki, S. Kaji, K. Nawa et al., \"Training of deep cross-modality conversion models with a small dataset, "
    "and their application in megavoltage CT to kilovoltage CT conversion\", Med. Phys. 49(6), 2022.",
    "S. Ozaki, \"Image quality enhancement of medical images by use of deep learning with a small amount of training "
    "data\", ISCO 2023 (talk).",
]


def markdown(record: dict[str, Any], methods) -> str:
    """report.md from the evaluation record alone (so :func:`rerender` gives the same text)."""
    sets = record["sets"]
    multi = len(sets) > 1
    L: list[str] = [f"# {record['title']}", ""]
    L.append(f"Generated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"MVCTEnhance {__version__}. Synthetic data only; not for diagnosis.")
    if record.get("command"):
        L += ["", "Command:", "", "```", record["command"], "```"]
    if multi:
        L += ["", f"Data: `{record['test_set']}`; {len(sets)} sets; ground truth "
              f"{'available (kV on the MVCT grid)' if record['ground_truth'] else 'not available'}.", "",
              "| set | folder | cases | what it varies |", "|---|---|---|---|"]
        for s in sets:
            L.append(f"| `{s['name']}` | `{s['folder']}` | {len(s['cases'])} | {s.get('what') or ''} |")
        L.append("")
    else:
        L += ["", f"Test set: `{record['test_set']}`, {len(sets[0]['cases'])} case(s); ground truth "
              f"{'available (kV on the MVCT grid)' if record['ground_truth'] else 'not available'}.", ""]
    L += ["## Methods", ""]
    L += _methods_lines(record)
    ms = record["metric_settings"]
    L += ["", f"Metrics inside one body mask per case ({ms['body_mask']}). NSelfSSIM: added Gaussian noise SD "
          f"{ms['noise_sd']:g} HU, window {ms['window'][0]:g}..{ms['window'][1]:g} HU, seed {ms['seed']}. "
          "DIG: mean of |∇(MVCT − output)|² in HU²/mm². MAE/PSNR/SSIM: SynthRAD convention (clip to "
          "[−1024, 3000] HU, data range 4024; PSNR and SSIM inside the mask). CIs: bootstrap over cases "
          f"({N_BOOT} resamples, BCa, seed 0).", ""]
    L += _headline_lines(record, methods)
    L += _claim_lines(record)
    L += _ablation_lines(record)
    if multi:
        for s in sets:
            L += [f"## Set {_set_title(s)} ({len(s['cases'])} cases)", ""]
            L += _set_lines(record, s, methods, "###", [])
        L += _tuning_lines(record, "##")
        L.append("")
    else:
        L += _set_lines(record, sets[0], methods, "##", _tuning_lines(record, "##"))
    if record.get("notes"):
        L += ["## Discussion", ""]
        for note in record["notes"]:
            L += [note.rstrip(), ""]
    L += ["## References", ""] + [f"- {r}" for r in REFERENCES] + [""]
    L += ["Per-case values: [per_case.csv](per_case.csv); summaries: [summary.csv](summary.csv); every setting, "
          "the tuning grid and the test statistics: [evaluation.json](evaluation.json).", ""]
    return "\n".join(L)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def figure_names(set_name: str, first: bool) -> dict[str, str]:
    """File names of a set's figures: the first set's as before (montage.png, ...), others suffixed."""
    slug = set_name.replace("/", "-")
    sfx = "" if first else f"_{slug}"
    names = {"montage": f"montage{sfx}.png", "maps": f"maps{sfx}.png"}
    if first:
        names = {"boxplots": "boxplots.png", **names}
    return names


def report_file_names(set_names: Sequence[str], datasize: bool = False) -> list[str]:
    """Every file evaluate may write for these sets (checked before anything is overwritten)."""
    names = ["per_case.csv", "summary.csv", "evaluation.json", "report.md"]
    for i, n in enumerate(set_names):
        names += list(figure_names(n, i == 0).values())
    if len(set_names) > 1:
        names.append("headline.png")
    if datasize:
        names.append("datasize.png")
    return names


def write_report(out: Path, set_results: Sequence[dict[str, Any]], record: dict[str, Any], methods,
                 figure_slice: int | None = None, dig_pairs: Sequence[tuple[str, str]] | None = None,
                 ablation_pairs: Sequence[tuple[str, str, str]] | None = None,
                 datasize: str | os.PathLike | None = None) -> dict[str, Path]:
    """per_case.csv, summary.csv, the figures and report.md in ``out``; statistics, claims and the ablation
    go into ``record`` (``record["sets"]``, and the first set's ``summary``/``statistics`` at the top level).

    ``set_results``: per set, ``{"set": EvalSet, "rows", "cases", "fig_lc", "kept"}``, the standard set first.
    """
    first_lc = set_results[0]["fig_lc"]
    if first_lc is not None and set_results[0]["kept"] and figure_slice is not None:
        n = first_lc.mvct.array.shape[first_lc.mvct.axial_axis()]
        if not 0 <= int(figure_slice) < n:
            raise InputError(f"figure slice {figure_slice} is outside case '{first_lc.case.name}' ({n} slices)")
    all_rows = [r for sr in set_results for r in sr["rows"]]
    files: dict[str, Path] = {"per_case": write_csv(all_rows, out / "per_case.csv")}
    sets_rec: list[dict[str, Any]] = []
    summary_rows: list[dict[str, Any]] = []
    for i, sr in enumerate(set_results):
        es, rows = sr["set"], sr["rows"]
        summary = summarize_rows(rows, methods)
        st = statistics(rows, methods, dig_pairs)
        summary_rows += [{"set": es.name, **x} for x in summary]
        entry: dict[str, Any] = {"name": es.name, "folder": str(es.folder), "what": es.what,
                                 "cases": list(sr["cases"]), "summary": summary, "statistics": st,
                                 "ground_truth": any(math.isfinite(r["mae"]) for r in rows), "figures": {}}
        names = figure_names(es.name, i == 0)
        figs: dict[str, str] = {}
        if i == 0:
            box = boxplots_png(out / names["boxplots"], rows, methods)
            if box:
                figs["boxplots"] = names["boxplots"]
        lc, kept = sr["fig_lc"], sr["kept"]
        if lc is not None and kept:
            axis = lc.mvct.axial_axis()
            n = lc.mvct.array.shape[axis]
            index = pick_slice(kept["mask"], axis)
            if figure_slice is not None and 0 <= int(figure_slice) < n:
                index = int(figure_slice)
            entry["figure"] = {"case": lc.case.name, "slice": index}
            figs["montage"] = montage_png(out / names["montage"], lc, kept, methods, index,
                                          title=None if len(set_results) == 1 else f"set {es.name}").name
            maps = maps_png(out / names["maps"], lc, kept, methods, index)
            if maps:
                figs["maps"] = maps.name
        entry["figures"] = figs
        files.update({(k if i == 0 else f"{k}_{es.slug}"): out / v for k, v in figs.items()})
        sets_rec.append(entry)
    files["summary"] = write_csv(summary_rows, out / "summary.csv",
                                 fields=("set", "method", "kind", "metric", "n", "mean", "sd", "median", "ci_low",
                                         "ci_high", "ci_method"))
    record["sets"] = sets_rec
    record["summary"] = sets_rec[0]["summary"]
    record["statistics"] = sets_rec[0]["statistics"]
    if record.get("figure") is None and "figure" in sets_rec[0]:
        record["figure"] = sets_rec[0]["figure"]
    data = [{"name": e["name"], "folder": e["folder"], "rows": sr["rows"], "cases": e["cases"],
             "statistics": e["statistics"]} for e, sr in zip(sets_rec, set_results)]
    record["headline"] = claims.headline(data, methods)
    record["never_worse"] = claims.never_worse(data, methods)
    record["claims"] = {"nselfssim": claims.claim_nselfssim(data, methods), "dig": claims.claim_dig(data, methods, given=dig_pairs is not None),
                        "datasize": claims.claim_datasize(datasize, data, methods)}
    given = ablation_pairs is not None
    pairs = list(ablation_pairs) if given else claims.default_ablation_pairs(methods)
    record["ablation"] = {"pairs": [list(p) for p in pairs],
                          "source": "given with --ablation" if given else "naming convention",
                          "rows": claims.ablation(data, pairs)}
    if len(set_results) > 1:
        hp = headline_png(out / "headline.png", record["headline"], methods, [e["name"] for e in sets_rec])
        if hp:
            record["headline_figure"] = hp.name
            files["headline"] = hp
    if datasize is not None and (Path(datasize) / "datasize.png").is_file():
        shutil.copyfile(Path(datasize) / "datasize.png", out / "datasize.png")
        record["datasize_figure"] = "datasize.png"
        files["datasize"] = out / "datasize.png"
    text = markdown(record, methods)
    tmp = out / ".report.md.partial"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "report.md")
    files["report"] = out / "report.md"
    return files


def _nan_summary(d: dict[str, Any]) -> dict[str, Any]:
    nan = float("nan")
    return {k: (nan if v is None and k in ("mean", "sd", "median", "ci_low", "ci_high") else v) for k, v in d.items()}


def rerender(out_dir: str | os.PathLike, notes: Sequence[str] = ()) -> Path:
    """Rewrite report.md of a finished evaluation from its evaluation.json (e.g. to add the discussion)
    without recomputing anything; the figures and CSV files are left as they are. ``notes`` are Markdown
    texts (not file names), as ``evaluate --notes`` reads them."""

    out = Path(out_dir)
    path = out / "evaluation.json"
    if not path.is_file():
        raise InputError(f"'{out}' holds no evaluation.json; run mvct-enhance evaluate first")
    record = read_json_object(path, "evaluation record")
    if not record.get("sets"):  # a record of an older evaluate: one set, its files beside it
        files = record.get("files") or {}
        record["sets"] = [{"name": STANDARD_SET, "folder": record.get("test_set"), "what": "",
                           "cases": [c["name"] for c in record.get("cases", [])], "summary": record["summary"],
                           "statistics": record["statistics"],
                           "figures": {k: Path(v).name for k, v in files.items() if k in ("boxplots", "montage",
                                                                                          "maps")}}]
    for s in record["sets"]:
        s["summary"] = [_nan_summary(x) for x in s["summary"]]
    methods = [Method(m["name"], m["kind"], Path(m["model"]) if m.get("model") else None) for m in record["methods"]]
    record["notes"] = list(notes)
    text = markdown(record, methods)
    tmp = out / ".report.md.partial"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "report.md")
    return out / "report.md"
