"""Each baseline's answer as a normalised density on the sphere, so it is scored as LocDiff's is.

- kNN: a kernel around each of its k most similar training images, alike;
- cell classification: its softmax over cells (at a temperature) spread evenly over each Voronoi cell;
- regression and the constant guess: a kernel around the point answer;
- chance: a kernel around every training location (the training locations' own density).

Every width, temperature, neighbour count and floor is chosen on the training dataset's validation split by
the mean negative log-likelihood of the truths (`densities.fit_by_nll`), never on a benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from locdiff_pipeline.method import densities, sphere
from locdiff_pipeline.method.baselines import KNN_K_CHOICES, CellClassifier, Gallery, MethodPrediction, top_k_similar
from locdiff_pipeline.method.densities import CellDensity, Fit, KernelMixture

TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the cell classifier's softmax temperatures searched
CHANCE_KERNELS = 4096  # training locations under chance's kernels (a seeded sample of a larger training set)


def knn_density(gallery: Gallery, neighbours: np.ndarray, k: int, bandwidth_km: float, floor: float) -> KernelMixture:
    """A kernel around each of the first k of each image's `neighbours` (N, >= k gallery rows, best first)."""
    chosen = neighbours[:, :k]
    return KernelMixture(gallery.units[chosen], np.full(chosen.shape, 1.0 / k), bandwidth_km, floor)


def knn_neighbours(gallery: Gallery, embeddings: np.ndarray, plain_weight: float | None) -> np.ndarray:
    """Each image's most similar training images (as many as the largest k searched), best first, from the
    views' weighted mean embedding."""
    most = min(max(KNN_K_CHOICES), len(gallery.lat))
    return top_k_similar(gallery, gallery.queries(embeddings, plain_weight), most)


def cell_probabilities(cells: CellClassifier, embeddings: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) softmax of the classifier's logits divided by `temperature`, from the views' weighted mean."""
    features = cells.gallery.standardise(embeddings, cells.view_rule.plain_weight)
    logits = cells.classifier.logits(features) / temperature
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def chance_density(gallery: Gallery, bandwidth_km: float, floor: float, seed: int = 0) -> KernelMixture:
    """The training locations' density: one kernel around each, alike, one density for every image (around a
    seeded sample of CHANCE_KERNELS of them when there are more: a kernel estimate needs no more)."""
    units = gallery.units
    if len(units) > CHANCE_KERNELS:
        units = units[np.sort(np.random.default_rng(seed).choice(len(units), CHANCE_KERNELS, replace=False))]
    return KernelMixture(units[None], np.full((1, len(units)), 1.0 / len(units)), bandwidth_km, floor)


@dataclass
class BaselineDensities:
    """The baselines' density parameters chosen on validation, and what the cells need to spread theirs."""

    knn: Fit
    cells: Fit
    regression: Fit
    constant: Fit
    chance: Fit
    cell_areas: np.ndarray
    cell_centroids: np.ndarray

    def describe(self) -> dict[str, str]:
        """What each method's density used, for the report's notes."""
        return {
            name: ", ".join(f"{key}={value:g}" for key, value in getattr(self, name).parameters.items())
            + f" (validation NLL {getattr(self, name).nll:.3f})"
            for name in ("knn", "cells", "regression", "constant", "chance")
        }


def fit_baseline_densities(
    gallery: Gallery,
    knn_plain_weight: float | None,
    cells: CellClassifier,
    regression: MethodPrediction,
    constant: tuple[float, float],
    val_embeddings: np.ndarray,
    val_lat: np.ndarray,
    val_lon: np.ndarray,
) -> BaselineDensities:
    """Every baseline's density parameters, each chosen by validation NLL; `regression` is the regressor's
    prediction of the validation images."""
    truth = sphere.to_unit(val_lat, val_lon)
    kernels = densities.kernel_grid()
    neighbours = knn_neighbours(gallery, val_embeddings, knn_plain_weight)
    counts = [k for k in KNN_K_CHOICES if k <= neighbours.shape[1]]
    knn = densities.fit_by_nll(
        [{"k": k, **p} for k in counts for p in kernels], lambda k, **p: knn_density(gallery, neighbours, k, **p), truth
    )
    centroids = sphere.to_unit(cells.centroids_lat, cells.centroids_lon)
    areas = densities.voronoi_areas(centroids)
    cell_fit = densities.fit_by_nll(
        [{"temperature": t, "floor": f} for t in TEMPERATURES for f in densities.FLOORS],
        lambda temperature, floor: CellDensity(
            cell_probabilities(cells, val_embeddings, temperature), centroids, areas, floor
        ),
        truth,
    )
    n = len(val_lat)
    return BaselineDensities(
        knn=knn,
        cells=cell_fit,
        regression=densities.fit_by_nll(
            kernels, lambda **p: densities.point_kernel(regression.lat, regression.lon, **p), truth
        ),
        constant=densities.fit_by_nll(
            kernels, lambda **p: densities.point_kernel(np.full(n, constant[0]), np.full(n, constant[1]), **p), truth
        ),
        chance=densities.fit_by_nll(kernels, lambda **p: chance_density(gallery, **p), truth),
        cell_areas=areas,
        cell_centroids=centroids,
    )
