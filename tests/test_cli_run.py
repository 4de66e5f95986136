"""`locdiff run` (the README's main command) end to end on a small bundled dataset (training streamed,
images decoded in a worker), then `locdiff report`; a second `locdiff run` started meanwhile is refused
naming the first, a third after it succeeds; the project folder, moved elsewhere, still predicts with
`models:/locdiff@champion`, and refuses a tampered checkpoint in one line."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import mlflow
import numpy as np
from dagster import DagsterInstance
from PIL import Image

from locdiff_pipeline.coordination.project_lock import holder
from locdiff_pipeline.data.bundled import BUNDLED, HELDOUT, SHIFTED
from locdiff_pipeline.steps import report_tables
from locdiff_pipeline.steps.scoring import METHODS
from locdiff_pipeline.tracking import registry

BENCHMARKS = (HELDOUT, SHIFTED)


def test_locdiff_run_prints_every_method_and_report_agrees(tmp_path):
    locdiff = Path(sys.executable).with_name("locdiff")
    env = {**os.environ, "LOCDIFF_HOME": str(tmp_path), "LOCDIFF_REGRESSION_STEPS": "100"}  # a small regressor
    env["COLUMNS"] = "100"  # a 100-column terminal's width, piped
    for name in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    arguments = [
        str(locdiff),
        "run",
        "--count",
        "300",
        "--gallery-count",
        "100",  # of the 30,000 bundled gallery locations
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
        "--loading",
        "stream",  # the MP16 path: rows streamed from the embeddings' part files
        "--decode-workers",
        "1",  # and images decoded in a worker process
    ]
    running = subprocess.Popen(arguments, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while holder(tmp_path).get("pid") != running.pid and time.monotonic() < deadline:
        time.sleep(0.2)
    second = subprocess.run(arguments, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out, err = running.communicate(timeout=600)
    first = subprocess.CompletedProcess(arguments, running.returncode, out.decode(), err.decode())
    assert first.returncode == 0, first.stderr[-4000:]
    assert second.returncode == 2 and f"is being written by pid {running.pid} (locdiff run" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1  # one line, no traceback
    tables = _accuracy_tables(first.stdout)
    for benchmark in BENCHMARKS:  # per benchmark, under its heading: LocDiff first, chance and constant last
        heading = f"{benchmark}: model v1, trained on "
        assert (first.stdout + first.stderr).count(heading) == 1  # piped, each table is printed once
        (block,) = [lines for lines in tables if lines[0].startswith(heading)]
        assert max(len(line) for line in block) <= 100
        rows = block[3 : block.index(report_tables.DIFFERENCES_TITLE)]
        shown = [row.split()[0] for row in rows]
        assert set(shown) <= set(METHODS) and shown[0] == "locdiff" and shown[-2:] == ["chance", "constant"]
        assert {m for m in METHODS if "/" not in m} <= set(shown)  # a /plain twin only where it differs
    assert f"trained on {BUNDLED}" in first.stdout
    assert "NO pretrained weights" in first.stdout
    assert (tmp_path / "mlruns" / "mlflow.db").is_file() and (tmp_path / ".dagster_home" / "dagster.yaml").is_file()
    assert "Telemetry" not in first.stdout + first.stderr  # the project's dagster.yaml turns it off
    registry.configure(root=tmp_path)
    (trained,) = mlflow.search_runs(experiment_names=[registry.EXPERIMENT], output_format="list")
    assert trained.data.params["training_data"] == "streamed from the embeddings' part files"
    with DagsterInstance.from_config(str(tmp_path / ".dagster_home")) as instance:
        runs = instance.get_runs()
    assert sorted(run.job_name for run in runs) == ["locdiff_evaluate", "locdiff_evaluate", "locdiff_train"]
    assert all(run.tags["locdiff/trigger"] == "locdiff run" and run.tags["locdiff/dataset"] == BUNDLED for run in runs)
    assert all(run.tags["locdiff/encoder"] == "locdiff-tiny-vit@seeded-init-0" for run in runs)
    report = subprocess.run(
        [str(locdiff), "report"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert _accuracy_tables(report.stdout) == tables

    injection = "x'; COPY (SELECT 'pwned' AS s) TO 'INJ.csv'; SELECT * FROM accuracy WHERE dataset = 'bluemarble"
    refused = subprocess.run(
        [str(locdiff), "report", "--dataset", injection], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "dataset name must be letters" in refused.stderr
    assert not (tmp_path / "INJ.csv").exists()
    third = subprocess.run(arguments, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-4000:]
    _moved_project_predicts_and_refuses_tampering(tmp_path, locdiff, env)


def _accuracy_tables(stdout: str) -> list[list[str]]:
    """The accuracy tables a command printed: per benchmark its heading, header, rule and rows (the
    closing '# ...' notes left out)."""
    blocks = [[line for line in block.splitlines() if line and line[0] != "#"] for block in stdout.split("\n\n")]
    return [lines for lines in blocks if lines and lines[0].startswith(BENCHMARKS)]


def _predict(locdiff: Path, project: Path, env: dict, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(locdiff), "predict", *arguments],
        cwd=project,
        env={**env, "LOCDIFF_HOME": str(project)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _moved_project_predicts_and_refuses_tampering(project: Path, locdiff: Path, env: dict) -> None:
    moved = project.parent / f"{project.name}-moved"
    shutil.copytree(project, moved, symlinks=True)
    hidden = project.rename(project.parent / f"{project.name}-hidden")  # the original is gone
    try:
        # `locdiff report` first, as the README says before `mlflow models serve`: the copy's store follows it
        report = subprocess.run(
            [str(locdiff), "report"],
            cwd=moved,
            env={**env, "LOCDIFF_HOME": str(moved)},
            capture_output=True,
            timeout=120,
        )
        assert report.returncode == 0, report.stderr[-2000:]
        with closing(sqlite3.connect(moved / "mlruns" / "mlflow.db")) as store:
            locations = [row[0] for row in store.execute("SELECT storage_location FROM model_versions")]
        assert locations and all(str(moved / "mlruns") in location for location in locations), locations
        image = moved / "photo.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
        done = _predict(locdiff, moved, env, "--model", "models:/locdiff@champion", str(image))
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.splitlines()[-1].startswith(f"{image},")
        unknown = _predict(locdiff, moved, env, "--model", "models:/nope@champion", str(image))
        assert unknown.returncode == 2 and "models:/nope@champion" in unknown.stderr
        assert len(unknown.stderr.strip().splitlines()) == 1
        (weights,) = (moved / "mlruns").rglob("weights.pt")
        weights.write_bytes(weights.read_bytes() + b"tampered")
        tampered = _predict(locdiff, moved, env, "--model", "models:/locdiff@champion", str(image))
        assert tampered.returncode == 2 and "weights.pt" in tampered.stderr
        assert "changed since registration" in tampered.stderr and "Traceback" not in tampered.stderr
    finally:
        hidden.rename(project)
