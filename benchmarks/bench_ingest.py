"""Ingest throughput and peak memory on a generated MP16-layout dataset, as the row count grows.

    python benchmarks/bench_ingest.py [--rows 50000 100000 200000] [--shard-rows 25000] \
        [--root /tmp/locdiff-bench-ingest]

Writes one MP16-layout dataset (metadata CSV with IMG_ID, LAT, LON + a folder tree of tiny JPEGs, 1 %
bad records of mixed kinds) for the largest count, and metadata files holding its first N rows for the
others. Each size is ingested the way the Dagster assets do it, each step in a fresh process: the
metadata split (one process), then every shard (one process each, as a backfill runs them), with the
`mp16` preset (references, not bytes) and rows / --shard-rows shards, so a shard holds the same number
of rows at every size. Reported: rows/s over all steps run one after another, and the peak RSS of the
split and of the largest shard process; both must stay flat as rows grow (memory is bounded by the
split's buffer and by the shard, not the dataset). Baseline, same rows, same process kind: reading the
CSV and every image's bytes with no validation, decoding or writing (the I/O floor), so the ratio is
the cost of the checks and the Parquet writes.

A second table runs the split alone, at a fixed shard count (--split-shards), on metadata-only CSVs
of --split-rows records (1 M and 4 M, ~MP16 size): its peak RSS must not grow with the file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

WORKER = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    mode, metadata, images, warehouse, shard = sys.argv[1:6]
    started = time.perf_counter()
    if mode in ("split", "shard"):
        from locdiff_pipeline.data import shards
        from locdiff_pipeline.data.datasets import preset
        from locdiff_pipeline.data.ingest import ingest_shard, split_metadata
        from locdiff_pipeline.data.warehouse import Warehouse
        spec = preset("mp16", metadata, images, name="mp16bench")
        imported = time.perf_counter()
        if mode == "split":
            rows = split_metadata(spec, Warehouse(warehouse), shards.shard_keys(int(shard)), force=True)["rows"]
        else:
            report = ingest_shard(spec, Warehouse(warehouse), shard, force=True)
            rows = report.accepted + report.rejected
    else:
        import pyarrow.csv as pacsv
        imported = time.perf_counter()
        rows = 0
        root = Path(images)
        for batch in pacsv.open_csv(metadata):
            for image_id in batch.column(0).to_pylist():
                path = root / image_id
                if path.is_file():
                    path.read_bytes()
                rows += 1
    seconds = time.perf_counter() - imported
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": peak_rss_mb}))
    """
)


def tiny_jpegs(count: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=80)
        out.append(buffer.getvalue())
    return out


def write_dataset(root: Path, rows: int) -> None:
    """MP16 layout: images/<aa>/<bb>/<id>.jpg and metadata.csv; ~1 % bad records of mixed kinds."""
    if (root / "metadata.csv").is_file() and sum(1 for _ in open(root / "metadata.csv")) == rows + 1:
        return
    rng = np.random.default_rng(1)
    jpegs = tiny_jpegs()
    lat, lon = rng.uniform(-85, 85, rows), rng.uniform(-179.9, 179.9, rows)
    bad = rng.random(rows) < 0.01
    kinds = rng.integers(0, 4, rows)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["IMG_ID", "LAT", "LON"])
        for i in range(rows):
            image_id = f"{i % 100:02d}/{(i // 100) % 100:02d}/{i:08d}.jpg"
            path = root / "images" / image_id
            la, lo = f"{lat[i]:.6f}", f"{lon[i]:.6f}"
            kind = kinds[i] if bad[i] else -1
            if kind == 0:
                la = "95.0"  # out of range
            elif kind == 1:
                lo = ""  # missing
            if kind != 2:  # kind 2: image missing
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"garbage" if kind == 3 else jpegs[i % len(jpegs)])  # kind 3: corrupt
            writer.writerow([image_id, la, lo])


def head(source: Path, target: Path, rows: int) -> None:
    with open(source) as reader, open(target, "w") as writer:
        for i, line in enumerate(reader):
            if i > rows:
                break
            writer.write(line)


