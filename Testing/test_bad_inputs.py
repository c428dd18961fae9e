"""Bad inputs a new user met (issue 10, items 2.2, 2.3, 2.7 input side), built for real, and how each ends.

Every refusal is one InputError line naming what is wrong; every doubt is a warning in the volume's
``warnings`` (which the JSON report lists). The good inputs (bundled sample, pydicom's CT slices,
phantoms) still read without any.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import phantom_array
from MVCTEnhanceLib.engine.errors import InputError
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume
from MVCTEnhanceLib.synth.realct import load_real_slices, to_grid

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "sample"
CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
J2K_HEAD = get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False)


def _write_series(folder: Path, z_mm, *, orientations=None, xy=None, edit=None) -> list[Path]:
    """A series of CT_small copies (one series UID, new SOP UIDs) at positions ``z_mm`` along z."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(CT_SMALL)
    series_uid = generate_uid()
    paths = []
    for i, z in enumerate(z_mm):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        x, y = xy[i] if xy else (-158.135803, -179.035797)
        ds.ImagePositionPatient = [x, y, float(z)]
        if orientations:
            ds.ImageOrientationPatient = orientations[i]
        if edit:
            edit(ds)
        paths.append(folder / f"s{i:03d}.dcm")
        ds.save_as(paths[-1])
    return paths


def _raw_mostly_air() -> np.ndarray:
    """Unsigned stored values 0..2324 (HU + 1024, rescale lost) of a body CT slice embedded in air."""
    ct = next(s for s in load_real_slices() if s.name == "pydicom/CT_small.dcm")
    hu = to_grid(ct.hu, ct.spacing, size=256) + np.random.default_rng(3).normal(0.0, 15.0, (256, 256))
    hu[120:124, 120:124] = 1300.0  # a dense bone patch: the maximum of the user's file
    return np.clip(np.rint(hu + 1024.0), 0, None).astype(np.uint16)[np.newaxis]


def _shifted_head_hu() -> np.ndarray:
    """The real head slice (padding -2000 outside the circle) shifted by +1024 HU, as int16."""
    ds = pydicom.dcmread(J2K_HEAD)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return (hu + 1024.0).astype(np.int16)[np.newaxis]


