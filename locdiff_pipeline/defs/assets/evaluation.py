"""Evaluation stage, one partition per benchmark: its contamination with the training data, every
method's predictions, and the DuckDB accuracy report."""

import base64
import time

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.image_encoder import encoder_note
from locdiff_pipeline.data.warehouse import fingerprint
from locdiff_pipeline.defs.assets.features import clip_embeddings
from locdiff_pipeline.defs.assets.ingest import images
from locdiff_pipeline.defs.assets.model import locdiff_model
from locdiff_pipeline.defs.partitions import BENCHMARKS
from locdiff_pipeline.defs.resources import (
    DatasetsResource,
    EvaluationResource,
    MlflowResource,
    TrainingResource,
    WarehouseResource,
)
from locdiff_pipeline.method import metrics
from locdiff_pipeline.method.devices import resolve_device
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.method.protocol import Protocol
from locdiff_pipeline.steps import report_sql
from locdiff_pipeline.steps.accuracy_report import REPORT_VERSION, build_report, scoring_note
from locdiff_pipeline.steps.clip_embeddings import EMBEDDINGS_TABLE
from locdiff_pipeline.steps.contamination import (
    CONTAMINATION_TABLE,
    CONTAMINATION_VERSION,
    build_contamination,
    contaminated_ids,
)
from locdiff_pipeline.steps.figures import fit_width
from locdiff_pipeline.steps.locdiff_model import read_latest
from locdiff_pipeline.steps.prediction_table import PREDICTIONS_TABLE, predictions_are_current, write_predictions
from locdiff_pipeline.steps.predictions import METHODS, PREDICTIONS_VERSION, SCORING_STAGES, predict_benchmark
from locdiff_pipeline.steps.progress import Progress
from locdiff_pipeline.tracking import registry

GROUP = "evaluation"
ALL_SHARDS = AllPartitionMapping()  # a benchmark's partition reads every shard of the data stages


@asset(
    kinds={"duckdb", "parquet"},
    code_version=str(CONTAMINATION_VERSION),
    group_name=GROUP,
    partitions_def=BENCHMARKS,
    deps=[AssetDep(images, partition_mapping=ALL_SHARDS), AssetDep(clip_embeddings, partition_mapping=ALL_SHARDS)],
    description=(
        "Benchmark images that also appear in the training dataset: exact duplicates (same sha256) and near "
        "duplicates (plain-view cosine at or above the threshold), in warehouse/contamination."
    ),
)
def contamination(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    datasets: DatasetsResource,
    evaluation: EvaluationResource,
) -> MaterializeResult:
    store = warehouse.get()
    benchmark, training = context.partition_key, datasets.training_name()
    datasets.get().benchmark(benchmark)  # refuses a partition the catalog no longer holds
    summary = build_contamination(
        store, benchmark, training, evaluation.near_duplicate_cosine, evaluation.near_duplicate_max_hash_distance
    )
    found = summary["exact"] + summary["near"]
    context.log.info(f"{benchmark}: {found} of {summary['images']} images have a duplicate in {training}")
    return MaterializeResult(
        metadata={
            "benchmark": benchmark,
            "training_dataset": training,
            "images": summary["images"],
            "exact_duplicates": summary["exact"],
            "near_duplicates": summary["near"],
            "contaminated_share": found / max(summary["images"], 1),
            "threshold_cosine": summary["threshold"],
            "cached": summary["cached"],
        }
    )


