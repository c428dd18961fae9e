"""The physics anchor and the bounded change: no weights can move a voxel further than the card allows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.engine.calibration import (ICRU_TISSUE_POINTS, Calibration, from_ivdt, read_ivdt,
                                               tissue_calibration)
from MVCTEnhanceLib.engine.errors import InputError, ModelError
from MVCTEnhanceLib.engine.inference import enhance
from MVCTEnhanceLib.engine.modelcard import ModelCard
from MVCTEnhanceLib.engine.modelfile import load_model, read_card, save_model
from MVCTEnhanceLib.engine.volume import Volume
from MVCTEnhanceLib.training.networks import build_generator
from MVCTEnhanceLib.training.tinymodel import tiny_card, write_tiny_model

BOUND = 150.0


class Wild(nn.Module):
    """A 'generator' whose output is far outside [-1, 1]: what a broken or hostile file could hold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e4 * torch.sin(37.0 * x) - 3e3


def _bounded_card(**kw) -> ModelCard:
    card = tiny_card(name="bounded-test", **kw)
    card.calibration = tissue_calibration().to_dict()
    card.max_change_hu = BOUND
    return card


@pytest.mark.parametrize("module", [Wild(), build_generator(ngf=4, n_enc_res=1, n_dec_res=1, seed=3)],
                         ids=["wild-output", "random-weights"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 3.0), (0.7, 1.3, 3.0)], ids=["model-grid", "resampled"])
def test_no_voxel_moves_further_than_the_bound_from_its_calibrated_value(tmp_path, module, spacing):
    path = tmp_path / "bounded.pt"
    save_model(module, _bounded_card(), path)
    arr = phantom_array((3, 40, 44), seed=5)
    arr[0, :4, :4] = -3000.0  # padding outside a reconstruction circle
    arr[1, 10:14, 10:14] = 2500.0  # dense bone, above the window
    volume = Volume(arr, spacing=spacing, direction=ROTATED_DIRECTION)
    result = enhance(volume, load_model(path), device="cpu")
    anchor = tissue_calibration().apply(arr)
    change = result.volume.array - anchor
    assert np.abs(change).max() <= BOUND + 1e-3
    assert np.abs(change).max() > 0.5 * BOUND  # the network did use its room: the test is not vacuous


def test_bounded_card_round_trips_and_older_engines_would_refuse_it(tmp_path):
    path = tmp_path / "bounded.pt"
    save_model(build_generator(ngf=4, n_enc_res=1, n_dec_res=1, seed=1), _bounded_card(), path)
    card = read_card(path)
    assert card.bounded and card.max_change_hu == BOUND
    assert card.anchor() == tissue_calibration()
    d = card.to_dict()
    assert d["schema_version"] == 2 and d["calibration"]["mv_hu"][2] == -49.0
    old = tmp_path / "old.pt"
    write_tiny_model(old)
    old_card = read_card(old).to_dict()
    assert old_card["schema_version"] == 1 and "max_change_hu" not in old_card  # older cards stay as they were
    bad = dict(d, max_change_hu=-5)
    with pytest.raises(ModelError, match="max_change_hu"):
        ModelCard.from_dict(bad)
    with pytest.raises(ModelError, match="calibration"):
        ModelCard.from_dict(dict(d, calibration={"mv_hu": [0, -10], "kv_hu": [0, 1]}))


def test_tissue_calibration_hits_the_icru_points_and_inverts():
    cal = tissue_calibration()
    mv = np.array([p[0] for p in ICRU_TISSUE_POINTS])
    np.testing.assert_allclose(cal.apply(mv), [p[1] for p in ICRU_TISSUE_POINTS], atol=1e-3)
    x = np.linspace(-1200, 2500, 500)
    np.testing.assert_allclose(cal.invert(cal.apply(x)), x, atol=1e-2)
    assert np.all(np.diff(cal.apply(x)) > 0)  # monotone
    assert cal.apply(np.array([-2000.0]))[0] == -2000.0  # padding below air is kept
    t = torch.tensor(x, dtype=torch.float32)
    np.testing.assert_allclose(cal.apply_torch(t).numpy(), cal.apply(x), atol=1e-2)
    np.testing.assert_allclose(cal.apply_torch(t, inverse=True).numpy(), cal.invert(x), atol=1e-2)
    with pytest.raises(InputError, match="increase"):
        Calibration((0.0, 10.0, 5.0), (0.0, 1.0, 2.0), "bad")


