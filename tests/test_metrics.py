"""Accuracy metrics on known answers."""

import numpy as np
import pytest

from locdiff_pipeline.method import metrics, sphere


def test_accuracy_from_errors_known_answer():
    result = metrics.accuracy_from_errors([0.5, 1.0, 30.0, 199.0, 800.0, 3000.0])
    assert result["acc_1km"] == pytest.approx(2 / 6)  # thresholds are inclusive
    assert result["acc_25km"] == pytest.approx(2 / 6)
    assert result["acc_200km"] == pytest.approx(4 / 6)
    assert result["acc_750km"] == pytest.approx(4 / 6)
    assert result["acc_2500km"] == pytest.approx(5 / 6)
    assert result["median_km"] == pytest.approx((30.0 + 199.0) / 2)
    assert result["count"] == 6


def test_accuracy_from_coordinates():
    one_degree_km = np.radians(1) * sphere.EARTH_RADIUS_KM  # ~111 km
    result = metrics.accuracy([0, 0, 0], [0, 179.9, 10], [0, 0, 0], [0, -179.9, 10 + 30])
    assert result["acc_1km"] == pytest.approx(1 / 3)
    assert result["acc_25km"] == pytest.approx(2 / 3)  # 0.2 degrees across the antimeridian is ~22 km
    assert result["acc_2500km"] == pytest.approx(2 / 3)  # 30 degrees of longitude is ~3336 km
    assert result["median_km"] == pytest.approx(0.2 * one_degree_km, rel=1e-3)
    assert metrics.validation_score(result) == pytest.approx(np.mean([1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]))


def test_accuracy_rejects_bad_errors():
    with pytest.raises(ValueError):
        metrics.accuracy_from_errors([])
    with pytest.raises(ValueError):
        metrics.accuracy_from_errors([1.0, np.nan])


def test_per_image_scores_average_to_the_validation_score():
    rng = np.random.default_rng(4)
    lat, lon = rng.uniform(-60, 60, 50), rng.uniform(-170, 170, 50)
    pred_lat, pred_lon = np.clip(lat + rng.normal(0, 5, 50), -90, 90), lon
    per_image = metrics.per_image_score(lat, lon, pred_lat, pred_lon)
    assert per_image.shape == (50,) and set(np.round(per_image * 5).astype(int)) <= set(range(6))
    assert per_image.mean() == pytest.approx(metrics.validation_score(metrics.accuracy(lat, lon, pred_lat, pred_lon)))
