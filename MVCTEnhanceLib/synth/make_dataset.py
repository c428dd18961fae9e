"""Training data: the reproducible synthetic datasets (make-dataset, the shipped sample) and the
unpaired slice loader the trainer uses.

Dataset layout written by :func:`make_dataset` (all volumes int16 NRRD, HU):

    OUTDIR/manifest.json               every file, its anatomy source and the simulator settings
    OUTDIR/train_kv/kv_00000.nrrd ...  one axial slice per file (shape 1 x size x size), kV domain
    OUTDIR/train_mv/mv_00000.nrrd ...  one slice per file, simulated MVCT of OTHER anatomy
    OUTDIR/test/case_000_mv.nrrd       paired held-out cases: simulated MVCT ...
    OUTDIR/test/case_000_kv.nrrd       ... and its kV ground truth (same grid), anatomy in no training set

One slice per file keeps the manifest exact (each file = one anatomy id) and lets a trainer take the
first N files, or :class:`SliceDataset` ``max_slices=N``, for training-size experiments.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..engine.errors import InputError, OutputError
from ..engine.files import read_json_object
from ..engine.volume import WRITE_EXTENSIONS, Volume, read_volume, write_volume

BODY_THRESHOLD_HU = -400.0
_VOLUME_SUFFIXES = tuple(e for e in WRITE_EXTENSIONS)  # .dcm files are grouped into series folders


# ---------------------------------------------------------------------------------------------
# sources

def _is_volume_file(p: Path) -> bool:
    name = p.name.lower()
    return any(name.endswith(e) for e in _VOLUME_SUFFIXES)


def _folder_has_dicom(folder: Path, files: list[str]) -> bool:
    if any(f.lower().endswith(".dcm") for f in files):
        return True
    plain = [f for f in files if "." not in f]
    if not plain:
        return False
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def list_volume_sources(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Volume files (NRRD, NIfTI, MetaImage) and DICOM series folders under ``paths``, recursively.

    A file given explicitly is taken as is (a single .dcm included). A folder holding DICOM files is
    one source (each of its series is read). Raises :class:`InputError` for a path that does not
    exist and for a folder with no volume in it ("empty domain").
    """
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"training source '{p}' does not exist")
        if p.is_file():
            found.append(p)
            continue
        here: list[Path] = []
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files = sorted(f for f in files if not f.startswith("."))
            folder = Path(root)
            here.extend(folder / f for f in files if _is_volume_file(folder / f))
            if _folder_has_dicom(folder, files):
                here.append(folder)
        if not here:
            raise InputError(f"empty domain: no volumes (NRRD, NIfTI, MetaImage or DICOM series) found in '{p}'")
        found.extend(here)
    seen: set[Path] = set()
    unique = []
    for f in found:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique


def _read_source(path: Path) -> list[Volume]:
    """All volumes of a source: one for a file, one per DICOM series for a folder."""
    if path.is_file():
        return [read_volume(path)]
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)) or ()
    if not ids:
        raise InputError(f"folder '{path}' holds no readable DICOM series")
    return [read_volume(path, series_uid=uid) for uid in ids]


# ---------------------------------------------------------------------------------------------
# slices

