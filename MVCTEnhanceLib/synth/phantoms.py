"""Procedural head-and-neck anatomy in kV-CT Hounsfield units.

A *patient* is drawn from an integer seed (body size and shape, bone and airway geometry, fat
thickness, contrast or not, image noise); a *level* ``t`` in [0, 1] runs from the cranium (0) through
the maxilla and sinuses, the mouth and mandible, down to the lower neck (1). The same patient gives
smoothly varying slices along ``t`` (3D stacks for the sample volume), different seeds give different
anatomy (the datasets' units of disjointness).

Tissues and their kV HU (typical planning-CT values, 120 kVp): air -1000, lung-like foam -900,
fat -100, skin/muscle 30-60, brain 25-45, CSF 5, cancellous bone 150-400, cortical bone 1100-1600,
tooth enamel 2200-2800, carbon-fibre couch skin ~300 over a foam core.
Textures are smooth random fields; the kV image gets a slight blur (kV CT resolution) and white
noise of a few HU, as a planning CT has.

Coordinates: millimetres from the image centre, x to the patient's left (columns), y posterior
(rows), the usual supine axial display (anterior up, couch at the bottom).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

AIR = -1000.0
#: Length (mm) of the head-and-neck region that ``t`` in [0, 1] spans (vertex region to lower neck).
Z_LENGTH_MM = 180.0


@dataclasses.dataclass
class Patient:
    """Random anatomy parameters of one synthetic patient (all lengths in mm)."""

    seed: int
    scale: float
    aspect: float
    shift: tuple[float, float]
    rotation_deg: float
    outline: np.ndarray          # (K, 2) Fourier coefficients of the skin outline perturbation
    outline_phase: np.ndarray    # (K,)
    fat_mm: float
    skin_hu: float
    fat_hu: float
    muscle_hu: float
    brain_hu: float
    cancellous_hu: float
    cortical_hu: float
    enamel_hu: float
    contrast: bool
    vessel_hu: float
    airway_scale: float
    vertebra_scale: float
    disc_phase: float
    mandible_scale: float
    missing_teeth: np.ndarray    # bool (16,)
    sinus_scale: float
    couch_gap_mm: float
    kv_noise_hu: float
    skull_mm: float

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (for dataset manifests)."""
        d = {"seed": int(self.seed), "scale": round(self.scale, 4), "aspect": round(self.aspect, 4),
             "contrast": bool(self.contrast), "kv_noise_hu": round(self.kv_noise_hu, 2)}
        return d


def draw_patient(seed: int) -> Patient:
    """The patient of ``seed`` (same seed, same anatomy)."""
    rng = np.random.default_rng([int(seed), 0x48A7])
    k = 6
    return Patient(
        seed=int(seed),
        scale=float(rng.uniform(0.86, 1.12)),
        aspect=float(rng.uniform(0.92, 1.08)),
        shift=(float(rng.uniform(-10, 10)), float(rng.uniform(-18, -4))),
        rotation_deg=float(rng.uniform(-6, 6)),
        outline=rng.normal(0, 1, (k, 2)) * (0.035 / np.arange(1, k + 1))[:, None],
        outline_phase=rng.uniform(0, 2 * np.pi, k),
        fat_mm=float(rng.uniform(3, 13)),
        skin_hu=float(rng.uniform(20, 60)),
        fat_hu=float(rng.uniform(-115, -85)),
        muscle_hu=float(rng.uniform(38, 58)),
        brain_hu=float(rng.uniform(28, 40)),
        cancellous_hu=float(rng.uniform(170, 380)),
        cortical_hu=float(rng.uniform(1150, 1600)),
        enamel_hu=float(rng.uniform(2200, 2800)),
        contrast=bool(rng.random() < 0.5),
        vessel_hu=float(rng.uniform(150, 260)),
        airway_scale=float(rng.uniform(0.7, 1.3)),
        vertebra_scale=float(rng.uniform(0.88, 1.12)),
        disc_phase=float(rng.uniform(0, 1)),
        mandible_scale=float(rng.uniform(0.9, 1.1)),
        missing_teeth=rng.random(16) < 0.12,
        sinus_scale=float(rng.uniform(0.75, 1.2)),
        couch_gap_mm=float(rng.uniform(1, 8)),
        kv_noise_hu=float(rng.uniform(6, 14)),
        skull_mm=float(rng.uniform(5, 8)),
    )


