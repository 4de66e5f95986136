"""Score every benchmark after each new model."""

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, asset_sensor

from locdiff_pipeline import settings
from locdiff_pipeline.defs.jobs import evaluate_job
from locdiff_pipeline.defs.partitions import BENCHMARKS


@asset_sensor(
    asset_key=AssetKey("locdiff_model"),
    job=evaluate_job,
    name="evaluate_new_model",
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING if settings.current().evaluate_sensor else DefaultSensorStatus.STOPPED,
    description=(
        "After each materialization of locdiff_model, score every registered benchmark (one run per benchmark "
        "partition)."
    ),
)
def evaluate_new_model(context: SensorEvaluationContext, asset_event):
    for benchmark in context.instance.get_dynamic_partitions(BENCHMARKS.name):
        yield RunRequest(run_key=f"{asset_event.run_id}:{benchmark}", partition_key=benchmark)
