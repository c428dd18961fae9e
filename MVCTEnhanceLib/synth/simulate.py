"""kV CT -> simulated TomoTherapy-like MVCT of the same anatomy, by physics rather than "add noise".

Pipeline per axial slice (all steps documented where they are implemented):

1. **Attenuation at the MV effective energy.** A kV HU value is mapped to the HU the same tissue has
   at ~1 MeV (the effective energy of a ~3.5 MV imaging beam) by a continuous, monotone,
   piecewise-linear curve through the ICRU tissue anchors quoted by Ozaki, Kaji et al. (Med. Phys.
   49(6), 2022), computed there from ICRU Report 44 compositions with NIST XCOM cross sections
   (70 keV -> 1 MeV): air -1000 -> -1000, lung -741 -> -742, adipose -76 -> -49, water 0 -> 0,
   muscle 43 -> 40, cortical bone 1561 -> 783. Above cortical bone the bone segment's slope is
   kept (dense bone/enamel: Compton-dominated, attenuation ~ electron density). At 1 MeV the
   photoelectric effect is gone, so bone contrast roughly halves and fat moves toward water.
   Then mu = mu_water * (1 + HU_MV / 1000) with mu_water(1 MeV) = 0.07072 cm^2/g (NIST XCOM).
2. **Forward projection**: parallel-beam line integrals over 180 degrees (torch ``grid_sample``
   ray marching). TomoTherapy acquires a helical fan beam; for noise and resolution per slice a
   parallel geometry with the same sampling is an adequate model (no cone/helical artefacts).
3. **Detector/focal-spot blur**: a Gaussian of ``psf_fwhm_mm`` (1.2 mm) along the detector (MV
   imaging uses ~1 mm-wide detector elements and a mm-sized focal spot). With the kernel below the
   reconstructed point-spread function is 1.9 mm FWHM on a 1 mm grid (measured by
   Testing/test_simulate.py) against ~1.55 mm for the same pipeline without blur and apodisation:
   the softer MVCT look (TomoTherapy resolves ~1.2-1.6 mm objects).
4. **Quantum noise**: Poisson counts with ``n0`` unattenuated photons per detector bin and view.
   ``n0`` is derived analytically so that a water cylinder of ``reference_diameter_mm`` (200 mm,
   Catphan-sized: the paper's 2.3-2.4 % noise figure was measured on a Catphan) reconstructs with
   ``noise_sd`` HU at its centre: var(mu_centre) = C * exp(mu_w D) / n0, where C (the FBP variance
   gain for unit-variance projection noise on this geometry) is measured once per geometry on
   seeded white noise and cached. Patients smaller than the reference get less noise, larger ones
   more, as on the real machine (fixed dose per rotation).
5. **Filtered back-projection** with a Shepp-Logan-apodised ramp (a standard smooth kernel;
   "hann" and "ramlak" are available).
6. **Slice thickness** (optional, 3D only): Gaussian blur along the axial axis to the given FWHM.

The output is in HU on exactly the input grid (MVCT is usually reconstructed at 0.75-1.5 mm pixels;
the coarser resolution is carried by the PSF and kernel, not by a coarser grid, so that pairs stay
voxel-aligned).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Any, Callable

import numpy as np
from scipy import ndimage, special

from ..engine.errors import InputError
from ..engine.files import OutputSet
from ..engine.volume import Volume, check_output_path, read_volume, validate_voxels, write_volume

#: (kV HU at ~70 keV, MV HU at 1 MeV) anchors; ICRU Report 44 tissues, NIST XCOM cross sections,
#: as quoted by Ozaki, Kaji et al., Med. Phys. 49(6) 2022. Air and water by definition.
HU_ANCHORS: tuple[tuple[float, float], ...] = (
    (-1000.0, -1000.0),  # air
    (-741.0, -742.0),    # lung
    (-76.0, -49.0),      # adipose
    (0.0, 0.0),          # water
    (43.0, 40.0),        # skeletal muscle
    (1561.0, 783.0),     # cortical bone
)
#: Mass attenuation coefficient of water at 1 MeV (NIST XCOM, cm^2/g) -> mu in 1/mm at 1 g/cm^3.
MU_WATER_PER_MM = 0.07072 * 0.1
VERSION = "mvsim-2"  # 2: noise by inverse CDF, one uniform per bin (CPU-independent)
#: torch intra-op threads used while simulating. One thread keeps the reduction order independent
#: of the machine's core count (CPUs' vector units still differ in the last bits; the noise draw is
#: built so that this does not matter, see ``poisson_counts``) and was 3x faster in wall time than two on
#: the shared 2-core development machine (0.77 s vs 2.4 s per 256x256 slice under load); parallelise
#: over slices or processes instead.
SIM_THREADS = 1
#: Smallest in-plane size (pixels) simulated. The noise calibration (``_variance_gain``) measures the
#: FBP variance over a central region of +-max(2, n/8) pixels, which must lie inside the slice and
#: clear of the reconstruction's edge ring: below 16 pixels it reaches the edge (and below 4 it is
#: empty and the noise level is NaN). A slice that small holds no anatomy worth simulating, so such
#: images are refused with a clear error rather than padded (padding would change the anatomy the
#: projections see, and the calibration would still describe the padded slice, not the input).
MIN_SIMULATION_PIXELS = 16


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


@dataclasses.dataclass(frozen=True)
class SimulatorSettings:
    """Everything that determines a simulation (recorded in dataset manifests).

    The defaults are the reference machine; the fields after ``slice_thickness_mm`` model how real
    MVCT departs from it (contrast, offsets, cupping, rings, streaks) and are drawn from ranges for
    domain-randomised training data (:func:`randomised_settings`).
    """

    noise_sd: float = 30.0                 # HU at the centre of a reference water cylinder
    reference_diameter_mm: float = 200.0
    n_views: int = 360                     # over 180 degrees
    psf_fwhm_mm: float = 1.2               # detector + focal spot blur along the detector
    kernel: str = "shepp-logan"            # ramp apodisation: "shepp-logan", "hann" or "ramlak"
    slice_thickness_mm: float | None = None
    soft_gain: float = 1.0                 # x the MV HU of fat and muscle (soft-tissue contrast vs water)
    bone_gain: float = 1.0                 # x the MV HU of cortical bone
    offset_hu: float = 0.0                 # added inside the body (calibration drift)
    cupping_hu: float = 0.0                # body edge minus centre, smooth (beam hardening, scatter)
    ring_sd: float = 0.0                   # relative SD of detector-channel gains (rings)
    streak_views: int = 0                  # views with a gain error (streaks)
    streak_gain: float = 0.0               # relative gain error of those views
    version: str = VERSION

    def anchors(self) -> tuple[tuple[float, float], ...]:
        """(kV HU, MV HU) anchors with this machine's contrast gains applied (air, lung, water fixed)."""
        gains = {-76.0: self.soft_gain, 43.0: self.soft_gain, 1561.0: self.bone_gain}
        return tuple((kv, mv * gains.get(kv, 1.0)) for kv, mv in HU_ANCHORS)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hu_anchors_kv_to_mv"] = [list(a) for a in self.anchors()]
        d["mu_water_per_mm"] = MU_WATER_PER_MM
        return d


