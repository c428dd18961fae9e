"""``mvct-enhance``: the command line. Argument parsing only; each command calls the library.

This interface is public (scripts and Slicer batch runs call it). Every user error is one line on
stderr and exit code 2; ``--debug`` shows the traceback. Exit codes: 0 ok, 1 internal error,
2 user error, 130 interrupted (SIGINT), 143 terminated (SIGTERM); an interrupted enhance, metrics or
simulate leaves no output and no temporary file (their outputs are one engine.files.OutputSet).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from .engine.errors import MVCTEnhanceError
from .engine.files import Terminated, committed_sets, interrupts_as_exceptions
from .engine.version import __version__

PROG = "mvct-enhance"
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
#: Commands whose outputs form one all-or-nothing output set: interrupted, they have written nothing.
_OUTPUT_SET_COMMANDS = ("enhance", "metrics", "simulate")


class _StageBars:
    """One tqdm bar per stage ('enhance', 'metrics', ...) on stderr."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>8}", unit="slice", file=sys.stderr,
                                          leave=True, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            self.bars.pop(stage).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _JsonProgress:
    """Machine-readable progress: one JSON object per line on stderr (flushed at once)."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        import json

        print(json.dumps({"event": "progress", "stage": stage, "done": int(done), "total": int(total)}),
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _NoProgress(_JsonProgress):
    def __call__(self, stage: str, done: int, total: int) -> None:
        pass


def _window(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window must be LOW,HIGH in HU (e.g. -160,240), got '{text}'") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"window LOW must be below HIGH, got '{text}'")
    return lo, hi


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return v


def _add_metric_options(p: argparse.ArgumentParser) -> None:
    from .engine.settings import NSELFSSIM_NOISE_SD, NSELFSSIM_WINDOW

    lo, hi = NSELFSSIM_WINDOW
    g = p.add_argument_group("quality metrics")
    g.add_argument("--noise-sd", type=_positive_float, default=NSELFSSIM_NOISE_SD, metavar="HU",
                   help=f"NSelfSSIM: SD of the added Gaussian noise in HU (default {NSELFSSIM_NOISE_SD:g})")
    g.add_argument("--window", type=_window, default=NSELFSSIM_WINDOW, metavar="LOW,HIGH",
                   help=f"NSelfSSIM: HU window clipped to before SSIM; its width is the data range (default {lo:g},{hi:g})")
    g.add_argument("--seed", type=int, default=0, help="NSelfSSIM noise seed (default 0)")


def _settings(args: argparse.Namespace) -> Any:
    """The job's settings from the parsed options (commands without an option keep its default)."""
    from .engine.job import EnhanceSettings, MetricSettings

    metrics = MetricSettings(noise_sd=args.noise_sd, window=args.window, seed=args.seed)
    extra = {}
    if hasattr(args, "batch_size"):
        extra = dict(batch_size=args.batch_size, precision=args.precision, resample=not args.no_resample,
                     body_crop=not args.no_body_crop, threads=args.threads)
    if getattr(args, "no_metrics", False):
        extra["assess"] = False
    if getattr(args, "calibration", None):
        from .engine.calibration import Calibration
        from .engine.files import read_json_object

        extra["calibration"] = Calibration.from_dict(read_json_object(args.calibration, "calibration file"),
                                                     f"calibration file '{args.calibration}'").to_dict()
    return EnhanceSettings(device=args.device, metrics=metrics, **extra)


# -- enhance ---------------------------------------------------------------------------------------

