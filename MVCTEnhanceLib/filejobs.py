"""File-to-file jobs shared by the ``mvct-enhance`` CLI and the Slicer batch script.

Every output path is checked (and its folder found writable) before any work starts, and the files
of one job form one :class:`engine.files.OutputSet`: written aside, moved into place together when
every part succeeded. An error, a cancel, SIGINT or SIGTERM leaves nothing behind that was not there
before, and nothing that existed is overwritten unless asked (and then only by a complete new set).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

from .engine.background import Background
from .engine.errors import InputError, OutputError
from .engine.figures import montage_png
from .engine.files import OutputSet, write_json
from .engine.job import EnhanceSettings, geometry_dict, run_enhance
from .engine.settings import JobProgress
from .engine.metrics import assess, body_mask
from .engine.modelfile import file_sha256, load_model, read_card
from .engine.dicomwrite import dicom_summary, source_headers, write_dicom_series
from .engine.registration import register_rigid
from .engine.resources import default_model_path
from .engine.settings import COMPRESS_OUTPUTS
from .engine.version import __version__
from .engine.volume import WRITE_EXTENSIONS, Volume, check_output_path, read_volume, write_volume


def output_paths_for_dir(input_path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Standard names in ``output_dir``: <stem>_enhanced.nrrd, _dig.nrrd, _nselfssim.nrrd, _report.json."""
    name = Path(input_path).name
    for ext in (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    d = Path(output_dir)
    return {"output": d / f"{name}_enhanced.nrrd", "dig": d / f"{name}_dig.nrrd",
            "nselfssim": d / f"{name}_nselfssim.nrrd", "report": d / f"{name}_report.json",
            "montage": d / f"{name}_montage.png"}


#: File names suggested when an output path is a folder.
_EXAMPLE_NAMES = {"output": "enhanced.nrrd", "dig": "dig.nrrd", "nselfssim": "nselfssim.nrrd",
                  "tissue_change": "tissue_change.nrrd", "report": "report.json", "montage": "montage.png"}


def _check_outputs(outputs: dict[str, str | os.PathLike | None], overwrite: bool, inputs: list[str],
                   output_set: OutputSet, folder_hint: str = "") -> dict[str, Path]:
    """Check every output and add it to ``output_set`` (which finds each folder writable), before any work."""
    checked: dict[str, Path] = {}
    for key, path in outputs.items():
        if path is None:
            continue
        extensions = {"report": (".json",), "montage": (".png",)}.get(key, WRITE_EXTENSIONS)

        def validate(p: Path, extensions: tuple[str, ...] = extensions, what: str = key) -> None:
            check_output_path(p, overwrite, inputs, extensions, what)

        checked[key] = output_set.add(path, key, _EXAMPLE_NAMES[key], folder_hint if key == "output" else "",
                                      validate)
        if key == "montage":
            _require_matplotlib()
    return checked


def _not_an_input(path: Path, inputs: list[str]) -> None:
    for given in inputs:
        source = Path(given).resolve()
        if path.resolve() == source or source.is_relative_to(path.resolve()):
            raise OutputError(f"DICOM folder '{path}' holds an input ('{given}'); give a new or empty folder")


def _require_matplotlib() -> None:
    # Checked with the output paths, before any work: Slicer's Python does not ship matplotlib.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OutputError("a PNG montage needs matplotlib, which is not installed here; "
                          "install it (pip install matplotlib) or leave out --montage") from None


