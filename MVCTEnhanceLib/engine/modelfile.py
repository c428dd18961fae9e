"""Model files: a TorchScript generator with its JSON model card inside (torch.jit extra files).

TorchScript is used because it loads without the Python class definitions, in any process
(Slicer's Python included), from one file. torch.jit is deprecated from torch 2.10 on; its
warnings are silenced here (not in users' faces) and the three torch.jit calls are all in this
file. Replacement path: torch.export.export(generator, (example,), dynamic_shapes=...) saved
with torch.export.save(..., extra_files=...) and loaded with torch.export.load(...).module(),
once dynamic H/W shapes with reflect padding export reliably on the torch versions Slicer ships.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from .errors import ModelError
from .modelcard import CARD_FILENAME, ModelCard

PROBE_SIZE = 32  # probe input side (pixels): small, and a multiple of the network stride


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: the scripted module (eval mode, CPU), its card, the file's sha256."""

    module: Any
    card: ModelCard
    sha256: str
    path: str = ""


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit.*")
        yield


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(module: Any, card: ModelCard, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Script ``module`` (an nn.Module mapping (N,1,H,W) -> (N,1,H,W) in [-1,1]) and save it with
    ``card``; returns the file's sha256. The module is probed before anything is written."""
    import torch

    p = Path(path)
    if p.exists() and not overwrite:
        raise ModelError(f"model file '{p}' exists; pass overwrite=True (--overwrite) to replace it")
    was_training = getattr(module, "training", False)
    module = module.eval()
    with _quiet_jit():
        scripted = torch.jit.script(module)
    _probe(scripted, card, str(p))
    tmp = p.with_name(p.name + ".partial")
    with _quiet_jit():
        torch.jit.save(scripted, str(tmp), _extra_files={CARD_FILENAME: card.to_json()})
    os.replace(tmp, p)
    if was_training:
        module.train()
    return file_sha256(p)


def read_card(path: str | os.PathLike) -> ModelCard:
    """The card of a model file without loading its weights (for ``info`` and quick checks)."""
    p = _check_file(path)
    return ModelCard.from_json(_card_bytes(p))


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file '{p}' does not exist")
    if p.is_dir():
        raise ModelError(f"model path '{p}' is a folder, not a model file")
    if p.stat().st_size == 0:
        raise ModelError(f"model file '{p}' is empty")
    return p


def _card_bytes(p: Path) -> bytes:
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise ModelError(f"'{p}' is a Python pickle (a legacy checkpoint), not a TorchScript model file; "
                             "export a trained run with 'mvct-enhance export'")
        raise ModelError(f"'{p}' is not a TorchScript model file")
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
        if not any("/code/" in n for n in names):
            raise ModelError(f"'{p}' is a torch.save checkpoint (weights only), not a TorchScript model file; "
                             "export a trained run with 'mvct-enhance export'")
        cards = [n for n in names if n.endswith("/extra/" + CARD_FILENAME)]
        if not cards:
            raise ModelError(f"'{p}' is TorchScript but has no model card ({CARD_FILENAME}); "
                             "models must be saved with MVCTEnhanceLib.save_model or 'mvct-enhance export'")
        return z.read(cards[0])


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load, validate and probe a model file. Raises :class:`ModelError` naming the problem."""
    import torch

    p = _check_file(path)
    card = ModelCard.from_json(_card_bytes(p))
    try:
        with _quiet_jit():
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError or its own error types for corrupt archives
        raise ModelError(f"'{p}' could not be loaded as TorchScript: {str(exc).splitlines()[0]}") from None
    module.eval()
    _probe(module, card, str(p))
    return LoadedModel(module, card, file_sha256(p), str(p))


def _probe(module: Any, card: ModelCard, where: str) -> None:
    """Run a small ramp through the model: output must be a finite tensor shaped like the input."""
    import torch

    x = torch.linspace(-1.0, 1.0, PROBE_SIZE * PROBE_SIZE).reshape(1, 1, PROBE_SIZE, PROBE_SIZE)
    try:
        with torch.inference_mode():
            y = module(x)
    except Exception as exc:
        raise ModelError(f"model '{where}' fails on a (1, 1, {PROBE_SIZE}, {PROBE_SIZE}) input: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(y, torch.Tensor):
        raise ModelError(f"model '{where}' returns {type(y).__name__}, expected a tensor")
    if tuple(y.shape) != tuple(x.shape):
        raise ModelError(f"model '{where}' has the wrong output shape: {tuple(y.shape)} for input "
                         f"{tuple(x.shape)}; a generator must map (N, 1, H, W) to (N, 1, H, W)")
    if not torch.isfinite(y).all():
        raise ModelError(f"model '{where}' produces NaN or infinite values")
