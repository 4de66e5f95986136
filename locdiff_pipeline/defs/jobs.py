"""The two jobs. Two, because their assets are partitioned differently: `locdiff_train` (ingest, features,
model; one run over the whole shard range, or a backfill of one run per shard) and `locdiff_evaluate`
(contamination, predictions, report; one run per benchmark partition)."""

from dagster import AssetSelection, define_asset_job

from locdiff_pipeline.defs.assets.evaluation import GROUP as EVALUATION
from locdiff_pipeline.defs.assets.features import GROUP as FEATURES
from locdiff_pipeline.defs.assets.ingest import GROUP as INGEST
from locdiff_pipeline.defs.assets.model import GROUP as MODEL
from locdiff_pipeline.defs.executors import job_executor

TRAIN_SELECTION = AssetSelection.groups(INGEST, FEATURES, MODEL)
EVALUATION_SELECTION = AssetSelection.groups(EVALUATION)

train_job = define_asset_job(
    "locdiff_train",
    selection=TRAIN_SELECTION,
    description="Ingest and embed every catalog dataset, then train (launch it over the whole shard range).",
    executor_def=job_executor(),
)
evaluate_job = define_asset_job(
    "locdiff_evaluate",
    selection=EVALUATION_SELECTION,  # partitioned by benchmark, like its assets
    description="Score one benchmark: contamination, predictions, report.",
    executor_def=job_executor(),
)
