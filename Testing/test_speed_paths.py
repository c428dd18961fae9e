"""The enhance job's fast paths compute what the slow ones do: the body crop equals the network on
the whole (canonical) field, each map computed in its box equals the whole map, and the job's
threads, raw outputs and options are what the report says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from MVCTEnhanceLib.cli import main
from MVCTEnhanceLib.engine import inference, metrics
from MVCTEnhanceLib.engine.calibration import tissue_calibration
from MVCTEnhanceLib.engine.errors import InputError
from MVCTEnhanceLib.engine.job import EnhanceSettings, run_enhance
from MVCTEnhanceLib.engine.modelfile import load_model, save_model
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume
from MVCTEnhanceLib.training.networks import FullResDecoder, FullResEncoder, Generator, build_generator
from MVCTEnhanceLib.training.tinymodel import tiny_card

REPO = Path(__file__).resolve().parents[1]
MODELS = {"default": REPO / "Resources" / "models" / "mvctenhance-default.pt",
          "tiny": REPO / "Resources" / "models" / "mvctenhance-tiny-test.pt"}


def body_in_air(n: int = 2, size: int = 256, centre: tuple[int, int] = (128, 128), seed: int = 0) -> np.ndarray:
    """A small body (fat rim, muscle, bone, an air pocket) in a large field of noisy air (HU)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:size, 0:size].astype(np.float32)
    r, c = (r - centre[0]) / 40.0, (c - centre[1]) / 36.0
    img = np.full((n, size, size), -1000.0, np.float32)
    for s in range(n):
        sl = img[s]
        sl[r ** 2 + c ** 2 < 1] = -90.0
        sl[r ** 2 + c ** 2 < 0.75] = 40.0
        sl[(r - 0.3) ** 2 + (c + 0.1 * s) ** 2 < 0.05] = 900.0
        sl[(r + 0.4) ** 2 + (c - 0.3) ** 2 < 0.02] = -950.0
    return img + rng.normal(0.0, 30.0, img.shape).astype(np.float32)


def whole_field(volume: Volume, model, monkeypatch) -> inference.EnhanceResult:
    """The same job with the module run on every whole (canonical) field: the crop's reference."""
    with monkeypatch.context() as m:
        m.setattr(inference, "plan_network", lambda module: (None, "test: the whole field"))
        m.setattr(inference, "local_context_px", lambda module: None)
        return inference.enhance(volume, model, device="cpu")


def bounded_model(tmp_path: Path):
    card = tiny_card(name="bounded-test")
    card.calibration = tissue_calibration().to_dict()
    card.max_change_hu = 150.0
    save_model(build_generator(ngf=4, n_enc_res=1, n_dec_res=1, seed=3), card, tmp_path / "bounded.pt")
    return load_model(tmp_path / "bounded.pt")


# -- the body crop -----------------------------------------------------------------------------------

def fullres_model(tmp_path: Path):
    """The full-resolution halves (no normalisation, reflect-padded convolutions, LeakyReLU)."""
    module = Generator(FullResEncoder(1, 8, 2), FullResDecoder(1, 8, 2))
    save_model(module, tiny_card(name="fullres-test"), tmp_path / "fullres.pt")
    return load_model(tmp_path / "fullres.pt")


@pytest.mark.parametrize("model", ["default", "tiny", "fullres"])
@pytest.mark.parametrize("where, spacing", [((128, 128), 1.0), ((60, 170), 0.8)],
                         ids=["centre", "near-border-resampled"])
def test_the_body_crop_equals_the_network_on_the_whole_field_within_1_hu(tmp_path, model, where, spacing,
                                                                          monkeypatch):
    volume = Volume(body_in_air(centre=where), spacing=(spacing, spacing, 3.0))
    loaded = fullres_model(tmp_path) if model == "fullres" else load_model(MODELS[model])
    crop = inference.enhance(volume, loaded, device="cpu")
    info = crop.parameters["body_crop"]
    assert info["enabled"] and (info["regions"] or info["local_window"])  # the crop did run,
    assert info["network_pixels_fraction"] < 0.8 and info["local_window"] == (model == "default")  # its way
    reference = whole_field(volume, loaded, monkeypatch)
    assert reference.parameters["body_crop"]["network_pixels_fraction"] == 1.0
    body = volume.array > -400.0
    diff = np.abs(crop.volume.array - reference.volume.array)
    assert diff[body].max() < 1.0, f"crop differs by {diff[body].max():.3f} HU in the body"
    assert info["check_max_hu"] is not None and info["check_max_hu"] < 1.0  # the engine's own spot check


