"""Ingest throughput and peak memory on a generated MP16-layout dataset, as the row count grows.

    python benchmarks/bench_ingest.py [--rows 50000 100000 200000] [--root /tmp/locdiff-bench-ingest]

Writes one MP16-layout dataset (metadata CSV with IMG_ID, LAT, LON + a folder tree of tiny JPEGs, 1 %
bad records of mixed kinds) for the largest count, and metadata files holding its first N rows for the
others. Each size is ingested in a fresh subprocess (the `mp16` preset: references, not bytes), which
reports rows/s and its own peak RSS. Baseline, same rows, same process kind: reading the CSV and every
image's bytes with no validation, decoding or writing (the I/O floor), so the ratio is the cost of
the checks and the Parquet writes. Peak RSS should stay flat as rows grow: memory is bounded by the
part-file batch, not the dataset.
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
    mode, metadata, images, warehouse = sys.argv[1:5]
    started = time.perf_counter()
    if mode == "ingest":
        from locdiff_pipeline.datasets import preset
        from locdiff_pipeline.ingest import ingest
        from locdiff_pipeline.warehouse import Warehouse
        imported = time.perf_counter()
        report = ingest(preset("mp16", metadata, images, name="mp16bench"), Warehouse(warehouse), force=True)
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
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
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


def run(mode: str, metadata: Path, images: Path, warehouse: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", WORKER, mode, str(metadata), str(images), str(warehouse)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    parser.add_argument("--root", default="/tmp/locdiff-bench-ingest")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    largest = max(args.rows)
    write_dataset(root, largest)
    print("MP16 layout, folder of 8x8 JPEGs, ~1% bad records; each size in a fresh process; references stored (mp16 preset)")
    print(f"{'rows':>8} {'ingest rows/s':>14} {'baseline rows/s':>16} {'ratio':>6} {'ingest peak RSS MB':>19} {'baseline peak RSS MB':>21}")
    for rows in sorted(args.rows):
        metadata = root / "metadata.csv" if rows == largest else root / f"metadata_{rows}.csv"
        if rows != largest:
            head(root / "metadata.csv", metadata, rows)
        ingest = run("ingest", metadata, root / "images", root / "warehouse")
        floor = run("baseline", metadata, root / "images", root / "warehouse")
        assert ingest["rows"] == floor["rows"] == rows, (ingest, floor)
        ingest_rate, floor_rate = rows / ingest["seconds"], rows / floor["seconds"]
        print(f"{rows:>8} {ingest_rate:>14,.0f} {floor_rate:>16,.0f} {ingest_rate / floor_rate:>6.2f} {ingest['peak_rss_mb']:>19.0f} {floor['peak_rss_mb']:>21.0f}", flush=True)


if __name__ == "__main__":
    main()
