"""The Parquet warehouse: tables as folders of partitions, each partition replaced atomically.

A partition (e.g. images/dataset=bluemarble) is written into a staging folder and swapped into place
only when complete, with a `_manifest.json` beside its part files recording what it was computed
from. A crash leaves either the old partition or none, never a half partition that looks whole; the
manifest's fingerprint lets an unchanged rerun skip the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from locdiff_pipeline.data.disk_space import writing

MANIFEST = "_manifest.json"
STAGING = "_staging"


def fingerprint(*parts: object) -> str:
    """Stable short hash of JSON-serialisable parts (configs, upstream fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PartitionWriter:
    """Collects part files for one partition in a staging folder."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.parts = 0
        self.rows = 0
        self.empty_schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        """Write one part file (skipping empty tables); part files are numbered in write order."""
        if table.num_rows == 0:
            self.empty_schema = table.schema
            return
        pq.write_table(table, self.staging / f"part-{self.parts:05d}.parquet", compression="zstd")
        self.parts += 1
        self.rows += table.num_rows

    def finish(self) -> None:
        """A partition that received only empty tables still gets one empty part file, so readers and
        SQL see its columns."""
        if self.parts == 0 and self.empty_schema is not None:
            pq.write_table(self.empty_schema.empty_table(), self.staging / "part-00000.parquet", compression="zstd")
            self.parts = 1


class Warehouse:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def partition_dir(self, table: str, **keys: object) -> Path:
        path = self.table_dir(table)
        for key, value in keys.items():
            path = path / f"{key}={value}"
        return path

    def glob(self, table: str, depth: int) -> str:
        """Glob over a table's part files for DuckDB (`depth` = number of partition keys)."""
        return str(self.table_dir(table) / "/".join(["*"] * depth) / "*.parquet")

    def manifest(self, table: str, **keys: object) -> dict | None:
        path = self.partition_dir(table, **keys) / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def is_current(self, table: str, fingerprint_value: str, **keys: object) -> bool:
        manifest = self.manifest(table, **keys)
        return manifest is not None and manifest.get("fingerprint") == fingerprint_value

    @contextmanager
    def write_partition(self, table: str, manifest: dict, **keys: object) -> Iterator[PartitionWriter]:
        """Stage a partition's part files; on success swap them in with `manifest`, on error discard them."""
        final = self.partition_dir(table, **keys)
        staging_root = self.root / STAGING
        staging_root.mkdir(parents=True, exist_ok=True)
        _remove_orphans(staging_root)
        staging = staging_root / f"{table}-{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir()
        writer = PartitionWriter(staging)
        what = f"the {table} table" + "".join(f", {key}={value}" for key, value in keys.items())
        try:
            with writing(final, what):
                yield writer
                writer.finish()
                body = {**manifest, "rows": writer.rows, "parts": writer.parts}
                (staging / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():
                    retired = staging_root / f"retired-{os.getpid()}-{uuid.uuid4().hex}"
                    os.replace(final, retired)
                    os.replace(staging, final)
                    shutil.rmtree(retired, ignore_errors=True)
                else:
                    os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def clean_staging(self) -> None:
        """Remove what crashed runs left in the staging area (never visible to readers)."""
        _remove_orphans(self.root / STAGING)

    def read(
        self, table: str, columns: list[str] | None = None, *, where: ds.Expression | None = None, **keys: object
    ) -> pa.Table:
        """Read one partition (all its part files, in order), or raise naming what is missing; `where`
        keeps only matching rows while reading (memory holds the match, not the partition)."""
        path = self.partition_dir(table, **keys)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(
                f"warehouse table {table} has no complete partition {keys or ''} at {path}; materialize it first"
            )
        files = sorted(path.glob("part-*.parquet"))
        if not files:
            schema_hint = columns or []
            return pa.table({name: pa.array([]) for name in schema_hint})
        return ds.dataset([str(f) for f in files], format="parquet").to_table(columns=columns, filter=where)

    def iter_batches(
        self, table: str, batch_rows: int, columns: list[str] | None = None, **keys: object
    ) -> Iterator[pa.RecordBatch]:
        """Stream a partition in bounded batches (memory stays bounded by the batch, not the table)."""
        path = self.partition_dir(table, **keys)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(
                f"warehouse table {table} has no complete partition {keys or ''} at {path}; materialize it first"
            )
        for file in sorted(path.glob("part-*.parquet")):
            yield from pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=columns)


def _remove_orphans(staging_root: Path) -> None:
    """Delete staging folders whose writer process is gone (a crashed or killed run). Folders are
    named TABLE-PID-UUID, so live writers, including parallel ones, are left alone."""
    if not staging_root.is_dir():
        return
    for folder in staging_root.iterdir():
        try:
            pid = int(folder.name.rsplit("-", 2)[-2])
        except (IndexError, ValueError):
            continue
        if not _process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
