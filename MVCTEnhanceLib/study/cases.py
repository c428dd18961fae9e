"""The evaluation study: every method on every case of a test set, the talk's tables, and the
training-set-size study (``mvct-enhance evaluate`` and ``mvct-enhance study-datasize``).

Test-set folder convention (what :func:`find_cases` reads)::

    DIR/<case>_mvct.nrrd    the MVCT of a case (``<case>_mv.nrrd`` is accepted too: make-dataset's name)
    DIR/<case>_kv.nrrd      optional: its kV CT. On the MVCT's voxel grid it is the ground truth (MAE,
                            PSNR, SSIM are computed, and it is the "kv" reference row); on another grid
                            (an unregistered planning CT) only its NSelfSSIM is reported.
                            ``<case>_planning_ct.nrrd`` is accepted too.

Any volume format the engine writes (.nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd) works. A make-dataset
output folder (``manifest.json`` + ``test/``) can be given as it is: its ``test/`` folder is the
standard test set, and each ``shift/<name>/`` folder (same convention; described in the manifest's
``shift_sets``) is a simulator-shift set (:func:`resolve_sets`). Its ``validation/`` folder is what
the denoisers and calibrated baselines are tuned on; it is never evaluated.

Methods (``--methods``): ``mvct`` (the input itself), ``nlm``, ``tv``, ``bm3d`` (conventional
denoisers, see :mod:`denoisers`), ``calib``, ``calib+tv``, ``calib+nlm``, ``calib+bm3d`` (the MVCT
through the MV -> kV tissue calibration, alone or with a denoiser, see :mod:`baselines`), ``kv``
(the kV reference row), and ``NAME=MODEL_FILE`` for any model file the engine loads (e.g.
``proposed=Resources/models/mvctenhance-default.pt``).

Metrics per case and method, all inside one body mask per case (:func:`metrics.body_mask` of the
MVCT): NSelfSSIM, DIG and the tissue-change volume as :func:`metrics.assess` computes them, and, with
a ground truth, MAE, PSNR and SSIM in the SynthRAD convention (:mod:`metrics`) and the errors per
tissue (:mod:`scores`).
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

from ..engine.calibration import Calibration, tissue_calibration
from ..engine.errors import InputError
from ..engine.job import EnhanceSettings, run_enhance
from ..engine.metrics import BODY_THRESHOLD_HU, Assessment, assess, body_mask
from ..engine.modelfile import LoadedModel
from ..engine.volume import WRITE_EXTENSIONS, Volume, read_volume
from ..synth.phantoms import phantom_slice
from ..synth.simulate import SimulatorSettings, simulate
from .baselines import CALIBRATED_METHODS, calibrated_baseline
from .denoisers import TUNING_SLICES, bm3d_available, denoise
from .scores import ALL_METRICS, FULL_REFERENCE

MV_SUFFIXES = ("_mvct", "_mv")
KV_SUFFIXES = ("_planning_ct", "_kv")
INPUT_METHOD, REFERENCE_METHOD = "mvct", "kv"
DENOISER_METHODS = ("nlm", "tv", "bm3d")
BUILTIN_METHODS = (INPUT_METHOD, *DENOISER_METHODS, *CALIBRATED_METHODS, REFERENCE_METHOD)
CSV_NAME = "per_case.csv"
CSV_FIELDS = ("set", "case", "method", "kind", *ALL_METRICS, "seconds")
#: The name of the standard test set (a make-dataset folder's test/, or a plain folder of cases).
STANDARD_SET = "test"
SHIFT_PREFIX = "shift/"
#: A simulated validation case comes from phantom patients with seeds from here on: far above the
#: seeds make-dataset uses (checked against its manifest when there is one).
VALIDATION_SEED_BASE = 900_000
_GEOMETRY_TOL = 1e-4
#: A validation folder of single-slice cases (make-dataset's) gives up to this many of them, stacked:
#: the slices tuning looks at (:data:`denoisers.TUNING_SLICES`).
VALIDATION_SLICES = TUNING_SLICES

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

# --------------------------------------------------------------------------------------------------
# Sets: the standard test set and the simulator-shift sets of a make-dataset folder
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One set of cases: ``test`` (standard) or ``shift/<name>``, its folder and what it varies."""

    name: str
    folder: Path
    what: str = ""

    @property
    def slug(self) -> str:
        """The name in file names (``shift/noise45`` -> ``shift-noise45``)."""
        return self.name.replace("/", "-")


