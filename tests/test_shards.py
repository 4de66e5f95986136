"""Id-hash shards: stable assignment, the bounded sharded writer, and the all-shards manifest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.warehouse import Warehouse


def test_keys_and_assignment_are_stable_and_agree():
    assert shards.shard_keys(3) == ["000", "001", "002"]
    assert shards.shard_keys(1200)[-1] == "1199"
    ids = [f"{i:02d}/{i:06d}.jpg" for i in range(500)]
    keys = shards.shard_keys(7)
    indices = shards.shard_indices(ids, 7)
    assert [keys[i] for i in indices] == [shards.shard_of(i, keys) for i in ids]
    # pinned: crc32(b"00/000000.jpg") = 1043592864, mod 7 = 6. Changing the hash would reshuffle every warehouse.
    assert shards.shard_of("00/000000.jpg", keys) == "006"
    assert len(set(indices.tolist())) == 7  # every shard gets rows


@pytest.mark.parametrize("raw", ["zero", "0", "10000"])
def test_a_bad_shard_count_is_refused_by_name(monkeypatch, raw):
    monkeypatch.setenv("LOCDIFF_SHARDS", raw)
    with pytest.raises(ValueError, match="LOCDIFF_SHARDS"):
        shards.shard_count()


def test_the_sharded_writer_keeps_row_order_and_never_holds_a_full_buffer(tmp_path):
    schema = pa.schema([("n", pa.int64())])
    writer = shards.ShardedParquet(tmp_path, schema, shards.shard_keys(3), buffer_rows=10)
    values = np.arange(95)
    for start in range(0, 95, 4):
        chunk = values[start : start + 4]
        writer.add(
            pa.table({"n": chunk}, schema=schema), np.where(chunk % 5 == 0, 2, chunk % 2)
        )  # shard 2: multiples of 5
        assert writer.buffered < 10
    rows = writer.close()
    read = {key: pq.read_table(tmp_path / f"shard={key}" / shards.SHARD_FILE)["n"].to_pylist() for key in rows}
    assert read["002"] == [v for v in values.tolist() if v % 5 == 0]
    assert read["000"] == [v for v in values.tolist() if v % 5 and v % 2 == 0]
    assert sum(rows.values()) == 95 and rows == {k: len(v) for k, v in read.items()}
    empty = shards.ShardedParquet(tmp_path / "empty", schema, shards.shard_keys(2), buffer_rows=10)
    assert empty.close() == {"000": 0, "001": 0}
    assert (
        pq.read_table(tmp_path / "empty" / "shard=001" / shards.SHARD_FILE).schema == schema
    )  # an empty shard still has its columns


def test_the_all_shards_manifest_needs_every_shard_and_follows_each_one(tmp_path):
    warehouse = Warehouse(tmp_path)
    with warehouse.write_partition(
        shards.METADATA_TABLE, {"fingerprint": "split", "shards": ["000", "001"]}, dataset="toy"
    ):
        pass

    def write(shard: str, fingerprint: str, rows: int) -> None:
        with warehouse.write_partition("images", {"fingerprint": fingerprint}, dataset="toy", shard=shard) as writer:
            writer.write(pa.table({"n": list(range(rows))}))

    write("000", "a", 3)
    assert shards.manifest(warehouse, "images", "toy") is None
    with pytest.raises(FileNotFoundError, match="shard"):
        shards.read(warehouse, "images", "toy")
    write("001", "b", 4)
    first = shards.manifest(warehouse, "images", "toy")
    assert first["rows"] == 7 and shards.read(warehouse, "images", "toy")["n"].to_pylist() == [0, 1, 2, 0, 1, 2, 3]
    write("001", "c", 4)
    assert shards.manifest(warehouse, "images", "toy")["fingerprint"] != first["fingerprint"]
