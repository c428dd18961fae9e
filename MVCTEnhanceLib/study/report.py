"""The evaluation report: summary statistics, the talk's tables (Markdown), and PNG figures.

Statistics come from :mod:`stats` (Friedman omnibus, Shirley-Williams step-down test for repeated
measures, paired effect sizes, bootstrap CIs); figures are drawn with matplotlib's Agg backend.
The column order given to the Shirley-Williams test is the order of ``--methods``: the protocol
fixes it before the data are seen (input first, then conventional denoisers, CycleGAN, proposed,
kV), as the test requires.
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine.errors import InputError
from ..engine.files import read_json_object
from ..engine.metrics import METRICS
from ..engine.modelcard import iterations_text
from ..engine.version import __version__
from . import stats
from .cases import Method, values, write_csv
from .plots import boxplots_png, maps_png, montage_png, pick_slice

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
    for method in ("bca", "percentile"):
        try:
            ci = stats.bootstrap_mean_ci(x, n_boot=N_BOOT, method=method, seed=0)
            return ci.low, ci.high, method
        except InputError:
            continue
    return math.nan, math.nan, "n/a"


def summarize_rows(rows: Sequence[dict[str, Any]], methods: Sequence[Any]) -> list[dict[str, Any]]:
    """Per method and metric: n, mean, SD (ddof 1), median and the bootstrap 95 % CI of the mean."""
    cases = sorted({r["case"] for r in rows})
    out = []
    for m in methods:
        for metric in METRICS:
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
        return [m.name for m in methods if m.kind in ("denoiser", "model")]
    if metric in ("mae", "psnr", "ssim"):
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
    """
    cases = sorted({r["case"] for r in rows})
    names = {m.name for m in methods}
    pairs_given = list(dig_pairs) if dig_pairs is not None else default_dig_pairs(methods)
    for a, b in pairs_given:
        if a not in names or b not in names:
            raise InputError(f"DIG pair '{a}:{b}' names a method that is not evaluated ({', '.join(sorted(names))})")
    out: dict[str, Any] = {}
    for metric in METRICS:
        cols = _complete(rows, _stat_columns(methods, metric), metric, cases)
        entry: dict[str, Any] = {"columns": cols, "n_cases": len(cases)}
        out[metric] = entry
        if len(cols) < 2 or len(cases) < 2:
            entry["skipped"] = ("fewer than 2 methods with values" if len(cols) < 2 else "fewer than 2 cases")
            continue
        table = np.stack([values(rows, c, metric, cases) for c in cols], axis=1)
        fr = stats.friedman(table)
        entry["friedman"] = {"test": fr.test, "statistic": fr.statistic, "df": fr.df, "p": fr.p,
                             "kendall_w": fr.kendall_w, "note": fr.note}
        alt = METRICS[metric].alternative
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
    info = METRICS[metric]
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
        ci = f"{_fmt(s['ci_low'], metric)} – {_fmt(s['ci_high'], metric)}" if math.isfinite(s["ci_low"]) else "n/a"
        line = (f"| {m.name}{' ' + mark if mark else ''} | {_fmt(s['mean'], metric)} ± {_fmt(s['sd'], metric)} | "
                f"{ci} | {_fmt(s['median'], metric)} | {s['n']} |")
        if talk is not None:
            t = talk.get(m.name) or next((v for k, v in talk.items() if m.kind == "model" and m.name.startswith(k)), None)
            line += f" {t[0]:.4f} ± {t[1]:.4f} |" if t else " |"
        lines.append(line)
    return lines