def is_dataset_folder(folder: str | os.PathLike) -> bool:
    """A make-dataset output: manifest.json beside test/."""
    return _dataset_subfolder(Path(folder), "test") is not None


def available_sets(folder: str | os.PathLike) -> list[EvalSet]:
    """Every evaluable set of a make-dataset folder: test/, then each shift/<name>/ (manifest order first)."""
    root = Path(folder)
    manifest, _ = _manifest_of(root)
    described = manifest.get("shift_sets") if isinstance(manifest, dict) else None
    described = described if isinstance(described, dict) else {}
    out = [EvalSet(STANDARD_SET, root / "test", "the standard test set (the training simulator's reference "
                                                 "settings)")]
    shift_dir = root / "shift"
    present = sorted(p.name for p in shift_dir.iterdir() if p.is_dir()) if shift_dir.is_dir() else []
    for name in [n for n in described if n in present] + [n for n in present if n not in described]:
        what = described.get(name, {}).get("what", "") if isinstance(described.get(name), dict) else ""
        out.append(EvalSet(f"{SHIFT_PREFIX}{name}", shift_dir / name, what))
    return out


def resolve_sets(test_set: str | os.PathLike, sets: str | Sequence[str] | None = None) -> list[EvalSet]:
    """The sets to evaluate, the standard test set first when it is among them.

    ``test_set`` a make-dataset folder: ``sets`` None or ``"all"`` gives test/ and every shift/<name>/;
    else a comma-separated string or list of ``test``, ``shift/<name>`` (or just ``<name>``).
    ``test_set`` any other folder: one set, named ``test`` (``shift/<name>`` when the folder is a
    make-dataset's shift/<name>/); ``sets`` must then be None.
    """
    root = Path(test_set)
    tokens = None if sets is None or sets == "all" else \
        [t.strip() for s in ([sets] if isinstance(sets, str) else sets) for t in str(s).split(",") if t.strip()]
    if tokens is not None and not tokens:
        raise InputError("no sets given; use e.g. --sets test,shift/noise45 or --all-sets")
    if not is_dataset_folder(root):
        name = f"{SHIFT_PREFIX}{root.name}" if root.parent.name == "shift" else STANDARD_SET
        if tokens is not None and tokens != [name]:
            raise InputError(f"--sets needs a make-dataset folder (manifest.json, test/, shift/); '{root}' is one "
                             "folder of cases: give the dataset folder, or each set's folder to its own evaluation")
        what = ""
        if name != STANDARD_SET:
            manifest, _ = _manifest_of(root.parent.parent)
            described = manifest.get("shift_sets") if isinstance(manifest, dict) else None
            info = described.get(root.name) if isinstance(described, dict) else None
            what = info.get("what", "") if isinstance(info, dict) else ""
        return [EvalSet(name, root, what)]
    avail = available_sets(root)
    if tokens is None:
        return avail
    by_name = {s.name: s for s in avail}
    chosen: list[EvalSet] = []
    for t in tokens:
        key = t.rstrip("/")
        if key == "validation":
            raise InputError("the validation set is what the denoisers are tuned on; it is never evaluated")
        if key not in by_name and f"{SHIFT_PREFIX}{key}" in by_name:
            key = f"{SHIFT_PREFIX}{key}"
        if key not in by_name:
            raise InputError(f"set '{t}' is not in '{root}' (sets: {', '.join(by_name)})")
        if by_name[key] in chosen:
            raise InputError(f"set '{t}' given twice")
        chosen.append(by_name[key])
    return sorted(chosen, key=lambda s: s.name != STANDARD_SET)


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    kind: str                  # "input", "denoiser", "calibrated", "model", "reference"
    model: Path | None = None


