"""Intervals for a benchmark's numbers from a bootstrap over regions, not images.

Images of one region share a landscape and a climate: a method that places one of them places its
neighbours too, so images are not independent draws and an interval from resampling images is too narrow
by about the square root of the images per region. Resampling whole regions (with replacement, as many as
the benchmark holds) keeps that dependence: each replicate's share is the ratio of the resampled regions'
summed values to their summed counts. The resamples are one table of (replicate, region, weight) rows,
seeded, shared by every method of a benchmark (so intervals of two methods come from the same draws), and
written beside the predictions so DuckDB's SQL computes the same intervals as `ratio_interval` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPLICATES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Resamples:
    """Which regions each replicate drew, and how often: rows of (replicate, region, weight > 0)."""

    replicate: np.ndarray
    region: np.ndarray
    weight: np.ndarray


def region_resamples(regions: Sequence[str], replicates: int = REPLICATES, seed: int = 0) -> Resamples:
    """`replicates` draws, with replacement, of as many regions as there are distinct `regions` (sorted first,
    so the draws depend on the set of regions and the seed, not on the order of the images)."""
    distinct = np.array(sorted(set(regions)), dtype=object)
    if len(distinct) == 0:
        raise ValueError("a bootstrap over regions needs at least one region")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(distinct), size=(replicates, len(distinct)))
    counts = np.stack([np.bincount(row, minlength=len(distinct)) for row in picks])
    replicate, region = np.nonzero(counts)
    return Resamples(replicate.astype(np.int32), distinct[region], counts[replicate, region].astype(np.int32))


def replicate_ratios(values: np.ndarray, regions: Sequence[str], resamples: Resamples) -> np.ndarray:
    """The mean of `values` (one per image; NaN: not counted) in each replicate of `resamples`: per replicate,
    sum(weight x region sum) / sum(weight x region count); NaN for a replicate that drew no counted image."""
    values, labels = np.asarray(values, float), np.asarray(regions, dtype=object)
    distinct = {region: i for i, region in enumerate(sorted(set(labels)))}
    index = np.array([distinct[region] for region in labels])
    known = ~np.isnan(values)
    sums = np.bincount(index[known], weights=values[known], minlength=len(distinct))
    counts = np.bincount(index[known], minlength=len(distinct)).astype(float)
    at = np.array([distinct[region] for region in resamples.region])
    replicates = int(resamples.replicate.max()) + 1
    numerator = np.bincount(resamples.replicate, weights=resamples.weight * sums[at], minlength=replicates)
    denominator = np.bincount(resamples.replicate, weights=resamples.weight * counts[at], minlength=replicates)
    return np.divide(numerator, denominator, out=np.full(replicates, np.nan), where=denominator > 0)


def ratio_interval(
    values: np.ndarray, regions: Sequence[str], resamples: Resamples, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The central `confidence` interval of the mean of `values` (one per image; NaN: not counted) over the
    replicates of `resamples`."""
    return _central(replicate_ratios(values, regions, resamples), confidence)


def paired_difference_interval(
    values: np.ndarray,
    reference: np.ndarray,
    regions: Sequence[str],
    resamples: Resamples,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """The central `confidence` interval of mean(values) - mean(reference) (two methods' values on the same
    images) over the same replicates: each replicate's difference on the same resampled regions. Regions that
    are hard for one method are hard for the other, so this interval is narrower than two marginal intervals
    suggest, and it, not their overlap, says whether the methods differ."""
    difference = replicate_ratios(values, regions, resamples) - replicate_ratios(reference, regions, resamples)
    return _central(difference, confidence)


def _central(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    known = replicates[~np.isnan(replicates)]
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(known, tail)), float(np.quantile(known, 1.0 - tail))
