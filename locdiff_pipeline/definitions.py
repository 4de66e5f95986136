"""The Dagster code location: `dagster dev` (workspace.yaml) and `dagster asset materialize -m
locdiff_pipeline.definitions` load this. It only assembles what `locdiff_pipeline.defs` defines."""

from dagster import Definitions

from locdiff_pipeline.defs.assets import ALL_ASSETS
from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.executors import job_executor
from locdiff_pipeline.defs.jobs import evaluate_job, train_job
from locdiff_pipeline.defs.resources import default_resources
from locdiff_pipeline.defs.schedules import retrain_schedule
from locdiff_pipeline.defs.sensors import ALL_SENSORS

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[train_job, evaluate_job],
    schedules=[retrain_schedule],
    sensors=ALL_SENSORS,
    resources=default_resources(),
    executor=job_executor(),  # the UI's own asset runs and backfills too: a dask cluster when one is named
)
