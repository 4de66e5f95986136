"""Evaluation stage, one partition per benchmark: its contamination with the training data, every
method's predictions, and the DuckDB accuracy report."""

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

from locdiff_pipeline.data.paths import figure_url
from locdiff_pipeline.defs import run_tags, stages
from locdiff_pipeline.defs.assets.features import image_embeddings
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
from locdiff_pipeline.encoders.image_encoder import encoder_note
from locdiff_pipeline.method.devices import resolve_device
from locdiff_pipeline.method.protocol import Protocol
from locdiff_pipeline.steps import report_tables
from locdiff_pipeline.steps.accuracy_report import PREVIEWS, REPORT_VERSION, ReportBundle, build_report, scoring_note
from locdiff_pipeline.steps.contamination import (
    CONTAMINATION_VERSION,
    build_contamination,
)
from locdiff_pipeline.steps.locdiff_model import read_latest
from locdiff_pipeline.steps.prediction_table import PREDICTION_SCHEMA, PREDICTIONS_TABLE
from locdiff_pipeline.steps.predictions import PREDICTIONS_VERSION, build_predictions
from locdiff_pipeline.steps.progress import Progress
from locdiff_pipeline.steps.scoring import SCORING_STAGES
from locdiff_pipeline.tracking import registry

GROUP = stages.EVALUATION
ALL_SHARDS = AllPartitionMapping()  # a benchmark's partition reads every shard of the data stages


