"""The model card carried inside every model file: what the model is, how HU map to its range,
what it was trained on and with, and what it must not be used for.

The card is JSON; :func:`validate_card` names every problem it finds so a bad file is rejected with
a message a user can act on.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .calibration import Calibration
from .errors import InputError, ModelError

CARD_SCHEMA = "mvctenhance-model-card"
#: 2: optional physics anchor (``calibration``) and bounded change (``max_change_hu``). Version-1 cards
#: load and run as before; engines that read only version 1 refuse version-2 cards instead of
#: misreading a bounded model's output as an image.
CARD_SCHEMA_VERSION = 2
CARD_FILENAME = "model_card.json"  # name of the extra file inside the TorchScript archive
#: Total downsampling of the generators' encoders; the engine pads every input to a multiple of it.
STRIDE = 4

NOT_FOR_DIAGNOSIS = ("Research and positioning-support tool. The converted image is a synthetic, "
                     "kV-CT-like rendering of the MVCT: it is not a kV CT, it is not for diagnosis, "
                     "and it must not be used for dose calculation without a commissioning study.")

INTENSITY_MAPPING = ("linear: HU clipped to hu_window maps to [-1, 1] (lo -> -1, hi -> +1); the "
                     "output maps back the same way; voxels outside the window keep their excess "
                     "beyond the window edge times outside_window gain (residual carry-over)")


@dataclasses.dataclass
class ModelCard:
    name: str
    version: str
    hu_window: tuple[float, float]
    pixel_spacing_mm: tuple[float, float]
    training_data: dict[str, Any]
    losses: dict[str, float]
    intended_use: str
    license: str
    direction: str = "MV->kV"
    intensity_mapping: str = INTENSITY_MAPPING
    outside_window: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"below_gain": 1.0, "above_gain": 1.0})
    not_for_diagnosis: str = NOT_FOR_DIAGNOSIS
    perceptual_phi: str = "none"
    architecture: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: MV -> kV anchor (:class:`.calibration.Calibration` as a dict); None: the MVCT as it is.
    calibration: dict[str, Any] | None = None
    #: The network's output t in [-1, 1] is a change of at most this many HU added to the anchor
    #: (the engine clamps t, so no weights can move a voxel further). None: the network's output is
    #: the image itself (the paper's unbounded generator).
    max_change_hu: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        d["hu_window"] = list(self.hu_window)
        d["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        version = CARD_SCHEMA_VERSION if (self.calibration or self.max_change_hu) else 1
        out = {"schema": CARD_SCHEMA, "schema_version": version}
        if self.calibration is None and self.max_change_hu is None:  # a version-1 card, as older engines wrote it
            d.pop("calibration")
            d.pop("max_change_hu")
        out.update(d)
        out.update(extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        validate_card(d)
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in fields}
        extra = {k: v for k, v in d.items() if k not in fields and k not in ("schema", "schema_version")}
        known["hu_window"] = (float(d["hu_window"][0]), float(d["hu_window"][1]))
        known["pixel_spacing_mm"] = (float(d["pixel_spacing_mm"][0]), float(d["pixel_spacing_mm"][1]))
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelCard":
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelError(f"model card is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise ModelError("model card must be a JSON object")
        return cls.from_dict(d)

    def anchor(self) -> Calibration | None:
        """The card's :class:`.calibration.Calibration`, or None (the MVCT itself is the anchor)."""
        return Calibration.from_dict(self.calibration, "the model card's calibration") if self.calibration else None

    @property
    def bounded(self) -> bool:
        return self.max_change_hu is not None

    def is_test_model(self) -> bool:
        """True for the untrained test generators (their cards say so); their output is not kV-like."""
        return "untrained" in json.dumps(self.training_data).lower()

    # HU <-> network range, shared by inference and training so both use exactly one mapping.
    def hu_to_net_scale(self) -> tuple[float, float]:
        """(a, b) such that net = a * HU + b maps the window onto [-1, 1]."""
        return hu_to_net_scale(self.hu_window)


def hu_to_net_scale(hu_window: tuple[float, float]) -> tuple[float, float]:
    """(a, b) such that net = a * HU + b maps ``hu_window`` onto [-1, 1]: the one HU <-> network
    mapping, shared by inference, the training data and the trainer's networks."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    a = 2.0 / (hi - lo)
    return a, -1.0 - a * lo


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def validate_card(d: dict[str, Any]) -> None:
    """Raise :class:`ModelError` listing every problem of a card dictionary."""
    problems: list[str] = []
    if d.get("schema") not in (None, CARD_SCHEMA):
        problems.append(f"schema is '{d.get('schema')}', expected '{CARD_SCHEMA}'")
    if d.get("schema_version", CARD_SCHEMA_VERSION) > CARD_SCHEMA_VERSION:
        problems.append(f"schema_version {d.get('schema_version')} is newer than this engine reads "
                        f"({CARD_SCHEMA_VERSION}); update MVCTEnhance")
    for key in ("name", "version", "intended_use", "license", "not_for_diagnosis"):
        if not isinstance(d.get(key), str) or not d.get(key, "").strip():
            problems.append(f"'{key}' must be a non-empty string")
    if d.get("direction") != "MV->kV":
        problems.append(f"'direction' is {d.get('direction')!r}; this engine converts 'MV->kV'")
    w = d.get("hu_window")
    if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(_is_number(v) for v in w) and w[0] < w[1]):
        problems.append(f"'hu_window' must be [low, high] HU with low < high, got {w!r}")
    s = d.get("pixel_spacing_mm")
    if not (isinstance(s, (list, tuple)) and len(s) == 2 and all(_is_number(v) and v > 0 for v in s)):
        problems.append(f"'pixel_spacing_mm' must be two positive numbers (row, column), got {s!r}")
    if not isinstance(d.get("training_data"), dict):
        problems.append("'training_data' must be an object summarising the training data")
    losses = d.get("losses")
    if not (isinstance(losses, dict) and all(_is_number(v) for v in losses.values())):
        problems.append("'losses' must map each loss name to its weight")
    ow = d.get("outside_window", {"below_gain": 1.0, "above_gain": 1.0})
    if not (isinstance(ow, dict) and all(_is_number(ow.get(k)) for k in ("below_gain", "above_gain"))):
        problems.append("'outside_window' must give numeric 'below_gain' and 'above_gain'")
    bound = d.get("max_change_hu")
    if bound is not None and not (_is_number(bound) and bound > 0):
        problems.append(f"'max_change_hu' must be a positive number of HU or null, got {bound!r}")
    if d.get("calibration") is not None:
        try:
            Calibration.from_dict(d["calibration"])
        except InputError as exc:
            problems.append(f"'calibration': {exc}")
    if problems:
        raise ModelError("invalid model card: " + "; ".join(problems))


def iterations_text(training: dict[str, Any]) -> str:
    """"1000 iterations (2782 in all, with the runs it was initialised from)" from a card's training
    record (or the evaluation's summary of it); the total only where it adds something."""
    done, total = training.get("iterations"), training.get("iterations_total")
    text = f"{done or '?'} iterations"
    if total not in (None, done):
        text += f" ({total} in all, with the runs it was initialised from)"
    return text
