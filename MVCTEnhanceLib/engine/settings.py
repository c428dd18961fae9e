"""The settings of the enhance job, every default written once.

Pure Python (no numpy, no torch): the Slicer module builds its parameter node from these defaults at
start-up, before its dependencies may be installed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .errors import InputError

#: Progress of one step of work: (done, total).
StepProgress = Callable[[int, int], None]
#: Progress of the enhance job across its stages: (stage, done, total).
JobProgress = Callable[[str, int, int], None]
#: Polled between chunks of work: True once the user asked to stop.
ShouldCancel = Callable[[], bool]

#: NSelfSSIM defaults: a soft-tissue window with ~20 HU of added noise reproduces the paper's pattern
#: (MVCT ~0.9 against planning kV CT ~0.73) on realistic simulated pairs; wider windows saturate.
NSELFSSIM_NOISE_SD = 20.0
NSELFSSIM_WINDOW = (-160.0, 240.0)
#: Body threshold: far above air (-1000) even with MVCT's tens-of-HU noise, below fat (about -100).
BODY_THRESHOLD_HU = -400.0
#: Devices the user may ask for; "auto" takes CUDA, then MPS, then the CPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: gzip of the job's output volumes: 4.4 s for a 512 x 512 x 100 float32 NRRD to save 16 % of its
#: 105 MB (noisy HU), against 0.05 s raw (measured on this project's 2-core machine): off.
COMPRESS_OUTPUTS = False


@dataclasses.dataclass(frozen=True)
class MetricSettings:
    """NSelfSSIM and DIG settings (see :mod:`.metrics`); one seed makes the maps reproducible."""

    noise_sd: float = NSELFSSIM_NOISE_SD
    window: tuple[float, float] = NSELFSSIM_WINDOW
    seed: int = 0

    def __post_init__(self) -> None:
        window = tuple(float(v) for v in self.window)
        if len(window) != 2 or not window[0] < window[1]:
            raise InputError(f"NSelfSSIM window must be (low, high) HU with low < high, got {self.window!r}")
        if not float(self.noise_sd) > 0:
            raise InputError(f"NSelfSSIM noise SD must be > 0 HU, got {self.noise_sd!r}")
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "noise_sd", float(self.noise_sd))
        object.__setattr__(self, "seed", int(self.seed))

    def to_dict(self) -> dict[str, Any]:
        return {"noise_sd": self.noise_sd, "window": list(self.window), "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class EnhanceSettings:
    """How to run the network and whether to assess the result."""

    device: str = "auto"
    batch_size: int | None = None          # None: the device's default (inference.DEFAULT_BATCH)
    precision: str = "auto"
    resample: bool = True                  # to the card's pixel spacing, and back
    assess: bool = True                    # DIG / NSelfSSIM maps and summaries
    metrics: MetricSettings = MetricSettings()
    #: A clinic's MV -> kV calibration (engine.calibration.Calibration.to_dict()) replacing the card's
    #: anchor of a bounded model (e.g. composed from its MVCT and planning-CT IVDTs); None: the card's.
    calibration: dict[str, Any] | None = None
    #: The network on each slice's body only (far air made canonical; inference's body-crop section);
    #: False: on the whole field as given (the engine before the crop, bit for bit).
    body_crop: bool = True
    #: CPU intra-op threads; None: the physical cores this process may use, less the busy ones
    #: (inference.automatic_threads).
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError(f"threads must be a positive integer (or None: automatic), got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "batch_size": self.batch_size, "precision": self.precision,
                "resample": self.resample, "assess": self.assess, "metrics": self.metrics.to_dict(),
                "calibration": self.calibration, "body_crop": self.body_crop, "threads": self.threads}
