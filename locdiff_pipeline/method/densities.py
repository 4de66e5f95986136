"""Normalised densities on the sphere, and the proper scores of one at the true place.

Every method's answer for an image is scored as a density too (PLONK reports the same for generative
geolocation): a point says nothing of how sure the method is, a density does, and a proper score rewards
the density that puts mass where the truth is without rewarding a vague one. Two families cover every
method here, each exactly normalised:

- `KernelMixture`: von Mises-Fisher kernels of one width around weighted centres (LocDiff's samples, kNN's
  neighbours, a point answer, the training locations), mixed with a uniform floor;
- `CellDensity`: a probability per cell of a partition of the sphere, spread evenly over each cell (the cell
  classifier's softmax over its Voronoi cells), mixed with the same floor.

The floor is the share of mass a density keeps for "anywhere": without it one confident miss costs dozens of
nats, and the score measures tails rather than skill. Its size, like each kernel's width, is chosen on
validation by the same score (`fit_by_nll`).

Scores, all relative to the uniform density 1 / (4 pi) on the unit sphere, so that 0 means "knows nothing":
- log density at the truth, in nats (the negative log-likelihood is its negative);
- the truth's highest-density level: the mass of the smallest highest-density region that holds the truth,
  P_f(f(X) >= f(truth)); the truth lies inside the q region exactly when this is at most q, so one number per
  image gives the whole calibration curve;
- the area of the LEVEL highest-density region, as a share of the sphere's surface.
For kernel mixtures the last two are Monte Carlo estimates from draws of the density itself: the region's
threshold t is the (1 - q) quantile of f(X), and its area E_f[1{f(X) >= t} / f(X)] (grid-free, so exact in
expectation for kernels of any width).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from locdiff_pipeline.method import sphere

LEVEL = 0.9  # the highest-density region every report shows
REGION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, LEVEL)  # the regions whose areas are scored
BANDWIDTHS_KM = (25.0, 50.0, 100.0, 200.0, 350.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0)
FLOORS = (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9)
MONTE_CARLO_DRAWS = 2048  # draws of each image's density for its region's threshold and area
CELL_AREA_POINTS = 200_000  # equal-area lattice points that measure each Voronoi cell's area
_CHUNK_ELEMENTS = 8_000_000  # kernel evaluations held in memory at once


def kappa_of(bandwidth_km: float) -> float:
    """The von Mises-Fisher concentration of a kernel `bandwidth_km` wide (its angular standard deviation
    for small widths): 1 / (bandwidth in radians)^2."""
    if not bandwidth_km > 0:
        raise ValueError(f"bandwidth_km must be positive, got {bandwidth_km}")
    return (sphere.EARTH_RADIUS_KM / bandwidth_km) ** 2


def log_vmf(cosines: np.ndarray, kappa: float) -> np.ndarray:
    """log(4 pi f) of a von Mises-Fisher density with concentration kappa at points whose cosine to its centre
    is `cosines`: f = kappa exp(kappa (cos - 1)) / (2 pi (1 - exp(-2 kappa))), stable for any kappa > 0."""
    return math.log(2.0 * kappa / -math.expm1(-2.0 * kappa)) + kappa * (np.asarray(cosines) - 1.0)


def log_mix_with_floor(log_relative: np.ndarray, floor: float) -> np.ndarray:
    """log((1 - floor) r + floor) for log r: the density mixed with the uniform floor, relative to uniform."""
    if floor <= 0.0:
        return log_relative
    return np.logaddexp(math.log1p(-floor) + log_relative, math.log(floor))


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.squeeze(peak, axis=axis) + np.log(np.sum(np.exp(values - peak), axis=axis))


@dataclass(frozen=True)
class DensityScores:
    """Per image: log density at the truth (nats, relative to uniform), the truth's highest-density level,
    and the areas of the REGION_LEVELS regions (shares of the sphere, one column per level)."""

    log_density: np.ndarray
    truth_level: np.ndarray
    areas: np.ndarray  # (N, len(REGION_LEVELS))

    @property
    def area(self) -> np.ndarray:
        """The area of each image's LEVEL region."""
        return self.areas[:, REGION_LEVELS.index(LEVEL)]

    def coverage(self, level: float = LEVEL) -> float:
        """The share of truths inside their `level` highest-density region."""
        return float(np.mean(self.truth_level <= level))

    def repeated(self, times: int) -> DensityScores:
        """Each image's scores `times` times over (for a method with several draws per image)."""
        return DensityScores(*(np.repeat(values, times, axis=0) for values in vars(self).values()))


