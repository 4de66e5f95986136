"""The generative model against known posteriors: conditions with two places each, at known weights.

A LocDiff model is a distribution over places given an image; these tests train the default configuration
(the embedding size of each problem, fewer steps on smaller batches: a toy needs no more) and check that its
samples put each place's share on it. A sampler that collapses to one place fails them: shown by scoring one.
"""

from __future__ import annotations

import numpy as np
import pytest
from posterior_toys import MIN_MODE_SHARE, posterior_fit, repeated_conditions, unique_conditions

from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.training import train

SAMPLES = 256
TOY_TRAINING = dict(steps=600, batch_size=64, eval_every=10**9, checkpoint_every=10**9)


def _fit(problem, **changes):
    """Train the default configuration (with TOY_TRAINING and `changes`) on `problem` and score its samples."""
    config = LocDiffConfig(embed_dim=problem.train_conditions.shape[1], **{**TOY_TRAINING, **changes})
    model = train(config, problem.train_conditions, problem.targets(config.L), log_every=10**9).model
    drawn = model.sample(problem.test_conditions, SAMPLES, seed=1)
    count = len(problem.test_conditions)
    return posterior_fit(problem, drawn.lat.reshape(count, -1), drawn.lon.reshape(count, -1))


def _collapsed(problem, place: int = 0):
    """A sampler that answers every condition with one of its places, as a lookup would."""
    lat = np.repeat(problem.places_lat[:, [place]], SAMPLES, axis=1)
    lon = np.repeat(problem.places_lon[:, [place]], SAMPLES, axis=1)
    return posterior_fit(problem, lat, lon)


def _exact(problem, rng):
    """A sampler that draws each condition's places at their true weights."""
    first = rng.uniform(size=(len(problem.weights), SAMPLES)) < problem.weights[:, [0]]
    lat = np.where(first, problem.places_lat[:, [0]], problem.places_lat[:, [1]])
    lon = np.where(first, problem.places_lon[:, [0]], problem.places_lon[:, [1]])
    return posterior_fit(problem, lat, lon)


def test_the_known_answer_scores_fail_a_collapsed_sampler_and_pass_an_exact_one():
    rng = np.random.default_rng(0)
    repeated, unique = repeated_conditions(), unique_conditions()
    for problem, bound in ((repeated, 0.10), (unique, 0.15)):
        collapsed = _collapsed(problem)
        assert collapsed.mean_total_variation > bound and collapsed.both_modes_share == 0.0
        exact = _exact(problem, rng)
        assert exact.mean_total_variation < 0.06 and exact.both_modes_share == 1.0
    # the true weights of the repeated problem: 70 / 30 on every condition, nothing elsewhere
    assert np.allclose(repeated.weights, [0.7, 0.3]) and MIN_MODE_SHARE < 0.3


def test_repeated_conditions_get_their_places_at_their_weights():
    fit = _fit(repeated_conditions())
    assert fit.mean_total_variation <= 0.10, fit.shares.round(2)
    assert fit.both_modes_share == 1.0, fit.shares.round(2)


@pytest.mark.parametrize("dim", [32, LocDiffConfig.embed_dim])
def test_new_ambiguous_conditions_keep_both_places(dim):
    fit = _fit(unique_conditions(dim=dim))
    assert fit.mean_total_variation <= 0.15, fit.shares.round(2)
    assert fit.both_modes_share >= 0.95, fit.shares.round(2)