def write_metadata_only(path: Path, rows: int) -> None:
    """A metadata CSV in MP16's id layout with no images (the split never opens them)."""
    if path.is_file():
        return
    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(-85, 85, rows), rng.uniform(-179.9, 179.9, rows)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["IMG_ID", "LAT", "LON"])
        writer.writerows(
            [f"{i % 100:02d}/{(i // 100) % 100:02d}/{i:08d}.jpg", f"{lat[i]:.6f}", f"{lon[i]:.6f}"] for i in range(rows)
        )


def run(mode: str, metadata: Path, images: Path, warehouse: Path, shard: str = "") -> dict:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(metadata), str(images), str(warehouse), shard],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def ingest_in_steps(metadata: Path, images: Path, warehouse: Path, shard_count: int) -> dict:
    """The split, then each shard in its own process; total rows and seconds, and the peak RSS of each kind of step."""
    from locdiff_pipeline.data import shards

    split = run("split", metadata, images, warehouse, str(shard_count))
    per_shard = [run("shard", metadata, images, warehouse, key) for key in shards.shard_keys(shard_count)]
    return {
        "rows": sum(s["rows"] for s in per_shard),
        "seconds": split["seconds"] + sum(s["seconds"] for s in per_shard),
        "split_rss": split["peak_rss_mb"],
        "shard_rss": max(s["peak_rss_mb"] for s in per_shard),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    parser.add_argument("--shard-rows", type=int, default=25_000, help="rows per shard: the shard count is rows / this")
    parser.add_argument("--split-rows", type=int, nargs="*", default=[1_000_000, 4_000_000])
    parser.add_argument("--split-shards", type=int, default=8)
    parser.add_argument("--root", default="/tmp/locdiff-bench-ingest")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    largest = max(args.rows)
    write_dataset(root, largest)
    print(
        f"MP16 layout, folder of 8x8 JPEGs, ~1% bad records; references stored (mp16 preset); "
        f"{args.shard_rows:,} rows per shard; every step in a fresh process"
    )
    print(
        f"{'rows':>8} {'shards':>6} {'ingest rows/s':>14} {'baseline rows/s':>16} {'ratio':>6} "
        f"{'split peak RSS MB':>18} {'shard peak RSS MB':>18} {'baseline RSS MB':>16}"
    )
    for rows in sorted(args.rows):
        metadata = root / "metadata.csv" if rows == largest else root / f"metadata_{rows}.csv"
        if rows != largest:
            head(root / "metadata.csv", metadata, rows)
        shard_count = max(1, round(rows / args.shard_rows))
        ingest = ingest_in_steps(metadata, root / "images", root / "warehouse", shard_count)
        floor = run("baseline", metadata, root / "images", root / "warehouse")
        assert ingest["rows"] == floor["rows"] == rows, (ingest, floor)
        ingest_rate, floor_rate = rows / ingest["seconds"], rows / floor["seconds"]
        print(
            f"{rows:>8} {shard_count:>6} {ingest_rate:>14,.0f} {floor_rate:>16,.0f} "
            f"{ingest_rate / floor_rate:>6.2f} {ingest['split_rss']:>18.0f} {ingest['shard_rss']:>18.0f} "
            f"{floor['peak_rss_mb']:>16.0f}",
            flush=True,
        )
    if args.split_rows:
        print(f"\nmetadata split alone, {args.split_shards} shards, metadata-only CSV, fresh process each")
        print(f"{'rows':>10} {'split rows/s':>13} {'split peak RSS MB':>18}")
    for rows in args.split_rows:
        metadata = root / f"metadata_only_{rows}.csv"
        write_metadata_only(metadata, rows)
        split = run("split", metadata, root / "images", root / "warehouse_split", str(args.split_shards))
        assert split["rows"] == rows, split
        print(f"{rows:>10,} {rows / split['seconds']:>13,.0f} {split['peak_rss_mb']:>18.0f}", flush=True)


if __name__ == "__main__":
    main()