def _write_array(path: Path, array: np.ndarray, spacing=(0.5, 0.5, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MVCTEnhanceLib.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _assert_one_line_refusal(proc: subprocess.CompletedProcess, out_dir: Path, pattern: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mvct-enhance: error:") and pattern in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "WARNING: In" not in proc.stderr
    assert list(out_dir.iterdir()) == []  # nothing written, no temporary left


# -- 2.2: lost DICOM rescale / values that are not HU ---------------------------------------------

def test_raw_unsigned_values_of_a_mostly_air_image_are_refused(tmp_path):
    raw = _raw_mostly_air()
    assert raw.min() == 0 and raw.max() == 2324 and np.median(raw) < 100  # what the old median check let pass
    path = _write_array(tmp_path / "raw.nrrd", raw)
    with pytest.raises(InputError, match=r"raw stored values without the DICOM rescale: air is at about \d+, "
                                         r"not -1000 HU, and soft tissue at about 10\d\d, not 0\.\.100 HU"):
        read_volume(path)


def test_head_ct_shifted_by_1024_hu_is_refused_also_with_padding_and_from_dicom(tmp_path):
    shifted = _shifted_head_hu()
    assert shifted.min() == -976  # the -2000 padding moved into the air range
    with pytest.raises(InputError, match="air is at about 2\\d, not -1000 HU"):
        read_volume(_write_array(tmp_path / "head.nrrd", shifted))
    # The same through DICOM: a real J2K head slice whose RescaleIntercept was written wrongly (+1024).
    ds = pydicom.dcmread(J2K_HEAD)
    ds.RescaleIntercept = 1024
    ds.save_as(tmp_path / "head.dcm")
    with pytest.raises(InputError, match="raw stored values without the DICOM rescale"):
        read_volume(tmp_path / "head.dcm")


def test_mvct_noise_circles_and_padding_are_still_hu(tmp_path):
    mv = read_volume(SAMPLE / "sample_mvct.nrrd")
    rng = np.random.default_rng(1)
    noisy = mv.array + rng.normal(0.0, 80.0, mv.array.shape).astype(np.float32)
    rows, cols = np.mgrid[0:mv.array.shape[1], 0:mv.array.shape[2]]
    outside = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2 > (0.5 * mv.array.shape[1]) ** 2
    for pad in (0.0, -1024.0, -2000.0, -3024.0):  # a circular field padded with what scanners use
        padded = noisy.copy()
        padded[:, outside] = pad
        write_volume(mv.with_array(padded), tmp_path / "p.nrrd", overwrite=True)
        assert read_volume(tmp_path / "p.nrrd").warnings == []


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 3, 3), (1, 4, 4)])
def test_tiny_images_get_no_hu_verdict(tmp_path, shape):
    values = np.linspace(1100.0, 1200.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    vol = read_volume(_write_array(tmp_path / "t.nrrd", values))
    assert vol.array.shape == shape


def test_good_inputs_read_without_warnings(tmp_path):
    for path in (SAMPLE / "sample_mvct.nrrd", SAMPLE / "sample_planning_ct.nrrd", CT_SMALL, J2K_HEAD):
        assert read_volume(path).warnings == [], path
    for s in load_real_slices():
        for hu in (s.hu, to_grid(s.hu, s.spacing)):
            write_volume(Volume(hu[np.newaxis].copy()), tmp_path / "r.nrrd", overwrite=True)
            assert read_volume(tmp_path / "r.nrrd").warnings == [], s.name
    write_volume(Volume(phantom_array((4, 64, 64), noise_sd=60.0)), tmp_path / "ph.nrrd")
    assert read_volume(tmp_path / "ph.nrrd").warnings == []
    _write_series(tmp_path / "series", [30.0, 35.0, 40.0, 45.0, 50.0])
    vol = read_volume(tmp_path / "series")
    assert vol.warnings == [] and vol.spacing[2] == pytest.approx(5.0) and vol.origin[2] == pytest.approx(30.0)


# -- 2.3: DICOM series geometry -------------------------------------------------------------------

def test_series_with_a_missing_slice_names_the_gap(tmp_path):
    _write_series(tmp_path / "ct", [30.0, 35.0, 40.0, 45.0, 55.0])  # 50 mm is missing
    with pytest.raises(InputError) as err:
        read_volume(tmp_path / "ct")
    assert ("slice positions jump from 45.0 to 55.0 mm between files s003.dcm and s004.dcm "
            "(expected 5.0 mm): a slice is missing") in str(err.value)
    assert "\n" not in str(err.value)


def test_series_files_in_any_order_are_sorted_by_position(tmp_path):
    _write_series(tmp_path / "ct", [50.0, 30.0, 45.0, 35.0, 40.0])
    vol = read_volume(tmp_path / "ct")
    assert vol.spacing[2] == pytest.approx(5.0) and vol.origin[2] == pytest.approx(30.0)


@pytest.mark.parametrize("case, pattern", [
    ("uneven", "uneven slice spacing: 3.5 mm between files s002.dcm and s003.dcm (positions 40.0 and 43.5 mm)"),
    ("drift", "uneven slice spacing"),
    ("duplicate", "files s001.dcm and s002.dcm have the same slice position 35.0 mm: duplicate slices"),
    ("orientation", "ImageOrientationPatient differs within the series: s000.dcm has [1, 0, 0, 0, 1, 0], "
                    "s002.dcm has [1, 0, 0, 0, 0.9848, -0.1736]"),
    ("tilt", "slices are not stacked along their normal: s003.dcm is shifted"),
    ("size", "differ in image size"),
])
def test_series_that_is_no_regular_grid_is_refused(tmp_path, case, pattern):
    z = [30.0, 35.0, 40.0, 45.0]
    if case == "uneven":
        _write_series(tmp_path / "ct", [30.0, 35.0, 40.0, 43.5, 48.5])
    elif case == "drift":  # each step alone looks fine, the slices end up 2 mm off the mean grid
        _write_series(tmp_path / "ct", np.cumsum([0.0] + [4.9] * 5 + [5.1] * 5))
    elif case == "duplicate":
        _write_series(tmp_path / "ct", [30.0, 35.0, 35.0, 40.0])
    elif case == "orientation":
        tilted = [1, 0, 0, 0, float(np.cos(np.deg2rad(10))), float(-np.sin(np.deg2rad(10)))]
        _write_series(tmp_path / "ct", z, orientations=[[1, 0, 0, 0, 1, 0]] * 2 + [tilted] * 2)
    elif case == "tilt":  # gantry tilt: y moves with z
        _write_series(tmp_path / "ct", z, xy=[(-158.1, -179.0 + 1.5 * i) for i in range(4)])
    elif case == "size":
        paths = _write_series(tmp_path / "ct", z)
        ds = pydicom.dcmread(paths[2])
        ds.PixelData = ds.pixel_array[:64, :64].copy().tobytes()
        ds.Rows = ds.Columns = 64
        ds.save_as(paths[2])
    with pytest.raises(InputError) as err:
        read_volume(tmp_path / "ct")
    assert pattern in str(err.value) and "\n" not in str(err.value)


def test_reading_prints_no_itk_warnings_and_restores_the_setting(tmp_path, capfd):
    _write_series(tmp_path / "ct", [30.0, 35.0, 40.0, 45.0, 55.0])
    with pytest.raises(InputError):
        read_volume(tmp_path / "ct")
    _write_series(tmp_path / "ok", [0.0, 2.5, 5.0])
    read_volume(tmp_path / "ok")
    assert "WARNING" not in capfd.readouterr().err
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # switched off only while reading


# -- 2.7 (input side): pictures, 8-bit, derived or non-CT DICOM, series UID that does not apply ----

def test_pictures_and_8_bit_images_are_refused(tmp_path):
    grey = np.clip(to_grid(load_real_slices()[0].hu, (0.66, 0.66)) / 4 + 200, 0, 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(tmp_path / "slice.png"))
    with pytest.raises(InputError, match="is a PNG picture: it holds display grey levels, not HU"):
        read_volume(tmp_path / "slice.png")
    sitk.WriteImage(sitk.GetImageFromArray(grey[np.newaxis].repeat(3, axis=0)), str(tmp_path / "v8.nrrd"))
    with pytest.raises(InputError, match="stores 8-bit integers: a CT in HU needs at least 16 bits"):
        read_volume(tmp_path / "v8.nrrd")
    assert read_volume(tmp_path / "v8.nrrd", check_hu=False).array.max() <= 255  # maps and masks still read


def test_derived_and_non_ct_dicom_are_read_with_a_warning(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    ds.ImageType = ["DERIVED", "PRIMARY", "PERFUSION", "RCBF"]
    ds.save_as(tmp_path / "perfusion.dcm")
    (warning,) = read_volume(tmp_path / "perfusion.dcm").warnings
    assert warning.startswith("DICOM ImageType is DERIVED\\PRIMARY\\PERFUSION\\RCBF: a derived image")

    def as_mr(d):
        d.Modality = "MR"

    _write_series(tmp_path / "mr", [0.0, 5.0, 10.0], edit=as_mr)
    assert read_volume(tmp_path / "mr").warnings == [
        "DICOM Modality is MR, not CT: the image was taken as a CT in HU; check that it is one"]


def test_series_uid_that_does_not_apply(tmp_path):
    nrrd = _write_array(tmp_path / "ct.nrrd", phantom_array((2, 32, 32)))
    with pytest.raises(InputError, match="is not a DICOM file, so it does not apply"):
        read_volume(nrrd, series_uid="1.2.3")
    own = str(pydicom.dcmread(CT_SMALL).SeriesInstanceUID)
    with pytest.raises(InputError, match=f"belongs to DICOM series '{own}', not to the requested series '1.2.3'"):
        read_volume(CT_SMALL, series_uid="1.2.3")
    (warning,) = read_volume(CT_SMALL, series_uid=own).warnings
    assert "only the slice in 'CT_small.dcm' was read, not the whole series" in warning


# -- the command line: one line, exit 2, nothing written; warnings reach the report ---------------

def test_cli_refuses_bad_inputs_in_one_line_and_writes_nothing(tmp_path, tiny_model_path):
    _write_series(tmp_path / "gap", [30.0, 35.0, 40.0, 45.0, 55.0])
    _write_array(tmp_path / "raw.nrrd", _raw_mostly_air())
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.uint8)), str(tmp_path / "slice.png"))
    cases = [(tmp_path / "gap", "a slice is missing"), (tmp_path / "raw.nrrd", "without the DICOM rescale"),
             (tmp_path / "slice.png", "PNG picture")]
    for source, pattern in cases:
        out = tmp_path / f"out_{source.stem}"
        out.mkdir()
        proc = _cli("enhance", source, "--output-dir", out, "--model", tiny_model_path)
        _assert_one_line_refusal(proc, out, pattern)


def test_cli_report_lists_the_input_warnings(tmp_path, tiny_model_path):
    ds = pydicom.dcmread(CT_SMALL)
    ds.ImageType = ["DERIVED", "SECONDARY", "PERFUSION"]
    ds.save_as(tmp_path / "derived.dcm")
    proc = _cli("enhance", tmp_path / "derived.dcm", "-o", tmp_path / "e.nrrd", "--report", tmp_path / "r.json",
                "--model", tiny_model_path, "--series-uid", str(ds.SeriesInstanceUID))
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: In" not in proc.stderr
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert any(w.startswith("DICOM ImageType is DERIVED") for w in warnings), warnings
    assert any("only the slice in 'derived.dcm' was read" in w for w in warnings), warnings
