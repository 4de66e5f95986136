"""Dagster assets: thin glue over the step modules, each cached by its inputs' fingerprint.

images -> clip_embeddings -> shdd_tables -> locdiff_model -> predictions -> accuracy_report
"""


import base64
import json
import time

import numpy as np
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from locdiff_pipeline import report as reports
from locdiff_pipeline.default_dataset import BLUE_MARBLE
from locdiff_pipeline.devices import resolve_device
from locdiff_pipeline.embedding_table import build_embeddings, load_embeddings
from locdiff_pipeline.image_encoder import encoder_note
from locdiff_pipeline.ingest import ingest
from locdiff_pipeline.model import LocDiffModel
from locdiff_pipeline.prediction_table import PREDICTIONS_TABLE, prediction_rows, write_predictions
from locdiff_pipeline.resources import DatasetResource, EncoderResource, TrainingResource, WarehouseResource
from locdiff_pipeline.shdd_table import build_shdd_table
from locdiff_pipeline.train_step import coordinates, train_and_register, write_latest
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
def locdiff_model(context: AssetExecutionContext, config: ModelRunConfig, warehouse: WarehouseResource, dataset: DatasetResource, training: TrainingResource) -> MaterializeResult:
    store = warehouse.get()
    embed_dim = store.manifest("embeddings", dataset=dataset.name)["encoder"]["embed_dim"]
    model_config = training.config(embed_dim)

    def log(step: int, record: dict) -> None:
        if "val_acc_750km" in record or step == model_config.steps:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))

    trained = train_and_register(store, dataset.name, model_config, log=log, force=config.force_retrain)
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


@asset(group_name=GROUP, deps=[locdiff_model, clip_embeddings], description="Benchmark predictions per method for the test split (16 views, spherical centre).")
def predictions(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource, training: TrainingResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    latest = json.loads((store.root / "models" / "latest.json").read_text())
    embeddings_manifest = store.manifest("embeddings", dataset=dataset.name)
    views = embeddings_manifest["test_views"]
    key = fingerprint(latest["version"], latest["run_id"], embeddings_manifest["fingerprint"], training.samples_per_view)
    if store.is_current(PREDICTIONS_TABLE, key, dataset=dataset.name, model_version=latest["version"]):
        manifest = store.manifest(PREDICTIONS_TABLE, dataset=dataset.name, model_version=latest["version"])
        return MaterializeResult(metadata={"rows": manifest["rows"], "model_version": latest["version"], "cached": True})
    model = LocDiffModel.load(latest["checkpoint"], device=resolve_device(training.device))
    ids, test_embeddings = load_embeddings(store, dataset.name, "test", views=views)
    coords = coordinates(store, dataset.name)
    true_lat, true_lon = np.array([coords[i] for i in ids]).T
    predicted = model.predict_embeddings(test_embeddings, samples=training.samples_per_view, seed=training.seed)
    encoder = latest["encoder"]
    tables = [prediction_rows("locdiff", "test", ids, true_lat, true_lon, predicted.lat, predicted.lon, encoder, spread_km=predicted.spread_km)]
    rows = write_predictions(store, dataset.name, latest["version"], tables, {"fingerprint": key, "methods": ["locdiff"], "views": views})
    return MaterializeResult(metadata={"rows": rows, "model_version": latest["version"], "methods": MetadataValue.json(["locdiff"]), "cached": False, "seconds": round(time.perf_counter() - started, 2)})


@asset(group_name=GROUP, deps=[predictions], description="Accuracy at 1/25/200/750/2500 km and median error per dataset, method and model version (DuckDB over the predictions Parquet).")
def accuracy_report(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource) -> MaterializeResult:
    store = warehouse.get()
    latest = json.loads((store.root / "models" / "latest.json").read_text())
    rows = reports.accuracy_table(store, dataset=dataset.name, model_version=latest["version"])
    note = encoder_note(latest["encoder"])
    markdown = reports.markdown_table(rows, note)
    with reports.connect(store) as con:
        relation = con.sql(f"SELECT method, error_km, true_lat, true_lon FROM predictions WHERE dataset = '{dataset.name}' AND model_version = {int(latest['version'])} AND split = 'test'")
        fetched = relation.fetchall()
    by_method: dict[str, list] = {}
    for method, error, lat, lon in fetched:
        by_method.setdefault(method, []).append((error, lat, lon))
    title = f"{dataset.name} test, model v{latest['version']}"
    cdf = reports.error_cdf_png({m: np.array([r[0] for r in v]) for m, v in by_method.items()}, title)
    main = by_method.get("locdiff") or next(iter(by_method.values()))
    world = reports.error_map_png(np.array([r[1] for r in main]), np.array([r[2] for r in main]), np.array([r[0] for r in main]), f"LocDiff errors, {title}", BLUE_MARBLE)
    folder = store.root / reports.REPORTS / dataset.name / f"v{latest['version']}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accuracy.md").write_text(markdown + "\n")
    (folder / "error_cdf.png").write_bytes(cdf)
    (folder / "error_map.png").write_bytes(world)
    context.log.info("\n" + reports.text_table(rows) + f"\n{note}")
    return MaterializeResult(
        metadata={
            "accuracy": MetadataValue.md(markdown),
            "error_cdf": MetadataValue.md(f"![error CDF](data:image/png;base64,{base64.b64encode(cdf).decode()})"),
            "error_map": MetadataValue.md(f"![error map](data:image/png;base64,{base64.b64encode(world).decode()})"),
            "report_folder": MetadataValue.path(str(folder)),
            "encoder_note": note,
        }
    )