def _add_enhance(sub: Any) -> None:
    p = sub.add_parser("enhance", help="convert an MVCT volume to a kV-like CT (HU)",
                       description="Convert an MVCT (NRRD, NIfTI, MetaImage, DICOM file or series folder) "
                                   "slice by slice to a kV-like CT in HU with the same geometry.")
    p.add_argument("input", nargs="?", help="MVCT file or DICOM series folder")
    # --input is the same argument as an option: Slicer's --python-script runs take options only.
    p.add_argument("--input", dest="input_option", metavar="INPUT", help="the same as the positional INPUT")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", help="enhanced volume (.nrrd, .nii, .nii.gz, .mha, .mhd)")
    out.add_argument("--output-dir", help="write <name>_enhanced.nrrd, _dig.nrrd, _nselfssim.nrrd, "
                                          "_report.json and _montage.png into this existing folder")
    p.add_argument("--model", help="model file (default: the shipped default model)")
    p.add_argument("--dig", help="write the DIG map (HU^2/mm^2) here")
    p.add_argument("--nselfssim", help="write the NSelfSSIM map of the enhanced volume here")
    p.add_argument("--tissue-change", help="write the tissue-change map (1 where the conversion changed the tissue "
                                           "class) here")
    p.add_argument("--report", help="write a JSON report (model card, sha256, timings, metric summaries) here")
    p.add_argument("--montage", help="write a PNG montage (MVCT | enhanced | planning CT | DIG | NSelfSSIM) here")
    p.add_argument("--planning-ct", help="planning CT of the same patient: its NSelfSSIM is reported as the "
                                         "reference and its nearest slice is shown in the montage")
    p.add_argument("--dicom-dir", help="also write the enhanced volume as a DICOM CT series (derived, new UIDs, "
                                       "referencing a DICOM input, 'not for diagnosis') into this new or empty folder")
    p.add_argument("--register", action="store_true",
                   help="register the MVCT rigidly to --planning-ct first (mutual information); the transform "
                        "(LPS, MVCT -> planning CT) goes into the report")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="slices per batch (default: 8 on CUDA, 4 on MPS, 2 on CPU where larger batches only cost memory)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="GPU autocast precision (default auto: fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--no-resample", action="store_true",
                   help="do not resample slices to the model's pixel spacing")
    p.add_argument("--no-body-crop", action="store_true",
                   help="run the network on every slice's whole field as given, not on the body only (with the "
                        "air farther than 8 mm from the body's box made canonical); slower, the engine's old path")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads of the network and the maps (default: the physical cores this process may use, less "
                        "those other processes keep busy now)")
    p.add_argument("--output-type", choices=("float32", "int16"), default="float32",
                   help="voxel type of the enhanced volume (int16: rounded, clipped)")
    p.add_argument("--series-uid", help="DICOM series to read when the input folder holds several")
    p.add_argument("--calibration", metavar="FILE", help="MV->kV calibration JSON (mvct-enhance calibrate) replacing "
                                                         "the model card's physics anchor (bounded models only)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-metrics", action="store_true",
                   help="convert only: no quality maps and no metric summaries in the report")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="progress on stderr: bars (default), json (one JSON object per line, for programs such "
                        "as the Slicer module: {\"event\": \"progress\", \"stage\", \"done\", \"total\"}), or none")
    _add_metric_options(p)
    p.set_defaults(func=_cmd_enhance)


def _cmd_enhance(args: argparse.Namespace) -> int:
    from .filejobs import enhance_file, output_paths_for_dir

    if (args.input is None) == (args.input_option is None):
        raise MVCTEnhanceError("give the input once: as INPUT or as --input INPUT")
    args.input = args.input or args.input_option
    outputs = {"output": args.output, "dig": args.dig, "nselfssim": args.nselfssim,
               "tissue_change": args.tissue_change, "report": args.report, "montage": args.montage}
    maps = ("dig", "nselfssim", "tissue_change", "montage")
    if args.no_metrics and any(outputs[k] for k in maps):
        raise MVCTEnhanceError("--no-metrics computes no map: leave out --dig, --nselfssim, --tissue-change and "
                               "--montage")
    if args.output_dir:
        from pathlib import Path

        if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
            raise MVCTEnhanceError(f"'{args.output_dir}' is a file, not a folder: --output-dir takes an existing "
                                   "folder (give the enhanced volume's file name with -o instead)")
        if not Path(args.output_dir).is_dir():
            raise MVCTEnhanceError(f"output folder '{args.output_dir}' does not exist")
        defaults = output_paths_for_dir(args.input, args.output_dir)
        outputs = {k: v or (None if args.no_metrics and k in maps else defaults.get(k)) for k, v in outputs.items()}
    bars = {"bar": _StageBars, "json": _JsonProgress, "none": _NoProgress}[args.progress]()
    try:
        report = enhance_file(args.input, outputs["output"], model=args.model, dig=outputs["dig"],
                              nselfssim=outputs["nselfssim"], report=outputs["report"], montage=outputs["montage"],
                              planning_ct=args.planning_ct, tissue_change=outputs["tissue_change"],
                              register=args.register, dicom_dir=args.dicom_dir,
                              settings=_settings(args), output_type=args.output_type,
                              overwrite=args.overwrite, series_uid=args.series_uid, progress=bars)
    finally:
        bars.close()
    _print_enhance_summary(report)
    return EXIT_OK


