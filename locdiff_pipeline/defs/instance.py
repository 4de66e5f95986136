"""The project's Dagster instance folder (`.dagster_home`), shared by `locdiff run` and `dagster dev`.

Its dagster.yaml turns telemetry off (an offline tool; Dagster otherwise prints its notice on every fresh
run) and enables run monitoring (runs that never start are failed; `locdiff run` itself fails runs whose process died,
see `jobs.fail_abandoned_runs`). A dagster.yaml the user wrote is never replaced.
"""

from __future__ import annotations

from pathlib import Path

INSTANCE_FOLDER = ".dagster_home"
INSTANCE_YAML = """\
# The project's Dagster instance (DAGSTER_HOME=.dagster_home), written by `locdiff run`; edit freely.
telemetry:
  enabled: false
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
"""


def prepare_dagster_home(root: Path) -> Path:
    """`root/.dagster_home`, created with the project's dagster.yaml when it has none."""
    home = Path(root) / INSTANCE_FOLDER
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text(INSTANCE_YAML)
    return home
