"""Where the project keeps its run-time state: the warehouse and MLflow, under the project root.

The root is $LOCDIFF_HOME, else the current directory (run commands from the repository root), so
`locdiff run`, `dagster dev`, `locdiff predict` and `mlflow ui` all agree without configuration.
"""

from __future__ import annotations

from pathlib import Path

from locdiff_pipeline import settings

REPORTS = "reports"  # the warehouse's folder of benchmark reports: REPORTS/BENCHMARK/vN/
FIGURES_URL = "/locdiff/reports/"  # where the UI's guard serves their figures (ui_pages.py)


def project_root() -> Path:
    return settings.current().home or Path.cwd().resolve()


def warehouse_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "warehouse"


def reports_dir(root: Path | None = None) -> Path:
    return warehouse_dir(root) / REPORTS


def figure_url(benchmark: str, version: int, name: str) -> str:
    """Where the UI's guard serves a report's figure `name` (e.g. error_cdf.png): FIGURES_URL, then the
    figure's path under the reports folder."""
    return f"{FIGURES_URL}{benchmark}/v{version}/{name}"


def mlruns_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "mlruns"


def default_tracking_uri(root: Path | None = None) -> str:
    """SQLite backend (MLflow's recommendation, needed for the registry) inside mlruns/."""
    return f"sqlite:///{mlruns_dir(root) / 'mlflow.db'}"
