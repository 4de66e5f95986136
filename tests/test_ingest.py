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
from locdiff_pipeline.datasets import DatasetSpec, preset
from locdiff_pipeline.image_sources import read_reference
from locdiff_pipeline.ingest import IMAGES_TABLE, REJECTED_TABLE, ingest, reason_kind
from locdiff_pipeline.warehouse import Warehouse


@pytest.mark.parametrize("layout", ["folder", "tar", "msgpack"])
def test_every_layout_keeps_good_records_and_names_each_rejection(tmp_path, layout):
    made = make_dataset(tmp_path / "data", layout)
    spec = DatasetSpec("toy", made["metadata"], made["images"], layout, store_bytes=layout == "folder")
    warehouse = Warehouse(tmp_path / "warehouse")
    report = ingest(spec, warehouse)

    images = warehouse.read(IMAGES_TABLE, dataset="toy")
    assert sorted(images["image_id"].to_pylist()) == sorted(made["good_ids"])
    assert report.accepted == len(made["good_ids"])
    # extra metadata columns are kept (MP16-Pro's place names)
    assert images.filter(pc.equal(images["image_id"], made["good_ids"][3]))["meta_city"].to_pylist() == ["place 3"]
    # stored references read back the very bytes of the source image
    for row in images.slice(0, 5).to_pylist():
        data = row["image_bytes"] if row["image_bytes"] is not None else read_reference(row["source"])
        assert data == made["good_bytes"][row["image_id"]]

    rejected = warehouse.read(REJECTED_TABLE, dataset="toy").to_pylist()
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
    with pytest.raises(ValueError, match="column 'LATITUDE' not in the header"):
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
    import locdiff_pipeline.ingest as ingest_module
    from locdiff_pipeline.datasets import DatasetSpec
    from locdiff_pipeline.warehouse import Warehouse

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
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_INGEST, made["metadata"], made["images"], str(crashed.root)])
    staging = crashed.root / "_staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(staging.glob("images-*/part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert list(staging.glob("images-*/part-*.parquet")), "the kill landed after the write finished"
    assert not (crashed.root / IMAGES_TABLE / "dataset=toy").exists()  # no half partition is visible

    rerun = ingest(spec, crashed)
    assert not rerun.cached
    expected = reference.read(IMAGES_TABLE, dataset="toy").drop_columns(["source"]).sort_by("image_id")
    actual = crashed.read(IMAGES_TABLE, dataset="toy").drop_columns(["source"]).sort_by("image_id")
    assert actual.equals(expected)
    assert crashed.read(REJECTED_TABLE, dataset="toy").sort_by("row").drop_columns(["source"]).equals(reference.read(REJECTED_TABLE, dataset="toy").sort_by("row").drop_columns(["source"]))
    assert not any(staging.iterdir())  # the killed run's staging folder was cleared
