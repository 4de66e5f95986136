"""The package tree is the architecture: these tests keep its layers apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "locdiff_pipeline"
METHOD_MODULES = sorted(p.stem for p in (PACKAGE / "method").glob("*.py") if p.stem != "__init__")
DAGSTER_ALLOWED = {"cli/run.py", "definitions.py"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_method_modules_load_neither_dagster_nor_mlflow():
    """Each method module imported in turn in one fresh interpreter: the first that brings Dagster or MLflow
    in is named (the ones before it loaded neither, so it is the culprit)."""
    code = (
        "import importlib, sys\n"
        f"for name in {METHOD_MODULES!r}:\n"
        "    importlib.import_module(f'locdiff_pipeline.method.{name}')\n"
        "    loaded = sorted({'dagster', 'mlflow'} & set(sys.modules))\n"
        "    if loaded:\n"
        "        print(name, loaded)\n"
        "        break\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == ""
    assert len(METHOD_MODULES) > 20


def test_method_imports_nothing_of_the_project_outside_itself():
    for path in (PACKAGE / "method").glob("*.py"):
        ours = {m for m in _imports(path) if m.startswith("locdiff_pipeline")}
        assert all(m.startswith("locdiff_pipeline.method") for m in ours), (path.name, ours)


def test_only_the_dagster_layer_imports_dagster():
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        if any(m == "dagster" or m.startswith("dagster.") for m in _imports(path)):
            importers.add(path.relative_to(PACKAGE).as_posix())
    assert importers, "the Dagster layer must exist"
    outside = {p for p in importers if not p.startswith("defs/") and p not in DAGSTER_ALLOWED}
    assert outside == set()


def test_lower_layers_never_import_upper_ones():
    """coordination, method <- data <- encoders <- steps/tracking <- defs <- stack, cli and the UI's modules:
    nothing points back up."""
    upper = {
        "coordination": ("method", "data", "encoders", "steps", "tracking", "defs", "stack"),
        "method": ("data", "encoders", "coordination", "steps", "tracking", "defs"),
        "data": ("encoders", "coordination", "steps", "tracking", "defs"),
        "encoders": ("coordination", "steps", "tracking", "defs"),
        "steps": ("defs",),
        "tracking": ("defs", "steps"),
        # the graph sits below what serves it: the stack, the CLI, the UI's guard and pages
        "defs": ("stack", "cli", "ui_pages", "ui_guard", "ui_webserver", "dev_server"),
    }
    for layer, forbidden in upper.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            bad = {m for m in _imports(path) for f in forbidden if m.startswith(f"locdiff_pipeline.{f}")}
            assert bad == set(), (path.relative_to(PACKAGE).as_posix(), bad)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, at any depth of the file (a function's lazy import is still
    an arrow). `from a.b import c` points at the module a.b.c where c is one, else at a.b."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = {m for m in _imports(path) if m in modules}
        # `from pkg import module` names both pkg and pkg.module: the arrow is to the module only
        graph[name] = {t for t in targets if not any(o.startswith(f"{t}.") for o in targets)} - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle_and_passes_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_anywhere_in_the_package():
    """Two modules that import each other (even lazily, inside a function) are one module in two files."""
    graph = _import_graph()
    assert graph["locdiff_pipeline.coordination.project_lock"] >= {"locdiff_pipeline.coordination.database_lock"}
    assert _cycles(graph) == []


def test_the_encoders_and_the_locks_live_outside_the_data_package():
    data = {p.stem for p in (PACKAGE / "data").glob("*.py")}
    moved = {"image_encoder", "scene_descriptors", "open_clip_weights", "encoder_spec", "view_workers", "compat"}
    assert data & (moved | {"project_lock", "database_lock", "processes"}) == set()


def test_no_function_is_longer_than_80_lines():
    """A function past 80 lines is several stages wanting names (the project's code standard)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(PACKAGE).as_posix()}:{node.name} ({lines} lines)")
    assert long == []
