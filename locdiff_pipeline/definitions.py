"""The Dagster code location: assets, checks, resources, the full job and the retraining schedule.

`dagster dev` (workspace.yaml) and `dagster asset materialize -m locdiff_pipeline.definitions` load this.
"""


import os

from dagster import AssetSelection, DefaultScheduleStatus, Definitions, ScheduleDefinition, define_asset_job

from locdiff_pipeline.assets import accuracy_report, clip_embeddings, images, locdiff_model, predictions, shdd_tables
from locdiff_pipeline.checks import ALL_CHECKS
from locdiff_pipeline.resources import DatasetResource, EncoderResource, EvaluationResource, MlflowResource, TrainingResource, WarehouseResource

ALL_ASSETS = [images, clip_embeddings, shdd_tables, locdiff_model, predictions, accuracy_report]

# Every stage is cached by its inputs' fingerprint, so the weekly run recomputes only what new data or
# new settings changed (and retrains when they reach the model).
everything = define_asset_job("locdiff_all", selection=AssetSelection.all(), description="Ingest, embed, encode, train, predict and report.")
retrain_schedule = ScheduleDefinition(
    name="weekly_retrain",
    job=everything,
    cron_schedule=os.environ.get("LOCDIFF_RETRAIN_CRON", "0 3 * * 1"),
    default_status=DefaultScheduleStatus.RUNNING if os.environ.get("LOCDIFF_RETRAIN_SCHEDULE") == "on" else DefaultScheduleStatus.STOPPED,
    description="Re-run the graph weekly (Mondays 03:00 by default; LOCDIFF_RETRAIN_CRON to change).",
)


def default_resources() -> dict:
    return {"warehouse": WarehouseResource(), "dataset": DatasetResource(), "encoder": EncoderResource(), "training": TrainingResource(), "evaluation": EvaluationResource(), "mlflow": MlflowResource()}


defs = Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=[everything], schedules=[retrain_schedule], resources=default_resources())
