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

from ..engine.errors import InputError, OutputError
from ..engine.files import write_json
from ..engine.volume import WRITE_EXTENSIONS, Volume, read_volume

MV_SUFFIXES = ("_mvct", "_mv")
KV_SUFFIXES = ("_planning_ct", "_kv")
INPUT_METHOD, REFERENCE_METHOD = "mvct", "kv"
DENOISER_METHODS = ("nlm", "tv", "bm3d")
BUILTIN_METHODS = (INPUT_METHOD, *DENOISER_METHODS, REFERENCE_METHOD)
METRICS = ("nselfssim", "dig", "mae", "psnr", "ssim")
METRIC_INFO = {
    "nselfssim": {"label": "NSelfSSIM", "unit": "", "better": "lower = less noise (kV CT is the target)"},
    "dig": {"label": "DIG", "unit": "HU²/mm²", "better": "lower"},
    "mae": {"label": "MAE", "unit": "HU", "better": "lower"},
    "psnr": {"label": "PSNR", "unit": "dB", "better": "higher"},
    "ssim": {"label": "SSIM", "unit": "", "better": "higher"},
}
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
    from .denoisers import bm3d_available

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
    from ..synth.phantoms import phantom_slice
    from ..synth.simulate import SimulatorSettings, simulate

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
# Evaluation
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class MetricSettings:
    noise_sd: float = 20.0
    window: tuple[float, float] = (-160.0, 240.0)
    seed: int = 0
    device: str = "auto"


def _produce(method: Method, lc: LoadedCase, settings: dict[str, float], models: dict[str, Any],
             device: str) -> tuple[Volume | None, float]:
    """The method's image of the case (on the MVCT's grid) and the seconds it took."""
    t0 = time.perf_counter()
    if method.kind == "input":
        out: Volume | None = lc.mvct
    elif method.kind == "reference":
        out = lc.ground_truth
    elif method.kind == "denoiser":
        from .denoisers import denoise

        out = denoise(lc.mvct, method.name, settings[method.name])
    else:
        from ..engine.inference import enhance

        out = enhance(lc.mvct, models[method.name], device=device).volume
    return out, time.perf_counter() - t0


