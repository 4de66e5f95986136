"""Evaluation stage: every method's benchmark predictions, and the DuckDB accuracy report."""

import base64
import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.image_encoder import encoder_note
from locdiff_pipeline.data.warehouse import fingerprint
from locdiff_pipeline.defs.assets.features import clip_embeddings
from locdiff_pipeline.defs.assets.model import locdiff_model
from locdiff_pipeline.defs.resources import DatasetResource, EvaluationResource, TrainingResource, WarehouseResource
from locdiff_pipeline.method.devices import resolve_device
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.steps import report_sql
from locdiff_pipeline.steps.accuracy_report import build_report
from locdiff_pipeline.steps.clip_embeddings import EMBEDDINGS_TABLE
from locdiff_pipeline.steps.locdiff_model import read_latest
from locdiff_pipeline.steps.prediction_table import PREDICTIONS_TABLE, predictions_are_current, write_predictions
from locdiff_pipeline.steps.predictions import METHODS, predict_split

GROUP = "evaluation"


@asset(
    group_name=GROUP,
    deps=[locdiff_model, clip_embeddings],
    description=(
        "Benchmark predictions of LocDiff (16 views, spherical centre, 90% region), LocDiff-H and the kNN, "
        "cell-classification and regression baselines."
    ),
)
def predictions(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    dataset: DatasetResource,
    training: TrainingResource,
    evaluation: EvaluationResource,
) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    latest = read_latest(store)
    version = latest["version"]
    embeddings_manifest = shards.manifest(store, EMBEDDINGS_TABLE, dataset.name)
    views = embeddings_manifest["test_views"]
    settings = evaluation.settings()
    key = fingerprint(
        version,
        latest["run_id"],
        embeddings_manifest["fingerprint"],
        evaluation.split,
        evaluation.samples_per_view,
        settings.to_dict(),
        METHODS,
    )
    if predictions_are_current(store, dataset.name, version, key):
        manifest = store.manifest(PREDICTIONS_TABLE, dataset=dataset.name, model_version=version)
        return MaterializeResult(
            metadata={
                "rows": manifest["rows"],
                "model_version": version,
                "methods": MetadataValue.json(manifest["methods"]),
                "cached": True,
            }
        )
    model = LocDiffModel.load(latest["checkpoint"], device=resolve_device(training.config().device))
    split = predict_split(store, dataset.name, evaluation.split, model, views, evaluation.samples_per_view, settings)
    manifest = {
        "fingerprint": key,
        "methods": list(METHODS),
        "views": views,
        "chosen": split.chosen,
        "locdiff_h_fallback_share": split.hybrid_fallback_share,
    }
    rows = write_predictions(store, dataset.name, version, split.tables, split.samples, manifest)
    context.log.info(
        f"{rows} prediction rows; chosen on validation: {split.chosen}; LocDiff-H fell back on "
        f"{100 * split.hybrid_fallback_share:.1f}% of images"
    )
    return MaterializeResult(
        metadata={
            "rows": rows,
            "model_version": version,
            "methods": MetadataValue.json(list(METHODS)),
            "chosen_on_validation": MetadataValue.json(split.chosen),
            "locdiff_h_fallback_share": split.hybrid_fallback_share,
            "cached": False,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(
    group_name=GROUP,
    deps=[predictions],
    description=(
        "Every method side by side: accuracy at 1/25/200/750/2500 km and median error (DuckDB over the predictions "
        "Parquet), error CDFs, error map, calibration, density maps."
    ),
)
def accuracy_report(
    context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource
) -> MaterializeResult:
    store = warehouse.get()
    latest = read_latest(store)
    note = encoder_note(latest["encoder"])
    bundle = build_report(store, dataset.name, latest["version"], note)
    context.log.info("\n" + report_sql.text_table(bundle.rows) + f"\n{note}")
    images = {
        name.removesuffix(".png"): MetadataValue.md(
            f"![{name}](data:image/png;base64,{base64.b64encode(data).decode()})"
        )
        for name, data in bundle.pngs.items()
    }
    return MaterializeResult(
        metadata={
            "accuracy": MetadataValue.md(bundle.markdown),
            **images,
            "report_folder": MetadataValue.path(str(bundle.folder)),
            "encoder_note": note,
        }
    )
