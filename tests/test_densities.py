"""Densities on the sphere and their proper scores: every method's density integrates to 1, the scores have
their known answers, and the regions' Monte Carlo estimates agree with closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import clustered_problem

from locdiff_pipeline.method import baseline_densities, baselines, densities, sphere
from locdiff_pipeline.method.densities import CellDensity, KernelMixture

QUADRATURE = sphere.to_unit(*sphere.fibonacci_lattice(400_000))  # equal-area points: the mean is the integral / 4 pi


def _integral(density, images: int) -> np.ndarray:
    """The integral of each image's density over the sphere, by equal-area quadrature."""
    return np.exp(density.log_density(np.broadcast_to(QUADRATURE, (images, *QUADRATURE.shape)))).mean(axis=1)


def _cap_mass(kappa: float, one_minus_cos: float) -> float:
    """The mass of a von Mises-Fisher kernel within a cap around its centre (closed form)."""
    return -math.expm1(-kappa * one_minus_cos) / -math.expm1(-2 * kappa)


@pytest.fixture(scope="module")
def fitted():
    """The baselines on a small learnable problem, and their densities chosen on its validation split."""
    lat, lon, features = clustered_problem(n=900, dim=16)
    gallery = baselines.Gallery(features[:700], lat[:700], lon[:700])
    validation = (features[700:800], lat[700:800], lon[700:800])
    cells = baselines.fit_cells(gallery, *validation, cells=16)
    regressor = baselines.fit_regressor_on_validation(gallery, *validation, steps=150)
    constant = baselines.densest_location(gallery)
    chosen = baseline_densities.fit_baseline_densities(
        gallery, None, cells, regressor.predict(validation[0]), constant, *validation
    )
    test = (features[800:], lat[800:], lon[800:])
    return gallery, cells, regressor, constant, chosen, test


def test_every_method_density_integrates_to_one(fitted):
    gallery, cells, regressor, constant, chosen, (features, lat, lon) = fitted
    features, lat, lon = features[:3], lat[:3], lon[:3]
    neighbours = baseline_densities.knn_neighbours(gallery, features, None)
    regression = regressor.predict(features)
    made = {
        "locdiff": densities.samples_mixture(
            np.random.default_rng(0).uniform(-60, 60, (3, 64)),
            np.random.default_rng(1).uniform(-180, 180, (3, 64)),
            300.0,
            0.03,
            None,
        ),
        "knn": baseline_densities.knn_density(gallery, neighbours, **chosen.knn.parameters),
        "cells": CellDensity(
            baseline_densities.cell_probabilities(cells, features, chosen.cells.parameters["temperature"]),
            chosen.cell_centroids,
            chosen.cell_areas,
            chosen.cells.parameters["floor"],
        ),
        "regression": densities.point_kernel(regression.lat, regression.lon, **chosen.regression.parameters),
        "constant": densities.point_kernel(
            np.full(3, constant[0]), np.full(3, constant[1]), **chosen.constant.parameters
        ),
        "chance": baseline_densities.chance_density(gallery, **chosen.chance.parameters),
        "narrow kernel": densities.point_kernel(lat, lon, 50.0, 0.0),
        "locdiff with its prior floor": densities.Blend(
            (
                densities.point_kernel(lat, lon, 300.0, 0.0),
                baseline_densities.chance_density(gallery, 800.0, 0.0),  # one part shared by every image
            ),
            (0.6, 0.37),  # and 3 % uniform
        ),
    }
    for name, density in made.items():
        rows = 1 if name == "chance" else 3
        np.testing.assert_allclose(_integral(density, rows), 1.0, atol=2e-3, err_msg=name)


def test_uniform_scores_zero_and_a_density_at_the_truth_scores_better():
    lat, lon = np.array([10.0, -40.0, 70.0]), np.array([20.0, 100.0, -150.0])
    truth = sphere.to_unit(lat, lon)
    uniform = densities.point_kernel(lat, lon, 1e7, 0.0)  # a kernel wider than the Earth: uniform
    np.testing.assert_allclose(uniform.log_density(truth), 0.0, atol=1e-6)
    sharp = densities.point_kernel(lat, lon, 200.0, 0.0)
    wrong = densities.point_kernel(-lat, sphere.wrap_longitude(lon + 90.0), 200.0, 0.0)
    assert np.all(sharp.log_density(truth) > 3.0)  # knows more than nothing: positive log density, negative NLL
    assert np.all(wrong.log_density(truth) < -10.0)
    floored = densities.point_kernel(-lat, sphere.wrap_longitude(lon + 90.0), 200.0, 0.1)
    np.testing.assert_allclose(floored.log_density(truth), math.log(0.1), atol=1e-6)  # the floor bounds a miss


def test_a_kernels_region_and_the_truths_level_match_the_closed_form():
    bandwidth = 500.0
    kappa = densities.kappa_of(bandwidth)
    density = densities.point_kernel(np.array([30.0]), np.array([10.0]), bandwidth, 0.0)
    truth = sphere.to_unit(np.array([33.0]), np.array([10.0]))
    scores = density.scores(truth, np.random.default_rng(0), draws=40_000)
    one_minus_cos = -math.log1p(-densities.LEVEL * -math.expm1(-2 * kappa)) / kappa
    assert scores.area[0] == pytest.approx(one_minus_cos / 2, rel=0.03)  # a cap's share of the sphere
    assert scores.truth_level[0] == pytest.approx(_cap_mass(kappa, 1 - math.cos(math.radians(3.0))), abs=0.01)


