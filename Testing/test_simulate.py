"""Physics checks of the kV -> MV simulator on water and tissue-insert phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MVCTEnhanceLib.synth import simulate as S
from MVCTEnhanceLib.engine.errors import InputError
from MVCTEnhanceLib.engine.volume import Volume

N = 256
C = (np.arange(N) - (N - 1) / 2) * 1.0
YY, XX = np.meshgrid(C, C, indexing="ij")
R = np.hypot(XX, YY)
INSERTS = {  # name: (kV HU, centre x, y in mm); ICRU 1 MeV values are the HU_ANCHORS
    "adipose": (-76.0, -60.0, 0.0),
    "muscle": (43.0, 60.0, 0.0),
    "cortical bone": (1561.0, 0.0, -60.0),
    "lung": (-741.0, 0.0, 60.0),
}


def _cylinder() -> np.ndarray:
    """200 mm water cylinder (the noise reference) with 30 mm tissue inserts, 1 mm pixels."""
    img = np.full((N, N), -1000.0, np.float32)
    img[R < 100] = 0.0
    for hu, x0, y0 in INSERTS.values():
        img[np.hypot(XX - x0, YY - y0) < 15] = hu
    return img


@pytest.fixture(scope="module")
def noisy() -> np.ndarray:
    return S.simulate_slice(_cylinder(), (1.0, 1.0), S.SimulatorSettings(noise_sd=30.0), np.random.default_rng(1))


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return S.simulate_slice(_cylinder(), (1.0, 1.0), S.SimulatorSettings(noise_sd=0.0), np.random.default_rng(1))


def test_mapping_hits_icru_anchors_and_is_continuous_and_monotone():
    kv = np.array([a[0] for a in S.HU_ANCHORS])
    mv = np.array([a[1] for a in S.HU_ANCHORS])
    np.testing.assert_allclose(S.kv_to_mv_hu(kv), mv, atol=1e-3)
    x = np.linspace(-1200, 3000, 42001)
    y = S.kv_to_mv_hu(x)
    assert np.all(np.diff(y) >= 0)
    assert np.max(np.abs(np.diff(y))) < 0.2  # 0.1 HU steps: no jump anywhere
    assert S.kv_to_mv_hu(np.array([-2000.0]))[0] == -1000.0  # outside-field padding is air
    # bone contrast roughly halves, fat moves toward water
    assert 0.4 < S.kv_to_mv_hu(np.array([2500.0]))[0] / 2500.0 < 0.6


def test_projector_gives_chord_lengths():
    g = S._geometry((N, N), (1.0, 1.0), 90)
    disk = torch.from_numpy((R < 80).astype(np.float32))
    p = S._project(disk, g).numpy()
    centre = (g.n_det - 1) // 2
    for offset in (0, 30, 60):
        expected = 2 * np.sqrt(80.0 ** 2 - offset ** 2)
        # a pixelised disk: each chord within 1.5 mm, their mean within 0.3 mm
        assert np.abs(p[:, centre + offset] - expected).max() < 1.5, offset
        assert abs(p[:, centre + offset].mean() - expected) < 0.3, offset


def test_anisotropic_pixels_are_projected_in_millimetres():
    rows, cols = 160, 240
    sp = (1.5, 1.0)
    yy, xx = np.meshgrid((np.arange(rows) - (rows - 1) / 2) * sp[0], (np.arange(cols) - (cols - 1) / 2) * sp[1],
                         indexing="ij")
    disk = torch.from_numpy((np.hypot(xx, yy) < 70).astype(np.float32))
    g = S._geometry((rows, cols), sp, 60)
    p = S._project(disk, g).numpy()
    assert np.allclose(p[:, (g.n_det - 1) // 2], 140.0, atol=1.5)


def test_water_cylinder_is_zero_hu_with_target_noise(noisy, clean):
    assert abs(float(clean[R < 60].mean())) < 1.0
    assert abs(float(noisy[R < 60].mean())) < 5.0
    # noise is calibrated at the centre of the 200 mm cylinder
    central = noisy[(R < 25)]
    assert 30.0 * 0.8 < float(central.std()) < 30.0 * 1.2
    air = noisy[R > 118]
    assert abs(float(air.mean()) + 1000.0) < 5.0


@pytest.mark.parametrize("name", list(INSERTS))
def test_tissue_inserts_land_on_their_1mev_values(name, noisy, clean):
    hu_kv, x0, y0 = INSERTS[name]
    roi = np.hypot(XX - x0, YY - y0) < 9
    expected = float(S.kv_to_mv_hu(np.array([hu_kv]))[0])
    assert abs(float(clean[roi].mean()) - expected) < 3.0
    assert abs(float(noisy[roi].mean()) - expected) < 12.0


def test_fat_and_bone_differ_from_kv_as_physics_says(clean):
    fat = float(clean[np.hypot(XX + 60, YY) < 9].mean())
    bone = float(clean[np.hypot(XX, YY + 60) < 9].mean())
    assert -60 < fat < -40  # adipose -76 at kV moves toward water
    assert 740 < bone < 820  # cortical bone 1561 at kV about halves


def test_noise_scales_with_requested_sd():
    img = _cylinder()
    sd = {}
    for target in (15.0, 45.0):
        out = S.simulate_slice(img, (1.0, 1.0), S.SimulatorSettings(noise_sd=target), np.random.default_rng(3))
        sd[target] = float(out[R < 25].std())
        assert target * 0.8 < sd[target] < target * 1.2


def test_mvct_resolution_is_coarser_than_the_grid():
    img = np.zeros((96, 96), np.float32)
    img[48, 48] = 20000.0

    def fwhm(settings):
        out = S.simulate_slice(img, (1.0, 1.0), settings, np.random.default_rng(0))
        prof = out[48, 38:59] - float(out[48, 20])
        pk = prof.max()
        above = np.where(prof >= pk / 2)[0]
        i0, i1 = above[0], above[-1]
        left = i0 - 1 + (pk / 2 - prof[i0 - 1]) / (prof[i0] - prof[i0 - 1])
        right = i1 + (prof[i1] - pk / 2) / (prof[i1] - prof[i1 + 1])
        return right - left

    default = fwhm(S.SimulatorSettings(noise_sd=0.0))
    sharp = fwhm(S.SimulatorSettings(noise_sd=0.0, psf_fwhm_mm=0.0, kernel="ramlak"))
    assert 1.6 < default < 2.4
    assert default > sharp + 0.2


def _small_volume() -> Volume:
    n = 64
    c = (np.arange(n) - (n - 1) / 2) * 2.0
    yy, xx = np.meshgrid(c, c, indexing="ij")
    sl = np.where(np.hypot(xx, yy) < 50, 20.0, -1000.0).astype(np.float32)
    sl[np.hypot(xx - 15, yy) < 8] = 1000.0
    arr = np.stack([sl, sl, sl])
    return Volume(arr, spacing=(2.0, 2.0, 3.0), origin=(-63.0, 10.0, -4.5))


def test_noise_stream_does_not_depend_on_the_intensities():
    """Cross-CPU reproducibility by design: one uniform per bin whatever the means, so a last-bit
    difference in an intensity (vector units differ between CPUs) cannot shift the random stream."""
    lam = np.random.default_rng(0).uniform(1.0, 2e5, 50_000)
    lam[:500] = np.linspace(0.01, 80.0, 500)  # the exact small-count branch too
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = S.poisson_counts(lam, rng_a)
    b = S.poisson_counts(np.nextafter(lam, np.inf), rng_b)
    low = lam < S.EXACT_POISSON_BELOW
    assert np.count_nonzero(a[low] != b[low]) <= 2  # only a uniform within one bit of a CDF step flips
    assert np.max(np.abs(a - b) / np.maximum(a, 1)) < 1e-12  # elsewhere the count moves by that bit
    assert rng_a.random() == rng_b.random()  # same amount of the stream consumed
    rng_c = np.random.default_rng(5)
    S.poisson_counts(np.full(50_000, 3.0), rng_c)  # very different means, same consumption
    assert rng_c.random() == np.random.default_rng(5).random(50_001)[-1]


@pytest.mark.parametrize("mean", [0.5, 4.0, 40.0, 70.0, 5_000.0])
def test_noise_counts_are_poisson(mean):
    k = S.poisson_counts(np.full(200_000, mean), np.random.default_rng(1))
    assert k.min() >= 0
    if mean < S.EXACT_POISSON_BELOW:
        assert np.all(k == np.rint(k))
    se = np.sqrt(mean / k.size)
    assert abs(k.mean() - mean) < 5 * se
    assert abs(k.var() / mean - 1) < 0.02
    if mean < 100:  # the exact branch and the expansion just above it: the CDF matches Poisson's
        from scipy import stats

        for m in {int(mean * 0.7), int(mean), int(mean * 1.3) + 1}:
            assert abs(np.mean(k < m + 0.5) - stats.poisson.cdf(m, mean)) < 0.01


def test_same_seed_same_image_different_seed_different_noise():
    vol = _small_volume()
    a = S.simulate(vol, noise_sd=30.0, seed=5)
    b = S.simulate(vol, noise_sd=30.0, seed=5)
    c = S.simulate(vol, noise_sd=30.0, seed=6)
    np.testing.assert_array_equal(a.array, b.array)
    diff = (a.array - c.array)[:, 20:44, 20:44]
    assert float(diff.std()) > 10.0
    # slices of one volume get independent noise
    assert float((a.array[0] - a.array[1])[20:44, 20:44].std()) > 10.0


def test_volume_geometry_metadata_and_slice_thickness(phantom_volume):
    out = S.simulate(phantom_volume, noise_sd=20.0, seed=0)
    assert out.same_geometry(phantom_volume)
    assert out.array.dtype == np.float32 and np.isfinite(out.array).all()
    assert out.metadata["simulator"]["noise_sd"] == 20.0
    thick = S.simulate(phantom_volume, seed=0, settings=S.SimulatorSettings(noise_sd=20.0, slice_thickness_mm=9.0))
    assert thick.same_geometry(phantom_volume)
    # blurring along z averages independent noise: lower slice-to-slice differences
    assert np.std(np.diff(thick.array, axis=0)) < np.std(np.diff(out.array, axis=0))


def test_bad_arguments_are_input_errors():
    vol = _small_volume()
    with pytest.raises(InputError):
        S.simulate(vol, noise_sd=-1.0)
    with pytest.raises(InputError):
        S.simulate(vol, settings=S.SimulatorSettings(kernel="nope"))
    bad = vol.with_array(np.full(vol.array.shape, np.nan, np.float32))
    with pytest.raises(InputError):
        S.simulate(bad)


def test_cli_simulate_writes_same_geometry_and_refuses_overwrite(tmp_path, capsys):
    from MVCTEnhanceLib.cli import main
    from MVCTEnhanceLib.engine.volume import read_volume, write_volume

    vol = _small_volume()
    src = tmp_path / "kv.nrrd"
    write_volume(vol, src)
    dst = tmp_path / "mv.nrrd"
    assert main(["simulate", str(src), "-o", str(dst), "--noise-sd", "20", "--seed", "3"]) == 0
    mv = read_volume(dst)
    assert mv.same_geometry(vol)
    np.testing.assert_array_equal(mv.array, S.simulate(vol, noise_sd=20.0, seed=3).array)
    assert "s/slice" in capsys.readouterr().out
    assert main(["simulate", str(src), "-o", str(dst)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["simulate", str(src), "-o", str(src), "--overwrite"]) == 2  # never the input
    assert main(["simulate", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "x.nrrd")]) == 2


def test_randomised_settings_stay_in_their_ranges_and_are_seeded():
    draws = [S.randomised_settings(np.random.default_rng([3, i])) for i in range(50)]
    for name, (lo, hi) in S.TRAINING_RANGES.items():
        values = [getattr(d, name) for d in draws]
        assert lo - 1e-9 <= min(values) and max(values) <= hi + 1e-9, name
        assert len(set(values)) > 1, name  # really drawn
    assert S.randomised_settings(np.random.default_rng([3, 0])) == draws[0]
    assert S.randomised_settings(np.random.default_rng(1), noise_sd=45.0).noise_sd == 45.0


def test_machine_departures_change_the_image_as_their_names_say(clean):
    img = _cylinder()
    base = S.SimulatorSettings(noise_sd=0.0)
    ref = S.simulate_slice(img, (1.0, 1.0), base, np.random.default_rng(0))
    centre, edge = R < 20, (R > 80) & (R < 95)
    bone = np.hypot(XX - 0.0, YY + 60.0) < 10
    shifted = S.simulate_slice(img, (1.0, 1.0), S.SimulatorSettings(noise_sd=0.0, offset_hu=15.0, cupping_hu=-30.0),
                               np.random.default_rng(0))
    assert (shifted - ref)[centre].mean() == pytest.approx(15.0, abs=2.0)
    assert (shifted - ref)[edge].mean() == pytest.approx(15.0 - 30.0 * 0.8, abs=8.0)
    assert np.abs(shifted - ref)[R > 110].max() < 1.0  # air outside the body is untouched
    hard = S.simulate_slice(img, (1.0, 1.0), S.SimulatorSettings(noise_sd=0.0, bone_gain=0.9), np.random.default_rng(0))
    assert hard[bone].mean() == pytest.approx(0.9 * ref[bone].mean(), rel=0.03)
    rings = S.simulate_slice(img, (1.0, 1.0), S.SimulatorSettings(noise_sd=0.0, ring_sd=0.003), np.random.default_rng(0))
    diff = (rings - ref)[centre | edge]
    assert diff.std() > 2.0  # visible rings
    radial = [np.mean((rings - ref)[(R >= r) & (R < r + 1)]) for r in range(5, 90)]
    assert np.std(radial) > 0.5 * diff.std()  # the pattern is radial: rings, not noise
