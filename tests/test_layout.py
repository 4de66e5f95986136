"""The package tree is the architecture: these tests keep its layers apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "locdiff_pipeline"
METHOD_MODULES = sorted(p.stem for p in (PACKAGE / "method").glob("*.py") if p.stem != "__init__")
DAGSTER_ALLOWED = {"cli.py", "definitions.py"}


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


@pytest.mark.parametrize("module", METHOD_MODULES)
def test_method_modules_load_neither_dagster_nor_mlflow(module):
    code = f"import sys, locdiff_pipeline.method.{module}; print(sorted({{'dagster', 'mlflow'}} & set(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


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
    """method <- data <- steps/tracking <- defs: nothing points back up."""
    upper = {
        "method": ("data", "steps", "tracking", "defs"),
        "data": ("steps", "tracking", "defs"),
        "steps": ("defs",),
        "tracking": ("defs", "steps"),
    }
    for layer, forbidden in upper.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            bad = {m for m in _imports(path) for f in forbidden if m.startswith(f"locdiff_pipeline.{f}")}
            assert bad == set(), (path.relative_to(PACKAGE).as_posix(), bad)


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
