"""What a training run folder holds, and reading it back (for resuming, fine-tuning and export).

``config.json`` (the :class:`TrainConfig`), ``checkpoint.pt`` (latest, atomic, tensors and primitive
types only, so it loads with ``torch.load(weights_only=True)``), ``losses.csv`` and ``losses.png``,
``samples/`` and ``run.json`` (status, data summary, phi, git commit, timing, where the initial
weights came from).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..engine.errors import InputError
from ..engine.files import read_json_object
from .options import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
KEPT_CHECKPOINTS = "checkpoints"  # --keep-checkpoints: iteration_N.pt, one per checkpoint
CHECKPOINT_FORMAT = "mvctenhance-train-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_NAME = "config.json"
RUN_NAME = "run.json"
LOSS_CSV = "losses.csv"
LOSS_PNG = "losses.png"
SAMPLES_DIR = "samples"


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
