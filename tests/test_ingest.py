"""Ingest of the real layouts: every good record kept, every bad one rejected with a named reason."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.compute as pc
import pytest
from ingest_fixtures import BAD_RECORDS, make_dataset

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.datasets import DatasetSpec, preset
from locdiff_pipeline.data.image_sources import read_reference
from locdiff_pipeline.data.ingest import IMAGES_TABLE, REJECTED_TABLE, ingest, reason_kind
from locdiff_pipeline.data.warehouse import Warehouse


def read(warehouse: Warehouse, table: str):
    return shards.read(warehouse, table, "toy")


@pytest.mark.parametrize("layout", ["folder", "tar", "msgpack"])
def test_every_layout_keeps_good_records_and_names_each_rejection(tmp_path, layout):
    made = make_dataset(tmp_path / "data", layout)
    spec = DatasetSpec("toy", made["metadata"], made["images"], layout, store_bytes=layout == "folder")
    warehouse = Warehouse(tmp_path / "warehouse")
    report = ingest(spec, warehouse)

    images = read(warehouse, IMAGES_TABLE)
    assert sorted(images["image_id"].to_pylist()) == sorted(made["good_ids"])
    assert report.accepted == len(made["good_ids"])
    # extra metadata columns are kept (MP16-Pro's place names)
    assert images.filter(pc.equal(images["image_id"], made["good_ids"][3]))["meta_city"].to_pylist() == ["place 3"]
    # stored references read back the very bytes of the source image
    for row in images.slice(0, 5).to_pylist():
        data = row["image_bytes"] if row["image_bytes"] is not None else read_reference(row["source"])
        assert data == made["good_bytes"][row["image_id"]]

    rejected = read(warehouse, REJECTED_TABLE).to_pylist()
    kinds = {r["image_id"]: reason_kind(r["reason"]) for r in rejected if r["image_id"] in BAD_RECORDS}
    assert kinds == {image_id: expected for image_id, (*_, expected) in BAD_RECORDS.items()}
    by_kind = collections.Counter(reason_kind(r["reason"]) for r in rejected)
    assert by_kind["duplicate id"] == 1 and by_kind["missing id"] == 1
    duplicate = next(r for r in rejected if reason_kind(r["reason"]) == "duplicate id")
    assert duplicate["image_id"] == made["good_ids"][3] and "first kept at row" in duplicate["reason"]
    if layout != "folder":
        empty = [r for r in rejected if reason_kind(r["reason"]) == "empty shard"]
        assert len(empty) == 1 and empty[0]["source"].endswith(("002.tar", "002.msg"))
    assert report.rejected == len(rejected)
    assert dict(report.rejected_by_reason) == dict(by_kind)


def test_presets_carry_the_public_datasets_conventions(tmp_path):
    made = make_dataset(tmp_path / "data", "folder", extra_column=False)
    spec = preset("im2gps3k", made["metadata"], made["images"])
    report = ingest(spec, Warehouse(tmp_path / "warehouse"))
    assert dict(report.splits) == {"test": len(made["good_ids"])}
    mp16 = preset("mp16", made["metadata"], made["images"])
    assert (mp16.default_split, mp16.store_bytes, mp16.val_share > 0) == ("train", False, True)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope", "a.csv", "b")


def test_a_missing_column_or_empty_metadata_fails_before_anything_is_written(tmp_path):
    made = make_dataset(tmp_path / "data", "folder")
    warehouse = Warehouse(tmp_path / "warehouse")
    with pytest.raises(ValueError, match="column 'LATITUDE' not in its header row"):
        ingest(DatasetSpec("toy", made["metadata"], made["images"], lat_column="LATITUDE"), warehouse)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="metadata CSV is empty"):
        ingest(DatasetSpec("toy", str(empty), made["images"]), warehouse)
    assert not (warehouse.root / IMAGES_TABLE).exists()


def test_unchanged_input_is_served_from_cache_and_changed_input_is_reingested(tmp_path):
    made = make_dataset(tmp_path / "data", "folder")
    spec = DatasetSpec("toy", made["metadata"], made["images"])
    warehouse = Warehouse(tmp_path / "warehouse")
    first = ingest(spec, warehouse)
    again = ingest(spec, warehouse)
    assert again.cached and again.accepted == first.accepted and again.rejected_by_reason == first.rejected_by_reason
    with open(made["metadata"], "a") as handle:
        handle.write(f"{made['good_ids'][1]},1,1,late duplicate\n")
    changed = ingest(spec, warehouse)
    assert not changed.cached and changed.rejected_by_reason["duplicate id"] == 2


KILLABLE_INGEST = textwrap.dedent(
    """
    import sys, time
    import locdiff_pipeline.data.ingest as ingest_module
    from locdiff_pipeline.data.datasets import DatasetSpec
    from locdiff_pipeline.data.warehouse import Warehouse

    original = ingest_module._images_table
    def slow_images_table(rows, extra):
        time.sleep(0.3)  # a slow disk: gives the test time to kill us mid-partition
        return original(rows, extra)
    ingest_module._images_table = slow_images_table
    metadata, images, warehouse = sys.argv[1:4]
    ingest_module.ingest(DatasetSpec("toy", metadata, images, batch_rows=5), Warehouse(warehouse))
    """
)


def test_a_run_killed_mid_write_reruns_to_exactly_the_uninterrupted_rows(tmp_path):
    made = make_dataset(tmp_path / "data", "folder", good=120)
    spec = DatasetSpec("toy", made["metadata"], made["images"], batch_rows=5)
    reference = Warehouse(tmp_path / "reference")
    ingest(spec, reference)

    crashed = Warehouse(tmp_path / "crashed")
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_INGEST, made["metadata"], made["images"], str(crashed.root)]
    )
    staging = crashed.root / "_staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(staging.glob("images-*/part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert list(staging.glob("images-*/part-*.parquet")), "the kill landed after the write finished"
    visible = list((crashed.root / IMAGES_TABLE / "dataset=toy").glob("shard=*"))
    assert all((shard / "_manifest.json").is_file() for shard in visible)  # no half partition is visible
    assert len(visible) < len(shards.dataset_shards(crashed, "toy"))  # the shard being written is not among them

    rerun = ingest(spec, crashed)
    assert not rerun.cached
    expected = read(reference, IMAGES_TABLE).drop_columns(["source"]).sort_by("image_id")
    actual = read(crashed, IMAGES_TABLE).drop_columns(["source"]).sort_by("image_id")
    assert actual.equals(expected)
    assert (
        read(crashed, REJECTED_TABLE)
        .sort_by("row")
        .drop_columns(["source"])
        .equals(read(reference, REJECTED_TABLE).sort_by("row").drop_columns(["source"]))
    )
    assert not any(staging.iterdir())  # the killed run's staging folder was cleared


@pytest.mark.parametrize("layout", ["folder", "tar", "msgpack"])
def test_the_shard_count_changes_where_rows_live_but_not_which_rows(tmp_path, layout):
    made = make_dataset(tmp_path / "data", layout, good=60)
    spec = DatasetSpec("toy", made["metadata"], made["images"], layout, store_bytes=layout == "folder", batch_rows=7)
    one, many = Warehouse(tmp_path / "one"), Warehouse(tmp_path / "many")
    ingest(spec, one, shards.shard_keys(1))
    ingest(spec, many, shards.shard_keys(5))

    def canonical(warehouse: Warehouse, table: str, key: str):
        return read(warehouse, table).sort_by(
            [(key, "ascending"), ("reason" if table == REJECTED_TABLE else key, "ascending")]
        )

    assert canonical(many, IMAGES_TABLE, "image_id").equals(canonical(one, IMAGES_TABLE, "image_id"))
    assert canonical(many, REJECTED_TABLE, "row").equals(canonical(one, REJECTED_TABLE, "row"))
    images = read(many, IMAGES_TABLE)
    for shard in shards.dataset_shards(many, "toy"):  # every row sits in the shard its id hashes to
        ids = many.read(IMAGES_TABLE, columns=["image_id"], dataset="toy", shard=shard)["image_id"].to_pylist()
        assert all(shards.shard_of(i, shards.shard_keys(5)) == shard for i in ids)
    assert images.num_rows == len(made["good_ids"])

    ingest(spec, many, shards.shard_keys(2))  # fewer shards: the old ones beyond them are gone, nothing counted twice
    assert sorted(p.name for p in (many.root / IMAGES_TABLE / "dataset=toy").iterdir()) == ["shard=000", "shard=001"]
    assert canonical(many, IMAGES_TABLE, "image_id").equals(canonical(one, IMAGES_TABLE, "image_id"))


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_archive_references_seek_straight_to_the_member(tmp_path, mode):
    import io
    import tarfile

    from ingest_fixtures import jpeg

    from locdiff_pipeline.data.image_sources import scan_archive

    archive = tmp_path / ("images.tar" if mode == "w" else "images.tar.gz")
    members = {f"{i:02d}/{i}.jpg": jpeg(i) for i in range(5)}
    with tarfile.open(archive, mode) as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    scanned = dict(scan_archive("tar", archive))
    assert sorted(scanned) == sorted(members)
    assert all(read_reference(reference) == members[name] for name, reference in scanned.items())
    assert (
        read_reference(f"tar:{archive}::03/3.jpg") == members["03/3.jpg"]
    )  # a reference without an offset still reads


def test_a_shard_refuses_a_split_made_from_older_metadata(tmp_path):
    from locdiff_pipeline.data.ingest import ingest_shard, split_metadata

    made = make_dataset(tmp_path / "data", "folder")
    spec = DatasetSpec("toy", made["metadata"], made["images"])
    warehouse = Warehouse(tmp_path / "warehouse")
    keys = shards.shard_keys(2)
    split_metadata(spec, warehouse, keys)
    with open(made["metadata"], "a") as handle:
        handle.write("late/added.jpg,1,1,late\n")
    with pytest.raises(RuntimeError, match="stale.*materialize image_metadata first"):
        ingest_shard(spec, warehouse, keys[0])
    with pytest.raises(FileNotFoundError, match="no metadata shard '007'"):
        ingest_shard(spec, warehouse, "007")
    assert not (warehouse.root / IMAGES_TABLE).exists()


def test_short_rows_are_rejected_by_name_and_blank_lines_skipped(tmp_path):
    made = make_dataset(tmp_path / "data", "folder", good=6, extra_column=False)
    good = made["good_ids"]
    with open(made["metadata"], "a") as handle:
        handle.write(f"\n{good[0]}_short,12.5\n\n")  # a blank line, a row with no LON field, another blank line
    warehouse = Warehouse(tmp_path / "warehouse")
    report = ingest(DatasetSpec("toy", made["metadata"], made["images"]), warehouse)
    rejected = {r["image_id"]: r for r in read(warehouse, REJECTED_TABLE).to_pylist()}
    assert rejected[f"{good[0]}_short"]["reason"] == "lon missing"
    assert rejected[f"{good[0]}_short"]["row"] == max(
        r["row"] for r in rejected.values()
    )  # numbered as the last record
    assert report.accepted == len(good)
    assert [r["reason"] for r in rejected.values()].count("missing id") == 1  # the fixture's one, not the blank lines


def test_an_id_with_a_nul_byte_is_rejected_by_name_and_the_shard_keeps_its_good_rows(tmp_path):
    made = make_dataset(tmp_path / "data", "folder", good=6, extra_column=False)
    with open(made["metadata"], "a") as handle:
        handle.write("bad\x00id.jpg,10,10\nline\x1fbreak.jpg,11,11\n")
    warehouse = Warehouse(tmp_path / "warehouse")
    report = ingest(DatasetSpec("toy", made["metadata"], made["images"]), warehouse)
    rejected = {r["image_id"]: r["reason"] for r in read(warehouse, REJECTED_TABLE).to_pylist()}
    assert rejected["bad\x00id.jpg"] == "invalid id: 'bad\\x00id.jpg' holds a control character " + (
        "(a NUL byte or a line break names no file)"
    )
    assert reason_kind(rejected["line\x1fbreak.jpg"]) == "invalid id"
    assert report.accepted == len(made["good_ids"])


def test_a_metadata_csv_with_a_header_and_no_rows_fails_naming_it_and_replaces_nothing(tmp_path):
    made = make_dataset(tmp_path / "data", "folder", good=6, extra_column=False)
    warehouse = Warehouse(tmp_path / "warehouse")
    ingest(DatasetSpec("toy", made["metadata"], made["images"]), warehouse)
    before = read(warehouse, IMAGES_TABLE).num_rows
    header_only = tmp_path / "header_only.csv"
    header_only.write_text(open(made["metadata"]).readline())
    with pytest.raises(ValueError, match=r"header_only.csv: dataset 'toy' has a header and no rows"):
        ingest(DatasetSpec("toy", str(header_only), made["images"]), warehouse)
    assert read(warehouse, IMAGES_TABLE).num_rows == before  # what was written before is still there
