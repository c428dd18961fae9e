"""make-dataset (disjoint anatomy, truthful manifest), the shipped sample, and the slice loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from MVCTEnhanceLib.synth import make_dataset as D
from MVCTEnhanceLib.training import data as L
from MVCTEnhanceLib.engine.errors import InputError, OutputError
from MVCTEnhanceLib.synth.phantoms import phantom_slice
from MVCTEnhanceLib.engine.volume import Volume, read_volume, write_volume

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "sample"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "data"
    # 128 px at 2 mm keeps the whole head in the field and the simulations fast
    D.make_dataset(out, seed=3, n_train_kv=5, n_train_mv=3, n_test=2, size=128, spacing_mm=2.0,
                   real_augmentations=1)
    return out


def test_manifest_matches_files_and_anatomy_is_disjoint(dataset):
    m = D.read_manifest(dataset)
    assert m["counts"] == {"train_kv": 5, "train_mv": 3, "test": 2 + 4 * 2}
    assert D.verify_dataset(dataset) == []
    ids = {k: {e["anatomy_id"] for e in v} for k, v in m["splits"].items()}
    assert not ids["train_kv"] & ids["train_mv"]
    assert not (ids["train_kv"] | ids["train_mv"]) & ids["test"]
    assert any(i.startswith("real:") for i in ids["test"])
    assert not any(i.startswith("real:") for i in ids["train_kv"] | ids["train_mv"])
    assert m["simulator"]["noise_sd"] == 30.0
    # every test case is a pair on one grid
    for e in m["splits"]["test"]:
        kv, mv = read_volume(dataset / e["kv"]), read_volume(dataset / e["mv"])
        assert kv.same_geometry(mv)


def test_manifest_tells_the_truth_about_the_anatomy(dataset):
    """Re-render phantom slices from the manifest's seed and level: they are the stored kV images,
    and the MV training anatomy is in no kV file (pixel check, not only ids)."""
    m = D.read_manifest(dataset)
    size, sp = m["parameters"]["size"], m["parameters"]["spacing_mm"]
    kv_arrays = [read_volume(dataset / e["file"]).array[0] for e in m["splits"]["train_kv"]]
    kv_arrays += [read_volume(dataset / e["kv"]).array[0] for e in m["splits"]["test"]]
    for e in m["splits"]["train_kv"][:2] + [x for x in m["splits"]["test"] if x["anatomy"]["kind"] == "phantom"]:
        img, _ = phantom_slice(e["anatomy"]["patient_seed"], e["anatomy"]["t"], size=size, spacing_mm=sp)
        stored = read_volume(dataset / e.get("file", e.get("kv"))).array[0]
        np.testing.assert_array_equal(np.rint(img), stored)
    for e in m["splits"]["train_mv"]:
        img, _ = phantom_slice(e["anatomy"]["patient_seed"], e["anatomy"]["t"], size=size, spacing_mm=sp)
        assert not any(np.array_equal(np.rint(img), k) for k in kv_arrays)


def test_verify_catches_a_leak_and_a_tampered_file(dataset, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(dataset, leaky)
    m = json.loads((leaky / "manifest.json").read_text())
    # leak 1: a test case whose kV is a copy of a training slice, with its true anatomy id
    case = m["splits"]["test"][0]
    shutil.copyfile(leaky / m["splits"]["train_kv"][0]["file"], leaky / case["kv"])
    case["sha256_kv"] = D._sha256(leaky / case["kv"])
    (leaky / "manifest.json").write_text(json.dumps(m))
    problems = D.verify_dataset(leaky)
    assert any("identical to training slice" in p for p in problems)
    # leak 2: the same anatomy id in two splits
    m["splits"]["train_mv"][0]["anatomy_id"] = m["splits"]["train_kv"][1]["anatomy_id"]
    (leaky / "manifest.json").write_text(json.dumps(m))
    assert any("anatomy shared by train_kv and train_mv" in p for p in D.verify_dataset(leaky))
    # a file changed after the manifest was written, and an unlisted volume
    (leaky / m["splits"]["train_mv"][1]["file"]).write_bytes(b"garbage")
    shutil.copyfile(leaky / m["splits"]["train_kv"][0]["file"], leaky / "train_kv" / "stray.nrrd")
    problems = D.verify_dataset(leaky, check_pixels=False)
    assert any("does not match its sha256" in p for p in problems)
    assert any("stray.nrrd is not in the manifest" in p for p in problems)


def test_make_dataset_refuses_to_overwrite(dataset):
    before = (dataset / "manifest.json").read_bytes()
    with pytest.raises(OutputError):
        D.make_dataset(dataset, seed=3, n_train_kv=1, n_train_mv=0, n_test=0, size=64, real_augmentations=-1)
    assert (dataset / "manifest.json").read_bytes() == before
    assert not any(p.name.startswith(f".{dataset.name}.mvct-tmp") for p in dataset.parent.iterdir())


def test_make_dataset_is_reproducible(tmp_path):
    a = D.make_dataset(tmp_path / "a", seed=11, n_train_kv=2, n_train_mv=1, n_test=0, size=64,
                       spacing_mm=4.0, real_augmentations=-1)
    b = D.make_dataset(tmp_path / "b", seed=11, n_train_kv=2, n_train_mv=1, n_test=0, size=64,
                       spacing_mm=4.0, real_augmentations=-1)
    for split in ("train_kv", "train_mv"):
        assert [e["sha256"] for e in a["splits"][split]] == [e["sha256"] for e in b["splits"][split]]
    c = D.make_dataset(tmp_path / "c", seed=12, n_train_kv=2, n_train_mv=0, n_test=0, size=64,
                       spacing_mm=4.0, real_augmentations=-1)
    assert not {e["anatomy_id"] for e in a["splits"]["train_kv"]} & {e["anatomy_id"] for e in c["splits"]["train_kv"]}


# ------------------------------------------------------------------------------------------ sample

def test_shipped_sample_loads_with_patient_like_geometry_and_sane_hu():
    kv = read_volume(SAMPLE / "sample_planning_ct.nrrd")
    mv = read_volume(SAMPLE / "sample_mvct.nrrd")
    assert kv.same_geometry(mv)
    assert kv.array.shape[0] >= 16 and kv.array.shape[1:] == (256, 256)
    assert kv.spacing == (0.98, 0.98, 3.0)
    assert kv.origin != (0.0, 0.0, 0.0) and kv.direction != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert kv.axial_axis() == 0
    a = kv.array
    assert abs(float(np.median(a[:, :20, :20])) + 1000.0) < 5.0  # air
    body = a[(a > -200) & (a < 300)]
    assert 0.0 < float(np.median(body)) < 100.0  # soft tissue
    assert int((a > 300).sum()) > 2000 and float(a.max()) > 1000.0  # bone and teeth
    # the MVCT is noisy and has lower bone contrast than the planning CT
    assert float(mv.array[:, :20, :20].std()) > 5.0
    bone = a > 1200
    assert float(mv.array[bone].mean()) < 0.75 * float(a[bone].mean())
    total = sum((SAMPLE / f).stat().st_size for f in D.SAMPLE_FILES)
    assert total < 4_000_000


def test_write_sample_writes_a_pair_and_refuses_to_overwrite(tmp_path):
    paths = D.write_sample(tmp_path, seed=2, n_slices=2, size=128)
    kv, mv = read_volume(paths["planning_ct"]), read_volume(paths["mvct"])
    assert kv.array.shape == (2, 128, 128) and kv.same_geometry(mv)
    assert json.loads(paths["description"].read_text())["patient_seed"] == 2
    with pytest.raises(OutputError):
        D.write_sample(tmp_path, seed=2, n_slices=2, size=128)


# ------------------------------------------------------------------------------------------ loader

def test_loader_yields_windowed_crops_of_body(dataset):
    ds = L.SliceDataset([dataset / "train_kv"], hu_window=(-600.0, 400.0), pixel_spacing_mm=(2.0, 2.0),
                        crop_size=96, seed=1)
    assert len(ds) == 5
    for i in range(len(ds)):
        x = ds[i]
        assert isinstance(x, torch.Tensor) and x.shape == (1, 96, 96) and x.dtype == torch.float32
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        assert float((x > L.hu_to_net(np.array([-400.0]), (-600, 400))[0]).float().mean()) > 0.05
    s = ds.summary()
    json.dumps(s)
    assert s["n_slices"] == 5 and s["hu_window"] == [-600.0, 400.0] and s["crop_size"] == 96
    assert s["pixel_spacing_mm"] == [2.0, 2.0] and s["n_volumes"] == 5


def test_loader_window_mapping_matches_the_model_card_convention(tmp_path):
    from MVCTEnhanceLib.engine.modelcard import ModelCard

    arr = np.full((1, 64, 64), -1000.0, np.float32)
    arr[0, 4:60, 4:60] = 0.0  # a body ring keeps the crop centred on the image
    arr[0, 12:52, 12:52] = np.linspace(-800, 600, 40, dtype=np.float32)[None, :]
    write_volume(Volume(arr), tmp_path / "ramp.nrrd")
    ds = L.SliceDataset([tmp_path], hu_window=(-600.0, 400.0), crop_size=64, augment=False)
    x = ds[0][0].numpy()
    card = ModelCard("t", "1", (-600.0, 400.0), (1.0, 1.0), {}, {}, "x", "x")
    a, b = card.hu_to_net_scale()
    np.testing.assert_allclose(x, np.clip(a * arr[0] + b, -1, 1), atol=1e-6)


def test_loader_is_seeded_per_epoch_and_never_crops_only_air(dataset):
    kw = dict(hu_window=(-1024.0, 176.0), pixel_spacing_mm=(1.0, 1.0), crop_size=48, max_shift_px=4,
              max_rotation_deg=20.0, seed=5)
    a = L.SliceDataset([dataset / "train_mv"], **kw)
    b = L.SliceDataset([dataset / "train_mv"], **kw)
    assert torch.equal(a[0], b[0])
    a.set_epoch(1)
    assert not torch.equal(a[0], b[0])
    b.set_epoch(1)
    assert torch.equal(a[0], b[0])
    body_level = float(L.hu_to_net(np.array([-400.0]), kw["hu_window"])[0])
    for epoch in range(6):
        a.set_epoch(epoch)
        for i in range(len(a)):
            assert bool((a[i] > body_level).any())  # 48 px crops of 256 mm slices still hold body
    plain = L.SliceDataset([dataset / "train_mv"], augment=False, **kw)
    plain.set_epoch(3)
    first = plain[0]
    plain.set_epoch(4)
    assert torch.equal(first, plain[0])


def test_field_truncation_cuts_the_body_to_a_smaller_field_and_keeps_it(dataset):
    kw = dict(hu_window=(-1000.0, 2000.0), pixel_spacing_mm=(2.0, 2.0), crop_size=128, seed=2, max_shift_px=0)
    whole = L.SliceDataset([dataset / "train_kv"], **kw)
    cut = L.SliceDataset([dataset / "train_kv"], field_truncation=1.0, **kw)
    again = L.SliceDataset([dataset / "train_kv"], field_truncation=1.0, **kw)
    level = float(L.hu_to_net(np.array([-400.0]), kw["hu_window"])[0])
    air = float(L.hu_to_net(np.array([-1000.0]), kw["hu_window"])[0])
    for i in range(len(whole)):
        w, c = whole[i][0].numpy(), cut[i][0].numpy()
        assert torch.equal(cut[i], again[i])  # seeded like every other augmentation
        body_w, body_c = (w > level).sum(), (c > level).sum()
        assert 0 < body_c < body_w  # some body kept, some cut away
        # kV air (-1000 HU) is the lowest value: cutting (and the soft edge) only moves pixels towards it
        assert np.all(c <= w + 1e-6)
        assert (np.abs(c - air) < 1e-6).sum() > (np.abs(w - air) < 1e-6).sum()
    assert cut.summary()["field_truncation"] == 1.0 and whole.summary()["field_truncation"] == 0.0
    plain = L.SliceDataset([dataset / "train_kv"], augment=False, field_truncation=1.0, **kw)
    assert torch.equal(plain[0], L.SliceDataset([dataset / "train_kv"], augment=False, **kw)[0])
    with pytest.raises(InputError, match="probability"):
        L.SliceDataset([dataset / "train_kv"], field_truncation=1.5, **kw)


def test_loader_resamples_to_the_requested_pixel_size(dataset):
    coarse = L.SliceDataset([dataset / "train_kv"], hu_window=(-600.0, 400.0), pixel_spacing_mm=(2.0, 2.0),
                            crop_size=128, augment=False)
    fine = L.SliceDataset([dataset / "train_kv"], hu_window=(-600.0, 400.0), pixel_spacing_mm=(1.0, 1.0),
                          crop_size=256, augment=False)
    level = float(L.hu_to_net(np.array([-400.0]), (-600.0, 400.0))[0])
    n_coarse = float((coarse[0] > level).sum())
    n_fine = float((fine[0] > level).sum())
    assert 3.5 < n_fine / n_coarse < 4.5  # same body area in mm^2, 4x the pixels


def test_loader_max_slices_gives_nested_subsets(dataset):
    kw = dict(hu_window=(-600.0, 400.0), pixel_spacing_mm=(2.0, 2.0), crop_size=64, augment=False, seed=9)
    small = L.SliceDataset([dataset / "train_kv"], max_slices=2, **kw)
    big = L.SliceDataset([dataset / "train_kv"], max_slices=4, **kw)
    assert len(small) == 2 and len(big) == 4
    assert set(small._origin) <= set(big._origin)


def test_loader_reads_dicom_series_folders_and_3d_volumes(tmp_path):
    from pydicom.data import get_testdata_file

    dcm = tmp_path / "patient" / "series"
    dcm.mkdir(parents=True)
    shutil.copyfile(get_testdata_file("CT_small.dcm"), dcm / "CT_small.dcm")
    shutil.copyfile(SAMPLE / "sample_mvct.nrrd", tmp_path / "sample_mvct.nrrd")
    sources = L.list_volume_sources([tmp_path])
    assert set(sources) == {dcm, tmp_path / "sample_mvct.nrrd"}
    ds = L.SliceDataset([tmp_path], hu_window=(-600.0, 400.0), crop_size=128, seed=0)
    assert ds.summary()["n_volumes"] == 2
    assert len(ds) == 1 + 20  # the DICOM slice and every body slice of the 3D sample


def test_loader_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        L.SliceDataset([tmp_path / "nope"], hu_window=(-600.0, 400.0))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="empty domain"):
        L.SliceDataset([tmp_path / "empty"], hu_window=(-600.0, 400.0))
    air = Volume(np.full((2, 32, 32), -1000.0, np.float32))
    air.array[0, 0, 0] = 0.0
    write_volume(air, tmp_path / "air.nrrd")
    with pytest.raises(InputError, match="empty domain"):
        L.SliceDataset([tmp_path / "air.nrrd"], hu_window=(-600.0, 400.0))
    with pytest.raises(InputError):
        L.SliceDataset([tmp_path / "air.nrrd"], hu_window=(400.0, -600.0))


# ------------------------------------------------------------------------------------------ CLI

def test_cli_make_dataset_and_sample(tmp_path, capsys):
    from MVCTEnhanceLib.cli import main

    out = tmp_path / "ds"
    rc = main(["make-dataset", str(out), "--seed", "4", "--n-train-kv", "2", "--n-train-mv", "1", "--n-test", "1",
               "--real-augmentations", "-1", "--size", "64", "--spacing", "4"])
    assert rc == 0
    assert D.read_manifest(out)["counts"] == {"train_kv": 2, "train_mv": 1, "test": 1}
    assert D.verify_dataset(out) == []
    assert "manifest" in capsys.readouterr().out
    assert main(["make-dataset", str(out), "--n-train-kv", "1"]) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "sample_mvct.nrrd").write_bytes(b"keep")
    assert main(["make-dataset", str(tmp_path), "--sample"]) == 2
    assert (tmp_path / "sample_mvct.nrrd").read_bytes() == b"keep"


def test_shipped_mvct_is_the_simulation_of_the_shipped_planning_ct():
    """The sample is reproducible from the code: re-simulating its first slices gives the same voxels."""
    from MVCTEnhanceLib.synth.simulate import SimulatorSettings, simulate

    meta = json.loads((SAMPLE / "sample.json").read_text())
    kv = read_volume(SAMPLE / "sample_planning_ct.nrrd")
    mv = read_volume(SAMPLE / "sample_mvct.nrrd")
    first = Volume(kv.array[:2].copy(), kv.spacing, kv.origin, kv.direction)
    sim = simulate(first, noise_sd=meta["simulator"]["noise_sd"], seed=meta["simulator_seed"])
    assert meta["simulator"]["version"] == SimulatorSettings().version
    # Another CPU's vector units may change float results in the last bits, so a voxel within that
    # of a .5 HU boundary may round the other way; a shifted noise stream changes nearly all voxels.
    diff = np.abs(np.rint(sim.array) - mv.array[:2])
    assert diff.max() <= 1.0
    assert np.count_nonzero(diff) <= 1e-3 * diff.size


def test_json_files_that_are_not_objects_give_input_errors(tmp_path):
    from MVCTEnhanceLib.training.export import read_card_extra
    from MVCTEnhanceLib.training.runfolder import load_run_config

    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="dataset manifest .* must hold a JSON object, not list"):
        D.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match="cannot be read"):
        D.read_manifest(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="training configuration .* is not valid JSON"):
        load_run_config(tmp_path)
    with pytest.raises(InputError, match="card extra file .* does not exist"):
        read_card_extra(tmp_path / "nope.json")


def test_randomised_dataset_with_clean_twins_validation_and_shift_sets(tmp_path):
    """Training MV slices from randomised machines with clean twins; validation and shift sets beside
    the test set; anatomy disjoint between training and evaluation; every file in the manifest."""
    from MVCTEnhanceLib.synth.randomise import SHIFT_SETS

    out = tmp_path / "ds"
    m = D.make_dataset(out, seed=2, n_train_kv=2, n_train_mv=3, n_test=2, real_augmentations=-1, size=64,
                       spacing_mm=4.0, randomise=True, n_validation=1, shift_sets=True)
    assert D.verify_dataset(out) == []
    assert m["counts"]["validation"] == 1
    assert {k for k in m["counts"] if k.startswith("shift_")} == {f"shift_{n}" for n in SHIFT_SETS}
    machines = [e["simulator"] for e in m["splits"]["train_mv"]]
    assert len({round(s["noise_sd"], 3) for s in machines}) == 3  # a machine per slice
    for e in m["splits"]["train_mv"]:
        noisy, clean = read_volume(out / e["file"]).array, read_volume(out / e["clean"]).array
        body = clean > -500
        assert 5.0 < np.std((noisy - clean)[body]) < 120.0  # the twin is the same slice without the noise
    train_ids = {e["anatomy_id"] for s in ("train_kv", "train_mv") for e in m["splits"][s]}
    eval_ids = {e["anatomy_id"] for s, entries in m["splits"].items() if not s.startswith("train") for e in entries}
    assert not train_ids & eval_ids
    # a shift set is the test anatomy under other settings: same kV truth for "whole" sets, other MVCT
    test_kv = read_volume(out / m["splits"]["test"][0]["kv"]).array
    assert np.array_equal(read_volume(out / m["splits"]["shift_noise45"][0]["kv"]).array, test_kv)
    assert not np.array_equal(read_volume(out / m["splits"]["shift_independent"][0]["mv"]).array,
                              read_volume(out / m["splits"]["test"][0]["mv"]).array)
    (out / m["splits"]["train_mv"][0]["clean"]).unlink()
    assert any("missing" in p for p in D.verify_dataset(out, check_pixels=False))


def test_independent_simulator_is_calibrated_and_differs_from_the_project_simulator():
    from MVCTEnhanceLib.synth.independent import IndependentSettings, effective_curve, simulate_independent
    from MVCTEnhanceLib.synth.simulate import SimulatorSettings, simulate_slice

    n = 128
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = np.where(xx ** 2 + yy ** 2 <= 50 ** 2, 0.0, -1000.0).astype(np.float32)
    img[(xx - 20) ** 2 + yy ** 2 < 8 ** 2] = 1561.0
    mv = simulate_independent(img, 2.0, IndependentSettings(noise_sd=30.0), seed=1)
    centre = (xx ** 2 + (yy + 20) ** 2) < 8 ** 2
    assert abs(float(mv[centre].mean())) < 15.0 and 10.0 < float(mv[centre].std()) < 60.0
    assert abs(float(mv[(xx ** 2 + yy ** 2) > 60 ** 2].mean()) + 1000.0) < 30.0
    curve = effective_curve()
    assert 700 < curve["cortical"] < 900 and -60 < curve["adipose"] < -35  # a ~1 MeV-like curve ...
    ours = simulate_slice(img, (2.0, 2.0), SimulatorSettings(noise_sd=0.0), np.random.default_rng(0))
    theirs = simulate_independent(img, 2.0, IndependentSettings(noise_sd=0.0))
    bone = ((xx - 20) ** 2 + yy ** 2) < 5 ** 2
    assert abs(float(ours[bone].mean() - theirs[bone].mean())) > 5.0  # ... but another machine