def parse_methods(specs: Sequence[str]) -> list[Method]:
    """``mvct``, ``nlm``, ``tv``, ``bm3d``, ``calib``, ``calib+tv``, ``calib+nlm``, ``calib+bm3d``, ``kv`` or
    ``NAME=MODEL_FILE``; commas also separate."""
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
        elif t.lower() in CALIBRATED_METHODS:
            if CALIBRATED_METHODS[t.lower()] == "bm3d" and not bm3d_available():
                raise InputError("method 'calib+bm3d' needs the optional 'bm3d' package (pip install bm3d==4.0.3; "
                                 "non-commercial licence); leave it out of --methods otherwise")
            methods.append(Method(t.lower(), "calibrated"))
        else:
            raise InputError(f"unknown method '{t}'; use mvct, nlm, tv, bm3d, calib, calib+tv, calib+nlm, "
                             "calib+bm3d, kv or NAME=MODEL_FILE")
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


def _single_slice(lc: LoadedCase) -> bool:
    return lc.mvct.array.shape[lc.mvct.axial_axis()] == 1


def _stacks_with(first: LoadedCase, other: LoadedCase) -> bool:
    """Whether ``other`` (a single slice) can join ``first``'s stack: same in-plane grid and direction."""
    return (_single_slice(first) and _single_slice(other) and other.mvct.array.shape == first.mvct.array.shape
            and np.allclose(other.mvct.spacing, first.mvct.spacing, rtol=0, atol=_GEOMETRY_TOL)
            and np.allclose(other.mvct.direction, first.mvct.direction, rtol=0, atol=_GEOMETRY_TOL))


def dataset_validation_folder(test_set: str | os.PathLike) -> Path | None:
    """The validation/ folder of the make-dataset folder that ``test_set`` is (or holds: test/, shift/<name>/)."""
    root = Path(test_set)
    return (_dataset_subfolder(root, "validation") or _dataset_subfolder(root.parent, "validation")
            or (_dataset_subfolder(root.parent.parent, "validation") if root.parent.name == "shift" else None))


def validation_case(test_set: str | os.PathLike, validation: str | os.PathLike | None,
                    test_cases: Sequence[Case], like: LoadedCase | None = None) -> tuple[LoadedCase, dict[str, Any]]:
    """The case the denoisers and calibrated baselines are tuned on; never one of ``test_cases`` (give
    the cases of every evaluated set: the standard test set and the shift sets).

    ``validation`` (a folder in the test-set convention; its first case with a registered kV) wins;
    else a make-dataset output's ``validation/`` folder; else a simulated case (see
    :func:`simulated_validation_case`). When the folder's cases are single slices (make-dataset's),
    the first :data:`VALIDATION_SLICES` with a kV on the same grid are stacked into one validation
    volume, so tuning sees as many slices as it uses on a volume.
    """
    test_files = {c.mvct.resolve() for c in test_cases} | {c.kv.resolve() for c in test_cases if c.kv}
    folder: Path | None = Path(validation) if validation is not None else None
    if folder is None:
        folder = dataset_validation_folder(test_set)
    if folder is not None:
        cases = find_cases(folder, what="validation")
        for c in cases:
            if c.mvct.resolve() in test_files or (c.kv and c.kv.resolve() in test_files):
                raise InputError(f"validation case '{c.name}' is also in the test set; tune on a separate case")
        usable: list[LoadedCase] = []
        for c in cases:
            loaded = load_case(c)
            if loaded.ground_truth is None:
                continue
            if usable and not _stacks_with(usable[0], loaded):
                continue
            usable.append(loaded)
            if not _single_slice(usable[0]) or len(usable) >= VALIDATION_SLICES:
                break
        if usable:
            first = usable[0]
            info = {"source": "folder", "folder": str(folder), "case": first.case.name, "mvct": str(first.case.mvct),
                    "kv": str(first.case.kv)}
            if len(usable) == 1:
                return first, info
            # single-slice cases (make-dataset's): up to VALIDATION_SLICES of them, stacked into one volume
            axis = first.mvct.axial_axis()
            name = "+".join(u.case.name for u in usable)
            mv = Volume(np.concatenate([u.mvct.array for u in usable], axis=axis), first.mvct.spacing,
                        first.mvct.origin, first.mvct.direction)
            gt = mv.with_array(np.concatenate([u.ground_truth.array for u in usable], axis=axis))
            info.update(case=name, cases=[u.case.name for u in usable], mvct=[str(u.case.mvct) for u in usable],
                        kv=[str(u.case.kv) for u in usable],
                        stacked=f"{len(usable)} single-slice validation cases stacked along the axial axis")
            return LoadedCase(Case(name, first.case.mvct, first.case.kv), mv, gt, gt), info
        raise InputError(f"validation folder '{folder}' has no case with a kV image on the MVCT's grid; the "
                         "denoisers are tuned against a ground truth")
    return simulated_validation_case(test_set, like=like)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

