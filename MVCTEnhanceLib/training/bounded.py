"""The safe generator: a physics anchor plus a bounded learned change (this project's extension of
the paper's extended CycleGAN).

    G_MV->kV(x) = A(x) + clamp(TV(C(x)) - C(x) + L * head(Dec_kV(Enc_MV(rep(C(x)))))), +-B)
    G_kV->MV(y) = C^-1(y) + L * Dec_MV(Enc_kV(rep(C^-1(y)), noise))

C is the card's MV -> kV calibration, A(x) = C(x) the anchor the engine computes, TV a fixed
Chambolle total-variation denoiser (weight and iterations in the card; 0 switches it off), L the
learned part's bound and B (``max_change_hu``) the bound the engine enforces on the whole change.
``head`` optionally keeps only the high-frequency part of the learned change (the change minus its
Gaussian blur): measured on an independent simulator, the low-frequency part is what a network
trained on phantoms gets wrong on real anatomy. The last convolution of both decoders starts at
zero, so training starts exactly at the anchor.

The four networks and their shared latent space stay the paper's; every loss stays (the trainer's
step), with these meanings: the identity term compares G(y) with C(y) and F(x) with C^-1(x) (the
calibrated input), the autoencoder reconstructs each domain's image from its own latent as a change
of at most L. Everything is TorchScript-compatible: :meth:`BoundedTranslators.mv_to_kv` is what a
model file holds.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..engine.calibration import Calibration
from ..engine.modelcard import hu_to_net_scale
from .networks import Decoder, Encoder, FullResDecoder, FullResEncoder

def rep(hu: torch.Tensor) -> torch.Tensor:
    """The two input channels of every translator: HU -1000..2000 -> [-1, 2] (bone) and a soft-tissue
    window +-250 HU -> [-1, 1] (the contrast that matters), so the network sees both at once."""
    return torch.cat([hu.clamp(-1000.0, 2000.0) / 1000.0, hu.clamp(-250.0, 250.0) / 250.0], 1)


class TotalVariation(nn.Module):
    """Chambolle's projection algorithm for the ROF model (scikit-image's ``denoise_tv_chambolle``
    iteration, a fixed number of iterations, differentiable); ``weight`` in HU."""

    def __init__(self, weight: float, iterations: int) -> None:
        super().__init__()
        self.weight = float(weight)
        self.iterations = int(iterations)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.weight <= 0.0 or self.iterations <= 0:
            return f
        tau = 0.25
        px = torch.zeros_like(f)
        py = torch.zeros_like(f)
        for _ in range(self.iterations):
            u = f - _divergence(px, py)
            gx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1, 0, 0))
            gy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
            den = 1.0 + tau / self.weight * torch.sqrt(gx * gx + gy * gy + 1e-12)
            px = (px - tau * gx) / den
            py = (py - tau * gy) / den
        return f - _divergence(px, py)


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    return (px - F.pad(px[..., :, :-1], (1, 0, 0, 0))) + (py - F.pad(py[..., :-1, :], (0, 0, 1, 0)))


class GaussianBlur(nn.Module):
    def __init__(self, sigma_px: float) -> None:
        super().__init__()
        self.sigma = float(sigma_px)
        r = max(1, int(math.ceil(3.0 * max(self.sigma, 1e-3))))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / max(self.sigma, 1e-3)) ** 2)
        self.register_buffer("kernel", (k / k.sum()).reshape(1, 1, 1, -1))
        self.radius = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0.0:
            return x
        r = self.radius
        x = F.pad(x, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, self.kernel.to(x.dtype))
        return F.conv2d(x, self.kernel.to(x.dtype).transpose(2, 3))


class PiecewiseLinear(nn.Module):
    """A calibration curve as a module (knots as buffers): TorchScript and any device."""

    def __init__(self, xs: tuple[float, ...], ys: tuple[float, ...], keep_below_air: bool) -> None:
        super().__init__()
        self.register_buffer("xs", torch.tensor(xs, dtype=torch.float32))
        self.register_buffer("ys", torch.tensor(ys, dtype=torch.float32))
        self.slope_lo = float((ys[1] - ys[0]) / (xs[1] - xs[0]))
        self.slope_hi = float((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
        self.keep_below_air = keep_below_air

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, ys = self.xs.to(x.dtype), self.ys.to(x.dtype)
        seg = (torch.bucketize(x.detach().contiguous(), xs) - 1).clamp(0, xs.numel() - 2)
        x0, y0 = xs[seg], ys[seg]
        out = y0 + (ys[seg + 1] - y0) / (xs[seg + 1] - x0) * (x - x0)
        out = torch.where(x < xs[0], ys[0] + self.slope_lo * (x - xs[0]), out)
        out = torch.where(x > xs[-1], ys[-1] + self.slope_hi * (x - xs[-1]), out)
        if self.keep_below_air:
            out = torch.where(x < -1000.0, x, out)
        return out


def _zero_last_conv(decoder: nn.Module) -> None:
    last = [m for m in decoder.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


class BoundedMVtoKV(nn.Module):
    """What a bounded model file holds: calibrated MVCT in the card's network range -> t in [-1, 1],
    the change divided by ``max_change_hu`` (the engine clamps t and multiplies it back)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, hu_window: tuple[float, float], max_change_hu: float,
                 learned_change_hu: float, tv_weight: float, tv_iterations: int, highpass_px: float) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.a, self.b = hu_to_net_scale(hu_window)
        self.max_change_hu = float(max_change_hu)
        self.learned_change_hu = float(learned_change_hu)
        self.tv = TotalVariation(tv_weight, tv_iterations)
        self.blur = GaussianBlur(highpass_px)
        self.highpass = float(highpass_px) > 0.0

    def change_hu(self, calibrated_hu: torch.Tensor) -> torch.Tensor:
        """The change in HU (not yet clamped to the bound) for a calibrated MVCT in HU."""
        learned = self.learned_change_hu * self.decoder(self.encoder(rep(calibrated_hu)))
        if self.highpass:
            learned = learned - self.blur(learned)
        return self.tv(calibrated_hu) - calibrated_hu + learned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = (x - self.b) / self.a
        return (self.change_hu(hu) / self.max_change_hu).clamp(-1.0, 1.0)


