"""The training loop of the extended CycleGAN (Ozaki, Kaji et al., Med. Phys. 49(6) 2022).

``train(TrainConfig(...)) -> run_dir``. The networks, losses and the optimisation step are in
:mod:`.cyclegan`; the options and their defaults in :mod:`.options`. Losses and their default
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

Run folder: see :mod:`.runfolder`. A run interrupted (SIGINT/SIGTERM, or ``should_stop``) writes a
checkpoint first; ``resume=True`` continues it from the same iteration, data position and RNG state.

Scale-out: launched with ``torchrun --nproc_per_node N -m MVCTEnhanceLib.cli train ...`` the trainer
joins the process group (``env://``), shards each domain with ``DistributedSampler`` and wraps the
translators and the discriminators in ``DistributedDataParallel``; rank 0 alone logs and writes.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..engine.device import resolve_device
from ..engine.errors import EnhanceCancelled, InputError, OutputError
from ..engine.files import read_json_object, write_json
from .curves import NON_LOSS_COLUMNS, plot_losses, plot_sample
from .cyclegan import CycleGAN
from .data import DomainStream, dataset_summary, mv_twins, net_to_hu, open_domain, sources_from_dataset
from .features import build_phi
from .options import LOSS_NAMES, RESUMABLE_CHANGES, TrainConfig
from .runfolder import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, CHECKPOINT_VERSION, CONFIG_NAME, KEPT_CHECKPOINTS,
                        LOSS_CSV, LOSS_PNG, RUN_NAME, SAMPLES_DIR, git_commit, lineage_iterations, load_run_config,
                        read_checkpoint)


class TrainingInterrupted(EnhanceCancelled):
    """Training stopped on request (signal or ``should_stop``) after writing a checkpoint."""

    def __init__(self, message: str, run_dir: Path, iteration: int) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.iteration = iteration


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
        given["mv"], given["kv"], clean = sources_from_dataset(data)
        if clean and "mv_clean" not in given:
            given["mv_clean"] = clean
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
        self.mv_dataset = mv_dataset if mv_dataset is not None else open_domain("MVCT", config.mv, config,
                                                                                config.seed, mv_twins(config))
        self.kv_dataset = kv_dataset if kv_dataset is not None else open_domain("kV-CT", config.kv, config,
                                                                                config.seed + 1)
        if self.main:  # only once every option and input has been checked
            (self.run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
            write_json(self.config.to_dict(), self.run_dir / CONFIG_NAME)
        self.mv = DomainStream(self.mv_dataset, config.batch_size, config.seed, rank, world, config.num_workers,
                               "MVCT")
        self.kv = DomainStream(self.kv_dataset, config.batch_size, config.seed + 1, rank, world,
                               config.num_workers, "kV-CT")
        # seeds torch first: the same initial weights on every rank and every run
        self.gan = CycleGAN(config, weights, self.device, self.amp, rank, self.phi)
        self.iteration = 0
        self.elapsed = 0.0
        self.init_info: dict[str, Any] | None = None
        if resume_state is not None:
            self._load_state(resume_state)
        elif config.init_from:
            self._init_weights(Path(config.init_from))
        if world > 1:
            self.gan.distribute()
        self.active = [n for n in LOSS_NAMES if weights[n] > 0]
        self.sample_mv, self.sample_kv = self._fixed_samples()

    # The networks and the generators' optimiser, as callers (and tests) inspect them.
    @property
    def G(self) -> torch.nn.Module:
        return self.gan.G

    @property
    def D(self) -> torch.nn.Module:
        return self.gan.D

    @property
    def opt_g(self) -> torch.optim.Optimizer:
        return self.gan.opt_g

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
            "config": json.dumps(self.config.to_dict()), **self.gan.state(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "stream_mv": self.mv.state(), "stream_kv": self.kv.state(),
        }

    def _init_weights(self, source: Path) -> None:
        ckpt = source / CHECKPOINT_NAME if source.is_dir() else source
        state = read_checkpoint(ckpt)
        try:
            self.gan.load_networks(state)
        except RuntimeError as exc:
            raise InputError(f"cannot start from '{ckpt}': its networks differ from this run's (ngf, ndf, "
                             f"residual blocks must match; {str(exc).splitlines()[0]})") from None
        self.init_info = {"checkpoint": str(ckpt), "iteration": int(state["iteration"]),
                          "iterations_before": lineage_iterations(ckpt, int(state["iteration"])),
                          "config": json.loads(str(state["config"]))}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.gan.load_state(state)
        torch.set_rng_state(state["rng_torch"])
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
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
        if self.config.keep_checkpoints:
            kept = self.run_dir / KEPT_CHECKPOINTS / f"iteration_{self.iteration:07d}.pt"
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, kept)

    def _write_run_info(self, status: str, started: str) -> None:
        if not self.main:
            return
        write_json({
            "status": status, "iteration": self.iteration, "iterations_planned": self.config.iterations,
            "started_utc": started, "updated_utc": _utc_now(), "elapsed_s": round(self.elapsed, 1),
            "seconds_per_iteration": round(self.elapsed / max(1, self.iteration), 4),
            "loss_weights": self.weights, "perceptual_phi": self.phi_description,
            "air_threshold_net": self.gan.air_c, "device": str(self.device), "amp": self.amp,
            "initialised_from": self._init_record(),
            "iterations_total": self._iterations_total(),
            "world_size": self.world, "torch_threads": torch.get_num_threads(), "git_commit": git_commit(),
            "torch": torch.__version__,
            "data": {"mv": dataset_summary(self.mv_dataset), "kv": dataset_summary(self.kv_dataset),
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
        return [*NON_LOSS_COLUMNS, "generator_total", *self.active, "discriminator"]

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
        return (self.mv_dataset[len(self.mv_dataset) // 2][:1].unsqueeze(0),  # without a clean twin
                self.kv_dataset[len(self.kv_dataset) // 2].unsqueeze(0))

    def _save_sample(self) -> None:
        if not self.main or self.config.sample_every == 0:
            return
        x, y = self.sample_mv.to(self.device), self.sample_kv.to(self.device)
        fake_kv, fake_mv = self.gan.convert(x, y)
        hu = [net_to_hu(t[0, 0].cpu().numpy(), self.config.hu_window) for t in (x, fake_kv, y, fake_mv)]
        plot_sample(hu, self.iteration, self.run_dir / SAMPLES_DIR / f"sample_{self.iteration:07d}.png")

    def _stop_everywhere(self, local: bool) -> bool:
        if self.world == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def run(self, should_stop: Callable[[int], bool] | None) -> Path:
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
                    lr_g, lr_d = self.gan.set_lr(self.iteration)
                    x = self.mv.next().to(self.device, non_blocking=True)
                    y = self.kv.next().to(self.device, non_blocking=True)
                    x, x_clean = (x[:, :1], x[:, 1:]) if x.shape[1] == 2 else (x, None)  # the clean twin
                    values = self.gan.step(x, y, x_clean)
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
                                        + [f"{means.get(c, float('nan')):.6g}"
                                           for c in self._csv_columns()[len(NON_LOSS_COLUMNS):]])
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
