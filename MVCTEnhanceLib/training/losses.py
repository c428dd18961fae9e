"""The losses of the extended CycleGAN, one function each (the formulas of the authors' talk).

Images are tensors (N, 1, H, W) in the network range [-1, 1] (HU through the model card's window).
Each function returns a scalar averaged over every element (batch included), as the authors' code
does; the trainer sums both translation directions and multiplies by the loss weights. Losses are
computed in float32 even under mixed precision.

Notation: x is an MVCT slice, y a kV-CT slice, G = G_MV->kV = Dec_kV o Enc_MV and
F = G_kV->MV = Dec_MV o Enc_kV.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..engine.modelcard import hu_to_net_scale
from .options import AIR_THRESHOLD_HU  # the air-loss option's default, written where every option is


def lsgan_loss(prediction: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss: mean((D(.) - target)^2)."""
    return torch.mean((prediction.float() - target) ** 2)


def adversarial_loss(d_on_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of LSGAN: the discriminator should call the converted image real (1)."""
    return lsgan_loss(d_on_fake, 1.0)


def discriminator_loss(d_on_real: torch.Tensor, d_on_fake: torch.Tensor,
                       real_target: float | torch.Tensor = 1.0,
                       fake_target: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Discriminator side of LSGAN, halved as in CycleGAN so D learns slower than G.

    ``real_target``/``fake_target`` may be tensors shaped like the predictions (label jitter).
    """
    return 0.5 * (lsgan_loss(d_on_real, real_target) + lsgan_loss(d_on_fake, fake_target))


def jittered_targets(like: torch.Tensor, value: float, sd: float,
                     generator: torch.Generator | None = None) -> torch.Tensor | float:
    """LSGAN label ``value`` plus Gaussian jitter of standard deviation ``sd`` (authors' code: 0.2)."""
    if sd <= 0:
        return value
    noise = torch.randn(like.shape, generator=generator, dtype=torch.float32, device="cpu")
    return value + sd * noise.to(like.device)


def cycle_loss(x: torch.Tensor, x_cycled: torch.Tensor) -> torch.Tensor:
    """Cycle consistency L1: mean |x - F(G(x))| (or |y - G(F(y))|)."""
    return torch.mean(torch.abs(x.float() - x_cycled.float()))


def identity_loss(x: torch.Tensor, x_mapped: torch.Tensor) -> torch.Tensor:
    """Identity-like L1: mean |x - Dec_MV(Enc_kV(x))|: an image already of the target domain should
    pass through the translator into its own domain unchanged (and |y - Dec_kV(Enc_MV(y))|)."""
    return torch.mean(torch.abs(x.float() - x_mapped.float()))


def perceptual_loss(phi: Callable[[torch.Tensor], torch.Tensor], converted: torch.Tensor,
                    source: torch.Tensor) -> torch.Tensor:
    """1/(w h n_cl) ||phi(converted) - phi(source)||^2, also averaged over the batch.

    Gradients flow through phi into ``converted`` (and so into the generator); phi's own
    parameters are frozen. The source's features are a fixed target (no gradient).
    """
    with torch.no_grad():
        target = phi(source.float())
    return torch.mean((phi(converted.float()) - target) ** 2)


def autoencoder_loss(x: torch.Tensor, x_reconstructed: torch.Tensor) -> torch.Tensor:
    """Autoencoder L1 through the shared latent: mean |x - Dec_MV(Enc_MV(x))| (or kV)."""
    return torch.mean(torch.abs(x.float() - x_reconstructed.float()))


def air_threshold(hu_window: tuple[float, float], threshold_hu: float = AIR_THRESHOLD_HU) -> float:
    """The air threshold C in the network range, through the model card's mapping."""
    a, b = hu_to_net_scale(hu_window)
    return a * float(threshold_hu) + b


def air_psi(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """psi(x) = x where x < C, else 0 (talk's formula, in the network range)."""
    return torch.where(x < threshold, x, torch.zeros_like(x))


def air_loss(converted: torch.Tensor, source: torch.Tensor, threshold: float) -> torch.Tensor:
    """Air-region L1: mean |psi(G(x)) - psi(x)|.

    Pixels that are tissue (>= C) in both images contribute nothing; air that appears or
    disappears, or changes inside air, is penalised. As the talk defines psi, the gradient reaches
    the generator only through pixels it renders as air (psi is constant above C): it pins air that
    is air and pulls spurious air back up, while air turned into tissue is penalised in value only.
    """
    c = float(threshold)
    return torch.mean(torch.abs(air_psi(converted.float(), c) - air_psi(source.float(), c)))
