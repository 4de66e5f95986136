"""Ingest stage: each catalog dataset's metadata CSV split into id-hash shards, then each shard's
records checked and stored."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from locdiff_pipeline.data.ingest import INGEST_VERSION, IngestReport, ingest_shard, split_metadata
from locdiff_pipeline.defs import stages
from locdiff_pipeline.defs.partitions import BENCHMARKS, SHARDS, observe_each_shard, span
from locdiff_pipeline.defs.resources import DatasetsResource, WarehouseResource
from locdiff_pipeline.steps.progress import Progress

GROUP = stages.INGEST


@asset(
    kinds={"csv", "parquet"},
    code_version=str(INGEST_VERSION),
    group_name=GROUP,
    description=(
        "Every dataset of the catalog (training and benchmarks): the metadata CSV split into id-hash shards "
        "(and, for tar/msgpack images, an index of where each image lives), streamed once. Registers the "
        "benchmarks as partitions of the evaluation assets."
    ),
)
def image_metadata(
    context: AssetExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource
) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    catalog = datasets.get()
    summary = {}
    for spec in datasets.specs(store):
        split = split_metadata(spec, store, SHARDS.get_partition_keys())
        context.log.info(
            f"{spec.name}: {split['rows']} records in {len(split['shards'])} shards, cached={split['cached']}"
        )
        summary[spec.name] = {
            "records": split["rows"],
            "largest_shard": max(split["rows_per_shard"].values(), default=0),
            "cached": split["cached"],
        }
    new = [
        name for name in catalog.benchmark_names if not context.instance.has_dynamic_partition(BENCHMARKS.name, name)
    ]
    if new:
        context.instance.add_dynamic_partitions(BENCHMARKS.name, new)
    return MaterializeResult(
        metadata={
            "training_dataset": catalog.training.name,
            "benchmarks": MetadataValue.json(catalog.benchmark_names),
            "datasets": MetadataValue.json(summary),
            "records": sum(s["records"] for s in summary.values()),
            "cached": all(s["cached"] for s in summary.values()),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(
    kinds={"parquet"},
    code_version=str(INGEST_VERSION),
    group_name=GROUP,
    deps=[image_metadata],
    partitions_def=SHARDS,
    description=(
        "Ingest of every catalog dataset, one shard per partition: images into warehouse/images, bad records with "
        "their reason into warehouse/rejected."
    ),
)
def images(
    context: AssetExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource
) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    per_dataset, per_shard = {}, {shard: IngestReport() for shard in context.partition_keys}
    specs = datasets.specs(store)
    progress = Progress(
        f"ingesting shards {span(context.partition_keys)}", len(specs) * len(per_shard), context.log.info, unit="shards"
    )
    for spec in specs:
        result = IngestReport()
        for shard in context.partition_keys:
            report = ingest_shard(spec, store, shard)
            result.add(report)
            per_shard[shard].add(report)
            progress.advance()
        per_dataset[spec.name] = result
        context.log.info(
            f"{spec.name} shards {span(context.partition_keys)}: {result.accepted} accepted, {result.rejected} "
            f"rejected, cached={result.cached}"
        )
    observe_each_shard(
        context,
        {
            shard: {
                "shard": shard,
                "accepted": r.accepted,
                "dagster/row_count": r.accepted,
                "rejected": r.rejected,
                "rejected_by_reason": MetadataValue.json(dict(r.rejected_by_reason)),
            }
            for shard, r in per_shard.items()
        },
    )
    reasons = [
        f"| {name} | {reason} | {count} |"
        for name, r in per_dataset.items()
        for reason, count in sorted(r.rejected_by_reason.items())
    ]
    return MaterializeResult(
        metadata={
            "shards": span(context.partition_keys),
            "accepted": sum(r.accepted for r in per_dataset.values()),
            "dagster/row_count": sum(r.accepted for r in per_dataset.values()),
            "rejected": sum(r.rejected for r in per_dataset.values()),
            "splits": MetadataValue.json({name: dict(r.splits) for name, r in per_dataset.items()}),
            "rejected_by_reason": MetadataValue.md(
                "| dataset | reason | count |\n|---|---|---|\n" + ("\n".join(reasons) or "| (none) | | 0 |")
            ),
            "cached": all(r.cached for r in per_dataset.values()),
            "seconds": round(time.perf_counter() - started, 2),
            "path": MetadataValue.path(str(store.table_dir("images"))),
        }
    )
