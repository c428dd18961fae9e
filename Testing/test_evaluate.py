"""The evaluation command: test-set convention, methods, denoiser tuning, report files, the study."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import phantom_array
from MVCTEnhanceLib import cli
from MVCTEnhanceLib.engine.errors import InputError, OutputError
from MVCTEnhanceLib.study.cases import Case, Method, find_cases, parse_methods
from MVCTEnhanceLib.study.datasize import study_datasize, write_datasize_outputs
from MVCTEnhanceLib.study.evaluate import evaluate
from MVCTEnhanceLib.training.tinymodel import write_tiny_model
from MVCTEnhanceLib.engine.volume import Volume, write_volume

SPACING = (1.0, 1.0, 3.0)


def _pair(folder: Path, name: str, seed: int, noise_sd: float, shape=(2, 40, 40), mv_suffix="_mvct",
          kv_suffix="_kv") -> None:
    clean = phantom_array(shape, seed=seed, noise_sd=0.0)
    rng = np.random.default_rng(1000 + seed)
    noisy = clean + rng.normal(0.0, noise_sd, clean.shape).astype(np.float32) * (clean > -950)
    write_volume(Volume(clean, SPACING), folder / f"{name}{kv_suffix}.nrrd")
    write_volume(Volume(noisy, SPACING), folder / f"{name}{mv_suffix}.nrrd")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    for sub in ("test", "test_noisy", "val_low", "val_high"):
        (root / sub).mkdir()
    _pair(root / "test", "a", 1, 30.0)
    _pair(root / "test", "b", 2, 30.0, mv_suffix="_mv")  # make-dataset's name
    _pair(root / "test_noisy", "a", 1, 80.0)
    _pair(root / "test_noisy", "b", 2, 80.0)
    _pair(root / "val_low", "v", 7, 5.0)
    _pair(root / "val_high", "v", 7, 80.0)
    write_tiny_model(root / "tiny.pt", seed=0)
    write_tiny_model(root / "ident.pt", identity=True)
    return root


@pytest.fixture(scope="module")
def report(toy):
    out = toy / "report"
    record = evaluate(toy / "test", ["mvct", "nlm", "tv", f"tiny={toy / 'tiny.pt'}", f"ident={toy / 'ident.pt'}", "kv"],
                      out, validation=toy / "val_low")
    return out, record


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_files_and_rows(report):
    out, record = report
    rows = _rows(out / "per_case.csv")
    methods = ["mvct", "nlm", "tv", "tiny", "ident", "kv"]
    assert [(r["case"], r["method"]) for r in rows] == [(c, m) for c in ("a", "b") for m in methods]
    for r in rows:
        assert 0.0 < float(r["nselfssim"]) <= 1.0
        assert float(r["dig"]) >= 0.0
        if r["method"] == "kv":
            assert r["mae"] == r["psnr"] == r["ssim"] == ""  # the reference is not compared with itself
        else:
            assert float(r["mae"]) >= 0.0 and math.isfinite(float(r["ssim"]))
    for name in ("report.md", "summary.csv", "evaluation.json", "boxplots.png", "montage.png", "maps.png"):
        assert (out / name).stat().st_size > 0, name
    for png in ("boxplots.png", "montage.png", "maps.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    for m in methods:
        assert f"| {m}" in text
    assert "0.9024 ± 0.0106" in text  # the talk's MVCT value beside ours
    assert "Friedman" in text or "friedman" in text
    summary = _rows(out / "summary.csv")
    nss = {r["method"]: float(r["mean"]) for r in summary if r["metric"] == "nselfssim"}
    assert set(nss) == set(methods)
    # denoising lowers NSelfSSIM (less noise left) and MAE against the ground truth
    mae = {r["method"]: float(r["mean"]) for r in summary if r["metric"] == "mae"}
    assert nss["nlm"] < nss["mvct"] and nss["tv"] < nss["mvct"]
    assert mae["nlm"] < mae["mvct"] and mae["tv"] < mae["mvct"]
    assert record["statistics"]["nselfssim"]["friedman"]["p"] <= 1.0
    def strict(constant):
        raise AssertionError(f"evaluation.json holds {constant}: not strict JSON")

    saved = json.loads((out / "evaluation.json").read_text(), parse_constant=strict)
    assert saved["denoiser_tuning"]["validation"]["case"] == "v"
    assert {s["method"] for s in saved["summary"]} == set(methods)
    # the talk's DIG comparison: here the first two models, the first as comparator
    pair = saved["statistics"]["dig"]["pairs"][0]
    assert (pair["versus"], pair["method"]) == ("tiny", "ident") and pair["better_in_cases"] == 2
    assert "| ident − tiny |" in text


def test_rerender_adds_the_discussion_without_recomputing(report, tmp_path):
    import shutil

    from MVCTEnhanceLib.study.report import rerender

    out = tmp_path / "copy"
    shutil.copytree(report[0], out)
    before = (out / "report.md").read_text()
    rerender(out, ["The discussion, written after the numbers."])
    after = (out / "report.md").read_text()
    assert "## Discussion" in after and "written after the numbers" in after
    table = before[before.index("## NSelfSSIM"):before.index("## Figures")]
    assert table.split("\n", 1)[1] in after  # same tables, same numbers
    with pytest.raises(InputError, match="evaluation.json"):
        rerender(tmp_path)


def test_identity_model_gets_dig_zero_and_input_mae(report):
    out, _ = report
    rows = _rows(out / "per_case.csv")
    for case in ("a", "b"):
        by = {r["method"]: r for r in rows if r["case"] == case}
        assert float(by["ident"]["dig"]) == 0.0
        assert float(by["mvct"]["dig"]) == 0.0
        assert float(by["ident"]["mae"]) == pytest.approx(float(by["mvct"]["mae"]), rel=0, abs=1e-9)
        assert float(by["ident"]["nselfssim"]) == pytest.approx(float(by["mvct"]["nselfssim"]), abs=1e-12)
        assert float(by["tiny"]["dig"]) > 0.0  # a model that changes the image does get a DIG


def test_denoisers_are_tuned_on_the_validation_case_only(toy, report):
    _, base = report
    chosen = base["denoiser_tuning"]["settings"]
    # a different (much noisier) test set: same validation case, so the same settings
    same_val = evaluate(toy / "test_noisy", ["mvct", "nlm", "tv"], toy / "r_noisy_test", validation=toy / "val_low")
    assert same_val["denoiser_tuning"]["settings"] == chosen
    # the same test set with a noisier validation case: stronger denoising is chosen
    other_val = evaluate(toy / "test", ["mvct", "nlm", "tv"], toy / "r_noisy_val", validation=toy / "val_high")
    high = other_val["denoiser_tuning"]["settings"]
    assert high["tv"] > chosen["tv"] and high["nlm"] > chosen["nlm"]
    # a validation folder that is the test set itself is refused
    with pytest.raises(InputError, match="also in the test set"):
        evaluate(toy / "test", ["mvct", "tv"], toy / "r_leak", validation=toy / "test")


def test_simulated_validation_case_when_none_given(toy):
    rec = evaluate(toy / "test", ["mvct", "tv"], toy / "r_sim")
    val = rec["validation"]
    assert val["source"] == "simulated" and min(val["patient_seeds"]) >= 900_000
    assert rec["denoiser_tuning"]["settings"]["tv"] > 0


def test_case_convention(tmp_path):
    _pair(tmp_path, "p1", 1, 20.0)
    _pair(tmp_path, "p2", 2, 20.0, mv_suffix="_mv", kv_suffix="_planning_ct")
    write_volume(Volume(phantom_array((2, 40, 40), seed=3), SPACING), tmp_path / "p3_mvct.nii.gz")
    (tmp_path / "notes.txt").write_text("ignored")
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["p1", "p2", "p3"]
    assert cases[1].kv.name == "p2_planning_ct.nrrd" and cases[2].kv is None
    write_volume(Volume(phantom_array((2, 40, 40), seed=3), SPACING), tmp_path / "p3_mv.nrrd")
    with pytest.raises(InputError, match="two MVCT files"):
        find_cases(tmp_path)


def test_unregistered_planning_ct_gives_only_its_nselfssim(tmp_path, identity_model_path):
    d = tmp_path / "cases"
    d.mkdir()
    _pair(d, "a", 1, 30.0)
    _pair(d, "b", 2, 30.0)
    # b's planning CT on another grid (shifted origin): not a ground truth
    kv = Volume(phantom_array((2, 40, 40), seed=2, noise_sd=0.0), SPACING, origin=(5.0, 0.0, 0.0))
    write_volume(kv, d / "b_kv.nrrd", overwrite=True)
    rec = evaluate(d, ["mvct", f"ident={identity_model_path}", "kv"], tmp_path / "r")
    rows = {(r["case"], r["method"]): r for r in _rows(tmp_path / "r" / "per_case.csv")}
    assert rows[("b", "kv")]["nselfssim"] != "" and rows[("b", "kv")]["dig"] == ""
    assert rows[("b", "ident")]["mae"] == "" and rows[("a", "ident")]["mae"] != ""
    assert rec["denoiser_tuning"] is None


def test_bad_inputs_give_clear_errors(tmp_path, toy, capsys):
    with pytest.raises(InputError, match="does not exist"):
        find_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cases"):
        find_cases(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown method 'foo'"):
        parse_methods(["mvct", "foo"])
    with pytest.raises(InputError, match="does not exist"):
        parse_methods([f"m={tmp_path / 'nope.pt'}"])
    with pytest.raises(InputError, match="given twice"):
        parse_methods(["mvct", "mvct"])
    with pytest.raises(InputError, match="reserved"):
        parse_methods([f"kv={toy / 'tiny.pt'}"])
    with pytest.raises(InputError, match="DIG pair"):
        evaluate(toy / "test", ["mvct", "kv"], tmp_path / "r0", dig_pairs=[("cyclegan", "proposed")])
    with pytest.raises(InputError, match="figure case"):
        evaluate(toy / "test", ["mvct"], tmp_path / "r1", figure_case="zzz")
    out = tmp_path / "r2"
    evaluate(toy / "test", ["mvct", "kv"], out)
    with pytest.raises(OutputError, match="overwrite"):
        evaluate(toy / "test", ["mvct", "kv"], out)
    # the command line: one line on stderr, exit code 2
    code = cli.main(["evaluate", "--test-set", str(tmp_path / "missing"), "--methods", "mvct",
                     "-o", str(tmp_path / "r3")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code = cli.main(["evaluate", "--test-set", str(toy / "test"), "--methods", "mvct", "bogus",
                     "-o", str(tmp_path / "r4")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method 'bogus'" in err


def test_cli_evaluate_runs(toy, capsys):
    out = toy / "r_cli"
    code = cli.main(["evaluate", "--test-set", str(toy / "test"), "--methods", "mvct", f"ident={toy / 'ident.pt'}",
                     "kv", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "report.md").is_file()
    assert "mvct-enhance evaluate" in (out / "report.md").read_text()  # the command that made it


def test_datasize_study_trains_evaluates_and_resumes(tmp_path):
    data = tmp_path / "data"
    for sub in ("train_mv", "train_kv", "test"):
        (data / sub).mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    for i in range(3):
        write_volume(Volume(phantom_array((1, 40, 40), seed=10 + i, noise_sd=30.0), SPACING),
                     data / "train_mv" / f"mv_{i:05d}.nrrd")
        write_volume(Volume(phantom_array((1, 40, 40), seed=20 + i, noise_sd=0.0), SPACING),
                     data / "train_kv" / f"kv_{i:05d}.nrrd")
    _pair(data / "test", "case_000", 30, 30.0, shape=(1, 40, 40), mv_suffix="_mv")
    _pair(data / "test", "case_001", 31, 30.0, shape=(1, 40, 40), mv_suffix="_mv")
    out = tmp_path / "study"
    # one short run keeps the test fast; the curves themselves are tested below
    kw = dict(sizes=(2,), presets=("cyclegan",), iterations=2, crop_size=32, ngf=4, ndf=4)
    rec = study_datasize(data, out, **kw)
    assert [(s["preset"], s["n_slices"]) for s in rec["summary"]] == [("cyclegan", 2)]
    rows = _rows(out / "datasize.csv")
    assert len(rows) == 2 and all(float(r["dig"]) > 0 and float(r["mae"]) > 0 for r in rows)
    run = json.loads((out / "runs" / "cyclegan-n2" / "run.json").read_text())
    assert run["data"]["mv"]["n_slices"] == 2 and run["data"]["kv"]["n_slices"] == 3  # kV set fixed
    for name in ("datasize.png", "datasize.md", "datasize.json", "datasize_summary.csv", "models/cyclegan-n2.pt"):
        assert (out / name).is_file(), name
    ckpt = out / "runs" / "cyclegan-n2" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    again = study_datasize(data, out, **kw)  # resumes: nothing is retrained
    assert ckpt.stat().st_mtime_ns == stamp
    assert again["summary"] == rec["summary"]
    # a study cut short: report what finished, train nothing, name what is missing
    partial = study_datasize(data, out, **{**kw, "sizes": (1, 2)}, train_missing=False)
    assert partial["skipped"] == ["cyclegan-n1"] and not (out / "runs" / "cyclegan-n1").exists()
    assert "cyclegan-n1" in (out / "datasize.md").read_text()
    with pytest.raises(InputError, match="unknown preset"):
        study_datasize(data, out, sizes=(1,), presets=("gan",), iterations=2)


def test_datasize_plot_has_both_curves(tmp_path):
    rows = [{"preset": p, "n_requested": n, "n_slices": n, "case": c, "dig": d * n ** -0.3, "mae": 30.0 / n ** 0.2,
             "psnr": 30.0, "ssim": 0.9, "nselfssim": 0.8}
            for p, d in (("proposed", 100.0), ("cyclegan", 150.0)) for n in (25, 50, 100) for c in ("a", "b")]
    summary = write_datasize_outputs(tmp_path, rows, {"cases": ["a", "b"], "reduced": {"iterations": 1}})
    assert {s["preset"] for s in summary} == {"proposed", "cyclegan"} and len(summary) == 6
    assert (tmp_path / "datasize.png").read_bytes()[:4] == b"\x89PNG"
    assert "| proposed | 25 |" in (tmp_path / "datasize.md").read_text()


def test_case_dataclass_is_hashable():
    assert len({Case("a", Path("a_mvct.nrrd")), Case("a", Path("a_mvct.nrrd"))}) == 1


def test_trend_mark_is_qualified_when_the_method_itself_is_worse():
    """A method worse than the control in every case must not get a plain dagger, even where the
    step-down trend test rejects at its step through the better groups ordered before it."""
    from MVCTEnhanceLib.study.report import _mark, statistics

    rng = np.random.default_rng(0)
    values = {"ctrl": 0.9, "g1": 0.5, "g2": 0.52, "g3": 0.54, "g4": 0.95}  # g4 worse than the control
    methods = [Method("ctrl", "input")] + [Method(n, "denoiser") for n in ("g1", "g2", "g3")] + [Method("g4", "model")]
    rows = [{"case": f"c{c}", "method": m, "nselfssim": v + rng.normal(0, 0.01), "dig": math.nan, "mae": math.nan,
             "psnr": math.nan, "ssim": math.nan} for c in range(12) for m, v in values.items()]
    st = statistics(rows, methods, dig_pairs=[])
    assert all(c["significant"] for c in st["nselfssim"]["shirley_williams"]["comparisons"])
    assert [_mark(st, "nselfssim", m) for m in ("g1", "g2", "g3", "g4")] == ["†", "†", "†", "(†)"]


# --------------------------------------------------------------------------------------------------
# Sets of a make-dataset folder, calibrated baselines, errors per tissue, the talk's claims
# --------------------------------------------------------------------------------------------------

from MVCTEnhanceLib.engine.calibration import tissue_calibration  # noqa: E402
from MVCTEnhanceLib.engine.metrics import body_mask  # noqa: E402
from MVCTEnhanceLib.study import claims  # noqa: E402
from MVCTEnhanceLib.study.baselines import BaselineSetting, calibrated_baseline  # noqa: E402
from MVCTEnhanceLib.study.cases import load_case, resolve_sets  # noqa: E402
from MVCTEnhanceLib.study.denoisers import denoise  # noqa: E402
from MVCTEnhanceLib.study.report import rerender, statistics  # noqa: E402
from MVCTEnhanceLib.study.scores import FULL_REFERENCE, STUDY_METRICS, tissue_error  # noqa: E402

DATASET_METHODS = ["mvct", "tv", "calib", "calib+tv", "calib+nlm", "cyclegan", "proposed", "kv"]


def _mv_pair(folder: Path, name: str, seed: int, noise_sd: float, shape=(2, 40, 40)) -> None:
    """A kV phantom and its 'MVCT': the inverse tissue calibration (MV contrast) plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    clean = phantom_array(shape, seed=seed, noise_sd=0.0)
    mv = tissue_calibration().invert(clean)
    rng = np.random.default_rng(2000 + seed)
    mv = mv + rng.normal(0.0, noise_sd, mv.shape).astype(np.float32) * (clean > -950)
    write_volume(Volume(clean, SPACING), folder / f"{name}_kv.nrrd")
    write_volume(Volume(mv.astype(np.float32), SPACING), folder / f"{name}_mv.nrrd")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A make-dataset-like folder: test/ (2 cases), validation/ (1 case), shift/noise45/ (the same anatomy)."""
    root = tmp_path_factory.mktemp("dataset")
    for i, seed in enumerate((1, 2)):
        _mv_pair(root / "test", f"case_{i:03d}", seed, 30.0)
        _mv_pair(root / "shift" / "noise45", f"case_{i:03d}", seed, 45.0)
    _mv_pair(root / "validation", "case_000", 7, 30.0)
    (root / "manifest.json").write_text(json.dumps({"shift_sets": {"noise45": {"what": "noise 45 HU"}}}))
    write_tiny_model(root / "tiny.pt", seed=0)
    write_tiny_model(root / "ident.pt", identity=True)
    return root


@pytest.fixture(scope="module")
def dataset_report(dataset):
    out = dataset / "report"
    methods = [m if m not in ("cyclegan", "proposed") else
               f"{m}={dataset / ('tiny.pt' if m == 'cyclegan' else 'ident.pt')}" for m in DATASET_METHODS]
    return out, evaluate(dataset, methods, out)


def test_dataset_evaluation_covers_the_test_set_and_every_shift_set(dataset, dataset_report):
    out, record = dataset_report
    rows = _rows(out / "per_case.csv")
    sets = ["test", "shift/noise45"]
    assert [(r["set"], r["case"], r["method"]) for r in rows] == [
        (s, c, m) for s in sets for c in ("case_000", "case_001") for m in DATASET_METHODS]
    for name in STUDY_METRICS:  # the per-tissue columns
        assert name in rows[0]
    assert {r["set"] for r in _rows(out / "summary.csv")} == set(sets)
    assert [s["name"] for s in record["sets"]] == sets
    assert record["summary"] == record["sets"][0]["summary"]  # the top level is the standard set's
    # tuned once, on the dataset's validation/ folder
    assert record["validation"]["folder"] == str(dataset / "validation")
    assert set(record["baseline_tuning"]["settings"]) == {"calib", "calib+tv", "calib+nlm"}
    for png in ("boxplots.png", "montage.png", "maps.png", "montage_shift-noise45.png", "maps_shift-noise45.png",
                "headline.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    text = (out / "report.md").read_text()
    for heading in ("## Headline", "### Never worse than its input", "## The talk's claims",
                    "### 1. Converted NSelfSSIM", "### 2. The proposed model preserves structure",
                    "### 3. A few hundred unpaired slices suffice", "## Ablation: what the bound and the calibration add",
                    "## Set `test`", "## Set `shift/noise45`: noise 45 HU", "### Errors per tissue", "## References"):
        assert heading in text, heading
    assert text.count("**Verdict: ") == 3
    assert "**Verdict: not testable here**" in text  # no data-size study given
    assert "Med. Phys. 49(6), 2022" in text and "ISCO 2023" in text
    headline = text[text.index("## Headline"):text.index("### Never worse")]
    assert "| method | `test` | `shift/noise45` |" in headline
    for m in DATASET_METHODS:
        assert f"| {m} |" in headline
    assert "- **proposed**: never worse than its input (4 cases in 2 set(s))." in text
    assert "**calib** vs **mvct** (the calibration alone)" in text
    # the calibration is what this toy MVCT lacks: calib beats the input everywhere
    nw = record["never_worse"]
    assert nw["calib"]["test"]["worse"] == 0 and nw["calib"]["shift/noise45"]["worse"] == 0
    assert nw["cyclegan"]["test"]["worse"] == 2  # the random tiny model wrecks the image
    assert record["claims"]["dig"]["primary"] == {"set": "test", "model": "proposed", "versus": "cyclegan"}


def test_a_method_returning_its_input_gets_dig_zero_and_the_input_mae_in_every_set(dataset_report):
    out, _ = dataset_report
    rows = _rows(out / "per_case.csv")
    for s in ("test", "shift/noise45"):
        for case in ("case_000", "case_001"):
            by = {r["method"]: r for r in rows if r["case"] == case and r["set"] == s}
            assert float(by["proposed"]["dig"]) == 0.0
            for metric in ("mae", "mae_bone", "me_fat", "mae_soft"):
                assert float(by["proposed"][metric]) == pytest.approx(float(by["mvct"][metric]), rel=0, abs=1e-9)
            assert float(by["calib"]["tissue_change"]) == 0.0  # the calibrated input is the anchor itself
            assert float(by["calib"]["mae"]) < float(by["mvct"]["mae"])


def test_multi_set_report_rerenders_from_its_record(dataset_report, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(dataset_report[0], out)
    before = (out / "report.md").read_text()
    rerender(out, ["Discussion after the numbers."])
    after = (out / "report.md").read_text()
    body = before[before.index("## Methods"):before.index("## References")]
    assert body in after and "Discussion after the numbers." in after


def test_per_tissue_errors_by_hand():
    truth = np.array([[[-1000.0, -150.0, -31.0, -30.0, 0.0, 100.0, 101.0, 300.0, 301.0, 1000.0]]], np.float32)
    out = truth + np.array([[[5, 10, 20, -4, -8, 12, 99, 99, -50, 30]]], np.float32)
    body = truth > -500
    # fat: -150, -31 (errors 10, 20); soft: -30, 0, 100 (-4, -8, 12); bone: 301, 1000 (-50, 30); 101 and 300: none
    assert tissue_error(out, truth, body, "fat", signed=True) == pytest.approx(15.0)
    assert tissue_error(out, truth, body, "fat", signed=False) == pytest.approx(15.0)
    assert tissue_error(out, truth, body, "soft", signed=True) == pytest.approx(0.0)
    assert tissue_error(out, truth, body, "soft", signed=False) == pytest.approx(8.0)
    assert tissue_error(out, truth, body, "bone", signed=True) == pytest.approx(-10.0)
    assert tissue_error(out, truth, body, "bone", signed=False) == pytest.approx(40.0)
    assert math.isnan(tissue_error(out, truth, truth > 2000, "bone", signed=False))  # no bone: NaN
    assert FULL_REFERENCE["me_bone"](out, truth, body) == pytest.approx(-10.0)


def test_per_tissue_errors_of_a_toy_case_match_numpy(dataset, dataset_report):
    out, _ = dataset_report
    rows = {(r["set"], r["case"], r["method"]): r for r in _rows(out / "per_case.csv")}
    lc = load_case(next(c for c in find_cases(dataset / "test") if c.name == "case_001"))
    mask = body_mask(lc.mvct)
    mv, kv = lc.mvct.array.astype(np.float64), lc.ground_truth.array.astype(np.float64)
    cal = tissue_calibration().apply(lc.mvct.array).astype(np.float64)
    for tissue, sel in (("bone", kv > 300), ("fat", (kv >= -150) & (kv < -30)), ("soft", (kv >= -30) & (kv <= 100))):
        m = mask & sel
        assert m.any()
        for method, img in (("mvct", mv), ("calib", cal)):
            r = rows[("test", "case_001", method)]
            assert float(r[f"me_{tissue}"]) == pytest.approx(np.mean(img[m] - kv[m]), rel=1e-5, abs=1e-4)
            assert float(r[f"mae_{tissue}"]) == pytest.approx(np.mean(np.abs(img[m] - kv[m])), rel=1e-5, abs=1e-4)


def test_calibrated_baselines_are_tuned_on_the_validation_case_only(toy, dataset, tmp_path):
    meths = ["mvct", "calib", "calib+tv", "calib+nlm"]
    base = evaluate(toy / "test", meths, tmp_path / "a", validation=toy / "val_low")["baseline_tuning"]["settings"]
    # another (much noisier) test set, the same validation case: the same settings
    same = evaluate(toy / "test_noisy", meths, tmp_path / "b", validation=toy / "val_low")["baseline_tuning"]
    assert same["settings"] == base
    # the same test set, a noisier validation case: stronger denoising
    high = evaluate(toy / "test", meths, tmp_path / "c", validation=toy / "val_high")["baseline_tuning"]["settings"]
    assert high["calib+tv"]["value"] > base["calib+tv"]["value"]
    assert high["calib+nlm"]["value"] > base["calib+nlm"]["value"]
    assert {s["order"] for s in (*base.values(), *high.values())} <= {"denoise-then-calibrate",
                                                                       "calibrate-then-denoise"}
    # a validation folder holding test or shift cases is refused
    with pytest.raises(InputError, match="also in the test set"):
        evaluate(toy / "test", ["mvct", "calib+tv"], tmp_path / "d", validation=toy / "test")
    with pytest.raises(InputError, match="also in the test set"):
        evaluate(dataset, ["mvct", "calib+tv"], tmp_path / "e", validation=dataset / "shift" / "noise45")


def test_calibrated_baseline_api(dataset):
    lc = load_case(find_cases(dataset / "test")[0])
    cal = tissue_calibration()
    np.testing.assert_array_equal(calibrated_baseline(lc.mvct, "calib").array, cal.apply(lc.mvct.array))
    first = calibrated_baseline(lc.mvct, "calib+tv", 20.0)  # a number: denoise, then calibrate
    np.testing.assert_allclose(first.array, cal.apply(denoise(lc.mvct, "tv", 20.0).array), atol=1e-4)
    second = calibrated_baseline(lc.mvct, "calib+tv", BaselineSetting(20.0, "calibrate-then-denoise"))
    np.testing.assert_allclose(second.array, denoise(lc.mvct.with_array(cal.apply(lc.mvct.array)), "tv", 20.0).array,
                               atol=1e-4)
    assert first.same_geometry(lc.mvct) and not np.allclose(first.array, second.array)
    with pytest.raises(InputError, match="needs its denoiser's parameter"):
        calibrated_baseline(lc.mvct, "calib+nlm")
    with pytest.raises(InputError, match="unknown calibrated baseline"):
        calibrated_baseline(lc.mvct, "calib+foo", 1.0)
    assert [m.kind for m in parse_methods(["calib", "calib+tv", "calib+nlm"])] == ["calibrated"] * 3


def test_sets_of_a_dataset_folder(dataset, toy):
    assert [s.name for s in resolve_sets(dataset)] == ["test", "shift/noise45"]
    assert [s.name for s in resolve_sets(dataset, "noise45")] == ["shift/noise45"]
    assert [s.name for s in resolve_sets(dataset, "shift/noise45,test")] == ["test", "shift/noise45"]
    assert resolve_sets(dataset, "all") == resolve_sets(dataset)
    assert resolve_sets(dataset / "shift" / "noise45")[0].name == "shift/noise45"  # one set, given by its folder
    assert resolve_sets(dataset / "shift" / "noise45")[0].what == "noise 45 HU"
    with pytest.raises(InputError, match="never evaluated"):
        resolve_sets(dataset, "validation")
    with pytest.raises(InputError, match="not in"):
        resolve_sets(dataset, "noise99")
    with pytest.raises(InputError, match="make-dataset folder"):
        resolve_sets(toy / "test", "shift/noise45")


def test_cli_evaluate_sets_ablation(dataset, capsys):
    out = dataset / "r_cli_sets"
    code = cli.main(["evaluate", "--test-set", str(dataset), "--sets", "noise45", "--methods", "mvct", "calib",
                     f"proposed={dataset / 'ident.pt'}", "kv", "--ablation", "proposed:calib", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "claim     nselfssim: disagrees" in captured.out  # the identity model keeps the MVCT's noise
    rows = _rows(out / "per_case.csv")
    assert {r["set"] for r in rows} == {"shift/noise45"}
    text = (out / "report.md").read_text()
    assert "--sets noise45" in text and "--ablation proposed:calib" in text
    assert "**proposed vs calib** (proposed vs calib (given))" in text
    with pytest.raises(SystemExit) as exc:  # one or the other
        cli.main(["evaluate", "--test-set", str(dataset), "--sets", "test", "--all-sets", "--methods", "mvct",
                  "-o", str(dataset / "r_cli_bad")])
    assert exc.value.code == 2


def _claim_rows(values_by_method: dict[str, list[float]], metric: str, set_name: str = "test") -> list[dict]:
    return [{"set": set_name, "case": f"c{i}", "method": m, metric: v}
            for m, vs in values_by_method.items() for i, v in enumerate(vs)]


def test_claim_rules():
    ms = [Method("mvct", "input"), Method("cyclegan", "model"), Method("proposed", "model"), Method("kv", "reference")]
    rng = np.random.default_rng(0)
    n = 8
    kv = list(0.72 + rng.normal(0, 0.01, n))
    near = {"mvct": list(0.90 + rng.normal(0, 0.01, n)), "kv": kv, "proposed": [k + 0.005 for k in kv],
            "cyclegan": list(0.80 + rng.normal(0, 0.01, n))}
    def one(rows, methods=ms):
        return [{"name": "test", "folder": "x", "rows": rows, "cases": [f"c{i}" for i in range(n)],
                 "statistics": statistics(rows, methods)}]

    c = claims.claim_nselfssim(one(_claim_rows(near, "nselfssim")), ms)
    assert c["verdict"] == claims.AGREES and c["primary"]["model"] == "proposed"
    c = claims.claim_nselfssim(one(_claim_rows({**near, "proposed": near["mvct"]}, "nselfssim")), ms)
    assert c["verdict"] == claims.DISAGREES
    c = claims.claim_nselfssim(one(_claim_rows(near, "nselfssim")), ms[:3])  # no kv row
    assert c["verdict"] == claims.NOT_TESTABLE
    # DIG: the proposed model lower in every case (exact one-sided p = 1/2^8) -> agrees; reversed -> disagrees
    dig = {"cyclegan": list(100 + rng.normal(0, 5, n)), "proposed": list(50 + rng.normal(0, 5, n))}
    assert claims.claim_dig(one(_claim_rows(dig, "dig")), ms)["verdict"] == claims.AGREES
    swapped = {"cyclegan": dig["proposed"], "proposed": dig["cyclegan"]}
    c = claims.claim_dig(one(_claim_rows(swapped, "dig")), ms)
    assert c["verdict"] == claims.DISAGREES and "CycleGAN's DIG is lower" in c["reason"]
    # models outside the naming convention: the DIG table compares the first two, the claim only when asked
    other = [Method("mvct", "input"), Method("a", "model"), Method("b", "model")]
    ab = one(_claim_rows({"a": dig["cyclegan"], "b": dig["proposed"]}, "dig"), other)
    assert claims.claim_dig(ab, other)["verdict"] == claims.NOT_TESTABLE
    assert claims.claim_dig(ab, other, given=True)["verdict"] == claims.AGREES
    without_proposed = [m for m in ms if m.name != "proposed"]
    c = claims.claim_dig(one(_claim_rows(dig, "dig"), without_proposed), without_proposed)
    assert c["verdict"] == claims.NOT_TESTABLE


def test_datasize_claim_rule(tmp_path):
    from MVCTEnhanceLib.study.cases import write_csv
    from MVCTEnhanceLib.study.datasize import DATASIZE_FIELDS

    n = 6
    cases = [f"c{i}" for i in range(n)]
    study = tmp_path / "study"
    study.mkdir()
    (study / "datasize.json").write_text(json.dumps({"test_set": str(tmp_path / "test"), "cases": cases,
                                                     "reduced": {"iterations": 10}, "kv_slices": 3}))
    mvct_rows = [{"case": c, "method": "mvct", "mae": 60.0 + i} for i, c in enumerate(cases)]
    sets = [{"name": "test", "folder": str(tmp_path / "test"), "rows": mvct_rows, "cases": cases,
             "statistics": {}}]
    ms = [Method("mvct", "input")]

    def study_rows(mae_by_size: dict[int, float]) -> None:
        write_csv([{"preset": "proposed", "n_requested": s, "n_slices": s, "case": c, "dig": 1.0, "mae": m + i}
                   for s, m in mae_by_size.items() for i, c in enumerate(cases)], study / "datasize.csv",
                  fields=DATASIZE_FIELDS)

    study_rows({25: 70.0, 400: 40.0, 800: 30.0})
    c = claims.claim_datasize(study, sets, ms)
    assert c["verdict"] == claims.AGREES and c["rows"][0]["n_slices"] == 400  # the largest size <= 400
    assert c["rows"][0]["smallest_sufficient"] == 400
    study_rows({25: 70.0, 400: 65.0})
    assert claims.claim_datasize(study, sets, ms)["verdict"] == claims.DISAGREES
    study_rows({800: 30.0})
    assert claims.claim_datasize(study, sets, ms)["verdict"] == claims.NOT_TESTABLE
    assert claims.claim_datasize(None, sets, ms)["verdict"] == claims.NOT_TESTABLE
    with pytest.raises(InputError, match="study-datasize folder"):
        claims.read_datasize(tmp_path)
