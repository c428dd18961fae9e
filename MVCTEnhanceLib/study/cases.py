"""The evaluation study: every method on every case of a test set, the talk's tables, and the
training-set-size study (``mvct-enhance evaluate`` and ``mvct-enhance study-datasize``).

Test-set folder convention (what :func:`find_cases` reads)::

    DIR/<case>_mvct.nrrd    the MVCT of a case (``<case>_mv.nrrd`` is accepted too: make-dataset's name)
    DIR/<case>_kv.nrrd      optional: its kV CT. On the MVCT's voxel grid it is the ground truth (MAE,
                            PSNR, SSIM are computed, and it is the "kv" reference row); on another grid
                            (an unregistered planning CT) only its NSelfSSIM is reported.
                            ``<case>_planning_ct.nrrd`` is accepted too.

Any volume format the engine writes (.nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd) works. A make-dataset
output folder (``manifest.json`` + ``test/``) can be given as it is: its ``test/`` folder is used.

Methods (``--methods``): ``mvct`` (the input itself), ``nlm``, ``tv``, ``bm3d`` (conventional
denoisers, see :mod:`denoisers`), ``kv`` (the kV reference row), and ``NAME=MODEL_FILE`` for any
model file the engine loads (e.g. ``proposed=Resources/models/mvctenhance-default.pt``).

Metrics per case and method, all inside one body mask per case (:func:`metrics.body_mask` of the
MVCT): NSelfSSIM and DIG as :func:`metrics.assess` computes them, and, with a ground truth, MAE,
PSNR and SSIM in the SynthRAD convention (:mod:`metrics`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engine.calibration import tissue_calibration
from ..engine.errors import InputError
from ..engine.job import EnhanceSettings, run_enhance
from ..engine.metrics import (BODY_THRESHOLD_HU, METRICS, Assessment, assess, body_mask, mae_in_mask, psnr_synthrad,
                              ssim_synthrad)
from ..engine.modelfile import LoadedModel
from ..engine.volume import WRITE_EXTENSIONS, Volume, read_volume
from ..synth.phantoms import phantom_slice
from ..synth.simulate import SimulatorSettings, simulate
from .denoisers import bm3d_available, denoise

MV_SUFFIXES = ("_mvct", "_mv")
KV_SUFFIXES = ("_planning_ct", "_kv")
INPUT_METHOD, REFERENCE_METHOD = "mvct", "kv"
DENOISER_METHODS = ("nlm", "tv", "bm3d")
BUILTIN_METHODS = (INPUT_METHOD, *DENOISER_METHODS, REFERENCE_METHOD)
CSV_NAME = "per_case.csv"
CSV_FIELDS = ("case", "method", "kind", *METRICS, "seconds")
#: A simulated validation case comes from phantom patients with seeds from here on: far above the
#: seeds make-dataset uses (checked against its manifest when there is one).
VALIDATION_SEED_BASE = 900_000
_GEOMETRY_TOL = 1e-4

Progress = Callable[[str], None] | None



# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    mvct: Path
    kv: Path | None = None


def _split_volume_name(name: str) -> tuple[str, str] | None:
    low = name.lower()
    for ext in sorted(WRITE_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext):
            return name[: -len(ext)], ext
    return None


def _dataset_subfolder(folder: Path, sub: str) -> Path | None:
    """``folder/sub`` when ``folder`` is a make-dataset output (manifest.json beside ``sub/``)."""
    if (folder / "manifest.json").is_file() and (folder / sub).is_dir():
        return folder / sub
    return None


def find_cases(folder: str | os.PathLike, what: str = "test set") -> list[Case]:
    """The cases of a folder laid out as the module docstring says, sorted by name."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{what} folder '{root}' does not exist")
    if not root.is_dir():
        raise InputError(f"{what} '{root}' is not a folder; give a folder of <case>_mvct.nrrd (+ <case>_kv.nrrd) files")
    root = _dataset_subfolder(root, "test" if what == "test set" else "validation") or root
    mv: dict[str, Path] = {}
    kv: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        split = _split_volume_name(p.name)
        if split is None or p.name.startswith(".") or not p.is_file():
            continue
        stem = split[0]
        for suffixes, table, kind in ((MV_SUFFIXES, mv, "MVCT"), (KV_SUFFIXES, kv, "kV")):
            hit = next((s for s in suffixes if stem.lower().endswith(s)), None)
            if hit is not None:
                case = stem[: -len(hit)]
                if not case:
                    continue
                if case in table:
                    raise InputError(f"case '{case}' has two {kind} files in '{root}': '{table[case].name}' and "
                                     f"'{p.name}'; keep one")
                table[case] = p
                break
    if not mv:
        raise InputError(f"no cases in {what} folder '{root}': expected files named <case>_mvct.nrrd "
                         "(or <case>_mv.nrrd), "
                         "each with an optional <case>_kv.nrrd")
    return [Case(name, mv[name], kv.get(name)) for name in sorted(mv)]