def _outside_kept_box(volume: Volume, margin_mm: float) -> np.ndarray:
    """Voxels farther than the kept box (body box + BODY_KEEP_MM) plus ``margin_mm`` from the body."""
    body = volume.array > -400.0
    rows, cols = np.flatnonzero(body.any(axis=(0, 2))), np.flatnonzero(body.any(axis=(0, 1)))
    k = int(np.ceil((inference.BODY_KEEP_MM + margin_mm) / volume.spacing[0]))
    inside = np.zeros(body.shape, bool)
    inside[:, max(0, rows[0] - k):rows[-1] + 1 + k, max(0, cols[0] - k):cols[-1] + 1 + k] = True
    return ~inside


@pytest.mark.parametrize("spacing", [1.0, 0.8], ids=["model-grid", "resampled"])
def test_air_beyond_the_kept_box_is_the_anchor(tmp_path, spacing):
    volume = Volume(body_in_air(), spacing=(spacing, spacing, 3.0))
    far = _outside_kept_box(volume, 3.0)  # resampling blends the change over ~1 voxel at the box's edge
    unbounded = inference.enhance(volume, load_model(MODELS["tiny"]), device="cpu").volume.array
    np.testing.assert_array_equal(unbounded[far], volume.array[far])  # an unbounded model's anchor: the MVCT itself
    bounded = inference.enhance(volume, bounded_model(tmp_path), device="cpu").volume.array
    np.testing.assert_allclose(bounded[far], tissue_calibration().apply(volume.array)[far], atol=1e-3)


def test_a_slice_of_air_only_is_its_anchor_and_runs_no_network():
    air = Volume(np.random.default_rng(1).normal(-1000.0, 30.0, (2, 128, 128)).astype(np.float32))
    result = inference.enhance(air, MODELS["tiny"], device="cpu")
    np.testing.assert_array_equal(result.volume.array, air.array)
    assert result.parameters["body_crop"]["network_pixels_fraction"] == 0.0
    bounded = inference.enhance(air, MODELS["default"], device="cpu")  # the shipped model: calibrated air
    np.testing.assert_allclose(bounded.volume.array, tissue_calibration().apply(air.array), atol=1e-3)
    assert bounded.parameters["body_crop"]["network_pixels_fraction"] == 0.0


def test_no_body_crop_is_the_module_on_the_field_as_given():
    volume = Volume(body_in_air(n=1, size=128, centre=(64, 64)), spacing=(1.0, 1.0, 3.0))
    loaded = load_model(MODELS["tiny"])
    result = inference.enhance(volume, loaded, device="cpu", body_crop=False)
    assert result.parameters["body_crop"] == {**result.parameters["body_crop"], "enabled": False, "regions": False,
                                              "network_pixels_fraction": 1.0}
    lo, hi = loaded.card.hu_window
    a, b = loaded.card.hu_to_net_scale()
    x = torch.from_numpy(np.clip(volume.array, lo, hi) * a + b)[:, None]
    with torch.inference_mode():
        y = loaded.module(x)[:, 0].numpy()
    expected = volume.array + (y - x[:, 0].numpy()) / a  # the engine's arithmetic, gains 1
    np.testing.assert_allclose(result.volume.array, expected, atol=2e-3)


