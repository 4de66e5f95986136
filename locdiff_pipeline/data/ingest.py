"""Ingest a dataset (metadata CSV + images) into the warehouse, shard by shard.

Two steps. `split_metadata` streams the CSV once into id-hash shards (and, for tar/msgpack layouts,
scans the archives once into an id -> reference index sharded the same way). `ingest_shard` then
checks one shard's records: a bad one goes to `rejected` with its id, source and a named reason and
never stops the good ones; the good ones go to `images`. Every copy of an id lands in the same shard,
so duplicates are found there, and each step's memory is bounded by its buffer or its shard.
"""

from __future__ import annotations

import collections
import csv
import itertools
import math
import os
import re
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.datasets import DatasetSpec
from locdiff_pipeline.data.image_io import (
    ImageDecodeError,
    ImageReadError,
    ImageTooLargeError,
    decode_image,
    perceptual_hash,
    sha256_bytes,
)
from locdiff_pipeline.data.image_sources import (
    ARCHIVE_LAYOUTS,
    FolderSource,
    ImageMissingError,
    IndexedSource,
    archive_paths,
    scan_archive,
)
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint

IMAGES_TABLE = "images"
REJECTED_TABLE = "rejected"
INDEX_TABLE = "image_index"  # archive layouts: where each id's image lives, sharded like the metadata
INGEST_VERSION = 4  # bump when what ingest writes changes: it is in every downstream cache key
ROW = "__row"  # the record's 1-based row in the metadata CSV, carried through the split
SURPLUS = "__surplus_fields"  # how many fields the CSV row has beyond its header (such a row is rejected)
SHARDED_TABLES = (IMAGES_TABLE, REJECTED_TABLE, "embeddings", "shdd")
INDEX_SCHEMA = pa.schema([("image_id", pa.string()), ("reference", pa.string())])
REJECTED_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("row", pa.int64())]
)
EMPTY_ARCHIVE = "empty shard: the archive holds no records"
CSV_ENCODING = "utf-8-sig"  # UTF-8, with or without the byte-order mark Excel writes


@dataclass
class IngestReport:
    accepted: int = 0
    rejected_by_reason: collections.Counter = field(default_factory=collections.Counter)
    splits: collections.Counter = field(default_factory=collections.Counter)
    cached: bool = True

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def rejected_share(self) -> float:
        total = self.accepted + self.rejected
        return self.rejected / total if total else 0.0

    def add(self, other: IngestReport) -> None:
        self.accepted += other.accepted
        self.rejected_by_reason.update(other.rejected_by_reason)
        self.splits.update(other.splits)
        self.cached = self.cached and other.cached


def parse_coordinate(raw: str | None, name: str, low: float, high: float) -> tuple[float | None, str | None]:
    """(value, None) for a valid coordinate, else (None, reason) naming what is wrong."""
    if raw is None or str(raw).strip() == "":
        return None, f"{name} missing"
    try:
        value = float(raw)
    except ValueError:
        return None, f"{name} not a number: {str(raw)[:40]!r}"
    if math.isnan(value) or math.isinf(value):
        return None, f"{name} is {raw.strip()}"
    if not low <= value <= high:
        return None, f"{name} out of range [{low:g}, {high:g}]: {value:g}"
    return value, None


def reason_kind(reason: str) -> str:
    """The reason's category (before any colon or detail), used for counts: 'lat out of range', ..."""
    return reason.split(":")[0].split(" (")[0]


def metadata_header(spec: DatasetSpec) -> list[str]:
    """The metadata CSV's header, or ValueError naming the file and the column it lacks."""
    with open(spec.metadata_csv, newline="", encoding=CSV_ENCODING) as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"{spec.metadata_csv}: metadata CSV is empty (no header row)")
    for column in (
        spec.id_column,
        spec.lat_column,
        spec.lon_column,
        *([spec.split_column] if spec.split_column else []),
    ):
        if column not in header:
            raise ValueError(  # the header is not echoed: a run config could point at any file (#24)
                f"{spec.metadata_csv}: column {column!r} not in its header row ({len(header)} columns; "
                f"`head -1 {spec.metadata_csv}` shows them)"
            )
    return header


def _held_out(lat: float, lon: float, spec: DatasetSpec) -> bool:
    cell = f"{math.floor(lat)}:{math.floor(lon)}"
    return zlib.crc32(cell.encode()) / 2**32 < spec.val_share