def _print_enhance_summary(report: dict[str, Any]) -> None:
    card = report["model"]["card"]
    t = report["timings_s"]
    print(f"model     {card['name']} {card['version']} (sha256 {report['model']['sha256'][:12]})")
    print(f"input     {report['input']['path']}  {'x'.join(map(str, report['input']['shape']))}")
    threads = (report.get("parameters") or {}).get("threads", {}).get("intra_op")
    on = f" ({threads} CPU threads)" if threads and str(report["device"]).startswith("cpu") else ""
    print(f"device    {report['device']}{on}  {t['enhance']:.2f} s ({t['slices_per_s']:.1f} slices/s), total {t['total']:.2f} s")
    for key, path in report["outputs"].items():
        print(f"{key:<9} {path}")
    m = report.get("metrics") or {}
    if m:
        nss = m.get("nselfssim", {})
        if "input" in nss and "output" in nss:
            ref = f" (planning CT {nss['planning_ct']['mean']:.4f})" if "planning_ct" in nss else ""
            print(f"NSelfSSIM mean in body: input {nss['input']['mean']:.4f} -> enhanced {nss['output']['mean']:.4f}{ref}")
        dig = m.get("dig", {}).get("output")
        if dig:
            print(f"DIG in body: mean {dig['mean']:.4g}, median {dig['median']:.4g}, p95 {dig['p95']:.4g} HU^2/mm^2")
    if report.get("dicom"):
        print(f"DICOM     {report['dicom']['files']} files, series {report['dicom']['series_instance_uid']}")
    reg = report.get("registration")
    if reg:
        shift = reg["translation_mm"]
        print(f"registered MVCT -> planning CT: rotation {reg['rotation_deg']:.2f} deg, translation "
              f"({shift[0]:.2f}, {shift[1]:.2f}, {shift[2]:.2f}) mm (LPS)")
    for w in report.get("warnings", []):
        print(f"warning   {w}")


# -- metrics ---------------------------------------------------------------------------------------

def _add_metrics(sub: Any) -> None:
    p = sub.add_parser("metrics", help="DIG and NSelfSSIM maps and summaries for any CT",
                       description="NSelfSSIM needs one image; DIG needs IMAGE and its conversion (--converted).")
    p.add_argument("image", help="a CT in HU (e.g. the MVCT)")
    p.add_argument("--converted", help="the conversion of IMAGE (same geometry) for DIG and its NSelfSSIM")
    p.add_argument("--dig", help="write the DIG map here (needs --converted)")
    p.add_argument("--nselfssim", help="write the NSelfSSIM map here (of --converted when given, else of IMAGE)")
    p.add_argument("--report", help="write the summaries as JSON here")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_metric_options(p)
    p.set_defaults(func=_cmd_metrics)


def _cmd_metrics(args: argparse.Namespace) -> int:
    from .filejobs import metrics_file

    bars = _StageBars()
    try:
        report = metrics_file(args.image, converted=args.converted, dig=args.dig, nselfssim=args.nselfssim,
                              report=args.report, settings=_settings(args), overwrite=args.overwrite, progress=bars)
    finally:
        bars.close()
    m = report["metrics"]
    for which, s in m.get("nselfssim", {}).items():
        print(f"NSelfSSIM {which:<7} mean {s['mean']:.4f}  median {s['median']:.4f}  p95 {s['p95']:.4f}")
    for which, s in m.get("dig", {}).items():
        print(f"DIG       {which:<7} mean {s['mean']:.4g}  median {s['median']:.4g}  p95 {s['p95']:.4g} HU^2/mm^2")
    for key, path in report["outputs"].items():
        print(f"{key:<9} {path}")
    return EXIT_OK


# -- info ------------------------------------------------------------------------------------------

def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="print a model file's card")
    p.add_argument("model", help="model file")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from .filejobs import model_info

    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"file      {info['path']}")
    print(f"sha256    {info['sha256']}")
    for key, value in info["card"].items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        print(f"{key:<18} {text}")
    return EXIT_OK


# -- train / export --------------------------------------------------------------------------------

