"""Ingest stage: the metadata CSV split into id-hash shards, then each shard's records checked and stored."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from locdiff_pipeline.data.ingest import IngestReport, ingest_shard, split_metadata
from locdiff_pipeline.defs.partitions import SHARDS, span
from locdiff_pipeline.defs.resources import DatasetResource, WarehouseResource

GROUP = "ingest"


@asset(
    group_name=GROUP,
    description=(
        "The metadata CSV split into id-hash shards (and, for tar/msgpack images, an index of where each image "
        "lives), streamed once."
    ),
)
def image_metadata(
    context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource
) -> MaterializeResult:
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


@asset(
    group_name=GROUP,
    deps=[image_metadata],
    partitions_def=SHARDS,
    description=(
        "Dataset ingest, one shard per partition: images into warehouse/images, bad records with their reason into "
        "warehouse/rejected."
    ),
)
def images(context: AssetExecutionContext, warehouse: WarehouseResource, dataset: DatasetResource) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    spec = dataset.spec(store)
    result = IngestReport()
    for shard in context.partition_keys:
        result.add(ingest_shard(spec, store, shard))
    reasons = (
        "\n".join(f"| {reason} | {count} |" for reason, count in sorted(result.rejected_by_reason.items()))
        or "| (none) | 0 |"
    )
    context.log.info(
        f"{spec.name} shards {span(context.partition_keys)}: {result.accepted} accepted, {result.rejected} "
        f"rejected, cached={result.cached}"
    )
    return MaterializeResult(
        metadata={
            "dataset": spec.name,
            "shards": span(context.partition_keys),
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
