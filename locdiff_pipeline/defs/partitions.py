"""Partitions of the graph: id-hash shards for ingest, embeddings and SHDD tables; benchmarks for the
evaluation assets.

Shards are the unit of memory and parallel work of the data stages; their count is read once when the
definitions load ($LOCDIFF_SHARDS), so every process of a deployment (UI, daemon, run workers) must
see the same value. Benchmarks are dynamic partitions: `image_metadata` registers every benchmark of
the dataset catalog, so adding one to the catalog adds a partition (and only its work) without
reloading the code, and the UI shows each benchmark's predictions and report on their own.
"""

from dagster import AssetExecutionContext, AssetObservation, DynamicPartitionsDefinition, StaticPartitionsDefinition

from locdiff_pipeline.data import shards

SHARDS = StaticPartitionsDefinition(shards.shard_keys(shards.shard_count()))
BENCHMARKS = DynamicPartitionsDefinition(name="benchmarks")

# Dagster's run tag of a run of one partition.
PARTITION_TAG = "dagster/partition"
# Dagster's run tags for a run over a range of partitions (what "materialize all shards in one run" sets).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def all_shards_tags() -> dict[str, str]:
    """Run tags that make one run cover every shard (the sharded assets loop over them in one step each)."""
    keys = SHARDS.get_partition_keys()
    return {PARTITION_RANGE_START_TAG: keys[0], PARTITION_RANGE_END_TAG: keys[-1]}


def span(keys: list[str]) -> str:
    """'001', or '000...003' for a run over a range of shards (for logs and metadata)."""
    return keys[0] if len(keys) == 1 else f"{keys[0]}...{keys[-1]}"


def observe_each_shard(context: AssetExecutionContext, per_shard: dict[str, dict]) -> None:
    """In a run over a range of shards, one observation per shard with that shard's own figures (its
    Partitions view then describes it). Why: Dagster gives every partition of a range run the same
    materialization metadata (the run's totals), and takes no per-partition metadata (dagster#18123).
    A one-shard run's materialization already describes its shard."""
    if len(context.partition_keys) < 2:
        return
    for shard, metadata in per_shard.items():
        context.log_event(AssetObservation(asset_key=context.asset_key, partition=shard, metadata=metadata))