# ---------------------------------------------------------------------------------------------
# geometry helpers (all vectorised over the pixel grid)

def _ellipse(x, y, cx, cy, rx, ry, angle_deg=0.0):
    """Normalised elliptical radius: < 1 inside the ellipse."""
    a = np.deg2rad(angle_deg)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(a) + dy * np.sin(a)
    v = -dx * np.sin(a) + dy * np.cos(a)
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _smooth_step(t, t0, t1):
    """0 below t0, 1 above t1, smooth in between (used for sizes that change along z)."""
    s = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _paint(img, mask, hu, texture=None, amp=0.0):
    if texture is None or amp == 0.0:
        img[mask] = hu
    else:
        img[mask] = hu + amp * texture[mask]


def _arc_band(x, y, cx, cy, a, b, width, half_span_deg):
    """Band of ``width`` mm around the anterior part of an ellipse (a U opening posteriorly).

    Returns (mask, depth): depth is the distance (mm) from the band's nearer edge, for shells.
    """
    rho = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    phi = np.degrees(np.arctan2((y - cy) / b, (x - cx) / a))  # -90 = anterior midline
    dphi = np.abs(((phi + 90.0 + 180.0) % 360.0) - 180.0)
    dist = np.abs(rho - 1.0) * 0.5 * (a + b)
    mask = (dist < width / 2) & (dphi <= half_span_deg)
    return mask, width / 2 - dist


def _bone(img, mask, depth, p: Patient, shell_mm, tex):
    """Cortical shell (depth < shell_mm) over a textured cancellous core."""
    img[mask] = p.cancellous_hu + 70.0 * tex[mask]
    shell = mask & (depth < shell_mm)
    img[shell] = p.cortical_hu + 60.0 * tex[shell]


def _ellipse_bone(img, x, y, p: Patient, cx, cy, rx, ry, shell_mm, tex, angle=0.0):
    r = _ellipse(x, y, cx, cy, rx, ry, angle)
    mask = r < 1
    depth = (1 - r) * min(rx, ry)
    _bone(img, mask, depth, p, shell_mm, tex)
    return mask


# ---------------------------------------------------------------------------------------------

def _body_half_axes(t: float, p: Patient) -> tuple[float, float]:
    """Half width (x) and half depth (y) of the skin outline at level t, before patient scaling."""
    head = np.array([74.0, 92.0])
    face = np.array([70.0, 88.0])
    neck = np.array([58.0, 56.0])
    if t < 0.45:
        ax = head + (face - head) * _smooth_step(t, 0.15, 0.45)
    else:
        ax = face + (neck - face) * _smooth_step(t, 0.45, 0.75)
    return float(ax[0] * p.scale * p.aspect), float(ax[1] * p.scale / p.aspect)


