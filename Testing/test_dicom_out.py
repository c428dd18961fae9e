"""The enhanced volume as a DICOM series (``--dicom-dir``), read back with pydicom and SimpleITK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.cli import main
from MVCTEnhanceLib.engine.dicomwrite import write_dicom_series
from MVCTEnhanceLib.engine.files import STAGING_PREFIX
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "Resources" / "models" / "mvctenhance-tiny-test.pt"


def _source_series(folder: Path, hu: np.ndarray, orientation=(1, 0, 0, 0, 1, 0), origin=(-20.0, -15.0, 2.5),
                   spacing=(0.8, 0.9), step=2.5) -> dict:
    """A DICOM CT series as a scanner writes one (unsigned storage with a rescale)."""
    folder.mkdir(parents=True)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid(), "sops": []}
    for k, sl in enumerate(hu):
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = pydicom.dataset.FileDataset(str(folder / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        uids["sops"].append(ds.SOPInstanceUID)
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientSex = "CT", "Phantom^MVCT", "P-0042", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["series"], uids["frame"]
        ds.SeriesNumber, ds.InstanceNumber = 3, len(hu) - k  # instance numbers backwards: order is by position
        ds.ImagePositionPatient = [float(v) for v in np.array(origin) + k * step * normal]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = step
        ds.Rows, ds.Columns = sl.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.clip(np.rint(sl + 1024), 0, 4095).astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"s{k}.dcm"), enforce_file_format=True)
    return uids


def _read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]


def _assert_same_volume(read: Volume, expected: Volume, atol_mm=1e-4):
    assert read.array.shape == expected.array.shape
    assert np.abs(read.array - np.rint(expected.array)).max() == 0  # rounded to 1 HU, nothing else
    assert np.abs(read.array - expected.array).max() <= 0.5
    np.testing.assert_allclose(read.spacing, expected.spacing, atol=atol_mm)
    np.testing.assert_allclose(read.origin, expected.origin, atol=atol_mm)
    np.testing.assert_allclose(read.direction, expected.direction, atol=1e-5)


def test_from_a_dicom_mvct_the_series_is_derived_references_its_source_and_reads_back_equal(tmp_path, capsys):
    hu = np.rint(phantom_array((5, 40, 36), seed=3, noise_sd=20.0))
    orientation = (0.9961947, 0.0871557, 0.0, -0.0871557, 0.9961947, 0.0)  # 5 degrees in-plane rotation
    source = _source_series(tmp_path / "mvct", hu, orientation=orientation)
    out = tmp_path / "dicom out"
    code = main(["enhance", str(tmp_path / "mvct"), "-o", str(tmp_path / "enhanced.nrrd"), "--dicom-dir", str(out),
                 "--report", str(tmp_path / "r.json"), "--no-metrics", "--model", str(TINY_MODEL), "--device", "cpu",
                 "--progress", "none"])
    assert code == 0, capsys.readouterr().err
    enhanced = read_volume(tmp_path / "enhanced.nrrd")
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"IM{i:05d}.dcm" for i in range(1, 6)]
    assert not list(tmp_path.glob(STAGING_PREFIX + "*"))

    datasets = _read_series(out)
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    sops = [str(ds.SOPInstanceUID) for ds in datasets]
    assert len(series) == 1 and series.isdisjoint({source["series"]})
    assert len(set(sops)) == 5 and set(sops).isdisjoint(source["sops"])
    for k, ds in enumerate(datasets):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID and ds.SOPClassUID == CTImageStorage
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.Modality == "CT"
        assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
        assert "NOT FOR DIAGNOSIS" in ds.DerivationDescription and "mvctenhance-tiny-test" in ds.DerivationDescription
        assert (str(ds.StudyInstanceUID), str(ds.FrameOfReferenceUID)) == (source["study"], source["frame"])
        assert (str(ds.PatientName), ds.PatientID) == ("Phantom^MVCT", "P-0042")
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source["series"]
        assert [r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == \
            source["sops"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source["sops"][k]  # the slice it came from
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.PixelRepresentation) == (1.0, 0.0, 1)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.8, 0.9], atol=1e-6)  # as the source
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        expected_position = np.asarray(enhanced.origin) + k * 2.5 * enhanced.direction_matrix[:, 2]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected_position, atol=1e-5)
        hu_back = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # pydicom: the voxels
        np.testing.assert_array_equal(hu_back, np.rint(enhanced.array[k]))
    _assert_same_volume(read_volume(out), enhanced)  # SimpleITK (GDCM) reads the same volume
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dicom"]["series_instance_uid"] in series and report["dicom"]["files"] == 5
    assert report["outputs"]["dicom_dir"] == str(out)


@pytest.mark.parametrize("direction", [ROTATED_DIRECTION, (1, 0, 0, 0, 1, 0, 0, 0, -1)],
                         ids=["oblique right-handed", "left-handed (slices against the normal)"])
def test_from_any_volume_the_series_has_its_voxels_and_geometry(tmp_path, direction):
    volume = Volume(phantom_array((4, 30, 26), seed=4).astype(np.float32) + 0.3, spacing=(0.7, 0.8, 2.0),
                    origin=(-12.5, 30.25, -40.0), direction=direction)
    files = write_dicom_series(volume, tmp_path / "series")
    datasets = _read_series(tmp_path / "series")
    assert len(files) == 4 and "ReferencedSeriesSequence" not in datasets[0] and "SourceImageSequence" not in datasets[0]
    assert len({str(ds.StudyInstanceUID) for ds in datasets}) == 1
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    image = reader.Execute()
    back = Volume(sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing(), image.GetOrigin(),
                  image.GetDirection())
    if np.linalg.det(volume.direction_matrix) > 0:
        _assert_same_volume(back, volume)
    else:  # readers stack along the normal: the same voxels in the same places, k reversed
        d = volume.direction_matrix.copy()
        d[:, 2] *= -1
        top = np.asarray(volume.origin) + (volume.array.shape[0] - 1) * volume.spacing[2] * volume.direction_matrix[:, 2]
        flipped = Volume(volume.array[::-1].copy(), volume.spacing, tuple(top), tuple(d.ravel()))
        _assert_same_volume(back, flipped)


def test_an_existing_series_is_not_overwritten_without_asking_and_is_replaced_whole(tmp_path, capsys):
    mvct = write_volume(Volume(phantom_array((3, 32, 30), seed=5), spacing=(1.0, 1.0, 3.0)), tmp_path / "mvct.nrrd")
    out = tmp_path / "series"
    out.mkdir()  # an empty folder made beforehand is fine
    def args(name):
        return ["enhance", str(mvct), "-o", str(tmp_path / name), "--dicom-dir", str(out), "--no-metrics",
                "--model", str(TINY_MODEL), "--device", "cpu", "--progress", "none"]

    assert main(args("e1.nrrd")) == 0
    first = {f.name: pydicom.dcmread(str(f)).SeriesInstanceUID for f in out.iterdir()}
    capsys.readouterr()
    assert main(args("e2.nrrd")) == 2
    err = capsys.readouterr().err
    assert f"DICOM folder '{out}' exists; use --overwrite" in err
    assert not (tmp_path / "e2.nrrd").exists()  # refused before any work: nothing written
    assert {f.name: pydicom.dcmread(str(f)).SeriesInstanceUID for f in out.iterdir()} == first
    assert main(args("e2.nrrd") + ["--overwrite"]) == 0
    second = {f.name: pydicom.dcmread(str(f)).SeriesInstanceUID for f in out.iterdir()}
    assert second.keys() == first.keys() and set(second.values()).isdisjoint(first.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.nrrd", "e2.nrrd", "mvct.nrrd", "series"]
    assert main(["enhance", str(mvct), "-o", str(tmp_path / "x.nrrd"), "--dicom-dir", str(tmp_path / "mvct.nrrd"),
                 "--model", str(TINY_MODEL)]) == 2  # a file is no folder


def test_the_batch_script_writes_the_series_too(tmp_path):
    mvct = write_volume(Volume(phantom_array((3, 32, 30), seed=6), spacing=(1.0, 1.0, 3.0)), tmp_path / "mvct.nrrd")
    script = REPO / "MVCTEnhance" / "Scripts" / "mvct_enhance_batch.py"
    done = subprocess.run([sys.executable, str(script), "--input", str(mvct), "-o", str(tmp_path / "e.nrrd"),
                           "--dicom-dir", str(tmp_path / "dcm"), "--no-metrics", "--model", str(TINY_MODEL),
                           "--device", "cpu", "--progress", "none"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    _assert_same_volume(read_volume(tmp_path / "dcm"), read_volume(tmp_path / "e.nrrd"))


def test_a_replaced_series_folder_comes_back_whole_when_the_set_cannot_be_completed(tmp_path, monkeypatch):
    """The DICOM folder is one output of the set: a failed move of another output restores the old folder."""
    from MVCTEnhanceLib.engine import files
    from MVCTEnhanceLib.engine.errors import OutputError
    from MVCTEnhanceLib.engine.files import OutputSet

    old = tmp_path / "series"
    old.mkdir()
    (old / "IM00001.dcm").write_bytes(b"old slice")
    (tmp_path / "z.json").write_bytes(b"old")
    volume = Volume(phantom_array((2, 16, 16)), spacing=(1.0, 1.0, 2.0))
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == tmp_path / "z.json":  # fails after the folder was moved into place
            raise OSError(5, "Input/output error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OutputError, match="no output was changed"):
        with OutputSet(overwrite=True) as outputs:
            folder = outputs.add(old, "DICOM folder", folder_output=True)
            report = outputs.add(tmp_path / "z.json")
            write_dicom_series(volume, outputs.stage(folder))
            files.write_json({"x": 1}, outputs.stage(report))
    assert sorted(p.name for p in old.iterdir()) == ["IM00001.dcm"] and (old / "IM00001.dcm").read_bytes() == b"old slice"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series", "z.json"]
    monkeypatch.undo()
    with OutputSet(overwrite=True) as outputs:
        folder = outputs.add(old, "DICOM folder", folder_output=True)
        write_dicom_series(volume, outputs.stage(folder))
    assert sorted(p.name for p in old.iterdir()) == ["IM00001.dcm", "IM00002.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series", "z.json"]
