"""The small JSON files the library writes and reads (manifests, run records, cards, reports).

One writer (atomic: a temporary file beside the target, then a rename) and one reader, so that every
such file that is missing, unreadable, not JSON or not a JSON object gives the same kind of one-line
:class:`InputError` instead of a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InputError


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names the file in error messages ("card extra file")."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} '{p}' does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} '{p}' cannot be read ({exc})") from None
    except ValueError as exc:
        raise InputError(f"{what} '{p}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} '{p}' must hold a JSON object, not {type(data).__name__}")
    return data


def json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    return str(o)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """``data`` as indented JSON in ``path``, written aside and renamed into place."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
