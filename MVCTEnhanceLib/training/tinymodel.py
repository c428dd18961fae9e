"""Small generators for tests, Slicer self-tests and the pre-training demo.

They use the real architecture (``networks.Generator``) at a tiny width with seeded weights, so
tests exercise the same code path as the default model in well under a second per volume. They are
untrained: their output is not a kV-like image and their cards say so.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..engine.modelcard import ModelCard
from ..engine.modelfile import save_model
from .networks import build_generator

TINY_NAME = "mvctenhance-tiny-test"


class IdentityGenerator(nn.Module):
    """Returns its input: conversion with it must give the input back (DIG == 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def tiny_card(name: str = TINY_NAME, hu_window: tuple[float, float] = (-1000.0, 1000.0),
              pixel_spacing_mm: tuple[float, float] = (1.0, 1.0), **extra: object) -> ModelCard:
    return ModelCard(
        name=name, version="0.1.0", hu_window=hu_window, pixel_spacing_mm=pixel_spacing_mm,
        training_data={"description": "none: seeded random weights, untrained"},
        losses={}, intended_use="Software tests and Slicer self-tests only. Output is not a kV-like image.",
        license="Apache-2.0", perceptual_phi="none (untrained)",
        architecture={"type": "Dec_kV o Enc_MV", "ngf": 4, "encoder_res_blocks": 1, "decoder_res_blocks": 1,
                      "stride": 4},
        extra=dict(extra))


def build_tiny_generator(seed: int = 0) -> nn.Module:
    # Near-identity behaviour would hide bugs in the HU mapping; random weights do not.
    return build_generator(ngf=4, n_enc_res=1, n_dec_res=1, seed=seed)


def write_tiny_model(path: str | os.PathLike, seed: int = 0, identity: bool = False, overwrite: bool = False,
                     **card_kwargs: object) -> str:
    """Write a tiny (or identity) model file; returns its sha256."""
    module = IdentityGenerator() if identity else build_tiny_generator(seed)
    name = "mvctenhance-identity-test" if identity else TINY_NAME
    card = tiny_card(name=name, **card_kwargs)  # type: ignore[arg-type]
    return save_model(module, card, path, overwrite=overwrite)
