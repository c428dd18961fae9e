"""The public command line: outputs, report contents, and one clear line for every user error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROTATED_DIRECTION, phantom_array
from MVCTEnhanceLib.cli import main
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]


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


# -- issue 10, section 2: what a new user hit -------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 3, 3), (2, 4, 4), (1, 4, 40)])
def test_tiny_images_are_converted_with_a_warning(tmp_path, capsys, tiny_model_path, shape):
    # Before: exit 1 and a TorchScript traceback ("Expected more than 1 spatial element").
    src = tmp_path / "tiny.nrrd"
    values = np.linspace(-50.0, 60.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    write_volume(Volume(values, spacing=(1.0, 1.0, 2.0)), src)
    code, out, err = _run(capsys, "enhance", src, "-o", tmp_path / "e.nrrd", "--report", tmp_path / "r.json",
                          "--model", tiny_model_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert read_volume(tmp_path / "e.nrrd", check_hu=False).same_geometry(read_volume(src))
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert any("pixels in-plane" in w and "not meaningful" in w for w in warnings), warnings


def test_simulate_refuses_images_too_small_to_simulate(tmp_path, capsys):
    # Before: "internal error: ValueError: lam value too large", later NaN voxels written silently.
    src = tmp_path / "tiny.nrrd"
    write_volume(Volume(np.linspace(-50.0, 60.0, 27, dtype=np.float32).reshape(3, 3, 3)), src)
    code, _, err = _run(capsys, "simulate", src, "-o", tmp_path / "mv.nrrd")
    _assert_user_error(code, err, "3 x 3 pixels in-plane; simulating an MVCT needs at least 16 x 16")
    assert not (tmp_path / "mv.nrrd").exists()


def test_output_dir_that_is_a_file_and_output_that_is_a_folder_say_so(tmp_path, capsys, mvct_file, tiny_model_path):
    # Before: "does not exist" and "unsupported extension".
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    code, _, err = _run(capsys, "enhance", mvct_file, "--output-dir", a_file, "--model", tiny_model_path)
    _assert_user_error(code, err, f"'{a_file}' is a file, not a folder")
    folder = tmp_path / "results"
    folder.mkdir()
    code, _, err = _run(capsys, "enhance", mvct_file, "-o", folder, "--model", tiny_model_path)
    _assert_user_error(code, err, f"output '{folder}' is a folder; give a file name such as "
                                  f"'{folder / 'enhanced.nrrd'}' or use --output-dir")
    code, _, err = _run(capsys, "enhance", mvct_file, "-o", a_file / "e.nrrd", "--model", tiny_model_path)
    _assert_user_error(code, err, f"'{a_file}' is a file, not a folder")
    code, _, err = _run(capsys, "simulate", mvct_file, "-o", folder)
    _assert_user_error(code, err, f"output '{folder}' is a folder; give a file name such as")
    assert list(folder.iterdir()) == []


def test_report_warns_about_a_planning_ct_elsewhere_and_a_body_cut_by_the_field(tmp_path, capsys, tiny_model_path):
    mvct = Volume(phantom_array((3, 48, 40)), spacing=(1.0, 1.0, 3.0), origin=(-20.0, -24.0, 5.0))
    write_volume(mvct, tmp_path / "mv.nrrd")
    write_volume(mvct, tmp_path / "same.nrrd")
    elsewhere = Volume(phantom_array((4, 40, 40), seed=5), spacing=(1.0, 1.0, 2.5), origin=(-20.0, -24.0, 400.0))
    write_volume(elsewhere, tmp_path / "far.nrrd")
    cut = mvct.array.copy()
    cut[:, 10:38, :] = 40.0  # the body runs across the whole width: cut by the field of view
    write_volume(mvct.with_array(cut), tmp_path / "cut.nrrd")

    def warnings(src, *extra):
        report = tmp_path / f"{src}.json"
        code, _, err = _run(capsys, "enhance", tmp_path / src, "-o", tmp_path / f"{src}_e.nrrd", "--report", report,
                            "--model", tiny_model_path, *extra)
        assert code == 0, err
        return json.loads(report.read_text())["warnings"]

    far = warnings("mv.nrrd", "--planning-ct", tmp_path / "far.nrrd")
    assert any("planning CT does not overlap the MVCT in space" in w for w in far), far
    assert not any("image border" in w for w in far)
    same = warnings("mv.nrrd", "--planning-ct", tmp_path / "same.nrrd", "--overwrite")
    assert not any("overlap" in w or "covers only" in w for w in same), same
    fov = warnings("cut.nrrd")
    assert any("reaches the image border in 3 of 3 slices" in w and "field of view" in w for w in fov), fov


def _readme_python_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Python\n"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]


def test_readme_python_snippet_runs_as_printed_with_the_default_model(tmp_path):
    # Before: its input file did not exist and it used the untrained tiny model.
    snippet = _readme_python_snippet()
    assert "tiny" not in snippet and "default_model_path()" in snippet
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "MVCTENHANCE_RESOURCES"})
    assert proc.returncode == 0, proc.stderr
    assert read_volume(tmp_path / "enhanced.nrrd").same_geometry(read_volume(REPO / "Resources/sample/sample_mvct.nrrd"))
    assert (tmp_path / "dig.nrrd").is_file()
