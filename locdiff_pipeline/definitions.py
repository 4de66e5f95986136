"""The Dagster code location: `dagster dev` (workspace.yaml) and `dagster asset materialize -m
locdiff_pipeline.definitions` load this. It only assembles what `locdiff_pipeline.defs` defines."""

from dagster import Definitions

from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.jobs import ALL_ASSETS, everything, retrain_schedule
from locdiff_pipeline.defs.resources import default_resources

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[everything],
    schedules=[retrain_schedule],
    resources=default_resources(),
)
