"""The `locdiff/*` tags on the runs of the named jobs, whoever launched them: `locdiff run`, a sensor, the
schedule, or a person in the UI, so one filter (e.g. `locdiff/dataset`) finds them all.

The launcher names itself (TRIGGER; the jobs' own tag says "launched in Dagster" where no launcher said
more). What a run is about (training dataset, encoder, model version) its assets add where the launcher
could not know it, as the UI cannot: a tag already there is never replaced."""

from __future__ import annotations

from dagster import AssetExecutionContext

TRIGGER = "locdiff/trigger"
DATASET = "locdiff/dataset"
ENCODER = "locdiff/encoder"
MODEL_VERSION = "locdiff/model_version"
LAUNCHED_IN_DAGSTER = {TRIGGER: "launched in Dagster"}  # the jobs' run tags: a launcher's own TRIGGER wins


def add_missing(context: AssetExecutionContext, tags: dict[str, str]) -> None:
    """Add to the running run those of `tags` it lacks (empty values skipped); the launcher's stay."""
    present = context.run.tags
    missing = {key: value for key, value in {**LAUNCHED_IN_DAGSTER, **tags}.items() if value and key not in present}
    if missing:
        context.instance.add_run_tags(context.run.run_id, missing)
