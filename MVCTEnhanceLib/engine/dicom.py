"""DICOM headers, read with pydicom before any pixel is: is a series a regular grid, what is the image.

ITK's series reader takes the slice spacing as the average over the whole series and only prints a
warning when the slices are not evenly spaced, so a missing slice silently misplaces every slice
after the gap. Here the slice positions of a series are read from the headers and anything that a
regular grid cannot hold (a gap, uneven or duplicate positions, slices that are not parallel or not
stacked along their normal, mixed sizes) is refused with one line naming the files involved. What a
header says about the image itself (derived, not CT) becomes a warning of the volume.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom

from .errors import InputError

_HEADER_TAGS = ["SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber",
                "Rows", "Columns", "PixelSpacing", "NumberOfFrames", "ImageType", "Modality"]
#: Direction cosines written with a few decimals differ by ~1e-6; 1e-3 (0.06 degrees) is a real tilt.
ORIENTATION_TOL = 1e-3
#: A step may differ from the series' step by this fraction (positions are often rounded to 0.01 mm).
STEP_REL_TOL = 0.02
STEP_ABS_TOL = 0.01
#: How far (fraction of the step) a slice may lie from the regular grid ITK will put it on.
GRID_REL_TOL = 0.05
GRID_ABS_TOL = 0.02


@dataclasses.dataclass(frozen=True)
class SliceHeader:
    """What one DICOM file's header says about where its slice lies and what it shows."""

    path: Path
    series_uid: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    size: tuple[int, int] | None
    pixel_spacing: tuple[float, float] | None
    frames: int
    image_type: tuple[str, ...]
    modality: str

    @property
    def name(self) -> str:
        return self.path.name


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM Part 10 preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def read_header(path: Path) -> SliceHeader:
    """The header fields of ``path`` that geometry and warnings need; InputError if unreadable."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(f"cannot read the DICOM header of '{path}': {exc}") from None
    size = (int(ds.Rows), int(ds.Columns)) if "Rows" in ds and "Columns" in ds else None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        instance = int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        frames, instance = 1, None
    image_type = ds.get("ImageType") or ()
    image_type = (str(image_type),) if isinstance(image_type, str) else tuple(str(t) for t in image_type)
    return SliceHeader(Path(path), str(ds.get("SeriesInstanceUID", "") or ""),
                       _floats(ds.get("ImagePositionPatient"), 3), _floats(ds.get("ImageOrientationPatient"), 6),
                       instance, size, _floats(ds.get("PixelSpacing"), 2), frames,
                       image_type, str(ds.get("Modality", "") or "").upper())


def _mm(x: float) -> str:
    """Millimetres as DICOM tends to write them: 45.0, 2.5, 0.625 (at most 3 decimals)."""
    s = f"{x:.3f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def _consensus_step(steps: np.ndarray) -> float:
    """The step most other steps agree with (ties: the smaller), so one gap does not set the norm."""
    tol = np.maximum(STEP_ABS_TOL, STEP_REL_TOL * steps)
    agree = (np.abs(steps[None, :] - steps[:, None]) <= tol[:, None]).sum(axis=1)
    norm = float(steps[agree == agree.max()].min())
    return float(np.median(steps[np.abs(steps - norm) <= max(STEP_ABS_TOL, STEP_REL_TOL * norm)]))


def order_series(headers: Sequence[SliceHeader], where: str) -> list[SliceHeader]:
    """The slices of one series in order along their normal, or InputError if they are no regular grid.

    ``where`` names the folder in messages. A single file (also a multi-frame one) is returned as it is.
    """
    if len(headers) <= 1:
        return list(headers)
    prefix = f"DICOM series in {where}:"
    multi = [h for h in headers if h.frames > 1]
    if multi:
        raise InputError(f"{prefix} {len(headers)} files, of which {multi[0].name} holds {multi[0].frames} frames; "
                         "a series of multi-frame files cannot be stacked: give one multi-frame file on its own")
    for h in headers:
        if h.position is None or h.orientation is None:
            missing = "ImagePositionPatient" if h.position is None else "ImageOrientationPatient"
            raise InputError(f"{prefix} file {h.name} has no valid {missing}: the order and spacing of the "
                             "slices cannot be known; export the series with its geometry")
    first = headers[0]
    for h in headers[1:]:
        if h.size != first.size:
            raise InputError(f"{prefix} files {first.name} ({_size(first)}) and {h.name} ({_size(h)}) "
                             "differ in image size: they are not slices of one volume")
        if h.pixel_spacing is None or first.pixel_spacing is None or not np.allclose(
                h.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-4):
            raise InputError(f"{prefix} files {first.name} and {h.name} differ in PixelSpacing "
                             f"({_spacing(first)} and {_spacing(h)} mm): they are not slices of one volume")
        if np.max(np.abs(np.subtract(h.orientation, first.orientation))) > ORIENTATION_TOL:
            raise InputError(f"{prefix} ImageOrientationPatient differs within the series: {first.name} has "
                             f"{_cosines(first)}, {h.name} has {_cosines(h)}; the slices are not parallel "
                             "(a localiser, or two acquisitions in one series?): read only the files of one stack")
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    positions = np.array([h.position for h in headers], dtype=np.float64)
    along = positions @ normal
    order = sorted(range(len(headers)), key=lambda i: (along[i], headers[i].instance or 0))
    hs = [headers[i] for i in order]
    d = along[order]
    steps = np.diff(d)
    for i, step in enumerate(steps):
        if step < STEP_ABS_TOL:
            raise InputError(f"{prefix} files {hs[i].name} and {hs[i + 1].name} have the same slice position "
                             f"{_mm(d[i])} mm: duplicate slices (a file copied twice, or two acquisitions in one "
                             "series); remove the duplicates")
    expected = _consensus_step(steps)
    tol = max(STEP_ABS_TOL, STEP_REL_TOL * expected)
    bad = [i for i, step in enumerate(steps) if abs(step - expected) > tol]
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more irregular step(s))" if len(bad) > 1 else ""
        ratio = steps[i] / expected
        if round(ratio) >= 2 and abs(steps[i] - round(ratio) * expected) <= tol * round(ratio):
            n = int(round(ratio)) - 1
            what = "a slice is missing" if n == 1 else f"{n} slices are missing"
            raise InputError(f"{prefix} slice positions jump from {_mm(d[i])} to {_mm(d[i + 1])} mm between files "
                             f"{hs[i].name} and {hs[i + 1].name} (expected {_mm(expected)} mm): {what}{more}; "
                             "export or copy the complete series")
        raise InputError(f"{prefix} uneven slice spacing: {_mm(steps[i])} mm between files {hs[i].name} and "
                         f"{hs[i + 1].name} (positions {_mm(d[i])} and {_mm(d[i + 1])} mm), {_mm(expected)} mm "
                         f"elsewhere{more}; a volume needs one spacing: resample the series onto a regular grid first")
    # Steps each within tolerance can still drift; ITK puts slice i at d0 + i * mean step.
    grid = d[0] + np.arange(len(d)) * (d[-1] - d[0]) / (len(d) - 1)
    off = np.abs(d - grid)
    if off.max() > max(GRID_ABS_TOL, GRID_REL_TOL * expected):
        i = int(np.argmax(off))
        raise InputError(f"{prefix} uneven slice spacing: file {hs[i].name} lies {_mm(off[i])} mm from the "
                         f"regular {_mm((d[-1] - d[0]) / (len(d) - 1))} mm grid of the series; resample the series "
                         "onto a regular grid first")
    # A tilted gantry (or sheared export) stacks slices off their normal: ITK would build a straight,
    # wrong volume from them.
    inplane = positions[order] - np.outer(d, normal)
    shift = np.linalg.norm(inplane - inplane[0], axis=1)
    px = min(first.pixel_spacing) if first.pixel_spacing else 1.0
    if shift.max() > max(0.02, 0.05 * px):
        i = int(np.argmax(shift))
        raise InputError(f"{prefix} slices are not stacked along their normal: {hs[i].name} is shifted "
                         f"{_mm(shift[i])} mm in-plane from {hs[0].name} (tilted gantry or sheared series); "
                         "resample it onto an orthogonal grid first")
    return hs


def _size(h: SliceHeader) -> str:
    return f"{h.size[0]}x{h.size[1]}" if h.size else "no size"


def _spacing(h: SliceHeader) -> str:
    return "x".join(_mm(s) for s in h.pixel_spacing) if h.pixel_spacing else "none"


def _cosines(h: SliceHeader) -> str:
    return "[" + ", ".join(f"{c:.4g}" for c in h.orientation or ()) + "]"


def header_warnings(headers: Sequence[SliceHeader]) -> list[str]:
    """Warnings about what the images are: derived (perfusion maps, reformats...) or not CT."""
    out = []
    derived = sorted({"\\".join(h.image_type) for h in headers
                      if h.image_type and h.image_type[0].upper() == "DERIVED"})
    if derived:
        out.append(f"DICOM ImageType is {derived[0]}: a derived image (e.g. a perfusion map or a reformat), not an "
                   "original CT reconstruction; its values were taken as HU: check that they are")
    modalities = sorted({h.modality for h in headers if h.modality and h.modality != "CT"})
    if modalities:
        out.append(f"DICOM Modality is {', '.join(modalities)}, not CT: the image was taken as a CT in HU; "
                   "check that it is one")
    return out
