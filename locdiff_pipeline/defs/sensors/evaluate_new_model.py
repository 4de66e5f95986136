"""Score every benchmark after each new model, once: a benchmark the new version has already been scored on
(by `locdiff run`, or an earlier run of this sensor) is skipped, so starting `locdiff dev` after a finished
`locdiff run` launches nothing."""

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    asset_sensor,
)

from locdiff_pipeline import settings
from locdiff_pipeline.defs import run_tags
from locdiff_pipeline.defs.jobs import evaluate_job
from locdiff_pipeline.defs.partitions import BENCHMARKS

PREDICTIONS = AssetKey("predictions")


@asset_sensor(
    asset_key=AssetKey("locdiff_model"),
    job=evaluate_job,
    name="evaluate_new_model",
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING if settings.current().evaluate_sensor else DefaultSensorStatus.STOPPED,
    description=(
        "After each materialization of locdiff_model, score every registered benchmark that this model version "
        "has not been scored on yet (one run per benchmark partition)."
    ),
)
def evaluate_new_model(context: SensorEvaluationContext, asset_event):
    metadata = asset_event.asset_materialization.metadata
    version = _value(metadata.get("model_version"))
    tags = {
        run_tags.TRIGGER: "evaluate_new_model sensor",
        run_tags.DATASET: str(_value(metadata.get("training_dataset")) or ""),
        run_tags.ENCODER: str(_value(metadata.get("encoder")) or ""),
        run_tags.MODEL_VERSION: str(version),
    }
    benchmarks = context.instance.get_dynamic_partitions(BENCHMARKS.name)
    new = [b for b in benchmarks if version is None or scored_version(context.instance, b) != version]
    if not new:
        yield SkipReason(f"model version {version} is already scored on every benchmark")
    for benchmark in new:
        yield RunRequest(run_key=f"{asset_event.run_id}:{benchmark}", partition_key=benchmark, tags=tags)


def scored_version(instance: DagsterInstance, benchmark: str) -> int | None:
    """The model version of the benchmark's latest `predictions` materialization (None if never scored)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=PREDICTIONS, asset_partitions=[benchmark]), limit=1
    ).records
    if not records:
        return None
    return _value(records[0].asset_materialization.metadata.get("model_version"))


def _value(entry):
    """A metadata entry's plain value (None when absent)."""
    return None if entry is None else getattr(entry, "value", entry)
