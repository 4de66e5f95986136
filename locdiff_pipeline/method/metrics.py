"""Geolocation accuracy: the share of predictions within 1, 25, 200, 750 and 2500 km, and the median error."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from locdiff_pipeline.method.sphere import haversine_km

THRESHOLDS_KM: tuple[int, ...] = (1, 25, 200, 750, 2500)
SCALE_NAMES: dict[int, str] = {1: "street", 25: "city", 200: "region", 750: "country", 2500: "continent"}


def accuracy_column(threshold_km: int) -> str:
    """Column name used everywhere (tables, MLflow metrics, reports) for one threshold."""
    return f"acc_{threshold_km}km"


def accuracy_from_errors(errors_km: ArrayLike) -> dict[str, float]:
    """Shares within each threshold (inclusive) and the median error, from great-circle errors in km."""
    errors = np.asarray(errors_km, dtype=np.float64)
    if errors.ndim != 1 or errors.size == 0:
        raise ValueError(f"need a non-empty 1-D array of errors, got shape {errors.shape}")
    if not np.all(np.isfinite(errors)) or np.any(errors < 0):
        raise ValueError("errors must be finite, non-negative distances in km")
    result = {accuracy_column(t): float(np.mean(errors <= t)) for t in THRESHOLDS_KM}
    result["median_km"] = float(np.median(errors))
    result["count"] = int(errors.size)
    return result


def accuracy(true_lat: ArrayLike, true_lon: ArrayLike, pred_lat: ArrayLike, pred_lon: ArrayLike) -> dict[str, float]:
    """Accuracy at the five scales and the median error for paired true and predicted coordinates."""
    return accuracy_from_errors(haversine_km(true_lat, true_lon, pred_lat, pred_lon))


def per_image_score(true_lat: ArrayLike, true_lon: ArrayLike, pred_lat: ArrayLike, pred_lon: ArrayLike) -> np.ndarray:
    """Each image's share of the five thresholds its error is within: their mean is the validation score,
    and paired differences of them compare two predictions of the same images."""
    errors = haversine_km(true_lat, true_lon, pred_lat, pred_lon)
    return np.mean([errors <= t for t in THRESHOLDS_KM], axis=0)


def validation_score(scores: dict[str, float]) -> float:
    """One number to rank models on validation: the mean of the five accuracies (higher is better)."""
    return float(np.mean([scores[accuracy_column(t)] for t in THRESHOLDS_KM]))