def render_slice(p: Patient, t: float, size: int = 256, spacing_mm: float = 1.0,
                 textures: np.ndarray | None = None, noise: np.ndarray | None = None,
                 couch: bool = True) -> np.ndarray:
    """kV HU image (size x size, float32) of patient ``p`` at level ``t``.

    ``textures`` (3, size, size) unit-SD smooth random fields and ``noise`` (size, size) white
    unit-SD noise; drawn from the patient's seed and t when not given (a 3D stack passes fields that
    are smooth along z).
    """
    t = float(np.clip(t, 0.0, 1.0))
    if textures is None or noise is None:
        rng = np.random.default_rng([p.seed, int(round(t * 1e6)), 0x7E47])
        textures = _texture_fields(rng, (size, size))
        noise = rng.standard_normal((size, size)).astype(np.float32)
    tex_soft, tex_fine, tex_bone = textures

    half = (size - 1) / 2.0
    coords = (np.arange(size, dtype=np.float32) - half) * spacing_mm
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    # patient frame: shift and in-plane rotation (patients never lie perfectly straight)
    a = np.deg2rad(p.rotation_deg)
    dx, dy = xx - p.shift[0], yy - p.shift[1]
    x = dx * np.cos(a) + dy * np.sin(a)
    y = -dx * np.sin(a) + dy * np.cos(a)

    img = np.full((size, size), AIR, np.float32)
    bx, by = _body_half_axes(t, p)
    # skin outline: superellipse with a smooth, t-dependent Fourier perturbation of its radius
    theta = np.arctan2(y / by, x / bx)
    k = np.arange(1, len(p.outline) + 1)[:, None, None]
    wobble = (p.outline[:, 0, None, None] * np.cos(k * theta + p.outline_phase[:, None, None] + 2.0 * t)
              + p.outline[:, 1, None, None] * np.sin(k * theta - p.outline_phase[:, None, None] * t)).sum(0)
    pw = 2.3 if t > 0.45 else 2.0
    r_body = (np.abs(x / bx) ** pw + np.abs(y / by) ** pw) ** (1 / pw) / (1 + wobble)
    body = r_body < 1
    depth = ndimage.distance_transform_edt(body) * spacing_mm  # mm from the skin

    _paint(img, body, p.fat_hu, tex_soft, 8.0)
    cranial = t < 0.22
    fat_mm = p.fat_mm * (0.35 if cranial else 1.0)
    inner = depth > 1.8 + fat_mm
    _paint(img, inner, p.muscle_hu, tex_soft, 7.0)
    _paint(img, body & (depth <= 1.8), p.skin_hu, tex_fine, 6.0)

    if cranial:
        _cranium(img, x, y, t, p, depth, bx, by, tex_soft, tex_fine, tex_bone, fat_mm)
    else:
        _face_and_neck(img, x, y, t, p, bx, by, inner, tex_soft, tex_fine, tex_bone)

    img[~body] = AIR  # bones and vessels never stick out of the skin
    if couch:
        # drawn in the scanner frame: horizontal whatever the patient's rotation, just under the body
        _couch(img, yy, float(yy[body].max()) if body.any() else 0.0, p, xx)

    # kV CT resolution (~0.6 mm PSF sigma) and quantum noise of a planning CT
    img = ndimage.gaussian_filter(img, 0.55 / spacing_mm * 1.0)
    img += p.kv_noise_hu * noise * (img > -950)
    return np.clip(img, -1000.0, 3071.0).astype(np.float32)


def _texture_fields(rng: np.random.Generator, shape: tuple[int, ...], z_sigma: float = 0.0) -> np.ndarray:
    """Three unit-SD smooth random fields (soft tissue, fine, bone) of ``shape`` (2D or 3D)."""
    out = []
    for sigma in (3.0, 1.2, 1.0):
        f = rng.standard_normal(shape).astype(np.float32)
        sig = (z_sigma, sigma, sigma) if len(shape) == 3 else sigma
        f = ndimage.gaussian_filter(f, sig)
        f /= max(float(f.std()), 1e-6)
        out.append(f)
    return np.stack(out, axis=-3 if len(shape) == 2 else 1)


