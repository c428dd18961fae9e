"""Procedural head-and-neck anatomy, the real CT slices from the installed packages, augmentation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from MVCTEnhanceLib.synth import augment
from MVCTEnhanceLib.synth import phantoms
from MVCTEnhanceLib.synth import realct


def _body(img):
    lab, n = ndimage.label(img > -400)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def test_same_seed_same_slice_and_seeds_give_different_anatomy():
    a, info = phantoms.phantom_slice(4)
    b, _ = phantoms.phantom_slice(4)
    np.testing.assert_array_equal(a, b)
    assert info["patient_seed"] == 4 and 0.0 <= info["t"] <= 1.0
    areas = set()
    for seed in range(6):
        img, _ = phantoms.phantom_slice(seed, t=0.8)
        areas.add(int(_body(img).sum()))
    assert len(areas) == 6  # different body sizes and outlines
    assert max(areas) / min(areas) > 1.1


def test_neck_slice_has_plausible_tissues_airway_bone_and_couch():
    img, _ = phantoms.phantom_slice(2, t=0.8)
    assert img.dtype == np.float32 and img.shape == (256, 256)
    body = _body(img)
    assert float(np.median(img[:10])) == -1000.0  # air above the patient
    inside = img[body]
    assert ((inside > -130) & (inside < -60)).mean() > 0.05  # subcutaneous fat
    assert ((inside > 10) & (inside < 90)).mean() > 0.4  # muscle and soft tissue
    assert (inside > 600).sum() > 50  # vertebra cortex
    assert ((inside > 120) & (inside < 450)).sum() > 50  # cancellous core
    # the airway: air enclosed by the body
    holes = ndimage.binary_fill_holes(body) & ~body & (img < -800)
    assert holes.sum() > 50
    # couch under the body: carbon-fibre layers in rows below the patient
    below = img[np.nonzero(body)[0].max() + 1:]
    assert (below > 50).sum() > 200 and (below < -850).sum() > 1000


def test_levels_show_brain_mandible_with_teeth_and_sinuses():
    head, _ = phantoms.phantom_slice(5, t=0.05)
    body = _body(head)
    brainish = head[body & (head > 15) & (head < 55)]
    assert brainish.size > 0.5 * body.sum()
    assert (head > 1000).sum() > 300  # skull tables
    mouth, _ = phantoms.phantom_slice(5, t=0.46)
    assert (mouth > 2000).sum() > 20  # tooth enamel
    sinus, _ = phantoms.phantom_slice(5, t=0.3)
    b = _body(sinus)
    holes = ndimage.binary_fill_holes(b) & ~b & (sinus < -800)
    assert holes.sum() > 500  # maxillary sinuses and nasal cavity


def test_kv_texture_and_noise_are_present():
    img, _ = phantoms.phantom_slice(3, t=0.85)
    body = ndimage.binary_erosion(_body(img), iterations=5)
    soft = img[body & (img > 20) & (img < 90)]
    assert 5.0 < float(soft.std()) < 30.0


def test_stack_varies_smoothly_along_z():
    stack = phantoms.phantom_stack(8, n_slices=4, t_start=0.75, slice_mm=3.0, size=128, spacing_mm=2.0)
    assert stack.shape == (4, 128, 128)
    neighbours = np.mean([np.abs(stack[k + 1] - stack[k]).mean() for k in range(3)])
    other, _ = phantoms.phantom_slice(9, t=0.76, size=128, spacing_mm=2.0)
    assert neighbours < 0.6 * np.abs(stack[1] - other).mean()


def test_real_slices_are_read_from_the_installed_packages_with_padding_as_air():
    slices = realct.load_real_slices()
    names = [s.name for s in slices]
    assert names == ["pydicom/CT_small.dcm", "pydicom/J2K_pixelrep_mismatch.dcm",
                     "pydicom-data/eCT_Supplemental.dcm#1", "pydicom-data/eCT_Supplemental.dcm#2"]
    for s in slices:
        assert s.hu.min() >= -1000.0 and s.hu.max() <= 3071.0
        assert (s.hu > 300).sum() > 100  # bone (real or, for the hybrid, the added skull)
    head = slices[1]
    assert head.spacing == (0.431, 0.431)
    assert float(head.hu[0, 0]) == -1000.0  # the -2000 padding outside the field
    assert slices[2].patient == slices[3].patient != slices[0].patient
    assert slices[2].kind == "real-derived hybrid"
    grid = realct.to_grid(head.hu, head.spacing, size=256, spacing_mm=1.0)
    assert grid.shape == (256, 256)
    # 512 x 0.431 mm = 221 mm of field fits in 256 mm: the whole head is kept
    assert abs(_body(grid).sum() - _body(head.hu).sum() * 0.431 ** 2) < 0.05 * _body(grid).sum()


def test_augmentation_is_seeded_and_changes_the_anatomy_plausibly():
    img, _ = phantoms.phantom_slice(1, t=0.8)
    p = augment.draw_params(3)
    a = augment.augment_slice(img, p)
    np.testing.assert_array_equal(a, augment.augment_slice(img, augment.draw_params(3)))
    assert not np.array_equal(a, augment.augment_slice(img, augment.draw_params(4)))
    assert abs(p["rotation_deg"]) <= 15 and 0.9 <= p["scale"] <= 1.1
    area_ratio = _body(a).sum() / _body(img).sum()
    assert abs(area_ratio - p["scale"] ** 2) < 0.08
    assert a.min() >= -1000.0 and float(np.median(a[_body(a)])) > -100.0
    # a left-right flip moves a left-sided bone to the right of the body centre
    block = np.full((64, 64), -1000.0, np.float32)
    block[16:48, 16:48] = 40.0
    block[28:36, 18:26] = 1200.0
    flip = {"seed": 0, "rotation_deg": 0.0, "scale": 1.0, "flip_lr": True, "elastic_alpha_mm": 0.0,
            "elastic_sigma_mm": 15.0}
    flipped = augment.augment_slice(block, flip)
    assert np.nonzero(block > 600)[1].mean() < 31.5 < np.nonzero(flipped > 600)[1].mean()
    np.testing.assert_allclose(augment.augment_slice(flipped, flip), block, atol=1e-3)
