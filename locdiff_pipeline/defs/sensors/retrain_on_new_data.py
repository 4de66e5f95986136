"""Retrain when the training dataset's source files change."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from locdiff_pipeline import settings
from locdiff_pipeline.defs import run_tags
from locdiff_pipeline.defs.jobs import train_job
from locdiff_pipeline.defs.partitions import all_shards_tags
from locdiff_pipeline.defs.resources import DatasetsResource

_SETTINGS = settings.current()  # read once, when the definitions load


@sensor(
    job=train_job,
    name="retrain_on_new_data",
    minimum_interval_seconds=_SETTINGS.data_sensor_interval,
    default_status=DefaultSensorStatus.RUNNING if _SETTINGS.data_sensor else DefaultSensorStatus.STOPPED,
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
    return RunRequest(run_key=f"{entry.name}:{current}", tags={**all_shards_tags(), run_tags.TRIGGER: "new data"})