def _near_same_grid(a: Volume, b: Volume) -> bool:
    return (a.array.shape == b.array.shape
            and np.allclose(a.spacing, b.spacing, rtol=0, atol=_GEOMETRY_TOL)
            and np.allclose(a.origin, b.origin, rtol=0, atol=_GEOMETRY_TOL)
            and np.allclose(a.direction, b.direction, rtol=0, atol=_GEOMETRY_TOL))


@dataclasses.dataclass
class LoadedCase:
    case: Case
    mvct: Volume
    kv: Volume | None            # as read
    ground_truth: Volume | None  # the kV on the MVCT's exact grid, when it is registered to it


def load_case(case: Case) -> LoadedCase:
    mv = read_volume(case.mvct)
    kv = read_volume(case.kv) if case.kv is not None else None
    gt = mv.with_array(kv.array) if kv is not None and _near_same_grid(mv, kv) else None
    return LoadedCase(case, mv, kv, gt)


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    kind: str                  # "input", "denoiser", "model", "reference"
    model: Path | None = None


def parse_methods(specs: Sequence[str]) -> list[Method]:
    """``mvct``, ``nlm``, ``tv``, ``bm3d``, ``kv`` or ``NAME=MODEL_FILE``; commas also separate."""
    tokens = [t.strip() for s in specs for t in str(s).split(",") if t.strip()]
    if not tokens:
        raise InputError("no methods given; use e.g. --methods mvct nlm tv proposed=MODEL.pt kv")
    methods: list[Method] = []
    for t in tokens:
        if "=" in t:
            name, _, path = t.partition("=")
            name, path = name.strip(), path.strip()
            if not name or not path:
                raise InputError(f"method '{t}' must be NAME=MODEL_FILE")
            if name.lower() in BUILTIN_METHODS:
                raise InputError(f"model method name '{name}' is reserved for a built-in method; choose another name")
            if not Path(path).is_file():
                raise InputError(f"model file '{path}' of method '{name}' does not exist")
            methods.append(Method(name, "model", Path(path)))
        elif t.lower() == INPUT_METHOD:
            methods.append(Method(INPUT_METHOD, "input"))
        elif t.lower() == REFERENCE_METHOD:
            methods.append(Method(REFERENCE_METHOD, "reference"))
        elif t.lower() in DENOISER_METHODS:
            if t.lower() == "bm3d" and not bm3d_available():
                raise InputError("method 'bm3d' needs the optional 'bm3d' package (pip install bm3d==4.0.3; "
                                 "non-commercial licence); leave bm3d out of --methods otherwise")
            methods.append(Method(t.lower(), "denoiser"))
        else:
            raise InputError(f"unknown method '{t}'; use mvct, nlm, tv, bm3d, kv or NAME=MODEL_FILE")
    names = [m.name for m in methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"method {', '.join(dup)} given twice; each method needs its own name")
    return methods


# --------------------------------------------------------------------------------------------------
# Validation case for the denoisers
# --------------------------------------------------------------------------------------------------

