"""Model files: card round trip, sha256, and a clear error for each kind of bad file."""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import pytest
import torch
from torch import nn

from MVCTEnhanceLib.engine.errors import ModelError
from MVCTEnhanceLib.engine.modelcard import ModelCard
from MVCTEnhanceLib.engine.modelfile import _quiet_jit, load_model, read_card, save_model
from MVCTEnhanceLib.training.tinymodel import build_tiny_generator, tiny_card


class HalfSize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., ::2, ::2]


class ThreeChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_save_then_load_round_trips_card_and_hash(tmp_path):
    card = tiny_card(hu_window=(-600.0, 400.0), pixel_spacing_mm=(0.75, 0.8), notes="kept as extra")
    path = tmp_path / "m.pt"
    sha = save_model(build_tiny_generator(3), card, path)
    loaded = load_model(path)
    assert loaded.sha256 == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.card.to_dict() == card.to_dict()
    assert loaded.card.extra["notes"] == "kept as extra"
    assert read_card(path).hu_window == (-600.0, 400.0)
    x = torch.zeros(2, 1, 40, 48)
    assert loaded.module(x).shape == x.shape


def test_loading_prints_no_torch_jit_deprecation_warnings(tmp_path, recwarn):
    save_model(build_tiny_generator(), tiny_card(), tmp_path / "m.pt")
    warnings.simplefilter("always")
    load_model(tmp_path / "m.pt")
    assert not [w for w in recwarn if "jit" in str(w.message).lower()]


def test_existing_model_file_is_not_overwritten(tmp_path):
    path = tmp_path / "m.pt"
    save_model(build_tiny_generator(), tiny_card(), path)
    before = path.read_bytes()
    with pytest.raises(ModelError, match="exists"):
        save_model(build_tiny_generator(1), tiny_card(), path)
    assert path.read_bytes() == before


def test_missing_random_and_pickle_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "rand.pt").write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match="not a TorchScript model file"):
        load_model(tmp_path / "rand.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match="pickle"):
        load_model(tmp_path / "legacy.pt")
    torch.save(build_tiny_generator().state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match="torch.save checkpoint"):
        load_model(tmp_path / "ckpt.pt")


def test_torchscript_without_card_or_with_bad_card(tmp_path):
    with _quiet_jit():
        scripted = torch.jit.script(build_tiny_generator().eval())
        torch.jit.save(scripted, str(tmp_path / "nocard.pt"))
        torch.jit.save(scripted, str(tmp_path / "badjson.pt"), _extra_files={"model_card.json": "{not json"})
        bad = tiny_card().to_dict()
        bad["hu_window"] = [400, -600]
        del bad["license"]
        torch.jit.save(scripted, str(tmp_path / "badcard.pt"), _extra_files={"model_card.json": json.dumps(bad)})
    with pytest.raises(ModelError, match="no model card"):
        load_model(tmp_path / "nocard.pt")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(tmp_path / "badjson.pt")
    with pytest.raises(ModelError, match="hu_window.*license|license.*hu_window"):
        load_model(tmp_path / "badcard.pt")


def test_wrong_output_shape_and_failing_module_are_named(tmp_path):
    with pytest.raises(ModelError, match="wrong output shape"):
        save_model(HalfSize(), tiny_card(), tmp_path / "half.pt")
    assert not (tmp_path / "half.pt").exists()
    # A file made by other means (bypassing save_model's probe) is still rejected at load time.
    with _quiet_jit():
        torch.jit.save(torch.jit.script(HalfSize()), str(tmp_path / "half2.pt"),
                       _extra_files={"model_card.json": tiny_card().to_json()})
        torch.jit.save(torch.jit.script(ThreeChannels()), str(tmp_path / "three.pt"),
                       _extra_files={"model_card.json": tiny_card().to_json()})
    with pytest.raises(ModelError, match=r"wrong output shape: \(1, 1, 16, 16\)"):
        load_model(tmp_path / "half2.pt")
    with pytest.raises(ModelError, match="fails on a"):
        load_model(tmp_path / "three.pt")


def test_card_validation_lists_every_problem():
    d = tiny_card().to_dict()
    d.update(direction="kV->MV", pixel_spacing_mm=[0, 1], losses={"cycle": "ten"}, not_for_diagnosis="")
    with pytest.raises(ModelError) as err:
        ModelCard.from_dict(d)
    msg = str(err.value)
    for key in ("direction", "pixel_spacing_mm", "losses", "not_for_diagnosis"):
        assert key in msg
