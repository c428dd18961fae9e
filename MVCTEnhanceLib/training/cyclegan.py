"""The extended CycleGAN as it is optimised: the four translators in one module, the two
discriminators, the image pools, the learning-rate schedule and the one optimisation step.

Four networks (Enc_MV, Dec_MV, Enc_kV, Dec_kV) share one latent space; two PatchGAN discriminators
(LSGAN) see, half the time, an older fake from an image pool of 50. Adam for both sides; the
generators' step first (the discriminators frozen), then the discriminators' on pooled fakes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..engine.calibration import Calibration, tissue_calibration
from ..engine.files import read_json_object
from . import losses as L
from ..engine.errors import InputError
from ..engine.modelcard import hu_to_net_scale
from .bounded import BoundedTranslators, GaussianBlur, PiecewiseLinear
from .networks import Decoder, Encoder, FullResDecoder, FullResEncoder, Generator, PatchDiscriminator
from .options import TrainConfig


class Translators(nn.Module):
    """Enc_MV, Dec_MV, Enc_kV, Dec_kV in one module, so DDP sees one forward per step;
    ``forward`` returns every image the losses need."""

    def __init__(self, ngf: int, n_enc_res: int, n_dec_res: int, architecture: str = "encdec",
                 fullres_layers: int = 3) -> None:
        super().__init__()
        if architecture == "fullres":  # the same halves as a bounded fullres run: the bound is the difference
            self.enc_mv, self.enc_kv = FullResEncoder(1, ngf, fullres_layers), FullResEncoder(1, ngf, fullres_layers)
            self.dec_mv, self.dec_kv = FullResDecoder(1, ngf, fullres_layers), FullResDecoder(1, ngf, fullres_layers)
        else:
            self.enc_mv, self.enc_kv = Encoder(1, ngf, n_enc_res), Encoder(1, ngf, n_enc_res)
            self.dec_mv, self.dec_kv = Decoder(1, ngf, n_dec_res), Decoder(1, ngf, n_dec_res)

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

    def convert(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dec_kv(self.enc_mv(x)), self.dec_mv(self.enc_kv(y))

    def mv_to_kv(self) -> Generator:
        """G_MV->kV = Dec_kV o Enc_MV (sharing this module's weights): what is exported."""
        return Generator(self.enc_mv, self.dec_kv)


def calibration_of(config: TrainConfig) -> Calibration:
    """The run's MV->kV calibration: its JSON file, else the ICRU tissue points."""
    if config.calibration:
        return Calibration.from_dict(read_json_object(config.calibration, "calibration"), "calibration")
    return tissue_calibration()


def build_translators(config: TrainConfig) -> nn.Module:
    """The paper's translators, or the bounded ones (training.bounded) for ``generator="bounded"``."""
    if config.generator == "bounded":
        return BoundedTranslators(config.ngf, config.n_enc_res, config.n_dec_res, config.hu_window,
                                  calibration_of(config), config.max_change_hu, config.learned_change_hu,
                                  config.anchor_tv_weight, config.anchor_tv_iterations, config.change_highpass_px,
                                  config.noise_channel, config.architecture, config.fullres_layers)
    return Translators(config.ngf, config.n_enc_res, config.n_dec_res, config.architecture, config.fullres_layers)


class Discriminators(nn.Module):
    """D_MV and D_kV; real and fake go through each in one batch (instance norm is per sample)."""

    def __init__(self, ndf: int, n_down: int) -> None:
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


class CycleGAN:
    """Everything one optimisation step reads and changes: networks, optimisers, AMP scaler, image
    pools and the RNG of pools and label jitter (a checkpoint saves all of it, :meth:`state`).

    ``phi`` is the perceptual feature extractor (None when that loss is off). Built right after
    ``torch.manual_seed(config.seed)``, so every rank and every run starts from the same weights.
    """

    def __init__(self, config: TrainConfig, weights: dict[str, float], device: torch.device, amp: bool,
                 rank: int, phi: nn.Module | None) -> None:
        self.config, self.weights, self.device, self.amp, self.phi = config, weights, device, amp, phi
        torch.manual_seed(config.seed)
        self.G = build_translators(config).to(device)
        self.D = Discriminators(config.ndf, config.n_d_down).to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2),
                                      weight_decay=config.weight_decay)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2),
                                      weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.rng = torch.Generator().manual_seed(config.seed * 1000 + 17 + rank)  # pools and label jitter
        self.pool_mv, self.pool_kv = ImagePool(config.pool_size), ImagePool(config.pool_size)
        self.air_c = L.air_threshold(config.hu_window, config.air_threshold_hu)
        self.mv_cycle_view = GaussianBlur(config.mv_cycle_smooth_px).to(device)
        cal = calibration_of(config)
        self.cal = PiecewiseLinear(cal.mv_hu, cal.kv_hu, cal.mv_hu[0] <= -1000.0).to(device)
        # What the step calls: the DDP wrappers once :meth:`distribute` ran, else the modules.
        self.G_ddp: nn.Module = self.G
        self.D_ddp: nn.Module = self.D

    def distribute(self) -> None:
        """Wrap the translators and the discriminators in DistributedDataParallel (after loading weights)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.G_ddp = DDP(self.G, device_ids=ids)
        self.D_ddp = DDP(self.D, device_ids=ids)

    def set_lr(self, iteration: int) -> tuple[float, float]:
        """Set both optimisers' learning rates for 0-based ``iteration``; returns (lr_g, lr_d)."""
        cfg = self.config
        f = lr_factor(iteration, cfg.iterations, cfg.lr_schedule, cfg.decay_start)
        lr_g, lr_d = cfg.lr_g * f, cfg.lr_d * f
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d
        return lr_g, lr_d

    def step(self, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor | None = None) -> dict[str, float]:
        """One optimisation step on an MVCT batch ``x`` and a kV-CT batch ``y``; the unweighted losses.
        ``x_clean``: the clean twins of ``x`` (the denoise loss)."""
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
            terms["cycle"] = (L.cycle_loss(self.mv_cycle_view(x), self.mv_cycle_view(out["cycled_mv"]))
                              + L.cycle_loss(y, out["cycled_kv"]))
        if w["identity"] > 0:  # a bounded generator's target is its anchor (the calibrated input)
            terms["identity"] = (L.identity_loss(out.get("idt_mv_target", x), out["idt_mv"])
                                 + L.identity_loss(out.get("idt_kv_target", y), out["idt_kv"]))
        if w["perceptual"] > 0:
            terms["perceptual"] = (L.perceptual_loss(self.phi, out["fake_kv"], x)
                                   + L.perceptual_loss(self.phi, out["fake_mv"], y))
        if w["autoencoder"] > 0:
            terms["autoencoder"] = L.autoencoder_loss(x, out["ae_mv"]) + L.autoencoder_loss(y, out["ae_kv"])
        if w["air"] > 0:
            terms["air"] = L.air_loss(out["fake_kv"], x, self.air_c) + L.air_loss(out["fake_mv"], y, self.air_c)
        if w["denoise"] > 0:
            if x_clean is None:
                raise InputError("the denoise loss needs the MV slices' clean twins (--mv-clean)")
            terms["denoise"] = L.cycle_loss(self.calibrated(x_clean), out["fake_kv"])
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

    @torch.no_grad()
    def calibrated(self, x: torch.Tensor) -> torch.Tensor:
        """An MV batch (network range) through the run's calibration, back in the network range."""
        a, b = hu_to_net_scale(self.config.hu_window)
        return (self.cal((x - b) / a) * a + b).clamp(-1.0, 1.0)

    @torch.no_grad()
    def convert(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G_MV->kV(x), G_kV->MV(y)) in float32, without gradients (the sample images)."""
        fake_kv, fake_mv = self.G.convert(x, y)
        return fake_kv.float(), fake_mv.float()

    def load_networks(self, state: dict[str, Any]) -> None:
        """The translators' and discriminators' weights of a checkpoint (RuntimeError if they differ)."""
        self.G.load_state_dict(state["translators"])
        self.D.load_state_dict(state["discriminators"])

    def state(self) -> dict[str, Any]:
        """This object's part of a checkpoint: tensors and primitive types only."""
        return {"translators": self.G.state_dict(), "discriminators": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler": self.scaler.state_dict(), "rng_trainer": self.rng.get_state(),
                "pool_mv": self.pool_mv.state(), "pool_kv": self.pool_kv.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_networks(state)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.rng.set_state(state["rng_trainer"])
        self.pool_mv.load(state["pool_mv"], self.device)
        self.pool_kv.load(state["pool_kv"], self.device)
