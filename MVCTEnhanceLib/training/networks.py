"""Networks of the extended CycleGAN (Ozaki, Kaji et al., Med. Phys. 49(6) 2022).

Four networks share one latent space: Enc_MV, Dec_MV, Enc_kV, Dec_kV, and
G_MV->kV = Dec_kV o Enc_MV. Together an encoder and a decoder are the ResNet-9-block CycleGAN
generator (ngf 32) cut after its fifth residual block: reflect-padded 7x7 conv, two stride-2 convs,
5 residual blocks | 4 residual blocks, two x2 upsamplings (nearest resize + conv, which avoids the
checkerboard of transposed convs), 7x7 conv, tanh. Instance norm without affine, ReLU, no skips.
The classes are TorchScript-compatible: the engine scripts a :class:`Generator` into a model file
and the trainer uses the same classes.
"""

from __future__ import annotations

import torch
from torch import nn

from .options import DEFAULTS


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """Image (N, 1, H, W) in [-1, 1] -> latent (N, 4 ngf, H/4, W/4)."""

    def __init__(self, in_channels: int = 1, ngf: int = DEFAULTS["ngf"], n_res: int = DEFAULTS["n_enc_res"]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), _norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_res)]
        self.net = nn.Sequential(*layers)
        self.latent_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latent (N, 4 ngf, H/4, W/4) -> image (N, 1, H, W) in [-1, 1] (tanh)."""

    def __init__(self, out_channels: int = 1, ngf: int = DEFAULTS["ngf"], n_res: int = DEFAULTS["n_dec_res"]) -> None:
        super().__init__()
        ch = ngf * 4
        layers: list[nn.Module] = [ResidualBlock(ch) for _ in range(n_res)]
        for _ in range(2):
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.ReflectionPad2d(1),
                       nn.Conv2d(ch, ch // 2, 3), _norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class FullResEncoder(nn.Module):
    """Full-resolution first half of a translator: 3x3 convolutions at the input's resolution, LeakyReLU,
    no normalisation; the latent is ``width`` feature maps of the image's size (receptive field 2 n + 3 px
    with its decoder). For changes that live at the pixel scale (noise), which the paper's 4x-downsampled
    encoder without skips was measured to learn far slower."""

    def __init__(self, in_channels: int = 2, width: int = 16, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, padding_mode="reflect"),
                                   nn.LeakyReLU(0.1)]
        for _ in range(n_layers):
            layers += [nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FullResDecoder(nn.Module):
    """Second half of :class:`FullResEncoder`'s translator: latent -> (N, 1, H, W) in [-1, 1] (tanh)."""

    def __init__(self, out_channels: int = 1, width: int = 16, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_layers):
            layers += [nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.1)]
        layers += [nn.Conv2d(width, out_channels, 3, padding=1, padding_mode="reflect"), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Generator(nn.Module):
    """One translation direction: ``decoder(encoder(x))`` (e.g. Dec_kV o Enc_MV)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def build_generator(ngf: int = DEFAULTS["ngf"], n_enc_res: int = DEFAULTS["n_enc_res"],
                    n_dec_res: int = DEFAULTS["n_dec_res"], seed: int | None = None) -> Generator:
    """A fresh MV->kV generator; ``seed`` makes its initial weights reproducible."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Generator(Encoder(1, ngf, n_enc_res), Decoder(1, ngf, n_dec_res))
    return Generator(Encoder(1, ngf, n_enc_res), Decoder(1, ngf, n_dec_res))


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN: 4x4 convs, base ``ndf``, 3 stride-2 downsamplings, LeakyReLU 0.2, instance norm."""

    def __init__(self, in_channels: int = 1, ndf: int = DEFAULTS["ndf"], n_down: int = DEFAULTS["n_d_down"]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for i in range(1, n_down):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), _norm(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, ch * 2, 4, 1, 1), _norm(ch * 2), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ch * 2, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
