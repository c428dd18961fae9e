"""Metrics: NSelfSSIM/SSIM maps against scikit-image, DIG against analytic gradients, body mask,
summaries and the SynthRAD full-reference metrics, on small real volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.engine import metrics
from MVCTEnhanceLib.engine.errors import EnhanceCancelled, InputError
from MVCTEnhanceLib.engine.volume import Volume

# Head-foot (LPS z) along ITK i, i.e. numpy axis 2 (a sagittal-like grid): columns of the matrix are i, j, k.
SAGITTAL_DIRECTION = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)


def _skimage_nselfssim(img: np.ndarray, axis: int, noise_sd=20.0, window=(-160.0, 240.0), seed=0) -> np.ndarray:
    """Reference: the documented noise draw (per slice in slice order) and scikit-image's SSIM map."""
    moved = np.moveaxis(img, axis, 0)
    stream = metrics.NSelfSSIMNoise(seed)
    noise = np.concatenate([stream.slices(1, *moved.shape[1:]) for _ in range(moved.shape[0])])
    lo, hi = window
    a = np.clip(moved, lo, hi).astype(np.float64)
    b = np.clip(moved + noise * np.float32(noise_sd), lo, hi).astype(np.float64)
    _, s = structural_similarity(a, b, channel_axis=0, full=True, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=hi - lo)
    return np.moveaxis(s, 0, axis)


def test_nselfssim_matches_skimage_on_a_2d_slice():
    img = phantom_array((1, 48, 56), seed=3)
    vol = Volume(img, spacing=(0.8, 0.8, 1.0), source_ndim=2)
    ours = metrics.nselfssim_map(vol, device="cpu").array
    ref = _skimage_nselfssim(img, 0)
    assert ours.shape == img.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.min() < 0.9  # the map is not trivially 1: the comparison means something


@pytest.mark.parametrize("direction,axis", [(ROTATED_DIRECTION, 0), (SAGITTAL_DIRECTION, 2)])
def test_nselfssim_matches_skimage_on_a_3d_volume(direction, axis):
    img = phantom_array((6, 40, 44), seed=1) if axis == 0 else np.ascontiguousarray(
        np.moveaxis(phantom_array((6, 40, 44), seed=1), 0, 2))
    vol = Volume(img, spacing=(0.9, 1.1, 3.0), origin=(-30.5, 12.25, -7.0), direction=direction)
    assert vol.axial_axis() == axis
    ours = metrics.nselfssim_map(vol, noise_sd=30.0, seed=7, device="cpu", chunk_slices=4).array
    ref = _skimage_nselfssim(img, axis, noise_sd=30.0, seed=7)
    assert np.abs(ours - ref).max() < 1e-4


def test_nselfssim_increases_with_the_noise_already_in_the_image():
    clean = phantom_array((2, 64, 64), seed=0, noise_sd=0.0)
    body = clean > -950
    rng = np.random.default_rng(5)
    means = []
    for sd in (0.0, 10.0, 25.0, 50.0, 100.0):
        noisy = clean + rng.normal(0.0, sd, clean.shape).astype(np.float32) * body
        m = metrics.nselfssim_map(Volume(noisy), device="cpu").array
        means.append(float(m[body].mean()))
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_nselfssim_is_deterministic_and_chunk_independent(phantom_volume):
    a = metrics.nselfssim_map(phantom_volume, seed=11, device="cpu", chunk_slices=16).array
    b = metrics.nselfssim_map(phantom_volume, seed=11, device="cpu", chunk_slices=1).array
    c = metrics.nselfssim_map(phantom_volume, seed=11, device="cpu", chunk_slices=3).array
    d = metrics.nselfssim_map(phantom_volume, seed=12, device="cpu").array
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert np.abs(a - d).max() > 1e-3


