"""The Dagster code location: `dagster dev` (workspace.yaml) and `dagster asset materialize -m
locdiff_pipeline.definitions` load this. It only assembles what `locdiff_pipeline.defs` defines."""

from dagster import Definitions

from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.jobs import (
    ALL_ASSETS,
    evaluate_job,
    evaluate_new_model,
    retrain_on_new_data,
    retrain_schedule,
    train_job,
)
from locdiff_pipeline.defs.resources import default_resources

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[train_job, evaluate_job],
    schedules=[retrain_schedule],
    sensors=[evaluate_new_model, retrain_on_new_data],
    resources=default_resources(),
)
