"""The training loader: volumes of one domain -> windowed body crops (:class:`SliceDataset`), and one
resumable stream of batches per domain (:class:`DomainStream`) in ``DistributedSampler`` order.

Sources are volume files (NRRD, NIfTI, MetaImage) and DICOM series folders, found recursively
(:func:`list_volume_sources`), or a make-dataset folder (:func:`sources_from_dataset`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, DistributedSampler

from ..engine.errors import InputError
from ..engine.metrics import BODY_THRESHOLD_HU
from ..engine.modelcard import hu_to_net_scale
from ..engine.volume import Volume, read_volume
from ..synth.make_dataset import is_volume_file, read_manifest
from .options import DEFAULTS, TrainConfig


# ---------------------------------------------------------------------------------------------
# Sources

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
            here.extend(folder / f for f in files if is_volume_file(folder / f))
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
# Slices

def _body_mask(hu: np.ndarray) -> np.ndarray:
    """Largest connected region of one slice above the body threshold (the patient; the couch and
    noise specks drop out).

    Not :func:`engine.metrics.body_mask`: that one fills enclosed air (airway, sinuses) and scales its
    opening with the pixel size, which would change which slices have enough body and where crops go.
    """
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
    a, b = hu_to_net_scale(hu_window)
    return np.clip(a * np.asarray(hu, np.float32) + b, -1.0, 1.0).astype(np.float32)


def net_to_hu(net: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """[-1, 1] -> HU, the inverse of :func:`hu_to_net` inside the window."""
    a, b = hu_to_net_scale(hu_window)
    return ((np.asarray(net, np.float32) - b) / a).astype(np.float32)


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
                 pixel_spacing_mm: tuple[float, float] = DEFAULTS["pixel_spacing_mm"],
                 crop_size: int = DEFAULTS["crop_size"], augment: bool = DEFAULTS["augment"],
                 max_shift_px: int = DEFAULTS["max_shift_px"],
                 max_rotation_deg: float = DEFAULTS["max_rotation_deg"], seed: int = DEFAULTS["seed"],
                 min_body_fraction: float = DEFAULTS["min_body_fraction"],
                 max_slices: int | None = DEFAULTS["max_slices"],
                 field_truncation: float = DEFAULTS["field_truncation"],
                 twin_sources: Sequence[str | os.PathLike] | None = None) -> None:
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
        self.twin_sources = list_volume_sources(twin_sources) if twin_sources else None
        if self.twin_sources is not None and [p.name for p in self.twin_sources] != [p.name for p in self.sources]:
            raise InputError(f"the clean twins ({len(self.twin_sources)} files) do not match the MV sources "
                             f"({len(self.sources)} files) name for name; give the dataset's train_mv_clean/")
        self._twins: list[np.ndarray] = []
        self._slices: list[np.ndarray] = []
        self._bodies: list[np.ndarray] = []   # (n_body_px, 2) row/col of body pixels
        self._bbox: list[tuple[int, int, int, int]] = []
        self._origin: list[tuple[int, int]] = []  # (source index, slice index) per item
        self.n_volumes = 0
        self.n_slices_read = 0
        for si, src in enumerate(self.sources):
            twins = _read_source(self.twin_sources[si]) if self.twin_sources is not None else None
            for vi, vol in enumerate(_read_source(src)):
                self.n_volumes += 1
                self._add_volume(vol, si, twins[vi] if twins is not None else None)
        if not self._slices:
            raise InputError(f"empty domain: no slice with at least {self.min_body_fraction:.0%} body "
                             f"(> {BODY_THRESHOLD_HU:g} HU) in {len(self.sources)} source(s), e.g. '{self.sources[0]}'")
        if max_slices is not None and max_slices < len(self._slices):
            # nested subsets for the same seed: the first N of one seeded permutation
            order = np.random.default_rng([self.seed, 0x5E1]).permutation(len(self._slices))[:max_slices]
            keep = sorted(int(i) for i in order)
            self._slices = [self._slices[i] for i in keep]
            self._twins = [self._twins[i] for i in keep] if self._twins else []
            self._bodies = [self._bodies[i] for i in keep]
            self._bbox = [self._bbox[i] for i in keep]
            self._origin = [self._origin[i] for i in keep]

    def _add_volume(self, vol: Volume, source_index: int, twin: Volume | None = None) -> None:
        axis = vol.axial_axis()
        arr = np.moveaxis(vol.array, axis, 0)
        if twin is not None and twin.array.shape != vol.array.shape:
            raise InputError(f"the clean twin of '{self.sources[source_index]}' has another shape "
                             f"({twin.array.shape} vs {vol.array.shape})")
        twin_arr = np.moveaxis(twin.array, axis, 0) if twin is not None else None
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
            if twin_arr is not None:
                clean = np.asarray(twin_arr[k], np.float32)
                if resample:
                    clean = ndimage.zoom(clean, zoom, order=1, mode="nearest", grid_mode=True)
                self._twins.append(hu_to_net(clean, self.hu_window))
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
        """(1, crop, crop), or (2, crop, crop) with the clean twin cropped the same way as channel 1."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        images = [self._slices[i]] + ([self._twins[i]] if self._twins else [])
        body_level = float(hu_to_net(np.array([BODY_THRESHOLD_HU]), self.hu_window)[0])
        if not self.augment:
            centre = self._centre(i, None)
            outs = [self._crop(img, centre, 0.0) for img in images]
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            angle = 0.0
            if self.max_rotation_deg > 0:
                angle = float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
            r, c = self._centre(i, rng)
            shift = rng.integers(-self.max_shift_px, self.max_shift_px + 1, size=2)
            centre = (r + shift[0], c + shift[1])
            out = self._crop(images[0], centre, angle)
            if not (out > body_level).any():
                # the crop missed the body (a concave outline larger than the crop): centre it on
                # a random body pixel instead, which always lies inside the crop
                rc = self._bodies[i][rng.integers(len(self._bodies[i]))]
                centre = (float(rc[0]), float(rc[1]))
                out = self._crop(images[0], centre, angle)
            outs = [out] + [self._crop(img, centre, angle) for img in images[1:]]
            if self.field_truncation > 0 and rng.uniform() < self.field_truncation:
                outs = self._truncate(outs, body_level, rng)
        return torch.from_numpy(np.stack(outs))

    def _truncate(self, outs: list[np.ndarray], body_level: float, rng: np.random.Generator) -> list[np.ndarray]:
        """Keep a random field (rectangle or ellipse, 40..70 % of the crop, centred on a body pixel)
        and make the rest air.

        Why: a model that has only seen whole bodies invents bone along the straight edges of a
        small or truncated field (found on validation phantoms cut to a square: MAE 92 -> 475 HU).
        The new air is drawn from this image's own air pixels (so MVCT noise stays MVCT-like, kV air
        stays clean), and the field edge is softened by ~1 px as a reconstructed edge is. A clean twin
        gets the same field and clean air.
        """
        out = outs[0]
        n = out.shape[0]
        body = out > body_level
        rows, cols = np.nonzero(body)
        if rows.size == 0:
            return outs
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
        clean_air = np.full_like(out, self.air_value)
        return [(keep * out + (1.0 - keep) * air).astype(np.float32)] + [
            (keep * twin + (1.0 - keep) * clean_air).astype(np.float32) for twin in outs[1:]]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description for the model card's training_data."""
        return {
            "n_volumes": self.n_volumes,
            "n_slices": len(self),
            "n_slices_read": self.n_slices_read,
            "sources": [str(s) for s in self.sources],
            "clean_twins": [str(s) for s in self.twin_sources] if self.twin_sources else None,
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


def sources_from_dataset(folder: str | os.PathLike) -> tuple[list[str], list[str], list[str] | None]:
    """([train_mv folder], [train_kv folder], [train_mv_clean folder] or None) of a make-dataset folder
    (checked against its manifest)."""
    root = Path(folder)
    read_manifest(root)
    mv, kv, clean = root / "train_mv", root / "train_kv", root / "train_mv_clean"
    for sub in (mv, kv):
        if not sub.is_dir():
            raise InputError(f"dataset '{root}' has no {sub.name}/ folder; rebuild it with make-dataset")
    return [str(mv)], [str(kv)], ([str(clean)] if clean.is_dir() else None)


# ---------------------------------------------------------------------------------------------
# Batches

class DomainStream:
    """Batches of one domain in DistributedSampler order; (epoch, batches taken) is its position."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, rank: int, world: int, num_workers: int,
                 name: str) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                          drop_last=False)
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch < 1:
            raise InputError(f"the {name} domain has {len(dataset)} slices, fewer than batch size {batch_size} x "
                             f"{world} process(es); add data or lower --batch-size")
        self.epoch = 0
        self.taken = 0
        self._it: Iterator[torch.Tensor] | None = None

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        order = list(iter(self.sampler))
        bs = self.batch_size
        batches = [order[i * bs:(i + 1) * bs] for i in range(self.taken, self.batches_per_epoch)]
        self._it = iter(DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers))

    def next(self) -> torch.Tensor:
        if self.taken >= self.batches_per_epoch:
            self.epoch, self.taken, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._start()
        batch = next(self._it)  # type: ignore[arg-type]
        self.taken += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "taken": self.taken}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.taken, self._it = int(state["epoch"]), int(state["taken"]), None


def open_domain(name: str, paths: list[str], config: TrainConfig, seed: int,
                twins: list[str] | None = None) -> SliceDataset:
    """The loader of one domain's volumes with the run's data options (``twins``: the MV clean twins)."""
    for p in paths:
        if not Path(p).exists():
            raise InputError(f"{name} training data '{p}' does not exist")
    sources = list_volume_sources([Path(p) for p in paths])
    if not sources:
        raise InputError(f"no volumes found for the {name} domain in {', '.join(map(str, paths))}; "
                         "give folders of .nrrd/.nii.gz/.mha volumes or DICOM series")
    dataset = SliceDataset(
        sources, hu_window=tuple(config.hu_window), pixel_spacing_mm=tuple(config.pixel_spacing_mm),
        crop_size=config.crop_size, augment=config.augment, max_shift_px=config.max_shift_px,
        max_rotation_deg=config.max_rotation_deg, seed=seed, min_body_fraction=config.min_body_fraction,
        max_slices=config.max_slices, field_truncation=config.field_truncation,
        twin_sources=list_volume_sources([Path(p) for p in twins]) if twins else None)
    if len(dataset) == 0:
        raise InputError(f"the {name} domain has no usable slices in {', '.join(map(str, paths))} "
                         f"(min_body_fraction {config.min_body_fraction})")
    return dataset


def mv_twins(config: TrainConfig) -> list[str] | None:
    """The MV clean twins the run reads: only when its denoise term is on."""
    return config.mv_clean if config.weights()["denoise"] > 0 else None


def dataset_summary(dataset: Any) -> dict[str, Any]:
    """The run record's description of a domain's data (any dataset; a SliceDataset describes itself)."""
    if hasattr(dataset, "summary"):
        return dict(dataset.summary())
    return {"slices": len(dataset)}
