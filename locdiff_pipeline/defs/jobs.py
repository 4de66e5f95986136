"""Jobs, the retraining schedule, the sensor that scores every benchmark after training, and the
in-process run of the whole graph that `locdiff run` and the tests use.

Two jobs, because their assets are partitioned differently: `locdiff_train` (ingest, features, model;
one run over the whole shard range, or a backfill of one run per shard) and `locdiff_evaluate`
(contamination, predictions, report; one run per benchmark partition).
"""

import os
from dataclasses import dataclass

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    ExecuteInProcessResult,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    asset_sensor,
    define_asset_job,
    materialize,
    schedule,
    sensor,
)

from locdiff_pipeline.defs.assets.evaluation import GROUP as EVALUATION
from locdiff_pipeline.defs.assets.evaluation import accuracy_report, contamination, predictions
from locdiff_pipeline.defs.assets.features import GROUP as FEATURES
from locdiff_pipeline.defs.assets.features import clip_embeddings, shdd_tables
from locdiff_pipeline.defs.assets.ingest import GROUP as INGEST
from locdiff_pipeline.defs.assets.ingest import image_metadata, images
from locdiff_pipeline.defs.assets.model import GROUP as MODEL
from locdiff_pipeline.defs.assets.model import locdiff_model
from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.partitions import BENCHMARKS, all_shards_tags
from locdiff_pipeline.defs.resources import DatasetsResource, default_resources

ALL_ASSETS = [
    image_metadata,
    images,
    clip_embeddings,
    shdd_tables,
    locdiff_model,
    contamination,
    predictions,
    accuracy_report,
]
SHARDED_ASSETS = [images, clip_embeddings, shdd_tables]
TRAIN_SELECTION = AssetSelection.groups(INGEST, FEATURES, MODEL)
EVALUATION_SELECTION = AssetSelection.groups(EVALUATION)

train_job = define_asset_job(
    "locdiff_train",
    selection=TRAIN_SELECTION,
    description="Ingest and embed every catalog dataset, then train (launch it over the whole shard range).",
)
evaluate_job = define_asset_job(
    "locdiff_evaluate",
    selection=EVALUATION_SELECTION,  # partitioned by benchmark, like its assets
    description="Score one benchmark: contamination, predictions, report.",
)


# Every stage is cached by its inputs' fingerprint, so the weekly run recomputes only what new data or
# new settings changed (and retrains when they reach the model); the sensor then re-scores the benchmarks.
@schedule(
    name="weekly_retrain",
    job=train_job,
    cron_schedule=os.environ.get("LOCDIFF_RETRAIN_CRON", "0 3 * * 1"),
    default_status=DefaultScheduleStatus.RUNNING
    if os.environ.get("LOCDIFF_RETRAIN_SCHEDULE") == "on"
    else DefaultScheduleStatus.STOPPED,
    description=(
        "Re-run ingest, features and training over every shard weekly (Mondays 03:00 by default; "
        "LOCDIFF_RETRAIN_CRON to change)."
    ),
)
def retrain_schedule(context) -> RunRequest:
    return RunRequest(tags=all_shards_tags())


@asset_sensor(
    asset_key=AssetKey("locdiff_model"),
    job=evaluate_job,
    name="evaluate_new_model",
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.STOPPED
    if os.environ.get("LOCDIFF_EVALUATE_SENSOR") == "off"
    else DefaultSensorStatus.RUNNING,
    description=(
        "After each materialization of locdiff_model, score every registered benchmark (one run per benchmark "
        "partition)."
    ),
)
def evaluate_new_model(context: SensorEvaluationContext, asset_event):
    for benchmark in context.instance.get_dynamic_partitions(BENCHMARKS.name):
        yield RunRequest(run_key=f"{asset_event.run_id}:{benchmark}", partition_key=benchmark)


