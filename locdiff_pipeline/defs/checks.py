"""Asset checks: data quality guards, answered by DuckDB over the warehouse Parquet.

Checks of the sharded assets look only at the shards their run materialized (one, or the whole range),
so parallel shard runs never read a shard another run is swapping in; they cover every catalog
dataset. Checks of the evaluation assets look at their benchmark's partition. Dataset names and shard
keys reach SQL as bound parameters.
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetKey, asset_check

from locdiff_pipeline.data.ingest import IMAGES_TABLE, REJECTED_TABLE
from locdiff_pipeline.defs.assets.evaluation import accuracy_report, contamination, predictions
from locdiff_pipeline.defs.assets.features import image_embeddings, shdd_tables
from locdiff_pipeline.defs.assets.ingest import images
from locdiff_pipeline.defs.assets.model import locdiff_model
from locdiff_pipeline.defs.resources import (
    DatasetsResource,
    EncoderResource,
    EvaluationResource,
    TrainingResource,
    WarehouseResource,
)
from locdiff_pipeline.steps import report_sql
from locdiff_pipeline.steps.contamination import CONTAMINATION_TABLE
from locdiff_pipeline.steps.locdiff_model import read_latest
from locdiff_pipeline.steps.prediction_table import PREDICTIONS_TABLE
from locdiff_pipeline.steps.scoring import CHANCE, METHODS

# rows of the run's shards of every catalog dataset: $1 = dataset names, $2 = shard keys
IN_RUN = "list_contains($1, dataset) AND list_contains($2, shard)"


def _row(warehouse: WarehouseResource, sql: str, parameters: list) -> tuple:
    return _rows(warehouse, sql, parameters)[0]


def _rows(warehouse: WarehouseResource, sql: str, parameters: list) -> list[tuple]:
    with report_sql.in_memory_views(warehouse.get()) as con:  # never the database file: checks run in parallel
        return con.execute(sql, parameters).fetchall()


def _in_run(context: AssetCheckExecutionContext, datasets: DatasetsResource) -> list:
    return [[entry.name for entry in datasets.get().entries], list(context.partition_keys)]


@asset_check(
    blocking=True,
    asset=images,
    description="Every accepted location has finite lat in [-90, 90] and lon in [-180, 180].",
)
def coordinates_in_range(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource
) -> AssetCheckResult:
    (bad,) = _row(
        warehouse,
        f"SELECT count(*) FROM images WHERE {IN_RUN} AND NOT (lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180)",
        _in_run(context, datasets),
    )
    return AssetCheckResult(passed=bad == 0, metadata={"out_of_range": bad})


@asset_check(
    blocking=True,
    asset=images,
    description=(
        "Image ids are unique per dataset within the run's shards (the id hash sends every copy of an id to one shard)."
    ),
)
def unique_image_ids(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource
) -> AssetCheckResult:
    total, distinct = _row(
        warehouse,
        f"SELECT count(*), count(DISTINCT (dataset, image_id)) FROM images WHERE {IN_RUN}",
        _in_run(context, datasets),
    )
    return AssetCheckResult(passed=total == distinct, metadata={"rows": total, "distinct_ids": distinct})


@asset_check(
    blocking=True,
    asset=images,
    description="The share of rejected records in the run's shards stays under max_rejected_share, for every dataset.",
)
def rejected_share(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource
) -> AssetCheckResult:
    store = warehouse.get()  # both counts from the partitions' manifests
    shares = {}
    for entry in datasets.get().entries:
        accepted, rejected = (
            sum(store.manifest(table, dataset=entry.name, shard=shard)["rows"] for shard in context.partition_keys)
            for table in (IMAGES_TABLE, REJECTED_TABLE)
        )
        shares[entry.name] = rejected / max(accepted + rejected, 1)
    worst = max(shares, key=shares.get)
    passed = shares[worst] <= datasets.max_rejected_share
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=None
        if passed
        else (
            f"{shares[worst]:.1%} of {worst}'s records were rejected, above max_rejected_share "
            f"{datasets.max_rejected_share:.1%} (their reasons: the rejected table)"
        ),
        metadata={
            "share_by_dataset": {k: float(v) for k, v in shares.items()},
            "worst": worst,
            "threshold": datasets.max_rejected_share,
        },
    )


@asset_check(blocking=True, asset=image_embeddings, description="No NaN/inf embeddings; every embedding has unit norm.")
def embeddings_finite_unit_norm(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource
) -> AssetCheckResult:
    bad, worst = _row(
        warehouse,
        f"""SELECT count(*) FILTER (WHERE NOT isfinite(n) OR abs(n - 1) > 1e-3), coalesce(max(abs(n - 1)), 0)
            FROM (SELECT sqrt(list_inner_product(embedding, embedding)) AS n FROM embeddings WHERE {IN_RUN})""",
        _in_run(context, datasets),
    )
    return AssetCheckResult(passed=bad == 0, metadata={"bad_rows": bad, "max_norm_deviation": float(worst)})


@asset_check(
    blocking=True,
    asset=image_embeddings,
    description="Embedding rows = images (plain view) + validation and test images x (views - 1).",
)
def embedding_rows_match_images(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    datasets: DatasetsResource,
    encoder: EncoderResource,
) -> AssetCheckResult:
    images_rows, viewed_rows, embedding_rows = _row(
        warehouse,
        f"""SELECT (SELECT count(*) FROM images WHERE {IN_RUN}),
                   (SELECT count(*) FROM images WHERE {IN_RUN} AND split IN ('val', 'test')),
                   (SELECT count(*) FROM embeddings WHERE {IN_RUN})""",
        _in_run(context, datasets),
    )
    expected = images_rows + viewed_rows * (encoder.test_views - 1)
    return AssetCheckResult(passed=embedding_rows == expected, metadata={"expected": expected, "found": embedding_rows})


@asset_check(
    blocking=True, asset=shdd_tables, description="Each SHDD table has one row per image, with (L+1)^2 coefficients."
)
def shdd_rows_match_images(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    datasets: DatasetsResource,
    training: TrainingResource,
) -> AssetCheckResult:
    found = {}
    parameters = _in_run(context, datasets)
    with report_sql.in_memory_views(warehouse.get()) as con:
        (images_rows,) = con.execute(f"SELECT count(*) FROM images WHERE {IN_RUN}", parameters).fetchall()[0]
        for L in training.degrees():
            found[str(L)] = con.execute(
                f"SELECT count(*), coalesce(min(len(coefficients)), 0), coalesce(max(len(coefficients)), 0) "
                f"FROM shdd WHERE {IN_RUN} AND L = $3",
                [*parameters, L],
            ).fetchall()[0]
    passed = all(rows == images_rows and low == high == (int(L) + 1) ** 2 for L, (rows, low, high) in found.items())
    return AssetCheckResult(
        passed=passed, metadata={"images": images_rows, "rows_per_L": {L: v[0] for L, v in found.items()}}
    )


@asset_check(
    asset=contamination,
    description=(
        "Warns when more than max_contaminated_share of a benchmark's images have a duplicate in the training data."
    ),
)
def contamination_share(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, evaluation: EvaluationResource
) -> AssetCheckResult:
    summary = warehouse.get().manifest(CONTAMINATION_TABLE, dataset=context.partition_key)
    share = (summary["exact"] + summary["near"]) / max(summary["images"], 1)
    return AssetCheckResult(
        passed=share <= evaluation.max_contaminated_share,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "share": float(share),
            "exact": summary["exact"],
            "near": summary["near"],
            "threshold": evaluation.max_contaminated_share,
        },
    )


@asset_check(
    asset=predictions,
    description=(
        "Every scored benchmark image has a prediction for every method (chance: every draw), with finite coordinates."
    ),
)
def predictions_cover_benchmark(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, evaluation: EvaluationResource
) -> AssetCheckResult:
    store, benchmark = warehouse.get(), context.partition_key
    version = read_latest(store)["version"]
    scored = store.manifest(PREDICTIONS_TABLE, dataset=benchmark, model_version=version)["images"]
    methods, rows, bad, chance_rows = _row(
        warehouse,
        """SELECT count(DISTINCT method), count(*),
                  count(*) FILTER (WHERE NOT (isfinite(pred_lat) AND isfinite(pred_lon))),
                  count(*) FILTER (WHERE method = $3)
           FROM predictions WHERE dataset = $1 AND model_version = $2""",
        [benchmark, version, CHANCE],
    )
    draws = evaluation.settings().chance_draws
    expected = scored * (len(METHODS) - 1) + scored * draws
    return AssetCheckResult(
        passed=methods == len(METHODS) and rows == expected and bad == 0 and chance_rows == scored * draws,
        metadata={"images": scored, "methods": methods, "rows": rows, "expected_rows": expected, "non_finite": bad},
    )


@asset_check(
    blocking=True,
    asset=shdd_tables,
    description="SHDD rows equal the encoder applied to their images' coordinates (a sample of up to 256 per L).",
)
def shdd_matches_coordinates(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    datasets: DatasetsResource,
    training: TrainingResource,
) -> AssetCheckResult:
    import numpy as np

    from locdiff_pipeline.method import shdd

    worst = {}
    with report_sql.in_memory_views(warehouse.get()) as con:
        for L in training.degrees():
            rows = con.execute(
                """SELECT i.lat, i.lon, s.coefficients FROM shdd s JOIN images i USING (dataset, shard, image_id)
                    WHERE list_contains($1, s.dataset) AND list_contains($2, s.shard) AND s.L = $3
                    ORDER BY s.dataset, s.image_id LIMIT 256""",
                [*_in_run(context, datasets), L],
            ).fetchall()
            if rows:
                lat, lon, stored = zip(*rows, strict=True)
                expected = shdd.encode(np.array(lat), np.array(lon), L)
                worst[str(L)] = float(np.max(np.abs(np.array(stored, dtype=np.float64) - expected)))
    return AssetCheckResult(
        passed=bool(worst) and max(worst.values()) < 1e-4, metadata={"max_abs_difference_by_L": worst}
    )


@asset_check(
    asset=locdiff_model,
    description=(
        "Warns when the new model's validation score is not above chance's (a random training location) or is "
        "below the champion's (it was then not promoted)."
    ),
)
def model_beats_chance_and_champion(context: AssetCheckExecutionContext) -> AssetCheckResult:
    event = context.instance.get_latest_materialization_event(AssetKey("locdiff_model"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    floor, score = metadata["val_score_of_chance"], metadata["val_score"]
    champion = metadata["champion_version"] == metadata["model_version"]
    return AssetCheckResult(
        passed=score > floor and champion,
        severity=AssetCheckSeverity.WARN,
        metadata={"val_score": score, "chance": floor, "is_champion": champion},
    )


@asset_check(asset=accuracy_report, description="The benchmark's report has a row for every method.")
def report_has_every_method(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    version = read_latest(warehouse.get())["version"]
    rows = _rows(
        warehouse,
        "SELECT method FROM accuracy WHERE dataset = $1 AND model_version = $2",
        [
            context.partition_key,
            version,
        ],
    )
    missing = sorted(set(METHODS) - {method for (method,) in rows})
    return AssetCheckResult(passed=not missing, metadata={"rows": len(rows), "missing_methods": missing})


ALL_CHECKS = [
    coordinates_in_range,
    unique_image_ids,
    rejected_share,
    embeddings_finite_unit_norm,
    embedding_rows_match_images,
    shdd_rows_match_images,
    shdd_matches_coordinates,
    model_beats_chance_and_champion,
    contamination_share,
    predictions_cover_benchmark,
    report_has_every_method,
]
