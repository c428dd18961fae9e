"""Benchmark (not a test): the engine vs a naive per-slice eager loop, same weights, one run.

Prints slices/s and peak RSS of converting a 512x512xN volume both ways (each in its own
subprocess, so peak RSS is that variant's alone), their ratios, and the largest voxel difference
between the two outputs (they must compute the same thing). The variants alternate for --rounds
rounds and each keeps its best time, so load from other processes biases neither side. Then runs benchmarks/bench_metrics.py
(NSelfSSIM map vs scikit-image per slice) when it exists.

    python benchmarks/bench_enhance.py --slices 8 --size 512 --batch-size 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_volume(n: int, size: int) -> np.ndarray:
    """A body-like HU volume: ellipse of soft tissue with bone and air, MVCT-like noise."""
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:size, 0:size] / size - 0.5
    body = (r / 0.4) ** 2 + (c / 0.45) ** 2 < 1
    sl = np.where(body, 40.0, -1000.0)
    sl[(r - 0.1) ** 2 + c ** 2 < 0.004] = 800.0
    vol = np.repeat(sl[None].astype(np.float32), n, axis=0)
    return vol + rng.normal(0, 30, vol.shape).astype(np.float32) * body


def run_variant(variant: str, n: int, size: int, batch_size: int, model_path: str, out_path: str) -> dict:
    import torch

    from MVCTEnhanceLib.engine.modelfile import load_model
    from MVCTEnhanceLib.engine.volume import Volume

    loaded = load_model(model_path)
    vol = Volume(make_volume(n, size), spacing=(1.0, 1.0, 3.0))
    t0 = time.perf_counter()
    if variant == "engine":
        from MVCTEnhanceLib.engine.inference import enhance

        out = enhance(vol, loaded, batch_size=batch_size, device="cpu").volume.array
    else:
        # What a first script usually looks like: eager module, normalise the whole volume, one slice at a time.
        from MVCTEnhanceLib.training.networks import build_generator

        eager = build_generator(seed=0).eval()
        lo, hi = loaded.card.hu_window
        norm = (np.clip(vol.array, lo, hi) - lo) / (hi - lo) * 2 - 1
        outs = []
        with torch.no_grad():
            for k in range(n):
                y = eager(torch.from_numpy(norm[k][None, None].astype(np.float32)))
                outs.append((y[0, 0].numpy() + 1) / 2 * (hi - lo) + lo)
        out = np.stack(outs)
        # The engine carries the excess beyond the window over; do the same so outputs compare.
        out = out + (vol.array - np.clip(vol.array, lo, hi))
    seconds = time.perf_counter() - t0
    np.save(out_path, out)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"variant": variant, "seconds": seconds, "slices_per_s": n / seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; best time per variant is kept")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.slices, args.size, args.batch_size, args.model, args.out)))
        return

    import torch

    from MVCTEnhanceLib.engine.modelfile import save_model
    from MVCTEnhanceLib.training.networks import build_generator
    from MVCTEnhanceLib.training.tinymodel import tiny_card

    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "ngf32.pt")
        card = tiny_card(name="bench-ngf32", hu_window=(-1000.0, 1000.0))
        save_model(build_generator(seed=0), card, model)  # the paper's full-size generator, seeded weights
        results: dict[str, dict] = {}
        for _ in range(max(1, args.rounds)):
            for variant in ("naive", "engine"):
                out = os.path.join(tmp, f"{variant}.npy")
                proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--slices", str(args.slices),
                                       "--size", str(args.size), "--batch-size", str(args.batch_size), "--model",
                                       model, "--out", out], capture_output=True, text=True, check=True)
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                best = results.get(variant)
                if best is None or run["seconds"] < best["seconds"]:
                    results[variant] = {**run, "peak_rss_mb": max(run["peak_rss_mb"], (best or run)["peak_rss_mb"])}
                results[variant]["out"] = np.load(out)
        diff = float(np.abs(results["engine"]["out"] - results["naive"]["out"]).max())
    e, nv = results["engine"], results["naive"]
    print(f"conversion of a {args.size}x{args.size}x{args.slices} volume, generator ngf 32 (paper size), "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"  naive eager loop : {nv['slices_per_s']:.3f} slices/s, peak RSS {nv['peak_rss_mb']:.0f} MB")
    print(f"  engine (batch {args.batch_size}) : {e['slices_per_s']:.3f} slices/s, peak RSS {e['peak_rss_mb']:.0f} MB")
    print(f"  speed ratio engine/naive {e['slices_per_s'] / nv['slices_per_s']:.2f}x, "
          f"peak RSS ratio engine/naive {e['peak_rss_mb'] / nv['peak_rss_mb']:.2f}")
    print(f"  max |engine - naive| = {diff:.4f} HU")
    metrics_bench = Path(__file__).with_name("bench_metrics.py")
    if metrics_bench.exists():
        sys.stdout.flush()
        subprocess.run([sys.executable, str(metrics_bench), "--slices", str(args.slices)], check=False)


if __name__ == "__main__":
    main()
