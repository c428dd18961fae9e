"""Batch conversion with Slicer's Python, without a GUI.

    Slicer --no-main-window --python-script <...>/Scripts/mvct_enhance_batch.py \\
        --input MVCT.nrrd --output-dir OUT [--model MODEL.pt] [--device auto|cpu|cuda|mps] \\
        [--batch-size 8] [--overwrite] [--noise-sd 20] [--window -160,240] ...

writes OUT/<name>_enhanced.nrrd, <name>_dig.nrrd, <name>_nselfssim.nrrd and <name>_report.json. The
options are those of ``mvct-enhance enhance`` (the same code runs: MVCTEnhanceLib.cli), except that
the input is given with ``--input``: Slicer would load a bare positional argument as data. Slicer
consumes ``--help`` itself, so this script's help is ``--usage``. No layout or GUI call is made.

The MVCT Enhance module runs this script in a separate process for every Enhance (with
``--progress json``: one JSON object per progress step on stderr) and terminates it on Cancel.

Exit codes: 0 done, 1 internal error, 2 user error (bad input, model or output path),
3 a dependency (torch, scipy, tqdm, matplotlib) is missing from Slicer's Python, 130 interrupted,
143 terminated (SIGTERM); an interrupted or terminated run leaves no output and no temporary file.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_DEPENDENCY = 3


def _ensureImportPaths() -> None:
    """Installed: MVCTEnhanceLib is one folder up (qt-scripted-modules). Source tree: two folders up."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        if os.path.isfile(os.path.join(folder, "MVCTEnhanceLib", "__init__.py")) and folder not in sys.path:
            sys.path.insert(0, folder)


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvct_enhance_batch.py", add_help=False,
        description="MVCT -> kV-like CT in Slicer batch mode; other options: see 'mvct-enhance enhance --help'.")
    parser.add_argument("--input", help="MVCT file or DICOM series folder")
    parser.add_argument("--usage", action="store_true", help="print this help and the enhance options, then exit")
    return parser


def main(argv: list[str]) -> int:
    parser = buildParser()
    args, rest = parser.parse_known_args(argv)
    _ensureImportPaths()
    from MVCTEnhanceLib import cli

    if args.usage:
        parser.print_help()
        print("\nOptions of 'mvct-enhance enhance' (all accepted here; give the input with --input):\n")
        try:
            cli.build_parser(engine_only=True).parse_args(["enhance", "--help"])  # argparse prints the help, then exits
        except SystemExit:
            pass
        return cli.EXIT_OK
    if not args.input:
        print("mvct_enhance_batch.py: error: --input MVCT is required (see --usage)", file=sys.stderr)
        return cli.EXIT_USER
    missing = _missingDependencies()
    if missing:
        print(f"mvct_enhance_batch.py: error: {missing}", file=sys.stderr)
        return EXIT_DEPENDENCY
    return cli.main(["enhance", args.input, *rest], engine_only=True)  # Slicer ships the engine only


def _missingDependencies() -> str:
    """'' when torch and the metrics' packages import; else what is missing and how to install it."""
    problems = []
    try:
        import torch  # noqa: F401  (only whether it imports)
    except ImportError:
        problems.append("PyTorch (install the 'PyTorch' extension, start Slicer with its GUI and press Enhance "
                        "once in the MVCT Enhance module, or run the PyTorch Utils module's Install)")
    for module, package in (("scipy", "scipy"), ("tqdm", "tqdm"), ("matplotlib", "matplotlib")):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"{package} (in Slicer's Python console: slicer.util.pip_install('{package}'))")
    return ("missing from this Python: " + "; ".join(problems)) if problems else ""


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)  # always exit: under --no-main-window Slicer would otherwise keep running
