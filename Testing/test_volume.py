"""Volume I/O: exact geometry round trips, HU handling, DICOM series, and every bad input's error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.engine.errors import InputError, OutputError
from MVCTEnhanceLib.engine.volume import Volume, axial_axis, read_volume, validate_voxels, write_volume

FORMATS = [".nrrd", ".nii", ".nii.gz", ".mha", ".mhd"]


def _volume(shape=(3, 20, 24)) -> Volume:
    # Anisotropic spacing, non-axial direction, and an origin that float32 cannot hold exactly.
    return Volume(phantom_array(shape), spacing=(0.9, 1.1, 3.0), origin=(-30.123456789, 12.25, -7.1),
                  direction=ROTATED_DIRECTION)


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_keeps_geometry_bit_exact(tmp_path, ext):
    vol = _volume()
    path = tmp_path / f"v{ext}"
    write_volume(vol, path)
    back = read_volume(path)
    assert back.spacing == vol.spacing
    assert back.origin == vol.origin
    assert back.direction == vol.direction
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array)
    # A second round trip through the same format is stable too.
    write_volume(back, tmp_path / f"w{ext}")
    assert read_volume(tmp_path / f"w{ext}").same_geometry(vol)


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_standard_header_still_describes_the_geometry(tmp_path, ext):
    # Other tools read the format's own fields: they must agree with the exact values to float32 precision.
    vol = _volume()
    write_volume(vol, tmp_path / f"v{ext}")
    image = sitk.ReadImage(str(tmp_path / f"v{ext}"))
    np.testing.assert_allclose(image.GetSpacing(), vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), vol.direction, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), vol.origin, atol=1e-4)


def test_exact_geometry_ignored_when_header_was_changed(tmp_path):
    # A tool that re-orients the file keeps our key but changes the header: the header must win.
    vol = _volume()
    write_volume(vol, tmp_path / "v.nrrd")
    image = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "moved.nrrd"))
    assert read_volume(tmp_path / "moved.nrrd").origin == (1.0, 2.0, 3.0)


def test_int16_output_is_rounded_and_clipped(tmp_path):
    arr = np.zeros((2, 4, 4), np.float32) - 1000
    arr[0, 0, :4] = [1.4, 1.6, -2.5, 40000.0]
    arr[1, 0, 0] = -50000.0
    write_volume(Volume(arr), tmp_path / "i.nrrd", dtype="int16")
    assert sitk.ReadImage(str(tmp_path / "i.nrrd")).GetPixelID() == sitk.sitkInt16
    back = read_volume(tmp_path / "i.nrrd").array
    assert back[0, 0, :4].tolist() == [1.0, 2.0, -2.0, 32767.0]
    assert back[1, 0, 0] == -32768.0


def test_2d_image_is_one_slice_and_written_back_2d(tmp_path):
    img = sitk.GetImageFromArray(phantom_array((1, 32, 40))[0])
    img.SetSpacing((0.7, 0.8))
    img.SetOrigin((5.0, -3.0))
    sitk.WriteImage(img, str(tmp_path / "s.mha"))
    vol = read_volume(tmp_path / "s.mha")
    assert vol.array.shape == (1, 32, 40) and vol.source_ndim == 2
    assert vol.axial_axis() == 0
    write_volume(vol, tmp_path / "o.mha")
    out = sitk.ReadImage(str(tmp_path / "o.mha"))
    assert out.GetDimension() == 2 and out.GetSpacing() == (0.7, 0.8) and out.GetOrigin() == (5.0, -3.0)


def test_axial_axis_follows_direction_not_index_order():
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert axial_axis(identity, (10, 20, 30)) == 0  # k is head-foot -> numpy axis 0
    # Sagittal acquisition: i runs head-foot (LPS z) -> numpy axis 2.
    sagittal = (0, 0, 1, 0, 1, 0, 1, 0, 0)
    assert axial_axis(sagittal, (10, 20, 30)) == 2
    # Coronal: j runs head-foot -> numpy axis 1.
    coronal = (1, 0, 0, 0, 0, 1, 0, -1, 0)
    assert axial_axis(coronal, (10, 20, 30)) == 1
    # A single slice is sliced along its singleton axis whatever the direction says.
    assert axial_axis(sagittal, (1, 20, 30)) == 0


# -- DICOM ---------------------------------------------------------------------------------------

def _write_dicom_series(folder, hu: np.ndarray, series_uid: str, rescale: bool = True) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = "1.2.826.0.1.3680043.8.498.1"
    for k, sl in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{series_uid[-4:]}_{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Phantom^Test", "TEST"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.FrameOfReferenceUID = study + ".9"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-20.0, -15.0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.8, 0.9]
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = sl.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        stored = np.clip(np.rint(sl + (1024 if rescale else 0)), 0, 4095).astype(np.uint16)
        if rescale:
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = stored.tobytes()
        ds.save_as(str(folder / f"{series_uid[-4:]}_{k}.dcm"), enforce_file_format=True)


def test_dicom_series_folder_is_read_in_hu(tmp_path):
    hu = np.rint(phantom_array((4, 24, 28), noise_sd=0.0))
    _write_dicom_series(tmp_path / "ct", hu, "1.2.826.0.1.3680043.8.498.2")
    vol = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))  # rescale applied: back in HU
    assert vol.spacing == pytest.approx((0.9, 0.8, 2.5))
    assert vol.origin == pytest.approx((-20.0, -15.0, 0.0))


def test_dicom_folder_with_two_series_names_them(tmp_path):
    hu = phantom_array((2, 16, 16), noise_sd=0.0)
    _write_dicom_series(tmp_path / "ct", hu, "1.2.826.0.1.3680043.8.498.3")
    _write_dicom_series(tmp_path / "ct", hu, "1.2.826.0.1.3680043.8.498.4")
    with pytest.raises(InputError, match="2 DICOM series.*498.3.*498.4|2 DICOM series.*498.4.*498.3"):
        read_volume(tmp_path / "ct")
    assert read_volume(tmp_path / "ct", series_uid="1.2.826.0.1.3680043.8.498.4").array.shape == (2, 16, 16)


def test_dicom_without_rescale_is_refused_as_not_hu(tmp_path):
    _write_dicom_series(tmp_path / "raw", phantom_array((2, 16, 16), noise_sd=0.0) + 1024, "1.2.826.0.1.3680043.8.498.5",
                        rescale=False)
    with pytest.raises(InputError, match="raw stored values"):
        read_volume(tmp_path / "raw")


# -- bad input -----------------------------------------------------------------------------------

def test_missing_empty_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nrrd")
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_volume(tmp_path / "empty.nrrd")
    (tmp_path / "junk.nrrd").write_bytes(os.urandom(512))
    with pytest.raises(InputError, match="cannot read"):
        read_volume(tmp_path / "junk.nrrd")
    (tmp_path / "nodicom").mkdir()
    (tmp_path / "nodicom" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path / "nodicom")


def test_4d_rgb_nan_and_non_hu_images_are_refused(tmp_path):
    four = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32) - 1000, isVector=False)
    sitk.WriteImage(four, str(tmp_path / "four.nrrd"))
    with pytest.raises(InputError, match="4D"):
        read_volume(tmp_path / "four.nrrd")
    rgb = sitk.GetImageFromArray(np.zeros((8, 8, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="3 components"):
        read_volume(tmp_path / "rgb.mha")
    arr = phantom_array((2, 16, 16))
    arr[1, 3, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match="1 NaN"):
        read_volume(tmp_path / "nan.nrrd")
    unit = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(unit), str(tmp_path / "unit.nrrd"))
    with pytest.raises(InputError, match="normalised"):
        read_volume(tmp_path / "unit.nrrd")
    with pytest.raises(InputError, match="empty"):
        validate_voxels(np.zeros((0, 4, 4), np.float32))


def test_outputs_never_clobber(tmp_path):
    vol = _volume()
    src = tmp_path / "in.nrrd"
    write_volume(vol, src)
    before = src.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        write_volume(vol, src)
    with pytest.raises(OutputError, match="is the input"):
        write_volume(vol, src, overwrite=True, inputs=[src])
    with pytest.raises(OutputError, match="unsupported extension"):
        write_volume(vol, tmp_path / "x.png")
    with pytest.raises(OutputError, match="does not exist"):
        write_volume(vol, tmp_path / "missing" / "x.nrrd")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]  # no temporary left behind
