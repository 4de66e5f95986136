"""Known answers for the generative model: conditions whose posterior over places is known exactly.

Each condition has two places, far apart, and a known weight on each. A model that learnt the posterior
puts that share of an image's samples near each place; one that learnt a lookup puts them all at one.
Two problems:

- repeated conditions: a few conditions, each on many training rows, whose places follow the weights
  exactly (the empirical posterior of a condition is the true one);
- unique ambiguous conditions: clusters of conditions, each row its own jittered condition with one place
  (the two places of its cluster in equal numbers), scored on new conditions of the same clusters: the model
  must pool neighbouring rows, as it must on real images, or it answers each new condition with the place of
  the nearest row it memorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from locdiff_pipeline.method import shdd, sphere

MODE_RADIUS_KM = 750.0  # a sample this close to a place counts for it (places are >= 4,000 km apart)
MIN_MODE_SHARE = 0.10  # a mode is present when at least this share of the samples lands on it


@dataclass(frozen=True)
class TwoPlaceProblem:
    """Training rows (conditions, targets) and test conditions, each test condition with its two places and
    their true weights."""

    train_conditions: np.ndarray  # (N, D) float32
    train_lat: np.ndarray
    train_lon: np.ndarray
    test_conditions: np.ndarray  # (C, D) float32
    places_lat: np.ndarray  # (C, 2)
    places_lon: np.ndarray
    weights: np.ndarray  # (C, 2)

    def targets(self, L: int) -> np.ndarray:
        return shdd.encode(self.train_lat, self.train_lon, L, dtype=np.float32)


def _place_pairs(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` pairs of places at least 4,000 km apart (each pair's rows: (lat, lon) x 2)."""
    lat, lon = np.empty((count, 2)), np.empty((count, 2))
    for i in range(count):
        while True:
            a_lat, a_lon = sphere.random_points(2, rng)
            if sphere.haversine_km(a_lat[0], a_lon[0], a_lat[1], a_lon[1]) >= 4000.0:
                lat[i], lon[i] = np.clip(a_lat, -80, 80), a_lon
                break
    return lat, lon


def repeated_conditions(
    dim: int = 32, conditions: int = 20, rows_each: int = 100, share: float = 0.7, seed: int = 0
) -> TwoPlaceProblem:
    """`conditions` random conditions, each on `rows_each` rows: round(share x rows_each) at its first place,
    the rest at its second. The test conditions are the training ones."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(conditions, dim)).astype(np.float32)
    lat, lon = _place_pairs(conditions, rng)
    first = int(round(share * rows_each))
    which = np.tile(np.arange(rows_each) >= first, conditions).astype(int)  # 0: first place, 1: second
    row_condition = np.repeat(np.arange(conditions), rows_each)
    weights = np.tile([first / rows_each, 1.0 - first / rows_each], (conditions, 1))
    return TwoPlaceProblem(
        centres[row_condition], lat[row_condition, which], lon[row_condition, which], centres, lat, lon, weights
    )


def unique_conditions(
    dim: int = 32, clusters: int = 40, rows_each: int = 50, tests_each: int = 2, jitter: float = 0.3, seed: int = 0
) -> TwoPlaceProblem:
    """`clusters` centres; each training row its own condition (centre + jitter x N(0, I)), half of a
    cluster's rows at each of its two places; `tests_each` new conditions per cluster, drawn alike."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    lat, lon = _place_pairs(clusters, rng)
    row_cluster = np.repeat(np.arange(clusters), rows_each)
    which = np.tile(np.arange(rows_each) % 2, clusters)
    train = centres[row_cluster] + jitter * rng.normal(size=(len(row_cluster), dim))
    test_cluster = np.repeat(np.arange(clusters), tests_each)
    test = centres[test_cluster] + jitter * rng.normal(size=(len(test_cluster), dim))
    return TwoPlaceProblem(
        train.astype(np.float32),
        lat[row_cluster, which],
        lon[row_cluster, which],
        test.astype(np.float32),
        lat[test_cluster],
        lon[test_cluster],
        np.full((len(test_cluster), 2), 0.5),
    )


@dataclass(frozen=True)
class PosteriorFit:
    """How well samples (C, S) reproduce each condition's two-place posterior."""

    shares: np.ndarray  # (C, 3): share of samples at the first place, the second, elsewhere
    total_variation: np.ndarray  # (C,)

    @property
    def mean_total_variation(self) -> float:
        return float(self.total_variation.mean())

    @property
    def both_modes_share(self) -> float:
        """The share of conditions whose samples put at least MIN_MODE_SHARE on each place."""
        return float(np.mean(np.all(self.shares[:, :2] >= MIN_MODE_SHARE, axis=1)))


def posterior_fit(problem: TwoPlaceProblem, sample_lat: np.ndarray, sample_lon: np.ndarray) -> PosteriorFit:
    """Each sample counted for the place within MODE_RADIUS_KM of it (else elsewhere), and the total variation
    between those shares and the true weights (elsewhere's true weight is 0)."""
    count, samples = np.shape(sample_lat)
    units = sphere.to_unit(np.ravel(sample_lat), np.ravel(sample_lon)).reshape(count, samples, 3)
    places = sphere.to_unit(problem.places_lat.ravel(), problem.places_lon.ravel()).reshape(count, 2, 3)
    distances = sphere.EARTH_RADIUS_KM * np.stack(
        [sphere.angle_between_units(units, places[:, None, k]) for k in (0, 1)]
    )  # (2, C, S)
    nearest = np.argmin(distances, axis=0)
    near = np.min(distances, axis=0) <= MODE_RADIUS_KM
    shares = np.stack([np.mean(near & (nearest == 0), axis=1), np.mean(near & (nearest == 1), axis=1)], axis=1)
    shares = np.concatenate([shares, 1.0 - shares.sum(axis=1, keepdims=True)], axis=1)
    truth = np.concatenate([problem.weights, np.zeros((len(shares), 1))], axis=1)
    return PosteriorFit(shares, 0.5 * np.abs(shares - truth).sum(axis=1))
