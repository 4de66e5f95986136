"""Shared fixtures: small learnable problems and a tiny real open_clip encoder (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault(
    "LOCDIFF_SHARDS", "2"
)  # before the definitions load: two shards keep the sharded paths exercised and the runs few

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from locdiff_pipeline.method import shdd, sphere


@pytest.fixture(autouse=True)
def _isolated_project(tmp_path_factory, monkeypatch):
    """Every test runs against its own project root and MLflow backend, never the repository's."""
    root = tmp_path_factory.mktemp("project")
    monkeypatch.setenv("LOCDIFF_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    yield root


def clustered_problem(n: int = 3000, dim: int = 32, seed: int = 0):
    """Locations in 12 regional clusters; embeddings are a noisy random projection of a coarse SHDD of
    the location, so they carry where the image is (a learnable stand-in for CLIP features)."""
    rng = np.random.default_rng(seed)
    centres_lat, centres_lon = sphere.random_points(12, rng)
    cluster = rng.integers(0, 12, n)
    lat = np.clip(centres_lat[cluster] + rng.normal(0, 3, n), -89, 89)
    lon = sphere.wrap_longitude(centres_lon[cluster] + rng.normal(0, 3, n))
    features = shdd.encode(lat, lon, 3) @ rng.normal(size=(16, dim)) + 0.3 * rng.normal(size=(n, dim))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return lat, lon, features.astype(np.float32)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """The project folder of one `locdiff run` of the small configuration (dagster_ui.SMALL), in one process:
    the reference that the distributed runs (the multiprocess executor, the team stack's dask workers) must
    equal. Made once per session, by the first test that asks."""
    from dagster_ui import SMALL

    root = tmp_path_factory.mktemp("small_run")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
    env.update(SMALL, LOCDIFF_HOME=str(root))
    locdiff = Path(sys.executable).with_name("locdiff")
    done = subprocess.run([str(locdiff), "run"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return root
