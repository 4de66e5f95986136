"""Training from the embeddings' part files (streamed) against loading every row first (in memory).

    python benchmarks/bench_streaming.py [--sizes 100000 400000 1600000] [--steps 60] [--dim 512]

Writes synthetic training rows in the embeddings table's own schema (random unit embeddings, uniform
locations, 256 rows per part file as the embedding asset writes them), then, for each size and each way
of loading, trains the default model in a fresh process and reports its peak RSS, the seconds before the
first step (reading everything, or counting part files and the condition statistics pass) and steps/s
after it. In memory means what `training_data` does: every plain-view row and its float32 SHDD target.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from locdiff_pipeline.data.training_stream import EmbeddingStream, Part, read_part
from locdiff_pipeline.method import sphere
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.target_space import target_space
from locdiff_pipeline.method.training import train
from locdiff_pipeline.steps.image_embeddings import embedding_batch

ROWS_PER_PART = 256


def write_rows(folder: Path, rows: int, dim: int, seed: int = 0) -> list[Path]:
    """`rows` synthetic training rows in part files of 256, spread over 16 shard folders."""
    rng = np.random.default_rng(seed)
    files = []
    for number, start in enumerate(range(0, rows, ROWS_PER_PART)):
        size = min(ROWS_PER_PART, rows - start)
        vectors = rng.normal(size=(size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        lat, lon = sphere.random_points(size, rng)
        ids = [f"synthetic{start + i:08d}" for i in range(size)]
        path = folder / f"shard={number % 16:03d}" / f"part-{number:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = embedding_batch(ids, ["train"] * size, [0] * size, list(lat), list(lon), vectors, "synthetic")
        pq.write_table(table, path, compression="zstd")
        files.append(path)
    return files


def measure(mode: str, files: list[Path], steps: int, dim: int) -> dict:
    """In this process: train `steps` steps; seconds to the first step, steps/s after, peak RSS."""
    config = LocDiffConfig(embed_dim=dim, steps=steps, device="cpu", eval_every=10**9, checkpoint_every=10**9)
    started = time.perf_counter()
    stamps: dict[int, float] = {}

    def log(step: int, record: dict) -> None:
        stamps[step] = time.perf_counter()

    if mode == "memory":
        parts = [read_part(Part(path, pq.ParquetFile(path).metadata.num_rows)) for path in files]
        embeddings = np.concatenate([p.embedding for p in parts])
        lat, lon = np.concatenate([p.lat for p in parts]), np.concatenate([p.lon for p in parts])
        del parts
        targets = target_space(config).targets(lat, lon)
        train(config, embeddings, targets, log=log, log_every=1)
    else:
        train(config, stream=EmbeddingStream(files, batch_size=config.batch_size), log=log, log_every=1)
    first = stamps[1]
    return {
        "setup_s": first - started,
        "steps_per_s": (steps - 1) / (stamps[steps] - first),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--folder", help="where the synthetic part files go (default: a temporary folder)")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder or scratch)
        if args.measure:  # the child process: one measurement
            mode, rows = args.measure[0], int(args.measure[1])
            files = sorted(folder.glob("shard=*/part-*.parquet"), key=lambda p: p.name)[: -(-rows // ROWS_PER_PART)]
            print(json.dumps(measure(mode, files, args.steps, args.dim)))
            return
        started = time.perf_counter()
        write_rows(folder, max(args.sizes), args.dim)
        print(f"wrote {max(args.sizes):,} x {args.dim} synthetic rows in {time.perf_counter() - started:.0f} s")
        print(f"{'rows':>10} {'loading':>7} {'peak RSS GB':>12} {'setup s':>8} {'steps/s':>8} {'vs memory':>10}")
        for rows in args.sizes:
            results = {}
            for mode in ("memory", "stream"):
                command = [sys.executable, __file__, "--folder", str(folder), "--steps", str(args.steps)]
                command += ["--dim", str(args.dim), "--measure", mode, str(rows)]
                completed = subprocess.run(command, capture_output=True, text=True, check=True)
                results[mode] = json.loads(completed.stdout.strip().splitlines()[-1])
                r = results[mode]
                ratio = r["steps_per_s"] / results["memory"]["steps_per_s"]
                print(
                    f"{rows:>10,} {mode:>7} {r['peak_rss_gb']:>12.2f} {r['setup_s']:>8.1f} "
                    f"{r['steps_per_s']:>8.2f} {ratio:>9.2f}x"
                )


if __name__ == "__main__":
    main()
