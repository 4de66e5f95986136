"""Gallery search at scale: the faiss IVF index kNN and LocDiff-H use above retrieval.EXACT_MAX_ROWS,
against exact brute force on the same gallery and queries in the same run.

    python benchmarks/bench_retrieval.py [--rows 1000000] [--dim 512] [--queries 2000]

The gallery is synthetic but shaped like image embeddings (unit vectors around 20,000 cluster centres,
as photos of the same places cluster); queries are noisy copies of gallery rows. Recall@1 is the share of
queries whose top answer is exact search's top answer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from locdiff_pipeline.method import retrieval


def synthetic_gallery(rows: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)).astype(np.float32)
    gallery = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):
        stop = min(rows, start + 100_000)
        block = middle[rng.integers(0, centres, stop - start)]
        block += 0.6 * rng.normal(size=block.shape).astype(np.float32)
        gallery[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return gallery


def noisy_queries(gallery: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    queries = gallery[rng.integers(0, len(gallery), count)] + 0.05 * rng.normal(size=(count, gallery.shape[1]))
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--centres", type=int, default=20_000)
    parser.add_argument("--probes", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args()
    gallery = synthetic_gallery(args.rows, args.dim, args.centres)
    queries = noisy_queries(gallery, args.queries)
    start = time.perf_counter()
    exact = retrieval.exact_top_k(gallery, queries, 1)[:, 0]
    brute_seconds = time.perf_counter() - start
    brute_rate = args.queries / brute_seconds
    print(
        f"gallery {args.rows:,} x {args.dim}, {args.queries:,} queries; exact brute force {brute_rate:,.0f} queries/s"
    )
    start = time.perf_counter()
    index = retrieval.Retriever(gallery, exact_max_rows=0)
    build = time.perf_counter() - start
    print(f"{index.kind.split(',')[0]}: built in {build:.1f} s")
    print(f"{'nprobe':>7} {'queries/s':>10} {'vs brute force':>15} {'recall@1':>9}")
    for probes in args.probes:
        index.index.nprobe = probes
        start = time.perf_counter()
        found = index.search(queries, 1)[:, 0]
        rate = args.queries / (time.perf_counter() - start)
        print(f"{probes:>7} {rate:>10,.0f} {rate / brute_rate:>14.1f}x {np.mean(found == exact):>9.3f}")


if __name__ == "__main__":
    main()
