"""Every option of a training run, written once: name, type and default (a :class:`TrainConfig`
field), help, valid range and whether it may change on resume (its :class:`Spec`).

Built from these fields: :class:`TrainConfig`'s checks and its ``config.json`` form, the argparse
options of ``mvct-enhance train`` (:func:`add_train_arguments`) and the set of options a resumed run
may change (:data:`RESUMABLE_CHANGES`). Torch-free: the CLI builds its parser from this module, and
importing torch for that would slow every command, ``info`` and error paths included.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

from ..engine.errors import InputError
from ..engine.modelcard import STRIDE

LOSS_NAMES = ("adversarial", "cycle", "identity", "perceptual", "autoencoder", "air", "denoise")
#: The paper's losses; "denoise" (this project's, off in both: L1 between G(x) and the calibrated clean
#: twin of a simulated MV slice) needs --mv-clean.
PRESETS: dict[str, dict[str, float]] = {
    "proposed": {"adversarial": 1.0, "cycle": 10.0, "identity": 0.1, "perceptual": 10.0,
                 "autoencoder": 1.0, "air": 1.0, "denoise": 0.0},
    "cyclegan": {"adversarial": 1.0, "cycle": 10.0, "identity": 0.1, "perceptual": 0.0,
                 "autoencoder": 0.0, "air": 0.0, "denoise": 0.0},
}
LR_SCHEDULES = ("linear", "cosine", "constant")
#: "paper": the generator's output is the image (the paper's unbounded translators); "bounded": the
#: calibrated input plus a change of at most max_change_hu (training.bounded).
GENERATORS = ("paper", "bounded")
#: The translators' halves: the paper's encoder/decoder (4x downsampling, shared latent at 1/4
#: resolution) or full-resolution convolution stacks (networks.FullResEncoder).
ARCHITECTURES = ("encdec", "fullres")
#: Air threshold C of the air-region loss (talk): voxels below it are air.
AIR_THRESHOLD_HU = -600.0

# Argument groups of `mvct-enhance train`, in the order --help lists them.
DATA, LOSSES, NETWORKS, RUN = "data", "losses", "networks and optimisation", "run"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a :class:`TrainConfig` field needs beyond its name, type and default."""

    help: str
    group: str
    flags: tuple[str, ...] = ()  # () -> --name-with-dashes (--no-name for a switch that is on by default)
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False  # on the command line (a field without default may come from --data or --resume)
    low: float | None = None  # valid range: low <= value <= high, either end may be open or absent
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    meaning: str | None = None  # what the range is, for the message ("a probability")
    resumable: bool = False  # may change when a run is resumed (it does not change what is learned)

    def problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not valid for this option, or None."""
        if value is None:
            return None
        if self.choices is not None:
            return None if value in self.choices else \
                f"unknown {name} '{value}'; use one of {', '.join(self.choices)}"
        if self.low is None and self.high is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        # written as "not inside" so that NaN is outside every range
        too_low = self.low is not None and not (value > self.low if self.low_open else value >= self.low)
        too_high = self.high is not None and not (value < self.high if self.high_open else value <= self.high)
        if not (too_low or too_high):
            return None
        if self.high is None:
            return f"{name} must be {'>' if self.low_open else '>='} {self.low:g}, got {value}"
        interval = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.meaning:
            return f"{name} is {self.meaning} in {interval}, got {value}"
        return f"{name} must be in {interval}, got {value}"


def _option(default: Any = dataclasses.MISSING, *, help: str, group: str, **spec: Any) -> Any:
    return dataclasses.field(default=default, metadata={"spec": Spec(help, group, **spec)})


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; saved as ``config.json`` in the run folder."""

    mv: list[str] = _option(help="MVCT volumes: files, folders, DICOM series folders", group=DATA, metavar="PATH")
    kv: list[str] = _option(help="kV-CT volumes (other patients are fine: unpaired)", group=DATA, metavar="PATH")
    out_dir: str = _option(help="run folder (new, or the run to resume)", group=RUN, flags=("-o", "--output"),
                           metavar="RUN_DIR", required=True)
    mv_clean: list[str] | None = _option(None, help="the clean twins of the MVCT volumes, file for file (simulated "
                                         "without noise and artefacts: make-dataset --randomise's train_mv_clean); "
                                         "needed by the denoise loss", group=DATA, metavar="PATH")
    preset: str = _option("proposed", help="loss weights: proposed = the paper's; cyclegan = a plain CycleGAN, "
                          "perceptual, autoencoder and air off", group=LOSSES, choices=tuple(PRESETS))
    # Loss weights: None takes the preset's value; 0 switches the loss off.
    w_adversarial: float | None = _option(None, help="weight of the adversarial loss (0: off; default: the "
                                          "preset's)", group=LOSSES, metavar="W")
    w_cycle: float | None = _option(None, help="weight of the cycle loss (0: off; default: the preset's)",
                                    group=LOSSES, metavar="W")
    w_identity: float | None = _option(None, help="weight of the identity loss (0: off; default: the preset's)",
                                       group=LOSSES, metavar="W")
    w_perceptual: float | None = _option(None, help="weight of the perceptual loss (0: off; default: the "
                                         "preset's)", group=LOSSES, metavar="W")
    w_autoencoder: float | None = _option(None, help="weight of the autoencoder loss (0: off; default: the "
                                          "preset's)", group=LOSSES, metavar="W")
    w_air: float | None = _option(None, help="weight of the air loss (0: off; default: the preset's)",
                                  group=LOSSES, metavar="W")
    w_denoise: float | None = _option(None, help="weight of the denoise loss, |G(x) - C(clean twin of x)| (0: off; "
                                      "default: the preset's)", group=LOSSES, metavar="W")
    air_threshold_hu: float = _option(AIR_THRESHOLD_HU, help="air threshold C of the air loss in HU", group=LOSSES)
    vgg_weights: str | None = _option(None, help="torchvision VGG16 state dict for the perceptual phi (default: "
                                      "the built-in fixed filter bank)", group=LOSSES, metavar="FILE")
    # Data; the window covers kV cortical bone (~1560 HU).
    hu_window: tuple[float, float] = _option((-1000.0, 2000.0), help="HU mapped to [-1, 1]", group=DATA,
                                             metavar="LOW,HIGH")
    pixel_spacing_mm: tuple[float, float] = _option((1.0, 1.0), help="in-plane spacing (mm) slices are "
                                                    "resampled to", group=DATA, flags=("--pixel-spacing",),
                                                    metavar="ROW,COL")
    crop_size: int = _option(256, help=f"training crop side in pixels, a multiple of {STRIDE}", group=DATA)
    augment: bool = _option(True, help="random crops/shifts", group=DATA)
    max_shift_px: int = _option(4, help="random shift in pixels", group=DATA, low=0)
    max_rotation_deg: float = _option(0.0, help="random rotation in degrees", group=DATA)
    field_truncation: float = _option(0.0, help="probability of cutting a training crop to a random smaller "
                                      "field, so the model also learns small or truncated fields of view",
                                      group=DATA, metavar="P", low=0, high=1, meaning="a probability")
    min_body_fraction: float = _option(0.05, help="skip slices with less body", group=DATA)
    max_slices: int | None = _option(None, help="use at most N slices per domain", group=DATA, metavar="N", low=1)
    # Networks
    generator: str = _option("paper", help="paper: the output is the image (unbounded); bounded: the calibrated "
                             "MVCT plus a change of at most --max-change-hu, whatever the weights", group=NETWORKS,
                             choices=GENERATORS)
    architecture: str = _option("encdec", help="the translators' halves: encdec (the paper's encoder and decoder) "
                                "or fullres (full-resolution 3x3 convolution stacks, --ngf wide)",
                                group=NETWORKS, choices=ARCHITECTURES)
    fullres_layers: int = _option(3, help="fullres: 3x3 convolutions per half after the first (receptive field "
                                  "4 N + 5 px)", group=NETWORKS, low=1)
    calibration: str | None = _option(None, help="MV->kV calibration JSON of a bounded generator (mvct-enhance "
                                      "calibrate; default: the ICRU tissue points)", group=NETWORKS, metavar="FILE")
    max_change_hu: float = _option(150.0, help="bounded: the most a voxel may move from its calibrated value (HU; "
                                   "the engine enforces it)", group=NETWORKS, low=0, low_open=True)
    learned_change_hu: float = _option(50.0, help="bounded: the bound of the learned part of the change (HU)",
                                       group=NETWORKS, low=0)
    anchor_tv_weight: float = _option(15.0, help="bounded: weight (HU) of the fixed TV denoising inside the "
                                      "generator, 0: none", group=NETWORKS, low=0)
    anchor_tv_iterations: int = _option(30, help="bounded: iterations of that TV denoising", group=NETWORKS, low=0)
    change_highpass_px: float = _option(3.0, help="bounded: keep only the learned change minus its Gaussian blur "
                                        "of this sigma (px), 0: keep all of it", group=NETWORKS, low=0)
    noise_channel: bool = _option(True, help="bounded: a white-noise input of the kV->MV translator",
                                  group=NETWORKS)
    mv_cycle_smooth_px: float = _option(0.0, help="Gaussian sigma (px) applied to both sides of the MV cycle "
                                        "loss (a denoising G cannot give the noise back), 0: plain",
                                        group=LOSSES, low=0)
    ngf: int = _option(32, help="generator base channels", group=NETWORKS, low=1)
    n_enc_res: int = _option(5, help="encoder residual blocks", group=NETWORKS, low=0)
    n_dec_res: int = _option(4, help="decoder residual blocks", group=NETWORKS, low=0)
    ndf: int = _option(64, help="discriminator base channels", group=NETWORKS, low=1)
    n_d_down: int = _option(3, help="discriminator downsamplings", group=NETWORKS, low=1)
    # Optimisation
    iterations: int = _option(10000, help="total iterations", group=NETWORKS, low=1, resumable=True)
    batch_size: int = _option(1, help="slices per domain per iteration and process", group=NETWORKS, low=1)
    lr_g: float = _option(2e-4, help="generator learning rate", group=NETWORKS, low=0, low_open=True)
    lr_d: float = _option(1e-4, help="discriminator learning rate", group=NETWORKS, low=0, low_open=True)
    beta1: float = _option(0.5, help="Adam beta1; the authors' code uses 0.1", group=NETWORKS, low=0, high=1,
                           high_open=True)
    beta2: float = _option(0.999, help="Adam beta2", group=NETWORKS, low=0, high=1, high_open=True)
    weight_decay: float = _option(1e-7, help="Adam weight decay", group=NETWORKS)
    lr_schedule: str = _option("linear", help="learning rate: constant then linear decay to 0, cosine decay over "
                               "the whole run, or constant", group=NETWORKS, choices=LR_SCHEDULES)
    decay_start: float = _option(0.5, help="fraction of the run after which linear decay starts", group=NETWORKS,
                                 low=0, high=1, meaning="a fraction of the run")
    label_jitter_sd: float = _option(0.0, help="SD of LSGAN label jitter", group=NETWORKS, low=0)
    pool_size: int = _option(50, help="image pool size", group=NETWORKS, low=0)
    seed: int = _option(0, help="seed of weights, data order and augmentation", group=NETWORKS)
    init_from: str | None = _option(None, help="start from another run's network weights (fine-tuning; "
                                    "optimisers and pools start fresh)", group=NETWORKS, metavar="RUN_DIR")
    # Execution
    device: str = _option("auto", help="auto, cpu, cuda, cuda:N or mps", group=RUN, resumable=True)
    amp: bool = _option(True, help="mixed precision on CUDA", group=RUN, resumable=True)
    num_workers: int = _option(0, help="data loader workers", group=RUN, low=0, resumable=True)
    log_every: int = _option(10, help="iterations per losses.csv row", group=RUN, low=1, resumable=True)
    checkpoint_every: int = _option(500, help="iterations between checkpoints", group=RUN, low=1, resumable=True)
    keep_checkpoints: bool = _option(False, help="keep every checkpoint as checkpoints/iteration_N.pt (to pick "
                                     "one on validation data; export --checkpoint)", group=RUN, resumable=True)
    sample_every: int = _option(500, help="iterations between sample PNGs, 0: none", group=RUN, low=0,
                                resumable=True)
    progress: bool = _option(True, help="progress bar", group=RUN, resumable=True)
    resume: bool = _option(False, help="continue the run in RUN_DIR from its last checkpoint", group=RUN,
                           resumable=True)
    stop_after: int | None = _option(None, help="stop after iteration N of the planned iterations (checkpoint, "
                                     "status 'stopped'; resumable)", group=RUN, metavar="N", low=1, resumable=True)

    def weights(self) -> dict[str, float]:
        """Loss weights: the preset's, overridden by the ``w_*`` options that are set."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset '{self.preset}'; use one of {', '.join(PRESETS)}")
        out = dict(PRESETS[self.preset])
        for name in LOSS_NAMES:
            value = getattr(self, f"w_{name}")
            if value is not None:
                out[name] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for f in _fields():
            if _base_type(f) == "tuple[float, float]":
                d[f.name] = list(d[f.name])  # JSON has no tuples; from_dict turns them back
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        fields = {f.name: f for f in _fields()}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise InputError(f"unknown training options: {', '.join(unknown)}")
        d = dict(d)
        for key, value in d.items():
            if _base_type(fields[key]) == "tuple[float, float]" and value is not None:
                d[key] = tuple(float(v) for v in value)
        return cls(**d)

    def validate(self, need_sources: bool = True) -> None:
        """Raise :class:`InputError` naming every bad option."""
        problems = [p for f in _fields() if (p := _spec(f).problem(f.name, getattr(self, f.name)))]
        w = self.weights() if self.preset in PRESETS else {}
        for name, value in w.items():
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"weight of the {name} loss must be >= 0, got {value}")
        if need_sources and not self.mv:
            problems.append("no MVCT training data given (--mv)")
        if need_sources and not self.kv:
            problems.append("no kV-CT training data given (--kv)")
        if need_sources and w.get("denoise", 0) > 0 and not self.mv_clean:
            problems.append("the denoise loss needs the MV slices' clean twins (--mv-clean, or --data with a "
                            "make-dataset --randomise folder)")
        lo, hi = self.hu_window
        if not lo < hi:
            problems.append(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        elif w.get("air", 0) > 0 and self.air_threshold_hu <= lo:  # C maps to <= -1: no pixel is air
            problems.append(f"the air loss needs the HU window to start below {self.air_threshold_hu:g} HU "
                            f"(window {lo:g}..{hi:g}); lower the window or set the air weight to 0")
        if min(self.pixel_spacing_mm) <= 0:
            problems.append(f"pixel_spacing_mm must be positive, got {self.pixel_spacing_mm}")
        if self.crop_size < 8 * STRIDE or self.crop_size % STRIDE:
            problems.append(f"crop_size must be a multiple of {STRIDE} and at least {8 * STRIDE}, got {self.crop_size}")
        if self.generator == "bounded" and self.learned_change_hu > self.max_change_hu:
            problems.append(f"learned_change_hu ({self.learned_change_hu:g}) must not exceed max_change_hu "
                            f"({self.max_change_hu:g})")
        if self.calibration and not Path(self.calibration).is_file():
            problems.append(f"calibration '{self.calibration}' does not exist")
        if self.init_from and not Path(self.init_from).exists():
            problems.append(f"init_from '{self.init_from}' does not exist (give a run folder or its checkpoint.pt)")
        if problems:
            raise InputError("bad training options: " + "; ".join(problems))


def _fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainConfig)


def _spec(f: dataclasses.Field) -> Spec:
    return f.metadata["spec"]


def _base_type(f: dataclasses.Field) -> str:
    """The field's annotation without ``| None`` (a string: this module postpones annotations)."""
    return str(f.type).replace(" | None", "")


