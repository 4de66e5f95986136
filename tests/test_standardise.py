"""Embedding standardisation: training statistics only, near-constant dimensions ignored, values clipped."""

from __future__ import annotations

import numpy as np
import torch
from test_model import TINY

from locdiff_pipeline.method import shdd
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.standardise import CLIP_SIGMAS, guarded_spread, standardised
from locdiff_pipeline.method.training import Validation, train


def test_a_dimension_constant_in_training_standardises_to_zero_and_values_are_clipped():
    training = np.random.default_rng(0).normal(size=(200, 4))
    training[:, 2] = 0.0  # a colour bin no training image fills
    mean, spread = training.mean(0), guarded_spread(training.std(0))
    assert np.isinf(spread[2]) and np.all(np.isfinite(spread[[0, 1, 3]]))
    query = np.array([[0.0, 100.0, 0.3, 0.0]])
    z = standardised(query, mean, spread)
    assert z[0, 2] == 0.0  # not 0.3 / 1e-6
    assert z[0, 1] == CLIP_SIGMAS  # 100 standard deviations clipped
    as_tensor = standardised(torch.tensor(query), torch.tensor(mean), guarded_spread(torch.tensor(training.std(0))))
    assert torch.allclose(as_tensor, torch.tensor(z))


def test_the_denoisers_condition_statistics_come_from_training_rows_only():
    rng = np.random.default_rng(1)
    config = LocDiffConfig(**{**TINY, "embed_dim": 8, "steps": 2})
    embeddings = rng.normal(size=(300, 8)).astype(np.float32)
    lat, lon = rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)
    far = Validation(rng.normal(50.0, 9.0, size=(40, 8)).astype(np.float32), lat[:40], lon[:40])
    model = train(config, embeddings, shdd.encode(lat, lon, config.L).astype(np.float32), validation=far).model
    assert np.allclose(model.net.cond_mean.numpy(), embeddings.mean(0), atol=1e-5)
    assert np.allclose(model.net.cond_std.numpy(), embeddings.std(0, ddof=1), atol=1e-4)
