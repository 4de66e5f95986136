"""Dagster assets: thin glue over the step modules, each cached by its inputs' fingerprint.

images -> clip_embeddings -> shdd_tables -> locdiff_model -> predictions -> accuracy_report
"""


import base64
import time

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from locdiff_pipeline import report as reports
from locdiff_pipeline.devices import resolve_device
from locdiff_pipeline.embedding_table import build_embeddings
from locdiff_pipeline.image_encoder import encoder_note
from locdiff_pipeline.ingest import ingest
from locdiff_pipeline.model import LocDiffModel
from locdiff_pipeline.evaluation import METHODS, predict_split
from locdiff_pipeline.report_bundle import build_report
from locdiff_pipeline.prediction_table import PREDICTIONS_TABLE, predictions_are_current, write_predictions
from locdiff_pipeline.resources import DatasetResource, EncoderResource, EvaluationResource, MlflowResource, TrainingResource, WarehouseResource
from locdiff_pipeline.shdd_table import build_shdd_table
from locdiff_pipeline.train_step import read_latest, train_and_register, write_latest
from locdiff_pipeline.warehouse import fingerprint

GROUP = "locdiff"


@asset(group_name=GROUP, description="Dataset ingest (MP16 layout: metadata CSV + images) into warehouse/images, bad records into warehouse/rejected.")
def images(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    spec = dataset.spec(store)
    result = ingest(spec, store)
    reasons = "\n".join(f"| {reason} | {count} |" for reason, count in sorted(result.rejected_by_reason.items())) or "| (none) | 0 |"
    context.log.info(f"{spec.name}: {result.accepted} accepted, {result.rejected} rejected, cached={result.cached}")
    return MaterializeResult(
        metadata={
            "dataset": spec.name,
            "accepted": result.accepted,
            "rejected": result.rejected,
            "rejected_share": float(result.rejected_share),
            "splits": MetadataValue.json(dict(result.splits)),
            "rejected_by_reason": MetadataValue.md("| reason | count |\n|---|---|\n" + reasons),
            "cached": result.cached,
            "seconds": round(time.perf_counter() - started, 2),
            "path": MetadataValue.path(str(store.partition_dir("images", dataset=spec.name))),
        }
    )


@asset(group_name=GROUP, deps=[images], description="Frozen open_clip embeddings: plain view for train/val, 16 test-time views for test images.")
def clip_embeddings(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource, encoder: EncoderResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    summary = build_embeddings(store, dataset.name, encoder.spec(), test_views=encoder.test_views, device=str(resolve_device(encoder.device)))
    identity = summary["encoder"]
    context.log.info(encoder_note(identity))
    return MaterializeResult(
        metadata={
            "rows": summary["rows"],
            "encoder": identity["label"],
            "encoder_pretrained": identity["is_pretrained"],
            "encoder_note": encoder_note(identity),
            "embed_dim": identity["embed_dim"],
            "test_views": summary["test_views"],
            "cached": summary["cached"],
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(group_name=GROUP, deps=[images], description="SHDD coefficient tables of every location, one partition per degree L.")
def shdd_tables(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource, training: TrainingResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    built = {L: build_shdd_table(store, dataset.name, L) for L in training.degrees()}
    return MaterializeResult(
        metadata={
            "degrees": MetadataValue.json(sorted(built)),
            "rows_per_L": MetadataValue.json({str(L): s["rows"] for L, s in built.items()}),
            "cached": all(s["cached"] for s in built.values()),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


class ModelRunConfig(Config):
    force_retrain: bool = False


@asset(group_name=GROUP, deps=[clip_embeddings, shdd_tables], description="Train LocDiff (CUDA when present), log to MLflow, register a `locdiff` version, promote `champion` if better.")
def locdiff_model(context: AssetExecutionContext, config: ModelRunConfig, warehouse: WarehouseResource, dataset: DatasetResource, training: TrainingResource, mlflow: MlflowResource) -> MaterializeResult:
    store = warehouse.get()
    embed_dim = store.manifest("embeddings", dataset=dataset.name)["encoder"]["embed_dim"]
    model_config = training.config(embed_dim)

    def log(step: int, record: dict) -> None:
        if "val_acc_750km" in record or step == model_config.steps:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))

    trained = train_and_register(store, dataset.name, model_config, log=log, force=config.force_retrain, tracking_uri=mlflow.uri())
    write_latest(store, trained)
    table = "| scale | validation accuracy |\n|---|---|\n" + "\n".join(f"| {k} | {v:.3f} |" for k, v in trained.validation.items() if k.startswith("acc_"))
    return MaterializeResult(
        metadata={
            "model_version": trained.version,
            "mlflow_run_id": trained.run_id,
            "promoted_to_champion": trained.promoted,
            "champion_version": trained.champion_version if trained.champion_version is not None else -1,
            "validation": MetadataValue.md(table),
            "val_median_km": float(trained.validation.get("median_km", float("nan"))),
            "device": str(resolve_device(model_config.device)),
            "cached": trained.cached,
            "train_seconds": round(trained.seconds, 1),
            "encoder_note": encoder_note(trained.encoder),
        }
    )


@asset(group_name=GROUP, deps=[locdiff_model, clip_embeddings], description="Benchmark predictions of LocDiff (16 views, spherical centre, 90% region), LocDiff-H and the kNN, cell-classification and regression baselines.")
def predictions(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource, training: TrainingResource, evaluation: EvaluationResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    latest = read_latest(store)
    version = latest["version"]
    embeddings_manifest = store.manifest("embeddings", dataset=dataset.name)
    views = embeddings_manifest["test_views"]
    settings = evaluation.settings()
    key = fingerprint(version, latest["run_id"], embeddings_manifest["fingerprint"], evaluation.split, evaluation.samples_per_view, settings.to_dict(), METHODS)
    if predictions_are_current(store, dataset.name, version, key):
        manifest = store.manifest(PREDICTIONS_TABLE, dataset=dataset.name, model_version=version)
        return MaterializeResult(metadata={"rows": manifest["rows"], "model_version": version, "methods": MetadataValue.json(manifest["methods"]), "cached": True})
    model = LocDiffModel.load(latest["checkpoint"], device=resolve_device(training.device))
    split = predict_split(store, dataset.name, evaluation.split, model, views, evaluation.samples_per_view, settings)
    manifest = {"fingerprint": key, "methods": list(METHODS), "views": views, "chosen": split.chosen, "locdiff_h_fallback_share": split.hybrid_fallback_share}
    rows = write_predictions(store, dataset.name, version, split.tables, split.samples, manifest)
    context.log.info(f"{rows} prediction rows; chosen on validation: {split.chosen}; LocDiff-H fell back on {100 * split.hybrid_fallback_share:.1f}% of images")
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


@asset(group_name=GROUP, deps=[predictions], description="Every method side by side: accuracy at 1/25/200/750/2500 km and median error (DuckDB over the predictions Parquet), error CDFs, error map, calibration, density maps.")
def accuracy_report(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource) -> MaterializeResult:
    store = warehouse.get()
    latest = read_latest(store)
    note = encoder_note(latest["encoder"])
    bundle = build_report(store, dataset.name, latest["version"], note)
    context.log.info("\n" + reports.text_table(bundle.rows) + f"\n{note}")
    images = {name.removesuffix(".png"): MetadataValue.md(f"![{name}](data:image/png;base64,{base64.b64encode(data).decode()})") for name, data in bundle.pngs.items()}
    return MaterializeResult(metadata={"accuracy": MetadataValue.md(bundle.markdown), **images, "report_folder": MetadataValue.path(str(bundle.folder)), "encoder_note": note})
