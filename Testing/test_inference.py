"""Slice-by-slice conversion with real TorchScript generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.engine.errors import EnhanceCancelled, InputError
from MVCTEnhanceLib.engine.inference import enhance
from MVCTEnhanceLib.engine.modelfile import load_model, save_model
from MVCTEnhanceLib.training.tinymodel import tiny_card
from MVCTEnhanceLib.engine.volume import Volume


class Constant(nn.Module):
    """Outputs a constant network value whatever the input: exposes the HU mapping exactly."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0 + self.value


class AddConstant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


def _model(tmp_path, module, name="m.pt", outside_window=None, **card_fields):
    card = tiny_card(**card_fields)
    if outside_window:
        card.outside_window = outside_window
    path = tmp_path / name
    save_model(module, card, path)
    return load_model(path)


def test_tiny_generator_keeps_geometry_and_leaves_input_untouched(phantom_volume, tiny_model_path):
    original = phantom_volume.array.copy()
    phantom_volume.array.flags.writeable = False  # any write attempt would raise
    result = enhance(phantom_volume, tiny_model_path, batch_size=3)
    out = result.volume
    assert out.same_geometry(phantom_volume)
    assert out.array.dtype == np.float32 and np.isfinite(out.array).all()
    assert not np.array_equal(out.array, original)  # an untrained random generator changes the image
    np.testing.assert_array_equal(phantom_volume.array, original)
    assert result.parameters["model"]["name"] == "mvctenhance-tiny-test"
    assert len(result.parameters["model"]["sha256"]) == 64


@pytest.mark.parametrize("resample", [True, False])
def test_identity_generator_returns_the_input_exactly(phantom_volume, identity_model_path, resample):
    out = enhance(phantom_volume, identity_model_path, resample=resample).volume
    np.testing.assert_array_equal(out.array, phantom_volume.array)


def test_slices_are_taken_along_the_head_foot_axis(tmp_path, tiny_model_path):
    # The same anatomy stored sagittally (head-foot along numpy axis 2) must convert slice for slice
    # like its axial storage.
    axial = Volume(phantom_array((3, 36, 44)), spacing=(1.0, 1.0, 2.0))
    stored = np.ascontiguousarray(np.moveaxis(axial.array, 0, 2))  # (36, 44, 3): k becomes i
    sagittal = Volume(stored, spacing=(2.0, 1.0, 1.0), direction=(0, 1, 0, 0, 0, 1, 1, 0, 0))
    assert sagittal.axial_axis() == 2
    a = enhance(axial, tiny_model_path).volume.array
    s = enhance(sagittal, tiny_model_path).volume.array
    np.testing.assert_allclose(np.moveaxis(s, 2, 0), a, atol=0.01)


def test_batch_size_and_odd_sizes_do_not_change_the_result(tiny_model_path):
    vol = Volume(phantom_array((5, 37, 53)))  # not multiples of the stride: padded and cropped back
    one = enhance(vol, tiny_model_path, batch_size=1).volume.array
    many = enhance(vol, tiny_model_path, batch_size=4).volume.array
    assert one.shape == (5, 37, 53)
    np.testing.assert_allclose(one, many, atol=0.01)  # float32 summation order: << 1 HU


def test_values_outside_the_window_are_carried_over_not_clipped(tmp_path):
    vol = Volume(np.array([[[-1000.0, -150.0, 0.0, 50.0, 800.0, 1500.0]] * 4] * 2, np.float32))
    model = _model(tmp_path, Constant(0.0), hu_window=(-100.0, 100.0))  # network says "0 HU" everywhere
    out = enhance(vol, model, resample=False).volume.array[0, 0]
    np.testing.assert_allclose(out, [-900.0, -50.0, 0.0, 0.0, 700.0, 1400.0], atol=1e-3)
    gained = _model(tmp_path, Constant(0.0), name="g.pt", hu_window=(-100.0, 100.0),
                    outside_window={"below_gain": 0.5, "above_gain": 2.0})
    out = enhance(vol, gained, resample=False).volume.array[0, 0]
    np.testing.assert_allclose(out, [-450.0, -25.0, 0.0, 0.0, 1400.0, 2800.0], atol=1e-3)


def test_resampling_moves_only_the_networks_change(tmp_path):
    # Spacing 0.5 mm vs the card's 1 mm: the network runs on a half-size grid; a constant +100 HU
    # change must come back as exactly +100 HU on the original grid, fine detail untouched.
    vol = Volume(phantom_array((2, 64, 48)), spacing=(0.5, 0.5, 3.0))
    model = _model(tmp_path, AddConstant(0.1), hu_window=(-1000.0, 1000.0))  # 0.1 net = 100 HU
    inside = (vol.array > -1000.0) & (vol.array < 900.0)  # stays inside the window after +100
    result = enhance(vol, model)
    assert result.parameters["resampled"] and result.parameters["network_grid"] == [32, 24]
    diff = result.volume.array - vol.array
    np.testing.assert_allclose(diff[inside], 100.0, atol=0.05)
    off = enhance(vol, model, resample=False)
    assert not off.parameters["resampled"] and any("resampling is off" in w for w in off.warnings)


def test_progress_and_cancel(phantom_volume, tiny_model_path):
    calls = []
    enhance(phantom_volume, tiny_model_path, batch_size=1, progress=lambda d, t: calls.append((d, t)))
    n = phantom_volume.array.shape[0]
    assert calls == [(i, n) for i in range(n + 1)]

    checks = []

    def cancel_on_third() -> bool:
        checks.append(1)
        return len(checks) >= 3

    with pytest.raises(EnhanceCancelled, match="after 2 of 4 slices"):
        enhance(phantom_volume, tiny_model_path, batch_size=1, should_cancel=cancel_on_third)


def test_single_slice_volume_is_converted(tiny_model_path):
    vol = Volume(phantom_array((1, 40, 40)), source_ndim=2)
    out = enhance(vol, tiny_model_path).volume
    assert out.array.shape == (1, 40, 40) and out.source_ndim == 2


def test_domain_warnings(tmp_path, identity_model_path):
    vol = Volume(phantom_array((2, 32, 32)))
    narrow = _model(tmp_path, AddConstant(0.0), hu_window=(-50.0, 50.0))
    assert any("outside the model's window" in w for w in enhance(vol, narrow).warnings)
    assert enhance(vol, identity_model_path).warnings == []


def test_bad_arguments_give_clear_errors(phantom_volume, tiny_model_path):
    with pytest.raises(InputError, match="batch size"):
        enhance(phantom_volume, tiny_model_path, batch_size=0)
    with pytest.raises(InputError, match="needs a CUDA device"):
        enhance(phantom_volume, tiny_model_path, precision="fp16", device="cpu")
    with pytest.raises(InputError, match="unknown device"):
        enhance(phantom_volume, tiny_model_path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no usable CUDA"):
            enhance(phantom_volume, tiny_model_path, device="cuda")
    bad = phantom_volume.array.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="infinite"):
        enhance(phantom_volume.with_array(bad), tiny_model_path)
    with pytest.raises(InputError, match="needs a Volume"):
        enhance(phantom_volume.array, tiny_model_path)