RESUMABLE_CHANGES = frozenset(f.name for f in _fields() if _spec(f).resumable)
#: Each option's default, for the functions that take the same settings one by one (the loader, the networks).
DEFAULTS: dict[str, Any] = {f.name: f.default for f in _fields() if f.default is not dataclasses.MISSING}


# --------------------------------------------------------------------------------------------
# The `mvct-enhance train` options

def _pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got '{text}'") from None
    return a, b


_ARG_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str, "list[str]": str,
                                               "tuple[float, float]": _pair}


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per :class:`TrainConfig` field, plus ``--data``. Every default is None (not given),
    so that a resumed run keeps its own values; the help shows the field's default."""
    groups = {name: parser.add_argument_group(name) for name in (DATA, LOSSES, NETWORKS, RUN)}
    groups[DATA].add_argument("--data", metavar="DATASET",
                              help="a make-dataset folder (uses its train_mv/ and train_kv/)")
    for f in _fields():
        spec, kind = _spec(f), _base_type(f)
        dashed = f.name.replace("_", "-")
        if kind == "bool":  # a switch that flips the default
            flags = spec.flags or (f"--no-{dashed}" if f.default else f"--{dashed}",)
            groups[spec.group].add_argument(*flags, dest=f.name, action="store_const", const=not f.default,
                                            help=f"no {spec.help}" if f.default else spec.help)
            continue
        shown = f.default not in (None, dataclasses.MISSING)
        groups[spec.group].add_argument(
            *(spec.flags or (f"--{dashed}",)), dest=f.name, type=_ARG_TYPES[kind], metavar=spec.metavar,
            choices=spec.choices, required=spec.required, nargs="+" if kind == "list[str]" else None,
            help=spec.help + (f" (default {_default_text(f.default)})" if shown else ""))


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} of every :class:`TrainConfig` field from parsed ``train`` arguments (None: not given)."""
    return {f.name: getattr(args, f.name) for f in _fields()}