def _cranium(img, x, y, t, p: Patient, depth, bx, by, tex_soft, tex_fine, tex_bone, fat_mm):
    skull_outer = depth > 1.8 + fat_mm
    skull_inner = depth > 1.8 + fat_mm + p.skull_mm
    skull = skull_outer & ~skull_inner
    d_in_skull = depth - (1.8 + fat_mm)
    shell = np.minimum(d_in_skull, p.skull_mm - d_in_skull)
    _bone(img, skull, shell, p, 1.8, tex_bone)
    # brain: grey/white texture, CSF in ventricles
    _paint(img, skull_inner, p.brain_hu, tex_soft, 4.0)
    white = skull_inner & (_ellipse(x, y, 0, 5, bx * 0.55, by * 0.6) < 1)
    img[white] = p.brain_hu - 8.0 + 3.0 * tex_fine[white]
    vent_r = 0.5 + 0.5 * _smooth_step(t, 0.02, 0.12) * (1 - _smooth_step(t, 0.14, 0.2))
    for side in (-1, 1):
        v = _ellipse(x, y, side * 7.0, -2.0, 4.0 * vent_r, 22.0 * vent_r, side * 12.0) < 1
        img[v & skull_inner] = 6.0 + 2.0 * tex_fine[v & skull_inner]
    # frontal sinus low in the cranium
    if t > 0.14:
        fs = _ellipse(x, y, 0, -by + 1.8 + fat_mm + 6.0, 14.0 * p.sinus_scale, 5.0 * p.sinus_scale) < 1
        img[fs & skull_outer] = AIR


def _vertebra(img, x, y, t, p: Patient, cy, tex_bone, tex_fine, scale):
    """Vertebral body (or disc), arch, processes, canal with cord and CSF."""
    s = scale * p.vertebra_scale
    rx, ry = 10.0 * s, 8.0 * s
    z_mm = t * Z_LENGTH_MM
    disc = ((z_mm / (16.0 * s)) + p.disc_phase) % 1.0 < 0.22
    if disc:
        m = _ellipse(x, y, 0, cy, rx, ry) < 1
        img[m] = 85.0 + 8.0 * tex_fine[m]
    else:
        _ellipse_bone(img, x, y, p, 0, cy, rx, ry, 1.4, tex_bone)
    canal_y = cy + ry + 7.5 * s
    # posterior arch: ring around the canal, spinous and transverse processes
    ring = _ellipse(x, y, 0, canal_y, 10.5 * s, 9.0 * s)
    arch = (ring < 1) & (ring > 0.68)
    _bone(img, arch, np.full(img.shape, 0.5, np.float32), p, 1.0, tex_bone)
    _ellipse_bone(img, x, y, p, 0, canal_y + 15.0 * s, 3.2 * s, 9.0 * s, 1.2, tex_bone)
    for side in (-1, 1):
        _ellipse_bone(img, x, y, p, side * 16.0 * s, cy + ry * 0.6, 7.0 * s, 3.2 * s, 1.2, tex_bone, side * 20.0)
    canal = ring <= 0.68
    img[canal] = 8.0 + 2.0 * tex_fine[canal]  # CSF
    cord = _ellipse(x, y, 0, canal_y, 5.2 * s, 4.0 * s) < 1
    img[cord] = 36.0 + 3.0 * tex_fine[cord]


def _face_and_neck(img, x, y, t, p: Patient, bx, by, inner, tex_soft, tex_fine, tex_bone):
    s = p.scale
    vy = by * 0.28  # vertebral body centre, posterior of the middle
    # paraspinal and neck muscles separated by thin fat planes
    for side in (-1, 1):
        plane = np.abs(_ellipse(x, y, side * 22.0 * s, vy + 28.0 * s, 20.0 * s, 16.0 * s) - 1) < 0.05
        img[plane & inner] = p.fat_hu
    _vertebra(img, x, y, t, p, vy, tex_bone, tex_fine, s)

    # airway anterior to the vertebra: nasopharynx (wide) -> oropharynx -> larynx/trachea (round)
    ay = vy - 10.0 * s - 12.0 * s * p.airway_scale
    if t < 0.45:
        arx, ary = 14.0, 8.0
    elif t < 0.75:
        arx, ary = 12.0 - 4.0 * _smooth_step(t, 0.55, 0.75), 7.0
    else:
        arx, ary = 8.5, 7.5
    aw = _ellipse(x, y, 0, ay, arx * p.airway_scale * s, ary * p.airway_scale * s) < 1
    img[aw] = AIR

    if t < 0.45:
        _midface(img, x, y, t, p, bx, by, ay, tex_soft, tex_fine, tex_bone)
    if 0.38 <= t < 0.72:
        _mandible(img, x, y, t, p, by, ay, tex_soft, tex_fine, tex_bone)
    if t >= 0.5:
        # sternocleidomastoids, carotids and jugulars
        for side in (-1, 1):
            scm = _ellipse(x, y, side * 40.0 * s, ay + 4.0, 9.0 * s, 16.0 * s, side * -35.0)
            img[(np.abs(scm - 1) < 0.08) & inner] = p.fat_hu
            img[(scm < 0.92) & inner] = p.muscle_hu + 6.0 + 5.0 * tex_soft[(scm < 0.92) & inner]
            vhu = p.vessel_hu if p.contrast else 42.0
            for (vx, vyy, r) in ((24.0, ay + 8.0, 3.8), (31.0, ay + 14.0, 5.2)):
                m = _ellipse(x, y, side * vx * s, vyy, r * s, r * s * 0.9) < 1
                img[m] = vhu + 5.0 * tex_fine[m]
    if t >= 0.86:
        for side in (-1, 1):
            th = _ellipse(x, y, side * 15.0 * s, ay - 1.0, 7.0 * s, 11.0 * s, side * 25.0) < 1
            img[th & ~aw] = 110.0 + 8.0 * tex_soft[th & ~aw]


