"""The library's house rules, read from its own imports: floors, no circles, few function-level imports.

Floors, lowest first: engine (what Slicer ships) < synth < training < study < filejobs < cli. A module
may import its own floor and the floors below, never one above.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "MVCTEnhanceLib"
FLOORS = ("engine", "synth", "training", "study", "filejobs", "cli")
#: Imported inside functions only where start-up time needs it (Slicer loads the engine at start-up;
#: bm3d is an optional extra). cli.py imports each command's module when the command runs.
LAZY_ALLOWED = {"torch", "matplotlib", "SimpleITK", "bm3d"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts}


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself: above everything (lazy public names)
        return len(FLOORS)
    return FLOORS.index(parts[1])


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The library modules an import statement names (submodules of ``from pkg import sub`` too)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "MVCTEnhanceLib"]
    if node.level:
        package = module.split(".")
        is_package = MODULES[module].name == "__init__.py"
        base = package[: len(package) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("MVCTEnhanceLib"):
        return []
    names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return names or [target]


def _imports() -> list[tuple[str, str, int, bool, ast.AST]]:
    """(importer, imported module or root package, line, inside a function, node) for every import."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        inside: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _resolve(module, node)
                if not targets:
                    roots = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    targets = [r.split(".")[0] for r in roots]
                for t in targets:
                    found.append((module, t, node.lineno, id(node) in inside, node))
    return found


IMPORTS = _imports()


def test_the_floors_exist():
    assert {m.split(".")[1] for m in MODULES if m.count(".") >= 1} == set(FLOORS)


def test_no_module_imports_a_floor_above_its_own():
    upward = [f"{a} (floor {FLOORS[_floor(a)] if _floor(a) < len(FLOORS) else 'package'}) imports {b}, line {line}"
              for a, b, line, _, _ in IMPORTS if b in MODULES and _floor(b) > _floor(a)]
    assert upward == []


def test_no_import_circles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for a, b, *_ in IMPORTS:
        if b in MODULES and b != a and not (MODULES[b].name == "__init__.py" and a.startswith(b + ".")):
            graph[a].add(b)
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_function_level_imports_only_where_start_up_needs_them():
    lazy = [f"{a}:{line} imports {b} inside a function" for a, b, line, inside, _ in IMPORTS
            if inside and a != "MVCTEnhanceLib.cli" and b.split(".")[0] not in LAZY_ALLOWED]
    assert lazy == []


def test_the_cli_imports_nothing_of_training_or_study_to_build_its_parser():
    """Start-up and the Slicer extension (which ships the engine, filejobs and cli only)."""
    top = [b for a, b, _, inside, _ in IMPORTS if a == "MVCTEnhanceLib.cli" and not inside and b in MODULES]
    assert [b for b in top if _floor(b) not in (FLOORS.index("engine"), FLOORS.index("filejobs"))] == []


def test_the_check_would_catch_an_upward_import(tmp_path):
    """The resolver sees relative imports at every depth (a check that cannot fail checks nothing)."""
    node = ast.parse("from ..study.report import markdown").body[0]
    assert _resolve("MVCTEnhanceLib.engine.job", node) == ["MVCTEnhanceLib.study.report"]
    assert _floor("MVCTEnhanceLib.study.report") > _floor("MVCTEnhanceLib.engine.job")
    node = ast.parse("from . import stats").body[0]
    assert _resolve("MVCTEnhanceLib.study.report", node) == ["MVCTEnhanceLib.study.stats"]


@pytest.mark.parametrize("path", ["README.md", "docs", "MVCTEnhanceLib", "MVCTEnhance", "Resources"])
def test_nothing_cites_files_outside_the_repository(path):
    """The method and the talk are cited as the paper and the talk, not as files of a workspace."""
    pattern = re.compile(r"METHOD\.md|DESIGN\.md|\.\./shared|seed/000_")
    root = REPO / path
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in (".py", ".md", ".sh", ".txt")]
    hits = [f"{p.relative_to(REPO)}:{i + 1}" for p in files for i, line in enumerate(p.read_text().splitlines())
            if pattern.search(line)]
    assert hits == []


#: Applications on top of the library: the Slicer module (and its MRML code) and the web page.
APPLICATION_ROOTS = {"slicer", "vtk", "vtkmodules", "qt", "ctk", "trame", "trame_client", "trame_server",
                     "trame_vuetify", "trame_rca", "trame_slicer", "slicer_layer_dm", "MVCTEnhanceMRML",
                     "MVCTEnhance", "MVCTEnhanceWeb", "playwright"}


def _enclosingFunctions(module: str) -> dict[int, str]:
    """line of an import -> name of the innermost function it is in, for one library module."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    where: dict[int, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(fn):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    where[n.lineno] = fn.name  # ast.walk is breadth-first: inner functions come later
    return where


def test_the_library_imports_no_slicer_trame_or_application_code():
    """The library is the floor of the Slicer module and the web page, never the other way round. The
    one exception: ``mvct-enhance serve`` imports the web page when it runs (and only there)."""
    found = []
    for a, b, line, inside, node in IMPORTS:
        if b.split(".")[0] not in APPLICATION_ROOTS:
            continue
        if (a == "MVCTEnhanceLib.cli" and b.split(".")[0] == "MVCTEnhanceWeb" and inside
                and _enclosingFunctions(a).get(line) == "_cmd_serve"):
            continue
        found.append(f"{a}:{line} imports {b}")
    assert found == []


def test_the_web_page_package_imports_nothing_heavy_to_say_what_is_missing():
    """``MVCTEnhanceWeb/__init__.py`` runs before the extra is known to be there: standard library only."""
    path = REPO / "MVCTEnhanceWeb" / "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    roots = {(a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots
