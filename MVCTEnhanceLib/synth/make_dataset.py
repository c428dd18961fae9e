"""The reproducible synthetic datasets: make-dataset and the shipped sample.

Dataset layout written by :func:`make_dataset` (all volumes int16 NRRD, HU):

    OUTDIR/manifest.json               every file, its anatomy source and the simulator settings
    OUTDIR/train_kv/kv_00000.nrrd ...  one axial slice per file (shape 1 x size x size), kV domain
    OUTDIR/train_mv/mv_00000.nrrd ...  one slice per file, simulated MVCT of OTHER anatomy
    OUTDIR/test/case_000_mv.nrrd       paired held-out cases: simulated MVCT ...
    OUTDIR/test/case_000_kv.nrrd       ... and its kV ground truth (same grid), anatomy in no training set
    OUTDIR/train_mv_clean/...          (--randomise) each MV training slice without noise and artefacts
    OUTDIR/validation/case_000_*.nrrd  (--validation N) paired cases of their own anatomy, for tuning
    OUTDIR/shift/<name>/case_000_*     (--shift-sets) the test anatomy under shifted simulator settings

One slice per file keeps the manifest exact (each file = one anatomy id) and lets a trainer take the
first N files, or the training loader's ``max_slices=N`` (``training.data.SliceDataset``), for
training-size experiments.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engine.errors import InputError, OutputError
from ..engine.files import read_json_object
from ..engine.volume import WRITE_EXTENSIONS, Volume, read_volume, write_volume
from . import augment, phantoms, realct
from . import randomise as randomise_mod
from .randomise import SHIFT_SETS
from .simulate import TRAINING_RANGES, SimulatorSettings, simulate, simulate_slice

_VOLUME_SUFFIXES = tuple(e for e in WRITE_EXTENSIONS)  # .dcm files are grouped into series folders


def is_volume_file(p: Path) -> bool:
    """A volume file this package writes (NRRD, NIfTI, MetaImage); DICOM files form series folders."""
    name = p.name.lower()
    return any(name.endswith(e) for e in _VOLUME_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# the shipped sample (Resources/sample)

#: Geometry of the sample: a planning-CT-like grid (0.98 x 0.98 x 3 mm) with a patient-like origin
#: and a 3-degree tilt about the left-right axis, so that geometry handling is exercised.
SAMPLE_SPACING = (0.98, 0.98, 3.0)
SAMPLE_TILT_DEG = 3.0
SAMPLE_ORIGIN = (-124.46, -139.27, -96.0)
SAMPLE_FILES = ("sample_planning_ct.nrrd", "sample_mvct.nrrd")


def sample_volumes(seed: int = 7, n_slices: int = 20, size: int = 256, noise_sd: float = 30.0,
                   t_start: float = 0.40) -> tuple[Volume, Volume, dict[str, Any]]:
    """(planning CT, simulated MVCT, description) of one phantom patient from the mandible down.

    Both volumes share one grid: the MVCT is the simulation of exactly the planning CT's anatomy.
    """

    a = np.deg2rad(SAMPLE_TILT_DEG)
    direction = (1.0, 0.0, 0.0, 0.0, math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a))
    kv = phantoms.phantom_stack(seed, n_slices=n_slices, t_start=t_start, slice_mm=SAMPLE_SPACING[2],
                                size=size, spacing_mm=SAMPLE_SPACING[0])
    kv_vol = Volume(np.rint(kv), SAMPLE_SPACING, SAMPLE_ORIGIN, direction)
    settings = SimulatorSettings(noise_sd=noise_sd)
    mv_vol = simulate(kv_vol, seed=seed, settings=settings)
    mv_vol = mv_vol.with_array(np.rint(mv_vol.array))
    info = {"kind": "phantom_stack", "patient_seed": int(seed), "t_start": t_start, "n_slices": n_slices,
            "simulator": settings.to_dict(), "simulator_seed": int(seed)}
    return kv_vol, mv_vol, info


def write_sample(outdir: str | os.PathLike, seed: int = 7, overwrite: bool = False, **kwargs: Any) -> dict[str, Path]:
    """Write sample_planning_ct.nrrd and sample_mvct.nrrd (int16, compressed) and sample.json."""
    out = Path(outdir)
    if not out.is_dir():
        raise OutputError(f"output folder '{out}' does not exist")
    paths = {"planning_ct": out / SAMPLE_FILES[0], "mvct": out / SAMPLE_FILES[1]}
    for p in paths.values():
        if p.exists() and not overwrite:
            raise OutputError(f"output '{p}' exists; use --overwrite (overwrite=True) to replace it")
    kv, mv, info = sample_volumes(seed=seed, **kwargs)
    write_volume(kv, paths["planning_ct"], dtype="int16", overwrite=overwrite)
    write_volume(mv, paths["mvct"], dtype="int16", overwrite=overwrite)
    info["files"] = {k: v.name for k, v in paths.items()}
    info["note"] = ("Synthetic head-and-neck patient (MVCTEnhanceLib.synth.phantoms) and its simulated MVCT "
                    "(MVCTEnhanceLib.synth.simulate); same grid, same anatomy. Not patient data.")
    meta = out / "sample.json"
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, meta)
    paths["description"] = meta
    return paths


# ---------------------------------------------------------------------------------------------
# make-dataset

DATASET_SCHEMA = "mvctenhance-dataset"
DATASET_SCHEMA_VERSION = 1
_POOLS = {"train_kv": 1, "train_mv": 2, "test": 3, "validation": 4}


def phantom_id(seed: int, pool: str, i: int) -> int:
    """Patient seed of item ``i`` of ``pool``: disjoint integer ranges per (dataset seed, pool)."""
    if not 0 <= i < 1_000_000:
        raise InputError(f"at most 1,000,000 items per set, got index {i}")
    return int(seed) * 10_000_000 + _POOLS[pool] * 1_000_000 + int(i)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _slice_volume(arr: np.ndarray, spacing_mm: float, slice_mm: float = 3.0) -> Volume:
    n = arr.shape[0]
    origin = (-(n - 1) / 2 * spacing_mm, -(n - 1) / 2 * spacing_mm, 0.0)
    return Volume(np.rint(arr)[None].astype(np.float32), (spacing_mm, spacing_mm, slice_mm), origin)


def _prepare_outdir(outdir: Path, overwrite: bool) -> Path:
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"output '{outdir}' is a file; give a folder")
    if outdir.exists() and any(outdir.iterdir()) and not overwrite:
        raise OutputError(f"output folder '{outdir}' is not empty; use --overwrite (overwrite=True) to replace it")
    if not outdir.parent.exists():
        raise OutputError(f"output folder '{outdir.parent}' does not exist")

    return Path(tempfile.mkdtemp(prefix=f".{outdir.name}.mvct-tmp-", dir=outdir.parent))


def make_dataset(outdir: str | os.PathLike, seed: int = 0, n_train_kv: int = 300, n_train_mv: int = 300,
                 n_test: int = 24, size: int = 256, spacing_mm: float = 1.0, noise_sd: float = 30.0,
                 real_augmentations: int = 3, overwrite: bool = False, randomise: bool = False,
                 n_validation: int = 0, shift_sets: bool = False, real_kv_augmentations: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the unpaired training sets and the paired test set (see the module docstring).

    Anatomy: every phantom slice is its own patient (:func:`phantom_id` gives disjoint seed ranges
    for kV training, MV training, validation and test). The real(-derived) CT slices (:mod:`realct`),
    each with ``real_augmentations`` augmented variants, go to the test set only, so no real patient
    is split between training and test; a separate real patient (``realct.load_training_real_slices``)
    may join the kV training pool with ``real_kv_augmentations`` variants.

    ``randomise``: MV training slices from randomised machines and body sizes, each with its clean
    twin (``train_mv_clean/``; :mod:`.randomise`), and kV training anatomy of random body sizes.
    ``n_validation``: paired validation cases (``validation/``, reference settings, own anatomy) for
    tuning and checkpoint selection. ``shift_sets``: the test anatomy (phantoms and the unaugmented
    real slices) again under every :data:`.randomise.SHIFT_SETS` setting (``shift/<name>/``). The
    folder is built beside ``outdir`` and moved into place when complete. Returns the manifest.
    """

    for name, n in (("n_train_kv", n_train_kv), ("n_train_mv", n_train_mv), ("n_test", n_test),
                    ("n_validation", n_validation), ("real_kv_augmentations", real_kv_augmentations)):
        if n < 0:
            raise InputError(f"{name} must be >= 0, got {n}")
    if size < 64:
        raise InputError(f"slice size must be at least 64 pixels, got {size}")
    if not (noise_sd >= 0 and spacing_mm > 0):
        raise InputError(f"noise SD must be >= 0 HU and spacing > 0 mm, got {noise_sd:g} and {spacing_mm:g}")
    out = Path(outdir)
    tmp = _prepare_outdir(out, overwrite)
    t_start = time.time()
    settings = SimulatorSettings(noise_sd=float(noise_sd))
    real = realct.load_real_slices() if real_augmentations >= 0 else []
    real_kv = realct.load_training_real_slices() if real_kv_augmentations > 0 else []
    n_real = len(real) * (1 + max(real_augmentations, 0))
    n_shift = len(SHIFT_SETS) * (n_test + len(real)) if shift_sets else 0
    total = (n_train_kv + n_train_mv + n_validation + n_test + n_real + n_shift
             + len(real_kv) * real_kv_augmentations)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def sim_seed(pool: str, i: int) -> int:
        return int(seed) * 10_000_000 + 9_000_000 + _POOLS[pool] * 100_000 + i

    def anatomy(pool: str, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        pid = phantom_id(seed, pool, i)
        if randomise and pool in ("train_kv", "train_mv"):
            return randomise_mod.training_anatomy(pid, size, spacing_mm)
        return phantoms.phantom_slice(pid, size=size, spacing_mm=spacing_mm)

    splits: dict[str, list[dict[str, Any]]] = {"train_kv": [], "train_mv": [], "test": []}
    try:
        for sub in ("train_kv", "train_mv", "test"):
            (tmp / sub).mkdir()
        for i in range(n_train_kv):
            img, info = anatomy("train_kv", i)
            rel = f"train_kv/kv_{i:05d}.nrrd"
            write_volume(_slice_volume(img, spacing_mm), tmp / rel, dtype="int16")
            splits["train_kv"].append({"file": rel, "domain": "kV", "anatomy_id": f"phantom:{phantom_id(seed, 'train_kv', i)}",
                                       "anatomy": info})
            tick()
        for r_i, rs in enumerate(real_kv):
            base = realct.to_grid(rs.hu, rs.spacing, size, spacing_mm)
            for a in range(real_kv_augmentations):
                params = augment.draw_params(int(seed) * 1000 + 500 + r_i * 100 + a)
                rel = f"train_kv/kv_real_{r_i:02d}_{a:03d}.nrrd"
                write_volume(_slice_volume(augment.augment_slice(base, params, spacing_mm), spacing_mm), tmp / rel,
                             dtype="int16")
                splits["train_kv"].append({"file": rel, "domain": "kV", "anatomy_id": f"real:{rs.patient}",
                                           "anatomy": {**rs.describe(), "augmentation": params}})
                tick()
        if randomise:
            (tmp / "train_mv_clean").mkdir()
        for i in range(n_train_mv):
            img, info = anatomy("train_mv", i)
            s = sim_seed("train_mv", i)
            rel = f"train_mv/mv_{i:05d}.nrrd"
            entry = {"file": rel, "domain": "MV", "anatomy_id": f"phantom:{phantom_id(seed, 'train_mv', i)}",
                     "anatomy": info, "simulator_seed": s}
            if randomise:
                mv_arr, clean_arr, machine = randomise_mod.simulate_training_slice(img, spacing_mm, s)
                volume = _slice_volume(img, spacing_mm)
                write_volume(volume.with_array(np.rint(mv_arr)[None]), tmp / rel, dtype="int16")
                entry["clean"] = f"train_mv_clean/mv_{i:05d}.nrrd"
                write_volume(volume.with_array(np.rint(clean_arr)[None]), tmp / entry["clean"], dtype="int16")
                entry["simulator"] = machine
            else:
                write_volume(simulate(_slice_volume(img, spacing_mm), seed=s, settings=settings), tmp / rel,
                             dtype="int16")
            splits["train_mv"].append(entry)
            tick()

        def paired(split: str, folder: str, cases: list[tuple[np.ndarray, str, dict[str, Any]]],
                   simulate_case: Callable[[Volume, int], Volume], seed_pool: str) -> None:
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            splits.setdefault(split, [])
            for c, (img, aid, info) in enumerate(cases):
                kv_vol = _slice_volume(img, spacing_mm)
                s = sim_seed(seed_pool, c)
                mv = simulate_case(kv_vol, s)
                rel_kv, rel_mv = f"{folder}/case_{c:03d}_kv.nrrd", f"{folder}/case_{c:03d}_mv.nrrd"
                write_volume(kv_vol, tmp / rel_kv, dtype="int16")
                write_volume(mv, tmp / rel_mv, dtype="int16")
                splits[split].append({"case": f"case_{c:03d}", "kv": rel_kv, "mv": rel_mv, "anatomy_id": aid,
                                      "anatomy": info, "simulator_seed": s})
                tick()

        def reference(kv_vol: Volume, s: int) -> Volume:
            return simulate(kv_vol, seed=s, settings=settings)

        if n_validation:
            val_cases = []
            for i in range(n_validation):
                img, info = phantoms.phantom_slice(phantom_id(seed, "validation", i), size=size, spacing_mm=spacing_mm)
                val_cases.append((img, f"phantom:{phantom_id(seed, 'validation', i)}", info))
            paired("validation", "validation", val_cases, reference, "validation")
        cases: list[tuple[np.ndarray, str, dict[str, Any]]] = []
        for i in range(n_test):
            pid = phantom_id(seed, "test", i)
            img, info = phantoms.phantom_slice(pid, size=size, spacing_mm=spacing_mm)
            cases.append((img, f"phantom:{pid}", info))
        unaugmented = list(cases)
        for r_i, rs in enumerate(real):
            base = realct.to_grid(rs.hu, rs.spacing, size, spacing_mm)
            cases.append((base, f"real:{rs.patient}", {**rs.describe(), "augmentation": None}))
            unaugmented.append(cases[-1])
            for a in range(max(real_augmentations, 0)):
                params = augment.draw_params(int(seed) * 1000 + r_i * 100 + a)
                img = augment.augment_slice(base, params, spacing_mm)
                cases.append((img, f"real:{rs.patient}", {**rs.describe(), "augmentation": params}))
        paired("test", "test", cases, reference, "test")
        shift_info = {}
        if shift_sets:
            for name, (what, shift_simulate, how) in SHIFT_SETS.items():
                prepared = [(randomise_mod.prepare_anatomy(img, how, sim_seed("test", c), spacing_mm), aid,
                             {**info, "prepared": how}) for c, (img, aid, info) in enumerate(unaugmented)]

                def run(kv_vol: Volume, s: int, fn: Callable = shift_simulate) -> Volume:
                    return kv_vol.with_array(np.rint(fn(kv_vol.array[0], spacing_mm, s))[None])

                paired(f"shift_{name}", f"shift/{name}", prepared, run, "test")
                shift_info[name] = {"what": what, "anatomy": how, "simulator": shift_simulate.settings}
        for entries in splits.values():
            for e in entries:
                for key in ("file", "kv", "mv", "clean"):
                    if key in e:
                        e[f"sha256_{key}" if key != "file" else "sha256"] = _sha256(tmp / e[key])
        manifest = {
            "schema": DATASET_SCHEMA,
            "schema_version": DATASET_SCHEMA_VERSION,
            "created_by": "MVCTEnhanceLib.synth.make_dataset.make_dataset",
            "parameters": {"seed": int(seed), "n_train_kv": n_train_kv, "n_train_mv": n_train_mv,
                           "n_test_phantom": n_test, "real_augmentations": real_augmentations,
                           "size": size, "spacing_mm": spacing_mm, "noise_sd": noise_sd, "randomise": randomise,
                           "n_validation": n_validation, "shift_sets": shift_sets,
                           "real_kv_augmentations": real_kv_augmentations},
            "simulator": settings.to_dict(),
            "training_ranges": ({"machine": {k: list(v) for k, v in TRAINING_RANGES.items()},
                                 "kernels": list(randomise_mod.KERNELS), "views": list(randomise_mod.VIEWS),
                                 "body_mm": list(randomise_mod.BODY_MM),
                                 "hard_cut_probability": randomise_mod.HARD_CUT_PROBABILITY} if randomise else None),
            "shift_sets": shift_info or None,
            "layout": ("one axial slice per int16 NRRD (1 x size x size, HU); train_kv and train_mv are "
                       "unpaired and from disjoint anatomy (train_mv_clean/: each MV slice without noise and "
                       "artefacts); test/, validation/ and shift/<name>/: case_NNN_mv.nrrd pairs with "
                       "case_NNN_kv.nrrd (its kV ground truth, same grid)"),
            "anatomy_policy": ("each phantom slice is a distinct synthetic patient; seed ranges per split "
                               "are disjoint (phantom_id); real(-derived) CT slices and their augmentations "
                               "are in the test and shift sets only, except one other real patient that may be "
                               "in train_kv; shift sets reuse the test anatomy"),
            "counts": {k: len(v) for k, v in splits.items()},
            "splits": splits,
            "seconds": None,
        }
        manifest["seconds"] = round(time.time() - t_start, 1)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            backup = out.parent / f".{out.name}.mvct-old-{os.getpid()}"
            os.replace(out, backup)
            os.replace(tmp, out)

            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(outdir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a dataset folder (InputError when missing or not a dataset manifest)."""
    p = Path(outdir) / "manifest.json"
    if not p.is_file():
        raise InputError(f"'{outdir}' has no manifest.json; is it a folder written by make-dataset?")
    m = read_json_object(p, "dataset manifest")
    if m.get("schema") != DATASET_SCHEMA:
        raise InputError(f"'{p}' is not a make-dataset manifest (schema {m.get('schema')!r})")
    return m


def verify_dataset(outdir: str | os.PathLike, check_pixels: bool = True) -> list[str]:
    """Problems of a dataset folder (empty list = sound): manifest vs files (existence, sha256, no
    unlisted volumes), anatomy disjointness between train_kv, train_mv and test by anatomy id, and,
    with ``check_pixels``, no test kV slice identical to a training kV slice."""
    out = Path(outdir)
    m = read_manifest(out)
    problems: list[str] = []
    listed: set[str] = set()
    ids: dict[str, set[str]] = {}
    for split, entries in m["splits"].items():
        ids[split] = {e["anatomy_id"] for e in entries}
        if m["counts"].get(split) != len(entries):
            problems.append(f"{split}: manifest count {m['counts'].get(split)} != {len(entries)} entries")
        for e in entries:
            for key, hkey in (("file", "sha256"), ("kv", "sha256_kv"), ("mv", "sha256_mv"), ("clean", "sha256_clean")):
                if key not in e:
                    continue
                listed.add(e[key])
                f = out / e[key]
                if not f.is_file():
                    problems.append(f"{e[key]} is in the manifest but missing")
                elif _sha256(f) != e.get(hkey):
                    problems.append(f"{e[key]} does not match its sha256 in the manifest")
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and is_volume_file(p)}
    for extra in sorted(on_disk - listed):
        problems.append(f"{extra} is not in the manifest")
    names = sorted(ids)
    evaluation = {n for n in names if n == "test" or n.startswith("shift_")}  # the same anatomy by design
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = ids[a] & ids[b]
            if shared and not (a in evaluation and b in evaluation):
                problems.append(f"anatomy shared by {a} and {b}: {sorted(shared)[:5]}")
    if check_pixels and not problems:
        def digest(arr: np.ndarray) -> str:
            return hashlib.sha256(np.ascontiguousarray(arr, np.float32).tobytes()).hexdigest()

        train = {digest(read_volume(out / e["file"]).array): e["file"] for e in m["splits"].get("train_kv", [])}
        for e in [e for split in evaluation | {"validation"} for e in m["splits"].get(split, [])]:
            hit = train.get(digest(read_volume(out / e["kv"]).array))
            if hit:
                problems.append(f"test kV {e['kv']} is identical to training slice {hit}")
    return problems


def write_montage(path: str | os.PathLike, seed: int = 0, noise_sd: float = 30.0,
                  window: tuple[float, float] = (-300.0, 500.0), overwrite: bool = False) -> Path:
    """PNG with kV slices (top row) above their simulated MVCT (bottom row): phantom levels from
    cranium to neck and the real(-derived) CT slices, so a person can see the two domains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(f"output '{p}' exists; use overwrite=True to replace it")
    columns: list[tuple[str, np.ndarray]] = []
    for t, label in ((0.08, "cranium"), (0.3, "maxillary sinuses"), (0.46, "teeth, mandible"), (0.85, "neck")):
        img, _ = phantoms.phantom_slice(1000 + int(seed), t=t)
        columns.append((f"phantom {1000 + int(seed)}: {label}", img))
    for rs in realct.load_real_slices()[:3]:
        columns.append((rs.name.split("/")[-1] + (" (hybrid)" if "hybrid" in rs.kind else ""),
                        realct.to_grid(rs.hu, rs.spacing)))
    settings = SimulatorSettings(noise_sd=noise_sd)
    fig, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 5.6))
    for j, (label, img) in enumerate(columns):
        mv = simulate_slice(img, (1.0, 1.0), settings, np.random.default_rng([int(seed), j]))
        for i, (im, row) in enumerate(((img, "kV"), (mv, "simulated MV"))):
            ax = axes[i, j]
            ax.imshow(im, cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=7)
            if j == 0:
                ax.set_ylabel(row)
    fig.suptitle(f"kV CT (top) and simulated MVCT (bottom, noise {noise_sd:g} HU, {settings.version}); "
                 f"window {window[0]:g}..{window[1]:g} HU", fontsize=9)
    fig.tight_layout()
    tmp = p.with_name(p.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, p)
    return p