def _used_seeds(manifest: Any) -> set[int]:
    """Every integer under a key mentioning 'seed' anywhere in a manifest."""
    found: set[int] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if "seed" in str(k).lower() and isinstance(v, int) and not isinstance(v, bool):
                    found.add(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(manifest)
    return found


def _manifest_of(test_set: Path) -> tuple[dict | None, Path | None]:
    for folder in (test_set, test_set.parent):
        p = folder / "manifest.json"
        if p.is_file():
            try:
                return json.loads(p.read_text()), p
            except ValueError:
                return None, p
    return None, None


def simulated_validation_case(test_set: str | os.PathLike, n_slices: int = 4,
                              like: LoadedCase | None = None) -> tuple[LoadedCase, dict[str, Any]]:
    """A validation case simulated from phantom patients outside every set of the test set's manifest.

    ``n_slices`` phantom slices (one patient each, seeds from :data:`VALIDATION_SEED_BASE` on, skipping
    any seed the manifest mentions, level drawn from the seed as make-dataset does) are simulated with
    the manifest's simulator settings (the test set's noise level) when it records them, else the
    simulator's defaults, and stacked into one volume. Grid size and pixel spacing are the first
    test case's.
    """
    manifest, mpath = _manifest_of(Path(test_set))
    used = _used_seeds(manifest) if manifest else set()
    seeds: list[int] = []
    s = VALIDATION_SEED_BASE
    while len(seeds) < n_slices:
        if s not in used:
            seeds.append(s)
        s += 1
    settings = SimulatorSettings()
    sim = _find_simulator_settings(manifest) if manifest else None
    if sim:
        fields = {f.name for f in dataclasses.fields(SimulatorSettings)}
        settings = SimulatorSettings(**{k: v for k, v in sim.items() if k in fields and k != "version"})
    size, spacing = 256, 1.0
    if like is not None:
        axis = like.mvct.axial_axis()
        shape = [n for a, n in enumerate(like.mvct.array.shape) if a != axis]
        size, spacing = int(max(shape)), float(min(like.mvct.inplane_spacing(axis)))
    kv_arr = np.stack([np.rint(phantom_slice(seed, size=size, spacing_mm=spacing)[0]) for seed in seeds])
    kv = Volume(kv_arr.astype(np.float32), (spacing, spacing, 3.0))
    mv = simulate(kv, seed=seeds[0], settings=settings)
    case = Case(f"simulated-validation (phantom seeds {seeds[0]}-{seeds[-1]})", Path("<simulated>"), None)
    info = {"source": "simulated", "patient_seeds": seeds, "n_slices": n_slices, "size": size, "spacing_mm": spacing,
            "simulator": settings.to_dict(), "simulator_seed": seeds[0], "manifest": str(mpath) if mpath else None,
            "seeds_in_manifest": len(used)}
    return LoadedCase(case, mv, kv, mv.with_array(kv.array)), info


def _find_simulator_settings(manifest: Any) -> dict | None:
    if isinstance(manifest, dict):
        for key in ("simulator", "simulator_settings"):
            v = manifest.get(key)
            if isinstance(v, dict) and "noise_sd" in v:
                return v
        for v in manifest.values():
            found = _find_simulator_settings(v)
            if found:
                return found
    return None


def validation_case(test_set: str | os.PathLike, validation: str | os.PathLike | None,
                    test_cases: Sequence[Case], like: LoadedCase | None = None) -> tuple[LoadedCase, dict[str, Any]]:
    """The case the denoisers are tuned on; never one of the test cases.

    ``validation`` (a folder in the test-set convention; its first case with a registered kV) wins;
    else a make-dataset output's ``validation/`` folder; else a simulated case (see
    :func:`simulated_validation_case`).
    """
    test_files = {c.mvct.resolve() for c in test_cases} | {c.kv.resolve() for c in test_cases if c.kv}
    folder: Path | None = Path(validation) if validation is not None else None
    if folder is None:
        root = Path(test_set)
        folder = _dataset_subfolder(root, "validation") or _dataset_subfolder(root.parent, "validation")
    if folder is not None:
        cases = find_cases(folder, what="validation")
        for c in cases:
            if c.mvct.resolve() in test_files or (c.kv and c.kv.resolve() in test_files):
                raise InputError(f"validation case '{c.name}' is also in the test set; tune on a separate case")
        for c in cases:
            loaded = load_case(c)
            if loaded.ground_truth is not None:
                return loaded, {"source": "folder", "folder": str(folder), "case": c.name, "mvct": str(c.mvct),
                                "kv": str(c.kv)}
        raise InputError(f"validation folder '{folder}' has no case with a kV image on the MVCT's grid; the "
                         "denoisers are tuned against a ground truth")
    return simulated_validation_case(test_set, like=like)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

def _produce(method: Method, lc: LoadedCase, tuned: dict[str, float], models: dict[str, LoadedModel],
             settings: EnhanceSettings, mask: np.ndarray) -> tuple[Volume | None, Assessment | None, float]:
    """The method's image of the case (on the MVCT's grid), its assessment and the seconds it took.

    Model methods run the engine's enhance job, exactly as the CLI and Slicer do; the others are
    assessed with the same metric settings in the same body mask.
    """
    t0 = time.perf_counter()
    if method.kind == "model":
        outcome = run_enhance(lc.mvct, models[method.name], None, settings)
        return outcome.result, outcome.assessment, outcome.enhanced.seconds
    if method.kind == "input":
        out: Volume | None = lc.mvct
    elif method.kind == "reference":
        out = lc.ground_truth
    else:
        out = denoise(lc.mvct, method.name, tuned[method.name])
    seconds = time.perf_counter() - t0
    if out is None:
        return None, None, seconds
    ms = settings.metrics
    anchor = lc.mvct.with_array(tissue_calibration().apply(lc.mvct.array))  # tissue classes on the kV scale
    a = assess(lc.mvct, out, mask=mask, anchor=anchor, noise_sd=ms.noise_sd, window=ms.window, seed=ms.seed,
               device=settings.device)
    return out, a, seconds


def score_case(lc: LoadedCase, methods: Sequence[Method], tuned: dict[str, float], models: dict[str, LoadedModel],
               settings: EnhanceSettings, keep: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metric rows of one case; with ``keep`` also its images and maps (for the figures)."""
    mask = body_mask(lc.mvct)
    if not mask.any():
        raise InputError(f"case '{lc.case.name}': no body in the MVCT (nothing above {BODY_THRESHOLD_HU:g} HU); "
                         "is it CT in HU?")
    ms = settings.metrics
    rows: list[dict[str, Any]] = []
    kept: dict[str, Any] = {"mask": mask, "images": {}, "dig": {}, "nselfssim": {}}
    for m in methods:
        row: dict[str, Any] = {"case": lc.case.name, "method": m.name, "kind": m.kind,
                               **{k: math.nan for k in METRICS}, "seconds": math.nan}
        out, a, row["seconds"] = _produce(m, lc, tuned, models, settings, mask)
        if out is None:
            if m.kind == "reference" and lc.kv is not None:
                # an unregistered planning CT: only its own NSelfSSIM, in its own body mask
                own = assess(lc.kv, noise_sd=ms.noise_sd, window=ms.window, seed=ms.seed, device=settings.device)
                row["nselfssim"] = own.summaries["nselfssim"]["input"]["mean"]
                if keep:
                    kept["images"][m.name] = None
            rows.append(row)
            continue
        row["nselfssim"] = a.summaries["nselfssim"]["output"]["mean"]
        row["dig"] = a.summaries["dig"]["output"]["mean"]
        row["tissue_change"] = a.summaries["tissue_change"]["output"]["volume_cm3"]
        if lc.ground_truth is not None and m.kind != "reference":
            for name, score in FULL_REFERENCE.items():
                row[name] = score(out, lc.ground_truth, mask)
        if keep:
            kept["images"][m.name] = out
            kept["dig"][m.name] = a.dig
            kept["nselfssim"][m.name] = a.nselfssim_output
        rows.append(row)
    return rows, kept


#: How each full-reference metric of the registry is scored against the ground truth, in the body.
FULL_REFERENCE: dict[str, Callable[[Volume, Volume, np.ndarray], float]] = {
    "mae": mae_in_mask, "psnr": psnr_synthrad, "ssim": ssim_synthrad}


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike, fields: Sequence[str] = CSV_FIELDS) -> Path:
    """Rows as CSV (NaN written as an empty cell), atomically."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                            f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, p)
    return p


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a per-case CSV with the metric columns as floats (NaN where empty)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for k in (*METRICS, "seconds"):
                if k in row:
                    row[k] = float(row[k]) if row[k] not in ("", None) else math.nan
            out.append(row)
    return out


def values(rows: Sequence[dict[str, Any]], method: str, metric: str, cases: Sequence[str]) -> np.ndarray:
    by_case = {r["case"]: r.get(metric, math.nan) for r in rows if r["method"] == method}
    return np.array([float(by_case.get(c, math.nan)) for c in cases], dtype=np.float64)
