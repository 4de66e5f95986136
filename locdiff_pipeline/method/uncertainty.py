"""Per-image uncertainty from several diffusion samples: a density on the sphere and confidence circles.

The density is a von Mises-Fisher kernel density of the decoded samples (all views x samples of an
image), evaluated on near-uniform Fibonacci anchors, so each anchor stands for an equal area. The
confidence region at level q is the smallest cap around the image's prediction that holds q of the
density mass.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from locdiff_pipeline.method import sphere

REGION_LEVEL = 0.9
CALIBRATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DENSITY_ANCHORS = 20_000


@lru_cache(maxsize=4)
def density_anchors(count: int = DENSITY_ANCHORS) -> np.ndarray:
    """(count, 3) unit vectors of a Fibonacci lattice (equal-area cells)."""
    return sphere.to_unit(*sphere.fibonacci_lattice(count))


def sample_density(
    sample_lat: np.ndarray, sample_lon: np.ndarray, bandwidth_km: float, anchors: np.ndarray | None = None
) -> np.ndarray:
    """(N, M) probability mass on each anchor of each image's kernel density over its S samples.

    sample_lat/lon: (N, S) degrees. The kernel is von Mises-Fisher with concentration
    1 / (bandwidth in radians)^2, computed in log space so narrow kernels do not underflow."""
    anchors = density_anchors() if anchors is None else anchors
    if bandwidth_km <= 0:
        raise ValueError(f"bandwidth_km must be positive, got {bandwidth_km}")
    kappa = (sphere.EARTH_RADIUS_KM / bandwidth_km) ** 2
    sample_lat, sample_lon = np.atleast_2d(sample_lat), np.atleast_2d(sample_lon)
    samples = sphere.to_unit(sample_lat.ravel(), sample_lon.ravel()).reshape(*sample_lat.shape, 3)
    masses = np.empty((samples.shape[0], len(anchors)))
    for i, points in enumerate(samples):
        log_kernel = kappa * (points @ anchors.T - 1.0)  # (S, M), <= 0
        peak = log_kernel.max()
        density = np.exp(log_kernel - peak).sum(axis=0)
        masses[i] = density / density.sum()
    return masses


def regions_at_levels(
    masses: np.ndarray,
    centre_lat: np.ndarray,
    centre_lon: np.ndarray,
    levels: tuple[float, ...],
    anchors: np.ndarray | None = None,
) -> np.ndarray:
    """(N, len(levels)) radii in km of the smallest cap around each centre holding each level of the mass."""
    for level in levels:
        if not 0 < level <= 1:
            raise ValueError(f"level must lie in (0, 1], got {level}")
    anchors = density_anchors() if anchors is None else anchors
    centres = sphere.to_unit(centre_lat, centre_lon)
    distances = sphere.EARTH_RADIUS_KM * sphere.angle_between_units(anchors[None, :, :], centres[:, None, :])  # (N, M)
    order = np.argsort(distances, axis=1)
    sorted_distances = np.take_along_axis(distances, order, axis=1)
    cumulative = np.cumsum(np.take_along_axis(masses, order, axis=1), axis=1)
    radii = np.empty((len(centres), len(levels)))
    for j, level in enumerate(levels):
        index = np.minimum((cumulative < level - 1e-12).sum(axis=1), cumulative.shape[1] - 1)
        radii[:, j] = sorted_distances[np.arange(len(centres)), index]
    return radii


def sample_regions(
    sample_lat: np.ndarray,
    sample_lon: np.ndarray,
    centre_lat: np.ndarray,
    centre_lon: np.ndarray,
    bandwidth_km: float,
    levels: tuple[float, ...] = CALIBRATION_LEVELS,
    chunk: int = 128,
) -> np.ndarray:
    """(N, len(levels)) region radii straight from (N, S) samples, in chunks of images so memory stays
    bounded by the chunk, not the benchmark size."""
    radii = [
        regions_at_levels(
            sample_density(sample_lat[i : i + chunk], sample_lon[i : i + chunk], bandwidth_km),
            centre_lat[i : i + chunk],
            centre_lon[i : i + chunk],
            levels,
        )
        for i in range(0, len(centre_lat), chunk)
    ]
    return np.concatenate(radii) if radii else np.zeros((0, len(levels)))


def spread_error_correlation(spread_km: np.ndarray, errors_km: np.ndarray) -> float:
    """Pearson correlation of log spread and log error over images (1 km added to both): near 0 when the
    samples' agreement says nothing about the error, as for a model whose samples always agree."""
    spread, errors = np.log1p(np.asarray(spread_km, float)), np.log1p(np.asarray(errors_km, float))
    if len(spread) < 2 or spread.std() == 0 or errors.std() == 0:
        return float("nan")
    return float(np.corrcoef(spread, errors)[0, 1])
