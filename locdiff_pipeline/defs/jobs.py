"""Jobs and schedules, and the in-process run of the whole graph that `locdiff run` and the tests use."""

import os

from dagster import (
    AssetSelection,
    DagsterInstance,
    DefaultScheduleStatus,
    ExecuteInProcessResult,
    RunRequest,
    define_asset_job,
    materialize,
    schedule,
)

from locdiff_pipeline.defs.assets.evaluation import accuracy_report, predictions
from locdiff_pipeline.defs.assets.features import clip_embeddings, shdd_tables
from locdiff_pipeline.defs.assets.ingest import image_metadata, images
from locdiff_pipeline.defs.assets.model import locdiff_model
from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.partitions import all_shards_tags
from locdiff_pipeline.defs.resources import default_resources

ALL_ASSETS = [image_metadata, images, clip_embeddings, shdd_tables, locdiff_model, predictions, accuracy_report]
SHARDED_ASSETS = [images, clip_embeddings, shdd_tables]

everything = define_asset_job(
    "locdiff_all",
    selection=AssetSelection.all(),
    description="Ingest, embed, encode, train, predict and report (launch it over the whole shard range).",
)


# Every stage is cached by its inputs' fingerprint, so the weekly run recomputes only what new data or
# new settings changed (and retrains when they reach the model).
@schedule(
    name="weekly_retrain",
    job=everything,
    cron_schedule=os.environ.get("LOCDIFF_RETRAIN_CRON", "0 3 * * 1"),
    default_status=DefaultScheduleStatus.RUNNING
    if os.environ.get("LOCDIFF_RETRAIN_SCHEDULE") == "on"
    else DefaultScheduleStatus.STOPPED,
    description="Re-run the graph over every shard weekly (Mondays 03:00 by default; LOCDIFF_RETRAIN_CRON to change).",
)
def retrain_schedule(context) -> RunRequest:
    return RunRequest(tags=all_shards_tags())


def materialize_all(
    resources: dict, instance: DagsterInstance | None = None, selection=None, raise_on_error: bool = True
) -> ExecuteInProcessResult:
    """One in-process run of the graph (or `selection`) with its checks, over every shard; resources not
    given take their defaults."""
    return materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        resources={**default_resources(), **resources},
        instance=instance,
        selection=selection,
        tags=all_shards_tags(),
        raise_on_error=raise_on_error,
    )
