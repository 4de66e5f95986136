"""Ingest a dataset (metadata CSV + images) into the warehouse's `images` and `rejected` tables.

Every record is checked; a bad one goes to `rejected` with its id, source and a named reason, and never
stops the good ones. Metadata is streamed in batches and each batch becomes one part file, so memory
is bounded by the batch, not the dataset.
"""

from __future__ import annotations

import collections
import csv
import math
import zlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv

from locdiff_pipeline.datasets import DatasetSpec
from locdiff_pipeline.image_io import ImageDecodeError, decode_image, sha256_bytes
from locdiff_pipeline.image_sources import ImageMissingError, open_source
from locdiff_pipeline.warehouse import Warehouse, fingerprint

IMAGES_TABLE = "images"
REJECTED_TABLE = "rejected"
INGEST_VERSION = 1
CORE_COLUMNS = ("image_id", "lat", "lon", "split", "source", "image_bytes", "width", "height", "sha256", "row")


@dataclass
class IngestReport:
    accepted: int = 0
    rejected_by_reason: collections.Counter = field(default_factory=collections.Counter)
    splits: collections.Counter = field(default_factory=collections.Counter)
    cached: bool = False

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def rejected_share(self) -> float:
        total = self.accepted + self.rejected
        return self.rejected / total if total else 0.0


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


def _metadata_header(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"{path}: metadata CSV is empty (no header row)")
    return header


def _held_out(lat: float, lon: float, spec: DatasetSpec) -> bool:
    cell = f"{math.floor(lat)}:{math.floor(lon)}"
    return zlib.crc32(cell.encode()) / 2**32 < spec.val_share


def ingest_fingerprint(spec: DatasetSpec) -> str:
    """What the ingested tables depend on: the spec and the metadata file's size and mtime."""
    import os

    stat = os.stat(spec.metadata_csv)
    return fingerprint(INGEST_VERSION, spec.to_dict(), stat.st_size, stat.st_mtime_ns)


def ingest(spec: DatasetSpec, warehouse: Warehouse, *, force: bool = False) -> IngestReport:
    """Write images/dataset=NAME and rejected/dataset=NAME; skip when both are current (unless force)."""
    header = _metadata_header(spec.metadata_csv)
    for column in (spec.id_column, spec.lat_column, spec.lon_column, *([spec.split_column] if spec.split_column else [])):
        if column not in header:
            raise ValueError(f"{spec.metadata_csv}: column {column!r} not in the header {header}")
    key = ingest_fingerprint(spec)
    if not force and warehouse.is_current(IMAGES_TABLE, key, dataset=spec.name) and warehouse.is_current(REJECTED_TABLE, key, dataset=spec.name):
        manifest = warehouse.manifest(IMAGES_TABLE, dataset=spec.name)
        report = IngestReport(accepted=manifest["rows"], cached=True)
        report.rejected_by_reason.update(manifest.get("rejected_by_reason", {}))
        report.splits.update(manifest.get("splits", {}))
        return report
    extra = [c for c in header if c not in (spec.id_column, spec.lat_column, spec.lon_column, spec.split_column)]
    source = open_source(spec.layout, spec.images)
    report = IngestReport()
    rejected_rows: list[dict] = [
        {"image_id": shard.path, "source": shard.path, "reason": "empty shard: the archive holds no records", "row": -1} for shard in source.empty_shards
    ]
    first_seen: dict[str, int] = {}
    reader = pacsv.open_csv(
        spec.metadata_csv,
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=False),
    )
    manifest = {"fingerprint": key, "spec": spec.to_dict()}
    with warehouse.write_partition(IMAGES_TABLE, manifest, dataset=spec.name) as writer:
        row_number = 0
        pending: list[dict] = []
        for batch in reader:
            for record in batch.to_pylist():
                row_number += 1
                accepted = _check_record(record, row_number, spec, source, first_seen, extra, rejected_rows)
                if accepted is not None:
                    pending.append(accepted)
                    report.splits[accepted["split"]] += 1
                if len(pending) >= spec.batch_rows:
                    writer.write(_images_table(pending, extra))
                    pending = []
        writer.write(_images_table(pending, extra))
        report.accepted = writer.rows
        for row in rejected_rows:
            report.rejected_by_reason[reason_kind(row["reason"])] += 1
        manifest.update(rejected_by_reason=dict(report.rejected_by_reason), splits=dict(report.splits))
    with warehouse.write_partition(REJECTED_TABLE, {"fingerprint": key}, dataset=spec.name) as writer:
        writer.write(pa.Table.from_pylist(rejected_rows, schema=REJECTED_SCHEMA))
    return report


REJECTED_SCHEMA = pa.schema([("image_id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("row", pa.int64())])


def _check_record(record: dict, row: int, spec: DatasetSpec, source, first_seen: dict[str, int], extra: list[str], rejected: list[dict]) -> dict | None:
    """Return the accepted row, or append a rejection naming the record and reason and return None."""
    image_id = (record.get(spec.id_column) or "").strip()

    def reject(reason: str) -> None:
        rejected.append({"image_id": image_id or f"<row {row}>", "source": source.reference(image_id) if image_id else spec.metadata_csv, "reason": reason, "row": row})

    if not image_id:
        return reject("missing id")
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
        ("row", pa.int64()),
    ] + [(f"meta_{c}", pa.string()) for c in extra]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))