def _body_mask(hu: np.ndarray) -> np.ndarray:
    """Largest connected region above -400 HU (the patient; the couch and noise specks drop out)."""
    m = hu > BODY_THRESHOLD_HU
    if not m.any():
        return m
    m = ndimage.binary_opening(m, iterations=2)
    lab, n = ndimage.label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def hu_to_net(hu: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """HU -> [-1, 1]: the model card's mapping (lo -> -1, hi -> +1, clipped)."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    a = 2.0 / (hi - lo)
    b = -1.0 - a * lo
    return np.clip(a * np.asarray(hu, np.float32) + b, -1.0, 1.0).astype(np.float32)


class SliceDataset(torch.utils.data.Dataset):
    """Axial slices containing body from volumes of ONE domain, as (1, crop, crop) float32 in [-1, 1].

    Slices are read once, resampled in-plane to ``pixel_spacing_mm`` (row, col), windowed to
    ``hu_window`` and kept in memory. Each item is a crop around the body: when the body is larger
    than the crop the crop position is random within it, then shifted by up to ``max_shift_px`` and
    rotated by up to ``max_rotation_deg`` (paper: +-4 px; +-20 px and +-20 deg in its head-and-neck
    example). With probability ``field_truncation`` the crop is then cut to a random rectangular
    or elliptical field around part of the body (see :meth:`_truncate`). Randomness depends only on
    (seed, epoch, index): reproducible with any number of workers. With ``augment=False`` the crop
    is centred on the body, no shift, no rotation, no truncation.
    """

    def __init__(self, sources: Sequence[str | os.PathLike], hu_window: tuple[float, float],
                 pixel_spacing_mm: tuple[float, float] = (1.0, 1.0), crop_size: int = 256,
                 augment: bool = True, max_shift_px: int = 4, max_rotation_deg: float = 0.0,
                 seed: int = 0, min_body_fraction: float = 0.05, max_slices: int | None = None,
                 field_truncation: float = 0.0):
        lo, hi = float(hu_window[0]), float(hu_window[1])
        if not hi > lo:
            raise InputError(f"HU window must be [low, high] with low < high, got {hu_window!r}")
        if len(pixel_spacing_mm) != 2 or min(pixel_spacing_mm) <= 0:
            raise InputError(f"pixel spacing must be two positive numbers (mm), got {pixel_spacing_mm!r}")
        if crop_size < 2 * max_shift_px + 8:
            raise InputError(f"crop size {crop_size} is too small for shifts of {max_shift_px} px")
        if max_slices is not None and max_slices < 1:
            raise InputError(f"max_slices must be at least 1, got {max_slices}")
        if not 0.0 <= float(field_truncation) <= 1.0:
            raise InputError(f"field truncation is a probability in [0, 1], got {field_truncation}")
        self.field_truncation = float(field_truncation)
        self.hu_window = (lo, hi)
        self.pixel_spacing_mm = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
        self.crop_size = int(crop_size)
        self.augment = bool(augment)
        self.max_shift_px = int(max_shift_px)
        self.max_rotation_deg = float(max_rotation_deg)
        self.seed = int(seed)
        self.min_body_fraction = float(min_body_fraction)
        self.max_slices = max_slices
        self.epoch = 0
        self.air_value = float(hu_to_net(np.array([-1000.0]), self.hu_window)[0])

        self.sources = list_volume_sources(sources)
        if not self.sources:
            raise InputError("empty domain: no training sources given")
        self._slices: list[np.ndarray] = []
        self._bodies: list[np.ndarray] = []   # (n_body_px, 2) row/col of body pixels
        self._bbox: list[tuple[int, int, int, int]] = []
        self._origin: list[tuple[int, int]] = []  # (source index, slice index) per item
        self.n_volumes = 0
        self.n_slices_read = 0
        for si, src in enumerate(self.sources):
            for vol in _read_source(src):
                self.n_volumes += 1
                self._add_volume(vol, si)
        if not self._slices:
            raise InputError(f"empty domain: no slice with at least {self.min_body_fraction:.0%} body "
                             f"(> {BODY_THRESHOLD_HU:g} HU) in {len(self.sources)} source(s), e.g. '{self.sources[0]}'")
        if max_slices is not None and max_slices < len(self._slices):
            # nested subsets for the same seed: the first N of one seeded permutation
            order = np.random.default_rng([self.seed, 0x5E1]).permutation(len(self._slices))[:max_slices]
            keep = sorted(int(i) for i in order)
            self._slices = [self._slices[i] for i in keep]
            self._bodies = [self._bodies[i] for i in keep]
            self._bbox = [self._bbox[i] for i in keep]
            self._origin = [self._origin[i] for i in keep]

    def _add_volume(self, vol: Volume, source_index: int) -> None:
        axis = vol.axial_axis()
        arr = np.moveaxis(vol.array, axis, 0)
        sp = vol.inplane_spacing(axis)
        zoom = (sp[0] / self.pixel_spacing_mm[0], sp[1] / self.pixel_spacing_mm[1])
        resample = abs(zoom[0] - 1) > 1e-3 or abs(zoom[1] - 1) > 1e-3
        for k in range(arr.shape[0]):
            self.n_slices_read += 1
            hu = np.asarray(arr[k], np.float32)
            if resample:
                hu = ndimage.zoom(hu, zoom, order=1, mode="nearest", grid_mode=True)
            body = _body_mask(hu)
            if body.mean() < self.min_body_fraction:
                continue
            rows, cols = np.nonzero(body)
            self._slices.append(hu_to_net(hu, self.hu_window))
            self._bodies.append(np.stack((rows, cols), 1).astype(np.int32)[:: max(1, len(rows) // 4096)])
            self._bbox.append((int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())))
            self._origin.append((source_index, k))

    def __len__(self) -> int:
        return len(self._slices)

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation: item i of epoch e always gets the same crop, shift and rotation."""
        self.epoch = int(epoch)

    def _centre(self, i: int, rng: np.random.Generator | None) -> tuple[float, float]:
        r0, r1, c0, c1 = self._bbox[i]
        half = self.crop_size / 2.0
        centre = []
        for lo, hi in ((r0, r1), (c0, c1)):
            if rng is None or hi - lo + 1 <= self.crop_size:
                centre.append((lo + hi) / 2.0)
            else:
                centre.append(float(rng.uniform(lo + half, hi + 1 - half)))
        return centre[0], centre[1]

    def _crop(self, img: np.ndarray, centre: tuple[float, float], angle_deg: float) -> np.ndarray:
        n = self.crop_size
        if angle_deg == 0.0:
            r0 = int(math.floor(centre[0] - n / 2 + 0.5))
            c0 = int(math.floor(centre[1] - n / 2 + 0.5))
            out = np.full((n, n), self.air_value, np.float32)
            rs, cs = max(r0, 0), max(c0, 0)
            re, ce = min(r0 + n, img.shape[0]), min(c0 + n, img.shape[1])
            if re > rs and ce > cs:
                out[rs - r0:re - r0, cs - c0:ce - c0] = img[rs:re, cs:ce]
            return out
        a = np.deg2rad(angle_deg)
        u = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
        vv, uu = np.meshgrid(u, u, indexing="ij")
        rr = centre[0] + vv * np.cos(a) - uu * np.sin(a)
        cc = centre[1] + vv * np.sin(a) + uu * np.cos(a)
        return ndimage.map_coordinates(img, [rr, cc], order=1, mode="constant",
                                       cval=self.air_value).astype(np.float32)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        img = self._slices[i]
        body_level = float(hu_to_net(np.array([BODY_THRESHOLD_HU]), self.hu_window)[0])
        if not self.augment:
            out = self._crop(img, self._centre(i, None), 0.0)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            angle = 0.0
            if self.max_rotation_deg > 0:
                angle = float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
            r, c = self._centre(i, rng)
            shift = rng.integers(-self.max_shift_px, self.max_shift_px + 1, size=2)
            out = self._crop(img, (r + shift[0], c + shift[1]), angle)
            if not (out > body_level).any():
                # the crop missed the body (a concave outline larger than the crop): centre it on
                # a random body pixel instead, which always lies inside the crop
                rc = self._bodies[i][rng.integers(len(self._bodies[i]))]
                out = self._crop(img, (float(rc[0]), float(rc[1])), angle)
            if self.field_truncation > 0 and rng.uniform() < self.field_truncation:
                out = self._truncate(out, body_level, rng)
        return torch.from_numpy(out)[None]

    def _truncate(self, out: np.ndarray, body_level: float, rng: np.random.Generator) -> np.ndarray:
        """Keep a random field (rectangle or ellipse, 40..70 % of the crop, centred on a body pixel)
        and make the rest air.

        Why: a model that has only seen whole bodies invents bone along the straight edges of a
        small or truncated field (found on validation phantoms cut to a square: MAE 92 -> 475 HU).
        The new air is drawn from this image's own air pixels (so MVCT noise stays MVCT-like, kV air
        stays clean), and the field edge is softened by ~1 px as a reconstructed edge is.
        """
        n = out.shape[0]
        body = out > body_level
        rows, cols = np.nonzero(body)
        if rows.size == 0:
            return out
        k = int(rng.integers(rows.size))
        r, c = float(rows[k]), float(cols[k])
        hr, hc = rng.uniform(0.2, 0.35, size=2) * n
        rr, cc = np.ogrid[:n, :n]
        if rng.uniform() < 0.5:
            keep = ((np.abs(rr - r) <= hr) & (np.abs(cc - c) <= hc)).astype(np.float32)
        else:
            keep = ((((rr - r) / hr) ** 2 + ((cc - c) / hc) ** 2) <= 1.0).astype(np.float32)
        air_px = out[~ndimage.binary_dilation(body, iterations=8)]
        if air_px.size < 64:  # no air in the crop to copy noise from: clean air
            air = np.full_like(out, self.air_value)
        else:
            air = rng.choice(air_px, size=out.shape).astype(np.float32)
        keep = ndimage.gaussian_filter(keep, 0.7)
        return (keep * out + (1.0 - keep) * air).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description for the model card's training_data."""
        return {
            "n_volumes": self.n_volumes,
            "n_slices": len(self),
            "n_slices_read": self.n_slices_read,
            "sources": [str(s) for s in self.sources],
            "pixel_spacing_mm": list(self.pixel_spacing_mm),
            "hu_window": list(self.hu_window),
            "crop_size": self.crop_size,
            "augment": self.augment,
            "max_shift_px": self.max_shift_px,
            "max_rotation_deg": self.max_rotation_deg,
            "field_truncation": self.field_truncation,
            "min_body_fraction": self.min_body_fraction,
            "body_threshold_hu": BODY_THRESHOLD_HU,
            "max_slices": self.max_slices,
            "seed": self.seed,
        }


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
    from . import phantoms
    from .simulate import SimulatorSettings, simulate

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
_POOLS = {"train_kv": 1, "train_mv": 2, "test": 3}


def phantom_id(seed: int, pool: str, i: int) -> int:
    """Patient seed of item ``i`` of ``pool``: disjoint integer ranges per (dataset seed, pool)."""
    if not 0 <= i < 1_000_000:
        raise InputError(f"at most 1,000,000 items per set, got index {i}")
    return int(seed) * 10_000_000 + _POOLS[pool] * 1_000_000 + int(i)


def _sha256(path: Path) -> str:
    import hashlib

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
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f".{outdir.name}.mvct-tmp-", dir=outdir.parent))


