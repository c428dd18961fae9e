"""Where the shipped models and sample data live.

Search order: the MVCTENHANCE_RESOURCES environment variable (a folder with models/ and sample/),
the repository's Resources/ (source checkouts and editable installs), then the copy installed as
package data (``pip install .``). The Slicer module passes its own paths explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelError

DEFAULT_MODEL_NAME = "mvctenhance-default.pt"
TINY_MODEL_NAME = "mvctenhance-tiny-test.pt"


def resource_roots() -> list[Path]:
    roots = []
    env = os.environ.get("MVCTENHANCE_RESOURCES")
    if env:
        roots.append(Path(env))
    package = Path(__file__).resolve().parents[1]  # MVCTEnhanceLib/ (this file is in engine/)
    roots += [package.parent / "Resources", package / "_resources"]
    return [r for r in roots if r.is_dir()]


def find_resource(relative: str) -> Path | None:
    for root in resource_roots():
        p = root / relative
        if p.exists():
            return p
    return None


def default_model_path() -> Path:
    """The shipped default model; a clear error if this installation has none."""
    p = find_resource(f"models/{DEFAULT_MODEL_NAME}")
    if p is None:
        raise ModelError(f"no default model ({DEFAULT_MODEL_NAME}) in this installation; pass --model FILE "
                         f"(the tiny untrained test model is {TINY_MODEL_NAME} in Resources/models)")
    return p


def tiny_model_path() -> Path:
    p = find_resource(f"models/{TINY_MODEL_NAME}")
    if p is None:
        raise ModelError(f"the tiny test model ({TINY_MODEL_NAME}) is missing from this installation")
    return p
