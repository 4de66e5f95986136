"""Assets by stage; each module's assets share one group_name, so the Dagster UI shows the stages."""

from locdiff_pipeline.defs.assets.evaluation import accuracy_report, contamination, predictions
from locdiff_pipeline.defs.assets.features import clip_embeddings, shdd_tables
from locdiff_pipeline.defs.assets.ingest import image_metadata, images
from locdiff_pipeline.defs.assets.model import locdiff_model

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
