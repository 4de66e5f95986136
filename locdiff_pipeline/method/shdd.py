"""SHDD: spherical-harmonics coefficients of a Dirac delta, the one home of that math.

A location p becomes SHDD_L(p) = [Y_lm(p)] for l <= L, an (L+1)^2 vector of real orthonormal
spherical harmonics (column l*l + l + m for m = -l..l). Any such vector e is a function on the
sphere, F_e(x) = <e, SHDD_L(x)>; the decoder finds where F_e has the most mass, and the KL loss
compares two of them as distributions over anchor points.

The harmonics are always evaluated in float64 and then cast to the dtype asked for, so float32 tables
stay within 1e-7 of float64 at any degree (a float32 recurrence drifts to 6e-5 by L = 100). On the CPU
they come from `sphericart` (float64, 4-6x faster than this module's recurrence, measured in
`benchmarks/bench_shdd.py`) up to SPHERICART_MAX_DEGREE, where it was checked exact; above it, on other
devices, or without sphericart, from the stable recurrence below.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from locdiff_pipeline.method import sphere, sphericart_table

_CHUNK_POINTS = 4096
# sphericart 2.0.4 in float64 agrees with the recurrence to 1e-13 (relative) up to L = 80 and is wrong
# (5 % relative on most points) by L = 90, measured on 24,000 points; tests/test_shdd.py checks the
# agreement at this degree, so a sphericart release that breaks lower fails there.
SPHERICART_MAX_DEGREE = 80
_DEFAULT_ANCHOR_COUNT = 20000


# ----------------------------------------------------------------------------------------------------
# 1. Sizes, peak width and default radii
# How big an SHDD vector of degree L is and how wide its peak: what every setting scales with.
# ----------------------------------------------------------------------------------------------------


def num_coefficients(L: int) -> int:
    """Length (L+1)^2 of an SHDD vector of degree L."""
    check_degree(L)
    return (L + 1) ** 2


def check_degree(L: int) -> None:
    """Raise ValueError unless L is a non-negative integer."""
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 0:
        raise ValueError(f"L must be a non-negative integer, got {L!r}")


def degree_of(num_coeffs: int) -> int:
    """The L of an SHDD vector of the given length, or ValueError if it is not a square."""
    L = math.isqrt(num_coeffs) - 1
    if num_coeffs < 1 or (L + 1) ** 2 != num_coeffs:
        raise ValueError(f"an SHDD vector has (L+1)^2 entries; {num_coeffs} is not a perfect square")
    return L


def peak_height(L: int) -> float:
    """F at the delta's own location: sum_l (2l+1)/(4 pi) = (L+1)^2 / (4 pi)."""
    return num_coefficients(L) / (4.0 * math.pi)


@functools.lru_cache(maxsize=256)
def peak_width_km(L: int) -> float:
    """Distance from the peak of F = sum_l (2l+1)/(4 pi) P_l(cos angle) to its first zero.

    By Christoffel-Darboux the sum is (L+1) (P_L(x) - P_{L+1}(x)) / (1 - x), x = cos(angle), so the
    first zero is the largest root below 1 of P_L - P_{L+1}: about 3.832 / (L + 1) radians (the first
    zero of J_1), not the 2.405 / (L + 1/2) of a single P_L. Degree 0 has no zero: pi."""
    check_degree(L)
    if L == 0:
        return sphere.EARTH_RADIUS_KM * math.pi
    difference = np.zeros(L + 2)
    difference[L], difference[L + 1] = 1.0, -1.0
    roots = np.polynomial.legendre.legroots(difference)
    largest = max(r.real for r in roots if abs(r.imag) < 1e-9 and r.real < 1.0 - 1e-9)
    return sphere.EARTH_RADIUS_KM * math.acos(largest)


def default_rho_km(L: int) -> float:
    """Default decoder smoothing radius: half the peak width, stable yet sharp enough for degree L."""
    return 0.5 * peak_width_km(L)


def default_tau(L: int) -> float:
    """Default KL temperature, relative to the peak height.

    The target softmax(F / (tau * peak)) puts exp(1/tau) times more weight at the peak than at the
    first zero; the peak's cap covers about 1/(L+1)^2 of the sphere, so exp(1/tau) ~ 20 (L+1)^2 would
    concentrate the target within the peak's width. The default is twice that tau (exp(1/tau) ~
    sqrt(20) (L+1)): a softer target, which validation preferred over it and over half of it in the
    ablation on the leak-free bundled data (docs/results.md), for every L alike.
    """
    return 2.0 / math.log(20.0 * num_coefficients(L))


