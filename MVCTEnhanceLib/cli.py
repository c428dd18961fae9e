"""``mvct-enhance``: the command line. Argument parsing only; each command calls the library.

This interface is public (scripts and Slicer batch runs call it). Every user error is one line on
stderr and exit code 2; ``--debug`` shows the traceback. Exit codes: 0 ok, 1 internal error,
2 user error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any, Callable, Sequence

from .errors import MVCTEnhanceError
from .version import __version__

PROG = "mvct-enhance"
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    g = p.add_argument_group("quality metrics")
    g.add_argument("--noise-sd", type=_positive_float, default=20.0, metavar="HU",
                   help="NSelfSSIM: SD of the added Gaussian noise in HU (default 20)")
    g.add_argument("--window", type=_window, default=(-160.0, 240.0), metavar="LOW,HIGH",
                   help="NSelfSSIM: HU window clipped to before SSIM; its width is the data range (default -160,240)")
    g.add_argument("--seed", type=int, default=0, help="NSelfSSIM noise seed (default 0)")


# -- enhance ---------------------------------------------------------------------------------------

def _add_enhance(sub: Any) -> None:
    p = sub.add_parser("enhance", help="convert an MVCT volume to a kV-like CT (HU)",
                       description="Convert an MVCT (NRRD, NIfTI, MetaImage, DICOM file or series folder) "
                                   "slice by slice to a kV-like CT in HU with the same geometry.")
    p.add_argument("input", help="MVCT file or DICOM series folder")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", help="enhanced volume (.nrrd, .nii, .nii.gz, .mha, .mhd)")
    out.add_argument("--output-dir", help="write <name>_enhanced.nrrd, _dig.nrrd, _nselfssim.nrrd, "
                                          "_report.json and _montage.png into this existing folder")
    p.add_argument("--model", help="model file (default: the shipped default model)")
    p.add_argument("--dig", help="write the DIG map (HU^2/mm^2) here")
    p.add_argument("--nselfssim", help="write the NSelfSSIM map of the enhanced volume here")
    p.add_argument("--report", help="write a JSON report (model card, sha256, timings, metric summaries) here")
    p.add_argument("--montage", help="write a PNG montage (MVCT | enhanced | planning CT | DIG | NSelfSSIM) here")
    p.add_argument("--planning-ct", help="planning CT of the same patient: its NSelfSSIM is reported as the "
                                         "reference and its nearest slice is shown in the montage")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="slices per batch (default 8)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="GPU autocast precision (default auto: fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--no-resample", action="store_true",
                   help="do not resample slices to the model's pixel spacing")
    p.add_argument("--output-type", choices=("float32", "int16"), default="float32",
                   help="voxel type of the enhanced volume (int16: rounded, clipped)")
    p.add_argument("--series-uid", help="DICOM series to read when the input folder holds several")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_metric_options(p)
    p.set_defaults(func=_cmd_enhance)


def _cmd_enhance(args: argparse.Namespace) -> int:
    from .pipeline import enhance_file, output_paths_for_dir

    outputs = {"output": args.output, "dig": args.dig, "nselfssim": args.nselfssim, "report": args.report,
               "montage": args.montage}
    if args.output_dir:
        from pathlib import Path

        if not Path(args.output_dir).is_dir():
            raise MVCTEnhanceError(f"output folder '{args.output_dir}' does not exist")
        defaults = output_paths_for_dir(args.input, args.output_dir)
        outputs = {k: v or defaults[k] for k, v in outputs.items()}
    bars = _StageBars()
    try:
        report = enhance_file(args.input, outputs["output"], model=args.model, dig=outputs["dig"],
                              nselfssim=outputs["nselfssim"], report=outputs["report"], montage=outputs["montage"],
                              planning_ct=args.planning_ct, device=args.device,
                              batch_size=args.batch_size, precision=args.precision, resample=not args.no_resample,
                              output_type=args.output_type, overwrite=args.overwrite, series_uid=args.series_uid,
                              noise_sd=args.noise_sd, window=args.window, seed=args.seed, progress=bars)
    finally:
        bars.close()
    _print_enhance_summary(report)
    return EXIT_OK


def _print_enhance_summary(report: dict[str, Any]) -> None:
    card = report["model"]["card"]
    t = report["timings_s"]
    print(f"model     {card['name']} {card['version']} (sha256 {report['model']['sha256'][:12]})")
    print(f"input     {report['input']['path']}  {'x'.join(map(str, report['input']['shape']))}")
    print(f"device    {report['device']}  {t['enhance']:.2f} s ({t['slices_per_s']:.1f} slices/s), total {t['total']:.2f} s")
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
    from .pipeline import metrics_file

    bars = _StageBars()
    try:
        report = metrics_file(args.image, converted=args.converted, dig=args.dig, nselfssim=args.nselfssim,
                              report=args.report, noise_sd=args.noise_sd, window=args.window, seed=args.seed,
                              device=args.device, overwrite=args.overwrite, progress=bars)
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

    from .pipeline import model_info

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


# Each entry adds one subcommand; new commands add a line here (and their _add_/_cmd_ functions above).
COMMANDS: list[Callable[[Any], None]] = [
    _add_enhance,
    _add_metrics,
    _add_info,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="MVCT -> kV-like CT conversion and quality maps. "
                                     "Not for diagnosis.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format=f"{PROG}: %(message)s")
    try:
        return int(args.func(args) or EXIT_OK)
    except MVCTEnhanceError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was written by the interrupted step", file=sys.stderr)
        return EXIT_INTERRUPTED
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


if __name__ == "__main__":
    sys.exit(main())