def split_fingerprint(spec: DatasetSpec, keys: list[str]) -> str:
    """What the split depends on: the spec, the shard keys, and the size and mtime of the CSV and archives."""
    files = [spec.metadata_csv, *(archive_paths(spec.images) if spec.layout in ARCHIVE_LAYOUTS else [])]
    stats = [(str(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return fingerprint(INGEST_VERSION, spec.to_dict(), stats, keys)


def split_metadata(spec: DatasetSpec, warehouse: Warehouse, keys: list[str], *, force: bool = False) -> dict:
    """Write metadata/dataset=NAME (and image_index/dataset=NAME for archives), one file per shard;
    returns the metadata manifest. Skipped when current (unless force)."""
    header = metadata_header(spec)
    key = split_fingerprint(spec, keys)
    archives = spec.layout in ARCHIVE_LAYOUTS
    if (
        not force
        and warehouse.is_current(shards.METADATA_TABLE, key, dataset=spec.name)
        and (not archives or warehouse.is_current(INDEX_TABLE, key, dataset=spec.name))
    ):
        return {**warehouse.manifest(shards.METADATA_TABLE, dataset=spec.name), "cached": True}
    empty_archives, archive_problems = _split_archive_index(spec, warehouse, keys, key) if archives else ([], [])
    schema = pa.schema([(ROW, pa.int64()), (SURPLUS, pa.int32())] + [(c, pa.string()) for c in header])
    id_position = header.index(spec.id_column)
    manifest = {
        "fingerprint": key,
        "shards": keys,
        "empty_archives": empty_archives,
        "archive_problems": archive_problems,
        "columns": header,
    }
    with warehouse.write_partition(shards.METADATA_TABLE, manifest, dataset=spec.name) as writer:
        sharded = shards.ShardedParquet(writer.staging, schema, keys, spec.batch_rows)
        first_row = 1
        for surplus, columns in _csv_column_batches(spec.metadata_csv, len(header), spec.batch_rows):
            count = len(columns[0])
            table = pa.Table.from_arrays(
                [
                    pa.array(range(first_row, first_row + count), pa.int64()),
                    pa.array(surplus, pa.int32()),
                    *(pa.array(c, pa.string()) for c in columns),
                ],
                schema=schema,
            )
            sharded.add(table, shards.shard_indices([i.strip() for i in columns[id_position]], len(keys)))
            first_row += count
        manifest["rows_per_shard"] = sharded.close()
        writer.rows = sum(manifest["rows_per_shard"].values())
        if writer.rows == 0:  # every later step needs rows; nothing of this dataset is replaced
            raise ValueError(f"{spec.metadata_csv}: dataset {spec.name!r} has a header and no rows")
    _drop_shards_outside(warehouse, spec.name, keys)
    return {**warehouse.manifest(shards.METADATA_TABLE, dataset=spec.name), "cached": False}


def _split_archive_index(
    spec: DatasetSpec, warehouse: Warehouse, keys: list[str], key: str
) -> tuple[list[str], list[dict]]:
    """Scan every archive once into image_index/dataset=NAME; returns the archives that hold no records,
    and the problems met (a corrupt stretch: the file, the byte offset and why), each to become a rejection."""
    empty, problems = [], []
    with warehouse.write_partition(INDEX_TABLE, {"fingerprint": key, "shards": keys}, dataset=spec.name) as writer:
        sharded = shards.ShardedParquet(writer.staging, INDEX_SCHEMA, keys, spec.batch_rows)

        def add(ids: list[str], references: list[str]) -> None:
            sharded.add(pa.table([ids, references], schema=INDEX_SCHEMA), shards.shard_indices(ids, len(keys)))

        for path in archive_paths(spec.images):
            ids, references, records = [], [], 0
            for image_id, reference in scan_archive(spec.layout, path, problems):
                ids.append(image_id)
                references.append(reference)
                records += 1
                if len(ids) >= spec.batch_rows:
                    add(ids, references)
                    ids, references = [], []
            if ids:
                add(ids, references)
            if records == 0 and not any(p["archive"] == str(path) for p in problems):
                empty.append(str(path))
        writer.rows = sum(sharded.close().values())
    return empty, problems


def _csv_column_batches(path: str, width: int, batch_rows: int) -> Iterator[tuple[list[int], list[tuple[str, ...]]]]:
    """The CSV's data rows as (surplus field counts, column tuples), `batch_rows` rows at a time. Python's csv
    module keeps memory flat at any file size (pyarrow's streaming CSV reader was measured growing ~0.8 MB
    of RSS per MB read). Blank lines are skipped; a short row is padded with empty fields, so its record is
    rejected by name (e.g. 'lon missing') instead of failing the file; a long row keeps its first fields and
    the count of the others, so it is rejected by name too, never silently cut."""
    with open(path, newline="", encoding=CSV_ENCODING, errors="replace") as handle:
        records = (row for row in csv.reader(handle) if row)
        next(records, None)  # the header, read and checked by metadata_header
        while rows := list(itertools.islice(records, batch_rows)):
            surplus = [max(0, len(row) - width) for row in rows]
            yield surplus, list(zip(*(row[:width] + [""] * (width - len(row)) for row in rows)))


def _drop_shards_outside(warehouse: Warehouse, dataset: str, keys: list[str]) -> None:
    """After a split with a new shard count, remove shard partitions of the derived tables that no longer
    exist, so SQL over the warehouse never counts a row twice."""
    wanted = {f"shard={k}" for k in keys}
    for table in SHARDED_TABLES:
        for folder in warehouse.partition_dir(table, dataset=dataset).rglob("shard=*"):
            if folder.is_dir() and folder.name not in wanted:
                shutil.rmtree(folder, ignore_errors=True)


def ingest_shard(spec: DatasetSpec, warehouse: Warehouse, shard: str, *, force: bool = False) -> IngestReport:
    """Write images/dataset=NAME/shard=KEY and rejected/dataset=NAME/shard=KEY from the shard's metadata."""
    split = warehouse.manifest(shards.METADATA_TABLE, dataset=spec.name)
    if split is None or shard not in split["shards"]:
        raise FileNotFoundError(
            f"dataset {spec.name!r} has no metadata shard {shard!r}; materialize image_metadata first"
        )
    if split["fingerprint"] != split_fingerprint(spec, split["shards"]):
        raise RuntimeError(
            f"the metadata split of {spec.name!r} is stale (the dataset's files or settings changed since): "
            f"materialize image_metadata first"
        )
    key = fingerprint(split["fingerprint"], shard)
    if (
        not force
        and warehouse.is_current(IMAGES_TABLE, key, dataset=spec.name, shard=shard)
        and warehouse.is_current(REJECTED_TABLE, key, dataset=spec.name, shard=shard)
    ):
        manifest = warehouse.manifest(IMAGES_TABLE, dataset=spec.name, shard=shard)
        return IngestReport(
            manifest["rows"],
            collections.Counter(manifest["rejected_by_reason"]),
            collections.Counter(manifest["splits"]),
            cached=True,
        )
    header = split["columns"]
    extra = [c for c in header if c not in (spec.id_column, spec.lat_column, spec.lon_column, spec.split_column)]
    source = (
        FolderSource(spec.images, spec.image_suffix)
        if spec.layout not in ARCHIVE_LAYOUTS
        else IndexedSource(spec.layout, _index_of_shard(warehouse, spec.name, shard))
    )
    rejected_rows = [
        {"image_id": path, "source": path, "reason": EMPTY_ARCHIVE, "row": -1}
        for path in split["empty_archives"]
        if shards.shard_of(path, split["shards"]) == shard
    ] + [
        {
            "image_id": problem["archive"],
            "source": f"{problem['archive']}@{problem['offset']}",
            "reason": f"corrupt archive: {problem['reason']}",
            "row": -1,
        }
        for problem in split.get("archive_problems", [])
        if shards.shard_of(problem["archive"], split["shards"]) == shard
    ]
    report = IngestReport(cached=False)
    first_seen: dict[str, int] = {}
    manifest = {"fingerprint": key, "spec": spec.to_dict()}
    with warehouse.write_partition(IMAGES_TABLE, manifest, dataset=spec.name, shard=shard) as writer:
        pending: list[dict] = []
        for batch in _metadata_batches(warehouse, spec.name, shard, spec.batch_rows):
            for record in batch.to_pylist():
                accepted = _check_record(record, record[ROW], spec, source, first_seen, extra, rejected_rows)
                if accepted is not None:
                    pending.append(accepted)
                    report.splits[accepted["split"]] += 1
                if len(pending) >= spec.batch_rows:
                    writer.write(_images_table(pending, extra))
                    pending = []
        writer.write(_images_table(pending, extra))
        report.accepted = writer.rows
        report.rejected_by_reason.update(reason_kind(row["reason"]) for row in rejected_rows)
        manifest.update(rejected_by_reason=dict(report.rejected_by_reason), splits=dict(report.splits))
    with warehouse.write_partition(REJECTED_TABLE, {"fingerprint": key}, dataset=spec.name, shard=shard) as writer:
        writer.write(pa.Table.from_pylist(rejected_rows, schema=REJECTED_SCHEMA))
    return report


def ingest(
    spec: DatasetSpec, warehouse: Warehouse, keys: list[str] | None = None, *, force: bool = False
) -> IngestReport:
    """Split, then ingest every shard in turn (what the Dagster assets do, in one call); the summed report."""
    keys = keys or shards.shard_keys(shards.shard_count())
    split = split_metadata(spec, warehouse, keys, force=force)
    report = IngestReport(cached=split["cached"])
    for shard in keys:
        report.add(ingest_shard(spec, warehouse, shard, force=force))
    return report


def _metadata_batches(warehouse: Warehouse, dataset: str, shard: str, batch_rows: int):
    """The shard's metadata records in CSV row order, streamed in bounded batches."""
    yield from pq.ParquetFile(shards.shard_file(warehouse, shards.METADATA_TABLE, dataset, shard)).iter_batches(
        batch_size=batch_rows
    )


def _index_of_shard(warehouse: Warehouse, dataset: str, shard: str) -> dict[str, str]:
    """id -> reference for the shard's images; the first archive record of an id wins, as archives are scanned in
    order."""
    index: dict[str, str] = {}
    table = pq.read_table(shards.shard_file(warehouse, INDEX_TABLE, dataset, shard))
    for image_id, reference in zip(table["image_id"].to_pylist(), table["reference"].to_pylist()):
        index.setdefault(image_id, reference)
    return index


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _check_record(
    record: dict,
    row: int,
    spec: DatasetSpec,
    source,
    first_seen: dict[str, int],
    extra: list[str],
    rejected: list[dict],
) -> dict | None:
    """Return the accepted row, or append a rejection naming the record and reason and return None."""
    image_id = (record.get(spec.id_column) or "").strip()

    def reject(reason: str) -> None:
        rejected.append(
            {
                "image_id": image_id or f"<row {row}>",
                "source": source.reference(image_id) if image_id else spec.metadata_csv,
                "reason": reason,
                "row": row,
            }
        )

    if record.get(SURPLUS):
        return reject(f"too many fields: {record[SURPLUS]} more than the header has (is a field unquoted?)")
    if not image_id:
        return reject("missing id")
    if _CONTROL_CHARACTER.search(image_id):
        return reject(f"invalid id: {image_id!r} holds a control character (a NUL byte or a line break names no file)")
    if image_id in first_seen:
        return reject(f"duplicate id: first kept at row {first_seen[image_id]}")
    first_seen[image_id] = row
    lat, problem = parse_coordinate(record.get(spec.lat_column), "lat", -90.0, 90.0)
    if problem:
        return reject(problem)
    lon, problem = parse_coordinate(record.get(spec.lon_column), "lon", -180.0, 180.0)
    if problem:
        return reject(problem)
    try:
        data = source.read(image_id)
        image = decode_image(data, image_id)
    except ImageMissingError as error:
        return reject(f"image missing: {error.args[0]}")
    except ImageReadError as error:
        return reject(f"unreadable image: {error}")
    except ImageTooLargeError as error:
        return reject(str(error).removeprefix(image_id + ": "))
    except ImageDecodeError as error:
        return reject(f"corrupt image: {str(error).removeprefix(image_id + ': ')}")
    if spec.split_column:
        split = (record.get(spec.split_column) or "").strip() or spec.default_split
    else:
        split = "val" if spec.default_split == "train" and _held_out(lat, lon, spec) else spec.default_split
    return {
        "image_id": image_id,
        "lat": lat,
        "lon": lon,
        "split": split,
        "source": source.reference(image_id),
        "image_bytes": data if spec.store_bytes else None,
        "width": image.width,
        "height": image.height,
        "sha256": sha256_bytes(data),
        "phash": perceptual_hash(image),
        "row": row,
        **{f"meta_{c}": record.get(c) for c in extra},
    }


def _images_table(rows: list[dict], extra: list[str]) -> pa.Table:
    fields = [
        ("image_id", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("image_bytes", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("phash", pa.int64()),
        ("row", pa.int64()),
    ] + [(f"meta_{c}", pa.string()) for c in extra]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))
