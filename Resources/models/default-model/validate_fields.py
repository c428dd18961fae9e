"""Validation of a model on whole and truncated fields of view, on phantoms outside every dataset.

usage: python validate_fields.py MODEL.pt [MODEL.pt ...]

Phantom patients 10,000,000.. (make-dataset uses ids far below: no overlap with any training or test
slice) are rendered at one level each; each slice is converted twice: whole, and cut to a random
60-100 mm square field around part of the body (the rest air) before the MVCT is simulated. Prints
MAE inside the kV body (HU) of the MVCT and of each model's output. This is how the default model's
failure on small fields was found and how its fix (training with --field-truncation) was checked,
without looking at the test set.
"""

from __future__ import annotations

import sys

import numpy as np

from MVCTEnhanceLib.engine import inference
from MVCTEnhanceLib.engine import metrics
from MVCTEnhanceLib.synth import phantoms
from MVCTEnhanceLib.synth import simulate
from MVCTEnhanceLib.engine.modelfile import load_model
from MVCTEnhanceLib.engine.volume import Volume

N_PATIENTS = 6
FIRST_SEED = 10_000_000


def cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, kV HU, simulated MV HU) for each patient, whole and square-cut."""
    rng = np.random.default_rng(123)
    out = []
    for k in range(N_PATIENTS):
        seed = FIRST_SEED + k
        kv, _ = phantoms.phantom_slice(seed, size=256)
        rows, cols = np.nonzero(kv > -400)
        for kind in ("whole", "square"):
            img = kv.copy()
            if kind == "square":
                half = int(rng.integers(30, 50))
                r = int(rng.integers(rows.min() + half, rows.max() - half + 1))
                c = int(rng.integers(cols.min() + half, cols.max() - half + 1))
                keep = np.zeros(img.shape, bool)
                keep[r - half:r + half, c - half:c + half] = True
                img[~keep] = -1000.0
            mv = simulate.simulate_slice(img, (1.0, 1.0), simulate.SimulatorSettings(noise_sd=30.0),
                                         np.random.default_rng(seed))
            out.append((kind, img, mv))
    return out


def main(model_paths: list[str]) -> None:
    data = cases()
    models = {p: load_model(p) for p in model_paths}
    for kind in ("whole", "square"):
        sel = [(kv, mv) for k, kv, mv in data if k == kind]
        line = [f"{kind:6s} MVCT {np.mean([metrics.mae_in_mask(mv, kv, kv > -400) for kv, mv in sel]):6.1f}"]
        for path, model in models.items():
            maes = []
            for kv, mv in sel:
                out = inference.enhance(Volume(mv[None], spacing=(1.0, 1.0, 3.0)), model, device="cpu").volume
                maes.append(metrics.mae_in_mask(out.array[0], kv, kv > -400))
            line.append(f"{path}: {np.mean(maes):6.1f}")
        print("MAE (HU)  " + " | ".join(line))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
