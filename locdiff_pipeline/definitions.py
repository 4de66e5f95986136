"""The Dagster code location: assets, checks, resources, the full job and the retraining schedule.

`dagster dev` (workspace.yaml) and `dagster asset materialize -m locdiff_pipeline.definitions` load this.
A run of the whole graph covers the whole shard range (`all_shards_tags`); a run of one shard of the
sharded assets is a backfill's unit of work.
"""


import os

from dagster import AssetSelection, DagsterInstance, DefaultScheduleStatus, Definitions, ExecuteInProcessResult, RunRequest, define_asset_job, materialize, schedule
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from locdiff_pipeline.assets import SHARDS, accuracy_report, clip_embeddings, image_metadata, images, locdiff_model, predictions, shdd_tables
from locdiff_pipeline.checks import ALL_CHECKS
from locdiff_pipeline.resources import DatasetResource, EncoderResource, EvaluationResource, MlflowResource, TrainingResource, WarehouseResource

ALL_ASSETS = [image_metadata, images, clip_embeddings, shdd_tables, locdiff_model, predictions, accuracy_report]
SHARDED_ASSETS = [images, clip_embeddings, shdd_tables]


def all_shards_tags() -> dict[str, str]:
    """Run tags that make one run cover every shard (the sharded assets loop over them in one step each)."""
    keys = SHARDS.get_partition_keys()
    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


everything = define_asset_job("locdiff_all", selection=AssetSelection.all(), description="Ingest, embed, encode, train, predict and report (launch it over the whole shard range).")


# Every stage is cached by its inputs' fingerprint, so the weekly run recomputes only what new data or
# new settings changed (and retrains when they reach the model).
@schedule(
    name="weekly_retrain",
    job=everything,
    cron_schedule=os.environ.get("LOCDIFF_RETRAIN_CRON", "0 3 * * 1"),
    default_status=DefaultScheduleStatus.RUNNING if os.environ.get("LOCDIFF_RETRAIN_SCHEDULE") == "on" else DefaultScheduleStatus.STOPPED,
    description="Re-run the graph over every shard weekly (Mondays 03:00 by default; LOCDIFF_RETRAIN_CRON to change).",
)
def retrain_schedule(context) -> RunRequest:
    return RunRequest(tags=all_shards_tags())


def default_resources() -> dict:
    return {"warehouse": WarehouseResource(), "dataset": DatasetResource(), "encoder": EncoderResource(), "training": TrainingResource(), "evaluation": EvaluationResource(), "mlflow": MlflowResource()}


def materialize_all(resources: dict, instance: DagsterInstance | None = None, selection=None, raise_on_error: bool = True) -> ExecuteInProcessResult:
    """One in-process run of the graph (or `selection`) with its checks, over every shard; resources not
    given take their defaults."""
    return materialize([*ALL_ASSETS, *ALL_CHECKS], resources={**default_resources(), **resources}, instance=instance, selection=selection, tags=all_shards_tags(), raise_on_error=raise_on_error)


defs = Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=[everything], schedules=[retrain_schedule], resources=default_resources())
