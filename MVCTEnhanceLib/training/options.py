"""Training presets and schedule names, without torch: the CLI builds its parser from them, and
importing the trainer (torch) for that would slow every command, ``info`` and error paths included."""

from __future__ import annotations

LOSS_NAMES = ("adversarial", "cycle", "identity", "perceptual", "autoencoder", "air")
PRESETS: dict[str, dict[str, float]] = {
    "proposed": {"adversarial": 1.0, "cycle": 10.0, "identity": 0.1, "perceptual": 10.0,
                 "autoencoder": 1.0, "air": 1.0},
    "cyclegan": {"adversarial": 1.0, "cycle": 10.0, "identity": 0.1, "perceptual": 0.0,
                 "autoencoder": 0.0, "air": 0.0},
}
LR_SCHEDULES = ("linear", "cosine", "constant")