# ----------------------------------------------------------------------------------------------------
# 2. Encode: coefficients of a Dirac delta
# Y_lm at points, by the stable recurrence on fully normalised associated Legendre functions.
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _recurrence_tables(L: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Coefficients of the fully normalised associated-Legendre recurrence, and each column's degree."""
    l = np.arange(L + 1, dtype=np.float64)[:, None]
    m = np.arange(L + 1, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.sqrt((4.0 * l**2 - 1.0) / (l**2 - m**2))
        b = np.sqrt(((l - 1.0) ** 2 - m**2) / (4.0 * (l - 1.0) ** 2 - 1.0))
    valid = m <= l - 2  # the three-term recurrence is used only for m <= l - 2
    a, b = np.where(valid, a, 0.0), np.where(valid, b, 0.0)
    degree_of_column = np.repeat(np.arange(L + 1), 2 * np.arange(L + 1) + 1)
    as_tensor = functools.partial(torch.as_tensor, device=device)
    return {
        "a": as_tensor(a, dtype=dtype),
        "b": as_tensor(b, dtype=dtype),
        "degree": as_tensor(degree_of_column, dtype=torch.long),
    }


def _harmonics(z: torch.Tensor, s: torch.Tensor, phi: torch.Tensor, L: int, out: torch.Tensor) -> None:
    """Real orthonormal Y_lm for points given by z = cos(colatitude), s = sin(colatitude) >= 0, phi.

    Stable recurrence on fully normalised associated Legendre functions P̄_l^m (no factorials, so no
    overflow for large L; run in float64 by its callers), vectorised over points
    and over m for each degree. Each degree's P̄_l^m times sqrt(2) cos(m phi) (orders m > 0) or
    sqrt(2) sin(|m| phi) (orders < 0) is written straight into its columns of `out` (N, (L+1)^2), with
    three rotating buffers and no gathered temporaries: memory traffic is the output's, once.
    """
    tables = _recurrence_tables(L, z.dtype, str(z.device))
    n, root2 = z.shape[0], math.sqrt(2.0)
    # m * phi reaches hundreds of radians: in float64, or float32 loses 1e-5 of the phase by L = 100
    angles = phi.double()[:, None] * torch.arange(1, L + 1, dtype=torch.float64, device=phi.device)[None, :]
    cos_m = torch.cos(angles).mul_(root2).to(z.dtype)
    sin_m_reversed = torch.sin(angles).mul_(root2).flip(1).to(z.dtype)  # column k holds m = L - k
    prev2, prev1, cur = (torch.zeros((n, L + 1), dtype=z.dtype, device=z.device) for _ in range(3))
    prev1[:, 0] = 1.0 / math.sqrt(4.0 * math.pi)
    out[:, 0] = prev1[:, 0]
    zc = z[:, None]
    for l in range(1, L + 1):
        if l >= 2:  # three-term recurrence for m <= l - 2
            head = cur[:, : l - 1]
            torch.mul(prev1[:, : l - 1], zc, out=head)
            head.sub_(prev2[:, : l - 1] * tables["b"][l, : l - 1]).mul_(tables["a"][l, : l - 1])
        torch.mul(prev1[:, l - 1], z, out=cur[:, l - 1]).mul_(math.sqrt(2.0 * l + 1.0))
        torch.mul(prev1[:, l - 1], s, out=cur[:, l]).mul_(math.sqrt((2.0 * l + 1.0) / (2.0 * l)))
        centre = l * l + l  # the column of order 0
        out[:, centre] = cur[:, 0]
        torch.mul(cur[:, 1 : l + 1], cos_m[:, :l], out=out[:, centre + 1 : centre + l + 1])
        torch.mul(cur[:, 1 : l + 1].flip(1), sin_m_reversed[:, L - l :], out=out[:, centre - l : centre])
        prev2, prev1, cur = prev1, cur, prev2


def _harmonics_chunked(z: torch.Tensor, s: torch.Tensor, phi: torch.Tensor, L: int) -> torch.Tensor:
    """_harmonics over bounded chunks of points, so temporaries stay cache-sized for large inputs; the
    table has z's dtype (phi may be float64). Not differentiable (it writes with out=): targets and
    anchors are constants."""
    out = torch.empty((z.shape[0], (L + 1) ** 2), dtype=z.dtype, device=z.device)
    for i in range(0, z.shape[0], _CHUNK_POINTS):
        j = i + _CHUNK_POINTS
        _harmonics(z[i:j], s[i:j], phi[i:j], L, out[i:j])
    return out


def encode_torch(
    lat: torch.Tensor, lon: torch.Tensor, L: int, *, validate: bool = True, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """SHDD_L of points given as degree tensors, on their device: (N, (L+1)^2) in `dtype` (default: their
    floating dtype), evaluated in float64. Not differentiable: targets and anchors are constants.

    validate=False skips the range/finiteness checks (a host round trip) for points the code made itself.
    """
    check_degree(L)
    if validate:
        sphere.validate_coordinates(lat.detach().cpu().numpy(), lon.detach().cpu().numpy())
    dtype = dtype or (lat.dtype if torch.is_floating_point(lat) else torch.float64)
    lat_deg, lon_deg = lat.detach().reshape(-1), lon.detach().reshape(-1)
    if _uses_sphericart(lat.device, L):  # in numpy: no torch op may run just before sphericart (_harmonics_table)
        table = sphericart_table.harmonics_of_points(lat_deg.numpy(), lon_deg.numpy(), L, _numpy_dtype(dtype))
        return torch.from_numpy(table)
    units = sphere.unit_vectors(lat_deg.cpu().numpy(), lon_deg.cpu().numpy())
    return _harmonics_table(torch.from_numpy(units).to(lat.device), L, dtype)


def encode_units_torch(units: torch.Tensor, L: int) -> torch.Tensor:
    """SHDD_L of unit vectors (N, 3), on their device and in their dtype (evaluated in float64)."""
    if units.device.type == "cpu":  # in numpy: no torch op may run just before sphericart (_harmonics_table)
        return _harmonics_table(torch.from_numpy(units.numpy().astype(np.float64)), L, units.dtype)
    return _harmonics_table(units.double(), L, units.dtype)


def _harmonics_table(units: torch.Tensor, L: int, dtype: torch.dtype) -> torch.Tensor:
    """The (N, (L+1)^2) table in `dtype` from float64 unit vectors (N, 3)."""
    if not _uses_sphericart(units.device, L):
        z = units[:, 2].clamp(-1.0, 1.0)
        s = torch.hypot(units[:, 0], units[:, 1])
        return _harmonics_chunked(z, s, torch.atan2(units[:, 1], units[:, 0]), L).to(dtype)
    # numpy from here on: torch's OpenMP threads spinning between ops and sphericart's own OpenMP threads
    # fight over the cores (measured: 3-7x slower with torch ops between the calls); sphericart's
    # SphericalHarmonics normalises each vector, so units go in as they are
    return torch.from_numpy(sphericart_table.harmonics(np.ascontiguousarray(units.numpy()), L, _numpy_dtype(dtype)))


def _uses_sphericart(device: torch.device, L: int) -> bool:
    """sphericart evaluates the table on the CPU up to the degree where it was checked exact."""
    return device.type == "cpu" and L <= SPHERICART_MAX_DEGREE and sphericart_table.available()


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


def encode(lat: ArrayLike, lon: ArrayLike, L: int, *, dtype: type = np.float64) -> np.ndarray:
    """SHDD_L(p) for each point (degrees, any array-like): an (N, (L+1)^2) numpy array.

    Raises ValueError for coordinates out of range, NaN/inf, mismatched shapes or L < 0.
    """
    check_degree(L)
    lat_arr, lon_arr = sphere.validate_coordinates(lat, lon)
    table = encode_torch(torch.tensor(lat_arr), torch.tensor(lon_arr), L, validate=False)
    return table.numpy().astype(dtype, copy=False)


# ----------------------------------------------------------------------------------------------------
# 3. Decode: the mode of F_e
# Smooth over a cap (Funk-Hecke), find the coarse maximum on a grid or anchors, refine by Newton steps.
# ----------------------------------------------------------------------------------------------------


def cap_smoothing_weights(L: int, rho_km: float) -> np.ndarray:
    """Per-degree factors that replace F by its mean over a spherical cap of radius rho (Funk-Hecke).

    lambda_l = (P_{l-1}(c) - P_{l+1}(c)) / ((2l+1)(1-c)), c = cos(rho), lambda_0 = 1.
    """
    check_degree(L)
    if not np.isfinite(rho_km) or rho_km < 0:
        raise ValueError(f"rho must be a finite, non-negative distance in km, got {rho_km!r}")
    rho = min(rho_km / sphere.EARTH_RADIUS_KM, math.pi)
    weights = np.ones(L + 1)
    if rho == 0.0:
        return weights
    c = math.cos(rho)
    legendre = np.empty(L + 2)
    legendre[0], legendre[1] = 1.0, c
    for n in range(1, L + 1):
        legendre[n + 1] = ((2 * n + 1) * c * legendre[n] - n * legendre[n - 1]) / (n + 1)
    l = np.arange(1, L + 1)
    weights[1:] = (legendre[l - 1] - legendre[l + 1]) / ((2 * l + 1) * (1.0 - c))
    return weights


@dataclass(frozen=True)
class AnchorSet:
    """Anchor points and their SHDD table B (M x (L+1)^2): F_e at every anchor is e @ B.T."""

    lat: np.ndarray
    lon: np.ndarray
    table: torch.Tensor
    L: int

    @property
    def spacing_rad(self) -> float:
        """Typical angular distance between neighbouring anchors."""
        return sphere.mean_spacing_rad(len(self.lat))


def anchor_table(
    lat: ArrayLike, lon: ArrayLike, L: int, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> AnchorSet:
    """Build the anchor table for the given points in one vectorised computation."""
    lat_arr, lon_arr = sphere.validate_coordinates(lat, lon)
    table = encode_torch(torch.tensor(lat_arr), torch.tensor(lon_arr), L, validate=False)
    return AnchorSet(lat=lat_arr, lon=lon_arr, table=table.to(device=device, dtype=dtype), L=L)


@functools.lru_cache(maxsize=16)
def fibonacci_anchors(count: int, L: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> AnchorSet:
    """Anchor set on a Fibonacci lattice of `count` points (cached: it is reused by every decode)."""
    lat, lon = sphere.fibonacci_lattice(count)
    return anchor_table(lat, lon, L, dtype=dtype, device=device)


def _tangent_basis(units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors orthogonal to each u and to each other (well defined at the poles too)."""
    helper = torch.zeros_like(units)
    near_pole = units[:, 2].abs() > 0.9
    helper[~near_pole, 2] = 1.0
    helper[near_pole, 0] = 1.0
    e1 = torch.nn.functional.normalize(torch.linalg.cross(helper, units, dim=-1), dim=-1)
    e2 = torch.linalg.cross(units, e1, dim=-1)
    return e1, e2


def _anchor_argmax(smoothed: torch.Tensor, anchors: AnchorSet) -> torch.Tensor:
    """Unit vector of the best anchor for each row, computed in blocks so B x M never sits in memory."""
    table = anchors.table.to(device=smoothed.device, dtype=smoothed.dtype)
    units = torch.as_tensor(sphere.to_unit(anchors.lat, anchors.lon), dtype=smoothed.dtype, device=smoothed.device)
    block = max(1, (1 << 25) // max(1, table.shape[0]))
    best = [torch.argmax(smoothed[i : i + block] @ table.T, dim=1) for i in range(0, smoothed.shape[0], block)]
    return units[torch.cat(best)]


# The coarse search's grid: equally spaced rings, poles included, and a power-of-two number of longitudes,
# spaced no wider than the default anchors (1.44 degrees up to L = 49), so the refinement starts at least
# as close to the mode as the anchor search would.
_GRID_MIN_LONGITUDES = 256
_GRID_BLOCK_VALUES = 1 << 20  # grid values per synthesis block (4 MB in float32): cache-sized on any CPU


@functools.lru_cache(maxsize=64)
def grid_shape(L: int) -> tuple[int, int]:
    """(rings, longitudes) of the coarse grid for degree L: spacing pi / (rings - 1) = 2 pi / longitudes,
    no wider than the default anchors' mean spacing."""
    longitudes = _GRID_MIN_LONGITUDES
    while 2.0 * math.pi / longitudes > sphere.mean_spacing_rad(_default_anchor_count(L)):
        longitudes *= 2
    return longitudes // 2 + 1, longitudes


@functools.lru_cache(maxsize=16)
def _ring_legendre(L: int, rings: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each order's Legendre factors on the grid's rings, (L+1 orders, L+1 degrees, rings), zero for l < m,
    and the column of (l, m) for every (m, l) (-1 where l < m): F on ring i is sum over m of the ring's
    a_m cos(m phi) + b_m sin(m phi), a_m = sum_l c_(l,m) P[m, l, i], b_m = sum_l c_(l,-m) P[m, l, i]."""
    lat = torch.linspace(90.0, -90.0, rings, dtype=torch.float64)
    at_zero = encode_torch(lat, torch.zeros_like(lat), L, validate=False)  # at phi = 0: sqrt(2) P_lm for m > 0
    columns = torch.full((L + 1, L + 1), -1, dtype=torch.long)
    for m in range(L + 1):
        l = torch.arange(m, L + 1)
        columns[m, m:] = l * l + l + m
    factors = torch.where(columns[:, :, None] >= 0, at_zero.T[columns.clamp(min=0)], 0.0)
    return factors.to(device=device, dtype=dtype), columns.to(device)


@functools.lru_cache(maxsize=16)
def _ring_fourier(L: int, longitudes: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """cos(m phi_j) over sin(m phi_j) for orders m = 0..L at the ring's longitudes: (2 (L+1), longitudes)."""
    phi = torch.arange(longitudes, dtype=torch.float64) * (2.0 * math.pi / longitudes)
    angles = torch.arange(L + 1, dtype=torch.float64)[:, None] * phi[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)]).to(device=device, dtype=dtype)


def _grid_values(smoothed: torch.Tensor, L: int) -> torch.Tensor:
    """F of each row on the grid_shape(L) grid, (B, rings, longitudes): one batched Legendre product per
    order gives each ring's Fourier coefficients a_m, b_m, and one matrix product with the cos/sin table
    sums them along the ring, instead of a product with a table of every grid point (a sum of (L+1)^2
    terms per point becomes 2 (L+1)). Measured against an inverse real FFT, the product was as fast at
    L = 20 and needs no zero-padded spectrum (docs/results.md)."""
    rings, longitudes = grid_shape(L)
    factors, columns = _ring_legendre(L, rings, smoothed.dtype, str(smoothed.device))
    negative = torch.where(columns >= 0, columns - 2 * torch.arange(L + 1, device=columns.device)[:, None], -1)
    padded = torch.cat([smoothed, torch.zeros_like(smoothed[:, :1])], dim=1)  # column -1 reads a zero
    cosine = torch.bmm(padded[:, columns].transpose(0, 1), factors)  # (orders, B, rings)
    sine = torch.bmm(padded[:, negative].transpose(0, 1), factors)
    ring_coefficients = torch.cat([cosine, sine]).permute(1, 2, 0).reshape(-1, 2 * (L + 1))  # (B * rings, 2(L+1))
    fourier = _ring_fourier(L, longitudes, smoothed.dtype, str(smoothed.device))
    return (ring_coefficients @ fourier).view(smoothed.shape[0], rings, longitudes)


def _grid_coordinates(L: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid_shape(L) grid's ring latitudes (north to south) and longitudes (east from 0), in degrees:
    the order of _grid_values' rows and columns."""
    rings, longitudes = grid_shape(L)
    return np.linspace(90.0, -90.0, rings), np.arange(longitudes) * 360.0 / longitudes


@functools.lru_cache(maxsize=16)
def _grid_units(L: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Unit vectors of the grid_shape(L) grid's points, flattened ring by ring."""
    ring_lat, ring_lon = _grid_coordinates(L)
    lat = np.repeat(ring_lat, len(ring_lon))
    lon = sphere.wrap_longitude(np.tile(ring_lon, len(ring_lat)))
    return torch.as_tensor(sphere.to_unit(lat, lon), dtype=dtype, device=device)


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    """Flat index of each row's largest grid value (B, rings, longitudes) -> (B,), the first on ties like
    torch.argmax: the best ring by its maximum, then the best point on it (a max reduction vectorises
    where argmax over the whole grid does not: 7x faster on the CPU)."""
    rows = torch.arange(values.shape[0], device=values.device)
    ring = torch.argmax(values.amax(dim=2), dim=1)
    return ring * values.shape[2] + torch.argmax(values[rows, ring], dim=1)


def _grid_argmax(smoothed: torch.Tensor, L: int) -> torch.Tensor:
    """Unit vector of each row's best grid point, by synthesis on the grid in cache-sized blocks."""
    units = _grid_units(L, smoothed.dtype, str(smoothed.device))
    block = max(1, _GRID_BLOCK_VALUES // units.shape[0])
    best = [_first_argmax(_grid_values(smoothed[i : i + block], L)) for i in range(0, smoothed.shape[0], block)]
    return units[torch.cat(best)]


@functools.lru_cache(maxsize=8)
def _grid_table(L: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """SHDD table of the grid's points, (rings * longitudes, (L+1)^2): the dense way to the same values."""
    return encode_units_torch(_grid_units(L, torch.float64, "cpu"), L).to(device=device, dtype=dtype)


def _grid_table_argmax(smoothed: torch.Tensor, L: int) -> torch.Tensor:
    """_grid_argmax by one matrix product with the grid's table per block (the faster way on a GPU)."""
    rings, longitudes = grid_shape(L)
    table, units = (
        _grid_table(L, smoothed.dtype, str(smoothed.device)),
        _grid_units(L, smoothed.dtype, str(smoothed.device)),
    )
    block = max(1, (1 << 25) // units.shape[0])
    best = [
        _first_argmax((smoothed[i : i + block] @ table.T).view(-1, rings, longitudes))
        for i in range(0, smoothed.shape[0], block)
    ]
    return units[torch.cat(best)]


_GRID_EVALUATIONS = {"grid": _grid_argmax, "grid-table": _grid_table_argmax}
_CALIBRATION_VECTORS = 256
_GRID_TABLE_MAX_BYTES = 1 << 28  # above this (L > 44 in float32) only the synthesis is tried
SWITCH_MARGIN = 2.0  # how much faster the unexpected grid evaluation must be to be chosen


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=16)
def default_coarse_search(device: str, L: int = 20, dtype: torch.dtype = torch.float32) -> str:
    """The grid evaluation decode uses by default on this device, measured once per process: "grid"
    (separable synthesis; the expectation on a CPU) or "grid-table" (a product with the grid's SHDD table;
    the expectation on a GPU), each timed twice after a warm-up on the same random vectors. The other one
    is taken only when it is at least SWITCH_MARGIN times faster, so a busy moment cannot flip the choice
    between processes: both evaluate F at the same points, but float rounding can still tip a near-tie
    between two grid points, so a stable choice keeps answers reproducible. Which is faster depends on
    the machine, not only on its kind (issue #26)."""
    probe = torch.randn(
        (_CALIBRATION_VECTORS, num_coefficients(L)), generator=torch.Generator().manual_seed(0), dtype=dtype
    ).to(device)
    expected = "grid" if probe.device.type == "cpu" else "grid-table"
    table_bytes = math.prod(grid_shape(L)) * num_coefficients(L) * probe.element_size()
    if table_bytes > _GRID_TABLE_MAX_BYTES:
        return "grid"
    seconds = {name: _best_time(evaluate, probe, L) for name, evaluate in _GRID_EVALUATIONS.items()}
    other = "grid-table" if expected == "grid" else "grid"
    choice = other if seconds[other] * SWITCH_MARGIN <= seconds[expected] else expected
    if choice != "grid-table":
        _grid_table.cache_clear()  # 58 MB at L = 20 that this process will not use
    return choice


def _best_time(evaluate, probe: torch.Tensor, L: int, repeats: int = 2) -> float:
    evaluate(probe[:8], L)  # warm-up: cached tables and kernels are set-up, not speed
    times = []
    for _ in range(repeats):
        _synchronize(probe.device)
        start = time.perf_counter()
        evaluate(probe, L)
        _synchronize(probe.device)
        times.append(time.perf_counter() - start)
    return min(times)


# The refinement's 3 x 3 stencil in the tangent plane: centre, +-e1, +-e2, then the four diagonals.
_STENCIL = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))
_REFINE_SHRINK = 4.0


def _values_at(smoothed: torch.Tensor, points: torch.Tensor, L: int) -> torch.Tensor:
    """F of each row at its own P points (B, P, 3) -> (B, P)."""
    n, p, _ = points.shape
    table = encode_units_torch(points.reshape(n * p, 3), L).reshape(n, p, -1).to(smoothed.dtype)
    return torch.bmm(table, smoothed[:, :, None])[:, :, 0]


def _refine(smoothed: torch.Tensor, units: torch.Tensor, radius: float, steps: int, L: int) -> torch.Tensor:
    """Newton steps from each coarse maximum, on a 3 x 3 stencil of half-width h in the tangent plane.

    The stencil gives F's gradient and Hessian by central differences; the maximum of that quadratic (if
    it has one, at most 2h away) is a tenth candidate, and the best of the ten becomes the next centre,
    so a step never lowers F. h starts at the coarse search's spacing and shrinks 4x per step: 10
    evaluations a step where a 7 x 7 pattern search took 49, and near a peak Newton lands far closer
    than the stencil's spacing.
    """
    a, b = (torch.tensor(c, dtype=units.dtype, device=units.device) for c in zip(*_STENCIL))
    rows = torch.arange(units.shape[0], device=units.device)
    h = radius
    for _ in range(steps):
        e1, e2 = _tangent_basis(units)
        stencil = torch.nn.functional.normalize(
            units[:, None, :] + h * (a[None, :, None] * e1[:, None, :] + b[None, :, None] * e2[:, None, :]), dim=-1
        )
        f = _values_at(smoothed, stencil, L)
        gx, gy = (f[:, 1] - f[:, 2]) / (2 * h), (f[:, 3] - f[:, 4]) / (2 * h)
        hxx, hyy = (f[:, 1] - 2 * f[:, 0] + f[:, 2]) / h**2, (f[:, 3] - 2 * f[:, 0] + f[:, 4]) / h**2
        hxy = (f[:, 5] - f[:, 6] - f[:, 7] + f[:, 8]) / (4 * h**2)
        det = hxx * hyy - hxy**2
        concave = (hxx < 0) & (det > 0)
        safe_det = torch.where(concave, det, torch.ones_like(det))
        sx = torch.where(concave, -(hyy * gx - hxy * gy) / safe_det, torch.zeros_like(det))
        sy = torch.where(concave, -(hxx * gy - hxy * gx) / safe_det, torch.zeros_like(det))
        length = torch.sqrt(sx**2 + sy**2)
        shrink = torch.clamp(2 * h / length.clamp(min=1e-30), max=1.0)  # trust region: at most 2h
        newton = torch.nn.functional.normalize(
            units + (sx * shrink)[:, None] * e1 + (sy * shrink)[:, None] * e2, dim=-1
        )
        candidates = torch.cat([stencil, newton[:, None, :]], dim=1)
        values = torch.cat([f, _values_at(smoothed, newton[:, None, :], L)], dim=1)
        units = candidates[rows, torch.argmax(values, dim=1)]
        h /= _REFINE_SHRINK
    return units


def _smoothed(coeffs: torch.Tensor, L: int, rho_km: float | None) -> torch.Tensor:
    """Checked coefficients smoothed over caps of radius rho (Funk-Hecke)."""
    if coeffs.ndim != 2 or coeffs.shape[1] != num_coefficients(L):
        raise ValueError(
            f"coefficients must have shape (B, {num_coefficients(L)}) for L={L}, got {tuple(coeffs.shape)}"
        )
    if not torch.isfinite(coeffs).all():
        raise ValueError("coefficients contain NaN or inf")
    rho = default_rho_km(L) if rho_km is None else rho_km
    tables = _recurrence_tables(L, coeffs.dtype, str(coeffs.device))
    weights = torch.as_tensor(cap_smoothing_weights(L, rho), dtype=coeffs.dtype, device=coeffs.device)
    return coeffs * weights[tables["degree"]]


def _default_anchor_count(L: int) -> int:
    """Decode's default Fibonacci anchors: 20,000 (1.44 degrees apart), 8 per coefficient above L = 49."""
    return max(_DEFAULT_ANCHOR_COUNT, 8 * num_coefficients(L))


def _anchors_for(L: int, anchors: AnchorSet | None, device: torch.device) -> AnchorSet:
    """The anchors given (checked against L), or the default Fibonacci set fine enough for L."""
    if anchors is None:
        anchors = fibonacci_anchors(_default_anchor_count(L), L, device=str(device))
    if anchors.L != L:
        raise ValueError(f"anchor table is for L={anchors.L}, coefficients are for L={L}")
    return anchors


COARSE_SEARCHES = ("auto", "grid", "grid-table", "anchors")


def decode_units_torch(
    coeffs: torch.Tensor,
    L: int,
    *,
    rho_km: float | None = None,
    anchors: AnchorSet | None = None,
    refine_steps: int = 5,
    coarse: str = "auto",
) -> torch.Tensor:
    """Mode-seeking decode on the coefficients' device: unit vectors (B, 3) where F_e has most mass.

    The coarse maximum is the best point of the grid_shape(L) grid, found by separable synthesis ("grid")
    or by a product with the grid's SHDD table ("grid-table"), or the best of an anchor table ("anchors":
    the anchors given, or the default Fibonacci set). "auto" takes the anchors when they are given, and
    otherwise whichever grid evaluation default_coarse_search measured faster on this device.
    """
    if coarse not in COARSE_SEARCHES:
        raise ValueError(f"coarse search must be one of {COARSE_SEARCHES}, got {coarse!r}")
    if coarse == "auto":
        coarse = "anchors" if anchors is not None else default_coarse_search(str(coeffs.device), L, coeffs.dtype)
    smoothed = _smoothed(coeffs, L, rho_km)
    if coarse in _GRID_EVALUATIONS:
        start = _GRID_EVALUATIONS[coarse](smoothed, L)
        return _refine(smoothed, start, math.pi / (grid_shape(L)[0] - 1), refine_steps, L)
    anchors = _anchors_for(L, anchors, coeffs.device)
    return _refine(smoothed, _anchor_argmax(smoothed, anchors), anchors.spacing_rad, refine_steps, L)


def _as_coefficients(coeffs: ArrayLike | torch.Tensor) -> torch.Tensor:
    """A 2-D floating tensor (torch input stays on its device)."""
    tensor = coeffs if isinstance(coeffs, torch.Tensor) else torch.as_tensor(np.asarray(coeffs, dtype=np.float64))
    if tensor.ndim == 1:
        tensor = tensor[None, :]
    return tensor if torch.is_floating_point(tensor) else tensor.double()


def decode(
    coeffs: ArrayLike | torch.Tensor,
    L: int,
    *,
    rho: float | None = None,
    anchors: AnchorSet | None = None,
    refine_steps: int = 5,
    coarse: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Decode SHDD vectors (B, (L+1)^2) to (lat, lon) degree arrays by mode search.

    Smooths F_e over a cap of radius rho km (default: half the peak width of degree L), takes the best
    point of a grid about 1.4 degrees apart (or the best of the anchors given), then refines by Newton
    steps on a shrinking local stencil, so accuracy is limited by neither. Torch input is decoded on its
    own device.
    """
    check_degree(L)
    with torch.no_grad():
        units = decode_units_torch(
            _as_coefficients(coeffs), L, rho_km=rho, anchors=anchors, refine_steps=refine_steps, coarse=coarse
        )
    return sphere.from_unit(units.double().cpu().numpy())


# ----------------------------------------------------------------------------------------------------
# 4. Ranked modes
# The k heaviest, well-separated modes of F_e with the mass around each (top-k answers).
# ----------------------------------------------------------------------------------------------------


def ranked_modes(
    coeffs: ArrayLike | torch.Tensor,
    L: int,
    k: int,
    *,
    separation_km: float | None = None,
    rho: float | None = None,
    anchors: AnchorSet | None = None,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k most likely places of each vector's function, with their probability: (lat, lon, probability),
    each (B, k), best first.

    F integrates to 1 over the sphere for an SHDD vector and is linear, so the mean of several SHDD
    vectors is the mixture of their densities. Rank 1 is the decoder's answer (smoothing rho). For the
    probabilities, F is smoothed over caps of one peak width (truncation at degree L rings; this keeps
    about three quarters of a single delta's positive mass in its main lobe) and its positive part on
    equal-area anchors is normalised to 1. Each next rank is the anchor of highest such density at least
    separation_km (default: two peak widths) from every rank before it; a rank's probability is the mass
    within separation_km / 2 of it, so the caps are disjoint and the k probabilities sum to at most 1."""
    check_degree(L)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    tensor = _as_coefficients(coeffs)
    separation = 2 * peak_width_km(L) if separation_km is None else separation_km
    apart, inside = math.cos(separation / sphere.EARTH_RADIUS_KM), math.cos(separation / 2 / sphere.EARTH_RADIUS_KM)
    lat, lon, probability = [], [], []
    with torch.no_grad():
        for start in range(0, tensor.shape[0], block):
            part = tensor[start : start + block]
            smoothed, chosen = _smoothed(part, L, peak_width_km(L)), _anchors_for(L, anchors, part.device)
            points = torch.as_tensor(sphere.to_unit(chosen.lat, chosen.lon), dtype=part.dtype, device=part.device)
            density = (smoothed @ chosen.table.to(device=part.device, dtype=part.dtype).T).clamp(min=0)
            density = density / density.sum(dim=1, keepdim=True).clamp(min=1e-30)
            modes = [decode_units_torch(part, L, rho_km=rho, anchors=anchors)]
            for _ in range(1, k):
                taken = torch.stack([points @ m.T >= apart for m in modes]).any(dim=0).T  # (B, anchors)
                modes.append(points[torch.argmax(density.masked_fill(taken, -1.0), dim=1)])
            masses = torch.stack([(density * (points @ m.T >= inside).T).sum(dim=1) for m in modes], dim=1)
            mode_lat, mode_lon = sphere.from_unit(torch.stack(modes, dim=1).reshape(-1, 3).double().cpu().numpy())
            lat.append(mode_lat.reshape(-1, k))
            lon.append(mode_lon.reshape(-1, k))
            probability.append(masses.double().cpu().numpy())
    return np.concatenate(lat), np.concatenate(lon), np.concatenate(probability)


# ----------------------------------------------------------------------------------------------------
# 5. SHDD KL loss
# Two vectors as distributions over anchors, compared by KL (the training loss).
# ----------------------------------------------------------------------------------------------------


def kl_loss(
    pred_coeffs: torch.Tensor,
    target_coeffs: torch.Tensor,
    anchors_table: torch.Tensor,
    tau: float | None = None,
    *,
    direction: str = "inverse",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """SHDD KL divergence between predicted and target vectors as distributions over anchors (differentiable).

    q = softmax(F_pred / (tau * peak)), p = softmax(F_target / (tau * peak)) over the anchors;
    direction "inverse" is KL(q || p) (mode-seeking, the article's choice), "forward" is KL(p || q).
    tau is relative to the peak height, so one value works for every L (default: default_tau(L)).
    `weights` (one per vector) make it a weighted mean over the batch.
    """
    if pred_coeffs.shape != target_coeffs.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred_coeffs.shape)} vs {tuple(target_coeffs.shape)}")
    L = degree_of(pred_coeffs.shape[-1])
    if anchors_table.shape[-1] != pred_coeffs.shape[-1]:
        raise ValueError(f"anchor table has {anchors_table.shape[-1]} columns, vectors have {pred_coeffs.shape[-1]}")
    temperature = (default_tau(L) if tau is None else tau) * peak_height(L)
    log_q = torch.log_softmax(pred_coeffs @ anchors_table.T / temperature, dim=-1)
    log_p = torch.log_softmax(target_coeffs @ anchors_table.T / temperature, dim=-1)
    if direction == "inverse":
        per_vector = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif direction == "forward":
        per_vector = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:
        raise ValueError(f"direction must be 'inverse' or 'forward', got {direction!r}")
    if weights is None:
        return per_vector.mean()
    return (per_vector * weights).sum() / weights.sum().clamp(min=1e-12)