def _midface(img, x, y, t, p: Patient, bx, by, ay, tex_soft, tex_fine, tex_bone):
    s = p.scale
    ss = p.sinus_scale
    front = -by * 0.55
    if t < 0.38:
        # maxillary sinuses with thin bony walls, nasal cavity with septum, zygomatic arches
        for side in (-1, 1):
            r = _ellipse(x, y, side * 22.0 * s, front + 8.0, 13.0 * s * ss, 17.0 * s * ss, side * 10.0)
            wall = (r < 1.12) & (r >= 1)
            _bone(img, wall, np.full(img.shape, 0.1, np.float32), p, 1.0, tex_bone)
            img[r < 1] = AIR
            zyg, depth = _arc_band(x, y, 0, front + 30.0, bx * 0.9, by * 0.55, 4.0, 100.0)
            zyg &= (np.abs(x) > bx * 0.55)
            _bone(img, zyg, depth, p, 1.2, tex_bone)
        nas = _ellipse(x, y, 0, front + 2.0, 9.0 * s, 20.0 * s) < 1
        img[nas] = AIR
        sept = nas & (np.abs(x) < 1.0)
        img[sept] = 400.0 + 50.0 * tex_bone[sept]
        # turbinates: soft tissue inside the nasal cavity
        for side in (-1, 1):
            tb = _ellipse(x, y, side * 5.0 * s, front + 4.0, 3.0 * s, 9.0 * s) < 1
            img[tb & nas & ~sept] = 45.0 + 5.0 * tex_fine[tb & nas & ~sept]
    else:
        # maxillary alveolar arch with upper teeth
        band, depth = _arc_band(x, y, 0, front + 32.0, 30.0 * s, 30.0 * s, 10.0, 80.0)
        _bone(img, band, depth, p, 1.5, tex_bone)
        _teeth(img, x, y, p, 0, front + 32.0, 30.0 * s, 30.0 * s, tex_fine)
    for side in (-1, 1):  # parotid glands, posterolateral, fatty
        par = _ellipse(x, y, side * bx * 0.62, ay + 8.0, 11.0 * s, 17.0 * s, side * 15.0) < 1
        img[par] = -15.0 + 10.0 * tex_soft[par]