def _add_train(sub: Any) -> None:
    from .training.options import add_train_arguments

    p = sub.add_parser("train", help="train the extended CycleGAN on unpaired MVCT and kV-CT volumes",
                       description="Train (or --resume) a run: Enc/Dec per domain with a shared latent, PatchGAN "
                                   "discriminators, the paper's losses. Multi-GPU/multi-node: launch with "
                                   "'torchrun --nproc_per_node N -m MVCTEnhanceLib.cli train ...'. Options left out "
                                   "take the preset's/the defaults (see docs/training.md).")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from .training.options import given_options
    from .training.trainer import TrainingInterrupted, make_config, train

    options = given_options(args)
    config = make_config(options.pop("out_dir"), resume=bool(options.pop("resume")), data=args.data, **options)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    try:
        run = train(config)
    except TrainingInterrupted as exc:
        if main_process:
            print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if main_process:
        print(f"run       {run} ({config.iterations} iterations)")
        print(f"export    {PROG} export {run} -o model.pt")
    return EXIT_OK


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="write a training run's MV->kV generator as a model file with its card")
    p.add_argument("run", metavar="RUN_DIR", help="training run folder")
    p.add_argument("-o", "--output", required=True, help="model file to write (.pt)")
    p.add_argument("--name", default="mvctenhance-custom", help="model name in the card")
    p.add_argument("--model-version", default="1.0.0", help="model version in the card (default 1.0.0)")
    p.add_argument("--card-extra", metavar="JSON_FILE", help="a JSON object whose fields are added to the card "
                                                              "(e.g. {\"evaluation\": {...}})")
    p.add_argument("--checkpoint", metavar="FILE", help="export this kept checkpoint (RUN_DIR/checkpoints/"
                                                        "iteration_N.pt) instead of the latest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .training.export import export_run, read_card_extra
    from .engine.modelcard import iterations_text

    extra = read_card_extra(args.card_extra) if args.card_extra else None
    exported = export_run(args.run, args.output, overwrite=args.overwrite, name=args.name,
                          version=args.model_version, extra=extra, checkpoint=args.checkpoint)
    training = exported.card.extra.get("training", {})
    print(f"model     {exported.path} (sha256 {exported.sha256[:12]})")
    print(f"card      {exported.card.name} {exported.card.version}, {iterations_text(training)}, "
          f"HU window {exported.card.hu_window[0]:g},{exported.card.hu_window[1]:g}")
    return EXIT_OK


# -- simulate / make-dataset (synthetic data) ------------------------------------------------------

def _add_simulate(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulate the MVCT a TomoTherapy-like machine would give of a kV CT",
                       description="Physics simulation, slice by slice: kV HU -> 1 MeV attenuation (ICRU anchors), "
                                   "projection, Poisson noise calibrated on a 200 mm water cylinder, detector blur, "
                                   "filtered back-projection. Same geometry as the input.")
    p.add_argument("input", metavar="KV_INPUT", help="kV CT in HU: file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, metavar="MV_OUTPUT", help="simulated MVCT (.nrrd, .nii.gz, .mha...)")
    p.add_argument("--noise-sd", type=float, default=30.0, metavar="HU",
                   help="noise SD at the centre of a 200 mm water cylinder (default 30; 0: noise-free)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--slice-thickness", type=_positive_float, metavar="MM",
                   help="blur along the axial axis to this slice thickness (FWHM, mm; default none)")
    p.add_argument("--output-type", choices=("float32", "int16"), default="float32",
                   help="voxel type of the output (int16: rounded, clipped)")
    p.add_argument("--series-uid", help="DICOM series to read when the input folder holds several")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .synth.simulate import simulate_file

    bars = _StageBars()
    try:
        info = simulate_file(args.input, args.output, noise_sd=args.noise_sd, seed=args.seed,
                             slice_thickness_mm=args.slice_thickness, output_type=args.output_type,
                             overwrite=args.overwrite, series_uid=args.series_uid,
                             progress=lambda done, total: bars("simulate", done, total))
    finally:
        bars.close()
    print(f"output    {info['output']}  {'x'.join(map(str, info['shape']))}")
    print(f"time      {info['seconds']:.2f} s ({info['seconds_per_slice']:.2f} s/slice), "
          f"noise SD {args.noise_sd:g} HU, seed {args.seed}")
    return EXIT_OK


def _add_make_dataset(sub: Any) -> None:
    p = sub.add_parser("make-dataset", help="write the synthetic unpaired training sets and paired test set",
                       description="Reproducibly write OUTDIR/train_kv, OUTDIR/train_mv (disjoint synthetic anatomy), "
                                   "OUTDIR/test (simulated MVCT + kV ground truth, incl. the real CT slices "
                                   "shipped with pydicom/pydicom-data) and OUTDIR/manifest.json. "
                                   "With --sample: write only the sample MVCT/planning-CT pair into OUTDIR.")
    p.add_argument("outdir", metavar="OUTDIR", help="new (or empty) folder; --sample: an existing folder")
    p.add_argument("--seed", type=int, default=None, help="dataset seed (default 0); --sample: patient seed (default 7)")
    p.add_argument("--n-train-kv", type=int, default=300, metavar="N", help="kV training slices (default 300)")
    p.add_argument("--n-train-mv", type=int, default=300, metavar="N", help="MV training slices (default 300)")
    p.add_argument("--n-test", type=int, default=24, metavar="N",
                   help="phantom test cases (default 24), plus the real-CT-derived ones")
    p.add_argument("--real-augmentations", type=int, default=3, metavar="N",
                   help="augmented variants per real CT slice in the test set (default 3; -1: no real slices)")
    p.add_argument("--size", type=_positive_int, default=256, help="slice size in pixels (default 256)")
    p.add_argument("--spacing", type=_positive_float, default=1.0, metavar="MM", help="pixel spacing (default 1.0)")
    p.add_argument("--noise-sd", type=float, default=30.0, metavar="HU", help="MVCT noise SD (default 30)")
    p.add_argument("--randomise", action="store_true",
                   help="MV training slices from randomised machines and body sizes, each with its clean twin")
    p.add_argument("--validation", type=int, default=0, metavar="N",
                   help="paired validation cases of their own anatomy (default 0)")
    p.add_argument("--shift-sets", action="store_true",
                   help="also the test anatomy under shifted simulator settings and a second simulator")
    p.add_argument("--real-kv-augmentations", type=int, default=0, metavar="N",
                   help="augmented variants of a real CT slice (never in the test set) in the kV pool (default 0)")
    p.add_argument("--sample", action="store_true",
                   help="write sample_planning_ct.nrrd and sample_mvct.nrrd (as shipped in Resources/sample)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset or sample")
    p.set_defaults(func=_cmd_make_dataset)


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from .synth.make_dataset import make_dataset, write_sample

    if args.sample:
        seed = 7 if args.seed is None else args.seed  # 7: the shipped sample's patient
        paths = write_sample(args.outdir, seed=seed, overwrite=args.overwrite, noise_sd=args.noise_sd)
        for key, path in paths.items():
            print(f"{key:<12} {path}")
        return EXIT_OK
    bars = _StageBars()
    try:
        manifest = make_dataset(args.outdir, seed=0 if args.seed is None else args.seed,
                                n_train_kv=args.n_train_kv, n_train_mv=args.n_train_mv, n_test=args.n_test,
                                size=args.size, spacing_mm=args.spacing, noise_sd=args.noise_sd,
                                real_augmentations=args.real_augmentations, overwrite=args.overwrite,
                                randomise=args.randomise, n_validation=args.validation, shift_sets=args.shift_sets,
                                real_kv_augmentations=args.real_kv_augmentations,
                                progress=lambda done, total: bars("dataset", done, total))
    finally:
        bars.close()
    c = manifest["counts"]
    shifts = [k for k in c if k.startswith("shift_")]
    print(f"dataset   {args.outdir}: {c['train_kv']} kV + {c['train_mv']} MV training slices, "
          f"{c['test']} paired test cases, {c.get('validation', 0)} validation cases"
          + (f", {len(shifts)} shift sets of {c[shifts[0]]} cases" if shifts else "") + f", {manifest['seconds']:.0f} s")
    print(f"manifest  {args.outdir}/manifest.json")
    return EXIT_OK


# -- evaluate / study-datasize ---------------------------------------------------------------------

def _command_line(args: argparse.Namespace, positional: Sequence[str] = (), skip: Sequence[str] = ()) -> str:
    """The command as a user would retype it (for the report), rebuilt from the parsed options."""
    import shlex

    words = [PROG, args.command, *(shlex.quote(str(getattr(args, p))) for p in positional)]
    for key, value in vars(args).items():
        if key in ("command", "func", "debug", *positional, *skip) or value is None or value is False or \
                (isinstance(value, (list, tuple)) and not value):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)) and key != "window":
            words += [flag, *(shlex.quote(str(v)) for v in value)] if key != "sizes" else \
                [flag, ",".join(str(v) for v in value)]
        elif key == "window":
            words.append(f"{flag}={value[0]:g},{value[1]:g}")
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def _pair(what: str, form: str, example: str) -> Callable[[str], tuple[str, str]]:
    """An argparse type for one NAME:NAME pair of methods."""
    def parse(text: str) -> tuple[str, str]:
        a, sep, b = text.partition(":")
        if not sep or not a or not b:
            raise argparse.ArgumentTypeError(f"{what} is {form} (e.g. {example}), got '{text}'")
        return a, b
    return parse


