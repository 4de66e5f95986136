"""Id-hash shards: the unit of work of the ingest, embedding and SHDD assets (their Dagster partitions).

A record's shard is a hash of its image id, so every copy of an id lands in the same shard (duplicates
are found inside one shard) and a shard's memory is bounded by its share of the dataset. The shard
count is fixed when the definitions load ($LOCDIFF_SHARDS, default 4); the metadata split records the
shard keys it wrote, and everything downstream reads exactly those shards.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from locdiff_pipeline import settings
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint

METADATA_TABLE = "metadata"  # the metadata CSV split by shard: what every shard partition starts from
SHARD_FILE = "part-00000.parquet"


def shard_count() -> int:
    """The configured number of shards ($LOCDIFF_SHARDS, validated by settings)."""
    return settings.current().shards


def shard_keys(count: int) -> list[str]:
    """Partition keys '000', '001', ... (four digits past 1000 shards)."""
    width = max(3, len(str(count - 1)))
    return [f"{i:0{width}d}" for i in range(count)]


def _shard_index(image_id: str, count: int) -> int:
    """crc32 of the id's UTF-8 bytes modulo the shard count: stable across runs and machines."""
    return zlib.crc32(image_id.encode()) % count


def shard_indices(image_ids: list[str], count: int) -> np.ndarray:
    """The shard index of each id."""
    return np.fromiter((_shard_index(i, count) for i in image_ids), dtype=np.int64, count=len(image_ids))


def shard_of(image_id: str, keys: list[str]) -> str:
    return keys[_shard_index(image_id, len(keys))]


def shard_file(warehouse: Warehouse, table: str, dataset: str, shard: str) -> Path:
    """One shard's file inside a table that ShardedParquet wrote (metadata, image_index)."""
    return warehouse.partition_dir(table, dataset=dataset) / f"shard={shard}" / SHARD_FILE


def dataset_shards(warehouse: Warehouse, dataset: str) -> list[str]:
    """The shard keys the dataset's metadata split wrote; raises when it has not been split yet."""
    manifest = warehouse.manifest(METADATA_TABLE, dataset=dataset)
    if manifest is None:
        raise FileNotFoundError(f"dataset {dataset!r} has no metadata split yet; materialize image_metadata first")
    return list(manifest["shards"])


def read(
    warehouse: Warehouse,
    table: str,
    dataset: str,
    columns: list[str] | None = None,
    *,
    where: ds.Expression | None = None,
    **keys: object,
) -> pa.Table:
    """Every shard of a sharded table (its rows matching `where`), concatenated in shard order; raises
    naming a shard not yet written."""
    parts = [
        warehouse.read(table, columns=columns, where=where, dataset=dataset, **keys, shard=shard)
        for shard in dataset_shards(warehouse, dataset)
    ]
    return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})


def manifest(warehouse: Warehouse, table: str, dataset: str, **keys: object) -> dict | None:
    """One manifest for all shards of a table: the first shard's fields, summed rows, and a fingerprint of
    every shard's fingerprint (so downstream work reruns when any shard changed). None if a shard is missing."""
    manifests = [
        warehouse.manifest(table, dataset=dataset, **keys, shard=shard) for shard in dataset_shards(warehouse, dataset)
    ]
    if not manifests or any(m is None for m in manifests):
        return None
    return {
        **manifests[0],
        "rows": sum(m["rows"] for m in manifests),
        "fingerprint": fingerprint([m["fingerprint"] for m in manifests]),
        "shards": len(manifests),
    }


class ShardedParquet:
    """Streams rows into one Parquet file per shard (FOLDER/shard=KEY/part-00000.parquet), holding at most
    `buffer_rows` rows in memory: the split's memory is bounded by the buffer, not the dataset."""

    def __init__(self, folder: Path, schema: pa.Schema, keys: list[str], buffer_rows: int):
        self.folder, self.schema, self.keys, self.buffer_rows = folder, schema, keys, max(1, buffer_rows)
        self.pending: dict[int, list[pa.Table]] = {}
        self.buffered = 0
        self.rows = [0] * len(keys)
        self.writers: dict[int, pq.ParquetWriter] = {}

    def add(self, table: pa.Table, shard_index: np.ndarray) -> None:
        """Add rows, each going to shard_index[row]; row order inside a shard is kept."""
        order = np.argsort(shard_index, kind="stable")
        sorted_index = shard_index[order]
        bounds = np.flatnonzero(np.diff(sorted_index)) + 1
        for start, rows in zip([0, *bounds], np.split(order, bounds)):
            if len(rows):
                self.pending.setdefault(int(sorted_index[start]), []).append(table.take(pa.array(rows)))
        self.buffered += table.num_rows
        if self.buffered >= self.buffer_rows:
            self.flush()

    def flush(self) -> None:
        for shard, tables in self.pending.items():
            block = pa.concat_tables(tables).cast(self.schema)
            self._writer(shard).write_table(block)
            self.rows[shard] += block.num_rows
        self.pending, self.buffered = {}, 0

    def close(self) -> dict[str, int]:
        """Flush, close every file (an empty one for a shard with no rows) and return rows per shard key."""
        self.flush()
        for shard in range(len(self.keys)):
            self._writer(shard).close()
        return dict(zip(self.keys, self.rows))

    def _writer(self, shard: int) -> pq.ParquetWriter:
        if shard not in self.writers:
            folder = self.folder / f"shard={self.keys[shard]}"
            folder.mkdir(parents=True, exist_ok=True)
            self.writers[shard] = pq.ParquetWriter(folder / SHARD_FILE, self.schema, compression="zstd")
        return self.writers[shard]
