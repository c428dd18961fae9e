"""Choosing the torch device: ``auto`` prefers CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

from typing import Any

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: Any = "auto") -> Any:
    """A ``torch.device`` for 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device.

    Asking for a device that is not available is an error, not a silent fallback to CPU: a user who
    asked for the GPU must know when it is not used.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device or "auto").strip().lower()
    mps_ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but this torch has no usable CUDA GPU "
                             f"(torch {torch.__version__}, CPU-only build or no driver); use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    if name == "mps":
        if not mps_ok:
            raise InputError("device 'mps' requested but Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    raise InputError(f"unknown device '{device}'; use one of {', '.join(DEVICE_CHOICES)} or cuda:N")