_dig_pair = _pair("a DIG pair", "COMPARATOR:METHOD", "cyclegan:proposed")
_ablation_pair = _pair("an ablation pair", "WITH:WITHOUT", "proposed:proposed-unbounded")


def _pairs_option(option: str, pairs: list[tuple[str, str]] | None) -> str:
    return f" {option} " + " ".join(f"{a}:{b}" for a, b in pairs) if pairs else ""


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="compare methods on a test set: CSV, Markdown report, figures",
                       description="Run every method on every case of a test set and write per_case.csv, "
                                   "summary.csv, report.md (NSelfSSIM/DIG tables, Friedman and Shirley-Williams "
                                   "tests, bootstrap CIs), box plots, a comparison montage and DIG/NSelfSSIM maps. "
                                   "Test set: a folder of <case>_mvct.nrrd (or <case>_mv.nrrd) files, each with an "
                                   "optional <case>_kv.nrrd (kV ground truth on the same grid, or a planning CT), "
                                   "or a make-dataset folder: then its test/ and every shift/<name>/ set are "
                                   "evaluated (--sets to choose), with a headline table over the sets, a verdict per "
                                   "claim of the talk and an ablation section.")
    p.add_argument("--test-set", required=True, metavar="DIR", help="test-set folder (or make-dataset OUTDIR)")
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                   help="in the protocol's order: mvct, nlm, tv, bm3d (optional package), calib, calib+tv, calib+nlm, "
                        "calib+bm3d (the MV->kV tissue calibration, alone or with a denoiser), NAME=MODEL_FILE ..., kv")
    sets = p.add_mutually_exclusive_group()
    sets.add_argument("--sets", metavar="SET[,SET...]",
                      help="sets of a make-dataset folder to evaluate: test, shift/NAME (or NAME), comma-separated "
                           "(default: test and every shift set)")
    sets.add_argument("--all-sets", action="store_true",
                      help="evaluate test/ and every shift/<name>/ of a make-dataset folder (the default)")
    p.add_argument("--ablation", nargs="+", type=_ablation_pair, metavar="WITH:WITHOUT",
                   help="method pairs that differ by one component, e.g. proposed:proposed-unbounded calib:mvct "
                        "(default by name: calib:mvct, calib+tv:tv, X:X-unbounded, proposed*:calib+tv)")
    p.add_argument("--datasize", metavar="STUDY_DIR",
                   help="a study-datasize folder: tests the talk's 'a few hundred slices suffice' (else: not tested)")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="report folder (created if missing)")
    p.add_argument("--validation", metavar="DIR",
                   help="folder (same convention) with the case the denoisers and calibrated baselines are "
                        "tuned on; default: the make-dataset folder's validation/, else a case simulated from an "
                        "unused phantom seed")
    p.add_argument("--dig-pairs", nargs="+", type=_dig_pair, metavar="COMPARATOR:METHOD",
                   help="DIG comparisons, e.g. cyclegan:proposed (default: each proposed* model against the "
                        "cyclegan* model of the same suffix, else the first two models)")
    p.add_argument("--figure-case", help="case shown in the montage and maps (default: the first)")
    p.add_argument("--figure-slice", type=int, help="slice shown (default: the one with the most body)")
    p.add_argument("--title", default="MVCTEnhance evaluation", help="report title")
    p.add_argument("--notes", action="append", default=[], metavar="FILE",
                   help="Markdown file appended to the report as its discussion (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace report files that exist")
    _add_metric_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .engine.errors import InputError
    from .study.evaluate import evaluate

    notes = []
    for f in args.notes:
        if not Path(f).is_file():
            raise InputError(f"notes file '{f}' does not exist")
        notes.append(Path(f).read_text(encoding="utf-8"))
    record = evaluate(args.test_set, args.methods, args.output, validation=args.validation, settings=_settings(args),
                      figure_case=args.figure_case, figure_slice=args.figure_slice, title=args.title, notes=notes,
                      command=_command_line(args, skip=('overwrite', 'dig_pairs', 'ablation')) +
                      _pairs_option("--dig-pairs", args.dig_pairs) + _pairs_option("--ablation", args.ablation),
                      overwrite=args.overwrite,
                      dig_pairs=args.dig_pairs,
                      sets=None if args.all_sets else args.sets, ablation_pairs=args.ablation, datasize=args.datasize,
                      progress=lambda msg: print(msg, file=sys.stderr))
    print(f"cases     {len(record['cases'])}, methods {', '.join(m['name'] for m in record['methods'])}")
    for st in record["sets"]:
        if len(record["sets"]) > 1:
            print(f"set       {st['name']}: {len(st['cases'])} cases")
        for s in st["summary"]:
            if s["metric"] in ("nselfssim", "dig", "mae"):
                print(f"{s['method']:<12} {s['metric']:<10} {s['mean']:.4g} +- {s['sd']:.3g}")
    for key, claim in record["claims"].items():
        print(f"claim     {key}: {claim['verdict']}")
    for key, path in record["files"].items():
        print(f"{key:<9} {path}")
    return EXIT_OK


