"""Intervals from a bootstrap over regions: reproducible with a seed, narrower as regions are added, and the
same in DuckDB's SQL as in Python."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from locdiff_pipeline.method import bootstrap, sphere
from locdiff_pipeline.steps import report_sql
from locdiff_pipeline.steps.prediction_table import bootstrap_table


def _benchmark(regions: int, per_region: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hits (0/1) of images in `regions` regions, each region with its own hit rate (images of a region
    succeed or fail together more than apart)."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0, 1, regions)
    labels = np.repeat([f"r{i:03d}" for i in range(regions)], per_region)
    hits = (rng.uniform(size=regions * per_region) < np.repeat(rates, per_region)).astype(float)
    return hits, labels


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    hits, labels = _benchmark(40, 10)
    first = bootstrap.ratio_interval(hits, labels, bootstrap.region_resamples(labels, seed=7))
    again = bootstrap.ratio_interval(hits, labels, bootstrap.region_resamples(labels[::-1], seed=7))
    other = bootstrap.ratio_interval(hits, labels, bootstrap.region_resamples(labels, seed=8))
    assert first == again  # the images' order does not matter, only the set of regions and the seed
    assert first != other
    assert first[0] < hits.mean() < first[1]


def test_intervals_narrow_as_regions_are_added():
    widths = []
    for regions in (10, 40, 160):
        hits, labels = _benchmark(regions, 10, seed=regions)
        low, high = bootstrap.ratio_interval(hits, labels, bootstrap.region_resamples(labels, seed=0))
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 2.5  # about sqrt(16) = 4 in theory


def test_resampling_regions_is_wider_than_resampling_images_when_regions_decide():
    """Ten images per region that all hit or all miss: as uncertain as ten independent regions, not 100
    images, and the interval says so."""
    labels = np.repeat([f"r{i}" for i in range(10)], 10)
    hits = np.repeat([1.0, 0.0] * 5, 10)
    by_region = bootstrap.ratio_interval(hits, labels, bootstrap.region_resamples(labels, seed=0))
    by_image = bootstrap.ratio_interval(
        hits, np.arange(100).astype(str), bootstrap.region_resamples(np.arange(100).astype(str), seed=0)
    )
    assert by_region[1] - by_region[0] > 2 * (by_image[1] - by_image[0])


def test_region_cells_are_the_cells_of_their_corner():
    regions = sphere.region_of(np.array([37.8, -0.1, 90.0, -90.0]), np.array([-122.4, 179.99, 0.0, -180.0]))
    assert list(regions) == ["+37.5,-127.5", "-7.5,+172.5", "+82.5,+0.0", "-90.0,-180.0"]
    with pytest.raises(ValueError):
        sphere.region_of(np.array([0.0]), np.array([0.0]), 0.0)


def test_duckdbs_intervals_equal_pythons():
    hits, labels = _benchmark(30, 8)
    error = np.where(hits > 0, 100.0, 5000.0)
    resamples = bootstrap.region_resamples(labels, seed=3)
    predictions = pa.table(
        {
            "dataset": ["b"] * len(error),
            "training_dataset": ["t"] * len(error),
            "method": ["locdiff"] * len(error),
            "model_version": [1] * len(error),
            "encoder": ["e"] * len(error),
            "encoder_pretrained": [False] * len(error),
            "image_id": [str(i) for i in range(len(error))],
            "region": list(labels),
            "error_km": error,
            "spread_km": np.full(len(error), np.nan),
            "region_km": np.full(len(error), np.nan),
            "top_error_km": pa.nulls(len(error), pa.float64()),
            "log_density": -error / 1000,
            "hpd_level": np.linspace(0, 1, len(error)),
            "hpd90_area": np.full(len(error), 0.1),
        }
    )
    resample_rows = bootstrap_table(resamples).append_column("dataset", pa.array(["b"] * len(resamples.weight)))
    resample_rows = resample_rows.append_column("model_version", pa.array([1] * len(resamples.weight)))
    with duckdb.connect() as con:
        con.register("p", predictions)
        con.register("r", resample_rows)
        (row,) = report_sql.query(con, report_sql.accuracy_sql("p", resamples="r"))
    for name, values in (("acc_750km", hits), ("nll", error / 1000)):
        low, high = bootstrap.ratio_interval(values, labels, resamples)
        assert row[f"{name}_low"] == pytest.approx(low) and row[f"{name}_high"] == pytest.approx(high), name
    assert row["regions"] == 30 and row["nll"] == pytest.approx(np.mean(error) / 1000)
