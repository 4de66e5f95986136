"""`locdiff run` (the README's main command) end to end on a small bundled dataset, then `locdiff report`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from locdiff_pipeline.data.bundled import BUNDLED, HELDOUT, SHIFTED
from locdiff_pipeline.steps.predictions import METHODS

BENCHMARKS = (HELDOUT, SHIFTED)


def test_locdiff_run_prints_every_method_and_report_agrees(tmp_path):
    locdiff = Path(sys.executable).with_name("locdiff")
    env = {**os.environ, "LOCDIFF_HOME": str(tmp_path)}
    env.pop("DAGSTER_HOME", None)
    arguments = [
        str(locdiff),
        "run",
        "--count",
        "300",
        "--benchmark-count",
        "30",
        "--encoder",
        "locdiff-tiny-vit",
        "--test-views",
        "4",
        "--steps",
        "40",
        "--L",
        "10",
    ]
    first = subprocess.run(arguments, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    table = [line.split() for line in first.stdout.splitlines() if line.startswith(BENCHMARKS)]
    for benchmark in BENCHMARKS:  # every method of every benchmark, each beside chance and constant
        assert sorted(row[2] for row in table if row[0] == benchmark) == sorted(METHODS)
    assert {row[1] for row in table} == {BUNDLED} and f"trained on {BUNDLED}" in first.stdout
    assert "NO pretrained weights" in first.stdout
    assert (tmp_path / "mlruns" / "mlflow.db").is_file() and (tmp_path / ".dagster_home").is_dir()
    report = subprocess.run(
        [str(locdiff), "report"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert [line.split() for line in report.stdout.splitlines() if line.startswith(BENCHMARKS)] == table