def _case_rows(lc: LoadedCase, methods: Sequence[Method], settings: dict[str, float], models: dict[str, Any],
               ms: MetricSettings, keep: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metric rows of one case; with ``keep`` also its images and maps (for the figures)."""
    from ..engine.metrics import assess, body_mask, mae_in_mask, psnr_synthrad, ssim_synthrad

    mask = body_mask(lc.mvct)
    if not mask.any():
        raise InputError(f"case '{lc.case.name}': no body in the MVCT (nothing above -400 HU); is it CT in HU?")
    kw = dict(noise_sd=ms.noise_sd, window=ms.window, seed=ms.seed, device=ms.device)
    rows: list[dict[str, Any]] = []
    kept: dict[str, Any] = {"mask": mask, "images": {}, "dig": {}, "nselfssim": {}}
    for m in methods:
        row: dict[str, Any] = {"case": lc.case.name, "method": m.name, "kind": m.kind,
                               **{k: math.nan for k in METRICS}, "seconds": math.nan}
        out, seconds = _produce(m, lc, settings, models, ms.device)
        row["seconds"] = seconds
        if out is None:
            if m.kind == "reference" and lc.kv is not None:
                # an unregistered planning CT: only its own NSelfSSIM, in its own body mask
                a = assess(lc.kv, **kw)
                row["nselfssim"] = a.summaries["nselfssim"]["input"]["mean"]
                if keep:
                    kept["images"][m.name] = None
            rows.append(row)
            continue
        a = assess(lc.mvct, out, mask=mask, **kw)
        row["nselfssim"] = a.summaries["nselfssim"]["output"]["mean"]
        row["dig"] = a.summaries["dig"]["output"]["mean"]
        if lc.ground_truth is not None and m.kind != "reference":
            row["mae"] = mae_in_mask(out, lc.ground_truth, mask)
            row["psnr"] = psnr_synthrad(out, lc.ground_truth, mask)
            row["ssim"] = ssim_synthrad(out, lc.ground_truth, mask)
        if keep:
            kept["images"][m.name] = out
            kept["dig"][m.name] = a.dig
            kept["nselfssim"][m.name] = a.nselfssim_output
        rows.append(row)
    return rows, kept


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


REPORT_FILES = ("per_case.csv", "summary.csv", "evaluation.json", "report.md", "boxplots.png", "montage.png",
                "maps.png")


def _prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool, names: Sequence[str]) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"report folder '{out}' is a file; give a folder")
    if not out.exists():
        if not out.parent.is_dir():
            raise OutputError(f"cannot create report folder '{out}': '{out.parent}' does not exist")
        out.mkdir()
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise OutputError(f"report folder '{out}' already holds {', '.join(clash)}; use --overwrite to replace them")
    return out


def evaluate(test_set: str | os.PathLike, methods: Sequence[str] | Sequence[Method], out_dir: str | os.PathLike, *,
             validation: str | os.PathLike | None = None, noise_sd: float = 20.0,
             window: tuple[float, float] = (-160.0, 240.0), seed: int = 0, device: str = "auto",
             figure_case: str | None = None, figure_slice: int | None = None, title: str = "MVCTEnhance evaluation",
             notes: Sequence[str] = (), command: str | None = None, overwrite: bool = False,
             dig_pairs: Sequence[tuple[str, str]] | None = None, progress: Progress = None) -> dict[str, Any]:
    """Run every method on every case of ``test_set`` and write the report into ``out_dir``.

    Writes per_case.csv, summary.csv, evaluation.json, report.md and the PNG figures (box plots, the
    visual comparison montage, the DIG/NSelfSSIM maps of ``figure_case``, default the first case).
    Denoisers are tuned once on the validation case (see :func:`validation_case`) before any test
    case is read. ``dig_pairs`` lists (comparator, method) pairs for the DIG comparison (default:
    :func:`report.default_dig_pairs`). Returns the evaluation record (also in evaluation.json).
    """
    from . import report
    from ..engine.modelfile import load_model

    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    if methods and all(isinstance(m, Method) for m in methods):
        meths: list[Method] = list(methods)  # type: ignore[arg-type]
    else:
        meths = parse_methods([str(m) for m in methods])
    cases = find_cases(test_set)
    if figure_case is not None and figure_case not in {c.name for c in cases}:
        raise InputError(f"figure case '{figure_case}' is not in the test set "
                         f"(cases: {', '.join(c.name for c in cases)})")
    if dig_pairs is not None:
        names = {m.name for m in meths}
        for a, b in dig_pairs:
            if a not in names or b not in names:
                raise InputError(f"DIG pair '{a}:{b}' names a method not in --methods "
                                 f"({', '.join(m.name for m in meths)})")
    out = _prepare_out_dir(out_dir, overwrite, REPORT_FILES)
    models = {m.name: load_model(m.model) for m in meths if m.kind == "model"}
    ms = MetricSettings(float(noise_sd), (float(window[0]), float(window[1])), int(seed), device)

    denoisers = [m.name for m in meths if m.kind == "denoiser"]
    tuning = None
    val_info: dict[str, Any] | None = None
    if denoisers:
        from .denoisers import tune_denoisers

        # the validation case is fixed before any test case is read; the first test case is opened
        # only for its grid size when a validation case must be simulated
        like = None
        if validation is None and _dataset_subfolder(Path(test_set), "validation") is None \
                and _dataset_subfolder(Path(test_set).parent, "validation") is None:
            like_mv = read_volume(cases[0].mvct)
            like = LoadedCase(cases[0], like_mv, None, None)
        val, val_info = validation_case(test_set, validation, cases, like=like)
        say(f"tuning {', '.join(denoisers)} on validation case {val.case.name}")
        tuning = tune_denoisers(denoisers, val.mvct, val.ground_truth, case_name=val.case.name)
    settings = tuning.settings if tuning else {}

    fig_name = figure_case or cases[0].name
    rows: list[dict[str, Any]] = []
    kept: dict[str, Any] = {}
    fig_lc: LoadedCase | None = None
    for i, c in enumerate(cases):
        say(f"case {i + 1}/{len(cases)}: {c.name}")
        lc = load_case(c)
        r, k = _case_rows(lc, meths, settings, models, ms, keep=c.name == fig_name)
        rows.extend(r)
        if c.name == fig_name:
            kept, fig_lc = k, lc
    has_gt = any(not math.isnan(r["mae"]) for r in rows)
    record: dict[str, Any] = {
        "title": title,
        "test_set": str(Path(test_set)),
        "cases": [{"name": c.name, "mvct": str(c.mvct), "kv": str(c.kv) if c.kv else None} for c in cases],
        "methods": [{"name": m.name, "kind": m.kind, "model": str(m.model) if m.model else None,
                     **({"model_card": _card_summary(models[m.name])} if m.kind == "model" else {})} for m in meths],
        "metric_settings": {"noise_sd": ms.noise_sd, "window": list(ms.window), "seed": ms.seed,
                            "body_mask": "metrics.body_mask of each case's MVCT (-400 HU), one mask per case"},
        "denoiser_tuning": tuning.to_dict() if tuning else None,
        "validation": val_info,
        "ground_truth": has_gt,
        "notes": list(notes),
        "command": command,
        "seconds": None,
    }
    say("statistics and figures")
    files = report.write_report(out, rows, record, meths, fig_lc, kept, figure_slice=figure_slice,
                                 dig_pairs=dig_pairs)
    record["seconds"] = time.perf_counter() - t_start
    record["files"] = {k: str(v) for k, v in files.items()}
    write_json(json_safe(record), out / "evaluation.json")
    return record


def json_safe(x: Any) -> Any:
    """A copy with NaN and infinities as None: evaluation.json stays strict JSON for other tools."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def _card_summary(loaded: Any) -> dict[str, Any]:
    card = loaded.card
    training = card.extra.get("training", {}) if isinstance(card.extra, dict) else {}
    return {"name": card.name, "version": card.version, "sha256": loaded.sha256, "losses": card.losses,
            "iterations": training.get("iterations"), "iterations_total": training.get("iterations_total"),
            "preset": training.get("preset"),
            "architecture": {k: card.architecture.get(k) for k in ("ngf", "encoder_res_blocks", "decoder_res_blocks")}}


# --------------------------------------------------------------------------------------------------
# Training-set-size study
# --------------------------------------------------------------------------------------------------

DATASIZE_SIZES = (25, 50, 100, 200, 400)
DATASIZE_PRESETS = ("proposed", "cyclegan")
#: Reduced training for the study (CPU-sized; the report says so): short runs at small crops and
#: a narrow network. Every run of the study uses the same values.
DATASIZE_DEFAULTS = {"iterations": 400, "crop_size": 64, "ngf": 8, "ndf": 16}
DATASIZE_FIELDS = ("preset", "n_requested", "n_slices", "case", "dig", "mae", "psnr", "ssim", "nselfssim")


def _run_finished(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text()).get("status") == "finished"
    except ValueError:
        return False


def study_datasize(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   sizes: Sequence[int] = DATASIZE_SIZES, presets: Sequence[str] = DATASIZE_PRESETS,
                   iterations: int = DATASIZE_DEFAULTS["iterations"], crop_size: int = DATASIZE_DEFAULTS["crop_size"],
                   ngf: int = DATASIZE_DEFAULTS["ngf"], ndf: int = DATASIZE_DEFAULTS["ndf"],
                   base_config: str | os.PathLike | None = None, mv: Sequence[str] | None = None,
                   kv: Sequence[str] | None = None, test_set: str | os.PathLike | None = None, seed: int = 0,
                   device: str = "auto", noise_sd: float = 20.0, window: tuple[float, float] = (-160.0, 240.0),
                   train_missing: bool = True, command: str | None = None,
                   progress: Progress = None) -> dict[str, Any]:
    """Train every preset on the first N MVCT slices for each N (kV set fixed), then DIG/MAE on the test set.

    ``data_dir`` is a make-dataset output (train_mv/, train_kv/, test/); ``mv``, ``kv`` and
    ``test_set`` override its folders. Runs go to ``out_dir/runs/<preset>-n<N>`` and models to
    ``out_dir/models/<preset>-n<N>.pt``; the study resumes: finished runs and exported models are
    reused, interrupted runs are resumed. Sizes run largest first. Subsets are nested (the first N of
    one seeded permutation, :class:`datasets.SliceDataset`). With ``train_missing=False`` nothing is
    trained: only finished runs are evaluated and the others are listed as skipped (the report of a
    study cut short). Writes datasize.csv (per case), datasize_summary.csv, datasize.png, datasize.md
    and datasize.json.
    """
    from ..synth.make_dataset import SliceDataset
    from ..training.export import export_run
    from ..training.trainer import PRESETS, TrainConfig, load_run_config, train

    say = progress or (lambda _msg: None)
    data = Path(data_dir)
    if not data.is_dir():
        raise InputError(f"data folder '{data}' does not exist; create it with mvct-enhance make-dataset")
    mv_src = [str(p) for p in (mv or [data / "train_mv"])]
    kv_src = [str(p) for p in (kv or [data / "train_kv"])]
    for p in (*mv_src, *kv_src):
        if not Path(p).exists():
            raise InputError(f"training data '{p}' does not exist; give --mv/--kv or a make-dataset folder")
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise InputError(f"training-set sizes must be positive integers, got {list(sizes)}")
    for p in presets:
        if p not in PRESETS:
            raise InputError(f"unknown preset '{p}'; use {', '.join(PRESETS)}")
    cases = find_cases(test_set if test_set is not None else data / "test" if (data / "test").is_dir() else data)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"study folder '{out}' is a file")
    if not out.parent.is_dir():
        raise OutputError(f"cannot create study folder '{out}': '{out.parent}' does not exist")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)

    base = None
    if base_config is not None:
        bp = Path(base_config)
        if bp.is_dir():
            base = load_run_config(bp)
        elif bp.is_file():
            try:
                base = TrainConfig.from_dict(json.loads(bp.read_text()))
            except (ValueError, TypeError) as exc:
                raise InputError(f"base config '{bp}' is not a training configuration ({exc})") from None
        else:
            raise InputError(f"base config '{bp}' does not exist; give a run folder or its config.json")
    template = base.to_dict() if base else TrainConfig(mv=mv_src, kv=kv_src, out_dir="").to_dict()
    for name in ("w_adversarial", "w_cycle", "w_identity", "w_perceptual", "w_autoencoder", "w_air"):
        template[name] = None  # the preset decides: proposed vs plain CycleGAN differ only there
    template.update(mv=mv_src, kv=kv_src, iterations=int(iterations), crop_size=int(crop_size), ngf=int(ngf),
                    ndf=int(ndf), seed=int(seed), device=device, progress=False, resume=False,
                    sample_every=int(iterations), checkpoint_every=max(50, int(iterations) // 4),
                    log_every=max(1, int(iterations) // 40))
    probe = TrainConfig.from_dict({**template, "out_dir": str(out / "runs" / "probe")})
    probe.validate()
    kv_set = SliceDataset(kv_src, hu_window=probe.hu_window, pixel_spacing_mm=probe.pixel_spacing_mm,
                          crop_size=probe.crop_size, augment=probe.augment, max_shift_px=probe.max_shift_px,
                          max_rotation_deg=probe.max_rotation_deg, seed=probe.seed + 1,
                          min_body_fraction=probe.min_body_fraction)
    say(f"kV set: {len(kv_set)} slices (fixed); test set: {len(cases)} cases")
    loaded = [load_case(c) for c in cases]
    ms = MetricSettings(float(noise_sd), (float(window[0]), float(window[1])), 0, device)
    # the input and the kV ground truth as reference lines of the plots
    ref_rows = [r for lc in loaded for r in _case_rows(lc, [Method(INPUT_METHOD, "input"),
                                                            Method(REFERENCE_METHOD, "reference")], {}, {}, ms,
                                                       keep=False)[0]]
    reference = {m: {k: float(np.nanmean([r[k] for r in ref_rows if r["method"] == m]))
                     for k in ("dig", "mae", "nselfssim")
                     if any(np.isfinite(r[k]) for r in ref_rows if r["method"] == m)}
                 for m in (INPUT_METHOD, REFERENCE_METHOD)}

    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    # largest first: the runs that matter most (and that evaluate reuses) finish first if time runs out
    for n in sorted(sizes, reverse=True):
        mv_set = SliceDataset(mv_src, hu_window=probe.hu_window, pixel_spacing_mm=probe.pixel_spacing_mm,
                              crop_size=probe.crop_size, augment=probe.augment, max_shift_px=probe.max_shift_px,
                              max_rotation_deg=probe.max_rotation_deg, seed=probe.seed,
                              min_body_fraction=probe.min_body_fraction, max_slices=n)
        for preset in presets:
            tag = f"{preset}-n{n}"
            run_dir = out / "runs" / tag
            model_path = out / "models" / f"{tag}.pt"
            cfg = TrainConfig.from_dict({**template, "preset": preset, "max_slices": n, "out_dir": str(run_dir)})
            t0 = time.perf_counter()
            if not _run_finished(run_dir) and not train_missing:
                say(f"skipping {tag}: not trained (or not finished)")
                skipped.append(tag)
                continue
            if not _run_finished(run_dir):
                cfg.resume = (run_dir / "checkpoint.pt").exists()
                say(f"training {tag} ({len(mv_set)} MV slices, {iterations} iterations"
                    f"{', resuming' if cfg.resume else ''})")
                train(cfg, mv_dataset=mv_set, kv_dataset=kv_set)
            if not model_path.exists():
                export_run(run_dir, model_path, name=f"datasize-study-{tag}", version="0.0.1",
                           intended_use="Training-set-size study of the evaluation only; reduced training, "
                                        "not for use on images.")
            train_s = time.perf_counter() - t0
            say(f"evaluating {tag}")
            from ..engine.modelfile import load_model

            model = {tag: load_model(model_path)}
            method = Method(tag, "model", model_path)
            for lc in loaded:
                r, _ = _case_rows(lc, [method], {}, model, ms, keep=False)
                rows.append({"preset": preset, "n_requested": n, "n_slices": len(mv_set), "case": lc.case.name,
                             **{k: r[0][k] for k in ("dig", "mae", "psnr", "ssim", "nselfssim")}})
            info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
            runs.append({"preset": preset, "n_requested": n, "n_slices": len(mv_set), "run": str(run_dir),
                         "model": str(model_path), "elapsed_s": info.get("elapsed_s"),
                         "seconds_this_call": train_s})
            write_csv(rows, out / "datasize.csv", fields=DATASIZE_FIELDS)  # partial results survive a stop
    record = {"data": str(data), "mv": mv_src, "kv": kv_src, "kv_slices": len(kv_set),
              "test_set": str(cases[0].mvct.parent), "cases": [c.name for c in cases], "sizes": sizes,
              "presets": list(presets), "config": {k: v for k, v in template.items() if k not in ("out_dir",)},
              "reduced": {"iterations": iterations, "crop_size": crop_size, "ngf": ngf, "ndf": ndf},
              "metric_settings": {"noise_sd": ms.noise_sd, "window": list(ms.window), "seed": ms.seed},
              "reference": reference, "runs": runs, "skipped": skipped, "command": command}
    record["summary"] = write_datasize_outputs(out, rows, record)
    write_json(json_safe(record), out / "datasize.json")
    return record


def _datasize_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["preset"], r["n_slices"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for preset, n in keys:
        sel = [r for r in rows if r["preset"] == preset and r["n_slices"] == n]
        entry: dict[str, Any] = {"preset": preset, "n_slices": n, "n_cases": len(sel)}
        for metric in ("dig", "mae", "psnr", "ssim", "nselfssim"):
            x = np.array([float(r[metric]) for r in sel], dtype=np.float64)
            x = x[np.isfinite(x)]
            entry[f"{metric}_mean"] = float(x.mean()) if x.size else math.nan
            entry[f"{metric}_sd"] = float(x.std(ddof=1)) if x.size > 1 else math.nan
        out.append(entry)
    return out


def write_datasize_outputs(out: Path, rows: Sequence[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """datasize_summary.csv, datasize.png (DIG, MAE and NSelfSSIM vs MV slices, one curve per preset), datasize.md."""
    summary = _datasize_summary(rows)
    fields = ["preset", "n_slices", "n_cases"] + [f"{m}_{s}" for m in ("dig", "mae", "psnr", "ssim", "nselfssim")
                                                  for s in ("mean", "sd")]
    write_csv(summary, out / "datasize_summary.csv", fields=fields)
    from .report import _plt, _save

    plt = _plt()
    panels = [("dig", "DIG (HU²/mm²), lower = anatomy kept"), ("mae", "MAE vs kV in body (HU)"),
              ("nselfssim", "NSelfSSIM (kV-like ≈ lower)")]
    if not any(math.isfinite(s["mae_mean"]) for s in summary):
        panels = [p for p in panels if p[0] != "mae"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ref = record.get("reference") or {}
    sizes = sorted({s["n_slices"] for s in summary})
    for ax, (metric, label) in zip(axes[0], panels):
        for preset, style in zip(sorted({s["preset"] for s in summary}), ("o-", "s--", "^-.")):
            sel = [s for s in summary if s["preset"] == preset]
            sem = [s[f"{metric}_sd"] / math.sqrt(s["n_cases"]) if math.isfinite(s[f"{metric}_sd"]) else 0.0
                   for s in sel]
            ax.errorbar([s["n_slices"] for s in sel], [s[f"{metric}_mean"] for s in sel], yerr=sem, fmt=style,
                        capsize=3, label=preset)
        for name, style in ((INPUT_METHOD, ":"), (REFERENCE_METHOD, "-.")):
            v = ref.get(name, {}).get(metric)
            if v is not None and math.isfinite(v) and not (metric == "dig" and name == INPUT_METHOD):
                ax.axhline(v, color="0.4", ls=style, lw=1, label=f"{name} (reference)")
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("MV training slices (kV set fixed)")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    red = record.get("reduced", {})
    fig.suptitle(f"mean ± SEM over {len(record.get('cases', []))} test cases; reduced training: "
                 f"{red.get('iterations')} iterations, {red.get('crop_size')} px crops, ngf {red.get('ngf')}",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, out / "datasize.png")
    L = ["# Training-set-size study", "",
         f"Proposed model and plain CycleGAN trained on N MV slices (nested subsets) against a fixed kV set of "
         f"{record.get('kv_slices')} slices, identical reduced settings for every run: {red.get('iterations')} "
         f"iterations, {red.get('crop_size')} px crops, ngf {red.get('ngf')}, ndf {red.get('ndf')} (CPU-sized; the "
         "talk's models were trained far longer at full size). Metrics on the held-out test set "
         f"({len(record.get('cases', []))} cases), inside the body mask of each MVCT.", ""]
    if record.get("command"):
        L += ["```", record["command"], "```", ""]
    for name in (INPUT_METHOD, REFERENCE_METHOD):
        r = ref.get(name) or {}
        if r:
            L.append(f"Reference, {name}: " + ", ".join(f"{METRIC_INFO[k]['label']} {v:.4g}" for k, v in r.items()
                                                        if math.isfinite(v)) + " (mean over the test cases).")
    L += ["", "| preset | MV slices | DIG mean ± SD (HU²/mm²) | MAE mean ± SD (HU) | NSelfSSIM mean ± SD |",
          "|---|---|---|---|---|"]
    for s in summary:
        L.append(f"| {s['preset']} | {s['n_slices']} | {s['dig_mean']:.4g} ± {s['dig_sd']:.3g} | "
                 f"{s['mae_mean']:.2f} ± {s['mae_sd']:.2f} | {s['nselfssim_mean']:.4f} ± {s['nselfssim_sd']:.4f} |")
    if record.get("skipped"):
        L += ["", f"Not trained when this report was written (left out): {', '.join(record['skipped'])}."]
    L += ["", "![data-size study](datasize.png)", "", "Per case: [datasize.csv](datasize.csv); settings and runs: "
          "[datasize.json](datasize.json).", ""]
    tmp = out / ".datasize.md.partial"
    tmp.write_text("\n".join(L), encoding="utf-8")
    os.replace(tmp, out / "datasize.md")
    return summary