@sensor(
    job=train_job,
    name="retrain_on_new_data",
    minimum_interval_seconds=int(os.environ.get("LOCDIFF_DATA_SENSOR_INTERVAL", "300")),
    default_status=DefaultSensorStatus.RUNNING
    if os.environ.get("LOCDIFF_DATA_SENSOR") == "on"
    else DefaultSensorStatus.STOPPED,
    description=(
        "Retrain when the training dataset's source files change (metadata CSV or archives: size and mtime), "
        "besides the weekly schedule; LOCDIFF_DATA_SENSOR=on starts it on."
    ),
)
def retrain_on_new_data(context: SensorEvaluationContext, datasets: DatasetsResource):
    entry = datasets.get().training
    current = entry.source_fingerprint(datasets.recipe())
    if context.cursor is None:  # the first look: remember what is there, train nothing yet
        context.update_cursor(current)
        return SkipReason(f"watching {entry.name}: its source files are recorded")
    if context.cursor == current:
        return SkipReason(f"{entry.name}: source files unchanged")
    context.update_cursor(current)
    return RunRequest(run_key=f"{entry.name}:{current}", tags={**all_shards_tags(), "locdiff/trigger": "new data"})


@dataclass
class GraphRun:
    """The in-process runs of one `materialize_all`: the training run, then one run per benchmark."""

    results: list[ExecuteInProcessResult]

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def get_asset_check_evaluations(self) -> list:
        return [e for r in self.results for e in r.get_asset_check_evaluations()]

    def get_asset_materialization_events(self) -> list:
        return [e for r in self.results for e in r.get_asset_materialization_events()]

    def metadata(self, asset: str, partition: str | None = None) -> dict:
        """The metadata of an asset's materialization in these runs (of one partition, if given)."""
        for event in self.get_asset_materialization_events():
            materialization = event.event_specific_data.materialization
            if materialization.asset_key.path[-1] == asset and (
                partition is None or materialization.partition == partition
            ):
                return materialization.metadata
        raise KeyError(f"{asset} ({partition}) was not materialized in these runs")


def materialize_all(
    resources: dict,
    instance: DagsterInstance | None = None,
    selection=None,
    raise_on_error: bool = True,
    tags: dict[str, str] | None = None,
    console_level: str | None = None,
) -> GraphRun:
    """The graph in process, with its checks, as the named jobs: one `locdiff_train` run of ingest, features
    and training over every shard, then one `locdiff_evaluate` run per benchmark of the catalog (what
    `dagster dev`'s backfill and sensor do). With `selection`, only that selection of the training side
    (an ad-hoc run). Resources not given take their defaults; `tags` go on every run; `console_level`
    (e.g. WARNING) quiets the terminal's copy of the run log (the instance keeps every event)."""
    resources = {**default_resources(), **resources}
    run_config = {"loggers": {"console": {"config": {"log_level": console_level}}}} if console_level else None
    instance = instance or DagsterInstance.ephemeral()
    training_tags = {**all_shards_tags(), **(tags or {})}
    if selection is not None:
        everything = [*ALL_ASSETS, *ALL_CHECKS]
        run = materialize(
            everything,
            resources=resources,
            instance=instance,
            selection=selection,
            tags=training_tags,
            raise_on_error=raise_on_error,
            run_config=run_config,
        )
        return GraphRun([run])
    definitions = Definitions(
        assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=[train_job, evaluate_job], resources=resources
    )
    first = definitions.resolve_job_def(train_job.name).execute_in_process(
        instance=instance, tags=training_tags, raise_on_error=raise_on_error, run_config=run_config
    )
    results = [first]
    if first.success:
        evaluate = definitions.resolve_job_def(evaluate_job.name)
        for benchmark in resources["datasets"].get().benchmark_names:
            results.append(
                evaluate.execute_in_process(
                    instance=instance,
                    partition_key=benchmark,
                    tags=tags,
                    raise_on_error=raise_on_error,
                    run_config=run_config,
                )
            )
    return GraphRun(results)


def fail_abandoned_runs(instance: DagsterInstance) -> list[str]:
    """Mark as failed the runs still STARTED or STARTING whose process (recorded in its tags by
    `locdiff run`) is gone: a run killed from outside (SIGKILL, a lost machine) otherwise stays STARTED in
    Dagster for ever. Runs of live processes and runs without the tags are left alone. Returns their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    from locdiff_pipeline.data.processes import owner_is_gone

    abandoned = [
        run
        for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
        if owner_is_gone(run.tags)
    ]
    for run in abandoned:
        instance.report_run_failed(run, message=f"its process (pid {run.tags.get('locdiff.pid')}) is gone")
    return [run.run_id for run in abandoned]