def _mandible(img, x, y, t, p: Patient, by, ay, tex_soft, tex_fine, tex_bone):
    s = p.scale * p.mandible_scale
    front = -by * 0.72
    cy = front + 42.0 * s
    # the U widens and its rami reach back at the upper levels
    span = 108.0 - 25.0 * _smooth_step(t, 0.45, 0.7)
    a, b = 42.0 * s, 42.0 * s
    band, depth = _arc_band(x, y, 0, cy, a, b, 9.0 * s, span)
    # tongue / floor of mouth inside the arch
    tongue = (_ellipse(x, y, 0, cy - 4.0, a - 6.0, b - 8.0) < 1) & (y > front)
    img[tongue] = p.muscle_hu + 12.0 + 5.0 * tex_soft[tongue]
    if t < 0.5:
        slit = _ellipse(x, y, 0, cy - 8.0, a * 0.55, 2.0 + 2.0 * _smooth_step(t, 0.38, 0.45)) < 1
        img[slit] = AIR  # oral cavity air between tongue and palate
    _bone(img, band, depth, p, 1.8, tex_bone)
    if t < 0.52:
        _teeth(img, x, y, p, 0, cy, a, b, tex_fine)


def _teeth(img, x, y, p: Patient, cx, cy, a, b, tex_fine):
    """Eight teeth per side along the arch: enamel crowns, incisors small, molars large."""
    n = 8
    for side in (-1, 1):
        for i in range(n):
            if p.missing_teeth[(i + (8 if side > 0 else 0))]:
                continue
            ang = np.deg2rad(-90.0 + side * (8.0 + i * 10.5))
            tx, ty = cx + a * np.cos(ang), cy + b * np.sin(ang)
            size = 2.4 + 0.45 * i  # incisors small, molars large
            m = _ellipse(x, y, tx, ty, size, size * 1.15, np.degrees(ang) + 90) < 1
            img[m] = p.enamel_hu + 80.0 * tex_fine[m]
            core = _ellipse(x, y, tx, ty, size * 0.45, size * 0.5) < 1
            img[core] = p.enamel_hu * 0.6  # dentin/pulp core


def _couch(img, yy, body_bottom, p: Patient, xx):
    """TomoTherapy-like couch top: carbon-fibre skins over a foam core, slightly curved."""
    top = body_bottom + p.couch_gap_mm
    yc = yy + 0.0006 * xx ** 2  # shallow bowl: edges rise
    skin1 = (yc >= top) & (yc < top + 2.0)
    core = (yc >= top + 2.0) & (yc < top + 16.0)
    skin2 = (yc >= top + 16.0) & (yc < top + 18.0)
    img[core] = -920.0
    img[skin1 | skin2] = 250.0


def phantom_slice(seed: int, t: float | None = None, size: int = 256, spacing_mm: float = 1.0,
                  couch: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """One kV slice (HU, float32) of patient ``seed`` at level ``t`` (drawn from the seed if None).

    Returns the image and a JSON-serialisable description (seed, t, patient parameters).
    """
    p = draw_patient(seed)
    if t is None:
        t = float(np.random.default_rng([int(seed), 0x51CE]).uniform(0.05, 0.98))
    img = render_slice(p, t, size, spacing_mm, couch=couch)
    info = {"kind": "phantom", "patient_seed": int(seed), "t": round(float(t), 6),
            "z_mm": round(float(t) * Z_LENGTH_MM, 3), **{"patient": p.describe()}}
    return img, info


def phantom_stack(seed: int, n_slices: int = 20, t_start: float = 0.45, slice_mm: float = 3.0,
                  size: int = 256, spacing_mm: float = 1.0, couch: bool = True) -> np.ndarray:
    """A 3D kV stack (n_slices, size, size) of one patient, ``slice_mm`` apart from level t_start.

    Texture fields are smooth along z (sigma ~ 1 slice) and the anatomy follows t continuously.
    """
    p = draw_patient(seed)
    rng = np.random.default_rng([int(seed), 0x3D])
    fields = _texture_fields(rng, (n_slices, size, size), z_sigma=max(0.5, 3.0 / slice_mm))
    noise = rng.standard_normal((n_slices, size, size)).astype(np.float32)
    out = np.empty((n_slices, size, size), np.float32)
    for k in range(n_slices):
        t = t_start + k * slice_mm / Z_LENGTH_MM
        out[k] = render_slice(p, t, size, spacing_mm, textures=fields[k], noise=noise[k], couch=couch)
    return out