class Wild(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(3.0 * x)


class Concat(nn.Module):
    """A skip connection by concatenation: not a chain of layers."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 1, 3, padding=1)
        self.second = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.cat([self.first(x), x], 1))


def test_networks_the_regions_cannot_follow_run_on_the_whole_canonical_field(tmp_path):
    plan, why = inference.plan_network(load_model(MODELS["tiny"]).module)
    assert plan is not None and why == ""
    shipped = load_model(MODELS["default"]).module  # bounded: calibration, clamp and blur are no chain,
    assert inference.plan_network(shipped)[0] is None and inference.network_is_local(shipped)  # but local
    assert not inference.network_is_local(load_model(MODELS["tiny"]).module)  # instance norms see the field
    for name, module in (("wild", Wild()), ("concat", Concat())):
        save_model(module, tiny_card(name=name), tmp_path / f"{name}.pt")
        loaded = load_model(tmp_path / f"{name}.pt")
        plan, why = inference.plan_network(loaded.module)
        assert plan is None and why
        volume = Volume(body_in_air(n=1, size=160, centre=(80, 80)))
        result = inference.enhance(volume, loaded, device="cpu")
        info = result.parameters["body_crop"]
        assert info["enabled"] and not info["regions"] and info["why_not_regions"] == why
        far = _outside_kept_box(volume, 0.0)
        np.testing.assert_array_equal(result.volume.array[far], volume.array[far])


def test_the_regions_run_under_autocast_as_on_a_gpu():
    """The GPU path's mixed dtypes (fp16/bf16 activations, float32 statistics) on the CPU's bf16."""
    module = load_model(MODELS["tiny"]).module
    plan, _ = inference.plan_network(module)
    x = torch.full((2, 1, 160, 160), -1.0)
    x[..., 64:100, 60:96] = torch.rand(2, 1, 36, 36) * 0.4 - 0.1
    box = inference._snap_box((16, 148, 12, 144), 160, 160, inference.BORDER_ZONE_PX)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = inference._Field.around(x, box, inference.BORDER_ZONE_PX, -1.0, inference.STRIDE).run(plan)
        whole = module(x)
    assert y.shape == (2, 1, box[1] - box[0], box[3] - box[2]) and torch.isfinite(y.float()).all()
    inside = (..., slice(64 - box[0], 100 - box[0]), slice(60 - box[2], 96 - box[2]))
    assert (y.float()[inside] - whole.float()[..., 64:100, 60:96]).abs().mean() < 0.02  # bf16: ~3 digits


# -- the maps in their boxes -------------------------------------------------------------------------

def test_both_nselfssim_maps_share_one_noise_and_equal_the_whole_map_and_scikit_image():
    from skimage.metrics import structural_similarity

    original = Volume(body_in_air(n=3, size=160, centre=(70, 90)))
    converted = original.with_array(original.array * 0.8)
    together = metrics.nselfssim_maps([original, converted], device="cpu", chunk_slices=2)
    for volume, joint in zip((original, converted), together):
        np.testing.assert_array_equal(joint.array, metrics.nselfssim_map(volume, device="cpu").array)
    body_box = metrics._box_2d(original.array > -200.0, 8)
    outside = np.ones(original.array.shape, bool)
    outside[:, body_box[0]:body_box[1], body_box[2]:body_box[3]] = False
    assert np.all(together[0].array[outside] == 1.0)  # air: both images clipped to the same constant
    stream = metrics.NSelfSSIMNoise(0)
    for k in range(original.array.shape[0]):  # the noise stream is the whole slices', in slice order
        noise = stream.slices(1, *original.array.shape[1:])[0] * np.float32(20.0)
        a = np.clip(original.array[k], -160.0, 240.0).astype(np.float64)
        b = np.clip((original.array[k] + noise).astype(np.float32), -160.0, 240.0).astype(np.float64)
        _, full = structural_similarity(a, b, full=True, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=400.0)
        np.testing.assert_allclose(together[0].array[k], full, atol=1e-5)


def test_dig_in_its_box_equals_numpy_gradient_of_the_whole_slice():
    original = Volume(body_in_air(n=2, size=120, centre=(30, 40)), spacing=(0.7, 0.9, 2.0))
    changed = original.array.copy()
    changed[:, 20:45, 25:60] += np.random.default_rng(2).normal(0.0, 40.0, (2, 25, 35)).astype(np.float32)
    dig = metrics.dig_map(original, original.with_array(changed), device="cpu").array
    d = (original.array - changed).astype(np.float64)
    h_rows, h_cols = original.inplane_spacing()
    g_r, g_c = np.gradient(d, h_rows, axis=1), np.gradient(d, h_cols, axis=2)
    np.testing.assert_allclose(dig, g_r ** 2 + g_c ** 2, rtol=1e-4, atol=1e-3)
    assert np.all(dig[:, 50:, :] == 0.0)


def _body_mask_whole_volume(volume: Volume) -> np.ndarray:
    """The body mask's steps on the whole volume (the engine runs them on the body's box)."""
    mask = volume.array > -400.0
    radius = max(1, min(5, round(metrics.BODY_OPENING_MM / min(volume.inplane_spacing()))))
    cross = ndimage.generate_binary_structure(2, 1)[np.newaxis]
    opened = ndimage.binary_opening(mask, structure=cross, iterations=radius)
    mask = opened if opened.any() else mask
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(s) if s.any() else s for s in mask])


def test_body_mask_and_tissue_change_in_their_boxes_equal_the_whole_volume():
    arr = body_in_air(n=3, size=140, centre=(50, 80))
    arr[:, 120:126, 10:130] = 200.0  # a couch: another component
    arr[1, 5:9, 5:9] = 300.0  # a speck in the corner
    volume = Volume(arr, spacing=(0.9, 0.9, 3.0))
    mask = metrics.body_mask(volume)
    np.testing.assert_array_equal(mask, _body_mask_whole_volume(volume))
    converted = volume.with_array(arr + np.where(arr > 500.0, -800.0, 0.0).astype(np.float32))  # bone erased
    cal = tissue_calibration()
    from_volume, s_volume = metrics.tissue_change_map(volume.with_array(cal.apply(arr)), converted, mask)
    from_function, s_function = metrics.tissue_change_map(volume, converted, mask, calibrate=cal.apply)
    np.testing.assert_array_equal(from_volume.array, from_function.array)
    assert s_volume == s_function and s_volume["n_voxels"] > 0


# -- the job around the network ----------------------------------------------------------------------

def test_the_job_never_writes_into_its_input(tmp_path):
    """A body filling the field makes every box the whole volume: a box is then a view, not a copy."""
    arr = body_in_air(n=2, size=64, centre=(32, 32))
    volume = Volume(arr.copy(), spacing=(1.0, 1.0, 3.0))
    volume.array.flags.writeable = False  # any write attempt raises
    outcome = run_enhance(volume, bounded_model(tmp_path), settings=EnhanceSettings(device="cpu"))
    np.testing.assert_array_equal(volume.array, arr)
    assert outcome.assessment is not None and outcome.assessment.tissue_change is not None


def test_threads_are_chosen_given_and_restored():
    assert 1 <= inference.automatic_threads() <= inference.physical_cores()
    with pytest.raises(InputError, match="threads"):
        EnhanceSettings(threads=0)
    volume = Volume(body_in_air(n=1, size=96, centre=(48, 48)))
    before = torch.get_num_threads()
    outcome = run_enhance(volume, load_model(MODELS["tiny"]), settings=EnhanceSettings(device="cpu", threads=1))
    assert torch.get_num_threads() == before
    assert outcome.report()["parameters"]["threads"] == {"intra_op": 1, "source": "given"}
    auto = run_enhance(volume, load_model(MODELS["tiny"]), settings=EnhanceSettings(device="cpu", assess=False))
    assert auto.report()["parameters"]["threads"]["intra_op"] == inference.automatic_threads() or \
        auto.report()["parameters"]["threads"]["source"].startswith("automatic")


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat: the load average is used instead")
def test_busy_cores_see_other_processes_now_and_not_a_minute_later():
    """Real CPU-bound processes on every CPU of this process: the automatic choice drops to one thread;
    once they are gone it rises again at once (the 1-minute load average would still count them)."""
    cpus = len(os.sched_getaffinity(0))
    spin = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cpus)]
    try:
        time.sleep(1.0)  # started and spinning
        inference.busy_cores()  # a window that began before they did
        saturated = inference.busy_cores()
        threads = inference.automatic_threads()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert saturated >= inference.physical_cores() - 1 and threads <= max(1, inference.physical_cores() // 2)
    inference.busy_cores()  # a window that began while they spun
    assert inference.busy_cores() < saturated


def test_cli_options_reach_the_job_and_outputs_are_written_raw(tmp_path, capsys):
    src = tmp_path / "mvct.nrrd"
    write_volume(Volume(body_in_air(n=2, size=96, centre=(48, 48)), spacing=(1.0, 1.0, 3.0)), src)
    code = main(["enhance", str(src), "-o", str(tmp_path / "e.nrrd"), "--dig", str(tmp_path / "d.nrrd"),
                 "--report", str(tmp_path / "r.json"), "--model", str(MODELS["tiny"]), "--device", "cpu",
                 "--no-body-crop", "--threads", "1", "--progress", "none"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(1 CPU threads)" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["body_crop"] is False and report["settings"]["threads"] == 1
    assert report["parameters"]["body_crop"]["enabled"] is False
    for name in ("e.nrrd", "d.nrrd"):
        header = (tmp_path / name).read_bytes()[:2000].split(b"\n\n")[0]
        assert b"encoding: raw" in header
    assert read_volume(tmp_path / "e.nrrd").same_geometry(read_volume(src))
    with pytest.raises(SystemExit) as refused:
        main(["enhance", str(src), "-o", str(tmp_path / "x.nrrd"), "--threads", "0"])
    assert refused.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_separate_parts_run_in_their_own_boxes_and_equal_the_whole_field(monkeypatch):
    """A couch across the field below the body and an arm beside it: the local default model runs on a
    box per part (the couch's own strip, not the box around everything) with the whole field's result."""
    arr = body_in_air(n=2, size=256, centre=(100, 110))
    arr[:, 200:210, 8:248] = 150.0  # the couch, 5 cm below the body
    arr[:, 90:112, 200:214] = 40.0  # an arm
    volume = Volume(arr, spacing=(1.0, 1.0, 3.0))
    model = load_model(MODELS["default"])
    crop = inference.enhance(volume, model, device="cpu")
    info = crop.parameters["body_crop"]
    assert info["local_window"] and info["boxes_max"] >= 2 and info["check_max_hu"] < 0.01
    with monkeypatch.context() as m:  # the same parts in one box around everything
        m.setattr(inference, "BODY_CROP_MAX_BOXES", 1)
        one_box = inference.enhance(volume, model, device="cpu")
    assert one_box.parameters["body_crop"]["boxes_max"] == 1
    assert info["network_pixels_fraction"] < 0.8 * one_box.parameters["body_crop"]["network_pixels_fraction"]
    whole = whole_field(volume, model, monkeypatch)
    body = arr > -400.0
    assert np.abs(crop.volume.array - whole.volume.array)[body].max() < 1.0
    assert np.abs(crop.volume.array - one_box.volume.array)[body].max() < 1.0
