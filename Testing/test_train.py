"""The trainer on tiny models: reproducibility, learning, resume after a signal, export, DDP, bad options."""

from __future__ import annotations

import json
import shutil
import os
import signal
import socket

import numpy as np
import pytest
import torch

from conftest import phantom_array
from MVCTEnhanceLib.engine.errors import InputError, OutputError
from MVCTEnhanceLib.training.export import export_run, generator_from_run
from MVCTEnhanceLib.engine.modelfile import load_model
from MVCTEnhanceLib.engine.volume import Volume, write_volume
from MVCTEnhanceLib.training.curves import read_loss_csv
from MVCTEnhanceLib.training.cyclegan import lr_factor
from MVCTEnhanceLib.training.options import PRESETS, TrainConfig
from MVCTEnhanceLib.training.runfolder import CHECKPOINT_NAME
from MVCTEnhanceLib.training.trainer import TrainingInterrupted, _Trainer, train

HU_WINDOW = (-1000.0, 1000.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and much faster on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TensorSlices(torch.utils.data.Dataset):
    """Phantom slices (1, 32, 32) in [-1, 1]: MV-like (noisy) or kV-like (clean)."""

    def __init__(self, seed: int, noise_sd: float, n: int = 6, size: int = 32) -> None:
        a = phantom_array((n, size, size), seed=seed, noise_sd=noise_sd)
        self.t = torch.from_numpy(np.clip(a / 1000.0, -1, 1)).unsqueeze(1).float()

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.t[i]


def tiny_config(out_dir, **kw) -> TrainConfig:
    opts = dict(mv=[], kv=[], out_dir=str(out_dir), crop_size=32, ngf=4, ndf=8, n_enc_res=1, n_dec_res=1,
                iterations=6, lr_schedule="constant", log_every=1, checkpoint_every=1000, sample_every=1000,
                progress=False, hu_window=HU_WINDOW, pool_size=3, label_jitter_sd=0.2)
    opts.update(kw)
    return TrainConfig(**opts)


def data():
    return {"mv_dataset": TensorSlices(0, 80.0), "kv_dataset": TensorSlices(1, 10.0)}


LOSS_COLUMNS = ("generator_total", "adversarial", "cycle", "identity", "perceptual", "autoencoder", "air",
                "discriminator")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """6 uninterrupted iterations of the proposed model."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(run), **data())
    return run


def _weights(run) -> dict:
    return torch.load(run / CHECKPOINT_NAME, weights_only=True)["translators"]


def test_run_folder_contents(straight_run):
    cols = read_loss_csv(straight_run / "losses.csv")
    assert cols["iteration"] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(cols[c]).all() for c in LOSS_COLUMNS)
    info = json.loads((straight_run / "run.json").read_text())
    assert info["status"] == "finished" and info["iteration"] == 6
    assert info["loss_weights"] == PRESETS["proposed"]
    assert info["perceptual_phi"].startswith("fixed low-level filter bank")
    assert (straight_run / "losses.png").stat().st_size > 1000
    assert sorted(p.name for p in (straight_run / "samples").iterdir()) == ["sample_0000000.png",
                                                                            "sample_0000006.png"]
    assert json.loads((straight_run / "config.json").read_text())["ngf"] == 4


def test_same_seed_gives_identical_losses(straight_run, tmp_path):
    train(tiny_config(tmp_path / "again", iterations=3), **data())
    a, b = read_loss_csv(straight_run / "losses.csv"), read_loss_csv(tmp_path / "again" / "losses.csv")
    for c in LOSS_COLUMNS:
        assert a[c][:3] == b[c], c
    # a different seed gives different losses
    train(tiny_config(tmp_path / "other", iterations=1, seed=5), **data())
    assert read_loss_csv(tmp_path / "other" / "losses.csv")["cycle"][0] != a["cycle"][0]


def test_sigint_checkpoints_and_resume_continues_identically(straight_run, tmp_path):
    run = tmp_path / "run"

    def send_sigint(iteration: int) -> bool:
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the trainer: it stops after the next iteration
        return False

    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 3 of 6") as info:
        train(tiny_config(run), should_stop=send_sigint, **data())
    assert info.value.iteration == 3
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    assert state["iteration"] == 3
    first_info = json.loads((run / "run.json").read_text())
    assert first_info["status"] == "interrupted"
    # without --resume the folder is protected
    with pytest.raises(OutputError, match="--resume"):
        train(tiny_config(run), **data())
    # resuming with a changed learning option is refused
    with pytest.raises(InputError, match="lr_g"):
        train(tiny_config(run, resume=True, lr_g=1e-3), **data())
    train(tiny_config(run, resume=True), **data())
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["started_utc"] == first_info["started_utc"]
    a, b = read_loss_csv(straight_run / "losses.csv"), read_loss_csv(run / "losses.csv")
    assert b["iteration"] == [1, 2, 3, 4, 5, 6]
    for c in LOSS_COLUMNS:
        assert a[c] == b[c], c
    wa, wb = _weights(straight_run), _weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_should_stop_interrupts_and_resume_extends(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(run, iterations=4), should_stop=lambda it: it == 1, **data())
    assert torch.load(run / CHECKPOINT_NAME, weights_only=True)["iteration"] == 1
    train(tiny_config(run, iterations=2, resume=True), **data())  # more iterations may be asked on resume
    assert read_loss_csv(run / "losses.csv")["iteration"] == [1, 2]


def test_stop_after_then_resume_and_init_from(straight_run, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, stop_after=3), **data())  # returns normally
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"
    assert torch.load(run / CHECKPOINT_NAME, weights_only=True)["iteration"] == 3
    train(tiny_config(run, resume=True), **data())
    a, b = read_loss_csv(straight_run / "losses.csv"), read_loss_csv(run / "losses.csv")
    assert a["cycle"] == b["cycle"]
    # a new run initialised from another run's weights starts exactly there (fresh optimisers)
    cfg = tiny_config(tmp_path / "finetune", init_from=str(straight_run), crop_size=48)
    trainer = _Trainer(cfg, cfg.weights(), 0, 1, TensorSlices(0, 80.0, size=48), TensorSlices(1, 10.0, size=48))
    wa = _weights(straight_run)
    assert all(torch.equal(wa[k], v) for k, v in trainer.G.state_dict().items())
    assert trainer.iteration == 0 and not trainer.opt_g.state
    trainer.run(None)
    info = json.loads((tmp_path / "finetune" / "run.json").read_text())
    assert info["initialised_from"]["iteration"] == 6 and info["initialised_from"]["config"]["crop_size"] == 32
    # the total training behind the weights follows the --init-from chain: 6 + 6, then 6 + 6 + 2
    assert info["iterations_total"] == 12
    train(tiny_config(tmp_path / "third", init_from=str(tmp_path / "finetune"), iterations=2), **data())
    assert json.loads((tmp_path / "third" / "run.json").read_text())["iterations_total"] == 14
    from MVCTEnhanceLib.training.export import build_card
    from MVCTEnhanceLib.training.runfolder import lineage_iterations

    assert build_card(tmp_path / "third", 2).extra["training"]["iterations_total"] == 14
    assert lineage_iterations(straight_run / CHECKPOINT_NAME, 6) == 6
    orphan = tmp_path / "orphan"  # a checkpoint without its run record: the total is unknown, not guessed
    orphan.mkdir()
    shutil.copyfile(tmp_path / "finetune" / CHECKPOINT_NAME, orphan / CHECKPOINT_NAME)
    assert lineage_iterations(orphan / CHECKPOINT_NAME, 6) is None
    with pytest.raises(InputError, match="networks differ"):
        train(tiny_config(tmp_path / "wider", ngf=8, init_from=str(straight_run)), **data())
    with pytest.raises(InputError, match="init_from .* does not exist"):
        train(tiny_config(tmp_path / "none", init_from=str(tmp_path / "nowhere")), **data())


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("learn") / "run"
    train(tiny_config(run, iterations=24, lr_g=1e-3, lr_d=5e-4, log_every=4), **data())
    return run


def test_a_few_iterations_lower_the_cycle_loss(learning_run):
    cycle = read_loss_csv(learning_run / "losses.csv")["cycle"]
    assert len(cycle) == 6
    assert cycle[-1] < 0.8 * cycle[0], cycle


def test_export_round_trips_the_card(learning_run, tmp_path):
    out = tmp_path / "model.pt"
    exported = export_run(learning_run, out, name="mvctenhance-test", version="0.0.1")
    loaded = load_model(out)
    assert loaded.sha256 == exported.sha256
    card = loaded.card
    assert card.to_dict() == exported.card.to_dict()
    assert card.name == "mvctenhance-test" and card.version == "0.0.1"
    assert card.hu_window == HU_WINDOW and card.pixel_spacing_mm == (1.0, 1.0)
    assert card.losses == PRESETS["proposed"]
    assert card.perceptual_phi.startswith("fixed low-level filter bank")
    assert card.architecture["ngf"] == 4 and card.architecture["parameters"] > 0
    training = card.extra["training"]
    assert training["iterations"] == 24 and training["status"] == "finished"
    assert training["git_commit"] and training["date_utc"].endswith("Z")
    assert training["optimizer"]["beta1"] == 0.5
    assert card.training_data["mv"] == {"slices": 6}
    # the scripted generator computes what the checkpoint's Dec_kV o Enc_MV computes
    gen, meta = generator_from_run(learning_run)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), gen(x), atol=1e-6)
    assert meta["iteration"] == 24
    with pytest.raises(OutputError, match="exists"):
        export_run(learning_run, out)
    export_run(learning_run, out, overwrite=True)
    with pytest.raises(InputError, match="not a training run folder"):
        export_run(tmp_path, tmp_path / "x.pt")


def test_damaged_or_foreign_checkpoints_are_refused(learning_run, tmp_path):
    import shutil

    from MVCTEnhanceLib.training.runfolder import read_checkpoint

    run = tmp_path / "run"
    shutil.copytree(learning_run, run)
    (run / CHECKPOINT_NAME).write_bytes(b"half a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        export_run(run, tmp_path / "m.pt")
    with pytest.raises(InputError, match="cannot be read"):
        train(tiny_config(run, iterations=30, resume=True), **data())
    torch.save({"model": torch.zeros(1)}, run / CHECKPOINT_NAME)
    with pytest.raises(InputError, match="not an MVCTEnhance training checkpoint"):
        read_checkpoint(run / CHECKPOINT_NAME)
    assert not (tmp_path / "m.pt").exists()


def test_cyclegan_preset_switches_the_extra_losses_off(tmp_path):
    cfg = tiny_config(tmp_path / "cg", iterations=1, preset="cyclegan", w_identity=0.0)
    assert cfg.weights() == {"adversarial": 1.0, "cycle": 10.0, "identity": 0.0, "perceptual": 0.0,
                             "autoencoder": 0.0, "air": 0.0, "denoise": 0.0}
    train(cfg, **data())
    cols = read_loss_csv(tmp_path / "cg" / "losses.csv")
    assert set(cols) == {"iteration", "lr_g", "lr_d", "seconds_per_iteration", "generator_total",
                         "adversarial", "cycle", "discriminator"}
    assert cols["generator_total"][0] == pytest.approx(cols["adversarial"][0] + 10 * cols["cycle"][0], rel=1e-5)
    assert json.loads((tmp_path / "cg" / "run.json").read_text())["perceptual_phi"] == "none (perceptual loss off)"


def test_learning_rate_schedules():
    assert lr_factor(0, 100, "linear", 0.5) == 1.0 and lr_factor(49, 100, "linear", 0.5) == 1.0
    assert lr_factor(75, 100, "linear", 0.5) == pytest.approx(0.5)
    assert lr_factor(99, 100, "linear", 0.5) == pytest.approx(0.02)
    assert lr_factor(50, 100, "cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor(99, 100, "constant", 0.5) == 1.0


def test_bad_options_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="MVCT training data '.*nowhere' does not exist"):
        train(tiny_config(tmp_path / "r1", mv=[str(tmp_path / "nowhere")], kv=[str(tmp_path)]))
    with pytest.raises(InputError, match="no MVCT training data given"):
        train(tiny_config(tmp_path / "r2"))
    with pytest.raises(InputError, match="crop_size must be a multiple of 4"):
        tiny_config(tmp_path, crop_size=30).validate(need_sources=False)
    with pytest.raises(InputError, match="weight of the cycle loss must be >= 0"):
        tiny_config(tmp_path, w_cycle=-1).validate(need_sources=False)
    with pytest.raises(InputError, match="field_truncation is a probability"):
        tiny_config(tmp_path, field_truncation=-0.1).validate(need_sources=False)
    with pytest.raises(InputError, match="unknown preset 'pix2pix'"):
        tiny_config(tmp_path, preset="pix2pix").validate(need_sources=False)
    with pytest.raises(InputError, match="air loss needs the HU window to start below -600"):
        tiny_config(tmp_path, hu_window=(-600.0, 400.0)).validate(need_sources=False)
    tiny_config(tmp_path, hu_window=(-600.0, 400.0), w_air=0).validate(need_sources=False)  # fine without it
    bad_vgg = tmp_path / "vgg.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, bad_vgg)
    with pytest.raises(InputError, match="lacks keys features.0.weight"):
        train(tiny_config(tmp_path / "r3", vgg_weights=str(bad_vgg)), **data())
    with pytest.raises(InputError, match="fewer than batch size 8"):
        train(tiny_config(tmp_path / "r4", batch_size=8), **data())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something.txt").write_text("x")
    with pytest.raises(OutputError, match="exists and is not empty"):
        train(tiny_config(tmp_path / "full"), **data())


def _write_domain(folder, seed: int, noise_sd: float) -> None:
    folder.mkdir()
    for v in range(2):
        arr = phantom_array((3, 40, 44), seed=seed + v, noise_sd=noise_sd)
        write_volume(Volume(arr, spacing=(1.1, 0.9, 3.0)), folder / f"vol{v}.nrrd", dtype="int16")


def test_training_from_volume_folders(tmp_path):
    _write_domain(tmp_path / "mv", 0, 80.0)
    _write_domain(tmp_path / "kv", 10, 10.0)
    cfg = tiny_config(tmp_path / "run", mv=[str(tmp_path / "mv")], kv=[str(tmp_path / "kv")], iterations=2,
                      sample_every=0)
    train(cfg)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["data"]["mv"]["n_volumes"] == 2 and info["data"]["mv"]["n_slices"] == 6
    assert info["data"]["kv"]["pixel_spacing_mm"] == [1.0, 1.0]
    assert read_loss_csv(tmp_path / "run" / "losses.csv")["iteration"] == [1, 2]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no volumes here")
    with pytest.raises(InputError, match="empty domain"):
        train(tiny_config(tmp_path / "run2", mv=[str(tmp_path / "mv")], kv=[str(tmp_path / "empty")]))
    assert not (tmp_path / "run2").exists()  # nothing written for a run that cannot start


def test_cli_train_resume_export(tmp_path, capsys):
    from MVCTEnhanceLib.cli import main

    _write_domain(tmp_path / "mv", 0, 80.0)
    _write_domain(tmp_path / "kv", 10, 10.0)
    run, model = tmp_path / "run", tmp_path / "model.pt"
    tiny = ["--crop-size", "32", "--ngf", "4", "--ndf", "8", "--n-enc-res", "1", "--n-dec-res", "1",
            "--sample-every", "0", "--no-progress", "--log-every", "1", "--lr-schedule", "constant"]
    assert main(["train", "--mv", str(tmp_path / "mv"), "--kv", str(tmp_path / "kv"), "-o", str(run),
                 "--iterations", "1", "--preset", "cyclegan", "--hu-window=-1000,1500", *tiny]) == 0
    assert main(["train", "-o", str(run), "--resume", "--iterations", "2", "--no-progress"]) == 0
    assert read_loss_csv(run / "losses.csv")["iteration"] == [1, 2]
    assert main(["train", "-o", str(run), "--resume", "--lr-g", "0.1"]) == 2  # a learning option may not change
    assert "cannot resume" in capsys.readouterr().err
    assert main(["export", str(run), "-o", str(model), "--name", "cli-test"]) == 0
    card = load_model(model).card
    assert card.name == "cli-test" and card.hu_window == (-1000.0, 1500.0)
    assert card.losses["perceptual"] == 0.0 and card.extra["training"]["iterations"] == 2
    assert main(["export", str(run), "-o", str(model)]) == 2
    assert "exists" in capsys.readouterr().err
    (tmp_path / "extra.json").write_text(json.dumps({"evaluation": {"mae_hu": {"mvct": 30.0, "converted": 20.0}}}))
    assert main(["export", str(run), "-o", str(model), "--overwrite",
                 "--card-extra", str(tmp_path / "extra.json")]) == 0
    assert load_model(model).card.extra["evaluation"]["mae_hu"]["converted"] == 20.0
    (tmp_path / "bad.json").write_text(json.dumps({"hu_window": [0, 1]}))
    assert main(["export", str(run), "-o", str(model), "--overwrite",
                 "--card-extra", str(tmp_path / "bad.json")]) == 2
    assert "may not set the card's own fields: hu_window" in capsys.readouterr().err
    assert main(["train", "--mv", str(tmp_path / "nowhere"), "--kv", str(tmp_path / "kv"), "-o",
                 str(tmp_path / "r2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "-o", str(tmp_path / "r3")]) == 2
    assert "training needs MVCT and kV-CT data" in capsys.readouterr().err


# ---- DDP: two CPU processes, gloo backend

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = tiny_config(os.path.join(out_dir, "run"), iterations=3, sample_every=0)
        trainer = _Trainer(cfg, cfg.weights(), rank, world, TensorSlices(0, 80.0), TensorSlices(1, 10.0))
        trainer.run(None)
        torch.save({"G": trainer.G.state_dict(), "D": trainer.D.state_dict(),
                    "mv_taken": trainer.mv.state()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for net in ("G", "D"):
        assert all(torch.equal(r0[net][k], r1[net][k]) for k in r0[net]), net
    # the weights moved from their (seeded, shared) initial values
    torch.manual_seed(0)
    from MVCTEnhanceLib.training.cyclegan import Translators
    init = Translators(4, 1, 1).state_dict()
    assert any(not torch.equal(init[k], r0["G"][k]) for k in init)
    # each rank saw its own shard: 6 slices / 2 ranks = 3 batches per epoch, 3 iterations = one epoch
    assert r0["mv_taken"] == {"epoch": 0, "taken": 3}
    # only rank 0 wrote the run folder's logs
    assert read_loss_csv(tmp_path / "run" / "losses.csv")["iteration"] == [1, 2, 3]


# -- the bounded generator ------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ["encdec", "fullres"])
def test_bounded_generator_trains_exports_and_stays_within_its_bound(tmp_path, architecture):
    """Starts exactly at its anchor (calibrated input + TV), learns, and its exported file is bounded."""
    from MVCTEnhanceLib.engine.calibration import tissue_calibration
    from MVCTEnhanceLib.engine.inference import enhance
    from MVCTEnhanceLib.engine.volume import Volume
    from MVCTEnhanceLib.training.bounded import BoundedTranslators

    run = tmp_path / "bounded"
    cfg = tiny_config(run, iterations=8, generator="bounded", max_change_hu=120.0, learned_change_hu=40.0,
                      anchor_tv_weight=15.0, anchor_tv_iterations=5, change_highpass_px=1.0,
                      mv_cycle_smooth_px=1.5, lr_g=1e-3, architecture=architecture, fullres_layers=2)
    from MVCTEnhanceLib.training.cyclegan import build_translators

    start = build_translators(cfg)
    assert isinstance(start, BoundedTranslators)
    x = data()["mv_dataset"][0][None]
    tv_only = start.tv(start.cal(start._hu(x)))  # zero-initialised decoders: G is exactly its anchor at first
    assert torch.allclose(start.G(x), start._net(start.cal(start._hu(x)) + (tv_only - start.cal(start._hu(x)))
                                                  .clamp(-120, 120)), atol=1e-6)
    train(cfg, **data())
    out = tmp_path / "bounded.pt"
    exported = export_run(run, out, name="bounded-test", version="0.0.1")
    card = load_model(out).card
    assert card.bounded and card.max_change_hu == 120.0 and card.anchor() == tissue_calibration()
    assert card.architecture["type"].startswith("bounded") and exported.card.to_dict()["schema_version"] == 2
    assert ("FullRes" in card.architecture["type"]) == (architecture == "fullres")
    arr = phantom_array((2, 40, 40), seed=3, noise_sd=40.0)
    result = enhance(Volume(arr), load_model(out), device="cpu")
    change = result.volume.array - tissue_calibration().apply(arr)
    assert np.abs(change).max() <= 120.0 + 1e-3
    assert np.abs(change).mean() > 1.0  # TV and the learned change act
    body = arr > -400
    assert (result.volume.array[body] < -900).mean() < 0.01  # no tissue becomes air


def test_clean_twins_are_cropped_with_their_slices_and_feed_the_denoise_loss(tmp_path):
    """make-dataset --randomise writes clean twins; the loader crops them exactly as their MV slices,
    and a bounded run with the denoise loss trains on them (data from --data)."""
    from MVCTEnhanceLib.synth.make_dataset import make_dataset
    from MVCTEnhanceLib.training.data import SliceDataset
    from MVCTEnhanceLib.training.trainer import make_config

    ds = tmp_path / "ds"
    make_dataset(ds, seed=1, n_train_kv=2, n_train_mv=2, n_test=0, real_augmentations=-1, size=64, spacing_mm=4.0,
                 randomise=True)
    loader = SliceDataset([ds / "train_mv"], hu_window=HU_WINDOW, pixel_spacing_mm=(4.0, 4.0), crop_size=32,
                          max_rotation_deg=10.0, field_truncation=1.0, twin_sources=[ds / "train_mv_clean"])
    item = loader[0]
    assert item.shape == (2, 32, 32)
    noisy, clean = item[0].numpy(), item[1].numpy()
    body = clean > -0.4  # -400 HU in this window
    assert body.any() and 0.002 < np.std((noisy - clean)[body]) < 0.2  # same crop, rotation and field: only noise
    with pytest.raises(InputError, match="do not match"):
        SliceDataset([ds / "train_mv"], hu_window=HU_WINDOW, twin_sources=[ds / "train_kv"])
    cfg = make_config(tmp_path / "run", data=ds, generator="bounded", w_denoise=1.0, crop_size=32, ngf=4, ndf=8,
                      n_enc_res=1, n_dec_res=1, iterations=3, progress=False, hu_window=HU_WINDOW,
                      pixel_spacing_mm=(4.0, 4.0), sample_every=0, anchor_tv_iterations=3)
    assert cfg.mv_clean == [str(ds / "train_mv_clean")]
    train(cfg)
    assert np.isfinite(read_loss_csv(tmp_path / "run" / "losses.csv")["denoise"]).all()
    with pytest.raises(InputError, match="clean twins"):
        TrainConfig(**{**cfg.to_dict(), "mv_clean": None, "out_dir": str(tmp_path / "x")}).validate()


def test_kept_checkpoints_can_be_exported(tmp_path):
    run = tmp_path / "kept"
    train(tiny_config(run, iterations=4, checkpoint_every=2, keep_checkpoints=True), **data())
    kept = sorted((run / "checkpoints").glob("iteration_*.pt"))
    assert [p.name for p in kept] == ["iteration_0000002.pt", "iteration_0000004.pt"]
    early = export_run(run, tmp_path / "early.pt", checkpoint=kept[0])
    late = export_run(run, tmp_path / "late.pt")
    assert early.card.extra["training"]["iterations"] == 2 and late.card.extra["training"]["iterations"] == 4
    assert early.card.extra["training"]["checkpoint"] == "iteration_0000002.pt"
    assert early.sha256 != late.sha256
    with pytest.raises(InputError, match="does not exist"):
        export_run(run, tmp_path / "x.pt", checkpoint=run / "checkpoints" / "nope.pt")
