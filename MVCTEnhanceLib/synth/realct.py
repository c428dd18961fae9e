"""Real kV CT slices shipped inside PyPI packages, read with pydicom from the installed packages.

No download ever happens (``get_testdata_file(..., download=False)``); a missing package gives an
:class:`InputError` that says what to install. The slices:

- pydicom ``CT_small.dcm``: 128 x 128, 0.66 mm, a small field cut from a body CT (vertebra, vessels);
  the body continues beyond its square field, so once embedded in air it is a square of tissue.
- pydicom ``J2K_pixelrep_mismatch.dcm``: 512 x 512, 0.43 mm, a head at the skull base (sinuses,
  petrous bone). Outside the reconstruction circle it holds padding (-2000): treated as air.
- pydicom-data ``eCT_Supplemental.dcm``, frames 1 and 2 (same patient, adjacent 10 mm slices):
  an enhanced-CT *perfusion-derived* brain image (ImageType DERIVED/PERFUSION/RCBF), skull-stripped.
  Its rescaled values are HU-like in the brain but it is not a plain CT: zero-flow pixels inside the
  brain are filled from their neighbours, values are clipped to -20..110 HU, and a synthetic skull
  (cortical tables + diploe) and scalp are drawn around the brain outline. It is labelled
  "real-derived hybrid" everywhere it is used.

Each slice carries an anatomy group (one per patient) so datasets never split a patient.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from scipy import ndimage

from ..engine.errors import InputError

AIR = -1000.0


@dataclasses.dataclass
class RealSlice:
    name: str                      # unique id, e.g. "pydicom/CT_small.dcm"
    patient: str                   # anatomy group: slices of one patient share it
    hu: np.ndarray                 # (rows, cols) float32 HU, padding already mapped to air
    spacing: tuple[float, float]   # (row, col) mm
    package: str
    file: str
    frame: int | None
    kind: str                      # "real" or "real-derived hybrid"
    notes: str

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "patient": self.patient, "package": self.package,
                "file": self.file, "frame": self.frame, "spacing_mm": list(self.spacing),
                "shape": list(self.hu.shape), "notes": self.notes}


def _testdata_path(name: str, package: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        raise InputError(f"'{name}' is not installed; pip install {package} (it ships the file)")
    return str(path)


def _rescaled(ds: Any, frame_pixels: np.ndarray) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    if "RescaleSlope" not in ds and "SharedFunctionalGroupsSequence" in ds:
        pvt = ds.SharedFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
        if pvt:
            slope = float(pvt[0].RescaleSlope)
            intercept = float(pvt[0].RescaleIntercept)
    return frame_pixels.astype(np.float32) * slope + intercept


def _spacing(ds: Any) -> tuple[float, float]:
    if "PixelSpacing" in ds:
        ps = ds.PixelSpacing
    else:
        ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    return (float(ps[0]), float(ps[1]))


def _clean(hu: np.ndarray) -> np.ndarray:
    """Padding and anything below air (e.g. -2000 outside the field of view) -> air; cap at 3071."""
    return np.clip(hu, AIR, 3071.0).astype(np.float32)


def _brain_hybrid(hu: np.ndarray, spacing: tuple[float, float], seed: int) -> np.ndarray:
    """Skull-stripped perfusion-derived brain -> head: fill flow holes, add skull and scalp."""
    mm = float(np.mean(spacing))
    inside = hu > -1023.5
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=4))
    brain = ndimage.binary_opening(brain, iterations=3)
    valid = brain & (hu > -200)
    # normalised convolution: holes take the local mean of valid brain around them
    w = ndimage.gaussian_filter(valid.astype(np.float32), 3.0)
    v = ndimage.gaussian_filter(np.where(valid, hu, 0).astype(np.float32), 3.0)
    filled = np.where(valid, hu, v / np.maximum(w, 1e-3))
    out = np.full(hu.shape, AIR, np.float32)
    out[brain] = np.clip(filled[brain], -20.0, 110.0)
    rng = np.random.default_rng(seed)
    dist = ndimage.distance_transform_edt(~brain) * mm  # mm outside the brain
    skull_mm, scalp_mm = 6.5, 4.0
    skull = (dist > 0) & (dist <= skull_mm)
    table = (dist <= 1.6) | (dist > skull_mm - 1.6)
    tex = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 1.0)
    tex /= max(float(tex.std()), 1e-6)
    out[skull] = 550.0 + 80.0 * tex[skull]
    out[skull & table] = 1450.0 + 60.0 * tex[skull & table]
    scalp = (dist > skull_mm) & (dist <= skull_mm + scalp_mm)
    out[scalp] = -90.0 + 8.0 * tex[scalp]
    out[scalp & (dist > skull_mm + scalp_mm - 1.5)] = 40.0
    return out


def load_real_slices() -> list[RealSlice]:
    """The four real(-derived) CT slices, in HU with padding mapped to air."""
    out: list[RealSlice] = []
    p = _testdata_path("CT_small.dcm", "pydicom")
    ds = pydicom.dcmread(p)
    out.append(RealSlice("pydicom/CT_small.dcm", "pydicom/CT_small", _clean(_rescaled(ds, ds.pixel_array)),
                         _spacing(ds), "pydicom", "CT_small.dcm", None, "real",
                         "128x128 field cut from a body CT; embedded in air"))
    p = _testdata_path("J2K_pixelrep_mismatch.dcm", "pydicom")
    ds = pydicom.dcmread(p)
    out.append(RealSlice("pydicom/J2K_pixelrep_mismatch.dcm", "pydicom/J2K_pixelrep_mismatch",
                         _clean(_rescaled(ds, ds.pixel_array)), _spacing(ds), "pydicom",
                         "J2K_pixelrep_mismatch.dcm", None, "real",
                         "head at the skull base; -2000 padding outside the field -> air"))
    p = _testdata_path("eCT_Supplemental.dcm", "pydicom-data==1.0.0")
    ds = pydicom.dcmread(p)
    frames = ds.pixel_array
    sp = _spacing(ds)
    for f in range(frames.shape[0]):
        hu = _rescaled(ds, frames[f])
        out.append(RealSlice(f"pydicom-data/eCT_Supplemental.dcm#{f + 1}", "pydicom-data/eCT_Supplemental",
                             _brain_hybrid(hu, sp, seed=f), sp, "pydicom-data", "eCT_Supplemental.dcm", f + 1,
                             "real-derived hybrid",
                             "perfusion-derived brain (not plain CT): holes filled, clipped -20..110 HU, "
                             "synthetic skull and scalp added"))
    return out


def load_training_real_slices() -> list[RealSlice]:
    """Real CT anatomy for the kV training pool only: a patient none of :func:`load_real_slices` is.

    pydicom's ``693_J2KI.dcm``: a 512 x 512, 0.48 mm head slice from the CQ500 collection (ImageType
    DERIVED: a JPEG 2000 re-encoding of an original reconstruction); padding below air -> air.
    """
    p = _testdata_path("693_J2KI.dcm", "pydicom")
    ds = pydicom.dcmread(p)
    return [RealSlice("pydicom/693_J2KI.dcm", "pydicom/693_J2KI (CQ500-CT-310)", _clean(_rescaled(ds, ds.pixel_array)),
                      _spacing(ds), "pydicom", "693_J2KI.dcm", None, "real",
                      "head CT slice (CQ500); used for kV training anatomy only, never for testing")]


def to_grid(hu: np.ndarray, spacing: tuple[float, float], size: int = 256, spacing_mm: float = 1.0) -> np.ndarray:
    """Resample a slice to ``size`` x ``size`` pixels of ``spacing_mm``, body centred, air around."""
    zoom = (spacing[0] / spacing_mm, spacing[1] / spacing_mm)
    img = ndimage.zoom(hu, zoom, order=1, mode="nearest", grid_mode=True).astype(np.float32)
    body = img > -400
    if body.any():
        cr, cc = ndimage.center_of_mass(body)
    else:
        cr, cc = (img.shape[0] - 1) / 2, (img.shape[1] - 1) / 2
    out = np.full((size, size), AIR, np.float32)
    r0 = int(round(cr - (size - 1) / 2))
    c0 = int(round(cc - (size - 1) / 2))
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + size, img.shape[0]), min(c0 + size, img.shape[1])
    out[rs - r0:re - r0, cs - c0:ce - c0] = img[rs:re, cs:ce]
    return out
