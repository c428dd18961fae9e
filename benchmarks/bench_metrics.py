"""Benchmark of the metric maps (not a test).

Prints, in one run:
  1. NSelfSSIM map time per 512x512 slice: MVCTEnhanceLib (torch, chunked) vs scikit-image's
     structural_similarity(full=True) per slice with the same settings, and their ratio;
  2. wall time and peak RSS of nselfssim_map, dig_map and body_mask on a 512x512xN volume, each
     in a fresh subprocess so that every peak RSS (resource.getrusage ru_maxrss) is its own.

    python benchmarks/bench_metrics.py [--slices 200] [--device auto] [--ssim-slices 8] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = 512


def synthetic_ct(slices: int, size: int = SIZE, noise_sd: float = 40.0, seed: int = 0) -> np.ndarray:
    """An MVCT-like float32 volume (HU): elliptical body, fat rim, bone disk, air pocket, noise."""
    r, c = np.mgrid[0:size, 0:size].astype(np.float32)
    r, c = (r - size / 2) / (size / 2), (c - size / 2) / (size / 2)
    sl = np.full((size, size), -1000.0, np.float32)
    sl[(r / 0.8) ** 2 + (c / 0.9) ** 2 < 1] = -80.0
    sl[(r / 0.7) ** 2 + (c / 0.8) ** 2 < 1] = 40.0
    sl[(r - 0.2) ** 2 + c ** 2 < 0.04] = 800.0
    sl[(r + 0.3) ** 2 + (c - 0.3) ** 2 < 0.01] = -900.0
    vol = np.repeat(sl[np.newaxis], slices, axis=0)
    rng = np.random.default_rng(seed)
    for k in range(slices):  # per slice: no full-size float64 temporary
        vol[k] += rng.standard_normal((size, size), dtype=np.float32) * np.float32(noise_sd)
    return vol


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc); the peak before the operation if /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
    except (OSError, StopIteration):
        return peak_rss_mb()


def child(what: str, slices: int, device: str) -> None:
    """Run one operation and print 'seconds rss_before peak_rss' (MB).

    The peak is the process's high-water mark, which may predate the operation (building the input);
    'increase' is therefore an upper bound of what the operation itself needs beyond its input.
    """
    from MVCTEnhanceLib.engine import metrics
    from MVCTEnhanceLib.engine.volume import Volume

    vol = Volume(synthetic_ct(slices), spacing=(0.98, 0.98, 2.0))
    other = vol.with_array(vol.array + 25.0) if what == "dig" else None
    import torch  # noqa: F401  (loaded before the baseline so its own footprint is not counted)

    base = current_rss_mb()
    t = time.perf_counter()
    if what == "nselfssim":
        metrics.nselfssim_map(vol, device=device)
    elif what == "dig":
        metrics.dig_map(vol, other, device=device)
    else:
        metrics.body_mask(vol)
    print(f"{time.perf_counter() - t:.3f} {base:.1f} {peak_rss_mb():.1f}")


def per_slice_ssim(n: int, device: str) -> None:
    import torch
    from skimage.metrics import structural_similarity

    from MVCTEnhanceLib.engine import metrics
    from MVCTEnhanceLib.engine.device import resolve_device
    from MVCTEnhanceLib.engine.volume import Volume

    img = synthetic_ct(n)
    vol = Volume(img)
    metrics.nselfssim_map(Volume(img[:1]), device=device)  # warm-up (allocator, kernels)
    t = time.perf_counter()
    metrics.nselfssim_map(vol, device=device)
    ours = (time.perf_counter() - t) / n

    lo, hi = -160.0, 240.0
    rng = np.random.default_rng(0)
    times = {}
    for dtype in (np.float32, np.float64):
        t = time.perf_counter()
        for k in range(n):  # same work as ours: noise draw, clipping, SSIM map
            noise = rng.standard_normal((SIZE, SIZE), dtype=np.float32) * np.float32(20.0)
            a = np.clip(img[k], lo, hi).astype(dtype)
            b = np.clip(img[k] + noise, lo, hi).astype(dtype)
            structural_similarity(a, b, full=True, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=hi - lo)
        times[dtype] = (time.perf_counter() - t) / n
    dev = resolve_device(device)
    print(f"NSelfSSIM map, {SIZE}x{SIZE} slice, mean of {n} slices (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads):")
    print(f"  MVCTEnhanceLib ({dev}, {str(metrics._torch_dtype(dev)).replace('torch.', '')})"
          f"{'':<14}{ours * 1000:8.1f} ms/slice")
    print(f"  scikit-image float32 input             {times[np.float32] * 1000:8.1f} ms/slice"
          f"   ratio ours/skimage = {ours / times[np.float32]:.2f}")
    print(f"  scikit-image float64 input             {times[np.float64] * 1000:8.1f} ms/slice"
          f"   ratio ours/skimage = {ours / times[np.float64]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200, help="slices of the 512x512xN volume (default 200)")
    ap.add_argument("--ssim-slices", type=int, default=8, help="slices for the per-slice comparison (default 8)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default: torch's choice; scikit-image is single-threaded)")
    ap.add_argument("--child", choices=("nselfssim", "dig", "mask"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.slices, args.device)
        return
    print(f"CPUs: {os.cpu_count()}, python {sys.version.split()[0]}")
    per_slice_ssim(args.ssim_slices, args.device)
    mb = args.slices * SIZE * SIZE * 4 / 2 ** 20
    print(f"\n{SIZE}x{SIZE}x{args.slices} volume (float32 input {mb:.0f} MB; default chunk 16 slices), "
          f"device {args.device}:")
    print(f"  {'map':<12}{'seconds':>10}{'s/slice':>10}{'RSS before MB':>15}{'peak RSS MB':>13}{'increase MB':>13}")
    for what in ("nselfssim", "dig", "mask"):
        out = subprocess.run([sys.executable, __file__, "--child", what, "--slices", str(args.slices),
                              "--device", args.device, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        sec, base, peak = (float(v) for v in out.split())
        print(f"  {what:<12}{sec:>10.2f}{sec / args.slices:>10.3f}{base:>15.0f}{peak:>13.0f}{peak - base:>13.0f}")


if __name__ == "__main__":
    main()
