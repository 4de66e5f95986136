"""SHDD encode/decode throughput, each against a baseline measured in the same run.

    python benchmarks/bench_shdd.py [--points 1000000] [--naive-points 200]

Encode: `shdd.encode_torch` (float32, the model and table path) streamed over --points random points in
chunks, against a naive per-point encoder built on scipy's complex `sph_harm_y` (converted to the same
real basis and checked equal first); then against `sphericart` float64 on the same points, and the float32
precision of both up to L = 100. Decode: `shdd.decode` of 2,000 and 10,000 noisy vectors with its
defaults, with coarse="grid" (synthesis on the grid) and with coarse="anchors" (20,000 Fibonacci anchors),
each against the bare float32 matrix product + argmax with 100,000 anchors in the same run; then the error
of decode(encode(p)) and the noisy-decode curve. The first line names the machine (benchmarks/machine.py):
the same code runs several times faster on one CPU than on another of the same name.
"""

from __future__ import annotations

import argparse
import time

import machine
import numpy as np
import scipy.special
import torch
from bench_model import sync

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
    shdd.encode_torch(lat_t[:1000], lon_t[:1000], L, validate=False)  # warm-up: per-degree set-up is not throughput
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


def sphericart_rates(L: int, n_points: int, repeats: int = 3) -> tuple[float, float]:
    """(shdd.encode_torch to a float32 table, sphericart float64) points/s on the same points, best of
    `repeats`, one call each over all points."""
    import sphericart

    lat, lon = sphere.random_points(n_points, np.random.default_rng(200 + L))
    xyz = sphere.to_unit(lat, lon)
    lat_t, lon_t = torch.tensor(lat), torch.tensor(lon)
    calculator = sphericart.SphericalHarmonics(L)

    def best(run) -> float:
        run()  # warm-up: first-call set-up (thread pools, caches) is not throughput
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return n_points / min(times)

    ours = best(lambda: shdd.encode_torch(lat_t, lon_t, L, validate=False, dtype=torch.float32))
    return ours, best(lambda: calculator.compute(xyz))


def float32_precision(L: int, n_points: int = 2000) -> tuple[float, float]:
    """Largest relative error of a float32 table against float64: (shdd.encode_torch, sphericart float32);
    NaN when a table holds non-finite values."""
    import sphericart

    lat, lon = sphere.random_points(n_points, np.random.default_rng(300 + L))
    reference = shdd.encode(lat, lon, L)
    ours = shdd.encode_torch(torch.tensor(lat), torch.tensor(lon), L, validate=False, dtype=torch.float32).numpy()
    theirs = sphericart.SphericalHarmonics(L).compute(sphere.to_unit(lat, lon).astype(np.float32))

    def worst(table: np.ndarray) -> float:
        if not np.isfinite(table).all():
            return float("nan")
        return float(np.max(np.linalg.norm(table - reference, axis=1) / np.linalg.norm(reference, axis=1)))

    return worst(ours), worst(theirs)


def noisy_vectors(L: int, n_vectors: int, device: str = "cpu", seed: int = 7) -> torch.Tensor:
    """SHDD vectors of random points with Gaussian noise of 0.3 x the coefficient RMS, float32."""
    lat, lon = sphere.random_points(n_vectors, np.random.default_rng(seed))
    coeffs = torch.tensor(shdd.encode(lat, lon, L), dtype=torch.float32, device=device)
    return coeffs + 0.3 / np.sqrt(4 * np.pi) * torch.randn(
        coeffs.shape, generator=torch.Generator().manual_seed(seed)
    ).to(device)