#: Ranges of domain-randomised training data: (low, high) drawn uniformly per slice. Wide enough to
#: cover machines and patients the reference settings do not (noise 15-50 HU, extra blur up to
#: 1.5 mm, +-10 % contrast, offsets and cupping of tens of HU, rings, streaks).
TRAINING_RANGES: dict[str, tuple[float, float]] = {
    "noise_sd": (15.0, 50.0),
    "psf_fwhm_mm": (0.0, 1.5 + 1.2),  # from none to 1.5 mm beyond the reference 1.2 mm
    "soft_gain": (0.9, 1.1),
    "bone_gain": (0.9, 1.1),
    "offset_hu": (-20.0, 20.0),
    "cupping_hu": (-30.0, 30.0),
    "ring_sd": (0.0, 0.002),
    "streak_views": (0.0, 4.0),
    "streak_gain": (0.0, 0.03),
}


def randomised_settings(rng: np.random.Generator, ranges: dict[str, tuple[float, float]] | None = None,
                        **fixed: Any) -> SimulatorSettings:
    """Settings drawn from ``ranges`` (default :data:`TRAINING_RANGES`); ``fixed`` overrides a draw."""
    ranges = TRAINING_RANGES if ranges is None else ranges
    values: dict[str, Any] = {}
    for name, (lo, hi) in ranges.items():
        v = float(rng.uniform(lo, hi))
        values[name] = int(round(v)) if name in ("streak_views", "n_views") else round(v, 4)
    values.update(fixed)
    return SimulatorSettings(**values)


