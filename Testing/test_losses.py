"""Each loss of the extended CycleGAN against values computed by hand, and the feature extractor phi."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from MVCTEnhanceLib.training import losses as L
from MVCTEnhanceLib.engine.errors import InputError
from MVCTEnhanceLib.training.features import FilterBankPhi, VGGConv12, build_phi, load_vgg_conv12
from MVCTEnhanceLib.training.networks import build_generator


def t(values) -> torch.Tensor:
    """A (1, 1, 1, n) image from a list."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_lsgan_losses_by_hand():
    # generator side: (0.5 - 1)^2 and (1.5 - 1)^2 -> mean 0.25
    assert L.adversarial_loss(t([0.5, 1.5])).item() == pytest.approx(0.25)
    # D side: real [1, 0] vs 1 -> mean(0, 1) = 0.5; fake [0, 1] vs 0 -> 0.5; halved sum -> 0.5
    assert L.discriminator_loss(t([1.0, 0.0]), t([0.0, 1.0])).item() == pytest.approx(0.5)
    # a perfect discriminator has zero loss
    assert L.discriminator_loss(t([1.0, 1.0]), t([0.0, 0.0])).item() == 0.0
    # tensor targets (label jitter): real 0.8 vs targets 0.9 -> 0.01; fake 0.1 vs 0.0 -> 0.01; 0.5 * 0.02
    d = L.discriminator_loss(t([0.8]), t([0.1]), real_target=t([0.9]), fake_target=t([0.0]))
    assert d.item() == pytest.approx(0.01)


def test_label_jitter_is_seeded_and_off_at_zero():
    like = torch.zeros(2, 1, 4, 4)
    assert L.jittered_targets(like, 1.0, 0.0) == 1.0
    a = L.jittered_targets(like, 1.0, 0.2, torch.Generator().manual_seed(3))
    b = L.jittered_targets(like, 1.0, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == like.shape
    assert 0.05 < float((a - 1.0).std()) < 0.4


def test_cycle_identity_autoencoder_l1_by_hand():
    x = t([0.0, 1.0, -1.0, 0.5])
    rec = t([0.5, 1.0, 0.0, 0.5])
    # |0-0.5| + 0 + |-1-0| + 0 = 1.5 over 4 elements
    assert L.cycle_loss(x, rec).item() == pytest.approx(0.375)
    assert L.identity_loss(x, rec).item() == pytest.approx(0.375)
    assert L.autoencoder_loss(x, rec).item() == pytest.approx(0.375)
    assert L.autoencoder_loss(x, x.clone()).item() == 0.0  # perfect reconstruction


def test_air_threshold_maps_hu_through_the_window():
    assert L.air_threshold((-1000.0, 1000.0)) == pytest.approx(-0.6)
    assert L.air_threshold((-1024.0, 176.0)) == pytest.approx(2 * 424 / 1200 - 1)
    assert L.air_threshold((-600.0, 400.0)) == pytest.approx(-1.0)  # no air below the window: loss void


def test_air_loss_by_hand_and_ignores_tissue():
    c = L.air_threshold((-1000.0, 1000.0))  # -0.6 = -600 HU
    source = t([-1.0, -0.9, 0.0, 0.5])  # air, air, water, bone-ish
    converted = t([-0.8, 0.2, -0.7, 0.5])  # air changed, air turned tissue, spurious air, unchanged
    # psi(source) = [-1, -0.9, 0, 0]; psi(converted) = [-0.8, 0, -0.7, 0] -> |.| = .2 .9 .7 0 -> mean .45
    assert L.air_loss(converted, source, c).item() == pytest.approx(0.45)
    # voxels above -600 HU in both images are ignored, whatever their values
    assert L.air_loss(t([-0.8, 0.2, -0.7, 0.95]), t([-1.0, -0.9, 0.0, -0.3]), c).item() == pytest.approx(0.45)
    assert L.air_loss(t([0.1, 0.9, -0.5]), t([0.7, -0.2, 0.3]), c).item() == 0.0
    # -599 HU is not air, -601 HU is
    just_above, just_below = L.air_threshold((-1000.0, 1000.0), -599.0), L.air_threshold((-1000.0, 1000.0), -601.0)
    assert L.air_psi(t([just_above]), c).item() == 0.0
    assert L.air_psi(t([just_below]), c).item() == pytest.approx(just_below)


def test_perceptual_loss_is_normalised_mse_of_features():
    a = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4) / 12
    b = torch.zeros_like(a)
    # identity phi: 1/(w h n_cl) sum (a - b)^2
    assert L.perceptual_loss(lambda z: z, a, b).item() == pytest.approx(float((a ** 2).sum() / 12))
    # a two-channel phi: n_cl = 2 divides the sum as well
    two = lambda z: torch.cat([z, 2 * z], dim=1)  # noqa: E731
    assert L.perceptual_loss(two, a, b).item() == pytest.approx(float(5 * (a ** 2).sum() / 24))


