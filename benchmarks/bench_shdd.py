"""SHDD encode/decode throughput, each against a baseline measured in the same run.

    python benchmarks/bench_shdd.py [--points 1000000] [--naive-points 200]

Encode: `shdd.encode_torch` (float32, the model and table path) streamed over --points random points in
chunks, against a naive per-point encoder built on scipy's complex `sph_harm_y` (converted to the same
real basis and checked equal first). Decode: `shdd.decode` of 10k vectors against 100k anchors,
against the bare matrix product (vectors x anchor table) the argmax needs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.special
import torch

from locdiff_pipeline.method import shdd, sphere


def naive_encode(lat: np.ndarray, lon: np.ndarray, L: int) -> np.ndarray:
    """One point at a time through scipy's complex harmonics, made real: the baseline a user writes first."""
    degrees = np.concatenate([np.full(2 * l + 1, l) for l in range(L + 1)])
    orders = np.concatenate([np.arange(-l, l + 1) for l in range(L + 1)])
    abs_orders = np.abs(orders)
    sign = (-1.0) ** abs_orders  # scipy includes the Condon-Shortley phase
    out = np.empty((len(lat), len(degrees)))
    for i, (la, lo) in enumerate(zip(lat, lon)):
        y = scipy.special.sph_harm_y(degrees, abs_orders, np.radians(90.0 - la), np.radians(lo))
        out[i] = np.where(orders == 0, y.real, np.sqrt(2.0) * sign * np.where(orders > 0, y.real, y.imag))
    return out


def encode_throughput(L: int, n_points: int, chunk: int = 65536) -> float:
    rng = np.random.default_rng(L)
    lat, lon = sphere.random_points(n_points, rng)
    lat_t, lon_t = torch.tensor(lat, dtype=torch.float32), torch.tensor(lon, dtype=torch.float32)
    start = time.perf_counter()
    for i in range(0, n_points, chunk):
        shdd.encode_torch(lat_t[i : i + chunk], lon_t[i : i + chunk], L, validate=False)
    return n_points / (time.perf_counter() - start)


def naive_throughput(L: int, n_points: int) -> float:
    rng = np.random.default_rng(100 + L)
    lat, lon = sphere.random_points(n_points, rng)
    start = time.perf_counter()
    reference = naive_encode(lat, lon, L)
    rate = n_points / (time.perf_counter() - start)
    worst = np.max(np.abs(reference - shdd.encode(lat, lon, L)))
    if worst > 1e-8:
        raise AssertionError(f"naive baseline disagrees with shdd.encode at L={L}: {worst}")
    return rate


def decode_timing(L: int, n_vectors: int = 10000, n_anchors: int = 100000) -> tuple[float, float, float]:
    rng = np.random.default_rng(7)
    anchors = shdd.anchor_table(*sphere.fibonacci_lattice(n_anchors), L)
    lat, lon = sphere.random_points(n_vectors, rng)
    coeffs = torch.tensor(shdd.encode(lat, lon, L), dtype=torch.float32)
    coeffs += 0.3 / np.sqrt(4 * np.pi) * torch.randn_like(coeffs)
    start = time.perf_counter()
    block = (1 << 25) // n_anchors
    for i in range(0, n_vectors, block):
        coeffs[i : i + block] @ anchors.table.T
    matmul = time.perf_counter() - start
    start = time.perf_counter()
    d_lat, d_lon = shdd.decode(coeffs, L, anchors=anchors)
    decode = time.perf_counter() - start
    median_err = float(np.median(sphere.haversine_km(lat, lon, d_lat, d_lon)))
    return decode, matmul, median_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--naive-points", type=int, default=200)
    parser.add_argument("--degrees", type=int, nargs="+", default=[10, 20, 40, 80])
    parser.add_argument("--decode-degrees", type=int, nargs="+", default=[20, 40])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    print(
        f"\nEncode: {args.points:,} points (float32, streamed in chunks) vs naive scipy per point "
        f"({args.naive_points} points)"
    )
    print(f"{'L':>4} {'coeffs':>7} {'shdd points/s':>15} {'naive points/s':>15} {'ratio':>8}")
    for L in args.degrees:
        fast = encode_throughput(L, args.points)
        naive = naive_throughput(L, args.naive_points)
        print(f"{L:>4} {(L + 1) ** 2:>7} {fast:>15,.0f} {naive:>15,.0f} {fast / naive:>7.0f}x")
    print("\nDecode: 10,000 vectors against 100,000 anchors vs the bare matrix product it needs")
    print(f"{'L':>4} {'decode s':>9} {'vectors/s':>10} {'matmul s':>9} {'decode/matmul':>14} {'median err km':>14}")
    for L in args.decode_degrees:
        decode, matmul, err = decode_timing(L)
        print(f"{L:>4} {decode:>9.2f} {10000 / decode:>10,.0f} {matmul:>9.2f} {decode / matmul:>13.1f}x {err:>14.1f}")


if __name__ == "__main__":
    main()