def kv_to_mv_hu(hu_kv: np.ndarray, anchors: tuple[tuple[float, float], ...] = HU_ANCHORS) -> np.ndarray:
    """HU at ~1 MeV of tissue with ``hu_kv`` at kV (see the module docstring; values < -1000 = air)."""
    kv = np.array([a[0] for a in anchors])
    mv = np.array([a[1] for a in anchors])
    x = np.maximum(np.asarray(hu_kv, dtype=np.float64), -1000.0)
    out = np.interp(x, kv, mv)
    hi = x > kv[-1]
    if np.any(hi):  # continue the bone segment's slope beyond cortical bone
        slope = (mv[-1] - mv[-2]) / (kv[-1] - kv[-2])
        out[hi] = mv[-1] + slope * (x[hi] - kv[-1])
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# projector (parallel beam, physical coordinates so anisotropic pixels are handled)

class _Geometry:
    def __init__(self, shape: tuple[int, int], spacing: tuple[float, float], n_views: int):
        import torch

        self.shape = shape
        self.spacing = spacing  # (row, col) mm
        self.n_views = n_views
        self.pitch = float(min(spacing))
        half_diag = 0.5 * math.hypot(shape[0] * spacing[0], shape[1] * spacing[1])
        self.n_det = 2 * int(math.ceil(half_diag / self.pitch)) + 1
        self.t = (torch.arange(self.n_det, dtype=torch.float32) - (self.n_det - 1) / 2) * self.pitch
        self.theta = torch.arange(n_views, dtype=torch.float64) * (math.pi / n_views)
        # grid_sample's normalised coordinates (align_corners=True): -1..1 spans pixel centres
        self.half_extent = ((shape[1] - 1) / 2 * spacing[1], (shape[0] - 1) / 2 * spacing[0])
        rows = (torch.arange(shape[0], dtype=torch.float32) - (shape[0] - 1) / 2) * spacing[0]
        cols = (torch.arange(shape[1], dtype=torch.float32) - (shape[1] - 1) / 2) * spacing[1]
        self.yy, self.xx = torch.meshgrid(rows, cols, indexing="ij")


@functools.lru_cache(maxsize=8)
def _geometry(shape: tuple[int, int], spacing: tuple[float, float], n_views: int) -> _Geometry:
    return _Geometry(shape, spacing, n_views)


def _project(mu, g: _Geometry, chunk: int = 24):
    """Line integrals (n_views, n_det) of ``mu`` (torch (H, W), 1/mm): ray marching with step = pitch.

    Sampling points of a view: point = t (cos, sin) + s (-sin, cos) for detector position t and
    ray position s (both on the detector pitch), bilinear (``grid_sample``); outside the image = air.
    """
    import torch
    import torch.nn.functional as F

    hx, hy = g.half_extent
    tx, ty = g.t[None, None, :] / hx, g.t[None, None, :] / hy  # normalised once
    sx, sy = g.t[None, :, None] / hx, g.t[None, :, None] / hy
    img = mu[None, None]
    out = torch.empty((g.n_views, g.n_det), dtype=torch.float32)
    for a0 in range(0, g.n_views, chunk):
        th = g.theta[a0:a0 + chunk].to(torch.float32)
        c, sn = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
        grid = torch.stack((tx * c - sx * sn, ty * sn + sy * c), dim=-1)  # (B, n_s, n_det, 2)
        vals = F.grid_sample(img.expand(len(th), 1, *g.shape), grid, mode="bilinear",
                             padding_mode="zeros", align_corners=True)
        out[a0:a0 + chunk] = vals[:, 0].sum(dim=1) * g.pitch
    return out


