"""The module's model library on real model files: the shipped list, import, sha256 checks, card reads."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

import slicer

from MVCTEnhanceLib.engine.errors import ModelError
from MVCTEnhanceLib.engine.modelfile import read_card
from MVCTEnhanceLib.training.tinymodel import write_tiny_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MVCTEnhance"))
import MVCTEnhanceMRML  # noqa: E402
from MVCTEnhanceMRML import models  # noqa: E402

SHIPPED = REPO / "Resources" / "models"
TINY = SHIPPED / "mvctenhance-tiny-test.pt"


def test_the_shipped_list_matches_the_shipped_files():
    listing = json.loads((SHIPPED / "models.json").read_text())
    assert listing["schema"] == "mvctenhance-models"
    listed = {e["file"]: e for e in listing["models"]}
    assert set(listed) == {p.name for p in SHIPPED.glob("*.pt")}, "every shipped .pt is listed, and only those"
    for name, entry in listed.items():
        path = SHIPPED / name
        card = read_card(path)
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), (
            f"{name} changed: run 'python scripts/sync_slicer_files.py' to record its new sha256")
        assert (entry["name"], entry["version"]) == (card.name, card.version)
    cmake = (REPO / "MVCTEnhance" / "CMakeLists.txt").read_text()
    assert "Resources/models/models.json" in cmake  # installed with the models


def test_library_lists_shipped_models_with_their_training_data_and_prefers_the_trained_one(tmp_path):
    library = models.ModelLibrary(SHIPPED, tmp_path / "user")
    entries = library.models()
    assert [(e.name, e.source) for e in entries] == [("mvctenhance-default", "shipped"),
                                                    ("mvctenhance-tiny-test", "shipped")]
    default, tiny = entries
    assert library.defaultModel() == default and not default.isTestModel and tiny.isTestModel
    assert "300 volumes" in default.training and "MVCT" in default.training and "kV CT" in default.training
    assert tiny.training == "none: seeded random weights, untrained"
    assert "UNTRAINED" in tiny.label
    assert library.verify(TINY) == hashlib.sha256(TINY.read_bytes()).hexdigest()
    info, warning = library.describe(default.path)
    assert info.startswith("mvctenhance-default 2.0.0") and "Trained on: MVCT: 300 volumes" in info and warning == ""


def test_import_validates_copies_and_records_the_sha256(tmp_path):
    user = tmp_path / "user models"
    library = models.ModelLibrary(SHIPPED, user)
    mine = tmp_path / "downloads" / "my model.pt"
    mine.parent.mkdir()
    write_tiny_model(mine, seed=7)
    entry = library.importModel(mine)
    sha = hashlib.sha256(mine.read_bytes()).hexdigest()
    assert entry.source == "user" and entry.sha256 == sha and entry.path.parent == user
    assert entry.path.name == "mvctenhance-tiny-test-0.1.0.pt" and entry.path.read_bytes() == mine.read_bytes()
    recorded = json.loads((user / "models.json").read_text())["models"]
    assert [(e["file"], e["sha256"], e["name"], e["version"]) for e in recorded] == [
        (entry.path.name, sha, "mvctenhance-tiny-test", "0.1.0")]
    assert recorded[0]["imported_from"] == str(mine.resolve())
    assert [e.source for e in library.models()] == ["shipped", "shipped", "user"]
    assert library.expectedSHA256(entry.path) == sha
    assert library.importModel(mine) == entry  # the same file again: nothing new
    assert library.importModel(TINY).source == "shipped"  # a shipped model is not copied
    assert sorted(p.name for p in user.iterdir()) == ["models.json", entry.path.name]  # no .partial left

    other = tmp_path / "other.pt"
    write_tiny_model(other, seed=8)  # same name and version in its card, other weights
    with pytest.raises(ModelError, match="already imported .* different sha256"):
        library.importModel(other)


@pytest.mark.parametrize("content, message", [
    (b"not a model", "not a TorchScript model file"),
    (b"", "empty"),
])
def test_import_refuses_files_that_are_not_models_and_copies_nothing(tmp_path, content, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    library = models.ModelLibrary(SHIPPED, tmp_path / "user")
    with pytest.raises(ModelError, match=message):
        library.importModel(bad)
    assert not (tmp_path / "user").exists()


def test_a_changed_file_is_refused_before_use_everywhere(tmp_path):
    """A listed model whose bytes no longer match its list: verify() and the MRML logic refuse it."""
    user = tmp_path / "user"
    library = models.ModelLibrary(SHIPPED, user)
    mine = tmp_path / "mine.pt"
    write_tiny_model(mine, seed=3)
    entry = library.importModel(mine)
    write_tiny_model(tmp_path / "swap.pt", seed=4)
    shutil.copyfile(tmp_path / "swap.pt", entry.path)  # replaced behind the library's back
    with pytest.raises(ModelError, match="does not match its listed sha256"):
        library.verify(entry.path)

    scene = slicer.vtkMRMLScene()
    from test_slicer_logic import _addVolume, _nodeIDs, _phantomVolume

    node = _addVolume(scene, "MVCT", _phantomVolume())
    ids = _nodeIDs(scene)
    with pytest.raises(ModelError, match="does not match its listed sha256"):
        MVCTEnhanceMRML.enhanceVolumeNode(scene, node, entry.path, device="cpu", models=library)
    assert _nodeIDs(scene) == ids


def test_listed_models_run_verified_and_other_files_with_a_warning(tmp_path):
    from test_slicer_logic import _addVolume, _phantomVolume

    library = models.ModelLibrary(SHIPPED, tmp_path / "user")
    scene = slicer.vtkMRMLScene()
    node = _addVolume(scene, "MVCT", _phantomVolume())
    verified = MVCTEnhanceMRML.enhanceVolumeNode(scene, node, TINY, device="cpu", computeMetrics=False,
                                                 models=library)
    assert not any("not in the models list" in w for w in verified.warnings)
    loose = tmp_path / "loose.pt"
    write_tiny_model(loose, seed=5)
    unverified = MVCTEnhanceMRML.enhanceVolumeNode(scene, node, loose, device="cpu", computeMetrics=False,
                                                   models=library)
    assert any("'loose.pt' is not in the models list" in w for w in unverified.warnings)
    assert "not in the models list" in json.loads(unverified.enhancedVolume.GetAttribute("MVCTEnhance.Warnings"))[-1]
    info, warning = library.describe(loose)
    assert "not in the models list" in warning


def test_the_card_is_read_once_per_file_version(tmp_path):
    library = models.ModelLibrary(SHIPPED, tmp_path / "user")
    path = tmp_path / "m.pt"
    write_tiny_model(path, seed=1)
    before = models.cardReads()
    for _ in range(50):  # the widget asks on every parameter change (every tick of a slider)
        library.describe(path)
        library.entryFor(path)
    assert models.cardReads() == before + 1
    write_tiny_model(path, seed=2, overwrite=True)  # a new version of the file is read again
    import os

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    library.describe(path)
    assert models.cardReads() == before + 2


def test_user_folder_is_beside_slicers_settings():
    assert models.userModelsFolder("/home/u/.config/slicer.org/Slicer.ini") == Path(
        "/home/u/.config/slicer.org/MVCTEnhance/models")


def test_model_box_entries(tmp_path):
    library = models.ModelLibrary(SHIPPED, tmp_path / "user")
    entries = models.modelChoices(library, TINY)
    assert [label for _, label in entries] == ["mvctenhance-default 2.0.0 (shipped)",
                                               "mvctenhance-tiny-test 0.1.0 (shipped, UNTRAINED test model)"]
    loose = tmp_path / "loose.pt"
    write_tiny_model(loose, seed=9)
    assert models.modelChoices(library, loose)[-1] == (str(loose), "other file: loose.pt (unverified)")
    assert models.modelChoices(library, tmp_path / "missing.pt") == entries
