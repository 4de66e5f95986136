"""Model stage: train LocDiff, log it to MLflow and register it."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from locdiff_pipeline.data import shards
from locdiff_pipeline.defs import run_tags, stages
from locdiff_pipeline.defs.assets.features import image_embeddings, shdd_tables
from locdiff_pipeline.defs.executors import TRAINING_RESOURCES
from locdiff_pipeline.defs.resources import (
    DatasetsResource,
    EncoderResource,
    MlflowResource,
    TrainingResource,
    WarehouseResource,
)
from locdiff_pipeline.encoders.image_encoder import encoder_note
from locdiff_pipeline.method import metrics
from locdiff_pipeline.method.devices import resolve_device
from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE
from locdiff_pipeline.steps.locdiff_model import (
    TRAINING_VERSION,
    chance_validation_score,
    train_and_register,
    write_latest,
)
from locdiff_pipeline.steps.progress import Progress

GROUP = stages.MODEL


class ModelRunConfig(Config):
    force_retrain: bool = False


@asset(
    kinds={"pytorch", "mlflow"},
    code_version=str(TRAINING_VERSION),
    group_name=GROUP,
    deps=[image_embeddings, shdd_tables],
    op_tags=TRAINING_RESOURCES,  # on a dask cluster, only the workers that serve training (the GPU machine)
    description=(
        "Train LocDiff (CUDA when present), log to MLflow, register a `locdiff` version, promote `champion` if better."
    ),
)
def locdiff_model(
    context: AssetExecutionContext,
    config: ModelRunConfig,
    warehouse: WarehouseResource,
    datasets: DatasetsResource,
    training: TrainingResource,
    mlflow: MlflowResource,
    encoder: EncoderResource,
) -> MaterializeResult:
    store = warehouse.get()
    training_dataset = datasets.training_name()
    run_tags.add_missing(context, {run_tags.DATASET: training_dataset, run_tags.ENCODER: encoder.spec().describe()})
    embed_dim = shards.manifest(store, EMBEDDINGS_TABLE, training_dataset)["encoder"]["embed_dim"]
    model_config = training.config(embed_dim)

    progress = Progress("training", model_config.steps, context.log.info, unit="steps")

    def log(step: int, record: dict) -> None:
        progress.advance(step - progress.done)
        if "val_acc_750km" in record or step == model_config.steps:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))

    trained = train_and_register(
        store,
        training_dataset,
        model_config,
        log=log,
        force=config.force_retrain,
        tracking_uri=mlflow.uri(),
        encoder_checkpoint=encoder.weights_file(),
        loading=training.loading,
    )
    write_latest(store, trained, training_dataset)
    table = "| scale | validation accuracy |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:.3f} |" for k, v in trained.validation.items() if k.startswith("acc_")
    )
    return MaterializeResult(
        metadata={
            "training_dataset": training_dataset,
            "model_version": trained.version,
            "mlflow_run_id": trained.run_id,
            "promoted_to_champion": trained.promoted,
            "champion_version": trained.champion_version if trained.champion_version is not None else -1,
            "validation": MetadataValue.md(table),
            "val_median_km": float(trained.validation.get("median_km", float("nan"))),
            "val_score": metrics.validation_score(trained.validation),
            "val_score_of_chance": chance_validation_score(store, training_dataset),
            "device": str(resolve_device(model_config.device)),
            "cached": trained.cached,
            "train_seconds": round(trained.seconds, 1),
            "encoder": str(trained.encoder.get("label", "")),
            "encoder_note": encoder_note(trained.encoder),
            **{name: MetadataValue.url(url) for name, url in mlflow.links(trained.run_id, trained.version).items()},
        }
    )
