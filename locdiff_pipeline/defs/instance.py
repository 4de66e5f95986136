"""The project's Dagster instance folder (`.dagster_home`), shared by `locdiff run` and `dagster dev`.

Its dagster.yaml turns telemetry off (an offline tool; Dagster otherwise prints its notice on every fresh
run). Runs whose process died are failed by the next `locdiff run` (`graph_run.fail_abandoned_runs`); Dagster's
own run monitoring is left off: with the default run launcher it only times out runs that never start.
(`dagster dev` outliving SIGTERM was not this file: it was SIGINT ignored by a background job; `locdiff dev`.)
A dagster.yaml the user wrote is never replaced.
"""

from __future__ import annotations

from pathlib import Path

INSTANCE_FOLDER = ".dagster_home"
INSTANCE_YAML = """\
# The project's Dagster instance (DAGSTER_HOME=.dagster_home), written by `locdiff run`; edit freely.
telemetry:
  enabled: false
"""


def prepare_dagster_home(root: Path) -> Path:
    """`root/.dagster_home`, created with the project's dagster.yaml when it has none."""
    home = Path(root) / INSTANCE_FOLDER
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text(INSTANCE_YAML)
    return home
