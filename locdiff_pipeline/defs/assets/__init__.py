"""Assets by stage; each module's assets share one group_name, so the Dagster UI shows the stages."""

from locdiff_pipeline.defs.assets.evaluation import accuracy_report, contamination, predictions
from locdiff_pipeline.defs.assets.features import image_embeddings, shdd_tables
from locdiff_pipeline.defs.assets.ingest import image_metadata, images
from locdiff_pipeline.defs.assets.model import locdiff_model

ALL_ASSETS = [
    image_metadata,
    images,
    image_embeddings,
    shdd_tables,
    locdiff_model,
    contamination,
    predictions,
    accuracy_report,
]
SHARDED_ASSETS = [images, image_embeddings, shdd_tables]