def make_dataset(outdir: str | os.PathLike, seed: int = 0, n_train_kv: int = 300, n_train_mv: int = 300,
                 n_test: int = 24, size: int = 256, spacing_mm: float = 1.0, noise_sd: float = 30.0,
                 real_augmentations: int = 3, overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the unpaired training sets and the paired test set (see the module docstring).

    Anatomy: every phantom slice is its own patient (:func:`phantom_id` gives disjoint seed ranges
    for kV training, MV training and test). The real(-derived) CT slices (:mod:`realct`), each
    with ``real_augmentations`` augmented variants, go to the test set only, so no real patient is
    split between training and test. The folder is built beside ``outdir`` and moved into place
    when complete. Returns the manifest (also written as manifest.json).
    """
    from . import augment
    from . import phantoms
    from . import realct
    from .simulate import SimulatorSettings, simulate

    for name, n in (("n_train_kv", n_train_kv), ("n_train_mv", n_train_mv), ("n_test", n_test)):
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
    n_real = len(real) * (1 + max(real_augmentations, 0))
    total = n_train_kv + n_train_mv + n_test + n_real
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def sim_seed(pool: str, i: int) -> int:
        return int(seed) * 10_000_000 + 9_000_000 + _POOLS[pool] * 100_000 + i

    splits: dict[str, list[dict[str, Any]]] = {"train_kv": [], "train_mv": [], "test": []}
    try:
        for sub in ("train_kv", "train_mv", "test"):
            (tmp / sub).mkdir()
        for i in range(n_train_kv):
            pid = phantom_id(seed, "train_kv", i)
            img, info = phantoms.phantom_slice(pid, size=size, spacing_mm=spacing_mm)
            rel = f"train_kv/kv_{i:05d}.nrrd"
            write_volume(_slice_volume(img, spacing_mm), tmp / rel, dtype="int16")
            splits["train_kv"].append({"file": rel, "domain": "kV", "anatomy_id": f"phantom:{pid}", "anatomy": info})
            tick()
        for i in range(n_train_mv):
            pid = phantom_id(seed, "train_mv", i)
            img, info = phantoms.phantom_slice(pid, size=size, spacing_mm=spacing_mm)
            s = sim_seed("train_mv", i)
            mv = simulate(_slice_volume(img, spacing_mm), seed=s, settings=settings)
            rel = f"train_mv/mv_{i:05d}.nrrd"
            write_volume(mv, tmp / rel, dtype="int16")
            splits["train_mv"].append({"file": rel, "domain": "MV", "anatomy_id": f"phantom:{pid}",
                                       "anatomy": info, "simulator_seed": s})
            tick()
        cases: list[tuple[np.ndarray, str, dict[str, Any]]] = []
        for i in range(n_test):
            pid = phantom_id(seed, "test", i)
            img, info = phantoms.phantom_slice(pid, size=size, spacing_mm=spacing_mm)
            cases.append((img, f"phantom:{pid}", info))
        for r_i, rs in enumerate(real):
            base = realct.to_grid(rs.hu, rs.spacing, size, spacing_mm)
            cases.append((base, f"real:{rs.patient}", {**rs.describe(), "augmentation": None}))
            for a in range(max(real_augmentations, 0)):
                params = augment.draw_params(int(seed) * 1000 + r_i * 100 + a)
                img = augment.augment_slice(base, params, spacing_mm)
                cases.append((img, f"real:{rs.patient}", {**rs.describe(), "augmentation": params}))
        for c, (img, aid, info) in enumerate(cases):
            kv_vol = _slice_volume(img, spacing_mm)
            s = sim_seed("test", c)
            mv = simulate(kv_vol, seed=s, settings=settings)
            rel_kv, rel_mv = f"test/case_{c:03d}_kv.nrrd", f"test/case_{c:03d}_mv.nrrd"
            write_volume(kv_vol, tmp / rel_kv, dtype="int16")
            write_volume(mv, tmp / rel_mv, dtype="int16")
            splits["test"].append({"case": f"case_{c:03d}", "kv": rel_kv, "mv": rel_mv, "anatomy_id": aid,
                                   "anatomy": info, "simulator_seed": s})
            tick()
        for entries in splits.values():
            for e in entries:
                for key in ("file", "kv", "mv"):
                    if key in e:
                        e[f"sha256_{key}" if key != "file" else "sha256"] = _sha256(tmp / e[key])
        manifest = {
            "schema": DATASET_SCHEMA,
            "schema_version": DATASET_SCHEMA_VERSION,
            "created_by": "MVCTEnhanceLib.synth.make_dataset.make_dataset",
            "parameters": {"seed": int(seed), "n_train_kv": n_train_kv, "n_train_mv": n_train_mv,
                           "n_test_phantom": n_test, "real_augmentations": real_augmentations,
                           "size": size, "spacing_mm": spacing_mm, "noise_sd": noise_sd},
            "simulator": settings.to_dict(),
            "layout": ("one axial slice per int16 NRRD (1 x size x size, HU); train_kv and train_mv are "
                       "unpaired and from disjoint anatomy; test/case_NNN_mv.nrrd pairs with "
                       "test/case_NNN_kv.nrrd (its kV ground truth, same grid)"),
            "anatomy_policy": ("each phantom slice is a distinct synthetic patient; seed ranges per split "
                               "are disjoint (phantom_id); real(-derived) CT slices and their augmentations "
                               "are in the test set only"),
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
            import shutil

            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        import shutil

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
            for key, hkey in (("file", "sha256"), ("kv", "sha256_kv"), ("mv", "sha256_mv")):
                if key not in e:
                    continue
                listed.add(e[key])
                f = out / e[key]
                if not f.is_file():
                    problems.append(f"{e[key]} is in the manifest but missing")
                elif _sha256(f) != e.get(hkey):
                    problems.append(f"{e[key]} does not match its sha256 in the manifest")
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and _is_volume_file(p)}
    for extra in sorted(on_disk - listed):
        problems.append(f"{extra} is not in the manifest")
    names = sorted(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = ids[a] & ids[b]
            if shared:
                problems.append(f"anatomy shared by {a} and {b}: {sorted(shared)[:5]}")
    if check_pixels and not problems:
        import hashlib

        def digest(arr: np.ndarray) -> str:
            return hashlib.sha256(np.ascontiguousarray(arr, np.float32).tobytes()).hexdigest()

        train = {digest(read_volume(out / e["file"]).array): e["file"] for e in m["splits"].get("train_kv", [])}
        for e in m["splits"].get("test", []):
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

    from . import phantoms

    from . import realct
    from .simulate import SimulatorSettings, simulate_slice

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