def study_calibration(settings: EnhanceSettings | None) -> Calibration:
    """The MV -> kV calibration of the calibrated baselines and of the tissue classes of non-model methods:
    the settings' (a clinic's) when given, else the ICRU tissue points."""
    if settings is not None and settings.calibration is not None:
        return Calibration.from_dict(settings.calibration, "the given calibration")
    return tissue_calibration()


def _produce(method: Method, lc: LoadedCase, tuned: dict[str, Any], models: dict[str, LoadedModel],
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
    elif method.kind == "calibrated":
        if CALIBRATED_METHODS[method.name] is not None and method.name not in tuned:
            raise InputError(f"method '{method.name}' is not tuned: tune it on a validation case first")
        out = calibrated_baseline(lc.mvct, method.name, tuned.get(method.name), calibration=study_calibration(settings))
    else:
        out = denoise(lc.mvct, method.name, tuned[method.name])
    seconds = time.perf_counter() - t0
    if out is None:
        return None, None, seconds
    ms = settings.metrics
    anchor = lc.mvct.with_array(study_calibration(settings).apply(lc.mvct.array))  # tissue classes, kV scale
    a = assess(lc.mvct, out, mask=mask, anchor=anchor, noise_sd=ms.noise_sd, window=ms.window, seed=ms.seed,
               device=settings.device)
    return out, a, seconds


def score_case(lc: LoadedCase, methods: Sequence[Method], tuned: dict[str, Any], models: dict[str, LoadedModel],
               settings: EnhanceSettings, keep: bool,
               set_name: str = STANDARD_SET) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metric rows of one case (each with its ``set``); with ``keep`` also its images and maps (for the figures)."""
    mask = body_mask(lc.mvct)
    if not mask.any():
        raise InputError(f"case '{lc.case.name}': no body in the MVCT (nothing above {BODY_THRESHOLD_HU:g} HU); "
                         "is it CT in HU?")
    ms = settings.metrics
    rows: list[dict[str, Any]] = []
    kept: dict[str, Any] = {"mask": mask, "images": {}, "dig": {}, "nselfssim": {}}
    for m in methods:
        row: dict[str, Any] = {"set": set_name, "case": lc.case.name, "method": m.name, "kind": m.kind,
                               **{k: math.nan for k in ALL_METRICS}, "seconds": math.nan}
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
            for k in (*ALL_METRICS, "seconds"):
                if k in row:
                    row[k] = float(row[k]) if row[k] not in ("", None) else math.nan
            out.append(row)
    return out


def values(rows: Sequence[dict[str, Any]], method: str, metric: str, cases: Sequence[str]) -> np.ndarray:
    by_case = {r["case"]: r.get(metric, math.nan) for r in rows if r["method"] == method}
    return np.array([float(by_case.get(c, math.nan)) for c in cases], dtype=np.float64)
