"""The public command line: outputs, report contents, and one clear line for every user error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.cli import main
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume


@pytest.fixture
def mvct_file(tmp_path):
    path = tmp_path / "mvct.nrrd"
    write_volume(Volume(phantom_array((3, 48, 40)), spacing=(1.0, 1.0, 3.0), origin=(-20, -24, 5),
                        direction=ROTATED_DIRECTION), path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_user_error(code, err, pattern):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("mvct-enhance: error:")]
    assert len(lines) == 1 and pattern in lines[0], err
    assert "Traceback" not in err


def test_enhance_writes_everything_with_a_complete_report(tmp_path, capsys, mvct_file, tiny_model_path):
    planning = tmp_path / "ct.nii.gz"
    write_volume(Volume(phantom_array((4, 40, 40), seed=5, noise_sd=3.0), spacing=(1.2, 1.2, 2.5)), planning)
    code, out, err = _run(capsys, "enhance", mvct_file, "--output-dir", tmp_path, "--model", tiny_model_path,
                          "--planning-ct", planning)
    assert code == 0, err
    names = {p.name for p in tmp_path.iterdir()}
    assert {"mvct_enhanced.nrrd", "mvct_dig.nrrd", "mvct_nselfssim.nrrd", "mvct_report.json",
            "mvct_montage.png"} <= names
    src = read_volume(mvct_file)
    for name in ("mvct_enhanced.nrrd", "mvct_dig.nrrd", "mvct_nselfssim.nrrd"):
        assert read_volume(tmp_path / name, check_hu=False).same_geometry(src)
    report = json.loads((tmp_path / "mvct_report.json").read_text())
    assert report["model"]["card"]["name"] == "mvctenhance-tiny-test"
    assert report["model"]["sha256"] == report["parameters"]["model"]["sha256"]
    assert report["timings_s"]["total"] > 0
    m = report["metrics"]
    for summary in (m["dig"]["output"], m["nselfssim"]["input"], m["nselfssim"]["output"], m["nselfssim"]["planning_ct"]):
        assert {"mean", "median", "p95"} <= set(summary)
        assert summary["median"] <= summary["p95"]
    assert "NSelfSSIM mean in body" in out and "slices/s" in out


def test_int16_output(tmp_path, capsys, mvct_file, tiny_model_path):
    code, _, err = _run(capsys, "enhance", mvct_file, "-o", tmp_path / "e.mha", "--model", tiny_model_path,
                        "--output-type", "int16")
    assert code == 0, err
    assert sitk.ReadImage(str(tmp_path / "e.mha")).GetPixelID() == sitk.sitkInt16


def test_existing_outputs_are_refused_then_replaced_with_overwrite(tmp_path, capsys, mvct_file, tiny_model_path):
    target = tmp_path / "e.nrrd"
    target.write_bytes(b"precious")
    code, _, err = _run(capsys, "enhance", mvct_file, "-o", target, "--model", tiny_model_path)
    _assert_user_error(code, err, "exists")
    assert target.read_bytes() == b"precious"
    code, _, err = _run(capsys, "enhance", mvct_file, "-o", target, "--model", tiny_model_path, "--overwrite")
    assert code == 0, err
    assert read_volume(target).array.shape == (3, 48, 40)


def test_input_as_option_for_slicer_batch_runs(tmp_path, capsys, mvct_file, tiny_model_path):
    code, _, err = _run(capsys, "enhance", "--input", mvct_file, "-o", tmp_path / "e.nrrd", "--model", tiny_model_path)
    assert code == 0, err
    code, _, err = _run(capsys, "enhance", mvct_file, "--input", mvct_file, "-o", tmp_path / "f.nrrd")
    _assert_user_error(code, err, "give the input once")
    assert not (tmp_path / "f.nrrd").exists()


def test_output_equal_to_input_is_refused_even_with_overwrite(capsys, mvct_file, tiny_model_path):
    before = mvct_file.read_bytes()
    code, _, err = _run(capsys, "enhance", mvct_file, "-o", mvct_file, "--model", tiny_model_path, "--overwrite")
    _assert_user_error(code, err, "is the input")
    assert mvct_file.read_bytes() == before


def test_bad_inputs_write_nothing(tmp_path, capsys, mvct_file, tiny_model_path):
    bad_model = tmp_path / "model.pt"
    bad_model.write_bytes(os.urandom(1000))
    nan = phantom_array((2, 16, 16))
    nan[0, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nrrd"))
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        (("enhance", tmp_path / "missing.nrrd", "-o", tmp_path / "o.nrrd", "--model", tiny_model_path), "does not exist"),
        (("enhance", mvct_file, "-o", tmp_path / "o.nrrd", "--model", bad_model), "not a TorchScript"),
        (("enhance", tmp_path / "nan.nrrd", "-o", tmp_path / "o.nrrd", "--model", tiny_model_path), "NaN"),
        (("enhance", mvct_file, "-o", tmp_path / "o.png", "--model", tiny_model_path), "unsupported extension"),
        (("enhance", mvct_file, "-o", tmp_path / "o.nrrd", "--dig", tmp_path / "o.nrrd", "--model", tiny_model_path),
         "two outputs"),
        (("metrics", mvct_file, "--dig", tmp_path / "d.nrrd"), "needs the converted image"),
        (("info", bad_model), "not a TorchScript"),
    ]
    for argv, pattern in cases:
        code, _, err = _run(capsys, *argv)
        _assert_user_error(code, err, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_metrics_command(tmp_path, capsys, mvct_file, identity_model_path):
    converted = tmp_path / "conv.nrrd"
    assert _run(capsys, "enhance", mvct_file, "-o", converted, "--model", identity_model_path)[0] == 0
    code, out, err = _run(capsys, "metrics", mvct_file, "--converted", converted, "--dig", tmp_path / "d.nrrd",
                          "--nselfssim", tmp_path / "n.nrrd", "--report", tmp_path / "r.json", "--noise-sd", "30",
                          "--seed", "7")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["dig"]["output"]["mean"] == 0.0  # identity conversion: no structure changed
    assert report["metrics"]["parameters"]["noise_sd"] == 30.0
    assert np.all(read_volume(tmp_path / "d.nrrd", check_hu=False).array == 0.0)
    assert "NSelfSSIM" in out


def test_info_prints_the_card(capsys, tiny_model_path):
    code, out, _ = _run(capsys, "info", tiny_model_path)
    assert code == 0
    assert "mvctenhance-tiny-test" in out and "not for diagnosis" in out and "sha256" in out
    code, out, _ = _run(capsys, "info", tiny_model_path, "--json")
    assert json.loads(out)["card"]["direction"] == "MV->kV"


def test_console_script_reports_errors_without_traceback(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "mvct-enhance")
    proc = subprocess.run([script, "enhance", str(tmp_path / "none.nrrd"), "-o", str(tmp_path / "o.nrrd"),
                           "--model", "whatever.pt"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mvct-enhance: error:")
    assert "Traceback" not in proc.stderr