def test_calibration_from_two_ivdts_composes_mv_to_density_to_kv(tmp_path):
    mv_file = tmp_path / "mvct_ivdt.csv"
    mv_file.write_text("HU,density\n-1000,0.0\n-49,0.95\n0,1.0\n783,1.6\n1500,2.2\n")
    kv_file = tmp_path / "ct_ivdt.txt"
    kv_file.write_text("# kV planning CT\n-1000 0.0\n-76 0.95\n0 1.0\n1561 1.6\n3000 2.4\n")
    cal = from_ivdt(read_ivdt(mv_file, "MVCT IVDT"), read_ivdt(kv_file, "planning CT IVDT"))
    np.testing.assert_allclose(cal.apply(np.array([-1000.0, -49.0, 0.0, 783.0])), [-1000.0, -76.0, 0.0, 1561.0],
                               atol=1e-3)
    assert json.loads(json.dumps(cal.to_dict()))["mv_hu"][0] == -1000.0
    (tmp_path / "flat.csv").write_text("0,1.0\n100,1.0\n")
    with pytest.raises(InputError, match="increase strictly"):
        read_ivdt(tmp_path / "flat.csv", "MVCT IVDT")
    with pytest.raises(InputError, match="share no density"):
        from_ivdt([(0, 1.0), (100, 1.1)], [(0, 2.0), (100, 2.1)])


def test_cli_calibrate_from_ivdts_and_enhance_with_that_calibration(tmp_path, capsys):
    """A clinic's calibration replaces the card's anchor of a bounded model, and the report shows it."""
    from MVCTEnhanceLib import cli
    from MVCTEnhanceLib.engine.volume import write_volume

    (tmp_path / "mv.csv").write_text("HU,density\n-1000,0.0\n-60,0.94\n0,1.0\n700,1.55\n")
    (tmp_path / "kv.txt").write_text("-1000 0.0\n-90 0.94\n0 1.0\n1400 1.55\n")
    cal_file = tmp_path / "cal.json"
    assert cli.main(["calibrate", "--mvct-ivdt", str(tmp_path / "mv.csv"), "--ct-ivdt", str(tmp_path / "kv.txt"),
                     "-o", str(cal_file)]) == 0
    cal = Calibration.from_dict(json.loads(cal_file.read_text()))
    np.testing.assert_allclose(cal.apply(np.array([-60.0, 700.0])), [-90.0, 1400.0], atol=1e-3)
    assert cli.main(["calibrate", "--mvct-ivdt", str(tmp_path / "mv.csv"), "-o", str(tmp_path / "x.json")]) == 2
    assert "give both IVDTs" in capsys.readouterr().err

    model = tmp_path / "bounded.pt"
    save_model(build_generator(ngf=4, n_enc_res=1, n_dec_res=1, seed=2), _bounded_card(), model)
    arr = phantom_array((2, 40, 40), seed=6)
    mvct = write_volume(Volume(arr), tmp_path / "mvct.nrrd")
    report = tmp_path / "report.json"
    assert cli.main(["enhance", str(mvct), "-o", str(tmp_path / "out.nrrd"), "--model", str(model), "--device", "cpu",
                     "--calibration", str(cal_file), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["model"]["card"]["calibration"]["kv_hu"] == list(cal.kv_hu)  # the one used, not the shipped one
    from MVCTEnhanceLib.engine.volume import read_volume

    out = read_volume(tmp_path / "out.nrrd").array
    assert np.abs(out - cal.apply(arr)).max() <= BOUND + 1e-3  # bounded around the clinic's anchor
    tiny = tmp_path / "tiny.pt"
    write_tiny_model(tiny)
    assert cli.main(["enhance", str(mvct), "-o", str(tmp_path / "o2.nrrd"), "--model", str(tiny), "--device", "cpu",
                     "--calibration", str(cal_file)]) == 2
    assert "no physics anchor" in capsys.readouterr().err
    assert not (tmp_path / "o2.nrrd").exists()
