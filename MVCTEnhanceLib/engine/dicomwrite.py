"""The enhanced volume as a DICOM CT series: derived, referencing its source, "not for diagnosis".

One file per slice along the volume's third axis (k), CT Image Storage, explicit VR little endian,
signed 16-bit stored values in HU (RescaleSlope 1, RescaleIntercept 0: values rounded to 1 HU and
clipped to the int16 range). New Series and SOP Instance UIDs; ImageType DERIVED\\SECONDARY;
SeriesDescription and DerivationDescription say what it is and that it is not for diagnosis. When
the MVCT was DICOM, the patient, study and frame of reference are the source's (so that DICOM
browsers, Slicer's included, file the series with the MVCT), the source series is referenced
(ReferencedSeriesSequence) and each slice references the source slice it was converted from
(SourceImageSequence). Geometry: ImagePositionPatient of each slice, ImageOrientationPatient (the
first two direction columns), PixelSpacing (row spacing, column spacing), SliceThickness and
SpacingBetweenSlices, all from the volume (LPS, as DICOM). A left-handed volume (slices stacked
against the row x column normal) is written with its slices in reverse, so readers that sort along
the normal rebuild the same voxels in the same places.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from . import dicom
from .errors import InputError, OutputError
from .version import __version__
from .volume import Volume

SERIES_DESCRIPTION = "MVCT Enhance kV-like CT - NOT FOR DIAGNOSIS"  # LO: at most 64 characters
INT16 = (-32768, 32767)
#: Copied from the source DICOM, when there is one: who and what the series belongs to.
_PATIENT_STUDY_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                       "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                       "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
                       "PositionReferenceIndicator", "PatientPosition")


def source_headers(path: str | os.PathLike, series_uid: str | None = None) -> list[Dataset]:
    """The headers of the DICOM slices ``path`` was read from, in the order of the volume's slices
    (along their normal, as :func:`engine.volume.read_volume` stacks them); [] when it is no DICOM."""
    p = Path(path)
    if p.is_dir():
        files = [f for f in sorted(p.iterdir()) if f.is_file() and dicom.is_dicom_file(f)]
        headers = [dicom.read_header(f) for f in files]
        if series_uid is not None:
            headers = [h for h in headers if h.series_uid == series_uid]
        elif len({h.series_uid for h in headers}) > 1:
            raise InputError(f"folder '{p}' holds several DICOM series; give the series UID")
        ordered = dicom.order_series(headers, f"'{p}'")
        return [pydicom.dcmread(str(h.path), stop_before_pixels=True) for h in ordered]
    if p.is_file() and dicom.is_dicom_file(p):
        return [pydicom.dcmread(str(p), stop_before_pixels=True)]
    return []


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("", "-0"):
        text = "0"
    return text if len(text) <= 16 else f"{value:.8g}"


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, source: Sequence[Dataset] = (),
                       derivation: str = "", series_number: int | None = None) -> list[Path]:
    """Write ``volume`` (HU) into ``folder`` (created; must be new or empty) as one DICOM series.

    ``source``: the source series' headers (:func:`source_headers`), in slice order; ``derivation``
    is added to the DerivationDescription (model, engine). Returns the files written, in slice order.
    """
    if volume.array.ndim != 3:
        raise OutputError("a DICOM series needs a 3D volume")
    out = Path(folder)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"DICOM folder '{out}' is not empty")
    out.mkdir(parents=True, exist_ok=True)

    d = volume.direction_matrix
    row, col, stack = d[:, 0], d[:, 1], d[:, 2]
    normal = np.cross(row, col)
    array = volume.array
    origin = np.asarray(volume.origin, dtype=np.float64)
    sx, sy, sz = (float(s) for s in volume.spacing)
    order = list(range(array.shape[0]))
    if float(np.dot(stack, normal)) < 0:  # left-handed: the same voxels, stacked along the normal
        order = order[::-1]
    stored = np.clip(np.rint(array), *INT16).astype("<i2")

    src = list(source)
    first = src[0] if src else None
    series_uid, date, time = generate_uid(), *_now()
    study_uid = str(first.StudyInstanceUID) if first is not None and "StudyInstanceUID" in first else generate_uid()
    frame_uid = str(first.FrameOfReferenceUID) if first is not None and "FrameOfReferenceUID" in first else generate_uid()
    if series_number is None:
        base = int(first.SeriesNumber) if first is not None and str(first.get("SeriesNumber", "")).strip() else 0
        series_number = base + 1000
    description = ("Synthetic kV-CT-like image converted from a megavoltage CT by MVCT Enhance "
                   f"{__version__}. {derivation} NOT FOR DIAGNOSIS; not for dose calculation without a "
                   "commissioning study.").replace("  ", " ")[:1024]
    referenced_series = None
    if src:
        item = Dataset()
        item.SeriesInstanceUID = str(first.SeriesInstanceUID)
        item.ReferencedInstanceSequence = DicomSequence([_reference(h) for h in src])
        referenced_series = DicomSequence([item])

    files = []
    for number, k in enumerate(order):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out / f"IM{number + 1:05d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 192"
        if first is not None:
            for tag in _PATIENT_STUDY_TAGS:
                if tag in first:
                    setattr(ds, tag, first.data_element(tag).value)
        ds.PatientName = ds.get("PatientName", "")
        ds.PatientID = ds.get("PatientID", "")
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SeriesDescription = SERIES_DESCRIPTION
        ds.DerivationDescription = description
        ds.Manufacturer = "MVCT Enhance (research software)"
        ds.SoftwareVersions = __version__
        ds.BurnedInAnnotation = "NO"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = number + 1
        ds.SeriesDate = ds.ContentDate = date
        ds.SeriesTime = ds.ContentTime = time
        position = origin + k * sz * stack
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (between rows), column spacing
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.SliceLocation = _ds(float(np.dot(position, normal)))
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        if referenced_series is not None:
            ds.ReferencedSeriesSequence = referenced_series
            source_slice = src[k] if len(src) == array.shape[0] else src[0]
            ds.SourceImageSequence = DicomSequence([_reference(source_slice)])
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files


def _reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(header.get("SOPClassUID", CTImageStorage))
    item.ReferencedSOPInstanceUID = str(header.SOPInstanceUID)
    return item


def dicom_summary(files: Sequence[Path]) -> dict[str, Any]:
    """What the report records about a written series."""
    first = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    return {"series_instance_uid": str(first.SeriesInstanceUID), "study_instance_uid": str(first.StudyInstanceUID),
            "files": len(files), "series_description": str(first.SeriesDescription),
            "references_source": "ReferencedSeriesSequence" in first}
