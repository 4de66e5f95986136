"""`dagster asset materialize` headless, as the README documents it, in a fresh project folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

REPOSITORY = Path(__file__).resolve().parents[1]


def test_dagster_asset_materialize_runs_the_ingest_asset(tmp_path):
    home = tmp_path / ".dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOCDIFF_HOME": str(tmp_path)}
    config = {"resources": {"dataset": {"config": {"bundled_count": 120}}}}
    dagster = Path(sys.executable).with_name("dagster")
    completed = subprocess.run(
        [str(dagster), "asset", "materialize", "--select", "images", "-m", "locdiff_pipeline.definitions", "--config-json", json.dumps(config)],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = ds.dataset(str(tmp_path / "warehouse" / "images"), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 120
    assert "RUN_SUCCESS" in completed.stderr + completed.stdout
