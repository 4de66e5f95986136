"""Asset checks: data quality guards, answered by DuckDB over the warehouse Parquet.

Checks of the sharded assets look only at the shards their run materialized (one, or the whole range),
so parallel shard runs never read a shard another run is swapping in.
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check

from locdiff_pipeline.data.ingest import IMAGES_TABLE, REJECTED_TABLE
from locdiff_pipeline.defs.assets.evaluation import predictions
from locdiff_pipeline.defs.assets.features import clip_embeddings, shdd_tables
from locdiff_pipeline.defs.assets.ingest import images
from locdiff_pipeline.defs.resources import DatasetResource, EncoderResource, TrainingResource, WarehouseResource
from locdiff_pipeline.steps import report_sql
from locdiff_pipeline.steps.locdiff_model import read_latest


def _scalar(warehouse: WarehouseResource, sql: str):
    with report_sql.in_memory_views(warehouse.get()) as con:
        return con.sql(sql).fetchall()[0]


def _in_shards(context: AssetCheckExecutionContext, dataset: DatasetResource) -> str:
    """SQL condition: the dataset's rows in the shards this run materialized."""
    shard_list = ", ".join(f"'{key}'" for key in context.partition_keys)
    return f"dataset = '{dataset.name}' AND shard IN ({shard_list})"


@asset_check(asset=images, description="Every accepted location has finite lat in [-90, 90] and lon in [-180, 180].")
def coordinates_in_range(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource
) -> AssetCheckResult:
    (bad,) = _scalar(
        warehouse,
        f"SELECT count(*) FROM images WHERE {_in_shards(context, dataset)} AND NOT (lat BETWEEN -90 AND 90 AND "
        f"lon BETWEEN -180 AND 180)",
    )
    return AssetCheckResult(passed=bad == 0, metadata={"out_of_range": bad})


@asset_check(
    asset=images,
    description=(
        "Image ids are unique within the run's shards (the id hash sends every copy of an id to the same shard)."
    ),
)
def unique_image_ids(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource
) -> AssetCheckResult:
    total, distinct = _scalar(
        warehouse, f"SELECT count(*), count(DISTINCT image_id) FROM images WHERE {_in_shards(context, dataset)}"
    )
    return AssetCheckResult(passed=total == distinct, metadata={"rows": total, "distinct_ids": distinct})


@asset_check(
    asset=images,
    description="The share of rejected records in the run's shards stays under the dataset's max_rejected_share.",
)
def rejected_share(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource
) -> AssetCheckResult:
    store = warehouse.get()  # both counts from the partitions' manifests
    accepted, rejected = (
        sum(store.manifest(table, dataset=dataset.name, shard=shard)["rows"] for shard in context.partition_keys)
        for table in (IMAGES_TABLE, REJECTED_TABLE)
    )
    share = rejected / max(accepted + rejected, 1)
    return AssetCheckResult(
        passed=share <= dataset.max_rejected_share,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "accepted": accepted,
            "rejected": rejected,
            "share": float(share),
            "threshold": dataset.max_rejected_share,
        },
    )


@asset_check(asset=clip_embeddings, description="No NaN/inf embeddings; every embedding has unit norm.")
def embeddings_finite_unit_norm(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource
) -> AssetCheckResult:
    bad, worst = _scalar(
        warehouse,
        f"""SELECT count(*) FILTER (WHERE NOT isfinite(n) OR abs(n - 1) > 1e-3), coalesce(max(abs(n - 1)), 0)
            FROM (SELECT sqrt(list_inner_product(embedding, embedding)) AS n
                  FROM embeddings WHERE {_in_shards(context, dataset)})""",
    )
    return AssetCheckResult(passed=bad == 0, metadata={"bad_rows": bad, "max_norm_deviation": float(worst)})


@asset_check(asset=clip_embeddings, description="Embedding rows = images (1 view) + test images x (views - 1).")
def embedding_rows_match_images(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    dataset: DatasetResource,
    encoder: EncoderResource,
) -> AssetCheckResult:
    where = _in_shards(context, dataset)
    images_rows, test_rows, embedding_rows = _scalar(
        warehouse,
        f"""SELECT (SELECT count(*) FROM images WHERE {where}),
                   (SELECT count(*) FROM images WHERE {where} AND split = 'test'),
                   (SELECT count(*) FROM embeddings WHERE {where})""",
    )
    expected = images_rows + test_rows * (encoder.test_views - 1)
    return AssetCheckResult(passed=embedding_rows == expected, metadata={"expected": expected, "found": embedding_rows})


@asset_check(asset=shdd_tables, description="Each SHDD table has one row per image, with (L+1)^2 coefficients.")
def shdd_rows_match_images(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    dataset: DatasetResource,
    training: TrainingResource,
) -> AssetCheckResult:
    found = {}
    where = _in_shards(context, dataset)
    with report_sql.in_memory_views(warehouse.get()) as con:
        (images_rows,) = con.sql(f"SELECT count(*) FROM images WHERE {where}").fetchall()[0]
        for L in training.degrees():
            found[str(L)] = con.sql(
                f"SELECT count(*), coalesce(min(len(coefficients)), 0), coalesce(max(len(coefficients)), 0) "
                f"FROM shdd WHERE {where} AND L = {L}"
            ).fetchall()[0]
    passed = all(rows == images_rows and low == high == (int(L) + 1) ** 2 for L, (rows, low, high) in found.items())
    return AssetCheckResult(
        passed=passed, metadata={"images": images_rows, "rows_per_L": {L: v[0] for L, v in found.items()}}
    )


@asset_check(
    asset=predictions, description="Every test image has a prediction for every method, with finite coordinates."
)
def predictions_cover_test_images(warehouse: WarehouseResource, dataset: DatasetResource) -> AssetCheckResult:
    version = read_latest(warehouse.get())["version"]
    test_rows, methods, predicted, bad = _scalar(
        warehouse,
        f"""SELECT (SELECT count(*) FROM images WHERE dataset = '{dataset.name}' AND split = 'test'),
                   (SELECT count(DISTINCT method) FROM predictions
                    WHERE dataset = '{dataset.name}' AND model_version = {version}),
                   (SELECT count(*) FROM predictions WHERE dataset = '{dataset.name}' AND model_version = {version}),
                   (SELECT count(*) FROM predictions WHERE dataset = '{dataset.name}' AND model_version = {version}
                    AND NOT (isfinite(pred_lat) AND isfinite(pred_lon)))""",
    )
    return AssetCheckResult(
        passed=predicted == test_rows * methods and bad == 0,
        metadata={"test_images": test_rows, "methods": methods, "rows": predicted, "non_finite": bad},
    )


ALL_CHECKS = [
    coordinates_in_range,
    unique_image_ids,
    rejected_share,
    embeddings_finite_unit_norm,
    embedding_rows_match_images,
    shdd_rows_match_images,
    predictions_cover_test_images,
]
