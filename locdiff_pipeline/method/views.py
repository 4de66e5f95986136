"""How an image's test-time views weigh in its answer: one set of rules for LocDiff and the baselines.

View 0 is always the plain view (the whole image, unaugmented); the others are augmentations, which can
move a map's content or miss the telling part of a photo. So besides the number of views, a protocol
says how much the plain view weighs (`plain_weight`; None = every view alike) and how per-view answers
become one:

- "mixture": the weighted mean of the views' SHDD vectors is the mixture of their densities (SHDD is
  linear); its mode is the answer. Views that disagree give a multi-modal density whose heaviest mode
  wins, never a point between the modes.
- "centre": the weighted spherical centre of the per-view points (falls between modes when they disagree).
- "mean_embedding" (baselines only): one prediction from the weighted mean of the view embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

COMBINE_RULES = ("mixture", "centre")
MEAN_EMBEDDING = "mean_embedding"
PLAIN_WEIGHTS = (None, 0.5, 0.75)  # the plain view's share searched on validation; None = uniform


def view_weights(views: int, plain_weight: float | None = None) -> np.ndarray:
    """Weights of `views` views, summing to 1: uniform when plain_weight is None or there is one view;
    else the plain view (view 0) weighs plain_weight and the others share the rest equally."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    if plain_weight is None or views == 1:
        return np.full(views, 1.0 / views)
    if not 0.0 < plain_weight <= 1.0:
        raise ValueError(f"plain_weight must be in (0, 1], got {plain_weight}")
    return np.array([plain_weight] + [(1.0 - plain_weight) / (views - 1)] * (views - 1))


def sample_weights(views: int, samples: int, plain_weight: float | None = None) -> np.ndarray:
    """Weights of views x samples draws (view-major), each view's weight shared by its samples."""
    return np.repeat(view_weights(views, plain_weight) / samples, samples)


def mean_embedding(embeddings: np.ndarray, plain_weight: float | None = None) -> np.ndarray:
    """(N, D) unit rows: the weighted mean of each image's unit-norm view embeddings (N, V, D), renormalised;
    (N, D) input is only made unit-norm."""
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim == 3:
        array = array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)
        weights = view_weights(array.shape[1], plain_weight).astype(np.float32)
        array = np.einsum("nvd,v->nd", array, weights)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be (N, D) or (N, views, D), got {array.shape}")
    return array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class ViewRule:
    """A baseline's way to use an image's views: MEAN_EMBEDDING, or a COMBINE_RULES rule applied to its
    per-view predictions (the mixture decoded at degree L, as LocDiff's is)."""

    rule: str = MEAN_EMBEDDING
    plain_weight: float | None = None
    L: int = 20

    def __post_init__(self) -> None:
        if self.rule not in (MEAN_EMBEDDING, *COMBINE_RULES):
            raise ValueError(f"view rule must be one of {(MEAN_EMBEDDING, *COMBINE_RULES)}, got {self.rule!r}")

    def describe(self) -> str:
        weight = "uniform" if self.plain_weight is None else f"plain {self.plain_weight:g}"
        return f"{self.rule} ({weight})"


def combine_points(
    lat: np.ndarray, lon: np.ndarray, weights: np.ndarray, rule: str, L: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point per row of per-view points (N, V) with view weights (V,): (lat, lon, spread_km), the
    spread being the weighted RMS distance of the points from the answer."""
    from locdiff_pipeline.method import shdd, sphere

    n, v = lat.shape
    units = sphere.to_unit(lat.ravel(), lon.ravel()).reshape(n, v, 3)
    if rule == "centre":
        return sphere.grouped_centre_and_spread(units, weights)
    if rule != "mixture":
        raise ValueError(f"rule must be one of {COMBINE_RULES}, got {rule!r}")
    deltas = shdd.encode(lat.ravel(), lon.ravel(), L).reshape(n, v, -1)
    mixture_lat, mixture_lon = shdd.decode(np.einsum("nvk,v->nk", deltas, weights), L)
    return mixture_lat, mixture_lon, sphere.spread_about_km(units, sphere.to_unit(mixture_lat, mixture_lon), weights)


def apply(predict: Callable[[np.ndarray], object], embeddings: np.ndarray, rule: ViewRule):
    """A baseline's prediction for (N, D) or (N, V, D) embeddings under a view rule. `predict` maps (N, D)
    embeddings to an object with lat and lon arrays; per-view rules return one with the combined point and
    the per-view spread in `spread_km`."""
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim == 2 or array.shape[1] == 1 or rule.rule == MEAN_EMBEDDING:
        return predict(mean_embedding(array, rule.plain_weight))
    n, v, d = array.shape
    per_view = predict(array.reshape(n * v, d))
    lat, lon = np.asarray(per_view.lat).reshape(n, v), np.asarray(per_view.lon).reshape(n, v)
    combined = combine_points(lat, lon, view_weights(v, rule.plain_weight), rule.rule, rule.L)
    return type(per_view)(*combined)
