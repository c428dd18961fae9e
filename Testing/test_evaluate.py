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