def _sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got '{text}'")
    return values


def _add_study_datasize(sub: Any) -> None:
    p = sub.add_parser("study-datasize", help="train proposed and CycleGAN on 25..400 MV slices; DIG/MAE vs size",
                       description="Train the proposed model and a plain CycleGAN on nested subsets of the MV "
                                   "training slices (kV set fixed), identical reduced settings, evaluate DIG, MAE "
                                   "and NSelfSSIM on the test set and plot them against the training-set size. "
                                   "Re-running the same command resumes: finished runs are reused.")
    p.add_argument("data", metavar="DATA_DIR", help="make-dataset folder (train_mv/, train_kv/, test/)")
    p.add_argument("-o", "--output", required=True, metavar="STUDY_DIR", help="study folder (created if missing)")
    p.add_argument("--sizes", type=_sizes, default=[25, 50, 100, 200, 400],
                   help="MV slice counts (default 25,50,100,200,400)")
    p.add_argument("--presets", nargs="+", default=["proposed", "cyclegan"], help="training presets (default both)")
    p.add_argument("--iterations", type=_positive_int, default=400, help="iterations per run (default 400)")
    p.add_argument("--crop-size", type=_positive_int, default=64, help="training crop in pixels (default 64)")
    p.add_argument("--ngf", type=_positive_int, default=8, help="generator base width (default 8)")
    p.add_argument("--ndf", type=_positive_int, default=16, help="discriminator base width (default 16)")
    p.add_argument("--base-config", metavar="RUN_DIR_OR_JSON",
                   help="start from this training configuration (e.g. the default model's run); the options "
                        "above and the preset override it")
    p.add_argument("--mv", nargs="+", help="MV training data (default DATA_DIR/train_mv)")
    p.add_argument("--kv", nargs="+", help="kV training data (default DATA_DIR/train_kv)")
    p.add_argument("--test-set", metavar="DIR", help="test set (default DATA_DIR/test)")
    p.add_argument("--train-seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: report the runs that have finished and list the others as skipped")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_metric_options(p)
    p.set_defaults(func=_cmd_study_datasize)


