"""Sample densities, confidence regions and calibration: known answers and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from locdiff_pipeline.method import shdd, sphere, uncertainty


def test_density_is_a_probability_over_the_anchors():
    rng = np.random.default_rng(0)
    lat, lon = sphere.random_points(16, rng)
    masses = uncertainty.sample_density(lat[None], lon[None], bandwidth_km=300)
    assert masses.shape == (1, uncertainty.DENSITY_ANCHORS)
    assert masses.sum() == pytest.approx(1.0)
    assert np.all(masses >= 0)


@pytest.mark.parametrize("bandwidth_km", [150.0, 400.0])
def test_region_of_one_point_is_the_rayleigh_radius(bandwidth_km):
    """A von Mises-Fisher kernel of small width sigma is a 2-D Gaussian: the cap holding q of its mass
    has radius sigma * sqrt(-2 ln(1 - q))."""
    lat, lon = np.array([[37.0] * 4]), np.array([[-20.0] * 4])
    masses = uncertainty.sample_density(lat, lon, bandwidth_km, anchors=uncertainty.density_anchors(200_000))
    radius = uncertainty.regions_at_levels(
        masses, np.array([37.0]), np.array([-20.0]), (0.5, 0.9), anchors=uncertainty.density_anchors(200_000)
    )[0]
    expected = [bandwidth_km * math.sqrt(-2 * math.log(1 - q)) for q in (0.5, 0.9)]
    np.testing.assert_allclose(radius, expected, rtol=0.08)


def test_regions_grow_with_the_level_and_the_spread_of_samples():
    rng = np.random.default_rng(1)
    tight_lat, tight_lon = 10 + rng.normal(0, 0.5, (1, 16)), 20 + rng.normal(0, 0.5, (1, 16))
    wide_lat, wide_lon = 10 + rng.normal(0, 8, (1, 16)), 20 + rng.normal(0, 8, (1, 16))
    levels = uncertainty.CALIBRATION_LEVELS
    tight = uncertainty.sample_regions(tight_lat, tight_lon, np.array([10.0]), np.array([20.0]), 100, levels)[0]
    wide = uncertainty.sample_regions(wide_lat, wide_lon, np.array([10.0]), np.array([20.0]), 100, levels)[0]
    assert np.all(np.diff(tight) >= 0) and np.all(np.diff(wide) >= 0)
    assert wide[-2] > 3 * tight[-2]


def test_calibration_is_nominal_when_truth_and_samples_share_a_distribution():
    """Truth and samples drawn from the same narrow distribution around the prediction: observed
    coverage tracks the nominal level (the density adds the kernel, so it errs on the wide side)."""
    rng = np.random.default_rng(2)
    n, s, sigma_deg = 200, 64, 3.0
    centre_lat, centre_lon = rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)
    sample_lat = centre_lat[:, None] + rng.normal(0, sigma_deg, (n, s))
    sample_lon = sphere.wrap_longitude(
        centre_lon[:, None] + rng.normal(0, sigma_deg, (n, s)) / np.cos(np.radians(centre_lat))[:, None]
    )
    true_lat = centre_lat + rng.normal(0, sigma_deg, n)
    true_lon = sphere.wrap_longitude(centre_lon + rng.normal(0, sigma_deg, n) / np.cos(np.radians(centre_lat)))
    radii = uncertainty.sample_regions(sample_lat, sample_lon, centre_lat, centre_lon, bandwidth_km=60)
    errors = sphere.haversine_km(true_lat, true_lon, centre_lat, centre_lon)
    points = uncertainty.calibration(errors, radii)
    observed = np.array([share for _, share in points])
    nominal = np.array([level for level, _ in points])
    assert np.all(np.abs(observed - nominal) < 0.1), points


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="bandwidth"):
        uncertainty.sample_density(np.zeros((1, 2)), np.zeros((1, 2)), 0)
    with pytest.raises(ValueError, match="level"):
        uncertainty.regions_at_levels(np.ones((1, 10)) / 10, np.zeros(1), np.zeros(1), (0.5, 1.5))


def test_the_mixture_density_shows_each_place_the_samples_gather_weighted_by_their_share():
    """Three samples near New York and two near Sydney: two modes, at those places, the second about two
    thirds as high as the first (the mean of SHDD vectors is the mixture of their densities)."""
    lat = np.array([40.7, 41.2, 40.2, -33.9, -33.4])
    lon = np.array([-74.0, -73.5, -74.6, 151.2, 150.7])
    grid_lat, grid_lon, density = uncertainty.mixture_density_on_grid(lat, lon, 20)
    assert density.shape == (len(grid_lat), len(grid_lon)) and density.min() >= 0
    assert np.all(np.diff(grid_lat) > 0) and np.all(np.diff(grid_lon) > 0) and grid_lon[0] == -180.0

    mesh_lat, mesh_lon = (m.ravel() for m in np.meshgrid(grid_lat, grid_lon, indexing="ij"))

    def distance_to(la: float, lo: float) -> np.ndarray:
        return sphere.haversine_km(mesh_lat, mesh_lon, np.full_like(mesh_lat, la), np.full_like(mesh_lon, lo))

    def peak_near(la: float, lo: float) -> tuple[float, float, float]:
        index = np.where(distance_to(la, lo) < 1500, density.ravel(), -1).argmax()
        return density.ravel()[index], mesh_lat[index], mesh_lon[index]

    (new_york, ny_lat, ny_lon), (sydney, sy_lat, sy_lon) = peak_near(40.7, -74.0), peak_near(-33.7, 151.0)
    assert new_york == density.max() and sydney / new_york == pytest.approx(2 / 3, abs=0.08)
    assert sphere.haversine_km(ny_lat, ny_lon, 40.7, -74.0)[0] < 250
    assert sphere.haversine_km(sy_lat, sy_lon, -33.65, 150.95)[0] < 250
    assert density.ravel()[distance_to(0.0, 40.0) < 2000].max() < 0.05 * new_york  # nothing where no sample went


def test_function_on_grid_is_the_function_at_the_grid_points():
    L = 12
    coeffs = torch.tensor(np.random.default_rng(1).standard_normal((2, shdd.num_coefficients(L))))
    grid_lat, grid_lon, values = shdd.function_on_grid(coeffs, L, rho_km=0.0)
    mesh_lat, mesh_lon = np.meshgrid(grid_lat, grid_lon, indexing="ij")
    direct = coeffs.numpy() @ shdd.encode(mesh_lat.ravel(), mesh_lon.ravel(), L).T
    assert np.allclose(values.reshape(2, -1), direct, atol=1e-9 * np.abs(direct).max())
