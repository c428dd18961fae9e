"""MVCTEnhanceLib: MVCT -> kV-like CT conversion (extended CycleGAN) and no-reference quality maps.

Public API (imported lazily, so ``import MVCTEnhanceLib`` is cheap and needs no torch):

- volumes: :class:`Volume`, :func:`read_volume`, :func:`write_volume`
- models: :func:`load_model`, :func:`save_model`, :class:`ModelCard`, :func:`read_card`
- the enhance job (what the CLI, the Slicer module and the evaluation run): :func:`run_enhance`,
  :class:`EnhanceSettings`, :class:`MetricSettings`, :class:`Outcome`
- conversion: :func:`enhance`, :class:`EnhanceResult`, :func:`check_domain`
- shipped files: :func:`default_model_path`, :func:`find_resource` (e.g. "sample/sample_mvct.nrrd")
- metrics: :func:`assess`, :func:`dig_map`, :func:`nselfssim_map`, :func:`body_mask`, :func:`summarize`
- file jobs (what the CLI runs): :func:`enhance_file`, :func:`metrics_file`
- errors: :class:`MVCTEnhanceError` and subclasses

Not for diagnosis: see the model card of the model you use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .engine.errors import EnhanceCancelled, InputError, ModelError, MVCTEnhanceError, OutputError
from .engine.version import __version__

_LAZY = {
    "Volume": "engine.volume", "read_volume": "engine.volume", "write_volume": "engine.volume",
    "load_model": "engine.modelfile", "save_model": "engine.modelfile", "read_card": "engine.modelfile", "LoadedModel": "engine.modelfile",
    "ModelCard": "engine.modelcard",
    "run_enhance": "engine.job", "Outcome": "engine.job",
    "EnhanceSettings": "engine.settings", "MetricSettings": "engine.settings",
    "enhance": "engine.inference", "EnhanceResult": "engine.inference", "check_domain": "engine.inference",
    "default_model_path": "engine.resources", "find_resource": "engine.resources",
    "assess": "engine.metrics", "dig_map": "engine.metrics", "nselfssim_map": "engine.metrics", "body_mask": "engine.metrics",
    "summarize": "engine.metrics",
    "enhance_file": "filejobs", "metrics_file": "filejobs",
}

__all__ = sorted(_LAZY) + ["MVCTEnhanceError", "InputError", "OutputError", "ModelError", "EnhanceCancelled",
                           "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'MVCTEnhanceLib' has no attribute '{name}'")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