class MonteCarloRegions:
    """Highest-density regions and scores of a density that can be drawn from (`draw`) and evaluated
    (`log_density`), estimated from draws of the density itself."""

    def log_density(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def thresholds(
        self, levels: Iterable[float], rng: np.random.Generator, draws: int = MONTE_CARLO_DRAWS
    ) -> np.ndarray:
        """(N, len(levels)) log(4 pi f) at the edge of each image's highest-density region of each level (what
        a map draws as the region's contour): the (1 - level) quantile of the density at its own draws."""
        log_draws = self.log_density(self.draw(draws, rng))
        return np.quantile(log_draws, [1.0 - level for level in levels], axis=1).T

    def scores(self, truth: np.ndarray, rng: np.random.Generator, draws: int = MONTE_CARLO_DRAWS) -> DensityScores:
        """The scores at the truths (N, 3); the regions from `draws` draws of each image's density."""
        log_truth = self.log_density(truth)
        log_draws = self.log_density(self.draw(draws, rng))  # each image's density at its own draws
        return _monte_carlo_scores(log_truth, log_draws, rng)


@dataclass(frozen=True)
class KernelMixture(MonteCarloRegions):
    """Per image i: f_i = (1 - floor) sum_k weights[i, k] vMF(centres[i, k], kappa) + floor / (4 pi).

    centres (N, K, 3) unit vectors and weights (N, K) summing to 1 per row; N may be 1 for one density shared
    by every image (the training locations' density)."""

    centres: np.ndarray
    weights: np.ndarray
    bandwidth_km: float
    floor: float = 0.0

    def __post_init__(self) -> None:
        centres, weights = np.asarray(self.centres, float), np.asarray(self.weights, float)
        if centres.ndim != 3 or centres.shape[2] != 3 or weights.shape != centres.shape[:2]:
            raise ValueError(f"centres must be (N, K, 3) and weights (N, K), got {centres.shape}, {weights.shape}")
        if np.any(weights < 0) or not np.allclose(weights.sum(axis=1), 1.0):
            raise ValueError("each image's kernel weights must be non-negative and sum to 1")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"floor must lie in [0, 1), got {self.floor}")
        object.__setattr__(self, "centres", centres)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "kappa", kappa_of(self.bandwidth_km))

    def log_density(self, points: np.ndarray) -> np.ndarray:
        """log(4 pi f_i) at each image's points: (N, 3) -> (N,), or (N, S, 3) -> (N, S)."""
        points = np.asarray(points, float)
        single = points.ndim == 2
        points = points[:, None, :] if single else points
        rows, count, kernels = max(len(points), len(self.centres)), points.shape[1], self.centres.shape[1]
        out = np.empty((rows, count))
        log_weights = np.log(np.maximum(self.weights, 1e-300))
        if len(self.centres) == 1:  # one density for every image: chunks of points against its kernels
            flat = points.reshape(-1, 3)
            values = np.concatenate(
                [
                    _logsumexp(log_vmf(flat[i : i + step] @ self.centres[0].T, self.kappa) + log_weights[0], axis=1)
                    for step in [max(1, _CHUNK_ELEMENTS // kernels)]
                    for i in range(0, len(flat), step)
                ]
            )
            out[:] = values.reshape(len(points), count)
        else:  # each image its own kernels: chunks of images, all their points at once
            step = max(1, _CHUNK_ELEMENTS // (count * kernels))
            for start in range(0, rows, step):
                chunk = points[start : start + step] if len(points) > 1 else points
                cosines = np.einsum("nsd,nkd->nsk", chunk, self.centres[start : start + step])
                weights = log_weights[start : start + step, None, :]
                out[start : start + step] = _logsumexp(log_vmf(cosines, self.kappa) + weights, axis=2)
        out = log_mix_with_floor(out, self.floor)
        return out[:, 0] if single else out

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """(N, count, 3) points drawn from each image's density (a kernel chosen by weight, then a point of
        that von Mises-Fisher kernel; the floor's share uniform over the sphere)."""
        n, k = self.weights.shape
        cumulative = np.cumsum(self.weights, axis=1)
        cumulative[:, -1] = 1.0
        component = (rng.random((n, count, 1)) > cumulative[:, None, :]).sum(axis=2)
        centres = np.take_along_axis(self.centres, component[..., None].repeat(3, axis=2), axis=1)
        points = vmf_draws(centres, self.kappa, rng)
        if self.floor > 0:
            uniform = rng.random((n, count)) < self.floor
            points[uniform] = sphere.to_unit(*sphere.random_points(int(uniform.sum()), rng))
        return points


@dataclass(frozen=True)
class Blend(MonteCarloRegions):
    """Per image i: f_i = sum_k shares[k] parts[k]_i + (1 - sum_k shares[k]) / (4 pi): kernel mixtures of
    their own widths blended, with what is left as the uniform floor. A part of one row (one density for every
    image, as the training locations' density) is shared by every image."""

    parts: tuple[KernelMixture, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.parts) != len(self.shares) or not self.parts:
            raise ValueError(f"one share per part: {len(self.parts)} parts, {len(self.shares)} shares")
        if any(share < 0 for share in self.shares) or sum(self.shares) > 1.0 + 1e-9:
            raise ValueError(f"shares must be non-negative and sum to at most 1, got {self.shares}")
        if any(part.floor > 0 for part in self.parts):
            raise ValueError("a blend's parts have no floor of their own: the blend's left-over share is its floor")

    @property
    def floor(self) -> float:
        return max(0.0, 1.0 - sum(self.shares))

    @property
    def rows(self) -> int:
        return max(len(part.centres) for part in self.parts)

    def log_density(self, points: np.ndarray) -> np.ndarray:
        """log(4 pi f_i) at each image's points: (N, 3) -> (N,), or (N, S, 3) -> (N, S)."""
        terms = [
            math.log(share) + part.log_density(points) for part, share in zip(self.parts, self.shares) if share > 0
        ]
        if self.floor > 0:
            terms.append(np.full(np.shape(terms[0]) if terms else np.shape(points)[:-1], math.log(self.floor)))
        return _logsumexp(np.stack(np.broadcast_arrays(*terms)), axis=0)

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """(N, count, 3) points of each image's density: a part (or the floor) chosen by share, then a point of it."""
        rows = self.rows
        weights = np.array([*self.shares, self.floor])
        choice = rng.choice(len(weights), size=(rows, count), p=weights / weights.sum())
        points = sphere.to_unit(*sphere.random_points(rows * count, rng)).reshape(rows, count, 3)
        for k, part in enumerate(self.parts):
            drawn = (
                part.draw(count * rows, rng).reshape(rows, count, 3)
                if len(part.centres) == 1
                else part.draw(count, rng)
            )
            points[choice == k] = drawn[choice == k]
        return points


def vmf_draws(centres: np.ndarray, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """One von Mises-Fisher point around each of `centres` (..., 3): the cosine to the centre by inverting its
    distribution, w = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa, then a uniform direction around it."""
    shape = centres.shape[:-1]
    u = rng.random(shape)
    w = 1.0 + np.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa
    w = np.clip(w, -1.0, 1.0)
    tangent = rng.normal(size=(*shape, 3))
    tangent -= np.sum(tangent * centres, axis=-1, keepdims=True) * centres
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-12)
    return w[..., None] * centres + np.sqrt(np.maximum(0.0, 1.0 - w**2))[..., None] * tangent


def _monte_carlo_scores(log_truth: np.ndarray, log_draws: np.ndarray, rng: np.random.Generator) -> DensityScores:
    """Scores from the log densities at the truths (N,) and at draws of the same densities (N or 1, S).

    The floor makes part of a density flat, so draws tie: the region then takes only the share of the tied
    level it needs (each unit of mass there costs 1 / t of area), and a truth on a tied level is inside with
    the probability that share gives (a randomised probability integral transform, seeded), so coverage stays
    unbiased where a flat part decides it."""
    truth = log_truth.reshape(len(log_draws), -1)[:, :, None]  # (N or 1, N or 1 -> images, 1)
    above = np.mean(log_draws[:, None, :] > truth, axis=2)
    tied = np.mean(log_draws[:, None, :] == truth, axis=2)
    level = above + rng.random(above.shape) * tied
    areas = np.stack([_region_area(log_draws, q) for q in REGION_LEVELS], axis=1)  # (N or 1, levels)
    rows = len(log_truth)
    return DensityScores(log_truth, level.reshape(rows), np.broadcast_to(areas, (rows, len(REGION_LEVELS))))


def _region_area(log_draws: np.ndarray, level: float) -> np.ndarray:
    """The area of each density's `level` highest-density region from its log density at its own draws
    (N, S): E_f[1{f >= t} / f] with t the (1 - level) quantile, plus the tied share it needs at t."""
    threshold = np.quantile(log_draws, 1.0 - level, axis=1, keepdims=True)
    inside = log_draws > threshold
    area = np.mean(np.where(inside, np.exp(-log_draws), 0.0), axis=1)
    return area + np.maximum(0.0, level - inside.mean(axis=1)) * np.exp(-threshold[:, 0])


@lru_cache(maxsize=8)
def _lattice(points: int) -> np.ndarray:
    return sphere.to_unit(*sphere.fibonacci_lattice(points))


def voronoi_areas(centroids: np.ndarray, points: int = CELL_AREA_POINTS) -> np.ndarray:
    """The share of the sphere's surface nearest each centroid (C, 3), from an equal-area lattice; a cell that
    holds no lattice point gets the area of one point, so no cell's density is infinite."""
    nearest = nearest_centroid(_lattice(points), centroids)
    counts = np.bincount(nearest, minlength=len(centroids)).astype(float)
    return np.maximum(counts, 1.0) / points


def nearest_centroid(units: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest of `centroids` (C, 3) to each point (M, 3)."""
    return np.concatenate(
        [np.argmax(units[i : i + 20_000] @ centroids.T, axis=1) for i in range(0, len(units), 20_000)]
    ).astype(int)


@dataclass(frozen=True)
class CellDensity:
    """Per image i: probability[i, c] spread evenly over cell c (the Voronoi cells of `centroids`), mixed
    with the uniform floor. Relative to uniform, its value in cell c is (1 - floor) p_c / area_c + floor."""

    probabilities: np.ndarray  # (N, C), rows summing to 1
    centroids: np.ndarray  # (C, 3)
    areas: np.ndarray  # (C,) shares of the sphere, summing to 1
    floor: float = 0.0

    def _log_values(self) -> np.ndarray:
        relative = (1.0 - self.floor) * self.probabilities / self.areas[None, :] + self.floor
        return np.log(np.maximum(relative, 1e-300))

    def log_density(self, points: np.ndarray) -> np.ndarray:
        """log(4 pi f_i) at each image's points: (N, 3) -> (N,), or (N, S, 3) -> (N, S)."""
        points = np.asarray(points, float)
        cell = nearest_centroid(points.reshape(-1, 3), self.centroids).reshape(points.shape[:-1])
        rows = np.arange(len(points)).reshape(-1, *([1] * (points.ndim - 2)))
        return self._log_values()[rows, cell]

    def scores(self, truth: np.ndarray, rng: np.random.Generator | None = None) -> DensityScores:
        """Exact scores: cells sorted by density, the region grown cell by cell (no draws needed)."""
        log_values = self._log_values()
        mass = (1.0 - self.floor) * self.probabilities + self.floor * self.areas[None, :]
        order = np.argsort(-log_values, axis=1, kind="stable")
        sorted_mass = np.take_along_axis(mass, order, axis=1)
        cumulative = np.cumsum(sorted_mass, axis=1)
        area_sorted = np.cumsum(self.areas[order], axis=1)
        areas = np.stack(
            [
                area_sorted[np.arange(len(order)), np.minimum((cumulative < q - 1e-12).sum(axis=1), mass.shape[1] - 1)]
                for q in REGION_LEVELS  # the cell that reaches the level included whole
            ],
            axis=1,
        )
        log_truth = self.log_density(truth)
        level = np.sum(np.where(log_values >= log_truth[:, None], mass, 0.0), axis=1)
        return DensityScores(log_truth, level, areas)


@dataclass(frozen=True)
class Fit:
    """A density family's chosen parameters and their mean negative log-likelihood on validation."""

    parameters: dict
    nll: float
    grid: list[dict] = field(default_factory=list)


def fit_by_nll(candidates: Iterable[dict], build: Callable[..., object], truth: np.ndarray) -> Fit:
    """The candidate parameters whose density `build(**parameters)` gives the truths (N, 3) the smallest mean
    negative log-likelihood (ties: the earlier candidate); every candidate's score in `grid`."""
    grid = []
    for parameters in candidates:
        nll = -float(np.mean(build(**parameters).log_density(truth)))
        grid.append({**parameters, "nll": nll})
    if not grid:
        raise ValueError("no candidate parameters to fit")
    best = min(range(len(grid)), key=lambda i: (grid[i]["nll"], i))
    return Fit({k: v for k, v in grid[best].items() if k != "nll"}, grid[best]["nll"], grid)


def kernel_grid(bandwidths: Iterable[float] = BANDWIDTHS_KM, floors: Iterable[float] = FLOORS) -> list[dict]:
    """Every (bandwidth_km, floor) pair of the search."""
    return [{"bandwidth_km": float(b), "floor": float(f)} for b in bandwidths for f in floors]


def samples_mixture(
    sample_lat: np.ndarray, sample_lon: np.ndarray, bandwidth_km: float, floor: float, weights: np.ndarray | None
) -> KernelMixture:
    """A kernel around every sample (N, S) of each image, weighing `weights` (S,) (None: alike): how a
    generative model's draws become its density."""
    n, count = np.shape(sample_lat)
    centres = sphere.to_unit(np.ravel(sample_lat), np.ravel(sample_lon)).reshape(n, count, 3)
    weights = np.full(count, 1.0 / count) if weights is None else np.asarray(weights, float) / np.sum(weights)
    return KernelMixture(centres, np.broadcast_to(weights, (n, count)), bandwidth_km, floor)


def point_kernel(lat: np.ndarray, lon: np.ndarray, bandwidth_km: float, floor: float) -> KernelMixture:
    """One kernel around each image's point answer."""
    centres = sphere.to_unit(lat, lon)[:, None, :]
    return KernelMixture(centres, np.ones((len(centres), 1)), bandwidth_km, floor)