def test_a_kernels_regions_at_every_level_match_the_closed_form():
    bandwidth = 800.0
    kappa = densities.kappa_of(bandwidth)
    density = densities.point_kernel(np.array([-20.0]), np.array([60.0]), bandwidth, 0.0)
    areas = density.scores(sphere.to_unit(np.array([0.0]), np.array([0.0])), np.random.default_rng(3), 40_000).areas
    for level, area in zip(densities.REGION_LEVELS, areas[0], strict=True):
        one_minus_cos = -math.log1p(-level * -math.expm1(-2 * kappa)) / kappa
        assert area == pytest.approx(one_minus_cos / 2, rel=0.05), level
    assert np.all(np.diff(areas[0]) > 0)  # a larger region covers more


def test_a_blend_draws_and_scores_as_its_parts_say():
    """Half the mass in a narrow kernel, half in a shared kernel on the other side of the Earth: draws split
    evenly, and the density at each centre is half that part's peak (the other part adds nothing there)."""
    here, there = sphere.to_unit(np.array([0.0]), np.array([0.0])), sphere.to_unit(np.array([0.0]), np.array([180.0]))
    narrow = densities.point_kernel(np.zeros(2), np.zeros(2), 100.0, 0.0)
    shared = KernelMixture(there[None], np.ones((1, 1)), 100.0)
    blend = densities.Blend((narrow, shared), (0.5, 0.5))
    draws = blend.draw(2000, np.random.default_rng(4))
    assert draws.shape == (2, 2000, 3)
    assert np.mean(draws @ here[0] > 0.9) == pytest.approx(0.5, abs=0.04)
    peak = narrow.log_density(np.repeat(here, 2, axis=0))
    np.testing.assert_allclose(blend.log_density(np.repeat(here, 2, axis=0)), peak + math.log(0.5), rtol=1e-9)
    np.testing.assert_allclose(blend.log_density(np.repeat(there, 2, axis=0)), peak + math.log(0.5), rtol=1e-9)
    with pytest.raises(ValueError, match="floor"):
        densities.Blend((densities.point_kernel(np.zeros(2), np.zeros(2), 100.0, 0.1),), (0.5,))


def test_a_floors_flat_part_counts_only_the_share_the_region_needs():
    """70 % of the mass in a narrow kernel, 30 % spread evenly: the 90 % region is the kernel and two thirds
    of the rest of the sphere; a truth far from the kernel is inside it two times in three."""
    lat, lon = np.zeros(400), np.zeros(400)
    density = densities.point_kernel(lat, lon, 25.0, 0.3)
    far = sphere.to_unit(np.full(400, 50.0), np.full(400, 120.0))
    scores = density.scores(far, np.random.default_rng(1), draws=4000)
    assert np.mean(scores.area) == pytest.approx(2 / 3, abs=0.02)
    assert scores.coverage() == pytest.approx(2 / 3, abs=0.07)


def test_calibrated_draws_fall_inside_each_region_as_often_as_its_level():
    """Truths drawn from the density itself: its q region holds a share q of them, at every q."""
    rng = np.random.default_rng(2)
    centres = sphere.to_unit(rng.uniform(-60, 60, (300, 3)).ravel(), rng.uniform(-180, 180, (300, 3)).ravel())
    density = KernelMixture(centres.reshape(300, 3, 3), np.full((300, 3), 1 / 3), 800.0, 0.05)
    truth = density.draw(1, rng)[:, 0]
    levels = density.scores(truth, rng).truth_level
    for q in (0.25, 0.5, 0.9):
        assert np.mean(levels <= q) == pytest.approx(q, abs=0.08)


def test_a_cell_density_spreads_each_cells_probability_over_its_area():
    centroids = sphere.to_unit(np.array([60.0, -60.0]), np.array([0.0, 0.0]))  # two hemispheres, north and south
    areas = densities.voronoi_areas(centroids)
    np.testing.assert_allclose(areas, 0.5, atol=1e-4)
    density = CellDensity(np.array([[0.95, 0.05]]), centroids, areas, 0.0)
    north = sphere.to_unit(np.array([10.0]), np.array([40.0]))
    assert density.log_density(north)[0] == pytest.approx(math.log(0.95 / 0.5))
    scores = density.scores(north)
    assert scores.area[0] == pytest.approx(0.5, abs=1e-4) and scores.truth_level[0] == pytest.approx(0.95)
    vaguer = CellDensity(np.array([[0.85, 0.15]]), centroids, areas, 0.0).scores(north)  # north alone: < 90 %
    assert vaguer.area[0] == pytest.approx(1.0, abs=1e-4) and vaguer.truth_level[0] == pytest.approx(0.85)


def test_fit_by_nll_picks_the_width_that_matches_the_truths_spread():
    """Truths scattered about 300 km around each answer: the NLL chooses a kernel near that width."""
    rng = np.random.default_rng(3)
    centre = densities.point_kernel(rng.uniform(-50, 50, 500), rng.uniform(-180, 180, 500), 300.0, 0.0)
    truth = centre.draw(1, rng)[:, 0]
    answers = sphere.from_unit(centre.centres[:, 0])
    fit = densities.fit_by_nll(
        densities.kernel_grid(floors=(0.0,)), lambda **p: densities.point_kernel(*answers, **p), truth
    )
    assert fit.parameters["bandwidth_km"] in (200.0, 350.0)
    assert fit.nll == min(row["nll"] for row in fit.grid)
