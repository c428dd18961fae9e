"""The trainer of the extended CycleGAN (Ozaki, Kaji et al., Med. Phys. 49(6) 2022).

``train(TrainConfig(...)) -> run_dir``. Four networks (Enc_MV, Dec_MV, Enc_kV, Dec_kV) share one
latent space; two PatchGAN discriminators (LSGAN) with image pools of 50. Losses and their default
weights (``preset="proposed"``): adversarial 1, cycle 10, identity-like 0.1, perceptual 10,
autoencoder 1, air region 1 (C = -600 HU); ``preset="cyclegan"`` sets perceptual, autoencoder and
air to 0 (a plain CycleGAN with its identity term, for the ablation). Each weight can be set, 0
switches a loss off (and skips its computation). The perceptual weight is calibrated for the
built-in filter-bank phi (docs/training.md: with the default window a 2-pixel anatomical shift
costs ~7e-4 before weighting, the ideal denoised conversion ~1e-4); the authors' weight for VGG16
is not published.

Optimiser: Adam, beta1 0.5 (the reference CycleGAN's; the authors' Chainer code uses 0.1, settable
with ``beta1``), lr 2e-4 (generators) / 1e-4 (discriminators), weight decay 1e-7, learning rate
constant for the first half then linear decay to zero (``lr_schedule="cosine"`` decays over the
whole run).

Run folder: ``config.json``, ``checkpoint.pt`` (latest, atomic, tensors and primitive types only, so
it loads with ``torch.load(weights_only=True)``), ``losses.csv`` and ``losses.png``, ``samples/``
(a conversion PNG every ``sample_every`` iterations), ``run.json`` (status, data summary, phi,
git commit, timing). A run interrupted (SIGINT/SIGTERM, or ``should_stop``) writes a checkpoint
first; ``resume=True`` continues it from the same iteration, data position and RNG state.

Scale-out: launched with ``torchrun --nproc_per_node N -m MVCTEnhanceLib.cli train ...`` the trainer
joins the process group (``env://``), shards each domain with ``DistributedSampler`` and wraps the
translators and the discriminators in ``DistributedDataParallel``; rank 0 alone logs and writes.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import losses as L
from ..engine.errors import EnhanceCancelled, InputError, OutputError
from ..engine.files import read_json_object, write_json
from .features import build_phi
from .networks import STRIDE, Decoder, Encoder, Generator, PatchDiscriminator
from .options import LOSS_NAMES, LR_SCHEDULES, PRESETS

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "mvctenhance-train-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_NAME = "config.json"
RUN_NAME = "run.json"
LOSS_CSV = "losses.csv"
LOSS_PNG = "losses.png"
SAMPLES_DIR = "samples"

# Options that may change when a run is resumed (they do not change what is learned).
RESUMABLE_CHANGES = {"iterations", "device", "amp", "num_workers", "log_every", "checkpoint_every",
                     "sample_every", "progress", "resume", "stop_after"}


class TrainingInterrupted(EnhanceCancelled):
    """Training stopped on request (signal or ``should_stop``) after writing a checkpoint."""

    def __init__(self, message: str, run_dir: Path, iteration: int) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.iteration = iteration


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; saved as ``config.json`` in the run folder."""

    mv: list[str]
    kv: list[str]
    out_dir: str
    preset: str = "proposed"
    # Loss weights: None takes the preset's value; 0 switches the loss off.
    w_adversarial: float | None = None
    w_cycle: float | None = None
    w_identity: float | None = None
    w_perceptual: float | None = None
    w_autoencoder: float | None = None
    w_air: float | None = None
    air_threshold_hu: float = L.AIR_THRESHOLD_HU
    vgg_weights: str | None = None
    # Data
    hu_window: tuple[float, float] = (-1000.0, 2000.0)  # covers kV cortical bone (~1560 HU)
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    crop_size: int = 256
    augment: bool = True
    max_shift_px: int = 4
    max_rotation_deg: float = 0.0
    field_truncation: float = 0.0  # probability of cutting a crop to a random smaller field
    min_body_fraction: float = 0.05
    max_slices: int | None = None
    # Networks
    ngf: int = 32
    n_enc_res: int = 5
    n_dec_res: int = 4
    ndf: int = 64
    n_d_down: int = 3
    # Optimisation
    iterations: int = 10000
    batch_size: int = 1
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-7
    lr_schedule: str = "linear"
    decay_start: float = 0.5
    label_jitter_sd: float = 0.0
    pool_size: int = 50
    seed: int = 0
    # Start from another run's network weights (fine-tuning; optimisers and pools start fresh).
    init_from: str | None = None
    # Execution
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    sample_every: int = 500  # 0: no sample images
    progress: bool = True
    resume: bool = False
    # Stop (checkpoint, status "stopped") after this iteration of the planned schedule; resumable.
    stop_after: int | None = None

    def weights(self) -> dict[str, float]:
        """Loss weights: the preset's, overridden by the ``w_*`` options that are set."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset '{self.preset}'; use one of {', '.join(PRESETS)}")
        out = dict(PRESETS[self.preset])
        for name in LOSS_NAMES:
            value = getattr(self, f"w_{name}")
            if value is not None:
                out[name] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hu_window"] = list(self.hu_window)
        d["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown training options: {', '.join(unknown)}")
        d = dict(d)
        for key in ("hu_window", "pixel_spacing_mm"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)

    def validate(self, need_sources: bool = True) -> None:
        """Raise :class:`InputError` naming every bad option."""
        problems: list[str] = []
        try:
            w = self.weights()
        except InputError as exc:
            problems.append(str(exc))
            w = {}
        for name, value in w.items():
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"weight of the {name} loss must be >= 0, got {value}")
        if need_sources and not self.mv:
            problems.append("no MVCT training data given (--mv)")
        if need_sources and not self.kv:
            problems.append("no kV-CT training data given (--kv)")
        lo, hi = self.hu_window
        if not lo < hi:
            problems.append(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        elif w.get("air", 0) > 0 and L.air_threshold(self.hu_window, self.air_threshold_hu) <= -1.0:
            problems.append(f"the air loss needs the HU window to start below {self.air_threshold_hu:g} HU "
                            f"(window {lo:g}..{hi:g}); lower the window or set the air weight to 0")
        if min(self.pixel_spacing_mm) <= 0:
            problems.append(f"pixel_spacing_mm must be positive, got {self.pixel_spacing_mm}")
        if self.crop_size < 8 * STRIDE or self.crop_size % STRIDE:
            problems.append(f"crop_size must be a multiple of {STRIDE} and at least {8 * STRIDE}, got {self.crop_size}")
        for name in ("iterations", "batch_size", "ngf", "ndf", "n_d_down", "log_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_enc_res", "n_dec_res", "pool_size", "num_workers", "max_shift_px", "sample_every"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.field_truncation <= 1:
            problems.append(f"field_truncation is a probability in [0, 1], got {self.field_truncation}")
        if not (self.lr_g > 0 and self.lr_d > 0):
            problems.append(f"learning rates must be positive, got lr_g {self.lr_g}, lr_d {self.lr_d}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            problems.append(f"Adam betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"unknown lr_schedule '{self.lr_schedule}'; use one of {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.decay_start <= 1:
            problems.append(f"decay_start is a fraction of the run in [0, 1], got {self.decay_start}")
        if self.label_jitter_sd < 0:
            problems.append(f"label_jitter_sd must be >= 0, got {self.label_jitter_sd}")
        if self.stop_after is not None and self.stop_after < 1:
            problems.append(f"stop_after must be >= 1, got {self.stop_after}")
        if self.init_from and not Path(self.init_from).exists():
            problems.append(f"init_from '{self.init_from}' does not exist (give a run folder or its checkpoint.pt)")
        if problems:
            raise InputError("bad training options: " + "; ".join(problems))


def lineage_iterations(checkpoint: str | os.PathLike, iteration: int) -> int | None:
    """``iteration`` plus the iterations of every run that ``checkpoint``'s run was initialised from
    (``--init-from`` chains), read from the run.json records beside the checkpoints. None when a link
    of the chain has no readable record: a total that silently left out a stage would be wrong."""
    total = int(iteration)
    info_path = Path(checkpoint).parent / RUN_NAME
    seen: set[Path] = set()
    while True:
        if not info_path.is_file() or info_path.resolve() in seen:
            return None
        seen.add(info_path.resolve())
        try:
            init = read_json_object(info_path, "training run record").get("initialised_from")
        except InputError:
            return None
        if init is None:
            return total
        if not isinstance(init, dict) or "iteration" not in init:
            return None
        if init.get("iterations_before") is not None:  # the source's own total, recorded when this run began
            return total + int(init["iterations_before"])
        total += int(init["iteration"])
        info_path = Path(str(init.get("checkpoint", ""))).parent / RUN_NAME


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The configuration saved in a run folder (for resuming or exporting)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise InputError(f"'{run_dir}' is not a training run folder (no {CONFIG_NAME})")
    data = read_json_object(path, "training configuration")
    try:
        return TrainConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise InputError(f"'{path}' is not a valid training configuration ({exc})") from None


def make_config(out_dir: str | os.PathLike, *, resume: bool = False, data: str | os.PathLike | None = None,
                **options: Any) -> TrainConfig:
    """A configuration from explicit options (None = not given), as the CLI builds it.

    ``data``: a make-dataset folder (its train_mv/ and train_kv/ become ``mv``/``kv``). With
    ``resume`` and an existing run, the run's own config.json is the base and only the given options
    change (the trainer refuses changes other than execution options and ``iterations``).
    """
    given = {k: v for k, v in options.items() if v is not None}
    if data is not None:
        if given.get("mv") or given.get("kv"):
            raise InputError("give either a dataset folder (--data) or --mv/--kv folders, not both")
        given["mv"], given["kv"] = sources_from_dataset(data)
    config_path = Path(out_dir) / CONFIG_NAME
    if resume and config_path.is_file():
        base = load_run_config(out_dir).to_dict()
        base.update(given)
        base.update(out_dir=str(out_dir), resume=True)
        return TrainConfig.from_dict(base)
    if not given.get("mv") or not given.get("kv"):
        raise InputError("training needs MVCT and kV-CT data: --mv FOLDER --kv FOLDER, or --data DATASET "
                         "(a make-dataset folder)" + (f"; '{out_dir}' holds no run to resume" if resume else ""))
    return TrainConfig.from_dict({**given, "out_dir": str(out_dir), "resume": resume})


def sources_from_dataset(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """([train_mv folder], [train_kv folder]) of a make-dataset folder (checked against its manifest)."""
    from ..synth.make_dataset import read_manifest

    root = Path(folder)
    read_manifest(root)
    mv, kv = root / "train_mv", root / "train_kv"
    for sub in (mv, kv):
        if not sub.is_dir():
            raise InputError(f"dataset '{root}' has no {sub.name}/ folder; rebuild it with make-dataset")
    return [str(mv)], [str(kv)]


# --------------------------------------------------------------------------------------------
# Networks as trained: the four translators in one module, so DDP sees one forward per step.

class Translators(nn.Module):
    """Enc_MV, Dec_MV, Enc_kV, Dec_kV; ``forward`` returns every image the losses need."""

    def __init__(self, ngf: int = 32, n_enc_res: int = 5, n_dec_res: int = 4) -> None:
        super().__init__()
        self.enc_mv = Encoder(1, ngf, n_enc_res)
        self.dec_mv = Decoder(1, ngf, n_dec_res)
        self.enc_kv = Encoder(1, ngf, n_enc_res)
        self.dec_kv = Decoder(1, ngf, n_dec_res)

    def forward(self, x: torch.Tensor, y: torch.Tensor, identity: bool = True,
                autoencoder: bool = True) -> dict[str, torch.Tensor]:
        z_x, z_y = self.enc_mv(x), self.enc_kv(y)
        fake_kv, fake_mv = self.dec_kv(z_x), self.dec_mv(z_y)
        out = {"fake_kv": fake_kv, "fake_mv": fake_mv,
               "cycled_mv": self.dec_mv(self.enc_kv(fake_kv)),
               "cycled_kv": self.dec_kv(self.enc_mv(fake_mv))}
        if autoencoder:
            out["ae_mv"], out["ae_kv"] = self.dec_mv(z_x), self.dec_kv(z_y)
        if identity:
            out["idt_mv"], out["idt_kv"] = self.dec_mv(self.enc_kv(x)), self.dec_kv(self.enc_mv(y))
        return out

    def mv_to_kv(self) -> Generator:
        """G_MV->kV = Dec_kV o Enc_MV (sharing this module's weights): what is exported."""
        return Generator(self.enc_mv, self.dec_kv)


class Discriminators(nn.Module):
    """D_MV and D_kV; real and fake go through each in one batch (instance norm is per sample)."""

    def __init__(self, ndf: int = 64, n_down: int = 3) -> None:
        super().__init__()
        self.d_mv = PatchDiscriminator(1, ndf, n_down)
        self.d_kv = PatchDiscriminator(1, ndf, n_down)

    def forward(self, real_mv: torch.Tensor, fake_mv: torch.Tensor, real_kv: torch.Tensor,
                fake_kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_mv, n_kv = real_mv.shape[0], real_kv.shape[0]
        p_mv = self.d_mv(torch.cat([real_mv, fake_mv]))
        p_kv = self.d_kv(torch.cat([real_kv, fake_kv]))
        return p_mv[:n_mv], p_mv[n_mv:], p_kv[:n_kv], p_kv[n_kv:]


class ImagePool:
    """Shrivastava et al.'s history of generated images (size 50 in CycleGAN): the discriminator
    sees, half the time, an older fake, which damps oscillation."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        for image in batch.detach().float():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(1, generator=generator).item() < 0.5:
                j = int(torch.randint(len(self.images), (1,), generator=generator).item())
                out.append(self.images[j])
                self.images[j] = image
            else:
                out.append(image)
        return torch.cat(out)

    def state(self) -> torch.Tensor:
        return torch.cat(self.images).cpu() if self.images else torch.zeros(0)

    def load(self, images: torch.Tensor, device: torch.device) -> None:
        self.images = [im.unsqueeze(0).to(device) for im in images] if images.numel() else []


# --------------------------------------------------------------------------------------------
# Data: one resumable stream of batches per domain.

class _DomainStream:
    """Batches of one domain in DistributedSampler order; (epoch, batches taken) is its position."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, rank: int, world: int, num_workers: int,
                 name: str) -> None:
        from torch.utils.data import DistributedSampler

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
        from torch.utils.data import DataLoader

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


def _open_domain(name: str, paths: list[str], config: TrainConfig, seed: int) -> Any:
    for p in paths:
        if not Path(p).exists():
            raise InputError(f"{name} training data '{p}' does not exist")
    from ..synth import make_dataset as datasets

    sources = datasets.list_volume_sources([Path(p) for p in paths])
    if not sources:
        raise InputError(f"no volumes found for the {name} domain in {', '.join(map(str, paths))}; "
                         "give folders of .nrrd/.nii.gz/.mha volumes or DICOM series")
    dataset = datasets.SliceDataset(
        sources, hu_window=tuple(config.hu_window), pixel_spacing_mm=tuple(config.pixel_spacing_mm),
        crop_size=config.crop_size, augment=config.augment, max_shift_px=config.max_shift_px,
        max_rotation_deg=config.max_rotation_deg, seed=seed, min_body_fraction=config.min_body_fraction,
        max_slices=config.max_slices, field_truncation=config.field_truncation)
    if len(dataset) == 0:
        raise InputError(f"the {name} domain has no usable slices in {', '.join(map(str, paths))} "
                         f"(min_body_fraction {config.min_body_fraction})")
    return dataset


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True`` (InputError if damaged or foreign)."""
    path = Path(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint '{path}' cannot be read ({str(exc).splitlines()[0]}); it is damaged, "
                         "start a new run") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"'{path}' is not an MVCTEnhance training checkpoint")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise InputError(f"checkpoint '{path}' is from a newer MVCTEnhance (version {state['version']})")
    return state


def _summary(dataset: Any) -> dict[str, Any]:
    if hasattr(dataset, "summary"):
        return dict(dataset.summary())
    return {"slices": len(dataset)}


# --------------------------------------------------------------------------------------------
# Helpers

def lr_factor(iteration: int, total: int, schedule: str, decay_start: float) -> float:
    """Learning-rate multiplier at 0-based ``iteration`` of ``total``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * iteration / total))
    start = int(decay_start * total)
    if iteration < start:
        return 1.0
    return max(0.0, (total - iteration) / max(1, total - start))