def _cmd_study_datasize(args: argparse.Namespace) -> int:
    from .study.datasize import study_datasize

    record = study_datasize(args.data, args.output, sizes=args.sizes, presets=args.presets,
                            iterations=args.iterations, crop_size=args.crop_size, ngf=args.ngf, ndf=args.ndf,
                            base_config=args.base_config, mv=args.mv, kv=args.kv, test_set=args.test_set,
                            seed=args.train_seed, settings=_settings(args), train_missing=not args.no_train,
                            command=_command_line(args, positional=('data',), skip=('no_train',)),
                            progress=lambda msg: print(msg, file=sys.stderr))
    for s in record["summary"]:
        print(f"{s['preset']:<9} n={s['n_slices']:<4} DIG {s['dig_mean']:.4g}  MAE {s['mae_mean']:.2f} HU  "
              f"NSelfSSIM {s['nselfssim_mean']:.4f}")
    print(f"report    {args.output}/datasize.md")
    return EXIT_OK


# -- calibrate -------------------------------------------------------------------------------------

def _add_calibrate(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="an MV->kV HU calibration from the clinic's MVCT and planning-CT IVDTs",
                       description="Compose the image-value-to-density tables (IVDT) every radiotherapy department "
                                   "commissions: MVCT HU -> density -> planning-CT HU. Each table: one 'HU, density' "
                                   "row per line (CSV or whitespace; '#' comments; a header line is allowed), density "
                                   "in the same unit in both (relative electron density or mass density). Without "
                                   "tables: the ICRU tissue points (the default anchor).")
    p.add_argument("-o", "--output", required=True, help="calibration JSON to write")
    p.add_argument("--mvct-ivdt", metavar="FILE", help="the MVCT's IVDT")
    p.add_argument("--ct-ivdt", metavar="FILE", help="the planning CT's IVDT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .engine.calibration import from_ivdt, read_ivdt, tissue_calibration
    from .engine.files import OutputSet, write_json

    if (args.mvct_ivdt is None) != (args.ct_ivdt is None):
        raise MVCTEnhanceError("give both IVDTs (--mvct-ivdt and --ct-ivdt), or neither for the ICRU tissue points")
    if args.mvct_ivdt:
        cal = from_ivdt(read_ivdt(args.mvct_ivdt, "MVCT IVDT"), read_ivdt(args.ct_ivdt, "planning CT IVDT"),
                        source=f"IVDTs: MVCT {args.mvct_ivdt}, planning CT {args.ct_ivdt}")
    else:
        cal = tissue_calibration()
    with OutputSet(overwrite=args.overwrite) as outputs:
        target = outputs.add(args.output, what="calibration", example="calibration.json")
        write_json(cal.to_dict(), outputs.stage(target))
    print(f"calibration {args.output}: {len(cal.mv_hu)} points, MV {cal.mv_hu[0]:g}..{cal.mv_hu[-1]:g} HU -> "
          f"kV {cal.kv_hu[0]:g}..{cal.kv_hu[-1]:g} HU ({cal.source})")
    return EXIT_OK


# -- serve -----------------------------------------------------------------------------------------

def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="the Enhance workflow in a web page (optional 'web' extra)",
                       description="Serve a web page (trame, with real 3D Slicer views rendered by trame-slicer): "
                                   "pick an MVCT and its planning CT among the files on this machine, Enhance with "
                                   "progress and Cancel, compare MVCT | enhanced + quality-map overlay | planning "
                                   "CT, read the metrics. Localhost only unless --host says otherwise. Needs "
                                   "pip install -e '.[web]' -c constraints.txt.")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; anyone who can reach "
                        "another address can run conversions and read the listed files)")
    p.add_argument("--data-dir", default=".", help="folder whose volumes the pickers list (default: the current "
                                                   "folder, 3 levels down); the bundled sample is always listed")
    p.add_argument("--work-dir", help="folder for the running job's files (default: a new temporary folder); "
                                      "a finished, failed or cancelled job leaves nothing there")
    p.add_argument("--model", help="model file preselected in the page (default: the shipped default model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (as for enhance)")
    p.set_defaults(func=_cmd_serve)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (0..65535)")
    return value


