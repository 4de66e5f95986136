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


def test_a_paired_difference_decides_where_two_marginal_intervals_overlap():
    """Two methods that succeed on the same hard and easy regions, one a little more often: their marginal
    intervals overlap (region difficulty dominates both), the interval of their per-replicate difference does not
    contain zero; and two methods that differ by nothing get a difference interval around zero."""
    rng = np.random.default_rng(0)
    labels = np.repeat([f"r{i:02d}" for i in range(40)], 10)
    difficulty = np.repeat(rng.uniform(0, 1, 40), 10)
    reference = (rng.uniform(size=400) < difficulty).astype(float)
    better = np.maximum(reference, rng.uniform(size=400) < 0.15)  # every hit of the reference, and a few more
    resamples = bootstrap.region_resamples(labels, seed=0)
    a, b = bootstrap.ratio_interval(better, labels, resamples), bootstrap.ratio_interval(reference, labels, resamples)
    assert a[0] < b[1]  # the marginal intervals overlap ...
    low, high = bootstrap.paired_difference_interval(better, reference, labels, resamples)
    assert 0 < low < better.mean() - reference.mean() < high  # ... the paired difference excludes zero
    same_low, same_high = bootstrap.paired_difference_interval(reference, reference, labels, resamples)
    assert same_low == same_high == 0.0


def test_duckdbs_paired_differences_and_verdicts_equal_pythons():
    hits, labels = _benchmark(30, 8)
    rng = np.random.default_rng(5)
    other_hits = np.where(rng.uniform(size=len(hits)) < 0.2, 1.0 - hits, hits)
    resamples = bootstrap.region_resamples(labels, seed=3)
    n = len(hits)

    def rows(method: str, method_hits: np.ndarray) -> pa.Table:
        error = np.where(method_hits > 0, 100.0, 5000.0)
        return pa.table(
            {
                "dataset": ["b"] * n,
                "training_dataset": ["t"] * n,
                "method": [method] * n,
                "model_version": [1] * n,
                "encoder": ["e"] * n,
                "encoder_pretrained": [False] * n,
                "image_id": [str(i) for i in range(n)],
                "region": list(labels),
                "error_km": error,
                "spread_km": np.full(n, np.nan),
                "region_km": np.full(n, np.nan),
                "top_error_km": pa.nulls(n, pa.float64()),
                "log_density": -error / 1000,
                "hpd_level": np.linspace(0, 1, n),
                "hpd90_area": np.where(method_hits > 0, 0.2, 0.6),
            }
        )

    predictions = pa.concat_tables([rows("locdiff", hits), rows("knn", other_hits)])
    resample_rows = bootstrap_table(resamples).append_column("dataset", pa.array(["b"] * len(resamples.weight)))
    resample_rows = resample_rows.append_column("model_version", pa.array([1] * len(resamples.weight)))
    with duckdb.connect() as con:
        con.register("p", predictions)
        con.register("r", resample_rows)
        by_method = {row["method"]: row for row in report_sql.query(con, report_sql.accuracy_sql("p", resamples="r"))}
    knn, locdiff = by_method["knn"], by_method["locdiff"]
    assert locdiff["acc_750km_minus_locdiff"] is None and locdiff["versus_locdiff_acc_750km"] is None
    for name, values, reference, higher_is_better in (
        ("acc_750km", other_hits, hits, True),
        ("hpd90_area", np.where(other_hits > 0, 0.2, 0.6), np.where(hits > 0, 0.2, 0.6), False),
    ):
        low, high = bootstrap.paired_difference_interval(values, reference, labels, resamples)
        assert knn[f"{name}_minus_locdiff"] == pytest.approx(values.mean() - reference.mean()), name
        assert knn[f"{name}_minus_locdiff_low"] == pytest.approx(low), name
        assert knn[f"{name}_minus_locdiff_high"] == pytest.approx(high), name
        verdict = (
            "tie" if low <= 0 <= high else ("locdiff worse" if (low > 0) == higher_is_better else "locdiff better")
        )
        assert knn[f"versus_locdiff_{name}"] == verdict, name