def _stats_lines(st: dict[str, Any]) -> list[str]:
    lines = ["| metric | methods compared (protocol order) | omnibus test | statistic | p | Kendall W |",
             "|---|---|---|---|---|---|"]
    for metric, e in st.items():
        label = METRICS[metric].label
        if "friedman" not in e:
            lines.append(f"| {label} | {', '.join(e['columns']) or '-'} | skipped: {e.get('skipped')} | | | |")
            continue
        f = e["friedman"]
        w = f"{f['kendall_w']:.3f}" if f["kendall_w"] is not None else "-"
        df = f" (df {f['df']})" if f["df"] is not None else ""
        lines.append(f"| {label} | {', '.join(e['columns'])} | {f['test']}{df} | {f['statistic']:.3f} | "
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
              "rank-biserial correlation.", "",
              "| metric | method | vs control | alternative | t | p (raw) | p (step-down) | mark | "
              "mean difference | d_z | rank-biserial | better in cases |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for metric, e in st.items():
        sw = e.get("shirley_williams")
        if not sw:
            continue
        label = METRICS[metric].label
        pairs = {p["method"]: p for p in e["paired"]}
        for c in sw["comparisons"]:
            p = pairs.get(c["group"], {})
            dz = p.get("cohens_dz", math.nan)
            lines.append(f"| {label} | {c['group']} | {sw['control']} | {sw['alternative']} | {c['statistic']:.3f} | "
                         f"{_p(c['p_raw'])} | {_p(c['p'])} | {_mark(st, metric, c['group'])} | "
                         f"{_fmt(p.get('mean_difference', math.nan), metric)} | "
                         f"{dz:.2f} | {p.get('rank_biserial', math.nan):.2f} | "
                         f"{p.get('better_in_cases', '')}/{e['n_cases']} |")
    return lines


def markdown(record: dict[str, Any], summary, st, methods, figures: dict[str, Path]) -> str:
    n_cases = len(record["cases"])
    L: list[str] = [f"# {record['title']}", ""]
    L.append(f"Generated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"MVCTEnhance {__version__}. Synthetic data only; not for diagnosis.")
    if record.get("command"):
        L += ["", "Command:", "", "```", record["command"], "```"]
    L += ["", f"Test set: `{record['test_set']}`, {n_cases} case(s); ground truth "
          f"{'available (kV on the MVCT grid)' if record['ground_truth'] else 'not available'}.", ""]
    L += ["## Methods", "", "| method | kind | details |", "|---|---|---|"]
    tuning = record.get("denoiser_tuning") or {}
    for m in record["methods"]:
        if m["kind"] == "model":
            c = m["model_card"]
            arch = c.get("architecture") or {}
            details = (f"`{m['model']}`: {c['name']} {c['version']}, sha256 {c['sha256'][:12]}, preset "
                       f"{c.get('preset') or '?'}, {iterations_text(c)}, ngf {arch.get('ngf')}")
        elif m["kind"] == "denoiser":
            p = tuning.get("parameters", {}).get(m["name"], {})
            details = f"{p.get('function', '')}, {p.get('name')} = {p.get('value'):g} (tuned on the validation case)"
        elif m["kind"] == "input":
            details = "the MVCT itself (DIG 0 by definition)"
        else:
            details = "kV ground truth / planning CT (reference row)"
        L.append(f"| {m['name']} | {m['kind']} | {details} |")
    ms = record["metric_settings"]
    L += ["", f"Metrics inside one body mask per case ({ms['body_mask']}). NSelfSSIM: added Gaussian noise SD "
          f"{ms['noise_sd']:g} HU, window {ms['window'][0]:g}..{ms['window'][1]:g} HU, seed {ms['seed']}. "
          "DIG: mean of |∇(MVCT − output)|² in HU²/mm². MAE/PSNR/SSIM: SynthRAD convention (clip to "
          "[−1024, 3000] HU, data range 4024; PSNR and SSIM inside the mask). CIs: bootstrap over cases "
          f"({N_BOOT} resamples, BCa, seed 0).", ""]

    L += ["## NSelfSSIM (the talk's table)", "",
          "Lower means less noise; the talk's point is that the converted image comes close to the planning kV CT."
          " † marks a Shirley-Williams step-down p < 0.05 against the MVCT ((†): see Statistics).", ""]
    L += _metric_table(summary, st, methods, "nselfssim", talk=TALK_NSELFSSIM)
    L += ["", "## DIG (structure preservation)", "",
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
            L.append(f"| {p['method']} − {p['versus']} | {p['mean_difference']:.4g} | {p['cohens_dz']:.2f} | "
                     f"{p['rank_biserial']:.2f} | {p['better_in_cases']}/{dig['n_cases']} | {_p(p['p'])} {p['mark']} | "
                     f"{_p(p['wilcoxon_p'])} |")
    if record["ground_truth"]:
        L += ["", "## Against the kV ground truth", ""]
        for metric in ("mae", "psnr", "ssim"):
            L += [f"**{METRICS[metric].label}** ({METRICS[metric].better_text}; † vs MVCT):", ""]
            L += _metric_table(summary, st, [m for m in methods if m.kind != "reference"], metric)
            L.append("")
    L += ["## Statistics", ""]
    L += _stats_lines(st)
    if tuning:
        val = record.get("validation") or {}
        seeds = val.get("patient_seeds") or [None]
        where = (f"{val.get('n_slices')} simulated phantom slices (patient seeds {seeds[0]}-{seeds[-1]}, none used by "
                 f"any set of the manifest; simulator noise {val.get('simulator', {}).get('noise_sd')} HU as in the "
                 "manifest)"
                 if val.get("source") == "simulated" else f"case `{val.get('case')}` of `{val.get('folder')}`")
        L += ["", "## Denoiser tuning (once, on a validation case; never on the test set)", "",
              f"Validation case: {where}; slices {tuning['validation']['slices']}; objective: {tuning['objective']}. "
              f"MVCT input MAE there: {tuning['validation']['mvct_mae_hu']:.2f} HU.", ""]
        for name, grid in tuning["grid_mae"].items():
            chosen = tuning["settings"][name]
            cells = ", ".join(f"{float(k):g}: {v:.2f}" + (" ◀" if float(k) == chosen else "")
                              for k, v in grid.items())
            L.append(f"- **{name}** ({tuning['parameters'][name]['name']}): MAE by value: {cells}")
    L += ["", "## Figures", ""]
    captions = {"boxplots": "Per-case values of each metric (box plots).",
                "montage": "Visual comparison: the same slice of the same case, same window (W400 L40 HU), "
                           "every method.",
                "maps": "DIG (top) and NSelfSSIM (bottom) maps of the same slice."}
    for key, path in figures.items():
        L += [f"![{key}]({path.name})", "", captions.get(key, ""), ""]
    if record.get("notes"):
        L += ["## Discussion", ""]
        for note in record["notes"]:
            L += [note.rstrip(), ""]
    L += ["Per-case values: [per_case.csv](per_case.csv); summaries: [summary.csv](summary.csv); every setting, "
          "the tuning grid and the test statistics: [evaluation.json](evaluation.json).", ""]
    return "\n".join(L)


def write_report(out: Path, rows, record: dict[str, Any], methods, fig_lc, kept,
                 figure_slice: int | None = None,
                 dig_pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, Path]:
    """per_case.csv, summary.csv, the figures and report.md in ``out``; the statistics go into ``record``."""
    index = None
    if fig_lc is not None and kept:
        axis = fig_lc.mvct.axial_axis()
        n = fig_lc.mvct.array.shape[axis]
        index = pick_slice(kept["mask"], axis) if figure_slice is None else int(figure_slice)
        if not 0 <= index < n:
            raise InputError(f"figure slice {index} is outside case '{fig_lc.case.name}' ({n} slices)")
    files: dict[str, Path] = {"per_case": write_csv(rows, out / "per_case.csv")}
    summary = summarize_rows(rows, methods)
    files["summary"] = write_csv(summary, out / "summary.csv",
                                 fields=("method", "kind", "metric", "n", "mean", "sd", "median", "ci_low", "ci_high",
                                         "ci_method"))
    st = statistics(rows, methods, dig_pairs)
    record["summary"] = summary
    record["statistics"] = st
    figures: dict[str, Path] = {}
    box = boxplots_png(out / "boxplots.png", rows, methods)
    if box:
        figures["boxplots"] = box
    if index is not None:
        record["figure"] = {"case": fig_lc.case.name, "slice": index}
        figures["montage"] = montage_png(out / "montage.png", fig_lc, kept, methods, index)
        maps = maps_png(out / "maps.png", fig_lc, kept, methods, index)
        if maps:
            figures["maps"] = maps
    files.update(figures)
    text = markdown(record, summary, st, methods, figures)
    tmp = out / ".report.md.partial"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "report.md")
    files["report"] = out / "report.md"
    return files


def rerender(out_dir: str | os.PathLike, notes: Sequence[str] = ()) -> Path:
    """Rewrite report.md of a finished evaluation from its evaluation.json (e.g. to add the discussion)
    without recomputing anything; the figures and CSV files are left as they are. ``notes`` are Markdown
    texts (not file names), as ``evaluate --notes`` reads them."""

    out = Path(out_dir)
    path = out / "evaluation.json"
    if not path.is_file():
        raise InputError(f"'{out}' holds no evaluation.json; run mvct-enhance evaluate first")
    record = read_json_object(path, "evaluation record")
    nan = float("nan")
    fix = lambda d: {k: (nan if v is None and k in ("mean", "sd", "median", "ci_low", "ci_high") else v)  # noqa: E731
                     for k, v in d.items()}
    summary = [fix(s) for s in record["summary"]]
    methods = [Method(m["name"], m["kind"], Path(m["model"]) if m.get("model") else None) for m in record["methods"]]
    figures = {k: Path(v) for k, v in (record.get("files") or {}).items() if k in ("boxplots", "montage", "maps")}
    record["notes"] = list(notes)
    text = markdown(record, summary, record["statistics"], methods, figures)
    tmp = out / ".report.md.partial"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "report.md")
    return out / "report.md"