@asset(
    kinds={"pytorch", "parquet"},
    code_version=str(PREDICTIONS_VERSION),
    group_name=GROUP,
    partitions_def=BENCHMARKS,
    deps=[locdiff_model, contamination],
    description=(
        "One benchmark's predictions: LocDiff (its validation-chosen views and combination rule, 90% region), "
        "LocDiff-H, kNN, cell classification, regression (each also from the plain view), chance and constant."
    ),
)
def predictions(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    datasets: DatasetsResource,
    training: TrainingResource,
    evaluation: EvaluationResource,
) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    benchmark = context.partition_key
    latest = read_latest(store)
    version, training_dataset = latest["version"], latest["training_dataset"]
    embeddings = shards.manifest(store, EMBEDDINGS_TABLE, benchmark)
    contamination_manifest = store.manifest(CONTAMINATION_TABLE, dataset=benchmark)
    settings = evaluation.settings()
    excluded = contaminated_ids(store, benchmark) if evaluation.exclude_contaminated else set()
    key = fingerprint(
        PREDICTIONS_VERSION,
        version,
        latest["run_id"],
        embeddings["fingerprint"],
        evaluation.samples_per_view,
        settings.to_dict(),
        METHODS,
        sorted(excluded),
    )
    if predictions_are_current(store, benchmark, version, key):
        manifest = store.manifest(PREDICTIONS_TABLE, dataset=benchmark, model_version=version)
        return MaterializeResult(
            metadata={
                "rows": manifest["rows"],
                "model_version": version,
                "images_scored": manifest["images"],
                "cached": True,
            }
        )
    model = LocDiffModel.load(latest["checkpoint"], device=resolve_device(training.config().device))
    progress = Progress(f"scoring {benchmark}", SCORING_STAGES, context.log.info, unit="stages", every=0.25)
    scored = predict_benchmark(
        store,
        benchmark,
        training_dataset,
        model,
        embeddings["test_views"],
        evaluation.samples_per_view,
        settings,
        excluded,
        progress=progress.advance,
    )
    manifest = {
        "fingerprint": key,
        "training_dataset": training_dataset,
        "methods": list(METHODS),
        "images": scored.images,
        "excluded_contaminated": len(excluded),
        "contamination": {
            k: contamination_manifest[k]
            for k in ("images", "exact", "near", "threshold", "max_hash_distance", "training_dataset")
        },
        "protocol": model.metadata.get("protocol"),
        "chosen": scored.chosen,
        "locdiff_h_fallback_share": scored.hybrid_fallback_share,
    }
    rows = write_predictions(store, benchmark, version, scored.tables, scored.samples, manifest)
    context.log.info(f"{benchmark}: {rows} prediction rows for {scored.images} images; {scored.chosen}")
    return MaterializeResult(
        metadata={
            "rows": rows,
            "dagster/row_count": rows,
            "model_version": version,
            "training_dataset": training_dataset,
            "images_scored": scored.images,
            "excluded_contaminated": len(excluded),
            "methods": MetadataValue.json(list(METHODS)),
            "chosen": MetadataValue.json(scored.chosen),
            "locdiff_h_fallback_share": scored.hybrid_fallback_share,
            "cached": False,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(
    kinds={"duckdb", "matplotlib"},
    code_version=str(REPORT_VERSION),
    group_name=GROUP,
    partitions_def=BENCHMARKS,
    deps=[predictions],
    description=(
        "One benchmark's report: every method beside chance and a constant guess, at 1/25/200/750/2500 km and "
        "median error (DuckDB over the predictions Parquet), with contamination, error CDFs, error map, "
        "calibration and density maps."
    ),
)
def accuracy_report(
    context: AssetExecutionContext, warehouse: WarehouseResource, mlflow: MlflowResource
) -> MaterializeResult:
    store = warehouse.get()
    benchmark = context.partition_key
    latest = read_latest(store)
    scored = store.manifest(PREDICTIONS_TABLE, dataset=benchmark, model_version=latest["version"])
    protocol = Protocol.from_dict(scored["protocol"])
    chosen = "; ".join(f"{method}: {value}" for method, value in sorted(scored["chosen"].items()))
    notes = [
        encoder_note(latest["encoder"]),
        scoring_note(scored["contamination"], excluded=scored["excluded_contaminated"] > 0),
        f"Trained on `{scored['training_dataset']}` only; LocDiff's protocol ({protocol.describe()}) was "
        "chosen on that dataset's validation split, as every baseline setting and view rule was "
        f"(grids kept): {chosen}. `chance`: a random training location (mean of several draws); `constant`: "
        "the training set's densest location.",
    ]
    bundle = build_report(store, benchmark, latest["version"], notes)
    registry.configure(mlflow.uri(), root=warehouse.project_root())
    registry.log_report(latest["run_id"], bundle.folder, benchmark)  # the files beside the run that made the model
    context.log.info("\n" + report_sql.text_table(bundle.rows) + "\n" + "\n".join(notes))
    pictures = {
        name.removesuffix(".png"): MetadataValue.md(
            f"![{name}](data:image/png;base64,{base64.b64encode(fit_width(data)).decode()})"
        )
        for name, data in bundle.pngs.items()
    }
    return MaterializeResult(
        metadata={
            "accuracy": MetadataValue.md(bundle.markdown),
            "accuracy_table": accuracy_metadata_table(bundle.rows),
            "dagster/row_count": len(bundle.rows),
            **per_method_numbers(bundle.rows),
            **pictures,
            "report_folder": MetadataValue.path(str(bundle.folder)),
            "encoder_note": notes[0],
        }
    )


REPORTED_NUMBERS = ("acc_750km", "acc_2500km", "median_km")


def accuracy_metadata_table(rows: list[dict]) -> MetadataValue:
    """The accuracy rows as a Dagster table (a sortable table in the UI, not a Markdown link)."""
    columns = ["method", "count", *(metrics.accuracy_column(t) for t in metrics.THRESHOLDS_KM), "median_km"]
    schema = TableSchema(columns=[TableColumn(name, "string" if name == "method" else "float") for name in columns])
    records = [TableRecord({name: _plain(row[name]) for name in columns}) for row in rows]
    return MetadataValue.table(records, schema)


def per_method_numbers(rows: list[dict]) -> dict[str, float]:
    """`METHOD acc_750km`-style numbers per method, so the UI's Plots tab trends them across runs."""
    return {f"{row['method']} {name}": float(row[name]) for row in rows for name in REPORTED_NUMBERS}


def _plain(value):
    """Readable in the UI: shares to 4 decimals, distances to 0.1 km (the per-method numbers keep full precision)."""
    if isinstance(value, str):
        return value
    value = float(value)
    return round(value, 1) if abs(value) > 1 else round(value, 4)
