"""Every method on one benchmark split, from the same embeddings: LocDiff, LocDiff-H and the baselines.

Each method is scored twice: with the test-time protocol (all views; LocDiff takes the spherical
centre of its per-view predictions, the baselines the normalised mean of the view embeddings) under
its plain name, and from the plain view alone as NAME/plain.

Produces the rows of the `predictions` table (one per image and method, with LocDiff's spread and 90 %
confidence-region radius) and of the `prediction_samples` table (every decoded LocDiff sample, for
density maps and calibration). Dagster-free, so tests and notebooks call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method import baselines, shdd, uncertainty
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.steps.clip_embeddings import load_embeddings
from locdiff_pipeline.steps.locdiff_model import coordinates
from locdiff_pipeline.steps.prediction_table import prediction_rows

LOCDIFF, LOCDIFF_H, KNN, CELLS, REGRESSION = "locdiff", "locdiff_h", "knn", "cell_classification", "regression"
PLAIN_SUFFIX = "/plain"
BASE_METHODS = (LOCDIFF, LOCDIFF_H, KNN, CELLS, REGRESSION)
METHODS = BASE_METHODS + tuple(m + PLAIN_SUFFIX for m in BASE_METHODS)

SAMPLES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("method", pa.string()),
        ("sample_lat", pa.list_(pa.float32())),
        ("sample_lon", pa.list_(pa.float32())),
        ("bandwidth_km", pa.float64()),
    ]
)


@dataclass(frozen=True)
class MethodSettings:
    """Baseline and uncertainty settings; None means 'chosen on validation' / 'from L'."""

    knn_k: int | None = None
    cells: int | None = None
    regression_steps: int = 1500
    hybrid_radius_km: float = baselines.HYBRID_RADIUS_KM
    density_bandwidth_km: float | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SplitPredictions:
    tables: list[pa.Table]
    samples: pa.Table
    chosen: dict[str, str] = field(default_factory=dict)
    hybrid_fallback_share: float = 0.0


def _split_coordinates(coords: dict, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = np.array([coords[i] for i in ids], dtype=float).reshape(-1, 2).T
    return lat, lon


def density_bandwidth_km(model: LocDiffModel, settings: MethodSettings) -> float:
    """Kernel width of the sample density: as set, else the half-width of an SHDD peak at the model's L
    (finer structure than that is not representable at degree L)."""
    return settings.density_bandwidth_km or shdd.default_rho_km(model.config.L)


def predict_split(
    warehouse: Warehouse,
    dataset: str,
    split: str,
    model: LocDiffModel,
    views: int,
    samples_per_view: int,
    settings: MethodSettings,
) -> SplitPredictions:
    coords = coordinates(warehouse, dataset)
    train_ids, train_embeddings = load_embeddings(warehouse, dataset, "train")
    val_ids, val_embeddings = load_embeddings(warehouse, dataset, "val")
    ids, embeddings = load_embeddings(warehouse, dataset, split, views=views)
    if not ids:
        raise ValueError(f"dataset {dataset!r} has no {split!r} images to predict")
    gallery = baselines.Gallery(train_embeddings, *_split_coordinates(coords, train_ids))
    val_lat, val_lon = _split_coordinates(coords, val_ids)
    true_lat, true_lon = _split_coordinates(coords, ids)
    encoder = model.encoder

    def rows(method: str, prediction, **extra) -> pa.Table:
        return prediction_rows(method, split, ids, true_lat, true_lon, prediction.lat, prediction.lon, encoder, **extra)

    k = baselines.fit_knn(gallery, val_embeddings, val_lat, val_lon, settings.knn_k)
    cell_classifier = baselines.fit_cells(gallery, val_embeddings, val_lat, val_lon, settings.cells, settings.seed)
    regressor = baselines.fit_regressor(gallery, steps=settings.regression_steps, seed=settings.seed)
    bandwidth = density_bandwidth_km(model, settings)

    def all_methods(inputs: np.ndarray, suffix: str) -> tuple[list[pa.Table], object, np.ndarray]:
        locdiff = model.predict_embeddings(inputs, samples=samples_per_view, seed=settings.seed)
        with_samples = locdiff.sample_lat.shape[1] > 1  # one sample has no spread and no region of its own
        region = (
            uncertainty.sample_regions(
                locdiff.sample_lat, locdiff.sample_lon, locdiff.lat, locdiff.lon, bandwidth, (uncertainty.REGION_LEVEL,)
            )[:, 0]
            if with_samples
            else None
        )
        hybrid, fell_back = baselines.locdiff_h(gallery, inputs, locdiff.lat, locdiff.lon, settings.hybrid_radius_km)
        knn = baselines.knn_predict(gallery, inputs, k)
        tables = [
            rows(LOCDIFF + suffix, locdiff, spread_km=locdiff.spread_km if with_samples else None, region_km=region),
            rows(LOCDIFF_H + suffix, hybrid),
            rows(KNN + suffix, knn, spread_km=knn.spread_km),
            rows(CELLS + suffix, cell_classifier.predict(inputs)),
            rows(REGRESSION + suffix, regressor.predict(inputs)),
        ]
        return tables, locdiff, fell_back

    tables, locdiff, fell_back = all_methods(embeddings, "")
    tables += all_methods(embeddings[:, 0], PLAIN_SUFFIX)[0]
    samples = pa.table(
        {
            "image_id": ids,
            "method": [LOCDIFF] * len(ids),
            "sample_lat": list(locdiff.sample_lat.astype(np.float32)),
            "sample_lon": list(locdiff.sample_lon.astype(np.float32)),
            "bandwidth_km": np.full(len(ids), bandwidth),
        },
        schema=SAMPLES_SCHEMA,
    )
    chosen = {
        KNN: f"k={k}",
        CELLS: f"cells={len(cell_classifier.centroids_lat)}",
        LOCDIFF_H: f"radius={settings.hybrid_radius_km:g}km",
        LOCDIFF: f"{views} views x {samples_per_view} samples",
    }
    return SplitPredictions(tables, samples, chosen, float(fell_back.mean()))
