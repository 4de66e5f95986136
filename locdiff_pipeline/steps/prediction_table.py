"""The `predictions` table: one row per benchmark image and method (the `chance` reference: one per
draw), for one benchmark (the `dataset` partition) and model version, naming the training dataset.

Every method predicts from the same embeddings, so the report compares like with like.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method import sphere
from locdiff_pipeline.method.bootstrap import Resamples
from locdiff_pipeline.method.densities import DensityScores

PREDICTIONS_TABLE = "predictions"
SAMPLES_TABLE = "prediction_samples"
BOOTSTRAP_TABLE = "bootstrap"  # the region resamples behind every interval of the report (method/bootstrap.py)
BOOTSTRAP_SCHEMA = pa.schema([("replicate", pa.int32()), ("region", pa.string()), ("weight", pa.int32())])

PREDICTION_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("training_dataset", pa.string()),
        ("method", pa.string()),
        ("true_lat", pa.float64()),
        ("true_lon", pa.float64()),
        ("pred_lat", pa.float64()),
        ("pred_lon", pa.float64()),
        ("error_km", pa.float64()),
        ("spread_km", pa.float64()),
        ("region_km", pa.float64()),
        ("encoder", pa.string()),
        ("encoder_pretrained", pa.bool_()),
        ("top_lat", pa.list_(pa.float64())),  # ranked answers, best first (LocDiff and kNN; null for others)
        ("top_lon", pa.list_(pa.float64())),
        ("top_probability", pa.list_(pa.float64())),
        ("top_error_km", pa.float64()),  # the closest of the ranked answers to the truth
        ("region", pa.string()),  # the truth's region cell (sphere.region_of): the unit of the bootstrap
        # the method's density (method/densities.py), null for the /plain twins: its log at the truth in nats
        # relative to the uniform density (0: knows nothing), the mass of the smallest highest-density region
        # holding the truth (inside the q region when <= q), and the area of its 90 % region (share of the Earth)
        ("log_density", pa.float64()),
        ("hpd_level", pa.float64()),
        ("hpd90_area", pa.float64()),
        # the areas of its 10, 20, ... 90 % regions (densities.REGION_LEVELS): the coverage-area figure's x axis
        ("hpd_areas", pa.list_(pa.float64())),
    ]
)


def prediction_rows(
    method: str,
    training_dataset: str,
    ids: list[str],
    true_lat: np.ndarray,
    true_lon: np.ndarray,
    pred_lat: np.ndarray,
    pred_lon: np.ndarray,
    encoder: dict,
    spread_km: np.ndarray | None = None,
    region_km: np.ndarray | None = None,
    ranked: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    regions: np.ndarray | None = None,
    density: DensityScores | None = None,
) -> pa.Table:
    """A predictions table for one method, with great-circle errors computed here (one place); `ranked`
    is (lat, lon, probability), each (N, k), of the method's ranked answers; `regions` the truths' region
    cells; `density` the scores of the method's density at the truths."""
    n = len(ids)
    missing = np.full(n, np.nan)
    scores = (missing,) * 3 if density is None else (density.log_density, density.truth_level, density.area)
    level_areas = [None] * n if density is None else [list(map(float, row)) for row in density.areas]
    top = [None] * n, [None] * n, [None] * n, [None] * n
    if ranked is not None:
        top_lat, top_lon, top_probability = (np.asarray(a, float) for a in ranked)
        valid = ~np.isnan(top_lat)
        k = top_lat.shape[1]
        truth_lat, truth_lon = np.repeat(np.asarray(true_lat, float), k), np.repeat(np.asarray(true_lon, float), k)
        errors = np.full(top_lat.size, np.inf)
        errors[valid.ravel()] = sphere.haversine_km(
            truth_lat[valid.ravel()], truth_lon[valid.ravel()], top_lat[valid], top_lon[valid]
        )
        top = (
            [list(r[v]) for r, v in zip(top_lat, valid, strict=True)],
            [list(r[v]) for r, v in zip(top_lon, valid, strict=True)],
            [list(r[v]) for r, v in zip(top_probability, valid, strict=True)],
            errors.reshape(n, k).min(axis=1),
        )
    return pa.table(
        {
            "image_id": ids,
            "training_dataset": [training_dataset] * n,
            "method": [method] * n,
            "true_lat": np.asarray(true_lat, float),
            "true_lon": np.asarray(true_lon, float),
            "pred_lat": np.asarray(pred_lat, float),
            "pred_lon": np.asarray(pred_lon, float),
            "error_km": sphere.haversine_km(true_lat, true_lon, pred_lat, pred_lon),
            "spread_km": missing if spread_km is None else np.asarray(spread_km, float),
            "region_km": missing if region_km is None else np.asarray(region_km, float),
            "encoder": [encoder["label"]] * n,
            "encoder_pretrained": [bool(encoder["is_pretrained"])] * n,
            "top_lat": top[0],
            "top_lon": top[1],
            "top_probability": top[2],
            "top_error_km": top[3],
            "region": [None] * n if regions is None else list(regions),
            # null, not NaN, where a method has no density: SQL's averages then leave it out
            "log_density": pa.array(np.asarray(scores[0], float), from_pandas=True),
            "hpd_level": pa.array(np.asarray(scores[1], float), from_pandas=True),
            "hpd90_area": pa.array(np.asarray(scores[2], float), from_pandas=True),
            "hpd_areas": level_areas,
        },
        schema=PREDICTION_SCHEMA,
    )


def bootstrap_table(resamples: Resamples) -> pa.Table:
    return pa.table(
        {"replicate": resamples.replicate, "region": list(resamples.region), "weight": resamples.weight},
        schema=BOOTSTRAP_SCHEMA,
    )


def write_predictions(
    warehouse: Warehouse,
    dataset: str,
    model_version: int,
    tables: list[pa.Table],
    samples: pa.Table,
    resamples: Resamples,
    manifest: dict,
) -> int:
    """Write the samples and bootstrap partitions, then the predictions partition (each swapped in
    atomically). The predictions manifest is the commit point: a run that dies before it leaves a stale
    predictions fingerprint, so the next run redoes all three."""
    keys = {"dataset": dataset, "model_version": model_version}
    with warehouse.write_partition(SAMPLES_TABLE, manifest, **keys) as writer:
        writer.write(samples)
    with warehouse.write_partition(BOOTSTRAP_TABLE, manifest, **keys) as writer:
        writer.write(bootstrap_table(resamples))
    with warehouse.write_partition(PREDICTIONS_TABLE, manifest, **keys) as writer:
        for table in tables:
            writer.write(table)
        return writer.rows


def predictions_are_current(warehouse: Warehouse, dataset: str, model_version: int, key: str) -> bool:
    keys = {"dataset": dataset, "model_version": model_version}
    tables = (PREDICTIONS_TABLE, SAMPLES_TABLE, BOOTSTRAP_TABLE)
    return all(warehouse.is_current(table, key, **keys) for table in tables)
