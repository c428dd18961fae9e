"""Turn an ``mvct-enhance evaluate`` record into the default model card's ``evaluation`` field.

usage: python card_evaluation.py EVALUATION_JSON EVALUATED_MODEL METHOD OUT_JSON

METHOD is the evaluated model's method name in the record (e.g. ``proposed``). The card gets, for
every evaluated set (standard test set and simulator-shift sets): the mean MAE in the body and per
tissue of the MVCT input, the calibration, calibration + TV and the model, the model's NSelfSSIM and
DIG, and how many cases the model made worse than their input. The evaluated file and the shipped one
hold the same weights (the same checkpoint exported twice, the second time with this field): the card
records the evaluated file's sha256 and its generator's weight digest so that this can be checked.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from MVCTEnhanceLib.engine.modelfile import load_model

ROWS = ("mvct", "calib", "calib+tv", "calib+nlm")
METRICS = ("mae", "mae_bone", "mae_fat", "mae_soft", "nselfssim", "dig", "tissue_change")


def weights_sha256(module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(evaluation_json: str, evaluated_model: str, method: str, out_json: str) -> None:
    record = json.loads(Path(evaluation_json).read_text())
    loaded = load_model(evaluated_model)
    sets = {}
    for s in record["sets"]:
        means = {}
        for row in s["summary"]:
            if row["method"] in (*ROWS, method, "kv") and row["metric"] in METRICS:
                name = "model" if row["method"] == method else row["method"]
                means.setdefault(name, {})[row["metric"]] = round(float(row["mean"]), 4)
        worse = record["never_worse"].get(method, {}).get(s["name"], {})
        sets[s["name"]] = {"n_cases": len(s["cases"]), "what": s.get("what", ""), "means": means,
                           "model_cases_worse_than_input": worse.get("worse"), "worse_cases": worse.get("cases")}
    extra = {"evaluation": {
        "dataset": record["test_set"],
        "method": method,
        "units": {"mae": "HU", "mae_bone": "HU", "mae_fat": "HU", "mae_soft": "HU", "dig": "HU^2/mm^2",
                  "nselfssim": "", "tissue_change": "cm^3"},
        "conventions": ("MAE inside the MVCT body mask against the kV truth; tissues from the kV truth (bone > 300 HU, "
                        "fat -150..-30, soft tissue -30..100); 'worse' = MAE above the MVCT input's"),
        "sets": sets,
        "command": record.get("command"),
        "evaluated_file_sha256": loaded.sha256,
        "weights_sha256": weights_sha256(loaded.module),
        "synthetic_data_only": True,
    }}
    Path(out_json).write_text(json.dumps(extra, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