def decode_timing(
    L: int, n_vectors: int, n_anchors: int = 100000, device: str = "cpu", repeats: int = 2
) -> dict[str, float]:
    """Best-of-`repeats` seconds on `device` for the bare float32 matrix product + argmax against n_anchors
    anchors (the baseline), and for decode with its defaults, with coarse="grid" and with coarse="anchors"
    (its default anchors), on the same noisy vectors."""
    anchors = shdd.anchor_table(*sphere.fibonacci_lattice(n_anchors), L, device=device)
    coeffs = noisy_vectors(L, n_vectors, device)
    block = max(1, (1 << 25) // n_anchors)
    runs = {
        "matmul": lambda: [
            torch.argmax(coeffs[i : i + block] @ anchors.table.T, dim=1) for i in range(0, n_vectors, block)
        ],
        "default": lambda: shdd.decode(coeffs, L),
        "grid": lambda: shdd.decode(coeffs, L, coarse="grid"),
        "anchors": lambda: shdd.decode(coeffs, L, coarse="anchors"),
    }
    shdd.decode(coeffs[:64], L, coarse="grid")  # warm-up: cached tables are set-up, not throughput
    shdd.decode(coeffs[:64], L, coarse="anchors")
    timings = {}
    for name, run in runs.items():
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times.append(time.perf_counter() - start)
        timings[name] = min(times)
    return timings


def decode_errors(L: int, coarse: str, sigma: float, n: int = 2000) -> np.ndarray:
    """Great-circle errors (km) of decode on SHDD vectors with Gaussian noise of sigma x the coefficient RMS."""
    rng = np.random.default_rng(11)
    lat, lon = sphere.random_points(n, rng)
    clean = shdd.encode(lat, lon, L)
    noisy = clean + sigma / np.sqrt(4 * np.pi) * rng.standard_normal(clean.shape)
    d_lat, d_lon = shdd.decode(torch.tensor(noisy, dtype=torch.float32), L, coarse=coarse)
    return sphere.haversine_km(lat, lon, d_lat, d_lon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--naive-points", type=int, default=200)
    parser.add_argument("--degrees", type=int, nargs="+", default=[10, 20, 40, 80])
    parser.add_argument("--decode-degrees", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--decode-vectors", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--sphericart-points", type=int, default=200_000)
    parser.add_argument("--sphericart-degrees", type=int, nargs="+", default=[10, 20, 40])
    args = parser.parse_args()
    print(machine.describe())
    print(
        f"\nEncode: {args.points:,} points (float32, streamed in chunks) vs naive scipy per point "
        f"({args.naive_points} points)"
    )
    print(f"{'L':>4} {'coeffs':>7} {'shdd points/s':>15} {'naive points/s':>15} {'ratio':>8}")
    for L in args.degrees:
        fast = encode_throughput(L, args.points)
        naive = naive_throughput(L, args.naive_points)
        print(f"{L:>4} {(L + 1) ** 2:>7} {fast:>15,.0f} {naive:>15,.0f} {fast / naive:>7.0f}x")
    print(f"\nEncode vs sphericart float64 (the fast SH library), {args.sphericart_points:,} points, same run")
    print(f"{'L':>4} {'shdd f32 table/s':>17} {'sphericart f64/s':>17} {'ratio':>7}")
    for L in args.sphericart_degrees:
        ours, theirs = sphericart_rates(L, args.sphericart_points)
        print(f"{L:>4} {ours:>17,.0f} {theirs:>17,.0f} {ours / theirs:>6.2f}x")
    print("\nFloat32 precision: largest relative error of a vector against float64 (nan: non-finite values)")
    print(f"{'L':>4} {'shdd float32':>13} {'sphericart float32':>19}")
    for L in (20, 30, 40, 60, 80, 100):
        ours, theirs = float32_precision(L)
        print(f"{L:>4} {ours:>13.1e} {theirs:>19.1e}")
    print(
        "\nDecode: noisy vectors (0.3 x the coefficient RMS), L as given; baseline: bare float32 matmul + argmax"
        f" against 100,000 anchors; best of 2; decode's default coarse search on this CPU (measured at L = 20):"
        f" {shdd.default_coarse_search('cpu')}"
    )
    print(
        f"{'L':>4} {'vectors':>8} {'matmul s':>9} {'default s':>10} {'grid s':>7} {'anchors s':>10} "
        f"{'default vs matmul':>18} {'grid':>6} {'anchors':>8}"
    )
    for L in args.decode_degrees:
        for n in args.decode_vectors:
            t = decode_timing(L, n)
            ratio = {name: t["matmul"] / t[name] for name in ("default", "grid", "anchors")}
            print(
                f"{L:>4} {n:>8,} {t['matmul']:>9.2f} {t['default']:>10.2f} {t['grid']:>7.2f} {t['anchors']:>10.2f} "
                f"{ratio['default']:>17.2f}x {ratio['grid']:>5.2f}x {ratio['anchors']:>7.2f}x"
            )
    print("\ndecode(encode(p)) error on 2,000 random points, km (defaults, grid, default anchors)")
    print(
        f"{'L':>4} {'default p99':>12} {'grid p99':>9} {'anchors p99':>12} "
        f"{'default max':>12} {'grid max':>9} {'anchors max':>12}"
    )
    for L in args.decode_degrees:
        d, g, a = (decode_errors(L, coarse, 0.0) for coarse in ("auto", "grid", "anchors"))
        print(
            f"{L:>4} {np.percentile(d, 99):>12.3f} {np.percentile(g, 99):>9.3f} {np.percentile(a, 99):>12.3f} "
            f"{d.max():>12.3f} {g.max():>9.3f} {a.max():>12.3f}"
        )
    print("\nNoisy decode at L = 20: median error (km), noise as a multiple of the coefficient RMS, 2,000 points")
    print(f"{'noise':>6} {'anchors':>9} {'grid':>9}")
    for sigma in (0.0, 0.1, 0.3, 1.0, 3.0, 10.0):
        a, g = decode_errors(20, "anchors", sigma), decode_errors(20, "grid", sigma)
        print(f"{sigma:>6} {np.median(a):>9.2f} {np.median(g):>9.2f}")


if __name__ == "__main__":
    main()
