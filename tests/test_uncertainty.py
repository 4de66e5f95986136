"""Sample densities, confidence regions and calibration: known answers and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from locdiff_pipeline.method import sphere, uncertainty


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


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="bandwidth"):
        uncertainty.sample_density(np.zeros((1, 2)), np.zeros((1, 2)), 0)
    with pytest.raises(ValueError, match="level"):
        uncertainty.regions_at_levels(np.ones((1, 10)) / 10, np.zeros(1), np.zeros(1), (0.5, 1.5))
