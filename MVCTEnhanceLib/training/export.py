"""Run folder -> model file: the trained MV->kV generator (Dec_kV o Enc_MV) as the engine's
TorchScript format, with a model card filled from the run (losses and weights, data summary, pixel
spacing, HU window, phi, iterations, date, git commit)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..engine.errors import InputError, OutputError
from ..engine.files import read_json_object
from ..engine.modelcard import STRIDE, ModelCard
from ..engine.modelfile import save_model
from .cyclegan import build_translators, calibration_of
from .runfolder import CHECKPOINT_NAME, RUN_NAME, lineage_iterations, load_run_config, read_checkpoint

DEFAULT_INTENDED_USE = (
    "Research and positioning support: converts TomoTherapy-style MVCT slices (HU) into kV-CT-like "
    "images with the extended CycleGAN of Ozaki, Kaji et al. (Med. Phys. 2022). Use on images like "
    "the training data (modality, anatomy, pixel spacing); check the DIG map for changed anatomy.")


class ExportedModel(NamedTuple):
    path: Path
    sha256: str
    card: ModelCard


def generator_from_run(run_dir: str | os.PathLike,
                       checkpoint: str | os.PathLike | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The MV->kV generator of a run's latest checkpoint (or of ``checkpoint``, one the run kept) and
    that checkpoint's iteration/config: the paper's Dec_kV o Enc_MV, or a bounded run's
    :class:`.bounded.BoundedMVtoKV`."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"run folder '{run}' does not exist")
    config = load_run_config(run)
    ckpt = Path(checkpoint) if checkpoint else run / CHECKPOINT_NAME
    if not ckpt.is_file():
        raise InputError(f"run folder '{run}' has no {ckpt.name}; train (or resume) it first" if not checkpoint
                         else f"checkpoint '{ckpt}' does not exist")
    state = read_checkpoint(ckpt)
    translators = build_translators(config)
    try:
        translators.load_state_dict(state["translators"])
    except RuntimeError as exc:
        raise InputError(f"checkpoint '{ckpt}' does not match its config.json ({str(exc).splitlines()[0]})") from None
    return translators.mv_to_kv().eval(), {"iteration": int(state["iteration"]), "config": config}


def _short_sources(summary: Any, keep: int = 3) -> Any:
    """A dataset summary with a long file list shortened (the folders are in mv_sources/kv_sources)."""
    if isinstance(summary, dict) and isinstance(summary.get("sources"), list) and len(summary["sources"]) > keep:
        files = summary["sources"]
        return {**summary, "sources": files[:keep] + [f"... {len(files) - keep} more ({len(files)} files)"]}
    return summary


def build_card(run_dir: str | os.PathLike, iteration: int, *, checkpoint: str | os.PathLike | None = None,
               name: str = "mvctenhance-custom",
               version: str = "1.0.0", intended_use: str = DEFAULT_INTENDED_USE,
               extra: dict[str, Any] | None = None) -> ModelCard:
    """The model card of a run, from its config.json and run.json."""
    run = Path(run_dir)
    config = load_run_config(run)
    info_path = run / RUN_NAME
    info: dict[str, Any] = read_json_object(info_path, "training run record") if info_path.is_file() else {}
    weights = config.weights()
    training = {
        "preset": config.preset,
        "iterations": iteration,
        "iterations_total": lineage_iterations(Path(checkpoint) if checkpoint else run / CHECKPOINT_NAME, iteration),
        "checkpoint": Path(checkpoint).name if checkpoint else CHECKPOINT_NAME,
        "iterations_planned": config.iterations,
        "status": info.get("status", "unknown"),
        "date_utc": info.get("updated_utc", "unknown"),
        "started_utc": info.get("started_utc", "unknown"),
        "elapsed_s": info.get("elapsed_s"),
        "seconds_per_iteration": info.get("seconds_per_iteration"),
        "device": info.get("device", "unknown"),
        "world_size": info.get("world_size", 1),
        "amp": info.get("amp", False),
        "torch": info.get("torch", "unknown"),
        "git_commit": info.get("git_commit", "unknown"),
        "initialised_from": info.get("initialised_from"),
        "air_threshold_hu": config.air_threshold_hu,
        "optimizer": {"type": "Adam", "lr_g": config.lr_g, "lr_d": config.lr_d, "beta1": config.beta1,
                      "beta2": config.beta2, "weight_decay": config.weight_decay,
                      "lr_schedule": config.lr_schedule, "decay_start": config.decay_start,
                      "batch_size": config.batch_size, "label_jitter_sd": config.label_jitter_sd,
                      "pool_size": config.pool_size},
        "config": config.to_dict(),
    }
    data = {k: _short_sources(v) for k, v in info.get("data", {}).items()}
    data.setdefault("mv_sources", list(config.mv))
    data.setdefault("kv_sources", list(config.kv))
    data["crop_size"] = config.crop_size
    data["augmentation"] = {"enabled": config.augment, "max_shift_px": config.max_shift_px,
                            "max_rotation_deg": config.max_rotation_deg,
                            "field_truncation": config.field_truncation}
    card_extra: dict[str, Any] = {"training": training,
                                  "exported_utc": datetime.datetime.now(datetime.timezone.utc)
                                  .strftime("%Y-%m-%dT%H:%M:%SZ")}
    card_extra.update(extra or {})
    architecture = {"type": "Dec_kV o Enc_MV", "ngf": config.ngf, "encoder_res_blocks": config.n_enc_res,
                    "decoder_res_blocks": config.n_dec_res, "stride": STRIDE,
                    "discriminator": {"type": "PatchGAN (LSGAN)", "ndf": config.ndf, "n_down": config.n_d_down}}
    calibration = max_change = None
    if config.generator == "bounded":
        architecture["type"] = ("bounded: calibrated MVCT + clamp(TV(c) - c + L * highpass(Dec_kV o Enc_MV(rep(c))), "
                                "+-max_change_hu)")
    if config.architecture == "fullres":
        architecture.update(type=architecture["type"].replace("Dec_kV o Enc_MV", "FullResDecoder_kV o FullResEncoder_MV"),
                            fullres_layers=config.fullres_layers, receptive_field_px=4 * config.fullres_layers + 5)
    if config.generator == "bounded":
        architecture["bounded"] = {"learned_change_hu": config.learned_change_hu, "tv_weight": config.anchor_tv_weight,
                                   "tv_iterations": config.anchor_tv_iterations,
                                   "highpass_px": config.change_highpass_px, "input_channels": "rep(HU): full range "
                                   "-1000..2000 / 1000 and soft tissue +-250 / 250"}
        calibration, max_change = calibration_of(config).to_dict(), float(config.max_change_hu)
    phi = str(info.get("perceptual_phi", "unknown")) if weights["perceptual"] > 0 else "none (perceptual loss off)"
    return ModelCard(
        name=name, version=version, hu_window=tuple(config.hu_window), pixel_spacing_mm=tuple(config.pixel_spacing_mm),
        training_data=data, losses={k: float(v) for k, v in weights.items()}, intended_use=intended_use,
        license="Apache-2.0", perceptual_phi=phi, architecture=architecture, calibration=calibration,
        max_change_hu=max_change, extra=card_extra)


def read_card_extra(path: str | os.PathLike) -> dict[str, Any]:
    """Extra card fields from a JSON file holding one object (e.g. ``{"evaluation": {...}}``)."""
    p = Path(path)
    extra = read_json_object(p, "card extra file")
    reserved = sorted(set(extra) & (set(ModelCard.__dataclass_fields__) | {"schema", "schema_version", "training"}))
    if reserved:
        raise InputError(f"card extra file '{p}' may not set the card's own fields: {', '.join(reserved)}")
    return extra


def export_run(run_dir: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False,
               name: str = "mvctenhance-custom", version: str = "1.0.0",
               intended_use: str = DEFAULT_INTENDED_USE, extra: dict[str, Any] | None = None,
               checkpoint: str | os.PathLike | None = None) -> ExportedModel:
    """Write the run's MV->kV generator and its card to ``output`` (TorchScript); returns path, sha256, card."""
    out = Path(output)
    if out.exists() and not overwrite:
        raise OutputError(f"model file '{out}' exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"folder '{out.parent}' does not exist; create it first")
    gen, meta = generator_from_run(run_dir, checkpoint)
    card = build_card(run_dir, meta["iteration"], checkpoint=checkpoint, name=name, version=version,
                      intended_use=intended_use, extra=extra)
    card.architecture["parameters"] = sum(p.numel() for p in gen.parameters())
    with torch.no_grad():
        sha = save_model(gen, card, out, overwrite=overwrite)
    return ExportedModel(out, sha, card)