def test_progress_and_cancel(phantom_volume):
    seen = []
    metrics.nselfssim_map(phantom_volume, device="cpu", chunk_slices=1, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    calls = []
    with pytest.raises(EnhanceCancelled):
        metrics.nselfssim_map(phantom_volume, device="cpu", chunk_slices=1,
                              progress=lambda d, t: calls.append(d), should_cancel=lambda: len(calls) >= 2)
    assert calls == [1, 2]
    with pytest.raises(EnhanceCancelled):
        metrics.dig_map(phantom_volume, phantom_volume, device="cpu", should_cancel=lambda: True)


def test_dig_of_identical_images_is_exactly_zero(phantom_volume):
    converted = phantom_volume.with_array(phantom_volume.array.copy())
    dig = metrics.dig_map(phantom_volume, converted, device="cpu")
    assert dig.same_geometry(phantom_volume)
    assert np.array_equal(dig.array, np.zeros_like(dig.array))


def test_dig_of_a_linear_ramp_is_analytic_with_anisotropic_spacing():
    shape = (3, 20, 30)
    sx, sy = 0.7, 1.3  # mm: ITK i (numpy columns), j (numpy rows)
    rows, cols = np.mgrid[0:shape[1], 0:shape[2]]
    diff = (3.0 * cols * sx + 4.0 * rows * sy).astype(np.float32)  # 3 HU/mm along x, 4 along y
    original = Volume(phantom_array(shape, seed=2), spacing=(sx, sy, 2.5))
    converted = original.with_array(original.array - diff[np.newaxis])
    dig = metrics.dig_map(original, converted, device="cpu").array
    np.testing.assert_allclose(dig, 9.0 + 16.0, rtol=2e-3)  # borders too: one-sided is exact on a ramp
    # Border semantics of numpy.gradient on a non-linear difference.
    noisy = original.with_array(original.array - np.random.default_rng(0).normal(0, 50, shape).astype(np.float32))
    g_r, g_c = np.gradient((original.array - noisy.array).astype(np.float64), sy, sx, axis=(1, 2))
    np.testing.assert_allclose(metrics.dig_map(original, noisy, device="cpu").array, g_r ** 2 + g_c ** 2,
                               rtol=1e-4, atol=1e-3)


def test_dig_inplane_axes_follow_the_axial_axis():
    shape = (12, 10, 8)
    spacing = (0.5, 2.0, 1.5)  # numpy axis 2, 1, 0
    idx0 = np.arange(shape[0], dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
    idx2 = np.arange(shape[2], dtype=np.float32)[None, None, :] * np.ones(shape, np.float32)
    base = np.zeros(shape, np.float32)
    sag = Volume(base, spacing=spacing, direction=SAGITTAL_DIRECTION)
    axial = Volume(base, spacing=spacing)
    assert sag.axial_axis() == 2 and axial.axial_axis() == 0
    # A difference varying only along numpy axis 2 (10 HU/mm): no in-plane edge when that axis is axial.
    ramp2 = -10.0 * idx2 * spacing[0]
    assert np.array_equal(metrics.dig_map(sag, sag.with_array(ramp2), device="cpu").array, np.zeros(shape))
    np.testing.assert_allclose(metrics.dig_map(axial, axial.with_array(ramp2), device="cpu").array, 100.0,
                               rtol=1e-5)
    # Varying along numpy axis 0 (spacing 1.5 mm, 2 HU/mm): in-plane for the sagittal grid only.
    ramp0 = -2.0 * idx0 * spacing[2]
    np.testing.assert_allclose(metrics.dig_map(sag, sag.with_array(ramp0), device="cpu").array, 4.0, rtol=1e-5)
    assert np.array_equal(metrics.dig_map(axial, axial.with_array(ramp0), device="cpu").array, np.zeros(shape))


def test_dig_refuses_a_different_grid(phantom_volume):
    moved = Volume(phantom_volume.array.copy(), spacing=phantom_volume.spacing,
                   origin=(0.0, 0.0, 0.0), direction=phantom_volume.direction)
    with pytest.raises(InputError, match="geometry"):
        metrics.dig_map(phantom_volume, moved)


def test_bad_arguments_are_input_errors(phantom_volume):
    with pytest.raises(InputError, match="window"):
        metrics.nselfssim_map(phantom_volume, window=(240.0, -160.0), device="cpu")
    with pytest.raises(InputError, match="noise"):
        metrics.nselfssim_map(phantom_volume, noise_sd=-1.0, device="cpu")
    with pytest.raises(InputError, match="seed"):
        metrics.nselfssim_map(phantom_volume, seed=None, device="cpu")
    with pytest.raises(InputError, match="chunk_slices"):
        metrics.nselfssim_map(phantom_volume, chunk_slices=0, device="cpu")
    bad = phantom_volume.array.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.nselfssim_map(phantom_volume.with_array(bad), device="cpu")


def _phantom_with_couch():
    img = phantom_array((6, 64, 64), seed=4)
    img[:, 60:62, 4:60] = 0.0  # a thin couch top below the body...
    img[:, 57:61, 31:33] = 0.0  # ...joined to it by a 2-pixel bridge (a cable, a strap)
    return Volume(img, spacing=(0.9, 1.1, 3.0), direction=ROTATED_DIRECTION)


def test_body_mask_keeps_the_body_and_its_air_and_drops_couch_and_outside():
    vol = _phantom_with_couch()
    mask = metrics.body_mask(vol)
    r, c = np.mgrid[0:64, 0:64]
    r, c = (r - 32) / 32, (c - 32) / 32
    inside = (r / 0.75) ** 2 + (c / 0.85) ** 2 < 1  # the body minus a thin rim
    pocket = (r + 0.3) ** 2 + (c - 0.3) ** 2 < 0.01  # -900 HU air pocket inside
    assert mask.shape == vol.array.shape and mask.dtype == bool
    assert mask[:, inside].all()
    assert mask[:, pocket].all() and (vol.array[:, pocket] < -400).all()
    assert not mask[:, 60:62, :].any()  # couch
    assert not mask[:, :4, :].any() and not mask[:, :, :3].any()  # outside air
    # Almost all of the true body (the ellipse of the phantom) is kept.
    body = (r / 0.8) ** 2 + (c / 0.9) ** 2 < 1
    assert mask[:, body].mean() > 0.98


def test_summarize_on_a_hand_made_array():
    values = np.arange(12, dtype=np.float32).reshape(3, 2, 2)  # values[s, r, c] = 4s + 2r + c
    mask = np.zeros((3, 2, 2), bool)
    mask[0, :, 0] = True  # 0, 2
    mask[2] = True  # 8, 9, 10, 11
    s = metrics.summarize(values, mask)
    assert s["n_voxels"] == 6
    assert s["mean"] == pytest.approx(40 / 6)
    assert s["median"] == pytest.approx(8.5)
    assert s["p95"] == pytest.approx(10.75)  # linear interpolation at rank 0.95 * 5 = 4.75
    assert s["per_slice_mean"] == [pytest.approx(1.0), None, pytest.approx(9.5)]
    along_cols = metrics.summarize(Volume(values), mask, axis=2)["per_slice_mean"]
    assert along_cols == [pytest.approx(5.0), pytest.approx(10.0)]
    json.dumps(s)
    with pytest.raises(InputError, match="empty"):
        metrics.summarize(values, np.zeros_like(mask))
    with pytest.raises(InputError, match="shape"):
        metrics.summarize(values, mask[:2])


def test_assess_computes_maps_and_serialisable_summaries(phantom_volume):
    shifted = phantom_volume.with_array(phantom_volume.array + 50.0)  # a smooth (constant) HU shift
    seen = []
    result = metrics.assess(phantom_volume, shifted, device="cpu", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (12, 12) and all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    s = json.loads(json.dumps(result.summaries))
    assert set(s) == {"nselfssim", "dig", "tissue_change", "body_mask", "parameters"}
    assert set(s["nselfssim"]) == {"input", "output"} and set(s["dig"]) == {"output"}
    assert s["tissue_change"]["output"]["volume_cm3"] == 0.0  # a 50 HU shift changes no tissue class
    assert s["dig"]["output"]["p95"] < 1e-3  # a constant shift has no edges
    assert s["body_mask"]["n_voxels"] == int(result.mask.sum()) > 0
    assert s["parameters"]["noise_sd"] == 20.0 and s["parameters"]["window"] == [-160.0, 240.0]
    assert len(s["nselfssim"]["input"]["per_slice_mean"]) == 4
    alone = metrics.assess(phantom_volume, device="cpu", mask=result.mask)
    assert alone.dig is None and alone.nselfssim_output is None and "dig" not in alone.summaries
    assert alone.summaries["nselfssim"]["input"] == s["nselfssim"]["input"]
    with pytest.raises(InputError, match="mask"):
        metrics.assess(phantom_volume, device="cpu", mask=np.zeros(phantom_volume.array.shape, bool))


def test_mae_and_psnr_on_hand_computed_cases():
    ref = np.zeros((2, 4, 4), np.float32)
    pred = ref + 10.0
    mask = np.zeros(ref.shape, bool)
    mask[:, 1:3, 1:3] = True
    pred[~mask] = 500.0  # large errors outside the mask do not count
    assert metrics.mae_in_mask(pred, ref, mask) == pytest.approx(10.0)
    assert metrics.psnr_synthrad(pred, ref, mask) == pytest.approx(10 * math.log10(4024.0 ** 2 / 100.0))
    # Clipping to [-1024, 3000]: differences beyond the range vanish.
    ref2 = np.full((1, 4, 4), 3500.0, np.float32)
    pred2 = ref2.copy()
    pred2[0, 0, 0] = 4000.0  # clipped to 3000 on both sides: no error
    pred2[0, 0, 1] = 2996.0  # 4 HU below the clip limit, 1 voxel of 16
    assert metrics.psnr_synthrad(pred2, ref2) == pytest.approx(10 * math.log10(4024.0 ** 2 / (16.0 / 16)))
    assert metrics.mae_in_mask(pred2, ref2, None) == pytest.approx((500.0 + 504.0) / 16)
    assert metrics.psnr_synthrad(ref, ref) == math.inf
    with pytest.raises(InputError, match="shape"):
        metrics.mae_in_mask(pred[:1], ref, None)


def test_ssim_synthrad_matches_skimage_map_mean():
    ref = phantom_array((3, 40, 40), seed=8, noise_sd=5.0)
    pred = ref + np.random.default_rng(2).normal(0, 60, ref.shape).astype(np.float32)
    pred[0, :4, :4] = 3600.0  # beyond the clip range
    lo, hi = -1024.0, 3000.0
    _, smap = structural_similarity(np.clip(pred, lo, hi).astype(np.float64), np.clip(ref, lo, hi).astype(np.float64),
                                    channel_axis=0, full=True, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=hi - lo)
    mask = ref > -400
    assert metrics.ssim_synthrad(pred, ref) == pytest.approx(smap.mean(), abs=1e-6)
    assert metrics.ssim_synthrad(pred, ref, mask) == pytest.approx(smap[mask].mean(), abs=1e-6)
    assert metrics.ssim_synthrad(ref, ref) == pytest.approx(1.0, abs=1e-9)


def test_inputs_are_never_modified_and_any_numeric_dtype_works(phantom_volume):
    img64 = phantom_volume.array.astype(np.float64)
    v64 = Volume(img64, phantom_volume.spacing, phantom_volume.origin, phantom_volume.direction)
    before = img64.copy()
    m64 = metrics.nselfssim_map(v64, device="cpu").array
    assert np.array_equal(img64, before)  # a float64 array is not clamped in place
    np.testing.assert_array_equal(m64, metrics.nselfssim_map(phantom_volume, device="cpu").array)
    a = np.zeros((2, 8, 8), np.int16)
    a[:, :, 4:] = 20000
    b = -a  # a - b = 40000 would overflow int16
    dig = metrics.dig_map(Volume(a), Volume(b), device="cpu").array
    ref = metrics.dig_map(Volume(a.astype(np.float32)), Volume(b.astype(np.float32)), device="cpu").array
    assert np.array_equal(dig, ref) and dig.max() == pytest.approx(20000.0 ** 2)


def test_tissue_change_map_finds_erased_tissue_that_dig_sees_only_at_its_rim(phantom_volume):
    """Fat and muscle turned into air: DIG lights up the rim, the tissue-change map the whole region."""
    arr = phantom_volume.array.copy()
    body = metrics.body_mask(phantom_volume)
    axis = phantom_volume.axial_axis()
    rows = np.moveaxis(np.indices(arr.shape), 0, -1)[..., [a for a in range(3) if a != axis]]
    centre = np.array([n / 2 for a, n in enumerate(arr.shape) if a != axis])
    region = (np.linalg.norm(rows - centre, axis=-1) < 10) & body & (arr > -200) & (arr < 200)
    assert region.sum() > 200
    erased = arr.copy()
    erased[region] = -1000.0
    tissue, summary = metrics.tissue_change_map(phantom_volume, phantom_volume.with_array(erased), body)
    voxel_cm3 = float(np.prod(phantom_volume.spacing)) / 1000
    found = tissue.array.astype(bool)
    assert (found & region).sum() > 0.8 * region.sum()  # the inside of the region, not only its rim
    from scipy import ndimage

    inplane = np.expand_dims(ndimage.generate_binary_structure(2, 1), axis)
    assert not (found & ~ndimage.binary_dilation(region, inplane, iterations=2)).any()  # the smoothing's rim only
    assert summary["volume_cm3"] == pytest.approx(found.sum() * voxel_cm3)
    assert max(summary["transitions_cm3"], key=summary["transitions_cm3"].get).endswith("-> air")
    noisy = arr + np.random.default_rng(0).normal(0, 30, arr.shape).astype(np.float32)  # MVCT-like noise only
    _, quiet = metrics.tissue_change_map(phantom_volume, phantom_volume.with_array(noisy), body)
    assert quiet["fraction"] < 0.01
