"""The two jobs. Two, because their assets are partitioned differently: `locdiff_train` (ingest, features,
model; one run over the whole shard range, or a backfill of one run per shard) and `locdiff_evaluate`
(contamination, predictions, report; one run per benchmark partition)."""

from dagster import AssetSelection, define_asset_job

from locdiff_pipeline.defs.executors import job_executor
from locdiff_pipeline.defs.run_tags import LAUNCHED_IN_DAGSTER
from locdiff_pipeline.defs.stages import EVALUATE_JOB, EVALUATION, FEATURES, INGEST, MODEL, TRAIN_JOB

TRAIN_SELECTION = AssetSelection.groups(INGEST, FEATURES, MODEL)
EVALUATION_SELECTION = AssetSelection.groups(EVALUATION)

train_job = define_asset_job(
    TRAIN_JOB,
    selection=TRAIN_SELECTION,
    description="Ingest and embed every catalog dataset, then train (launch it over the whole shard range).",
    executor_def=job_executor(),
    run_tags=LAUNCHED_IN_DAGSTER,
)
evaluate_job = define_asset_job(
    EVALUATE_JOB,
    selection=EVALUATION_SELECTION,  # partitioned by benchmark, like its assets
    description="Score one benchmark: contamination, predictions, report.",
    executor_def=job_executor(),
    run_tags=LAUNCHED_IN_DAGSTER,
)
