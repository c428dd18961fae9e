"""File-to-file jobs shared by the ``mvct-enhance`` CLI and the Slicer batch script.

Every output path is checked before any work starts, all computation finishes before the first
file is written, and each file is written atomically: an error or a cancel leaves nothing behind
that was not there before, and nothing that existed is overwritten unless asked.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from .engine.errors import InputError, OutputError
from .engine.modelfile import load_model, read_card
from .engine.resources import default_model_path
from .engine.version import __version__
from .engine.volume import Volume, check_output_path, read_volume, write_volume

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


def geometry_dict(volume: Volume) -> dict[str, Any]:
    return {"shape": list(volume.array.shape), "spacing": list(volume.spacing), "origin": list(volume.origin),
            "direction": list(volume.direction), "axial_axis": volume.axial_axis()}


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


def write_json(data: dict[str, Any], path: str | os.PathLike) -> Path:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, p)
    return p


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _check_outputs(outputs: dict[str, str | os.PathLike | None], overwrite: bool, inputs: list[str]) -> dict[str, Path]:
    checked: dict[str, Path] = {}
    for key, path in outputs.items():
        if path is None:
            continue
        if key == "report":
            p = check_output_path(path, overwrite, inputs, (".json",), "report")
        elif key == "montage":
            p = check_output_path(path, overwrite, inputs, (".png",), "montage")
            _require_matplotlib()
        else:
            p = check_output_path(path, overwrite, inputs)
        if p.resolve() in {c.resolve() for c in checked.values()}:
            raise OutputError(f"'{p}' is given for two outputs; give each output its own path")
        checked[key] = p
    return checked


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
                 device: str = "auto", batch_size: int | None = None, precision: str = "auto", resample: bool = True,
                 output_type: str = "float32", overwrite: bool = False, series_uid: str | None = None,
                 noise_sd: float = 20.0, window: tuple[float, float] = (-160.0, 240.0), seed: int = 0,
                 progress: ProgressFn | None = None, should_cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Convert one MVCT file; optionally write the DIG and NSelfSSIM maps, a JSON report and a PNG
    montage (MVCT | enhanced | planning CT | maps). A planning CT adds its NSelfSSIM to the metrics
    (the reference the enhanced image should approach) and its nearest slice to the montage.

    Returns the report dictionary (also written to ``report`` when given).
    """
    from .engine.inference import enhance
    from .engine.metrics import assess

    t_start = time.perf_counter()
    if output is None:
        raise OutputError("no output path given")
    inputs = [str(input_path)] + ([str(planning_ct)] if planning_ct else [])
    paths = _check_outputs({"output": output, "dig": dig, "nselfssim": nselfssim, "report": report,
                            "montage": montage}, overwrite, inputs)
    model_path = Path(model) if model else default_model_path()
    if output_type not in ("float32", "int16"):
        raise OutputError(f"output type '{output_type}' is not supported; use float32 or int16")

    volume = read_volume(input_path, series_uid=series_uid)
    planning = read_volume(planning_ct) if planning_ct else None
    loaded = load_model(model_path)
    t_loaded = time.perf_counter()

    def stage(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    result = enhance(volume, loaded, device=device, batch_size=batch_size, precision=precision, resample=resample,
                     progress=stage("enhance"), should_cancel=should_cancel)
    t_enhanced = time.perf_counter()
    metrics: dict[str, Any] = {}
    assessment = None
    if dig or nselfssim or report or montage:
        assessment = assess(volume, result.volume, noise_sd=noise_sd, window=window, seed=seed, device=device,
                            progress=stage("metrics"), should_cancel=should_cancel)
        metrics = assessment.summaries
        if planning is not None:
            reference = assess(planning, noise_sd=noise_sd, window=window, seed=seed, device=device,
                               progress=stage("planning"), should_cancel=should_cancel)
            metrics["nselfssim"]["planning_ct"] = reference.summaries["nselfssim"]["input"]
    t_metrics = time.perf_counter()

    write_volume(result.volume, paths["output"], dtype=output_type, overwrite=overwrite, inputs=inputs)
    if assessment is not None and "dig" in paths:
        write_volume(assessment.dig, paths["dig"], overwrite=overwrite, inputs=inputs)
    if assessment is not None and "nselfssim" in paths:
        write_volume(assessment.nselfssim_output, paths["nselfssim"], overwrite=overwrite, inputs=inputs)
    if assessment is not None and "montage" in paths:
        from .engine.figures import montage_png

        montage_png(paths["montage"], volume, result.volume, planning, assessment.dig, assessment.nselfssim_output,
                    title=f"{Path(input_path).name} with {loaded.card.name} {loaded.card.version}; not for diagnosis")
    t_written = time.perf_counter()

    data = {
        "engine_version": __version__,
        "input": {"path": str(input_path), **geometry_dict(volume)},
        "planning_ct": {"path": str(planning_ct), **geometry_dict(planning)} if planning is not None else None,
        "outputs": {k: str(v) for k, v in paths.items()},
        "output_type": output_type,
        "model": {"path": str(model_path), "sha256": loaded.sha256, "card": loaded.card.to_dict()},
        "device": result.device,
        "parameters": result.parameters,
        "warnings": result.warnings,
        "timings_s": {"load": round(t_loaded - t_start, 4), "enhance": round(t_enhanced - t_loaded, 4),
                      "metrics": round(t_metrics - t_enhanced, 4), "write": round(t_written - t_metrics, 4),
                      "total": round(t_written - t_start, 4),
                      "slices_per_s": round(result.parameters["slices"] / max(result.seconds, 1e-9), 3)},
        "metrics": metrics,
    }
    if "report" in paths:
        write_json(data, paths["report"])
    return data


def metrics_file(image_path: str | os.PathLike, *, converted: str | os.PathLike | None = None,
                 dig: str | os.PathLike | None = None, nselfssim: str | os.PathLike | None = None,
                 report: str | os.PathLike | None = None, noise_sd: float = 20.0,
                 window: tuple[float, float] = (-160.0, 240.0), seed: int = 0, device: str = "auto",
                 overwrite: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Quality maps and summaries for any CT; DIG needs the image and its conversion."""
    from .engine.metrics import assess

    inputs = [str(image_path)] + ([str(converted)] if converted else [])
    if dig and not converted:
        raise InputError("a DIG map needs the converted image: pass --converted FILE")
    paths = _check_outputs({"dig": dig, "nselfssim": nselfssim, "report": report}, overwrite, inputs)
    image = read_volume(image_path)
    conv = read_volume(converted) if converted else None
    if conv is not None and not conv.same_geometry(image):
        raise InputError(f"'{converted}' does not have the geometry of '{image_path}' (shape, spacing, origin, "
                         "direction must match exactly): DIG compares voxel by voxel")
    assessment = assess(image, conv, noise_sd=noise_sd, window=window, seed=seed, device=device,
                        progress=(lambda d, t: progress("metrics", d, t)) if progress else None)
    if "dig" in paths and assessment.dig is not None:
        write_volume(assessment.dig, paths["dig"], overwrite=overwrite, inputs=inputs)
    if "nselfssim" in paths:
        # NSelfSSIM of the converted image when there is one (what a user checks), else of the image.
        nss = assessment.nselfssim_output if assessment.nselfssim_output is not None else assessment.nselfssim_input
        write_volume(nss, paths["nselfssim"], overwrite=overwrite, inputs=inputs)
    data = {"engine_version": __version__, "image": {"path": str(image_path), **geometry_dict(image)},
            "converted": str(converted) if converted else None, "outputs": {k: str(v) for k, v in paths.items()},
            "metrics": assessment.summaries}
    if "report" in paths:
        write_json(data, paths["report"])
    return data


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The card of a model file (validated) with the file's sha256, without running the model."""
    from .engine.modelfile import file_sha256

    card = read_card(path)
    return {"path": str(path), "sha256": file_sha256(path), "card": card.to_dict()}