def enhance_file(input_path: str | os.PathLike, output: str | os.PathLike | None, *,
                 model: str | os.PathLike | None = None, dig: str | os.PathLike | None = None,
                 nselfssim: str | os.PathLike | None = None, report: str | os.PathLike | None = None,
                 montage: str | os.PathLike | None = None, planning_ct: str | os.PathLike | None = None,
                 tissue_change: str | os.PathLike | None = None, register: bool = False,
                 dicom_dir: str | os.PathLike | None = None,
                 settings: EnhanceSettings | None = None, output_type: str = "float32", overwrite: bool = False,
                 series_uid: str | None = None, progress: JobProgress | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Convert one MVCT file with :func:`engine.job.run_enhance`; optionally write the DIG, NSelfSSIM
    and tissue-change maps, a JSON report and a PNG montage (MVCT | enhanced | planning CT | maps).

    ``dicom_dir``: also write the enhanced volume as a DICOM CT series into this (new or empty)
    folder (:func:`engine.dicomwrite.write_dicom_series`: derived, referencing a DICOM input, "not for
    diagnosis"), moved into place with the other outputs.

    With ``register`` the MVCT is first registered rigidly to the planning CT
    (:func:`engine.registration.register_rigid`); the transform is recorded in the report under
    ``registration`` (the outputs stay on the MVCT's grid).

    Returns the report dictionary (also written to ``report`` when given).
    """
    t_start = time.perf_counter()
    if output is None:
        raise OutputError("no output path given")
    if register and not planning_ct:
        raise InputError("registration needs a planning CT: add --planning-ct FILE, or leave out --register")
    inputs = [str(input_path)] + ([str(planning_ct)] if planning_ct else [])
    if output_type not in ("float32", "int16"):
        raise OutputError(f"output type '{output_type}' is not supported; use float32 or int16")
    with OutputSet(overwrite) as outputs:
        paths = _check_outputs({"output": output, "dig": dig, "nselfssim": nselfssim, "tissue_change": tissue_change,
                                "report": report, "montage": montage}, overwrite, inputs, outputs,
                               " or use --output-dir")
        if dicom_dir is not None:
            paths["dicom_dir"] = outputs.add(dicom_dir, "DICOM folder", validate=lambda p: _not_an_input(p, inputs),
                                             folder_output=True)
        model_path = Path(model) if model else default_model_path()
        settings = settings or EnhanceSettings()
        if not (dig or nselfssim or tissue_change or report or montage):
            settings = dataclasses.replace(settings, assess=False)

        # The volumes are read (decompressed in SimpleITK) and the MVCT's body found (scipy) while
        # torch is imported and the model loaded: both mostly outside Python, so they overlap (~1 s on
        # two cores). An input's error still comes before the model's.
        def read_inputs() -> tuple[Volume, Volume | None, Any]:
            mvct = read_volume(input_path, series_uid=series_uid)
            planning_volume = read_volume(planning_ct) if planning_ct else None
            return mvct, planning_volume, body_mask(mvct) if settings.assess else None

        reading = Background(read_inputs)
        try:
            loaded = load_model(model_path)
        except BaseException:
            reading.result()
            raise
        volume, planning, mask = reading.result()
        dicom_source = source_headers(input_path, series_uid) if dicom_dir is not None else []
        registration = None
        if register:
            if progress is not None:
                progress("register", 0, 1)
            registration = register_rigid(planning, volume)
            if progress is not None:
                progress("register", 1, 1)
        t_loaded = time.perf_counter()
        written: set[str] = set()

        def write_ready(name: str, result: Volume) -> None:  # each volume is written while the job goes on
            if name in paths and name not in written:
                written.add(name)
                dtype = output_type if name == "output" else "float32"
                outputs.stage_in_background(paths[name], lambda staged: write_volume(
                    result, staged, dtype=dtype, compress=COMPRESS_OUTPUTS))

        outcome = run_enhance(volume, loaded, planning, settings, progress, should_cancel, on_ready=write_ready,
                              mask=mask)
        t_computed = time.perf_counter()
        assessment = outcome.assessment
        outputs.finish_background()
        dicom_files = []
        if "dicom_dir" in paths:
            dicom_files = write_dicom_series(
                outcome.result, outputs.stage(paths["dicom_dir"]), source=dicom_source,
                derivation=f"Model {loaded.card.name} {loaded.card.version} (sha256 {loaded.sha256[:16]}...).")
        if assessment is not None and "montage" in paths:
            montage_png(outputs.stage(paths["montage"]), volume, outcome.result, planning, assessment.dig,
                        assessment.nselfssim_output,
                        title=f"{Path(input_path).name} with {loaded.card.name} {loaded.card.version}; not for diagnosis")
        t_written = time.perf_counter()

        data = outcome.report()
        data["input"] = {"path": str(input_path), **data["input"]}
        if planning is not None:
            data["planning_ct"] = {"path": str(planning_ct), **data["planning_ct"]}
        if registration is not None:
            data["registration"] = registration.to_dict()
        if dicom_files:
            data["dicom"] = dicom_summary(dicom_files)
        data["outputs"] = {k: str(v) for k, v in paths.items()}
        data["output_type"] = output_type
        data["timings_s"] = {"load": round(t_loaded - t_start, 4), **data["timings_s"],
                             "write": round(t_written - t_computed, 4), "total": round(t_written - t_start, 4)}
        if "report" in paths:
            write_json(data, outputs.stage(paths["report"]))
    return data


def metrics_file(image_path: str | os.PathLike, *, converted: str | os.PathLike | None = None,
                 dig: str | os.PathLike | None = None, nselfssim: str | os.PathLike | None = None,
                 report: str | os.PathLike | None = None, settings: EnhanceSettings | None = None,
                 overwrite: bool = False, progress: JobProgress | None = None) -> dict[str, Any]:
    """Quality maps and summaries for any CT; DIG needs the image and its conversion. Of
    ``settings`` only the device and the metric settings apply."""
    settings = settings or EnhanceSettings()
    ms = settings.metrics
    inputs = [str(image_path)] + ([str(converted)] if converted else [])
    if dig and not converted:
        raise InputError("a DIG map needs the converted image: pass --converted FILE")
    with OutputSet(overwrite) as outputs:
        paths = _check_outputs({"dig": dig, "nselfssim": nselfssim, "report": report}, overwrite, inputs, outputs)
        image = read_volume(image_path)
        conv = read_volume(converted) if converted else None
        if conv is not None and not conv.same_geometry(image):
            raise InputError(f"'{converted}' does not have the geometry of '{image_path}' (shape, spacing, origin, "
                             "direction must match exactly): DIG compares voxel by voxel")
        assessment = assess(image, conv, noise_sd=ms.noise_sd, window=ms.window, seed=ms.seed, device=settings.device,
                            progress=(lambda d, t: progress("metrics", d, t)) if progress else None)
        if "dig" in paths and assessment.dig is not None:
            write_volume(assessment.dig, outputs.stage(paths["dig"]), compress=COMPRESS_OUTPUTS)
        if "nselfssim" in paths:
            # NSelfSSIM of the converted image when there is one (what a user checks), else of the image.
            nss = assessment.nselfssim_output if assessment.nselfssim_output is not None else assessment.nselfssim_input
            write_volume(nss, outputs.stage(paths["nselfssim"]), compress=COMPRESS_OUTPUTS)
        data = {"engine_version": __version__, "image": {"path": str(image_path), **geometry_dict(image)},
                "converted": str(converted) if converted else None, "outputs": {k: str(v) for k, v in paths.items()},
                "metrics": assessment.summaries}
        if "report" in paths:
            write_json(data, outputs.stage(paths["report"]))
    return data


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The card of a model file (validated) with the file's sha256, without running the model."""
    card = read_card(path)
    return {"path": str(path), "sha256": file_sha256(path), "card": card.to_dict()}
