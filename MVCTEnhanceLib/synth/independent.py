"""A second, independent MVCT simulator, for simulator-shift validation sets only (never for training).

A model trained on one simulator can learn that simulator; judging it on MVCT made another way is the
nearest this project gets to a different machine. This one shares no code with :mod:`.simulate`
(monoenergetic 1 MeV, torch ray marching, Gaussian detector PSF, Poisson counts, Shepp-Logan FBP):

* polyenergetic 3.5 MV bremsstrahlung-like spectrum (thin-target Schiff-like shape, 2 cm water
  pre-filtration, energy-integrating detector: weight E) instead of one energy;
* two-basis-material tissue model (water-like: adipose/water/muscle scaled by their 1 MeV
  attenuation ratio, + ICRP cortical bone with its own energy dependence, NIST XCOM-like tables),
  so bone contrast and beam hardening come from the spectrum, not from a fixed 1 MeV curve;
* water beam-hardening linearisation (what a scanner does), leaving bone-induced hardening;
* a small constant scatter fraction (cupping in large bodies);
* Gaussian (compound-Poisson) noise of an energy-integrating detector + electronic noise;
* skimage radon / iradon (pixel-driven, Hann filter), detector box blur (1 mm element) * Gaussian
  focal spot, optional post-reconstruction MV blur.

All settings in :class:`IndependentSettings`; seeded, deterministic.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import ndimage
from skimage.transform import iradon, radon

from ..engine.errors import InputError

# NIST-XCOM-like total mass attenuation (with coherent), cm^2/g
E_TAB = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0])
MU_WATER_TAB = np.array([0.1370, 0.1186, 0.1061, 0.09687, 0.08956, 0.07865, 0.07072, 0.06323,
                         0.05754, 0.04942, 0.03969, 0.03403])
MU_BONE_TAB = np.array([0.1268, 0.1099, 0.09844, 0.08980, 0.08308, 0.07298, 0.06559, 0.05863,
                        0.05337, 0.04597, 0.03741, 0.03260])  # ICRP cortical bone
RHO_BONE = 1.92
# kV-HU anchors of the tissues the basis model is built from (70 keV, ICRU), and their 1 MeV
# attenuation relative to water (adipose -49 HU, muscle +40 HU at 1 MeV)
KV_ADIPOSE, KV_MUSCLE, KV_BONE = -76.0, 43.0, 1561.0
REL_ADIPOSE, REL_MUSCLE = 0.951, 1.040


@dataclasses.dataclass(frozen=True)
class IndependentSettings:
    kvp_mv: float = 3.5            # end-point energy of the bremsstrahlung spectrum (MeV)
    prefilter_water_cm: float = 2.0
    n_views: int = 400             # over 180 degrees
    det_width_mm: float = 1.0      # detector element (box blur)
    focal_mm: float = 0.8          # focal spot FWHM (Gaussian)
    filter_name: str = "hann"
    noise_sd: float = 30.0         # HU at the centre of a 200 mm water cylinder
    electronic_rel: float = 0.05  # electronic noise SD relative to the open-field quantum noise SD
    scatter_frac: float = 0.004    # constant scatter added, relative to the open field
    image_blur_mm: float = 0.0     # extra MV blur after reconstruction (Gaussian FWHM)
    mono_mev: float | None = None  # if set: monoenergetic at this energy (ablation)
    rel_adipose: float = REL_ADIPOSE  # tissue model (for a contrast-curve shift set)
    rel_muscle: float = REL_MUSCLE
    bone_scale: float = 1.0


def spectrum(s: IndependentSettings):
    """Energy grid (MeV), detector-weighted normalised spectrum weights."""
    if s.mono_mev is not None:
        return np.array([s.mono_mev]), np.array([1.0])
    e = np.linspace(0.15, s.kvp_mv - 0.05, 40)
    phi = (1.0 / e) * (1.0 - e / s.kvp_mv) ** 1.3        # Schiff-like thin-target shape
    phi = phi * np.exp(-mu_water(e) * s.prefilter_water_cm)
    w = phi * e                                           # energy-integrating detector
    return e, w / w.sum()


def mu_water(e):
    return np.exp(np.interp(np.log(e), np.log(E_TAB), np.log(MU_WATER_TAB)))


def mu_bone(e):
    return RHO_BONE * np.exp(np.interp(np.log(e), np.log(E_TAB), np.log(MU_BONE_TAB)))


def basis(hu_kv: np.ndarray, s: "IndependentSettings | None" = None):
    """kV HU -> (water-equivalent amount a_w, bone amount a_b): mu(E) = a_w mu_w(E) + a_b mu_b(E)."""
    rel_adipose = s.rel_adipose if s is not None else REL_ADIPOSE
    rel_muscle = s.rel_muscle if s is not None else REL_MUSCLE
    bs = s.bone_scale if s is not None else 1.0
    h = np.maximum(np.asarray(hu_kv, np.float64), -1000.0)
    aw = np.zeros_like(h)
    ab = np.zeros_like(h)
    m = h <= KV_ADIPOSE
    aw[m] = rel_adipose * (h[m] + 1000.0) / (KV_ADIPOSE + 1000.0)
    m = (h > KV_ADIPOSE) & (h <= 0)
    f = (h[m] - KV_ADIPOSE) / (0 - KV_ADIPOSE)
    aw[m] = rel_adipose + f * (1.0 - rel_adipose)
    m = (h > 0) & (h <= KV_MUSCLE)
    aw[m] = 1.0 + h[m] / KV_MUSCLE * (rel_muscle - 1.0)
    m = h > KV_MUSCLE
    f = (h[m] - KV_MUSCLE) / (KV_BONE - KV_MUSCLE)
    aw[m] = rel_muscle * (1.0 - f)
    ab[m] = f * bs
    return aw, ab


def _det_kernel(s: IndependentSettings, pitch: float):
    box = max(1, int(round(s.det_width_mm / pitch)))
    k = np.ones(box) / box
    sig = s.focal_mm / 2.3548 / pitch
    if sig > 0.2:
        r = int(math.ceil(3 * sig))
        g = np.exp(-0.5 * (np.arange(-r, r + 1) / sig) ** 2)
        k = np.convolve(k, g / g.sum())
    return k


def _forward(hu_kv, spacing, s: IndependentSettings):
    theta = np.arange(s.n_views) * 180.0 / s.n_views
    aw, ab = basis(hu_kv, s)
    # line integrals in g/cm^2-equivalent (mm * 0.1)
    lw = radon(aw, theta, circle=False) * spacing * 0.1
    lb = radon(ab, theta, circle=False) * spacing * 0.1
    k = _det_kernel(s, spacing)
    lw = ndimage.convolve1d(lw, k, axis=0, mode="constant")
    lb = ndimage.convolve1d(lb, k, axis=0, mode="constant")
    e, w = spectrum(s)
    sig = np.zeros_like(lw)
    for ei, wi in zip(e, w):
        sig += wi * np.exp(-(lw * mu_water(ei) + lb * mu_bone(ei)))
    sig += s.scatter_frac
    return sig, theta


@functools.lru_cache(maxsize=4)
def _water_table(s: IndependentSettings):
    """p(L) = -log(sum w exp(-mu_w L) + scatter) over water lengths L (g/cm^2) for linearisation."""
    e, w = spectrum(s)
    L = np.linspace(0, 80, 4001)
    sig = (w[None, :] * np.exp(-np.outer(L, mu_water(e)))).sum(1)
    # the scanner's correction knows the open field but not the patient's scatter: ignore scatter
    return L, -np.log(sig)


MU_REF = 0.07072  # cm^2/g; any reference: HU are relative to water after linearisation


def _reconstruct(sig, theta, shape, spacing, s: IndependentSettings):
    L, p = _water_table(s)
    pm = -np.log(np.maximum(sig, 1e-9))
    leq = np.interp(pm, p, L)                       # water-equivalent length (g/cm^2)
    line = leq * MU_REF / (spacing * 0.1)           # mu_ref-weighted per pixel unit
    rec = iradon(line, theta, output_size=shape[0], filter_name=s.filter_name, circle=False)
    hu = 1000.0 * (rec / MU_REF - 1.0)  # rec is mu per pixel in units of MU_REF
    return hu


@functools.lru_cache(maxsize=16)
def _noise_gain(n: int, spacing: float, s: IndependentSettings) -> float:
    """SD (HU) at the centre of a 200 mm water cylinder for unit relative noise per bin.

    Measured once per geometry with noise-free + seeded noisy simulations (N0 = 1 -> scaled)."""
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * spacing
    d = 200.0 if n * spacing > 210 else 0.8 * n * spacing
    cyl = np.where(xx ** 2 + yy ** 2 <= (d / 2) ** 2, 0.0, -1000.0)
    s0 = dataclasses.replace(s, electronic_rel=0.0, noise_sd=0.0)
    sig, theta = _forward(cyl, spacing, s0)
    rng = np.random.default_rng(7)
    clean = _reconstruct(sig, theta, cyl.shape, spacing, s0)
    eps = 1e-3
    noisy = sig + eps * np.sqrt(sig) * rng.standard_normal(sig.shape)
    rec = _reconstruct(noisy, theta, cyl.shape, spacing, s0)
    c = n // 2
    r = max(3, int(15 / spacing))
    sd = float((rec - clean)[c - r:c + r, c - r:c + r].std())
    # an equal-size reference (200 mm) when the grid is smaller: scale by exp(mu L/2)
    if d < 200.0:
        e, w = spectrum(s)
        mu_eff = float((w * mu_water(e)).sum())
        sd *= math.exp(mu_eff * 0.1 * (200.0 - d) / 2)
    return sd / eps


def simulate_independent(hu_kv: np.ndarray, spacing: float, s: IndependentSettings = IndependentSettings(),
                         seed: int = 0) -> np.ndarray:
    """kV HU (square, isotropic ``spacing`` mm) -> independent-simulator MVCT HU (float32)."""
    if hu_kv.ndim != 2 or hu_kv.shape[0] != hu_kv.shape[1]:
        raise InputError(f"the independent simulator takes square 2D slices, got shape {hu_kv.shape}")
    sig, theta = _forward(hu_kv, spacing, s)
    if s.noise_sd > 0:
        rng = np.random.default_rng([seed, 0xBEEF])
        g = _noise_gain(hu_kv.shape[0], spacing, s)
        eps = s.noise_sd / g  # relative noise per bin for signal 1 (open field): var = eps^2 * S
        # compound Poisson of an energy-integrating detector: var proportional to signal
        sd = eps * np.sqrt(sig + s.electronic_rel ** 2)
        sig = sig + sd * rng.standard_normal(sig.shape)
    hu = _reconstruct(sig, theta, hu_kv.shape, spacing, s)
    if s.image_blur_mm > 0:
        hu = ndimage.gaussian_filter(hu, s.image_blur_mm / 2.3548 / spacing)
    return hu.astype(np.float32)


def effective_curve(s: IndependentSettings = IndependentSettings()):
    """MV HU of uniform tissues (thin object: no hardening) under this spectrum: for the report."""
    e, w = spectrum(s)
    out = {}
    for name, h in (("lung", -741.0), ("adipose", -76.0), ("water", 0.0), ("muscle", 43.0),
                    ("cancellous", 300.0), ("cortical", 1561.0), ("enamel", 2500.0)):
        aw, ab = basis(np.array([h]), s)
        mu = (w * (aw[0] * mu_water(e) + ab[0] * mu_bone(e))).sum() / (w * mu_water(e)).sum()
        out[name] = round(1000 * (mu - 1), 1)
    return out
