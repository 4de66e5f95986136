"""Dagster assets: thin glue over the step modules, each cached by its inputs' fingerprint.

image_metadata -> images -> clip_embeddings, shdd_tables -> locdiff_model -> predictions -> accuracy_report

images, clip_embeddings and shdd_tables are partitioned by id-hash shard: a run for one shard is a
bounded unit of work (a backfill launches one run per shard, Dagster's default, so shards run in
parallel under the run queue, or as pods with the Kubernetes run launcher), and a run over the whole shard
range (what `locdiff run` and the weekly schedule launch) loops over its shards in one step.
"""


import base64
import functools
import time

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, StaticPartitionsDefinition, asset

from locdiff_pipeline import report as reports
from locdiff_pipeline import shards
from locdiff_pipeline.devices import resolve_device
from locdiff_pipeline.embedding_table import EMBEDDINGS_TABLE, build_embeddings
from locdiff_pipeline.image_encoder import ImageEncoder, encoder_note
from locdiff_pipeline.ingest import IngestReport, ingest_shard, split_metadata
from locdiff_pipeline.model import LocDiffModel
from locdiff_pipeline.evaluation import METHODS, predict_split
from locdiff_pipeline.report_bundle import build_report
from locdiff_pipeline.prediction_table import PREDICTIONS_TABLE, predictions_are_current, write_predictions
from locdiff_pipeline.resources import DatasetResource, EncoderResource, EvaluationResource, MlflowResource, TrainingResource, WarehouseResource
from locdiff_pipeline.shdd_table import build_shdd_table
from locdiff_pipeline.train_step import read_latest, train_and_register, write_latest
from locdiff_pipeline.warehouse import fingerprint

GROUP = "locdiff"
SHARDS = StaticPartitionsDefinition(shards.shard_keys(shards.shard_count()))


@asset(group_name=GROUP, description="The metadata CSV split into id-hash shards (and, for tar/msgpack images, an index of where each image lives), streamed once.")
def image_metadata(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    spec = dataset.spec(store)
    split = split_metadata(spec, store, SHARDS.get_partition_keys())
    context.log.info(f"{spec.name}: {split['rows']} records in {len(split['shards'])} shards, cached={split['cached']}")
    return MaterializeResult(
        metadata={
            "dataset": spec.name,
            "records": split["rows"],
            "shards": len(split["shards"]),
            "largest_shard": max(split["rows_per_shard"].values(), default=0),
            "empty_archives": len(split["empty_archives"]),
            "cached": split["cached"],
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(group_name=GROUP, deps=[image_metadata], partitions_def=SHARDS, description="Dataset ingest, one shard per partition: images into warehouse/images, bad records with their reason into warehouse/rejected.")
def images(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    spec = dataset.spec(store)
    result = IngestReport()
    for shard in context.partition_keys:
        result.add(ingest_shard(spec, store, shard))
    reasons = "\n".join(f"| {reason} | {count} |" for reason, count in sorted(result.rejected_by_reason.items())) or "| (none) | 0 |"
    context.log.info(f"{spec.name} shards {_span(context)}: {result.accepted} accepted, {result.rejected} rejected, cached={result.cached}")
    return MaterializeResult(
        metadata={
            "dataset": spec.name,
            "shards": _span(context),
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


@asset(group_name=GROUP, deps=[images], partitions_def=SHARDS, description="Frozen open_clip embeddings per shard: plain view for train/val, 16 test-time views for test images (batched, on CUDA when present).")
def clip_embeddings(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource, encoder: EncoderResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    device = str(resolve_device(encoder.device))
    load = functools.cache(lambda: ImageEncoder(encoder.spec(), device=device))  # loaded once, at the first shard to embed
    summaries = [build_embeddings(store, dataset.name, shard, encoder.spec(), test_views=encoder.test_views, device=device, load=load) for shard in context.partition_keys]
    identity = summaries[0]["encoder"]
    context.log.info(encoder_note(identity))
    return MaterializeResult(
        metadata={
            "shards": _span(context),
            "rows": sum(s["rows"] for s in summaries),
            "encoder": identity["label"],
            "encoder_pretrained": identity["is_pretrained"],
            "encoder_note": encoder_note(identity),
            "embed_dim": identity["embed_dim"],
            "test_views": summaries[0]["test_views"],
            "cached": all(s["cached"] for s in summaries),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(group_name=GROUP, deps=[images], partitions_def=SHARDS, description="SHDD coefficient tables of every location, per shard and degree L.")
def shdd_tables(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource, training: TrainingResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    built = [build_shdd_table(store, dataset.name, shard, L) for shard in context.partition_keys for L in training.degrees()]
    return MaterializeResult(
        metadata={
            "shards": _span(context),
            "degrees": MetadataValue.json(training.degrees()),
            "rows_per_L": MetadataValue.json({str(L): sum(s["rows"] for s in built if s["L"] == L) for L in training.degrees()}),
            "cached": all(s["cached"] for s in built),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


def _span(context: AssetExecutionContext) -> str:
    keys = context.partition_keys
    return keys[0] if len(keys) == 1 else f"{keys[0]}...{keys[-1]}"


class ModelRunConfig(Config):
    force_retrain: bool = False


@asset(group_name=GROUP, deps=[clip_embeddings, shdd_tables], description="Train LocDiff (CUDA when present), log to MLflow, register a `locdiff` version, promote `champion` if better.")
def locdiff_model(context: AssetExecutionContext, config: ModelRunConfig, warehouse: WarehouseResource, dataset: DatasetResource, training: TrainingResource, mlflow: MlflowResource) -> MaterializeResult:
    store = warehouse.get()
    embed_dim = shards.manifest(store, EMBEDDINGS_TABLE, dataset.name)["encoder"]["embed_dim"]
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
    embeddings_manifest = shards.manifest(store, EMBEDDINGS_TABLE, dataset.name)
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
