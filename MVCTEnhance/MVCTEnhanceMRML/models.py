"""The models the module offers: the shipped ones and those the user imported, each checked by sha256.

Two folders, each with a ``models.json`` list (name, version, sha256 and file of each model):

- the shipped folder (``Resources/models``): its list is written by ``scripts/sync_slicer_files.py``
  from the files themselves and installed with them, so a damaged or replaced file is caught;
- the user folder (in Slicer: ``<settings folder>/MVCTEnhance/models``, any folder elsewhere): a model
  is imported into it by :meth:`ModelLibrary.importModel`, which validates the file (card, TorchScript,
  a probe run) and records its own sha256 on import.

Before a run the logic asks :meth:`ModelLibrary.expectedSHA256` and the job refuses a file whose
sha256 differs. A model file outside both lists runs, with a warning that it is unverified. Each
file's model card is read once per file version (path, size, modification time), however often the
widget asks. Pure Python (the engine's modelfile reader): no Qt, no torch except for the import probe.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from MVCTEnhanceLib.engine.errors import ModelError
from MVCTEnhanceLib.engine.files import write_json
from MVCTEnhanceLib.engine.modelfile import file_sha256, read_card

LIST_FILE = "models.json"
LIST_SCHEMA = "mvctenhance-models"


@functools.lru_cache(maxsize=64)
def _cardOfVersion(path: str, mtimeNs: int, size: int) -> Any:
    return read_card(path)


def cardOf(path: str | os.PathLike) -> Any:
    """The model card of ``path``, read once per file version (an edited file is read again)."""
    stat = Path(path).stat()
    return _cardOfVersion(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def cardReads() -> int:
    """How many times a card was actually read from a file (the cache's misses)."""
    return _cardOfVersion.cache_info().misses


def trainingSummary(card: Any) -> str:
    """One line on what the model was trained on, from the card's ``training_data``."""
    data = card.training_data or {}
    if isinstance(data.get("description"), str):
        return data["description"]
    parts = []
    for key, label in (("mv", "MVCT"), ("kv", "kV CT")):
        side = data.get(key)
        if isinstance(side, dict) and side.get("n_volumes") is not None:
            folders = data.get(f"{key}_sources") or []
            where = f" from {', '.join(map(str, folders))}" if folders else ""
            parts.append(f"{label}: {side['n_volumes']} volumes, {side.get('n_slices', '?')} slices{where}")
    crop = data.get("crop_size")
    if crop:
        parts.append(f"{crop} px crops")
    return "; ".join(parts) if parts else "training data not described in the model card"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of the library."""

    path: Path
    name: str
    version: str
    sha256: str | None        # the expected sha256 (None: a file outside the lists, unverified)
    source: str               # "shipped", "user" or "other"
    training: str
    isTestModel: bool

    @property
    def label(self) -> str:
        where = {"shipped": "shipped", "user": "imported", "other": "file"}[self.source]
        flag = ", UNTRAINED test model" if self.isTestModel else ""
        return f"{self.name} {self.version} ({where}{flag})"


def _readList(folder: Path | None) -> list[dict[str, Any]]:
    if folder is None:
        return []
    listing = folder / LIST_FILE
    if not listing.is_file():
        return []
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"the models list '{listing}' cannot be read ({exc}); delete or repair it") from None
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ModelError(f"the models list '{listing}' has no 'models' list")
    return [e for e in entries if isinstance(e, dict) and {"file", "sha256"} <= set(e)]


def _safeFileName(name: str, version: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{version}").strip("._") or "model"
    return f"{stem}.pt"


class ModelLibrary:
    """The shipped and the user's models (see the module)."""

    def __init__(self, shippedFolder: str | os.PathLike | None, userFolder: str | os.PathLike | None) -> None:
        self.shippedFolder = Path(shippedFolder) if shippedFolder else None
        self.userFolder = Path(userFolder) if userFolder else None

    # -- listing ------------------------------------------------------------------------------------

    def _listed(self) -> list[tuple[Path, dict[str, Any], str]]:
        listed = []
        for folder, source in ((self.shippedFolder, "shipped"), (self.userFolder, "user")):
            for entry in _readList(folder):
                listed.append((folder / entry["file"], entry, source))
        return listed

    def models(self) -> list[ModelEntry]:
        """Every listed model whose file is present: shipped first, then the user's, each in list order."""
        entries = []
        for path, listing, source in self._listed():
            if path.is_file():
                entries.append(self._entry(path, listing["sha256"], source))
        return entries

    def _entry(self, path: Path, sha256: str | None, source: str) -> ModelEntry:
        card = cardOf(path)
        return ModelEntry(path, card.name, card.version, sha256, source, trainingSummary(card), card.is_test_model())

    def entryFor(self, path: str | os.PathLike) -> ModelEntry:
        """The library's entry for a file; a file outside the lists is an unverified 'other' entry."""
        resolved = Path(path).resolve()
        for listedPath, listing, source in self._listed():
            if listedPath.resolve() == resolved:
                return self._entry(listedPath, listing["sha256"], source)
        return self._entry(Path(path), None, "other")

    def expectedSHA256(self, path: str | os.PathLike) -> str | None:
        resolved = Path(path).resolve()
        for listedPath, listing, _source in self._listed():
            if listedPath.resolve() == resolved:
                return str(listing["sha256"]).lower()
        return None

    def defaultModel(self) -> ModelEntry | None:
        """The first trained shipped model, else the first model at all (the untrained test model)."""
        models = self.models()
        trained = [m for m in models if not m.isTestModel]
        return (trained or models or [None])[0]

    # -- checking -----------------------------------------------------------------------------------

    def verify(self, path: str | os.PathLike) -> str:
        """The file's sha256, after checking it against the list; ModelError if it differs.

        A file outside the lists has nothing to be checked against: its sha256 is returned as it is
        (the caller warns that it is unverified).
        """
        expected = self.expectedSHA256(path)
        actual = file_sha256(path)
        checkSHA256(path, actual, expected)
        return actual

    # -- importing ----------------------------------------------------------------------------------

    def importModel(self, path: str | os.PathLike, probe: bool = True) -> ModelEntry:
        """Validate ``path`` and copy it into the user folder, recording its sha256 in the user list.

        Validation: the model card (read_card), and with ``probe`` the engine's full load (TorchScript
        loads, a small input runs, output finite and of the right shape; needs torch). Importing the
        same file again returns its entry; another file with the same name and version is refused.
        """
        if self.userFolder is None:
            raise ModelError("no user models folder is set: models cannot be imported")
        source = Path(path)
        card = read_card(source)  # ModelError naming what is wrong
        if probe:
            from MVCTEnhanceLib.engine.modelfile import load_model

            load_model(source)
        sha256 = file_sha256(source)
        for entry in self.models():
            if entry.sha256 == sha256:
                return entry  # already in the library (shipped or imported)
        self.userFolder.mkdir(parents=True, exist_ok=True)
        fileName = _safeFileName(card.name, card.version)
        target = self.userFolder / fileName
        if target.exists():
            raise ModelError(f"another model file named '{fileName}' ({card.name} {card.version}) is already "
                             f"imported in '{self.userFolder}' with a different sha256: give the new model its own "
                             "version in its card, or remove the old file and its entry in models.json")
        partial = target.with_name(target.name + ".partial")
        try:
            shutil.copyfile(source, partial)
            copied = file_sha256(partial)
            if copied != sha256:
                raise ModelError(f"copying '{source}' into '{self.userFolder}' gave a different file "
                                 f"(sha256 {copied[:12]}... instead of {sha256[:12]}...); try again")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        entries = _readList(self.userFolder)
        entries.append({"file": fileName, "name": card.name, "version": card.version, "sha256": sha256,
                        "imported_from": str(source.resolve()),
                        "imported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        try:
            write_json({"schema": LIST_SCHEMA, "models": entries}, self.userFolder / LIST_FILE)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return self._entry(target, sha256, "user")

    # -- words for the GUI --------------------------------------------------------------------------

    def describe(self, path: Any) -> tuple[str, str]:
        """(description, warning or '') of a model file for the widget; cheap to call on every change."""
        if path is None or str(path) in ("", "."):
            return "No model selected.", ""
        try:
            entry = self.entryFor(path)
            card = cardOf(path)
        except (OSError, ModelError) as exc:
            return "", str(exc)
        info = (f"{entry.name} {entry.version} — {card.pixel_spacing_mm[0]:g} x {card.pixel_spacing_mm[1]:g} mm, "
                f"HU window {card.hu_window[0]:g}..{card.hu_window[1]:g}. Trained on: {entry.training}")
        warnings = []
        if entry.isTestModel:
            warnings.append("This is the tiny UNTRAINED test model: its output is not a kV-like image. "
                            "Use it only to check the installation.")
        if entry.source == "other":
            warnings.append(unverifiedWarning(path))
        return info, " ".join(warnings)


def modelChoices(library: ModelLibrary, current: Any = None) -> list[tuple[str, str]]:
    """(path, label) for the model box: the library's models, then ``current`` as an unverified
    'other file' when it is a file outside the lists."""
    entries = [(str(m.path), m.label) for m in library.models()]
    current = str(current) if current is not None and str(current) not in ("", ".") else ""
    if current and Path(current).is_file() and Path(current).resolve() not in [Path(p).resolve() for p, _ in entries]:
        entries.append((current, f"other file: {Path(current).name} (unverified)"))
    return entries


def checkSHA256(path: str | os.PathLike, actual: str, expected: str | None) -> None:
    """ModelError when a listed model file's sha256 is not the listed one."""
    if expected is not None and actual.lower() != expected.lower():
        raise ModelError(f"model file '{path}' does not match its listed sha256 (expected {expected[:16]}..., "
                         f"found {actual[:16]}...): the file is damaged or was replaced. Reinstall the extension "
                         "for a shipped model, or import the model again")


def unverifiedWarning(path: str | os.PathLike) -> str:
    return (f"model file '{Path(path).name}' is not in the models list, so its sha256 was not checked; "
            "import it (Import model...) to record and check it")


def userModelsFolder(settingsFilePath: str | os.PathLike) -> Path:
    """The user's models folder beside Slicer's settings file (slicer.app.slicerUserSettingsFilePath)."""
    return Path(settingsFilePath).parent / "MVCTEnhance" / "models"
