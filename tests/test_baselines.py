"""Baselines and LocDiff-H on a small learnable problem, against a chance control measured in the test."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clustered_problem

from locdiff_pipeline.method import baselines, metrics, sphere
from locdiff_pipeline.method.views import MEAN_EMBEDDING, ViewRule


@pytest.fixture(scope="module")
def problem():
    lat, lon, features = clustered_problem(n=1800, dim=32, seed=3)
    train, val, test = slice(0, 1200), slice(1200, 1400), slice(1400, 1800)
    gallery = baselines.Gallery(features[train], lat[train], lon[train])
    return gallery, (features[val], lat[val], lon[val]), (features[test], lat[test], lon[test])


def test_the_gallery_standardises_queries_with_training_statistics(problem):
    gallery, val, _ = problem
    assert np.allclose(gallery.features.mean(axis=0), 0, atol=1e-4) and np.allclose(
        gallery.features.std(axis=0), 1, atol=1e-3
    )
    queries = gallery.queries(val[0])
    assert np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(
        queries, gallery.queries(np.stack([val[0], val[0]], axis=1)), atol=1e-5
    )  # views: their mean


def _acc750(truth, prediction) -> float:
    _, lat, lon = truth
    return metrics.accuracy(lat, lon, prediction.lat, prediction.lon)[metrics.accuracy_column(750)]


def _chance(gallery, truth) -> float:
    """A random training location per image: what a method that ignores the image scores."""
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(gallery.lat), len(truth[1]))
    return _acc750(truth, baselines.MethodPrediction(gallery.lat[pick], gallery.lon[pick]))


def test_knn_beats_chance_and_picks_k_on_validation(problem):
    gallery, val, test = problem
    knn = baselines.fit_knn(gallery, *val)
    assert knn.k in baselines.KNN_K_CHOICES
    prediction = knn.predict(test[0])
    chance = _chance(gallery, test)
    assert chance < 0.3
    assert _acc750(test, prediction) > chance + 0.4
    assert prediction.spread_km.shape == (len(test[0]),) and np.all(prediction.spread_km >= 0)


def test_knn_with_k1_returns_the_nearest_gallery_location_exactly(problem):
    gallery, _, _ = problem
    lat, lon, features = clustered_problem(n=1800, dim=32, seed=3)  # the gallery's own images as queries
    prediction = baselines.knn_predict(gallery, features[:50], 1)
    np.testing.assert_allclose(
        sphere.haversine_km(prediction.lat, prediction.lon, gallery.lat[:50], gallery.lon[:50]), 0, atol=1e-6
    )


def test_cell_classifier_beats_chance_and_predicts_cell_centroids(problem):
    gallery, val, test = problem
    classifier = baselines.fit_cells(gallery, *val)
    prediction = classifier.predict(test[0])
    assert _acc750(test, prediction) > _chance(gallery, test) + 0.4
    centroids = set(zip(np.round(classifier.centroids_lat, 9), np.round(classifier.centroids_lon, 9)))
    assert set(zip(np.round(prediction.lat, 9), np.round(prediction.lon, 9))) <= centroids


def test_regression_beats_chance_and_outputs_points_on_the_sphere(problem):
    gallery, _, test = problem
    prediction = baselines.fit_regressor(gallery, steps=400).predict(test[0])
    assert np.all(np.abs(prediction.lat) <= 90) and np.all(np.abs(prediction.lon) <= 180)
    assert _acc750(test, prediction) > _chance(gallery, test) + 0.3


def test_multi_view_input_is_the_normalised_mean_of_views():
    rng = np.random.default_rng(1)
    views = rng.normal(size=(4, 5, 8))
    expected = (views / np.linalg.norm(views, axis=-1, keepdims=True)).mean(axis=1)
    np.testing.assert_allclose(
        baselines.normalise(views), expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6
    )


def test_locdiff_h_falls_back_to_locdiff_when_the_ring_is_empty(problem):
    gallery, _, test = problem
    rng = np.random.default_rng(2)
    lat, lon = sphere.random_points(len(test[0]), rng)
    hybrid, fell_back = baselines.locdiff_h(gallery, test[0], lat, lon, radius_km=1e-3)
    assert fell_back.all()
    np.testing.assert_array_equal(hybrid.lat, lat)
    np.testing.assert_array_equal(hybrid.lon, lon)


def test_locdiff_h_picks_the_best_match_inside_the_ring(problem):
    gallery, _, test = problem
    _, true_lat, true_lon = test
    # LocDiff predictions 100 km north of the truth: the ring always holds gallery images of that cluster.
    pred_lat = np.clip(true_lat + 100 / 111.2, -90, 90)
    hybrid, fell_back = baselines.locdiff_h(gallery, test[0], pred_lat, true_lon, radius_km=200)
    moved = ~fell_back
    assert moved.mean() > 0.5
    assert np.all(
        sphere.haversine_km(hybrid.lat[moved], hybrid.lon[moved], pred_lat[moved], true_lon[moved]) <= 200 + 1e-6
    )
    # the pick is the most similar gallery image among those inside the ring
    queries = gallery.queries(test[0])
    for i in np.flatnonzero(moved)[:20]:
        inside = (
            sphere.haversine_km(
                gallery.lat, gallery.lon, np.full(len(gallery.lat), pred_lat[i]), np.full(len(gallery.lat), true_lon[i])
            )
            <= 200
        )
        best = np.flatnonzero(inside)[np.argmax(gallery.embeddings[inside] @ queries[i])]
        assert (hybrid.lat[i], hybrid.lon[i]) == (gallery.lat[best], gallery.lon[best])


def test_knn_ranked_answers_are_separate_places_with_neighbour_shares(problem):
    gallery, _, test = problem
    lat, lon, probability = baselines.knn_ranked(gallery, test[0][:40], 3, separation_km=1000, neighbours=30)
    assert lat.shape == (40, 3)
    for i in range(40):
        present = ~np.isnan(lat[i])
        assert present[0] and np.nansum(probability[i]) <= 1 + 1e-9 and np.all(probability[i][present] > 0)
        picks = np.flatnonzero(present)
        for a in picks:
            for b in picks[picks > a]:
                assert sphere.haversine_km([lat[i, a]], [lon[i, a]], [lat[i, b]], [lon[i, b]])[0] >= 1000
    nearest = baselines.knn_predict(gallery, test[0][:40], 1)
    np.testing.assert_allclose(lat[:, 0], nearest.lat)  # rank 1: the most similar training image
    np.testing.assert_allclose(lon[:, 0], nearest.lon)


def test_baseline_hyper_parameters_are_chosen_on_validation_only(problem):
    """The chosen cell classifier and regressor are the best of their grids on validation, whatever
    the test images are."""
    gallery, val, test = problem
    cells = baselines.fit_cells(gallery, *val)
    regressor = baselines.fit_regressor_on_validation(gallery, *val, steps=90)
    assert cells.C in baselines.CELL_C_CHOICES and regressor.learning_rate in baselines.REGRESSION_LEARNING_RATES
    assert regressor.steps in (30, 90)

    def score(prediction) -> float:
        return metrics.validation_score(metrics.accuracy(val[1], val[2], prediction.lat, prediction.lon))

    others = [baselines.fit_cells(gallery, *val, cells=len(cells.centroids_lat), C=c) for c in baselines.CELL_C_CHOICES]
    assert score(cells.predict(val[0])) >= max(score(o.predict(val[0])) for o in others)  # each C fitted from scratch
    shuffled = baselines.fit_cells(gallery, *val)  # the same choice with other test images around
    assert (len(shuffled.centroids_lat), shuffled.C) == (len(cells.centroids_lat), cells.C)
    assert score(regressor.predict(val[0])) >= score(
        baselines.fit_regressor(gallery, steps=90, learning_rate=1e-3).predict(val[0])
    )


def _views(features: np.ndarray, seed: int) -> np.ndarray:
    """Four views per image: the plain one, two lightly noisy ones and one that is pure noise."""
    rng = np.random.default_rng(seed)
    views = np.repeat(features[:, None, :], 4, axis=1) + rng.normal(0, 0.02, (len(features), 4, features.shape[1]))
    views[:, 0] = features
    views[:, 3] = rng.normal(0, 1, features.shape)
    return views.astype(np.float32)


def test_each_baseline_chooses_its_view_rule_on_validation(problem):
    """Per-view predictions combined by LocDiff's rule or the mean embedding, whichever validation prefers,
    jointly with the hyper-parameters; the choice is the best pair on validation."""
    gallery, val, _ = problem
    multi = (_views(val[0], 1), val[1], val[2])
    rules = (ViewRule(MEAN_EMBEDDING, 0.5, 8), ViewRule("mixture", 0.5, 8))

    def score(prediction) -> float:
        return metrics.validation_score(metrics.accuracy(val[1], val[2], prediction.lat, prediction.lon))

    knn = baselines.fit_knn(gallery, *multi, view_rules=rules)
    cells = baselines.fit_cells(gallery, *multi, cells=32, C=1.0, view_rules=rules)
    for fitted in (knn, cells):
        assert fitted.view_rule in rules
        chosen = score(fitted.predict(multi[0]))
        for rule in rules:
            fitted_rule, fitted.view_rule = fitted.view_rule, rule
            assert score(fitted.predict(multi[0])) <= chosen
            fitted.view_rule = fitted_rule
    per_view = baselines.KnnRetrieval(gallery, 1, ViewRule("mixture", 0.5, 8)).predict(multi[0][:30])
    nearest = baselines.knn_predict(gallery, multi[0][:30, 0], 1)  # the plain view weighs half: it wins
    assert np.median(sphere.haversine_km(per_view.lat, per_view.lon, nearest.lat, nearest.lon)) < 300
