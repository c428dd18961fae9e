"""Turn an ``mvct-enhance evaluate`` record into the default model card's ``evaluation`` field.

usage: python card_evaluation.py EVALUATION_JSON EVALUATED_MODEL OUT_JSON

The evaluated model file and the shipped one hold the same weights (the same checkpoint exported
twice); the card records the evaluated file's sha256 and its generator's weight digest so that this
can be checked (``weights_sha256`` below is computed from the scripted module's state dict).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
import sys
from pathlib import Path

from MVCTEnhanceLib.engine.modelfile import load_model

ROWS = {"mvct": "mvct_input", "proposed": "converted", "kv": "kv_ground_truth"}


def weights_sha256(module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def subset_means(per_case_csv: Path, manifest: dict) -> dict:
    """Mean of each metric per method over the phantom cases and over the real-CT-derived cases."""
    origin = {e["case"]: ("real_derived" if str(e["anatomy_id"]).startswith("real:") else "phantom")
              for e in manifest["splits"]["test"]}
    rows = list(csv.DictReader(per_case_csv.open()))
    out: dict = {}
    for subset in ("phantom", "real_derived"):
        for method, row_name in ROWS.items():
            sel = [r for r in rows if r["method"] == method and origin.get(r["case"]) == subset]
            if not sel:
                continue
            means = {}
            for metric in ("mae", "psnr", "ssim", "dig", "nselfssim"):
                values = [float(r[metric]) for r in sel if r[metric] not in ("", "nan")]
                values = [v for v in values if not math.isnan(v)]
                if values:
                    means[metric] = round(statistics.fmean(values), 4)
            out.setdefault(subset, {"n_cases": len(sel)})[row_name] = means
        mae = {m: {r["case"]: float(r["mae"]) for r in rows if r["method"] == m and origin.get(r["case"]) == subset}
               for m in ("mvct", "proposed")}
        mv, conv = mae["mvct"], mae["proposed"]
        out[subset]["cases_converted_mae_below_mvct"] = sum(conv[c] < mv[c] for c in conv if c in mv)
    return out


def main(evaluation_json: str, evaluated_model: str, out_json: str) -> None:
    record = json.loads(Path(evaluation_json).read_text())
    loaded = load_model(evaluated_model)
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for s in record["summary"]:
        row = ROWS.get(s["method"])
        if row is None:
            continue
        metrics.setdefault(s["metric"], {})[row] = {
            k: (round(s[k], 6) if isinstance(s[k], float) else s[k])
            for k in ("mean", "sd", "median", "ci_low", "ci_high", "n")}
    cases = record["cases"]
    extra = {"evaluation": {
        "test_set": record["test_set"],
        "n_cases": len(cases),
        "cases": ("make-dataset --seed 0 test split: 24 synthetic head-and-neck phantom slices and 16 slices "
                  "derived from real CT shipped in pydicom/pydicom-data (4 source slices x 4 variants), each with "
                  "its physics-simulated MVCT; anatomy in neither training set"),
        "metric_settings": record["metric_settings"],
        "units": {"mae": "HU", "psnr": "dB", "ssim": "", "dig": "HU^2/mm^2", "nselfssim": ""},
        "conventions": ("MAE inside the MVCT body mask; PSNR and SSIM SynthRAD-style (clip -1024..3000 HU, data range "
                        "4024, inside the mask); DIG mean |grad(MVCT - image)|^2 in the body (0 for the MVCT by "
                        "definition; the kV row is what a perfect conversion would score); NSelfSSIM mean in the body, "
                        "lower = less noise; 95 % bootstrap CIs over cases"),
        "metrics": metrics,
        "by_anatomy_source": subset_means(Path(evaluation_json).with_name("per_case.csv"),
                                          json.loads((Path(record["test_set"]) / "manifest.json").read_text())),
        "statistics": record.get("statistics"),
        "evaluated_file_sha256": loaded.sha256,
        "weights_sha256": weights_sha256(loaded.module),
        "command": ("mvct-enhance evaluate --test-set data/default --methods mvct proposed=runs/default-unevaluated.pt "
                    "kv -o runs/default-evaluation --device cpu"),
        "synthetic_data_only": True,
    }}
    ev = extra["evaluation"]
    ph, rd = ev["by_anatomy_source"]["phantom"], ev["by_anatomy_source"]["real_derived"]
    mae = ev["metrics"]["mae"]
    nss = ev["metrics"]["nselfssim"]
    ev["summary"] = (
        f"Phantom test cases ({ph['n_cases']}, anatomy like the training data): MAE in body "
        f"{ph['converted']['mae']:.1f} HU converted vs {ph['mvct_input']['mae']:.1f} HU MVCT "
        f"(better in {ph['cases_converted_mae_below_mvct']}/{ph['n_cases']}), PSNR {ph['converted']['psnr']:.2f} vs "
        f"{ph['mvct_input']['psnr']:.2f} dB, SSIM {ph['converted']['ssim']:.3f} vs {ph['mvct_input']['ssim']:.3f}. "
        f"Real-CT-derived cases ({rd['n_cases']}, anatomy never seen in training, which is phantoms only): MAE "
        f"{rd['converted']['mae']:.1f} vs {rd['mvct_input']['mae']:.1f} HU (worse; better in "
        f"{rd['cases_converted_mae_below_mvct']}/{rd['n_cases']}). All {ev['n_cases']} cases: MAE "
        f"{mae['converted']['mean']:.1f} vs {mae['mvct_input']['mean']:.1f} HU. NSelfSSIM (lower = less noise): MVCT "
        f"{nss['mvct_input']['mean']:.3f}, converted {nss['converted']['mean']:.3f}, "
        f"kV {nss['kv_ground_truth']['mean']:.3f}.")
    Path(out_json).write_text(json.dumps(extra, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
