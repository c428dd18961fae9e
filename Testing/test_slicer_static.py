"""Static consistency of the Slicer extension: checks that fail when the module and its files disagree.

The Slicer application cannot run here, so what would only break inside Slicer (a .ui widget bound to
a parameter that does not exist, a library file missing from the installed extension, torch imported
at start-up, a batch option Slicer would swallow) is checked from the sources.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MVCTEnhance"
MODULE_FILE = MODULE_DIR / "MVCTEnhance.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MVCTEnhance.ui"
WORKFLOW = REPO / ".github" / "workflows" / "slicer-tests.yml"

# Widget classes that parameterNodeWrapper's GUI connectors bind (Slicer 5.10), by parameter type.
CONNECTORS = {
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "choice": {"QComboBox"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "bool": {"QCheckBox", "QPushButton"},
    "str": {"QLineEdit", "QTextEdit"},
}

# Options of the Slicer application (and its launcher) that a --python-script never receives.
SLICER_OPTIONS = {
    "--help", "-h", "--version", "--ignore-slicerrc", "--python-script", "--python-code", "-c", "--ignore-rest",
    "--no-splash", "--no-main-window", "--exit-after-startup", "--settings-disabled", "--disable-settings",
    "--keep-temp-directory", "--disable-python", "--disable-cli-modules", "--disable-loadable-modules",
    "--disable-scripted-loadable-modules", "--disable-builtin-modules", "--disable-builtin-cli-modules",
    "--disable-builtin-loadable-modules", "--disable-builtin-scripted-loadable-modules", "--disable-modules",
    "--modules-to-ignore", "--additional-module-path", "--additional-module-paths", "--verbose-module-discovery",
    "--testing", "--disable-terminal-outputs", "--disable-message-handlers", "--application-information",
    "--enable-qt-testing", "--show-python-interactor", "--language", "--home", "--tmp", "--style",
    "--attach-process", "--verbose", "--designer", "--launch", "--launcher-help", "--launcher-verbose",
    "--launcher-no-splash", "--launcher-timeout", "--launcher-show-set-environment-commands",
    "--launcher-additional-settings", "--launcher-additional-settings-exclude-groups", "--launcher-ignore-user-additional-settings",
    "--launcher-generate-exec-wrapper-script", "--launcher-generate-template", "--launcher-load-environment",
    "--display-version", "--display-settings-path", "--display-temporary-path", "--display-home-path",
    "--display-application-information",
}


#: Parameters bound to their widget by the widget's code, not by the SlicerParameterName property.
CODE_BOUND = {"device": "deviceComboBox"}


def _moduleTree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


def _wrapperParameters() -> dict[str, str]:
    """Parameter name -> kind ('node', 'Path', 'choice', 'int', 'float', 'bool', 'str') from the wrapper class."""
    for node in _moduleTree().body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            params = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    params[item.target.id] = _kind(item.annotation)
            return params
    raise AssertionError("no @parameterNodeWrapper class in MVCTEnhance.py")


def _kind(annotation: ast.expr) -> str:
    text = ast.unparse(annotation)
    if "Choice(" in text:
        return "choice"
    base = text.split("[", 1)[1].split(",")[0].strip() if text.startswith("Annotated[") else text
    if base.startswith("vtkMRML"):
        return "node"
    return base


def _uiWidgets() -> dict[str, tuple[str, str | None]]:
    """Widget name -> (class, SlicerParameterName or None)."""
    root = ET.parse(UI_FILE).getroot()
    widgets = {}
    for w in root.iter("widget"):
        param = None
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                param = prop.findtext("string")
        widgets[w.get("name")] = (w.get("class"), param)
    return widgets


def _cmakeLists(path: Path, variable: str) -> list[str]:
    text = path.read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set in {path}"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


# -- the .ui and the parameter node --------------------------------------------------------------------

def test_ui_is_valid_qt_designer_xml():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.find("widget").get("class") == "qMRMLWidget"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {cls for cls, _ in _uiWidgets().values()}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= declared, "custom widget used but not declared"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    for connection in root.iter("connection"):
        assert connection.findtext("receiver") in names


def test_every_slicer_parameter_name_in_the_ui_is_a_wrapper_parameter_with_a_matching_widget():
    params = _wrapperParameters()
    bound = {name: (cls, param) for name, (cls, param) in _uiWidgets().items() if param}
    assert bound, "no widget is bound to the parameter node"
    for widgetName, (cls, param) in bound.items():
        assert param in params, f"{widgetName} is bound to '{param}', which the parameter node does not have"
        assert cls in CONNECTORS[params[param]], f"{widgetName} ({cls}) cannot show a {params[param]} parameter"
    assert len({p for _, p in bound.values()}) == len(bound), "two widgets bound to one parameter"
    # Every user setting has a widget (outputs are set by the logic; the device box is bound in code,
    # because it lists only this computer's devices).
    outputs = {"enhancedVolume", "digVolume", "nselfssimVolume", "tissueChangeVolume", "resultsTable"}
    assert set(params) - outputs - set(CODE_BOUND) == {p for _, p in bound.values()}
    text = MODULE_FILE.read_text()
    for param, widget in CODE_BOUND.items():
        assert param not in {p for _, p in bound.values()}, f"{param} is bound twice"
        assert f"self.ui.{widget}" in text and f"self._parameterNode.{param} = " in text, param
        assert f'name="{widget}"' in UI_FILE.read_text()


def test_sliders_of_floats_are_bounded():
    # ctkSliderWidget needs a WithinRange (or Minimum and Maximum) annotation, else connectGui raises.
    params = {n.target.id: ast.unparse(n.annotation) for c in _moduleTree().body if isinstance(c, ast.ClassDef)
              for n in c.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    for name, (cls, param) in _uiWidgets().items():
        if cls in ("ctkSliderWidget", "QSlider") and param:
            assert "WithinRange(" in params[param], f"{param} is shown with a slider but has no range"


def test_every_ui_widget_the_module_uses_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    missing = used - set(_uiWidgets())
    assert not missing, f"MVCTEnhance.py uses widgets missing from the .ui: {sorted(missing)}"


# -- CMake lists every file ----------------------------------------------------------------------------

def test_every_python_file_is_listed_in_cmake_and_every_listed_file_exists():
    moduleCMake = MODULE_DIR / "CMakeLists.txt"
    moduleScripts = {s.replace("${MODULE_NAME}", "MVCTEnhance") for s in _cmakeLists(moduleCMake, "MODULE_PYTHON_SCRIPTS")}
    libScripts = set(_cmakeLists(moduleCMake, "MVCTENHANCELIB_PYTHON_SCRIPTS"))
    testScripts = set(re.findall(r"SCRIPT\s+(\S+\.py)", (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text()))

    listed = ({MODULE_DIR / s for s in moduleScripts} | {REPO / s for s in libScripts}
              | {MODULE_DIR / "Testing" / "Python" / s for s in testScripts})
    present = {p for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    lib = REPO / "MVCTEnhanceLib"  # Slicer ships the runtime engine and its file jobs/CLI, nothing above
    present |= {lib / "__init__.py", lib / "cli.py", lib / "filejobs.py"} | set((lib / "engine").glob("*.py"))
    assert sorted(map(str, present - listed)) == [], "Python files missing from the CMake lists"
    assert sorted(map(str, listed - present)) == [], "CMake lists files that do not exist"


def test_resources_listed_in_cmake_exist():
    moduleCMake = MODULE_DIR / "CMakeLists.txt"
    for resource in _cmakeLists(moduleCMake, "MODULE_PYTHON_RESOURCES"):
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "MVCTEnhance")).is_file(), resource
    shared = _cmakeLists(moduleCMake, "MVCTENHANCE_SHARED_RESOURCES")
    assert "Resources/models/mvctenhance-tiny-test.pt" in shared
    for resource in shared:
        assert (REPO / resource).is_file(), f"{resource} is listed in MVCTEnhance/CMakeLists.txt but missing"
    assert "Resources/models/mvctenhance-default.pt" in moduleCMake.read_text()  # shipped when present


def _cmakeValue(text: str, key: str) -> str:
    match = re.search(rf'^set\({key} "([^"]*)"\)', text, re.M)
    assert match, f"{key} is not set in CMakeLists.txt"
    return match.group(1)


def test_extension_metadata_the_index_accepts():
    """Homepage, icon and screenshot are files of this repository behind one base URL (empty until the
    project is published, never a made-up address); contributors come as 'Name (Role)'."""
    text = (REPO / "CMakeLists.txt").read_text()
    base = _cmakeValue(text, "MVCTENHANCE_REPOSITORY_URL")
    assert base == "" or (base.startswith("https://") and not base.endswith("/")
                          and not re.search(r"example|placeholder|<|mvctenhance/MVCTEnhance", base))
    for key, prefix, suffix in (("EXTENSION_HOMEPAGE", "${MVCTENHANCE_PAGE_BASE}", ".md"),
                                ("EXTENSION_ICONURL", "${MVCTENHANCE_FILE_BASE}", ".png"),
                                ("EXTENSION_SCREENSHOTURLS", "${MVCTENHANCE_FILE_BASE}", ".png")):
        value = _cmakeValue(text, key)
        assert value.startswith(prefix) and value.endswith(suffix), value
        assert (REPO / value[len(prefix):]).is_file(), f"{key} names {value[len(prefix):]}, which does not exist"
    assert "https://" not in "".join(_cmakeValue(text, k) for k in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL",
                                                                  "EXTENSION_SCREENSHOTURLS"))
    contributors = _cmakeValue(text, "EXTENSION_CONTRIBUTORS")
    entry = r"[^,()]+ \([^()]+\)"
    assert re.fullmatch(rf"{entry}(, {entry})*", contributors), contributors
    assert contributors != "MVCTEnhance developers"
    module = [ast.literal_eval(n.value) for c in _moduleTree().body if isinstance(c, ast.ClassDef)
              for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"
              for n in ast.walk(f) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "self.parent.contributors"]
    assert module == [[c.strip() for c in contributors.split(", ")]]
    assert (REPO / "LICENSE").is_file() and "Apache License" in (REPO / "LICENSE").read_text()[:2000]
    screenshot = (REPO / "docs" / "slicer-screenshot.png").read_bytes()
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(screenshot) < 400_000
    width, height = int.from_bytes(screenshot[16:20], "big"), int.from_bytes(screenshot[20:24], "big")
    assert width >= 800 and height >= 300


def test_extension_cmake_metadata_and_pytorch_dependency():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_CATEGORY"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', text)
    assert "add_subdirectory(MVCTEnhance)" in text
    module = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in module and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module


def test_icon_is_a_128_pixel_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "MVCTEnhance.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (128, 128)


# -- start-up safety -----------------------------------------------------------------------------------

def _topLevelImports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_module_file_has_no_top_level_torch_import_and_compiles():
    imports = _topLevelImports(MODULE_FILE)
    assert not {i for i in imports if i.split(".")[0] == "torch"}
    # Engine modules that import torch at their top must not be imported at start-up either.
    assert not {i for i in imports if i.startswith("MVCTEnhanceLib.") and i.split(".")[1] in
                ("inference", "networks", "tinymodel", "features", "losses", "train", "metrics")}
    compile(MODULE_FILE.read_text(), str(MODULE_FILE), "exec")  # Slicer >= 5.10 (Python 3.12): no 3.9 rules


def test_mrml_logic_imports_no_qt_and_loads_without_torch():
    for path in (MODULE_DIR / "MVCTEnhanceMRML").glob("*.py"):
        roots = {i.split(".")[0] for i in _topLevelImports(path)}
        assert not roots & {"qt", "ctk", "torch", "PythonQt"}, path
        assert "slicer.ScriptedLoadableModule" not in _topLevelImports(path), path
    # Import the package with torch made unimportable: what the generic no-main-window test does to the module.
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, %r); import MVCTEnhanceMRML; "
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]; print('ok')"
            % str(MODULE_DIR))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_module_metadata_cites_the_paper_and_uses_translations():
    text = MODULE_FILE.read_text()
    assert "10.1002/mp.15586" in text and "2107.05238" in text and "Ozaki" in text
    assert 'self.parent.title = _("MVCT Enhance")' in text
    assert "self.parent.helpText = _(" in text and "self.parent.acknowledgementText = _(" in text


# -- dependencies, sample data, batch ------------------------------------------------------------------

def test_requirements_file_parses_and_leaves_torch_to_the_pytorch_extension():
    lines = [ln.strip() for ln in (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()]
    requirements = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    names = {r.name.lower() for r in requirements}
    assert "torch" not in names and "scipy" in names
    assert all(str(r.specifier) for r in requirements), "every requirement has a version bound"


def test_sample_data_checksums_match_the_files():
    constants = {}
    for node in _moduleTree().body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("SAMPLE_MVCT_SHA256", "SAMPLE_PLANNING_CT_SHA256", "SAMPLE_MVCT_FILE",
                                      "SAMPLE_PLANNING_CT_FILE"):
                constants[node.targets[0].id] = ast.literal_eval(node.value)
    for fileKey, shaKey in (("SAMPLE_MVCT_FILE", "SAMPLE_MVCT_SHA256"),
                            ("SAMPLE_PLANNING_CT_FILE", "SAMPLE_PLANNING_CT_SHA256")):
        path = REPO / "Resources" / "sample" / constants[fileKey]
        assert path.is_file(), f"sample file {path} is missing"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == constants[shaKey], (
            f"{shaKey} in MVCTEnhance.py does not match {path.name}: update the constant")


def test_batch_options_do_not_clash_with_slicer_options():
    sys.path.insert(0, str(REPO))
    from MVCTEnhanceLib import cli

    parser = cli.build_parser()
    enhance = next(a for a in parser._actions if a.dest == "command").choices["enhance"]
    options = {s for a in enhance._actions for s in a.option_strings} - {"-h", "--help"}
    batch = (MODULE_DIR / "Scripts" / "mvct_enhance_batch.py").read_text()
    options |= set(re.findall(r'add_argument\("(--[\w-]+)"', batch))
    assert "--input" in options and "--output-dir" in options
    assert not options & SLICER_OPTIONS, f"Slicer would consume {sorted(options & SLICER_OPTIONS)}"


def test_github_workflow_is_valid_and_runs_the_self_tests_under_xvfb():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"]["slicer-self-test"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "download.slicer.org" in runs and "installExtensionFromServer(\"PyTorch\"" in runs
    install = runs.index("installTorch(")
    selfTest = runs.index("runUnitTest(['$GITHUB_WORKSPACE/MVCTEnhance'], 'MVCTEnhance')")
    assert install < selfTest, "dependencies must be installed before the --testing run"
    assert "--testing" not in runs[:install]  # --testing skips installs
    for line in runs.splitlines():
        if "runUnitTest" in line:
            assert "--testing" in runs[runs.rfind("Slicer", 0, runs.index(line)) - 200: runs.index(line)]
    assert runs.count("xvfb-run") >= 4
    assert json.dumps(workflow)  # plain data, no YAML anchors surprises


def test_the_shipped_library_files_alone_run_the_batch_job(tmp_path):
    """Install what CMake lists (no training/, synth/ or study/) as Slicer lays it out, and run the
    batch script from there: the engine must not need a floor above it."""
    import shutil
    import subprocess
    import sys

    moduleCMake = MODULE_DIR / "CMakeLists.txt"
    installed = tmp_path / "qt-scripted-modules"
    for rel in _cmakeLists(moduleCMake, "MVCTENHANCELIB_PYTHON_SCRIPTS"):
        (installed / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, installed / rel)
    for rel in _cmakeLists(moduleCMake, "MODULE_PYTHON_SCRIPTS"):
        rel = rel.replace("${MODULE_NAME}", "MVCTEnhance")
        (installed / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MODULE_DIR / rel, installed / rel)
    assert not (installed / "MVCTEnhanceLib" / "training").exists()
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(installed / "Scripts" / "mvct_enhance_batch.py"),
                           "--input", str(REPO / "Resources/sample/sample_mvct.nrrd"), "--output-dir", str(out),
                           "--model", str(REPO / "Resources/models/mvctenhance-tiny-test.pt"), "--device", "cpu",
                           "--no-metrics"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "sample_mvct_enhanced.nrrd").is_file()
    imported = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                               "import MVCTEnhanceLib.cli as c; print(c.__file__)", str(installed)],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert str(installed) in imported.stdout  # the copy ran, not the checkout's package