@asset(
    kinds={"duckdb", "parquet"},
    code_version=str(CONTAMINATION_VERSION),
    group_name=GROUP,
    partitions_def=BENCHMARKS,
    deps=[AssetDep(images, partition_mapping=ALL_SHARDS), AssetDep(image_embeddings, partition_mapping=ALL_SHARDS)],
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
    training: TrainingResource,
    evaluation: EvaluationResource,
) -> MaterializeResult:
    started = time.perf_counter()
    benchmark = context.partition_key
    progress = Progress(f"scoring {benchmark}", SCORING_STAGES, context.log.info, unit="stages", every=0.25)
    store = warehouse.get()
    scored = build_predictions(
        store,
        benchmark,
        evaluation.samples_per_view,
        evaluation.settings(),
        exclude_contaminated=evaluation.exclude_contaminated,
        device=resolve_device(training.config().device),
        progress=progress.advance,
    )
    run_tags.add_missing(context, run_tags_of(scored, read_latest(store)))
    summary = {
        "dagster/row_count": scored["rows"],
        "model_version": scored["model_version"],
        "images_scored": scored["images"],
        **table_location(store, benchmark, scored["model_version"]),
    }
    if scored["cached"]:
        return MaterializeResult(metadata={**summary, "cached": True})
    context.log.info(f"{benchmark}: {scored['rows']} prediction rows for {scored['images']} images; {scored['chosen']}")
    return MaterializeResult(
        metadata={
            **summary,
            "training_dataset": scored["training_dataset"],
            "excluded_contaminated": scored["excluded_contaminated"],
            "methods": MetadataValue.json(scored["methods"]),
            "chosen": MetadataValue.json(scored["chosen"]),
            "locdiff_h_fallback_share": scored["locdiff_h_fallback_share"],
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
        "calibration and density maps. Each benchmark's own: the Partitions tab."
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
        density_note(scored),
    ]
    bundle = build_report(store, benchmark, latest["version"], notes)
    registry.configure(mlflow.uri(), root=warehouse.project_root())
    registry.log_report(latest["run_id"], bundle.folder, benchmark)  # the files beside the run that made the model
    registry.log_benchmark_metrics(latest["run_id"], benchmark, bundle.rows)
    context.log.info(report_log_line(benchmark, bundle))
    return MaterializeResult(metadata=report_metadata(bundle, notes))


def report_log_line(benchmark: str, bundle: ReportBundle) -> str:
    """One line for the run's log: where the report is and LocDiff's deciding shares. The tables themselves are
    on the asset's page and printed once by `locdiff run` / `locdiff report` (a log line holding them printed
    every table twice when the run's output was piped)."""
    locdiff = next((row for row in bundle.rows if row["method"] == "locdiff"), None)
    shares = (
        ""
        if locdiff is None
        else f": LocDiff {100 * locdiff['acc_750km']:.1f}% within 750 km, {100 * locdiff['acc_2500km']:.1f}% within "
        "2,500 km (every method: the asset's page, `locdiff report`)"
    )
    return f"report of {benchmark} written to {bundle.folder}{shares}"


def table_location(store, benchmark: str, version: int) -> dict[str, MetadataValue]:
    """Where the partition's rows are and what they hold: its Parquet folder, its columns (Dagster's column
    schema, shown on the asset's page), and the SQL that reads it."""
    folder = store.partition_dir(PREDICTIONS_TABLE, dataset=benchmark, model_version=version)
    columns = [TableColumn(field.name, str(field.type)) for field in PREDICTION_SCHEMA]
    columns += [TableColumn("dataset", "string"), TableColumn("model_version", "int64")]  # the partition's keys
    query = (
        f"SELECT method, count(*) FROM read_parquet('{store.table_dir(PREDICTIONS_TABLE)}/**/*.parquet', "
        f"hive_partitioning = true) WHERE dataset = '{benchmark}' AND model_version = {version} GROUP BY method"
    )
    return {
        "dagster/column_schema": MetadataValue.table_schema(TableSchema(columns=columns)),
        "parquet_folder": MetadataValue.path(str(folder)),
        "duckdb_query": MetadataValue.md(f"```sql\n{query}\n```"),
    }


def run_tags_of(scored: dict, latest: dict) -> dict[str, str]:
    """What an evaluation run is about, as the evaluation sensor tags its runs."""
    return {
        run_tags.DATASET: str(scored.get("training_dataset") or ""),
        run_tags.ENCODER: str(latest["encoder"].get("label", "")),
        run_tags.MODEL_VERSION: str(scored["model_version"]),
    }


def density_note(scored: dict) -> str:
    """What the intervals and the density scores mean, and each method's density as chosen on validation."""
    chosen = "; ".join(f"{method}: {value}" for method, value in sorted(scored.get("densities", {}).items()))
    return (
        f"Intervals: 95 %, from a bootstrap over the benchmark's {scored.get('regions', '?')} regions "
        f"({scored.get('region_deg', '?')}-degree cells of the true places; regions, not images, are resampled). "
        "Densities: NLL is the mean negative log "
        "density of the true place in nats relative to the uniform density on the sphere (0: knows nothing; "
        "lower is better); `in 90% HPD` the share of true places inside the 90 % highest-density region and "
        f"`90% HPD area` its mean area as a share of the Earth; each density's parameters chosen on validation: "
        f"{chosen}."
    )


def report_metadata(bundle: ReportBundle, notes: list[str]) -> dict:
    """The report as the UI lists it, in this order: the answer (short enough to show in place), the table,
    the figures (in place through `locdiff dev`, a click from full size), the whole markdown, the numbers
    the Plots tab draws per benchmark, and where the files are."""
    benchmark, version = bundle.rows[0]["dataset"], bundle.rows[0]["model_version"]
    shown = report_tables.display_rows(bundle.rows)
    return {
        "headline": MetadataValue.md(report_tables.headline_markdown(bundle.rows)),
        "accuracy_table": accuracy_metadata_table(shown),
        **{name.removesuffix(".png"): figure_link(benchmark, version, name) for name in bundle.pngs},
        "accuracy": MetadataValue.md(bundle.markdown),
        **plotted_numbers(shown),
        "dagster/row_count": len(bundle.rows),
        "report_folder": MetadataValue.path(str(bundle.folder)),
        "encoder_note": notes[0],
    }


def figure_link(benchmark: str, version: int, name: str) -> MetadataValue:
    """The figure's preview, linked to the full-size file, both as `locdiff dev` serves them (data/paths.figure_url);
    a bare `dagster dev` shows the alternative text, which says where the file is."""
    preview = figure_url(benchmark, version, f"{PREVIEWS}/{name}")
    full = figure_url(benchmark, version, name)
    return MetadataValue.md(f"[![{name}: shown through locdiff dev; the file is in report_folder]({preview})]({full})")


def accuracy_metadata_table(shown: list[dict]) -> MetadataValue:
    """report_tables.display_rows's rows as a Dagster table (sortable in the UI), in their order and
    columns: what decides first fits a narrow window."""
    kinds = {
        label: "string" if column in ("method", "dataset") or column.endswith(report_tables.CI) else "float"
        for label, column in report_tables.DISPLAY_COLUMNS
    }
    schema = TableSchema(columns=[TableColumn(label, kind) for label, kind in kinds.items()])
    return MetadataValue.table([TableRecord(row) for row in shown], schema)


PLOTTED = ("750 km %", "2500 km %", "NLL", "median km")  # columns of report_tables.DISPLAY_COLUMNS
PLOTTED_METHODS = (report_tables.LEARNED_METHODS[0], *report_tables.REFERENCE_METHODS)  # LocDiff, what it must beat


def plotted_numbers(shown: list[dict]) -> dict[str, float]:
    """`locdiff 750 km %`-style numbers of LocDiff, chance and the constant guess from display_rows's rows
    (rounded as the table shows them), so the UI's Plots tab draws the answer per benchmark and across
    runs (every method's numbers: the table, and MLflow's metrics). Only these: a method's name in a key
    widens the key column, which a 1,000-pixel window cannot spare."""
    return {
        f"{row['method']} {label}": float(row[label])
        for row in shown
        if row["method"] in PLOTTED_METHODS
        for label in PLOTTED
        if row[label] is not None
    }
