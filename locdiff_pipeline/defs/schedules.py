"""The retraining schedule."""

from dagster import DefaultScheduleStatus, RunRequest, schedule

from locdiff_pipeline import settings
from locdiff_pipeline.defs import run_tags
from locdiff_pipeline.defs.jobs import train_job
from locdiff_pipeline.defs.partitions import all_shards_tags

_SETTINGS = settings.current()  # read once, when the definitions load


# Every stage is cached by its inputs' fingerprint, so the weekly run recomputes only what new data or
# new settings changed (and retrains when they reach the model); the sensor then re-scores the benchmarks.
@schedule(
    name="weekly_retrain",
    job=train_job,
    cron_schedule=_SETTINGS.retrain_cron,
    default_status=DefaultScheduleStatus.RUNNING if _SETTINGS.retrain_schedule else DefaultScheduleStatus.STOPPED,
    description=(
        "Re-run ingest, features and training over every shard weekly (Mondays 03:00 by default; "
        "LOCDIFF_RETRAIN_CRON to change)."
    ),
)
def retrain_schedule(context) -> RunRequest:
    return RunRequest(tags={**all_shards_tags(), run_tags.TRIGGER: "weekly_retrain schedule"})