def _ramp_filter(n_det: int, pitch: float, kernel: str):
    """Frequency response (rfft length) of the band-limited ramp (Ram-Lak spatial kernel), apodised."""
    import torch

    n = 1 << int(math.ceil(math.log2(2 * n_det)))
    k = torch.arange(-(n // 2), n // 2, dtype=torch.float64)
    h = torch.zeros(n, dtype=torch.float64)
    h[k == 0] = 1.0 / (4 * pitch ** 2)
    odd = (k.abs() % 2) == 1
    h[odd] = -1.0 / (math.pi * k[odd] * pitch) ** 2
    h = torch.fft.ifftshift(h)
    H = torch.fft.rfft(h).real * pitch  # convolution sum x pitch = integral
    f = torch.arange(H.numel(), dtype=torch.float64) / (n // 2)  # 0..1 of Nyquist
    if kernel == "hann":
        H = H * 0.5 * (1 + torch.cos(math.pi * f))
    elif kernel == "shepp-logan":
        H = H * torch.special.sinc(f / 2)
    elif kernel != "ramlak":
        raise InputError(f"unknown reconstruction kernel '{kernel}'; use 'shepp-logan', 'hann' or 'ramlak'")
    return H.to(torch.float32), n


def _backproject(q, g: _Geometry, chunk: int = 45):
    """Sum over views of q(theta, x cos + y sin), times pi / n_views (FBP normalisation)."""
    import torch
    import torch.nn.functional as F

    out = torch.zeros(g.shape, dtype=torch.float32)
    t_half = (g.n_det - 1) / 2 * g.pitch
    xy = (g.xx.reshape(1, -1), g.yy.reshape(1, -1))
    for a0 in range(0, g.n_views, chunk):
        th = g.theta[a0:a0 + chunk].to(torch.float32)
        tt = xy[0] * torch.cos(th)[:, None] + xy[1] * torch.sin(th)[:, None]  # (B, HW)
        grid = torch.stack((tt / t_half, torch.zeros_like(tt)), dim=-1)[:, None]  # (B, 1, HW, 2)
        rows = q[a0:a0 + chunk][:, None, None, :]  # (B, 1, 1, n_det)
        vals = F.grid_sample(rows, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out += vals[:, 0, 0].sum(0).reshape(g.shape)
    return out * (math.pi / g.n_views)


def _fbp(sino, g: _Geometry, kernel: str):
    import torch

    H, n = _ramp_filter(g.n_det, g.pitch, kernel)
    spec = torch.fft.rfft(sino, n=n, dim=1) * H[None, :]
    q = torch.fft.irfft(spec, n=n, dim=1)[:, :g.n_det]
    return _backproject(q, g)


def _gauss_kernel_1d(fwhm_px: float):
    import torch

    sigma = fwhm_px / 2.3548
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_detector(sino, fwhm_mm: float, pitch: float):
    import torch.nn.functional as F

    if fwhm_mm <= 0:
        return sino
    k = _gauss_kernel_1d(fwhm_mm / pitch)
    return F.conv1d(sino[:, None], k[None, None], padding=len(k) // 2)[:, 0]


@functools.lru_cache(maxsize=8)
def _variance_gain(shape: tuple[int, int], spacing: tuple[float, float], n_views: int, kernel: str) -> float:
    """Variance of the FBP image at the centre per unit variance of (white) projection noise.

    Noise is added after the detector blur (it is counted in the detector), so the blur does not
    enter. Measured on seeded white noise over the central region (FBP noise is stationary enough
    there), cached per geometry.
    """
    import torch

    g = _geometry(shape, spacing, n_views)
    gen = torch.Generator().manual_seed(12345)
    vals = []
    c0, c1 = shape[0] // 2, shape[1] // 2
    r0, r1 = max(2, shape[0] // 8), max(2, shape[1] // 8)
    for _ in range(4):
        noise = torch.randn((n_views, g.n_det), generator=gen, dtype=torch.float32)
        rec = _fbp(noise, g, kernel)
        vals.append(float(rec[c0 - r0:c0 + r0, c1 - r1:c1 + r1].var()))
    return float(np.mean(vals))


def photons_per_bin(settings: SimulatorSettings, shape: tuple[int, int], spacing: tuple[float, float]) -> float:
    """Unattenuated photon count per detector bin and view giving ``noise_sd`` HU at the centre of
    the reference water cylinder: n0 = C exp(mu_w D) / sigma_mu^2 (see the module docstring)."""
    c = _variance_gain(shape, spacing, settings.n_views, settings.kernel)
    sigma_mu = settings.noise_sd / 1000.0 * MU_WATER_PER_MM
    return c * math.exp(MU_WATER_PER_MM * settings.reference_diameter_mm) / sigma_mu ** 2


#: Below this mean count Poisson quantiles are found exactly (by summing the pmf); above it the
#: Cornish-Fisher expansion with the skewness term is used, not rounded to an integer: at these counts
#: the discreteness is invisible after the log, and a continuous count keeps tiny intensity
#: differences tiny instead of turning some into whole-count jumps.
EXACT_POISSON_BELOW = 64.0


def poisson_counts(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson draws with means ``lam`` (float64), taking exactly one uniform per bin from ``rng``.

    numpy's ``Generator.poisson`` is a rejection sampler: how many random numbers it consumes
    depends on the means, so a last-bit difference in one intensity (float results differ between
    CPUs' vector units) shifts the random stream for every later bin and the whole image changes.
    Here each bin's count is the inverse CDF of its own uniform: the stream never depends on the
    data, and a small change in ``lam`` changes the count by about as much (below
    ``EXACT_POISSON_BELOW``, only if the uniform lies within it of a CDF step).
    """

    lam = np.asarray(lam, dtype=np.float64)
    u = rng.random(lam.shape)
    z = special.ndtri(np.clip(u, 1e-300, 1.0 - 1e-16))
    counts = lam + np.sqrt(lam) * z + (z * z - 1.0) / 6.0
    low = lam < EXACT_POISSON_BELOW
    if np.any(low):
        counts[low] = _poisson_quantile_exact(lam[low], u[low])
    return np.maximum(counts, 0.0)


def _poisson_quantile_exact(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Smallest k with P(K <= k) >= u for small means (vectorised pmf recursion)."""
    k = np.zeros(lam.shape)
    pmf = np.exp(-lam)
    cdf = pmf.copy()
    todo = cdf < u
    kmax = int(np.ceil(EXACT_POISSON_BELOW + 12.0 * math.sqrt(EXACT_POISSON_BELOW))) + 1
    for i in range(1, kmax):
        if not np.any(todo):
            break
        pmf = pmf * lam / i
        cdf = cdf + pmf
        k[todo] = i
        todo &= cdf < u
    return k


def simulate_slice(hu_kv: np.ndarray, spacing: tuple[float, float], settings: SimulatorSettings,
                   rng: np.random.Generator) -> np.ndarray:
    """One axial slice: kV HU (rows, cols) with pixel ``spacing`` (row, col) mm -> MV HU."""
    import torch

    if settings.noise_sd < 0:
        raise InputError(f"noise SD must be >= 0 HU, got {settings.noise_sd:g}")
    _check_simulation_size((int(hu_kv.shape[0]), int(hu_kv.shape[1])), "the slice")
    shape = (int(hu_kv.shape[0]), int(hu_kv.shape[1]))
    spacing = (float(spacing[0]), float(spacing[1]))
    g = _geometry(shape, spacing, settings.n_views)
    mu = torch.from_numpy(MU_WATER_PER_MM * (1.0 + kv_to_mv_hu(hu_kv, settings.anchors()) / 1000.0))
    with torch.no_grad(), _torch_threads(SIM_THREADS):
        sino = _blur_detector(_project(mu, g), settings.psf_fwhm_mm, g.pitch)
        if settings.noise_sd > 0:
            n0 = photons_per_bin(settings, shape, spacing)
            lam = n0 * np.exp(-sino.numpy().astype(np.float64))
            counts = poisson_counts(lam, rng)
            sino = torch.from_numpy(-np.log(np.maximum(counts, 0.5) / n0).astype(np.float32))
        sino = _detector_gain_errors(sino, settings, rng)
        rec = _fbp(sino, g, settings.kernel)
    hu = (1000.0 * (rec.numpy() / MU_WATER_PER_MM - 1.0)).astype(np.float32)
    return _body_offsets(hu, hu_kv, spacing, settings)


def _detector_gain_errors(sino: Any, settings: SimulatorSettings, rng: np.random.Generator) -> Any:
    """Rings (a fixed gain error per detector channel) and streaks (a few views with a gain error).

    A relative gain error e adds -log(1 + e) to the line integrals of its channel or view. Drawn
    after the noise, so the reference settings (no errors) keep their random stream.
    """
    import torch

    if settings.ring_sd > 0:
        gains = rng.normal(0.0, settings.ring_sd, sino.shape[1])
        sino = sino - torch.from_numpy(np.log1p(gains).astype(np.float32))[None, :]
    if settings.streak_views > 0 and settings.streak_gain > 0:
        views = rng.choice(sino.shape[0], size=min(settings.streak_views, sino.shape[0]), replace=False)
        signs = rng.choice([-1.0, 1.0], size=len(views))
        sino = sino.clone()
        for v, sign in zip(views, signs):
            sino[v] -= float(np.log1p(sign * settings.streak_gain))
    return sino


def _body_offsets(hu: np.ndarray, hu_kv: np.ndarray, spacing: tuple[float, float],
                  settings: SimulatorSettings) -> np.ndarray:
    """Offset and cupping inside the body (kV > -500 HU), blended over ~2 mm at the skin."""
    if settings.offset_hu == 0 and settings.cupping_hu == 0:
        return hu
    body = ndimage.gaussian_filter((np.asarray(hu_kv) > -500).astype(np.float32), 2.0 / min(spacing))
    if not body.any():
        return hu
    rows, cols = np.nonzero(body > 0.5)
    if rows.size == 0:
        return hu
    yy, xx = np.indices(hu.shape, dtype=np.float32)
    cy, cx = rows.mean(), cols.mean()
    r = np.hypot((yy - cy) * spacing[0], (xx - cx) * spacing[1])
    r_max = max(float(r[body > 0.5].max()), 1.0)
    field = settings.offset_hu + settings.cupping_hu * np.clip(r / r_max, 0.0, 1.0) ** 2
    return (hu + body * field).astype(np.float32)


def _check_simulation_size(shape: tuple[int, int], what: str) -> None:
    if min(shape) < MIN_SIMULATION_PIXELS:
        raise InputError(f"{what} is {shape[0]} x {shape[1]} pixels in-plane; simulating an MVCT needs at least "
                         f"{MIN_SIMULATION_PIXELS} x {MIN_SIMULATION_PIXELS} (a CT slice, not a patch)")


def simulate(volume: Volume, noise_sd: float = 30.0, seed: int = 0, *,
             settings: SimulatorSettings | None = None,
             progress: Callable[[int, int], None] | None = None) -> Volume:
    """Simulated MVCT (HU, float32) of the anatomy in kV CT ``volume``, on the same grid.

    Slices are taken along the volume's axial axis (from its direction matrix). ``seed`` makes the
    noise reproducible (slice k uses the stream (seed, k)). ``settings`` overrides everything but
    is replaced by ``noise_sd`` when not given.
    """
    if settings is None:
        settings = SimulatorSettings(noise_sd=float(noise_sd))
    validate_voxels(volume.array, "kV input")
    axis = volume.axial_axis()
    arr = np.moveaxis(volume.array, axis, 0)
    _check_simulation_size(arr.shape[1:], f"the kV input (shape {'x'.join(map(str, volume.array.shape))})")
    spacing = volume.inplane_spacing(axis)
    out = np.empty(arr.shape, np.float32)
    for k in range(arr.shape[0]):
        rng = np.random.default_rng([int(seed), k, 0x5117])
        out[k] = simulate_slice(arr[k], spacing, settings, rng)
        if progress is not None:
            progress(k + 1, arr.shape[0])
    if settings.slice_thickness_mm and arr.shape[0] > 1:
        dz = volume.spacing[::-1][axis]
        sigma = settings.slice_thickness_mm / 2.3548 / dz
        if sigma > 0.3:
            out = ndimage.gaussian_filter1d(out, sigma, axis=0, mode="nearest")
    out = np.moveaxis(out, 0, axis)
    return volume.with_array(np.ascontiguousarray(out), simulator=settings.to_dict(), simulator_seed=int(seed))


def simulate_file(kv_input: str, mv_output: str, noise_sd: float = 30.0, seed: int = 0, *,
                  slice_thickness_mm: float | None = None, output_type: str = "float32",
                  overwrite: bool = False, series_uid: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Read a kV CT, write its simulated MVCT (same geometry); returns a JSON-able summary.

    The output path is checked (its folder writable) before any work, and never equals the input; the
    output appears complete or not at all, also on SIGINT/SIGTERM (an :class:`OutputSet`).
    """

    with OutputSet(overwrite) as outputs:
        out = outputs.add(mv_output, "output", "simulated_mvct.nrrd",
                          validate=lambda p: check_output_path(p, overwrite, inputs=(kv_input,)))
        settings = SimulatorSettings(noise_sd=float(noise_sd), slice_thickness_mm=slice_thickness_mm)
        vol = read_volume(kv_input, series_uid=series_uid)
        t0 = time.perf_counter()
        mv = simulate(vol, seed=seed, settings=settings, progress=progress)
        seconds = time.perf_counter() - t0
        write_volume(mv, outputs.stage(out), dtype=output_type)
    return {"input": str(kv_input), "output": str(out), "shape": list(vol.array.shape),
            "seconds": round(seconds, 3),
            "seconds_per_slice": round(seconds / max(1, vol.array.shape[vol.axial_axis()]), 3),
            "seed": int(seed), "simulator": settings.to_dict()}