def git_commit() -> str:
    """HEAD of the repository this package runs from, '+dirty' when it has changes; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "") if head else "unknown"


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and stops. A second signal acts as usual."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _dist_setup(config: TrainConfig) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch has no torch.distributed support")
    use_cuda = torch.cuda.is_available() and str(config.device) != "cpu"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return dist.get_rank(), dist.get_world_size(), True


def _pick_device(config: TrainConfig, world: int) -> torch.device:
    from ..engine.device import resolve_device

    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# --------------------------------------------------------------------------------------------
# The trainer

def train(config: TrainConfig, *, mv_dataset: Any = None, kv_dataset: Any = None,
          should_stop: Callable[[int], bool] | None = None) -> Path:
    """Train (or resume) a run; returns the run folder.

    ``mv_dataset``/``kv_dataset`` (any dataset of (1, H, W) tensors in [-1, 1]) replace the volumes
    named by ``config.mv``/``config.kv``. ``should_stop(iteration)`` is asked after every iteration;
    True stops like SIGINT: a checkpoint is written and :class:`TrainingInterrupted` raised.
    """
    config.validate(need_sources=mv_dataset is None or kv_dataset is None)
    weights = config.weights()
    rank, world, own_group = _dist_setup(config)
    try:
        return _Trainer(config, weights, rank, world, mv_dataset, kv_dataset).run(should_stop)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Trainer:
    def __init__(self, config: TrainConfig, weights: dict[str, float], rank: int, world: int,
                 mv_dataset: Any, kv_dataset: Any) -> None:
        self.config, self.weights, self.rank, self.world = config, weights, rank, world
        self.main = rank == 0
        self.run_dir = Path(config.out_dir)
        self.device = _pick_device(config, world)
        self.amp = bool(config.amp and self.device.type == "cuda")
        resume_state = self._check_run_dir()
        self.phi = build_phi(config.vgg_weights).to(self.device) if weights["perceptual"] > 0 else None
        self.phi_description = self.phi.description if self.phi is not None else "none (perceptual loss off)"
        self.mv_dataset = mv_dataset if mv_dataset is not None else _open_domain("MVCT", config.mv, config,
                                                                                 config.seed)
        self.kv_dataset = kv_dataset if kv_dataset is not None else _open_domain("kV-CT", config.kv, config,
                                                                                 config.seed + 1)
        if self.main:  # only once every option and input has been checked
            (self.run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
            write_json(self.config.to_dict(), self.run_dir / CONFIG_NAME)
        self.mv = _DomainStream(self.mv_dataset, config.batch_size, config.seed, rank, world, config.num_workers,
                                "MVCT")
        self.kv = _DomainStream(self.kv_dataset, config.batch_size, config.seed + 1, rank, world,
                                config.num_workers, "kV-CT")
        torch.manual_seed(config.seed)  # same initial weights on every rank and every run
        self.G = Translators(config.ngf, config.n_enc_res, config.n_dec_res).to(self.device)
        self.D = Discriminators(config.ndf, config.n_d_down).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2),
                                      weight_decay=config.weight_decay)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2),
                                      weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.rng = torch.Generator().manual_seed(config.seed * 1000 + 17 + rank)  # pools and label jitter
        self.pool_mv, self.pool_kv = ImagePool(config.pool_size), ImagePool(config.pool_size)
        self.iteration = 0
        self.elapsed = 0.0
        self.init_info: dict[str, Any] | None = None
        if resume_state is not None:
            self._load_state(resume_state)
        elif config.init_from:
            self._init_weights(Path(config.init_from))
        self.G_ddp: nn.Module = self.G
        self.D_ddp: nn.Module = self.D
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_ddp = DDP(self.G, device_ids=ids)
            self.D_ddp = DDP(self.D, device_ids=ids)
        self.air_c = L.air_threshold(config.hu_window, config.air_threshold_hu)
        self.active = [n for n in LOSS_NAMES if weights[n] > 0]
        self.sample_mv, self.sample_kv = self._fixed_samples()

    # ---- run folder and checkpoints

    def _check_run_dir(self) -> dict[str, Any] | None:
        """The checkpoint to resume from (None for a fresh run); refuses folders that must not be touched."""
        ckpt = self.run_dir / CHECKPOINT_NAME
        state = None
        if ckpt.exists():
            if not self.config.resume:
                raise OutputError(f"run folder '{self.run_dir}' already holds a checkpoint; pass --resume to "
                                  "continue it or choose a new folder")
            state = read_checkpoint(ckpt)
            saved = TrainConfig.from_dict(json.loads(str(state["config"])))
            diff = [k for k, v in saved.to_dict().items()
                    if k not in RESUMABLE_CHANGES and v != self.config.to_dict()[k]]
            if diff:
                raise InputError(f"cannot resume '{self.run_dir}' with different options: {', '.join(diff)} "
                                 "(resume with the run's own config.json, or start a new run)")
            if int(state["iteration"]) > self.config.iterations:
                raise InputError(f"run '{self.run_dir}' is already at iteration {state['iteration']}, beyond "
                                 f"the requested {self.config.iterations}")
        elif self.run_dir.exists() and not self.run_dir.is_dir():
            raise OutputError(f"run folder '{self.run_dir}' is a file; choose a folder")
        elif self.run_dir.exists() and any(self.run_dir.iterdir()) and self.main:
            raise OutputError(f"run folder '{self.run_dir}' exists and is not empty; choose a new folder")
        return state

    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "iteration": self.iteration, "elapsed_s": self.elapsed,
            "config": json.dumps(self.config.to_dict()),
            "translators": self.G.state_dict(), "discriminators": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(), "rng_trainer": self.rng.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "pool_mv": self.pool_mv.state(), "pool_kv": self.pool_kv.state(),
            "stream_mv": self.mv.state(), "stream_kv": self.kv.state(),
        }

    def _init_weights(self, source: Path) -> None:
        ckpt = source / CHECKPOINT_NAME if source.is_dir() else source
        state = read_checkpoint(ckpt)
        try:
            self.G.load_state_dict(state["translators"])
            self.D.load_state_dict(state["discriminators"])
        except RuntimeError as exc:
            raise InputError(f"cannot start from '{ckpt}': its networks differ from this run's (ngf, ndf, "
                             f"residual blocks must match; {str(exc).splitlines()[0]})") from None
        self.init_info = {"checkpoint": str(ckpt), "iteration": int(state["iteration"]),
                          "iterations_before": lineage_iterations(ckpt, int(state["iteration"])),
                          "config": json.loads(str(state["config"]))}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["translators"])
        self.D.load_state_dict(state["discriminators"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_torch"])
        self.rng.set_state(state["rng_trainer"])
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.pool_mv.load(state["pool_mv"], self.device)
        self.pool_kv.load(state["pool_kv"], self.device)
        self.mv.load(state["stream_mv"])
        self.kv.load(state["stream_kv"])
        self.iteration = int(state["iteration"])
        self.elapsed = float(state["elapsed_s"])

    def _save_checkpoint(self) -> None:
        if not self.main:
            return
        path = self.run_dir / CHECKPOINT_NAME
        tmp = path.with_name(path.name + ".partial")
        torch.save(self._state(), str(tmp))
        os.replace(tmp, path)

    def _write_run_info(self, status: str, started: str) -> None:
        if not self.main:
            return
        write_json({
            "status": status, "iteration": self.iteration, "iterations_planned": self.config.iterations,
            "started_utc": started, "updated_utc": _utc_now(), "elapsed_s": round(self.elapsed, 1),
            "seconds_per_iteration": round(self.elapsed / max(1, self.iteration), 4),
            "loss_weights": self.weights, "perceptual_phi": self.phi_description,
            "air_threshold_net": self.air_c, "device": str(self.device), "amp": self.amp,
            "initialised_from": self._init_record(),
            "iterations_total": self._iterations_total(),
            "world_size": self.world, "torch_threads": torch.get_num_threads(), "git_commit": git_commit(),
            "torch": torch.__version__,
            "data": {"mv": _summary(self.mv_dataset), "kv": _summary(self.kv_dataset),
                     "mv_sources": list(self.config.mv), "kv_sources": list(self.config.kv)},
        }, self.run_dir / RUN_NAME)

    def _iterations_total(self) -> int | None:
        """This run's iterations plus those of every run its weights came from (None: not known)."""
        init = self._init_record()
        if init is None:
            return self.iteration
        before = init.get("iterations_before")
        return None if before is None else self.iteration + int(before)

    def _init_record(self) -> dict[str, Any] | None:
        """Where the initial weights came from; kept across resumes through the previous run.json."""
        if self.init_info is not None:
            return self.init_info
        previous = self.run_dir / RUN_NAME
        if self.config.init_from and previous.is_file():
            try:
                return read_json_object(previous, "training run record").get("initialised_from")
            except InputError:
                return None
        return None

    # ---- logging

    def _csv_columns(self) -> list[str]:
        return ["iteration", "lr_g", "lr_d", "seconds_per_iteration", "generator_total", *self.active,
                "discriminator"]

    def _open_csv(self) -> Any:
        path = self.run_dir / LOSS_CSV
        cols = self._csv_columns()
        rows: list[list[str]] = []
        if path.exists() and self.iteration > 0:  # keep what the checkpoint covers, drop the rest
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header == cols:
                    rows = [r for r in reader if r and int(r[0]) <= self.iteration]
        f = open(path, "w", newline="")
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
        f.flush()
        return f

    def _fixed_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.mv_dataset[len(self.mv_dataset) // 2].unsqueeze(0),
                self.kv_dataset[len(self.kv_dataset) // 2].unsqueeze(0))

    def _save_sample(self) -> None:
        if not self.main or self.config.sample_every == 0:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with torch.no_grad():
            x, y = self.sample_mv.to(self.device), self.sample_kv.to(self.device)
            fake_kv = self.G.dec_kv(self.G.enc_mv(x)).float()
            fake_mv = self.G.dec_mv(self.G.enc_kv(y)).float()
        lo, hi = self.config.hu_window
        hu = [((t[0, 0].cpu().numpy() + 1.0) * 0.5 * (hi - lo) + lo) for t in (x, fake_kv, y, fake_mv)]
        titles = ["MVCT", "MVCT -> kV", "kV-CT", "kV-CT -> MV"]
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
        for ax, img, title in zip(axes, hu, titles):
            ax.imshow(img, cmap="gray", vmin=-400, vmax=400)
            ax.set_title(title)
            ax.axis("off")
        fig.suptitle(f"iteration {self.iteration} (display window -400..400 HU)")
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.85, wspace=0.04)
        path = self.run_dir / SAMPLES_DIR / f"sample_{self.iteration:07d}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)

    # ---- one iteration

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        w, amp = self.weights, self.amp
        dev = self.device.type
        for p in self.D.parameters():
            p.requires_grad_(False)
        with torch.autocast(dev, dtype=torch.float16, enabled=amp):
            out = self.G_ddp(x, y, identity=w["identity"] > 0, autoencoder=w["autoencoder"] > 0)
            if w["adversarial"] > 0:  # D's plain module: G's step must not touch D's DDP reducer
                pred_kv, pred_mv = self.D.d_kv(out["fake_kv"]), self.D.d_mv(out["fake_mv"])
        terms: dict[str, torch.Tensor] = {}
        if w["adversarial"] > 0:
            terms["adversarial"] = L.adversarial_loss(pred_kv) + L.adversarial_loss(pred_mv)
        if w["cycle"] > 0:
            terms["cycle"] = L.cycle_loss(x, out["cycled_mv"]) + L.cycle_loss(y, out["cycled_kv"])
        if w["identity"] > 0:
            terms["identity"] = L.identity_loss(x, out["idt_mv"]) + L.identity_loss(y, out["idt_kv"])
        if w["perceptual"] > 0:
            terms["perceptual"] = (L.perceptual_loss(self.phi, out["fake_kv"], x)
                                   + L.perceptual_loss(self.phi, out["fake_mv"], y))
        if w["autoencoder"] > 0:
            terms["autoencoder"] = L.autoencoder_loss(x, out["ae_mv"]) + L.autoencoder_loss(y, out["ae_kv"])
        if w["air"] > 0:
            terms["air"] = L.air_loss(out["fake_kv"], x, self.air_c) + L.air_loss(out["fake_mv"], y, self.air_c)
        loss_g = sum(w[k] * v for k, v in terms.items())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        result = {k: float(v.detach()) for k, v in terms.items()}
        result["generator_total"] = float(loss_g.detach())
        if w["adversarial"] > 0:
            for p in self.D.parameters():
                p.requires_grad_(True)
            fake_mv = self.pool_mv.query(out["fake_mv"], self.rng)
            fake_kv = self.pool_kv.query(out["fake_kv"], self.rng)
            with torch.autocast(dev, dtype=torch.float16, enabled=amp):
                r_mv, f_mv, r_kv, f_kv = self.D_ddp(x, fake_mv, y, fake_kv)
            sd = self.config.label_jitter_sd
            loss_d = (L.discriminator_loss(r_mv, f_mv, L.jittered_targets(r_mv, 1.0, sd, self.rng),
                                           L.jittered_targets(f_mv, 0.0, sd, self.rng))
                      + L.discriminator_loss(r_kv, f_kv, L.jittered_targets(r_kv, 1.0, sd, self.rng),
                                             L.jittered_targets(f_kv, 0.0, sd, self.rng)))
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(self.opt_d)
            result["discriminator"] = float(loss_d.detach())
        self.scaler.update()
        return result

    def _set_lr(self) -> tuple[float, float]:
        f = lr_factor(self.iteration, self.config.iterations, self.config.lr_schedule, self.config.decay_start)
        lr_g, lr_d = self.config.lr_g * f, self.config.lr_d * f
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d
        return lr_g, lr_d

    def _stop_everywhere(self, local: bool) -> bool:
        if self.world == 1:
            return local
        import torch.distributed as dist

        flag = torch.tensor([1.0 if local else 0.0], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def run(self, should_stop: Callable[[int], bool] | None) -> Path:
        from tqdm import tqdm

        cfg = self.config
        started = _utc_now()
        previous = self.run_dir / RUN_NAME
        if self.iteration > 0 and previous.is_file():  # a resumed run keeps its first start time
            try:
                started = str(read_json_object(previous, "training run record").get("started_utc", started))
            except InputError:
                pass
        self._write_run_info("running", started)
        csv_file = self._open_csv() if self.main else None
        writer = csv.writer(csv_file) if csv_file else None
        bar = tqdm(total=cfg.iterations, initial=self.iteration, file=sys.stderr, unit="it", dynamic_ncols=True,
                   disable=not (cfg.progress and self.main), desc="train")
        sums: dict[str, float] = {}
        n_sum, t_interval = 0, time.perf_counter()
        self.G.train()
        self.D.train()
        try:
            with _StopRequest() as stop:
                if self.iteration == 0:
                    self._save_sample()
                while self.iteration < cfg.iterations:
                    t0 = time.perf_counter()
                    lr_g, lr_d = self._set_lr()
                    x = self.mv.next().to(self.device, non_blocking=True)
                    y = self.kv.next().to(self.device, non_blocking=True)
                    values = self._step(x, y)
                    self.iteration += 1
                    self.elapsed += time.perf_counter() - t0
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n_sum += 1
                    bar.update(1)
                    last = self.iteration == cfg.iterations
                    if writer is not None and (self.iteration % cfg.log_every == 0 or last):
                        spi = (time.perf_counter() - t_interval) / n_sum
                        means = {k: v / n_sum for k, v in sums.items()}
                        writer.writerow([self.iteration, f"{lr_g:.6g}", f"{lr_d:.6g}", f"{spi:.4f}"]
                                        + [f"{means.get(c, float('nan')):.6g}" for c in self._csv_columns()[4:]])
                        csv_file.flush()
                        bar.set_postfix({k: f"{means[k]:.3g}" for k in ("cycle", "generator_total") if k in means})
                        sums, n_sum, t_interval = {}, 0, time.perf_counter()
                    if last or (cfg.sample_every and self.iteration % cfg.sample_every == 0):
                        self._save_sample()
                    requested = stop.signal is not None or bool(should_stop and should_stop(self.iteration))
                    if self._stop_everywhere(requested) and not last:
                        self._save_checkpoint()
                        self._finish_logs("interrupted", started)
                        raise TrainingInterrupted(
                            f"training interrupted at iteration {self.iteration} of {cfg.iterations}; checkpoint "
                            f"written, continue with --resume -o {self.run_dir}", self.run_dir, self.iteration)
                    if cfg.stop_after is not None and self.iteration >= cfg.stop_after and not last:
                        self._save_checkpoint()
                        self._finish_logs("stopped", started)
                        return self.run_dir
                    if self.iteration % cfg.checkpoint_every == 0 and not last:
                        self._save_checkpoint()
                        self._finish_logs("running", started)
            self._save_checkpoint()
            self._finish_logs("finished", started)
        finally:
            bar.close()
            if csv_file:
                csv_file.close()
        return self.run_dir

    def _finish_logs(self, status: str, started: str) -> None:
        if not self.main:
            return
        self._write_run_info(status, started)
        plot_losses(self.run_dir / LOSS_CSV, self.run_dir / LOSS_PNG)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_loss_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a run's losses.csv as lists of floats."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        cols: dict[str, list[float]] = {h: [] for h in header}
        for row in reader:
            for h, v in zip(header, row):
                cols[h].append(float(v))
    return cols


def plot_losses(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """One panel per loss (unweighted, both directions summed) against iteration; PNG via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_loss_csv(csv_path)
    it = cols.get("iteration", [])
    names = [c for c in cols if c not in ("iteration", "lr_g", "lr_d", "seconds_per_iteration")]
    if not it or not names:
        return
    n = len(names)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        ax.plot(it, cols[name], lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        if all(v > 0 for v in cols[name]):
            ax.set_yscale("log")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.92, wspace=0.3, hspace=0.55)
    tmp = Path(png_path).with_name(Path(png_path).name + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)
