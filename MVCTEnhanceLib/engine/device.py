"""Choosing the torch device: ``auto`` prefers CUDA, then Apple MPS, then CPU.

torch is imported inside the functions only (the Slicer module imports this file at start-up, and
lists the devices before torch may even be installed): without torch the machine has the CPU only.
"""

from __future__ import annotations

import importlib.util
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


def _torch_or_none(torch_module: Any = None) -> Any:
    if torch_module is not None:
        return torch_module
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except ImportError:  # installed but broken (a half-finished install): as good as absent here
        return None
    return torch


def _mps_available(torch: Any) -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available_devices(torch_module: Any = None) -> list[str]:
    """The device names usable here, in the order to offer them: 'auto' and 'cpu' always; 'cuda' (and
    'cuda:0', 'cuda:1', ... when there are several GPUs) and 'mps' only when torch says they work.

    ``torch_module`` replaces ``import torch`` (tests). Without torch: ``['auto', 'cpu']``.
    """
    torch = _torch_or_none(torch_module)
    names = ["auto", "cpu"]
    if torch is None:
        return names
    if torch.cuda.is_available():
        names.append("cuda")
        count = int(torch.cuda.device_count())
        if count > 1:
            names += [f"cuda:{i}" for i in range(count)]
    if _mps_available(torch):
        names.append("mps")
    return names


def auto_device_name(torch_module: Any = None) -> str:
    """What 'auto' resolves to here ('cuda', 'mps' or 'cpu'), the same choice as :func:`resolve_device`."""
    torch = _torch_or_none(torch_module)
    if torch is None:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if _mps_available(torch) else "cpu"


def describe_device(name: str = "auto", torch_module: Any = None) -> str:
    """The device ``name`` runs on, in words, e.g. 'cuda:0 (NVIDIA H200)', 'mps (Apple GPU)', 'cpu';
    for 'auto' what it resolves to. Never raises: an unusable device is described as such."""
    torch = _torch_or_none(torch_module)
    name = str(name or "auto").strip().lower()
    if name == "auto":
        name = auto_device_name(torch)
        if torch is None:
            return "cpu (PyTorch is not installed yet)"
    if name == "cpu":
        return "cpu"
    if torch is None:
        return f"{name} (not available: PyTorch is not installed yet)"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"{name} (not available: no usable CUDA GPU)"
        index = int(name.split(":", 1)[1]) if ":" in name else int(torch.cuda.current_device())
        if index >= int(torch.cuda.device_count()):
            return f"{name} (not available: only {torch.cuda.device_count()} CUDA device(s))"
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if name == "mps":
        return "mps (Apple GPU)" if _mps_available(torch) else "mps (not available here)"
    return f"{name} (unknown device)"
