"""Benchmark (not a test): the enhance job end to end against the bare network, in one run.

For a 512 x 512 x N MVCT-like volume (0.78 mm pixels, a phantom body filling about half of the
field's width, MVCT-like noise) it prints:

1. the CLI job with both maps (``mvct-enhance enhance`` -> filejobs.enhance_file, DIG + NSelfSSIM +
   report; in a subprocess, so start-up counts and the peak RSS is the job's own);
2. the bare TorchScript network on the same N slices at the full 512 x 512 field (module only, the
   same threads), and the ratio of the two: rounds alternate the two, the median ratio is the result;
3. the body crop on the first slices: enhance() with and without it, the speed-up, the largest
   difference it makes in the body against the network on the whole (canonical) field, and against
   the old path (--no-body-crop, whose far air keeps its noise);
4. the NSelfSSIM map per 512 x 512 slice against scikit-image.

    .venv/bin/python benchmarks/bench_speed.py [--slices 100] [--rounds 3] [--crop-slices 8] [--threads N]

Timings on a shared machine move with its load: compare the ratios printed by one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 512
SPACING = (0.78, 0.78, 3.0)
#: The phantom is drawn at this pixel size and stored at 0.78 mm: its body then spans about half of
#: the 400 mm field (as a large patient does), anatomy scaled by 1.56.
DRAWN_MM = 0.5
DISTINCT_SLICES = 10  # anatomy levels drawn; the volume repeats them with fresh noise


def make_volume(n: int, couch: bool = False, seed: int = 3) -> np.ndarray:
    """(n, 512, 512) float32 HU: phantom anatomy with 30 HU white noise (MVCT-like) everywhere."""
    from MVCTEnhanceLib.synth.phantoms import phantom_stack

    levels = phantom_stack(seed, n_slices=min(n, DISTINCT_SLICES), t_start=0.5, slice_mm=6.0, size=SIZE,
                           spacing_mm=DRAWN_MM, couch=couch)
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIZE, SIZE), np.float32)
    for k in range(n):
        out[k] = levels[k % len(levels)] + rng.standard_normal((SIZE, SIZE), dtype=np.float32) * np.float32(30.0)
    return out


def body_fraction(vol: np.ndarray) -> tuple[float, float]:
    """Mean fraction of the field's width and area the body (> -400 HU) takes."""
    body = vol > -400
    cols = body.any(axis=1)
    return float(np.mean([np.ptp(np.flatnonzero(c)) + 1 for c in cols if c.any()]) / SIZE), float(body.mean())


def run_cli(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one CLI process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "MVCTEnhanceLib.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mvct-enhance failed:\n{out}\n{err}")
    return seconds, usage.ru_maxrss / 1024.0


def bare_network(model_path: Path, vol: np.ndarray) -> float:
    """Seconds of the TorchScript module alone on every slice at the full field (batch 1, like the
    engine's CPU default of small batches), the input already mapped to the network's range."""
    import torch

    from MVCTEnhanceLib.engine.modelfile import load_model

    loaded = load_model(model_path)
    lo, hi = loaded.card.hu_window
    a, b = loaded.card.hu_to_net_scale()
    seconds = 0.0
    with torch.inference_mode():
        loaded.module(torch.zeros(1, 1, 64, 64))  # warm-up
        for k in range(vol.shape[0]):
            x = torch.from_numpy(np.clip(vol[k], lo, hi) * a + b)[None, None]
            t0 = time.perf_counter()
            loaded.module(x)
            seconds += time.perf_counter() - t0
    return seconds


def crop_comparison(model_path: Path, vol: np.ndarray) -> dict:
    """enhance() with and without the body crop on ``vol``; the crop's exactness."""
    from MVCTEnhanceLib.engine import inference
    from MVCTEnhanceLib.engine.modelfile import load_model
    from MVCTEnhanceLib.engine.volume import Volume

    loaded = load_model(model_path)
    volume = Volume(vol, spacing=SPACING)
    body = vol > -400
    t0 = time.perf_counter()
    crop = inference.enhance(volume, loaded, device="cpu", body_crop=True)
    t_crop = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = inference.enhance(volume, loaded, device="cpu", body_crop=False)
    t_old = time.perf_counter() - t0
    planned = inference.plan_network
    inference.plan_network = lambda module: (None, "benchmark: the module on the whole canonical field")
    try:
        t0 = time.perf_counter()
        whole = inference.enhance(volume, loaded, device="cpu", body_crop=True)
        t_whole = time.perf_counter() - t0
    finally:
        inference.plan_network = planned
    d_exact = np.abs(crop.volume.array - whole.volume.array)[body]
    d_old = np.abs(crop.volume.array - old.volume.array)[body]
    return {"slices": vol.shape[0], "crop_s": t_crop, "old_s": t_old, "whole_canonical_s": t_whole,
            "pixels": crop.parameters["body_crop"]["network_pixels_fraction"],
            "check_hu": crop.parameters["body_crop"]["check_max_hu"],
            "exact_max": float(d_exact.max()), "exact_p99": float(np.percentile(d_exact, 99)),
            "old_max": float(d_old.max()), "old_p99": float(np.percentile(d_old, 99)), "old_mean": float(d_old.mean())}


