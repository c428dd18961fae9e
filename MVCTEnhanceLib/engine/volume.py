"""Volumes in Hounsfield units: the one currency of the library.

A :class:`Volume` is a float32 numpy array indexed (slice, row, column) = ITK (k, j, i), plus ITK
geometry (spacing, origin, direction in LPS, as SimpleITK reports them). Files, DICOM series, MRML
nodes and tensors are only ways in and out of it. Reading validates the voxels (finite, HU-like)
and, for DICOM, the series geometry and headers (:mod:`.dicom`); ITK's own warnings stay off the
terminal. Writing never leaves a half-written file and never overwrites without being asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import dicom
from .errors import InputError, OutputError

#: Extensions (lower case) the writer accepts; NIfTI stores geometry as float32 by design of the format.
WRITE_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
READ_EXTENSIONS = WRITE_EXTENSIONS + (".dcm",)
INT16_RANGE = (-32768, 32767)
#: Key of the exact (float64, repr-precise) geometry stored beside the format's own fields.
GEOMETRY_KEY = "mvctenhance_geometry"
NIFTI_ECODE_COMMENT = 6


@dataclasses.dataclass
class Volume:
    """A CT volume in HU with its geometry.

    ``array`` is (slices, rows, columns) in numpy order, i.e. ITK (k, j, i). ``spacing``, ``origin``
    and ``direction`` follow ITK/SimpleITK conventions (index order i, j, k; LPS; direction row-major
    3x3 whose columns are the i, j, k axes). ``source_ndim`` is 2 for a 2D image read as one slice;
    it is written back as 2D.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    source_ndim: int = 3
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise InputError(f"a Volume needs a 3D array (slices, rows, columns), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in self.direction)
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InputError("a Volume needs 3 spacings, 3 origin coordinates and a 3x3 direction")
        if min(self.spacing) <= 0 or not all(np.isfinite(self.spacing)):
            raise InputError(f"voxel spacing must be positive and finite, got {self.spacing}")

    @property
    def warnings(self) -> list[str]:
        """What reading the file found doubtful (kept in ``metadata``; every report lists them)."""
        return list(self.metadata.get("warnings", ()))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def with_array(self, array: np.ndarray, **metadata: Any) -> "Volume":
        """A new volume with the same geometry and ``array`` (copied to float32 only if needed)."""
        if array.shape != self.array.shape:
            raise InputError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        meta = dict(self.metadata)
        meta.update(metadata)
        return Volume(np.asarray(array, dtype=np.float32), self.spacing, self.origin, self.direction,
                      self.source_ndim, meta)

    def same_geometry(self, other: "Volume") -> bool:
        """Exact (bit-for-bit) equality of shape, spacing, origin and direction."""
        return (self.array.shape == other.array.shape and self.spacing == other.spacing
                and self.origin == other.origin and self.direction == other.direction)

    def axial_axis(self) -> int:
        """The numpy axis to slice along: see :func:`axial_axis`."""
        return axial_axis(self.direction, self.array.shape)

    def inplane_spacing(self, axis: int | None = None) -> tuple[float, float]:
        """Spacing (mm) of the two numpy axes other than ``axis`` (default: the axial one), in order."""
        axis = self.axial_axis() if axis is None else axis
        numpy_spacing = self.spacing[::-1]  # ITK (i, j, k) -> numpy (k, j, i)
        rest = [numpy_spacing[a] for a in range(3) if a != axis]
        return (rest[0], rest[1])


def axial_axis(direction: Sequence[float], shape: Sequence[int]) -> int:
    """Numpy axis of the voxel grid closest to the patient's head-foot (LPS z) axis.

    Found from the direction matrix, never assumed to be k: a sagittal or coronal acquisition is
    sliced across its own axes. An image with exactly one axis of size 1 is a single 2D slice and is
    sliced along that axis whatever its orientation.
    """
    singleton = [a for a in range(3) if shape[a] == 1]
    if len(singleton) == 1:
        return singleton[0]
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    itk_axis = int(np.argmax(np.abs(d[2, :])))  # column c = ITK index axis c; row 2 = z component
    return 2 - itk_axis


#: Below this many voxels the value distribution says too little to judge HU: no verdict.
MIN_HU_VERDICT_VOXELS = 64
#: The HU judgement looks at a regular subsample of at most this many voxels (fractions, not details).
HU_SAMPLE = 2_000_000


def _fraction(a: np.ndarray, lo: float, hi: float) -> float:
    return float(np.count_nonzero((a >= lo) & (a <= hi))) / max(a.size, 1)


def check_hu_plausible(array: np.ndarray, what: str = "image") -> None:
    """Refuse values that are obviously not Hounsfield units; say what they look like instead.

    Judged from what a CT in HU must contain, not from one statistic: air at -1000 outside (or, in
    a crop, lung and fat below 0) and soft tissue at 0..100. Caught: intensities normalised to a
    small range (e.g. 0..1), and raw stored values whose rescale was lost (HU + 1024: air at 0..50,
    soft tissue at 1000..1100), whether unsigned or signed with the padding outside the
    reconstruction circle shifted along with it (-2000 -> -976). Padding below air (-1024..-3024),
    a circle padded with 0 around air, MVCT noise of tens of HU and crops without air pass. An image
    of fewer than :data:`MIN_HU_VERDICT_VOXELS` voxels gets no verdict.
    """
    if array.size < MIN_HU_VERDICT_VOXELS:
        return
    flat = np.ravel(array)
    step = max(1, flat.size // HU_SAMPLE) | 1  # odd: no lock-step with even row lengths
    a = np.asarray(flat[::step], dtype=np.float32)
    lo, hi = float(np.min(array)), float(np.max(array))
    if hi - lo <= 16.0 and lo >= -16.0 and hi <= 16.0 and hi > lo:
        raise InputError(
            f"{what} values span only {lo:g}..{hi:g}: they look normalised, not Hounsfield units. "
            "Give the CT in HU (air about -1000, water 0).")
    median = float(np.median(a))
    if lo >= 0.0 and (median >= 500.0 or hi > 5000.0):
        raise InputError(
            f"{what} has no negative values (range {lo:g}..{hi:g}, median {median:g}): these look "
            "like raw stored values without the DICOM rescale (air near 0, water near 1000), not HU. "
            "Export it in HU or apply RescaleSlope/RescaleIntercept.")
    # Padding is one constant value at the bottom of the range (-2000 in HU, -976 once shifted,
    # or air clipped at -1024): it says nothing about where the air is, so it is set aside.
    floor = a == float(a.min())
    rest = a[~floor] if np.count_nonzero(floor) >= 0.005 * a.size else a
    rest = rest[rest >= -1150.0]  # below air there is only padding in HU
    if rest.size < MIN_HU_VERDICT_VOXELS:
        return
    # Air and lung (-1150..-400 HU) anywhere but in the padding: the image is HU-like enough.
    if _fraction(rest, -1150.0, -400.0) >= 0.005:
        return
    # No air: a crop inside the body, or raw values. Raw values put soft tissue into a narrow peak
    # at 874..1174 (HU + 1024), well above its neighbours; bone in HU is spread over hundreds of HU, not peaked there.
    peak = _fraction(rest, 874.0, 1174.0)
    below, above = _fraction(rest, 574.0, 873.99), _fraction(rest, 1174.01, 1474.0)
    dark = (a >= -150.0) & (a <= 200.0)  # raw air, floor included (stored air is often exactly 0)
    if peak >= 0.03 and peak >= 2.0 * max(below, above) and np.count_nonzero(dark) >= 0.03 * a.size:
        air = float(np.median(a[dark]))
        tissue = float(np.median(rest[(rest >= 874.0) & (rest <= 1174.0)]))
        raise InputError(
            f"{what} values look like raw stored values without the DICOM rescale: air is at about {air:.0f}, "
            f"not -1000 HU, and soft tissue at about {tissue:.0f}, not 0..100 HU (range {lo:g}..{hi:g}). "
            "Check the RescaleSlope/RescaleIntercept of the export (HU = stored x slope + intercept, "
            "intercept usually -1024) or export the CT in HU.")


def validate_voxels(array: np.ndarray, what: str = "image", check_hu: bool = True) -> None:
    """Errors for empty, non-finite or non-HU voxel arrays."""
    if array.size == 0:
        raise InputError(f"{what} is empty (shape {array.shape})")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputError(f"{what} has {bad} NaN or infinite voxel(s); fix or mask them before converting")
    if check_hu:
        check_hu_plausible(array, what)


def _sitk():
    import SimpleITK as sitk  # imported lazily: Slicer loads this module at start-up

    return sitk


@contextlib.contextmanager
def _itk_quiet() -> Iterator[None]:
    """ITK's warnings off while reading: they go raw to the terminal, and what matters in them
    (uneven slices...) is checked here and said in one line or recorded in the volume's warnings."""
    sitk = _sitk()
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _dicom_series(folder: Path) -> list[tuple[str, list[str]]]:
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    with _itk_quiet():
        ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
        return [(uid, list(reader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in ids]


#: ITK readers of pictures: grey levels of a display window, no HU and no voxel geometry.
PICTURE_IOS = {"PNGImageIO": "PNG", "JPEGImageIO": "JPEG", "BMPImageIO": "BMP"}


def _check_pixel_type(image: Any, what: str) -> None:
    """8-bit integers cannot hold CT in HU (air is -1000, bone beyond 1000): such a file is a
    picture, a windowed screenshot or a mask, and converting it would give nonsense. It is refused
    rather than warned about, whatever its values, because no rescale of 0..255 is implied."""
    sitk = _sitk()
    if image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8):
        raise InputError(f"{what} stores 8-bit integers: a CT in HU needs at least 16 bits (air is -1000 HU); "
                         "this looks like a picture, a display-windowed export or a mask; give the CT in HU")


def _image_to_volume(image: Any, path: Path, check_hu: bool) -> Volume:
    sitk = _sitk()
    what = f"'{path}'"
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(RGB or vector image); a CT volume has one")
    if check_hu:
        _check_pixel_type(image, what)
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim not in (2, 3):
        raise InputError(f"{what} is a {dim}D image (size {image.GetSize()}); give one 2D slice or a 3D volume")
    if 0 in image.GetSize():
        raise InputError(f"{what} is empty (size {image.GetSize()})")
    array = sitk.GetArrayFromImage(image)
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    exact = _exact_geometry(image, path)
    if exact is not None:
        image.SetSpacing(exact["spacing"])
        image.SetOrigin(exact["origin"])
        image.SetDirection(exact["direction"])
    if dim == 2:
        sp, org, d = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        spacing = (sp[0], sp[1], 1.0)
        origin = (org[0], org[1], 0.0)
        direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
        array = array[np.newaxis]
    else:
        spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    validate_voxels(array, what, check_hu)
    return Volume(np.ascontiguousarray(array), spacing, origin, direction, dim, {"source": str(path)})


def read_volume(path: str | os.PathLike, series_uid: str | None = None, check_hu: bool = True) -> Volume:
    """Read a CT in HU from NRRD, NIfTI, MetaImage, a DICOM file or a DICOM series folder.

    DICOM rescale slope/intercept are applied (by GDCM). A folder holding several series must be
    disambiguated with ``series_uid``, which applies to DICOM only. A series must be a regular grid
    (see :func:`engine.dicom.order_series`). Raises :class:`InputError` for anything that is not a
    usable CT in HU; what is doubtful but usable is listed in the volume's ``warnings``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input '{p}' does not exist")
    with _itk_quiet():
        return _read_series(p, series_uid, check_hu) if p.is_dir() else _read_file(p, series_uid, check_hu)


def _read_series(p: Path, series_uid: str | None, check_hu: bool) -> Volume:
    sitk = _sitk()
    series = _dicom_series(p)
    if not series:
        raise InputError(f"folder '{p}' holds no DICOM series (give a volume file or a folder of DICOM slices)")
    if series_uid is None and len(series) > 1:
        listing = "; ".join(f"{uid} ({len(files)} files)" for uid, files in series)
        raise InputError(f"folder '{p}' holds {len(series)} DICOM series; pick one with its series UID: {listing}")
    chosen = [files for uid, files in series if series_uid is None or uid == series_uid]
    if not chosen:
        raise InputError(f"series '{series_uid}' is not in '{p}'; it holds: {', '.join(u for u, _ in series)}")
    headers = dicom.order_series([dicom.read_header(Path(f)) for f in chosen[0]], f"'{p}'")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(h.path) for h in headers])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read the DICOM series in '{p}': {_first_line(exc)}") from None
    vol = _image_to_volume(image, p, check_hu)
    vol.metadata["dicom_files"] = len(headers)
    _add_warnings(vol, dicom.header_warnings(headers))
    return vol


def _read_file(p: Path, series_uid: str | None, check_hu: bool) -> Volume:
    sitk = _sitk()
    if p.stat().st_size == 0:
        raise InputError(f"input '{p}' is an empty file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read '{p}' as an image ({_first_line(exc)}); "
                         "supported: NRRD, NIfTI, MetaImage, DICOM") from None
    io = sitk.ImageFileReader.GetImageIOFromFileName(str(p))  # from the content, not the extension
    kind = PICTURE_IOS.get(io)
    if check_hu and kind:
        raise InputError(f"'{p}' is a {kind} picture: it holds display grey levels, not HU, and no voxel "
                         "spacing; give the CT as DICOM, NRRD, NIfTI or MetaImage")
    is_dicom = io == "GDCMImageIO" or dicom.is_dicom_file(p)
    header = dicom.read_header(p) if is_dicom else None
    notes = dicom.header_warnings([header]) if header else []
    if series_uid is not None:
        if header is None:
            raise InputError(f"a series UID ('{series_uid}') selects a series in a folder of DICOM files; "
                             f"'{p}' is not a DICOM file, so it does not apply: leave the series UID out")
        if header.series_uid != series_uid:
            raise InputError(f"'{p}' belongs to DICOM series '{header.series_uid or 'none'}', not to the requested "
                             f"series '{series_uid}'; give the folder that holds that series")
        if header.frames == 1:
            notes.append(f"a series UID was given with one DICOM file: only the slice in '{p.name}' was read, "
                         "not the whole series; give the folder to read all its slices")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read '{p}' as an image ({_first_line(exc)}); "
                         "supported: NRRD, NIfTI, MetaImage, DICOM") from None
    vol = _image_to_volume(image, p, check_hu)
    _add_warnings(vol, notes)
    return vol


def _add_warnings(volume: Volume, notes: Iterable[str]) -> None:
    notes = list(notes)
    if notes:
        volume.metadata["warnings"] = volume.warnings + notes


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a file:line banner; the useful text is the last line.
    return lines[-1] if lines else type(exc).__name__


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def check_output_path(path: str | os.PathLike, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike] = (), extensions: Sequence[str] = WRITE_EXTENSIONS,
                      what: str = "output") -> Path:
    """Validate an output path before any work is done; returns it as a Path.

    Refuses extensions other than ``extensions`` (volume formats by default; e.g. ('.json',) for a
    report), an existing file unless ``overwrite``, any path equal to one of the ``inputs`` (even
    with ``overwrite``), and a folder that does not exist. ``what`` names the output in messages.
    """
    p = Path(path)
    ext = _extension(p)
    if ext not in extensions:
        raise OutputError(f"{what} '{p}': unsupported extension '{ext or p.name}'; use one of {', '.join(extensions)}")
    for other in inputs:
        o = Path(other)
        if p.resolve() == o.resolve() or (p.exists() and o.exists() and os.path.samefile(p, o)):
            raise OutputError(f"{what} '{p}' is the input file; choose another output path")
    if p.exists() and not overwrite:
        raise OutputError(f"{what} '{p}' exists; use --overwrite (overwrite=True) to replace it")
    if p.is_dir():
        raise OutputError(f"{what} '{p}' is a folder")
    if not p.parent.exists():
        raise OutputError(f"output folder '{p.parent}' does not exist")
    return p


def volume_to_image(volume: Volume, dtype: str = "float32") -> Any:
    """SimpleITK image with the volume's exact geometry, as float32 or rounded, clipped int16."""
    sitk = _sitk()
    if dtype == "float32":
        data = np.asarray(volume.array, dtype=np.float32)
    elif dtype == "int16":
        data = np.clip(np.rint(volume.array), *INT16_RANGE).astype(np.int16)
    else:
        raise OutputError(f"output type '{dtype}' is not supported; use float32 or int16")
    if volume.source_ndim == 2 and data.shape[0] == 1:
        image = sitk.GetImageFromArray(data[0])
        d = volume.direction
        image.SetSpacing(volume.spacing[:2])
        image.SetOrigin(volume.origin[:2])
        image.SetDirection((d[0], d[1], d[3], d[4]))
    else:
        image = sitk.GetImageFromArray(data)
        image.SetSpacing(volume.spacing)
        image.SetOrigin(volume.origin)
        image.SetDirection(volume.direction)
    return image


def write_volume(volume: Volume, path: str | os.PathLike, dtype: str = "float32", overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), compress: bool = True) -> Path:
    """Write NRRD/NIfTI/MetaImage with the volume's geometry, atomically.

    The file is written in a temporary folder beside the target and moved into place only when
    complete (both files for .mhd/.nhdr), so a failure never leaves a partial or clobbered output.
    NRRD and MetaImage keep geometry bit-exact; NIfTI stores it as float32 (a limit of the format).
    ``compress``: gzip (.nii.gz always is); ~100x slower than raw for noisy float32 HU, which it
    shrinks by only ~16 % (the enhance job writes raw: settings.COMPRESS_OUTPUTS).
    """
    sitk = _sitk()
    p = check_output_path(path, overwrite, inputs)
    image = volume_to_image(volume, dtype)
    tmpdir = Path(tempfile.mkdtemp(prefix=".mvct-tmp-", dir=p.parent))
    try:
        staged = tmpdir / p.name
        geometry = _geometry_json(image)
        image.SetMetaData(GEOMETRY_KEY, geometry)  # NRRD and MetaImage headers keep key/value pairs
        try:
            sitk.WriteImage(image, str(staged), useCompression=compress or _extension(p) == ".nii.gz")
        except RuntimeError as exc:
            raise OutputError(f"cannot write '{p}': {_first_line(exc)}") from None
        if _extension(p) in (".nii", ".nii.gz"):
            _nifti_add_comment(staged, f"{GEOMETRY_KEY}={geometry}")
        for produced in sorted(tmpdir.iterdir()):
            os.replace(produced, p.parent / produced.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return p


# -- exact geometry --------------------------------------------------------------------------------
# NRRD stores direction x spacing and NIfTI stores float32 and a quaternion, so ITK's readers give back
# geometry that differs from what was written in the last bits. The writer therefore also stores the
# exact float64 values (JSON, repr precision): as a header key for NRRD/MetaImage and as a NIfTI
# comment extension. The reader adopts them only when they agree with the format's own fields, so a
# file re-oriented by another tool is read by its standard header.

def _geometry_json(image: Any) -> str:
    return json.dumps({"spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
                       "direction": list(image.GetDirection())})


def _exact_geometry(image: Any, path: Path) -> dict[str, list[float]] | None:
    text = image.GetMetaData(GEOMETRY_KEY) if image.HasMetaDataKey(GEOMETRY_KEY) else None
    if text is None and _extension(path) in (".nii", ".nii.gz"):
        text = _nifti_read_comment(path)
    if not text:
        return None
    try:
        g = json.loads(text)
        spacing, origin, direction = (np.asarray(g[k], dtype=np.float64) for k in ("spacing", "origin", "direction"))
    except (ValueError, KeyError, TypeError):
        return None
    dim = image.GetDimension()
    if spacing.shape != (dim,) or origin.shape != (dim,) or direction.shape != (dim * dim,):
        return None
    # float32 storage (NIfTI) bounds the disagreement: ~1e-7 relative, plus quaternion round-off.
    ok = (np.allclose(spacing, image.GetSpacing(), rtol=1e-5, atol=0)
          and np.allclose(origin, image.GetOrigin(), rtol=1e-5, atol=1e-3)
          and np.allclose(direction, image.GetDirection(), rtol=0, atol=1e-5))
    if not ok:
        return None
    return {"spacing": spacing.tolist(), "origin": origin.tolist(), "direction": direction.tolist()}


def _nifti_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _nifti_add_comment(path: Path, text: str) -> None:
    """Insert a NIfTI-1 comment extension (ecode 6) holding ``text`` after the 348-byte header."""

    raw = _nifti_bytes(path)
    if len(raw) < 352 or struct.unpack("<i", raw[:4])[0] != 348:
        return  # not a little-endian NIfTI-1 file as ITK writes it: keep the standard header only
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    payload = text.encode("utf-8")
    esize = 8 + len(payload)
    esize += (-esize) % 16  # extension sizes are multiples of 16
    ext = struct.pack("<ii", esize, NIFTI_ECODE_COMMENT) + payload.ljust(esize - 8, b"\0")
    header = bytearray(raw[:348])
    header[108:112] = struct.pack("<f", float(352 + esize))
    out = bytes(header) + b"\x01\0\0\0" + ext + raw[vox_offset:]
    path.write_bytes(gzip.compress(out, compresslevel=6) if path.name.lower().endswith(".gz") else out)


def _nifti_read_comment(path: Path) -> str | None:
    try:
        raw = _nifti_bytes(path)
    except OSError:
        return None
    if len(raw) < 352 or struct.unpack("<i", raw[:4])[0] != 348 or raw[348] == 0:
        return None
    pos, end = 352, int(struct.unpack("<f", raw[108:112])[0])
    while pos + 8 <= end:
        esize, ecode = struct.unpack("<ii", raw[pos:pos + 8])
        if esize < 16:
            break
        if ecode == NIFTI_ECODE_COMMENT:
            body = raw[pos + 8:pos + esize].rstrip(b"\0").decode("utf-8", "replace")
            if body.startswith(GEOMETRY_KEY + "="):
                return body[len(GEOMETRY_KEY) + 1:]
        pos += esize
    return None
