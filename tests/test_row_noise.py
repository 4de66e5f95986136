"""Starting noise keyed by the row: Gaussian, reproducible, and independent of the batch an image comes in."""

from __future__ import annotations

import numpy as np
from test_model import TINY

from locdiff_pipeline.method import row_noise
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.model import LocDiffModel


def test_keyed_rows_are_standard_normal_and_uncorrelated():
    keys = row_noise.row_keys(np.random.default_rng(0).normal(size=(4000, 8)), np.zeros(4000, int), seed=0)
    noise = row_noise.gaussian_rows(keys, 25)  # odd: the last Box-Muller pair is cut
    assert noise.shape == (4000, 25) and noise.dtype == np.float32
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    correlation = np.corrcoef(noise.T)[np.triu_indices(25, 1)]
    assert np.abs(correlation).max() < 0.07  # 4,000 rows: |r| of independent columns stays well below this
    assert 0.045 < np.mean(np.abs(noise) > 1.96) < 0.055


def test_a_key_follows_the_row_the_sample_index_and_the_seed_but_not_the_last_bits():
    rows = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    key = row_noise.row_keys(rows, np.array([0, 0, 0]), seed=0)
    assert len(set(key.tolist())) == 3
    assert np.array_equal(key, row_noise.row_keys(rows + 1e-6, np.array([0, 0, 0]), seed=0))
    assert not np.any(key == row_noise.row_keys(rows, np.array([1, 1, 1]), seed=0))
    assert not np.any(key == row_noise.row_keys(rows, np.array([0, 0, 0]), seed=1))


def test_an_images_samples_do_not_depend_on_the_other_images_in_its_batch():
    config = LocDiffConfig(**{**TINY, "embed_dim": 16})
    model = LocDiffModel(config)
    images = np.random.default_rng(2).normal(size=(5, 2, 16)).astype(np.float32)
    alone = model.sample(images[3:4], samples=4, seed=7)
    together = model.sample(images[::-1], samples=4, seed=7)  # image 3 is now second of five
    assert np.allclose(alone.lat[0], together.lat[1], atol=1e-4) and np.allclose(
        alone.lon[0], together.lon[1], atol=1e-4
    )
    assert len({round(float(v), 3) for v in alone.lat[0].ravel()}) > 1  # its samples still differ from each other
    other_seed = model.sample(images[3:4], samples=4, seed=8)
    assert not np.allclose(alone.lat, other_seed.lat)
