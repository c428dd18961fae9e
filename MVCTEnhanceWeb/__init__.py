"""``mvct-enhance serve``: the Enhance workflow in a web page (the optional ``web`` extra).

A trame page whose three slice views (MVCT, enhanced with the chosen quality-map overlay, planning
CT) are real Slicer views rendered by trame-slicer on the server. Every step is the Slicer module's
own Qt-free code: ``MVCTEnhanceMRML`` (nodes, the background job runner with its JSON progress and
cancel, ``createOutputNodes``, the masked overlays and colour legends of ``display``, the metrics
table) and, through the module's batch script, ``MVCTEnhanceLib.engine.job``. Nothing here converts,
masks or summarises anything itself.

This file imports nothing of trame or Slicer, so ``mvct-enhance serve`` can tell in one line what is
missing; :mod:`MVCTEnhanceWeb.app` is the page. The page runs from a source checkout (the module's
``MVCTEnhanceMRML`` and batch script live in ``MVCTEnhance/``, the models and sample in
``Resources/``): install with ``pip install -e '.[web]' -c constraints.txt``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MVCTEnhance"
BATCH_SCRIPT = MODULE_DIR / "Scripts" / "mvct_enhance_batch.py"
RESOURCES = REPO / "Resources"
SAMPLE_DIR = RESOURCES / "sample"
#: What the page needs besides the project's own dependencies (the ``web`` extra), by import name.
EXTRA_MODULES = ("trame", "trame_vuetify", "trame_rca", "trame_slicer", "slicer", "slicer_layer_dm")
EXTRA_HINT = "pip install -e '.[web]' -c constraints.txt (or bash scripts/install.sh)"


def missingExtra() -> str:
    """'' when the page can run; else one line saying what is missing and how to install it."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"the web page needs the optional 'web' extra ({', '.join(missing)} not installed): {EXTRA_HINT}"
    if not (MODULE_DIR / "MVCTEnhanceMRML" / "__init__.py").is_file() or not BATCH_SCRIPT.is_file():
        return (f"the web page runs from a source checkout: {MODULE_DIR} (the Slicer module's MVCTEnhanceMRML "
                f"and batch script) is missing; {EXTRA_HINT} in the checkout")
    return ""


def addModulePath() -> None:
    """Make the Slicer module's ``MVCTEnhanceMRML`` importable (as Slicer and the tests do)."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
