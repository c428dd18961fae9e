"""The Python packages the module needs in Slicer's Python, and their installation.

torch comes from the PyTorch extension (its PyTorchUtils module installs the right build for the
machine); the other packages are listed in the module's Resources/requirements.txt and installed with
pip. Nothing here asks the user anything itself: callers pass ``confirm(message) -> bool`` (the
widget shows a dialog; batch runs and self-tests decide without one), so this file has no GUI and is
tested on slicer-core.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

#: torch versions the engine supports.
TORCH_REQUIREMENT = ">=2.1"

ConfirmFn = Callable[[str], bool]


class DependencyError(RuntimeError):
    """A Python package the module needs is missing and could not be installed."""


def readRequirements(requirementsPath: str | Path) -> list[Any]:
    """The requirements of a requirements.txt (comments, blank lines and pip options skipped)."""
    from packaging.requirements import Requirement

    requirements = []
    for line in Path(requirementsPath).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirements.append(Requirement(line))
    return requirements


def missingRequirements(requirementsPath: str | Path) -> list[str]:
    """The requirements not satisfied by the installed distributions (as pip arguments)."""
    missing = []
    for requirement in readRequirements(requirementsPath):
        try:
            ok = requirement.specifier.contains(version(requirement.name), prereleases=True)
        except PackageNotFoundError:
            ok = False
        if not ok:
            missing.append(str(requirement))
    return missing


def torchProblem(requirement: str = TORCH_REQUIREMENT) -> str:
    """'' when an acceptable torch imports; else what is wrong, in words a user can act on."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    try:
        import torch
    except ImportError:
        return ("PyTorch is not available. Install the 'PyTorch' extension from the Extensions Manager, "
                "restart Slicer and press Enhance again.")
    if Version(torch.__version__.split("+")[0]) not in SpecifierSet(requirement):
        return (f"PyTorch {torch.__version__} is too old: MVCT Enhance needs torch{requirement}. In the PyTorch "
                "Utils module, uninstall PyTorch, restart Slicer and press Enhance again.")
    return ""


def ensureTorch(confirm: ConfirmFn | None, testing: bool, requirement: str = TORCH_REQUIREMENT) -> None:
    """torch through PyTorchUtils when the PyTorch extension is installed; DependencyError otherwise.

    ``confirm`` None installs without asking; ``testing`` (Slicer's --testing) never installs.
    """
    try:
        import PyTorchUtils
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if testing:
                raise DependencyError("PyTorch is not installed and installs are skipped in --testing mode; "
                                      "install it first in a normal (non-testing) Slicer run")
            if confirm is not None and not confirm("MVCT Enhance needs PyTorch. Install it now (about 1-3 GB)?"):
                raise DependencyError("PyTorch is required and was not installed. Press Enhance again to install "
                                      "it, or install it from the PyTorch Utils module.")
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is None:
                raise DependencyError("PyTorch could not be installed; see the Python console for the reason.")
    problem = torchProblem(requirement)
    if problem:
        raise DependencyError(problem)


def ensurePackages(requirementsPath: str | Path | None, confirm: ConfirmFn | None, testing: bool,
                   pipInstall: Callable[[list[str]], Any]) -> list[str]:
    """Install the missing requirements with ``pipInstall`` (Slicer's slicer.util.pip_install).

    Returns what was installed. Slicer >= 5.12's ``slicer.packaging.pip_ensure`` is used when present.
    """
    if requirementsPath is None:
        return []
    missing = missingRequirements(requirementsPath)
    if not missing:
        return []
    if testing:
        raise DependencyError(f"missing Python packages {', '.join(missing)}; installs are skipped in --testing "
                              "mode: install them first in a normal Slicer run")
    if confirm is not None and not confirm(
            f"MVCT Enhance needs these Python packages: {', '.join(missing)}. Install them now?"):
        raise DependencyError(f"required Python packages were not installed: {', '.join(missing)}")
    ensure = _pipEnsure()
    try:
        if ensure is not None:
            ensure(missing)
        else:
            pipInstall(missing)
    except Exception as exc:
        raise DependencyError(f"pip could not install {', '.join(missing)}: {exc}. See the Python console for "
                              "pip's output.") from None
    return missing


def _pipEnsure() -> Callable[[list[str]], Any] | None:
    """Slicer's pip_ensure (slicer.pydeps from 5.11, slicer.packaging in some builds), or None."""
    from packaging.requirements import Requirement

    for moduleName in ("slicer.pydeps", "slicer.packaging"):
        try:
            helpers = importlib.import_module(moduleName)
        except ImportError:
            continue
        if hasattr(helpers, "pip_ensure"):
            accepted = inspect.signature(helpers.pip_ensure).parameters
            options = {k: v for k, v in {"requester": "MVCT Enhance", "prompt_install": False}.items() if k in accepted}
            return lambda requirements: helpers.pip_ensure([Requirement(r) for r in requirements], **options)
    return None


def selfTestReadiness(requirementsPath: str | Path | None, confirm: ConfirmFn | None, testing: bool,
                      pipInstall: Callable[[list[str]], Any], requirement: str = TORCH_REQUIREMENT) -> str:
    """'' when the module's self-test can run; otherwise why not, for the test to skip with.

    Under ``--testing`` nothing is ever installed: a missing torch or package gives the skip message
    (the extension build server has no torch; CI installs it in a normal run first). Otherwise the
    user is asked (``confirm``) before anything is installed, and a refusal is a skip too.
    """
    problem = torchProblem(requirement)
    missing = missingRequirements(requirementsPath) if requirementsPath is not None else []
    if not problem and not missing:
        return ""
    what = "; ".join(([problem] if problem else []) +
                     ([f"missing Python packages: {', '.join(missing)}"] if missing else []))
    if testing:
        return (f"MVCT Enhance self-test skipped: {what} Installs are skipped in --testing mode: install PyTorch "
                "(PyTorch Utils) and the module's requirements in a normal Slicer run first, as the CI workflow does.")
    try:
        ensureTorch(confirm, False, requirement)
        ensurePackages(requirementsPath, confirm, False, pipInstall)
    except DependencyError as exc:
        return f"MVCT Enhance self-test not run: {exc}"
    return ""
