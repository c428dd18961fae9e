"""Time the kV -> MV simulator per 256 x 256 slice (and the phantom generator) on this machine.

    python benchmarks/bench_simulate.py [--repeats 10] [--size 256]
    python benchmarks/bench_simulate.py --physics [--seeds 5]

Prints one JSON line: wall and process-CPU seconds per slice (median over repeats, after one warm-up
that also builds the cached noise calibration), the simulator's torch threads and the load average,
because on a shared machine wall time depends on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def physics_table(n_seeds: int) -> dict:
    """Water noise and tissue HU (kV -> simulated MV) on a 200 mm water cylinder with 30 mm inserts,
    256 x 256 at 1 mm, default settings (30 HU): noise-free and mean over ``n_seeds`` noisy runs."""
    from MVCTEnhanceLib.synth.simulate import SimulatorSettings, kv_to_mv_hu, simulate_slice

    n = 256
    c = np.arange(n) - (n - 1) / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    r = np.hypot(xx, yy)
    inserts = {"adipose": (-76.0, -60, 0), "muscle": (43.0, 60, 0), "cortical bone": (1561.0, 0, -60),
               "lung": (-741.0, 0, 60)}
    img = np.full((n, n), -1000.0, np.float32)
    img[r < 100] = 0.0
    for hu, x0, y0 in inserts.values():
        img[np.hypot(xx - x0, yy - y0) < 15] = hu
    clean = simulate_slice(img, (1.0, 1.0), SimulatorSettings(noise_sd=0.0), np.random.default_rng(0))
    noisy = [simulate_slice(img, (1.0, 1.0), SimulatorSettings(), np.random.default_rng(k)) for k in range(n_seeds)]
    water = (r < 60) & np.all([np.hypot(xx - x0, yy - y0) >= 20 for _, x0, y0 in inserts.values()], axis=0)
    rows = [{"tissue": "water", "kv_hu": 0.0, "icru_1mev_hu": 0.0,
             "mv_noise_free": round(float(clean[water].mean()), 1),
             "mv_noisy_mean": round(float(np.mean([o[water].mean() for o in noisy])), 1)}]
    for name, (hu, x0, y0) in inserts.items():
        roi = np.hypot(xx - x0, yy - y0) < 9
        rows.append({"tissue": name, "kv_hu": hu, "icru_1mev_hu": float(kv_to_mv_hu(np.array([hu]))[0]),
                     "mv_noise_free": round(float(clean[roi].mean()), 1),
                     "mv_noisy_mean": round(float(np.mean([o[roi].mean() for o in noisy])), 1)})
    return {"target_noise_sd": 30.0,
            "water_centre_sd_per_seed": [round(float(o[r < 25].std()), 2) for o in noisy],
            "water_mean_r60_per_seed": [round(float(o[r < 60].mean()), 2) for o in noisy],
            "air_mean": round(float(np.mean([o[r > 118].mean() for o in noisy])), 1),
            "tissues": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--physics", action="store_true", help="print the water-noise and tissue-HU table instead")
    ap.add_argument("--seeds", type=int, default=5, help="noisy runs for --physics (default 5)")
    args = ap.parse_args()
    if args.physics:
        print(json.dumps(physics_table(args.seeds), indent=1))
        return

    from MVCTEnhanceLib.synth.phantoms import phantom_slice
    from MVCTEnhanceLib.synth.simulate import SIM_THREADS, SimulatorSettings, simulate_slice

    settings = SimulatorSettings()
    spacing = 256.0 / args.size
    t0 = time.perf_counter()
    c0 = time.process_time()
    img, _ = phantom_slice(1, 0.6, size=args.size, spacing_mm=spacing)
    phantom_wall, phantom_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    simulate_slice(img, (spacing, spacing), settings, np.random.default_rng(0))  # warm-up + calibration
    first = time.perf_counter() - t0
    walls, cpus = [], []
    for k in range(args.repeats):
        img, _ = phantom_slice(100 + k, size=args.size, spacing_mm=spacing)
        t0, c0 = time.perf_counter(), time.process_time()
        simulate_slice(img, (spacing, spacing), settings, np.random.default_rng(k))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    print(json.dumps({
        "size": args.size, "n_views": settings.n_views, "repeats": args.repeats,
        "simulate_wall_s_median": round(statistics.median(walls), 3),
        "simulate_wall_s_min": round(min(walls), 3),
        "simulate_cpu_s_median": round(statistics.median(cpus), 3),
        "first_call_with_calibration_s": round(first, 3),
        "phantom_slice_wall_s": round(phantom_wall, 3), "phantom_slice_cpu_s": round(phantom_cpu, 3),
        "simulator_torch_threads": SIM_THREADS, "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
