"""Pick the default model's checkpoint on validation data only (never the test or shift sets).

usage: python select_checkpoint.py DATASET RUN_DIR OUT_JSON

Validation = the dataset's validation/ cases (their own phantom anatomy, reference simulator) and the
same anatomy through the second, independent simulator (a simulator the training never saw). Every
kept checkpoint (RUN_DIR/checkpoints/iteration_N.pt) is exported to a temporary model file and scored
by the MAE in the body against the kV truth; the anchor alone (calibration + the generator's fixed TV,
i.e. the learned change switched off) is scored too. The checkpoint with the lowest mean MAE over both
sets is chosen, provided no validation case is worse than the MVCT input and its mean beats the
anchor's; otherwise the record says so and names the anchor as the better choice.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from MVCTEnhanceLib.engine.job import EnhanceSettings, run_enhance
from MVCTEnhanceLib.engine.metrics import body_mask, mae_in_mask
from MVCTEnhanceLib.engine.modelfile import load_model
from MVCTEnhanceLib.study.cases import find_cases, load_case
from MVCTEnhanceLib.synth.independent import IndependentSettings, simulate_independent
from MVCTEnhanceLib.training.export import export_run


def validation_sets(dataset: Path) -> dict[str, list]:
    cases = [load_case(c) for c in find_cases(dataset / "validation", what="validation")]
    independent = []
    for i, lc in enumerate(cases):
        kv = lc.ground_truth.array
        mv = np.stack([simulate_independent(kv[k], lc.mvct.spacing[0], IndependentSettings(), seed=700 + i)
                       for k in range(kv.shape[0])])
        independent.append(dataclasses.replace(lc, mvct=lc.mvct.with_array(np.rint(mv))))
    return {"validation": cases, "validation_independent": independent}


def score(model_path: Path, sets: dict[str, list], zero_change: bool = False) -> dict[str, list[float]]:
    loaded = load_model(model_path)
    if zero_change:  # the anchor alone: the learned part of the change switched off
        loaded.module.learned_change_hu = 0.0
    settings = EnhanceSettings(device="cpu", assess=False)
    out = {}
    for name, cases in sets.items():
        out[name] = [mae_in_mask(run_enhance(lc.mvct, loaded, None, settings).result, lc.ground_truth,
                                 body_mask(lc.mvct)) for lc in cases]
    return out


def main(dataset: str, run_dir: str, out_json: str) -> None:
    torch.set_num_threads(1)
    sets = validation_sets(Path(dataset))
    inputs = {name: [mae_in_mask(lc.mvct, lc.ground_truth, body_mask(lc.mvct)) for lc in cases]
              for name, cases in sets.items()}
    kept = sorted((Path(run_dir) / "checkpoints").glob("iteration_*.pt"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, ckpt in enumerate(kept):
            model = Path(tmp) / f"{ckpt.stem}.pt"
            export_run(run_dir, model, checkpoint=ckpt, name="validation", version="0.0.0")
            maes = score(model, sets)
            if i == 0:
                anchor = score(model, sets, zero_change=True)
            worse = sum(m > inp for name in sets for m, inp in zip(maes[name], inputs[name]))
            rows.append({"checkpoint": ckpt.name, "iteration": int(ckpt.stem.split("_")[1]),
                         **{f"mae_{n}": float(np.mean(v)) for n, v in maes.items()},
                         "mae_mean": float(np.mean([np.mean(v) for v in maes.values()])), "cases_worse_than_input": worse})
            print(json.dumps(rows[-1]), flush=True)
    anchor_mean = float(np.mean([np.mean(v) for v in anchor.values()]))
    ok = [r for r in rows if r["cases_worse_than_input"] == 0]
    best = min(ok or rows, key=lambda r: r["mae_mean"])
    record = {"inputs": {n: float(np.mean(v)) for n, v in inputs.items()},
              "anchor": {**{f"mae_{n}": float(np.mean(v)) for n, v in anchor.items()}, "mae_mean": anchor_mean},
              "checkpoints": rows, "chosen": best["checkpoint"],
              "beats_anchor": best["mae_mean"] < anchor_mean,
              "rule": "lowest mean validation MAE (reference + independent simulator) among checkpoints with no "
                      "validation case worse than the MVCT input"}
    Path(out_json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"chosen {best['checkpoint']}: {best['mae_mean']:.2f} HU (anchor {anchor_mean:.2f}, "
          f"MVCT {np.mean(list(record['inputs'].values())):.2f})")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.splitlines()[2])
    main(*sys.argv[1:])