class BoundedTranslators(nn.Module):
    """Enc_MV, Dec_MV, Enc_kV, Dec_kV with the anchors and bounds of the module docstring.

    Same interface as :class:`.cyclegan.Translators`: images in the network range (the training
    window), ``forward`` returns every image the losses need (plus the identity targets)."""

    def __init__(self, ngf: int, n_enc_res: int, n_dec_res: int, hu_window: tuple[float, float],
                 calibration: Calibration, max_change_hu: float, learned_change_hu: float, tv_weight: float,
                 tv_iterations: int, highpass_px: float, noise_channel: bool, architecture: str = "encdec",
                 fullres_layers: int = 3) -> None:
        super().__init__()
        if architecture == "fullres":
            def encoder(cin: int) -> nn.Module:
                return FullResEncoder(cin, ngf, fullres_layers)

            def decoder() -> nn.Module:
                return FullResDecoder(1, ngf, fullres_layers)
        else:
            def encoder(cin: int) -> nn.Module:
                return Encoder(cin, ngf, n_enc_res)

            def decoder() -> nn.Module:
                return Decoder(1, ngf, n_dec_res)
        self.enc_mv, self.dec_kv = encoder(2), decoder()
        self.enc_kv, self.dec_mv = encoder(3 if noise_channel else 2), decoder()
        for dec in (self.dec_kv, self.dec_mv):
            _zero_last_conv(dec)
        self.cal = PiecewiseLinear(calibration.mv_hu, calibration.kv_hu, calibration.mv_hu[0] <= -1000.0)
        self.cal_inv = PiecewiseLinear(calibration.kv_hu, calibration.mv_hu, calibration.kv_hu[0] <= -1000.0)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.a, self.b = hu_to_net_scale(hu_window)
        self.bound = float(max_change_hu)
        self.learned = float(learned_change_hu)
        self.noise_channel = noise_channel
        self.tv = TotalVariation(tv_weight, tv_iterations)
        self.blur = GaussianBlur(highpass_px)
        self.highpass = float(highpass_px) > 0
        self.settings = {"max_change_hu": self.bound, "learned_change_hu": self.learned, "tv_weight": tv_weight,
                         "tv_iterations": tv_iterations, "highpass_px": highpass_px}

    # HU <-> the network range: the training data are windowed and clipped; so are the outputs.
    def _hu(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b) / self.a

    def _net(self, hu: torch.Tensor) -> torch.Tensor:
        return (hu * self.a + self.b).clamp(-1.0, 1.0)

    def _learned(self, t: torch.Tensor) -> torch.Tensor:
        change = self.learned * t
        return change - self.blur(change) if self.highpass else change

    def _to_kv(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """kV image from a calibrated image c (HU) and a latent: the exported generator's arithmetic."""
        change = (self.tv(c) - c + self._learned(self.dec_kv(z))).clamp(-self.bound, self.bound)
        return self._net(c + change)

    def _enc_kv(self, m: torch.Tensor) -> torch.Tensor:
        inputs = rep(m)
        if self.noise_channel:  # a white-noise channel to draw MV noise from (F is stochastic)
            inputs = torch.cat([inputs, torch.randn_like(m)], 1)
        return self.enc_kv(inputs)

    def G(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cal(self._hu(x))
        return self._to_kv(c, self.enc_mv(rep(c)))

    def F(self, y: torch.Tensor) -> torch.Tensor:
        m = self.cal_inv(self._hu(y))
        return self._net(m + self.learned * self.dec_mv(self._enc_kv(m)))

    def forward(self, x: torch.Tensor, y: torch.Tensor, identity: bool = True,
                autoencoder: bool = True) -> dict[str, torch.Tensor]:
        x_hu, y_hu = self._hu(x), self._hu(y)
        c = self.cal(x_hu)
        m = self.cal_inv(y_hu)
        z_x, z_y = self.enc_mv(rep(c)), self._enc_kv(m)
        fake_kv = self._to_kv(c, z_x)
        fake_mv = self._net(m + self.learned * self.dec_mv(z_y))
        out = {"fake_kv": fake_kv, "fake_mv": fake_mv, "cycled_mv": self.F(fake_kv), "cycled_kv": self.G(fake_mv)}
        if autoencoder:  # each domain back from its own latent (Dec_MV o Enc_MV, Dec_kV o Enc_kV)
            out["ae_mv"] = self._net(x_hu + self.learned * self.dec_mv(z_x))
            out["ae_kv"] = self._net(y_hu + self.learned * self.dec_kv(z_y))
        if identity:  # an image already of the target domain: the change should vanish (vs its anchor)
            c_y = self.cal(y_hu)
            out["idt_kv"] = self._to_kv(c_y, self.enc_mv(rep(c_y)))
            out["idt_kv_target"] = self._net(c_y)
            m_x = self.cal_inv(x_hu)
            out["idt_mv"] = self._net(m_x + self.learned * self.dec_mv(self._enc_kv(m_x)))
            out["idt_mv_target"] = self._net(m_x)
        return out

    def convert(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.G(x), self.F(y)

    def mv_to_kv(self) -> BoundedMVtoKV:
        """The exported generator (sharing this module's weights)."""
        s = self.settings
        return BoundedMVtoKV(self.enc_mv, self.dec_kv, self.hu_window, s["max_change_hu"], s["learned_change_hu"],
                             s["tv_weight"], s["tv_iterations"], s["highpass_px"])