def nselfssim_per_slice(vol: np.ndarray) -> tuple[float, float]:
    """ms per 512 x 512 slice: the engine's NSelfSSIM map and scikit-image's (float64), same work."""
    from skimage.metrics import structural_similarity

    from MVCTEnhanceLib.engine import metrics
    from MVCTEnhanceLib.engine.volume import Volume

    metrics.nselfssim_map(Volume(vol[:1]), device="cpu")  # warm-up
    t0 = time.perf_counter()
    metrics.nselfssim_map(Volume(vol, spacing=SPACING), device="cpu")
    ours = (time.perf_counter() - t0) / vol.shape[0]
    lo, hi = -160.0, 240.0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for k in range(vol.shape[0]):
        noise = rng.standard_normal(vol[k].shape, dtype=np.float32) * np.float32(20.0)
        a = np.clip(vol[k], lo, hi).astype(np.float64)
        b = np.clip(vol[k] + noise, lo, hi).astype(np.float64)
        structural_similarity(a, b, full=True, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=hi - lo)
    return ours * 1000.0, (time.perf_counter() - t0) / vol.shape[0] * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--crop-slices", type=int, default=8, help="slices for the crop comparison (default 8)")
    ap.add_argument("--ssim-slices", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="job / bare-network pairs (default 3; the median ratio)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of the job and the bare network (default: the engine's automatic choice)")
    ap.add_argument("--model", default=str(ROOT / "Resources" / "models" / "mvctenhance-default.pt"))
    args = ap.parse_args()

    import torch

    from MVCTEnhanceLib.engine.inference import automatic_threads, physical_cores
    from MVCTEnhanceLib.engine.volume import Volume, write_volume

    threads = args.threads or automatic_threads()
    torch.set_num_threads(threads)
    model = Path(args.model)
    vol = make_volume(args.slices)
    width, area = body_fraction(vol)
    load = os.getloadavg()
    print(f"bench_speed: {SIZE}x{SIZE}x{args.slices}, {SPACING[0]} mm pixels, body {100 * width:.0f}% of the field's "
          f"width ({100 * area:.0f}% of its area); model {model.name}; CPU, {threads} threads "
          f"(physical cores available: {physical_cores()}, os.cpu_count {os.cpu_count()}); torch {torch.__version__}; "
          f"load average at start {load[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        src = Path(tmp) / "mvct.nrrd"
        write_volume(Volume(np.rint(vol), spacing=SPACING), src, dtype="int16")
        # Rounds alternate the job and the bare network, so that a shared machine's slow spells fall on
        # both; the ratio is taken per round and its median printed. Each job writes a new folder (as a
        # user's first run does: no old outputs to replace).
        rounds = []
        for k in range(args.rounds):
            out = Path(tmp) / f"out{k}"
            out.mkdir()
            job = ["enhance", str(src), "-o", str(out / "e.nrrd"), "--dig", str(out / "d.nrrd"), "--nselfssim",
                   str(out / "n.nrrd"), "--report", str(out / "r.json"), "--model", str(model), "--device", "cpu",
                   "--progress", "none", "--threads", str(threads)]
            e2e_s, e2e_rss = run_cli(job)
            rounds.append((e2e_s, e2e_rss, bare_network(model, vol), json.loads((out / "r.json").read_text())))
            shutil.rmtree(out)
        help_s, _ = run_cli(["--help"])

    crop = crop_comparison(model, vol[:args.crop_slices]) if args.crop_slices else None
    couch = crop_comparison(model, make_volume(args.crop_slices, couch=True)) if args.crop_slices else None
    ours_ms, skimage_ms = nselfssim_per_slice(vol[:args.ssim_slices])

    n = args.slices
    print("\n1. end to end, CLI job with DIG + NSelfSSIM maps and the report (subprocess), and")
    print(f"2. the bare TorchScript network, {n} slices at {SIZE}x{SIZE}, alternating, {args.rounds} rounds:")
    for k, (e2e_s, e2e_rss, bare_s, report) in enumerate(rounds, start=1):
        t = report["timings_s"]
        print(f"   round {k}: job {e2e_s:6.2f} s wall, peak RSS {e2e_rss:.0f} MB [report: load {t['load']:.2f}, "
              f"enhance {t['enhance']:.2f}, metrics {t['metrics']:.2f}, write {t['write']:.2f}, total {t['total']:.2f} s;"
              f" the rest is start-up]; bare network {bare_s:6.2f} s ({bare_s / n:.3f} s/slice); "
              f"ratio {e2e_s / bare_s:.2f}")
    report = rounds[-1][3]
    ratios = sorted(r[0] / r[2] for r in rounds)
    print(f"   network pixels / whole fields: {report['parameters']['body_crop']['network_pixels_fraction']:.2f}; "
          f"spot check {report['parameters']['body_crop']['check_max_hu']} HU; `mvct-enhance --help` {help_s:.2f} s; "
          f"peak RSS at most {max(r[1] for r in rounds):.0f} MB")
    print(f"   ratio end to end / bare network: median {ratios[len(ratios) // 2]:.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})   (target <= 0.8)")
    for name, c in (("no couch", crop), ("with couch", couch)):
        if c is None:
            continue
        print(f"3. body crop, enhance() on {c['slices']} slices ({name}): {c['crop_s']:.2f} s vs {c['old_s']:.2f} s "
              f"without (--no-body-crop): {c['old_s'] / c['crop_s']:.2f}x; network pixels {c['pixels']:.2f} "
              "of the field")
        print(f"   |crop - network on the whole canonical field| in the body: max {c['exact_max']:.4f} HU, "
              f"p99 {c['exact_p99']:.4f} (spot check {c['check_hu']} HU; target < 1)")
        print(f"   |crop - old path (far air noisy)| in the body: max {c['old_max']:.1f} HU, p99 {c['old_p99']:.1f}, "
              f"mean {c['old_mean']:.2f}")
    print(f"4. NSelfSSIM map per {SIZE}x{SIZE} slice ({args.ssim_slices} slices): {ours_ms:.1f} ms vs scikit-image "
          f"{skimage_ms:.1f} ms (float64): ratio {ours_ms / skimage_ms:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