def test_perceptual_gradient_flows_into_the_generator():
    gen = build_generator(ngf=4, n_enc_res=1, n_dec_res=1, seed=0)
    phi = build_phi(None)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    loss = L.perceptual_loss(phi, gen(x), x)
    loss.backward()
    grads = [p.grad for p in gen.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert float(gen.encoder.net[1].weight.grad.abs().sum()) > 0  # first conv of Enc_MV
    assert all(not p.requires_grad for p in phi.parameters()) and not list(phi.parameters())


def test_filter_bank_shapes_norms_and_constant_response():
    phi = FilterBankPhi()
    assert phi.out_channels == 64
    w = phi.weight
    assert w.shape == (32, 1, 13, 13)
    # per scale: filter 0 the Gaussian (unit sum), the rest band-pass (zero mean, unit L1)
    for scale in range(2):
        for i in range(16):
            k = w[scale * 16 + i, 0].double()
            if i == 0:
                assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
            else:
                assert float(k.sum()) == pytest.approx(0.0, abs=1e-6)
                assert float(k.abs().sum()) == pytest.approx(1.0, abs=1e-5)
    # a constant image excites only the luminance channels (+ half of the Gaussian pairs)
    out = phi(torch.full((1, 1, 24, 24), 0.3))
    assert out.shape == (1, 64, 24, 24)
    lum = [0, 16]  # Gaussian filters of the two scales, positive half
    assert torch.allclose(out[:, lum], torch.full_like(out[:, lum], 0.3), atol=1e-5)
    rest = [c for c in range(64) if c not in lum]
    assert float(out[:, rest].abs().max()) < 1e-5
    # a vertical step edge excites the x-derivative channel; responses are bounded by the input range
    edge = torch.full((1, 1, 24, 24), -1.0)
    edge[..., 12:] = 1.0
    r = phi(edge)
    assert float(r.max()) <= 1.0 + 1e-5
    assert float(r[:, 2:6].max()) > 0.2  # first derivative filters, sigma 1
    assert phi.description.startswith("fixed low-level filter bank")


def _vgg_state(extra: bool = True) -> dict:
    g = torch.Generator().manual_seed(0)
    state = {"features.0.weight": torch.randn(64, 3, 3, 3, generator=g) * 0.1,
             "features.0.bias": torch.randn(64, generator=g) * 0.1,
             "features.2.weight": torch.randn(64, 64, 3, 3, generator=g) * 0.05,
             "features.2.bias": torch.randn(64, generator=g) * 0.1}
    if extra:  # the rest of a torchvision VGG16 state dict is ignored
        state["features.5.weight"] = torch.zeros(128, 64, 3, 3)
        state["classifier.0.bias"] = torch.zeros(4096)
    return state


def test_vgg_conv12_loads_torchvision_state_dict(tmp_path):
    state = _vgg_state()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    phi = build_phi(path)
    assert isinstance(phi, VGGConv12)
    assert "VGG16 conv1_2" in phi.description and "vgg16.pth" in phi.description
    assert all(not p.requires_grad for p in phi.parameters())
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    rgb = ((x + 1) / 2).expand(-1, 3, -1, -1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    rgb = (rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    h = F.relu(F.conv2d(rgb, state["features.0.weight"], state["features.0.bias"], padding=1))
    expected = F.relu(F.conv2d(h, state["features.2.weight"], state["features.2.bias"], padding=1))
    assert torch.allclose(phi(x), expected, atol=1e-5)
    # also inside a {"state_dict": ...} wrapper
    torch.save({"state_dict": _vgg_state(extra=False)}, tmp_path / "wrapped.pt")
    assert isinstance(load_vgg_conv12(tmp_path / "wrapped.pt"), VGGConv12)


def test_vgg_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_vgg_conv12(tmp_path / "missing.pth")
    state = _vgg_state()
    del state["features.2.weight"]
    torch.save(state, tmp_path / "nokey.pth")
    with pytest.raises(InputError, match=r"lacks keys features\.2\.weight"):
        load_vgg_conv12(tmp_path / "nokey.pth")
    state = _vgg_state()
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)  # a grey-input network, not VGG16
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(InputError, match=r"wrong shapes: features\.0\.weight is \(64, 1, 3, 3\)"):
        load_vgg_conv12(tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a torch state dict"):
        load_vgg_conv12(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(InputError, match="holds a list"):
        load_vgg_conv12(tmp_path / "list.pth")