def _cmd_serve(args: argparse.Namespace) -> int:
    # The page is an application on top of the library: imported only when this command runs, so
    # that the library never needs trame or Slicer (and says in one line when the extra is missing).
    try:
        import MVCTEnhanceWeb
    except ImportError:
        raise MVCTEnhanceError("the web page is not part of this installation: install the checkout with "
                               "pip install -e '.[web]' -c constraints.txt") from None
    problem = MVCTEnhanceWeb.missingExtra()
    if problem:
        raise MVCTEnhanceError(problem)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning("serving on %s: anyone who can reach it can run conversions and "
                                            "read the volumes under --data-dir", args.host)
    from MVCTEnhanceWeb.app import serve

    return serve(host=args.host, port=args.port, dataDir=args.data_dir, workRoot=args.work_dir,
                 device=args.device, modelPath=args.model)


# Each entry adds one subcommand; new commands add a line here (and their _add_/_cmd_ functions above).
#: The commands of the runtime engine: all the 3D Slicer extension ships (MVCTEnhanceLib/engine, filejobs,
#: cli); their parsers import nothing of training/, synth/ or study/.
ENGINE_COMMANDS: list[Callable[[Any], None]] = [
    _add_enhance,
    _add_metrics,
    _add_info,
    _add_calibrate,
]
COMMANDS: list[Callable[[Any], None]] = ENGINE_COMMANDS + [
    _add_train,
    _add_export,
    _add_simulate,
    _add_make_dataset,
    _add_evaluate,
    _add_study_datasize,
    _add_serve,
]


def build_parser(engine_only: bool = False) -> argparse.ArgumentParser:
    """The ``mvct-enhance`` parser; ``engine_only``: just :data:`ENGINE_COMMANDS` (the Slicer batch script)."""
    parser = argparse.ArgumentParser(prog=PROG, description="MVCT -> kV-like CT conversion and quality maps. "
                                     "Not for diagnosis.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in ENGINE_COMMANDS if engine_only else COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None, engine_only: bool = False) -> int:
    parser = build_parser(engine_only)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format=f"{PROG}: %(message)s")
    committed_before = committed_sets()
    try:
        with interrupts_as_exceptions():  # SIGINT/SIGTERM unwind (output sets clean up) instead of killing
            return int(args.func(args) or EXIT_OK)
    except (KeyboardInterrupt, Terminated) as exc:
        what, code = ("terminated", EXIT_TERMINATED) if isinstance(exc, Terminated) else ("interrupted", EXIT_INTERRUPTED)
        if committed_sets() > committed_before:  # the signal came after the output set was in place
            outcome = " after its outputs were written"
        elif args.command in _OUTPUT_SET_COMMANDS:
            outcome = "; no output was written"
        else:
            outcome = "; no output was written by the interrupted step"
        print(f"{PROG}: {what}{outcome}", file=sys.stderr)
        return code
    except MVCTEnhanceError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:  # permissions, full disk...: the user's environment, not our bug
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USER
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


def run() -> None:
    """The ``mvct-enhance`` command: :func:`main`, then the process ends at once. Everything is
    written, committed and flushed by then; what is skipped is the interpreter's teardown of torch's
    modules, ~0.4 s that every command would otherwise wait for after its work is done."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
