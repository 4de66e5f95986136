"""Hostile input reaches ingest as named per-record rejections, never a failed shard or a hang: a
decompression bomb, a FIFO, a symlink loop, an unreadable file, corrupt msgpack framing, a UTF-8 BOM and
rows with more fields than the header."""

from __future__ import annotations

import os
import signal

import msgpack
import pytest
from ingest_fixtures import bomb_png, jpeg, make_dataset, make_hostile_files

from locdiff_pipeline import settings
from locdiff_pipeline.data import shards
from locdiff_pipeline.data.datasets import DatasetSpec
from locdiff_pipeline.data.image_io import ImageTooLargeError, decode_image
from locdiff_pipeline.data.ingest import IMAGES_TABLE, REJECTED_TABLE, ingest, reason_kind
from locdiff_pipeline.data.warehouse import Warehouse

ONE_SHARD = ["000"]  # every record in one shard: the good ones must survive beside the bad


@pytest.fixture(autouse=True)
def no_hang():
    """A hang (a FIFO opened for reading) fails the test in 60 s instead of stalling the suite."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("ingest hung"))
    signal.alarm(60)
    yield
    signal.alarm(0)


def _tables(warehouse: Warehouse) -> tuple[list[str], dict[str, dict]]:
    images = shards.read(warehouse, IMAGES_TABLE, "toy")["image_id"].to_pylist()
    rejected = {r["image_id"]: r for r in shards.read(warehouse, REJECTED_TABLE, "toy").to_pylist()}
    return images, rejected


def test_bombs_fifos_loops_and_unreadable_files_are_rejected_by_name_beside_good_records(tmp_path):
    made = make_dataset(tmp_path / "data", "folder", good=8, extra_column=False)
    hostile = make_hostile_files(tmp_path / "data" / "images" / "bad", prefix="h_")
    unreadable = tmp_path / "data" / "images" / "bad" / "h_secret.jpg"
    unreadable.write_bytes(jpeg(5))
    unreadable.chmod(0)
    with open(made["metadata"], "a") as handle:
        for path in [*hostile.values(), unreadable]:
            handle.write(f"bad/{path.name},10,10\n")
    warehouse = Warehouse(tmp_path / "warehouse")
    ingest(DatasetSpec("toy", made["metadata"], made["images"]), warehouse, ONE_SHARD)
    images, rejected = _tables(warehouse)
    root = os.geteuid() == 0  # root reads a mode-000 file; everyone else gets a named rejection
    assert sorted(images) == sorted(made["good_ids"] + (["bad/h_secret.jpg"] if root else []))
    reasons = {kind: rejected[f"bad/{path.name}"]["reason"] for kind, path in hostile.items()}
    assert reason_kind(reasons["bomb"]) == "image too large" and "400,000,000 pixels" in reasons["bomb"]
    assert reason_kind(reasons["fifo"]) == "unreadable image" and "not a regular file" in reasons["fifo"]
    assert reason_kind(reasons["loop"]) == "unreadable image" and str(hostile["loop"]) in reasons["loop"]
    if not root:
        assert reason_kind(rejected["bad/h_secret.jpg"]["reason"]) == "unreadable image"


def test_the_pixel_limit_is_checked_from_the_header_and_configurable(monkeypatch):
    too_large = r"bomb.png: image too large: 400,000,000 pixels, over the limit of 100,000,000"
    with pytest.raises(ImageTooLargeError, match=too_large):
        decode_image(bomb_png(), "bomb.png")
    assert settings.current().max_image_pixels < 1_000_000_000
    monkeypatch.setenv("LOCDIFF_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(ImageTooLargeError, match="16 x 16 = 256 pixels, over the limit of 100"):
        decode_image(jpeg(1), "small.jpg")
    monkeypatch.setenv("LOCDIFF_MAX_IMAGE_PIXELS", "256")
    assert decode_image(jpeg(1), "small.jpg").size == (16, 16)


def test_corrupt_msgpack_framing_rejects_what_it_hides_and_names_the_file_and_offset(tmp_path):
    made = make_dataset(tmp_path / "data", "msgpack", good=12, shards=1, extra_column=False)
    archive = tmp_path / "data" / "shards" / "mp16-000.msg"
    unpacker = msgpack.Unpacker(open(archive, "rb"), raw=False)
    kept = [next(unpacker)["id"] for _ in range(4)]
    offset = unpacker.tell()
    data = archive.read_bytes()
    archive.write_bytes(data[:offset] + b"\xc1" + data[offset:])  # 0xc1: a byte msgpack never uses
    warehouse = Warehouse(tmp_path / "warehouse")
    ingest(DatasetSpec("toy", made["metadata"], made["images"], "msgpack"), warehouse, ONE_SHARD)
    images, rejected = _tables(warehouse)
    assert set(kept) & set(made["good_ids"]) <= set(images)  # the records before the corrupt byte
    corrupt = rejected[str(archive)]
    assert reason_kind(corrupt["reason"]) == "corrupt archive"
    assert f"at byte {offset} of {archive}" in corrupt["reason"] and corrupt["source"] == f"{archive}@{offset}"
    lost = set(made["good_ids"]) - set(images)
    assert lost and all(reason_kind(rejected[i]["reason"]) == "image missing" for i in lost)


def test_a_bom_csv_ingests_every_row_and_long_rows_are_rejected_by_name(tmp_path):
    made = make_dataset(tmp_path / "data", "folder", good=6, extra_column=False)
    metadata = tmp_path / "data" / "metadata.csv"
    text = metadata.read_text(encoding="utf-8")
    good = made["good_ids"]
    text += f"{good[0]}_long,1,2,surplus\n"
    metadata.write_bytes("\ufeff".encode() + text.encode("utf-8"))  # as Excel writes it
    warehouse = Warehouse(tmp_path / "warehouse")
    report = ingest(DatasetSpec("toy", str(metadata), made["images"]), warehouse, ONE_SHARD)
    images, rejected = _tables(warehouse)
    assert sorted(images) == sorted(good) and report.accepted == len(good)
    assert reason_kind(rejected[f"{good[0]}_long"]["reason"]) == "too many fields"


INJECTION = "x'; COPY (SELECT 'pwned' AS s) TO 'INJ.csv'; SELECT * FROM accuracy WHERE dataset = 'bluemarble"


def test_an_injection_in_run_config_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    from dagster import materialize

    from locdiff_pipeline.defs.assets.ingest import image_metadata
    from locdiff_pipeline.defs.resources import DatasetsResource, WarehouseResource

    monkeypatch.chdir(tmp_path)
    made = make_dataset(tmp_path / "data", "folder", good=4, extra_column=False)
    datasets = DatasetsResource(
        training={"name": INJECTION, "metadata_csv": made["metadata"], "images": made["images"]}
    )
    result = materialize(
        [image_metadata],
        resources={"warehouse": WarehouseResource(root=str(tmp_path)), "datasets": datasets},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "dataset name must be letters" in failure.cause.message
    assert not list(tmp_path.rglob("INJ.csv"))
