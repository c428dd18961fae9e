"""The feature extractor phi of the perceptual loss.

The paper's phi is the output of VGG16's second conv layer (conv1_2, after its ReLU) on the grey
image tiled to 3 channels. ImageNet weights cannot be downloaded where this project is built, so
two extractors exist, both mapping (N, 1, H, W) in [-1, 1] to (N, 64, H, W):

* :class:`VGGConv12` loads conv1_1 and conv1_2 from a torchvision-format VGG16 state dict the user
  supplies (keys ``features.0.weight/bias`` and ``features.2.weight/bias``).
* :class:`FilterBankPhi` (the default) is a fixed, hand-designed bank of 64 channels that stands in
  for conv1_2: VGG16's first layers are known to learn little more than oriented edge, bar, blob
  and luminance detectors in sign pairs; here those are written down explicitly (Gaussian, LoG,
  first and second Gaussian derivatives, Gabor pairs, at two scales), each followed by ReLU of
  both signs. It needs no data, has no weights to train and is deterministic.

Every extractor has a ``description`` string; the trainer copies it into the model card, so a card
says truthfully which phi the model was trained with.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.errors import InputError

#: ImageNet statistics torchvision's VGG16 was trained with (RGB, inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_KEYS = {
    "features.0.weight": (64, 3, 3, 3),
    "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3),
    "features.2.bias": (64,),
}
FILTER_BANK_SCALES = (1.0, 2.0)  # Gaussian sigma in pixels
FILTER_BANK_RADIUS = 6  # kernels are 13 x 13: 3 sigma of the coarse scale
FILTER_BANK_DESCRIPTION = (
    "fixed low-level filter bank 'lowlevel-64' (MVCTEnhance; stands in for VGG16 conv1_2, no ImageNet "
    "weights): 64 channels = ReLU(+r) and ReLU(-r) of 32 filters on the [-1, 1] image: per scale "
    "(Gaussian sigma 1 and 2 px) a Gaussian, a Laplacian of Gaussian, first and second Gaussian "
    "derivatives at 0/45/90/135 degrees, and even/odd Gabor filters (wavelength 4 sigma) at 0/60/120 "
    "degrees; band-pass filters zero-mean with unit L1 norm, the Gaussian with unit sum")


class FilterBankPhi(nn.Module):
    """A fixed 64-channel bank of low-level filters with rectification (see the module docstring).

    Normalisation makes every response bounded by the input range (|r| <= 1 for inputs in [-1, 1]),
    so the perceptual loss has the scale of the image's own local structure.
    """

    description = FILTER_BANK_DESCRIPTION

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", _filter_bank(), persistent=False)
        self.pad = FILTER_BANK_RADIUS

    @property
    def out_channels(self) -> int:
        return 2 * self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.conv2d(F.pad(x, (self.pad,) * 4, mode="reflect"), self.weight.to(x.dtype))
        return torch.cat([F.relu(r), F.relu(-r)], dim=1)


def _filter_bank() -> torch.Tensor:
    """(32, 1, 13, 13) float32 kernels, deterministic."""
    size = 2 * FILTER_BANK_RADIUS + 1
    ax = torch.arange(size, dtype=torch.float64) - FILTER_BANK_RADIUS
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    kernels: list[torch.Tensor] = []
    for sigma in FILTER_BANK_SCALES:
        g = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
        kernels.append(g / g.sum())  # luminance (low-pass)
        r2 = (xx ** 2 + yy ** 2) / sigma ** 2
        kernels.append(_bandpass((r2 - 2.0) * g))  # LoG (sign: dark blob on bright ring positive)
        for deg in (0.0, 45.0, 90.0, 135.0):
            t = math.radians(deg)
            u = xx * math.cos(t) + yy * math.sin(t)
            kernels.append(_bandpass(-u / sigma ** 2 * g))  # first derivative along u: edges
        for deg in (0.0, 45.0, 90.0, 135.0):
            t = math.radians(deg)
            u = xx * math.cos(t) + yy * math.sin(t)
            kernels.append(_bandpass((u ** 2 / sigma ** 4 - 1.0 / sigma ** 2) * g))  # second derivative: bars
        wavelength = 4.0 * sigma
        for deg in (0.0, 60.0, 120.0):
            t = math.radians(deg)
            u = xx * math.cos(t) + yy * math.sin(t)
            kernels.append(_bandpass(torch.cos(2 * math.pi * u / wavelength) * g))  # even Gabor
            kernels.append(_bandpass(torch.sin(2 * math.pi * u / wavelength) * g))  # odd Gabor
    return torch.stack(kernels).unsqueeze(1).to(torch.float32)


def _bandpass(k: torch.Tensor) -> torch.Tensor:
    k = k - k.mean()  # no response to a constant image
    return k / k.abs().sum()


class VGGConv12(nn.Module):
    """VGG16 conv1_1 -> ReLU -> conv1_2 -> ReLU, torchvision layout, frozen.

    The grey [-1, 1] input is mapped to [0, 1], tiled to RGB and normalised with ImageNet's mean
    and standard deviation, as torchvision's VGG16 expects.
    """

    out_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1_1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv1_2 = nn.Conv2d(64, 64, 3, padding=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.description = "VGG16 conv1_2 (after ReLU), weights not loaded"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = ((x + 1.0) * 0.5).expand(-1, 3, -1, -1)
        rgb = (rgb - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return F.relu(self.conv1_2(F.relu(self.conv1_1(rgb))))


def load_vgg_conv12(path: str | os.PathLike) -> VGGConv12:
    """A frozen :class:`VGGConv12` from a torchvision-format VGG16 state dict file (``torch.save``).

    Extra keys (the rest of VGG16) are ignored; missing keys or wrong shapes raise
    :class:`InputError` naming them.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"VGG16 weights file '{p}' does not exist; give a torchvision-format VGG16 state dict "
                         "or leave the option out to use the built-in filter bank")
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, unsafe globals: all mean "not a state dict"
        raise InputError(f"VGG16 weights file '{p}' is not a torch state dict readable with weights_only=True "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"VGG16 weights file '{p}' holds a {type(state).__name__}, expected a state dict "
                         f"with keys {', '.join(VGG_KEYS)}")
    missing = [k for k in VGG_KEYS if k not in state]
    if missing:
        found = ", ".join(sorted(map(str, state))[:6]) or "none"
        raise InputError(f"VGG16 weights file '{p}' lacks keys {', '.join(missing)} (found: {found}...); "
                         "it must be a torchvision VGG16 state dict (vgg16().state_dict())")
    bad = [f"{k} is {tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__}, "
           f"expected {shape}" for k, shape in VGG_KEYS.items()
           if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != shape]
    if bad:
        raise InputError(f"VGG16 weights file '{p}' has wrong shapes: {'; '.join(bad)}")
    module = VGGConv12()
    with torch.no_grad():
        module.conv1_1.weight.copy_(state["features.0.weight"].float())
        module.conv1_1.bias.copy_(state["features.0.bias"].float())
        module.conv1_2.weight.copy_(state["features.2.weight"].float())
        module.conv1_2.bias.copy_(state["features.2.bias"].float())
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    module.description = (f"VGG16 conv1_2 (after ReLU) loaded from '{p.name}' (sha256 {digest[:16]}...), "
                          "grey tiled to RGB, ImageNet mean/std normalisation")
    return freeze(module)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def build_phi(vgg_weights: str | os.PathLike | None = None) -> nn.Module:
    """phi for the perceptual loss: VGG16 conv1_2 from ``vgg_weights`` if given, else the filter bank."""
    if vgg_weights:
        return load_vgg_conv12(vgg_weights)
    return freeze(FilterBankPhi())
