"""`dagster dev` from the repository root really serves the asset graph, and stops by its process id."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
EXPECTED_ASSETS = {"image_metadata", "images", "clip_embeddings", "shdd_tables", "locdiff_model", "predictions", "accuracy_report"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def dagster_dev(tmp_path):
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOCDIFF_HOME": str(tmp_path)}
    dagster = Path(sys.executable).with_name("dagster")
    process = subprocess.Popen(
        [str(dagster), "dev", "-w", str(REPOSITORY / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPOSITORY,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "dagster_dev.log", "wb"),
        start_new_session=True,  # its own process group, so SIGTERM reaches dagster dev itself
    )
    try:
        yield process, port, tmp_path / "dagster_dev.log"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_dagster_dev_serves_the_asset_graph_and_stops_by_pid(dagster_dev):
    process, port, log = dagster_dev
    deadline, answer, last_error = time.monotonic() + 120, None, None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            answer = _graphql(port, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")
            if answer.get("data", {}).get("assetNodes"):
                break
        except OSError as error:
            last_error = error
        time.sleep(1)
    assert answer is not None and answer.get("data"), f"dagster dev never answered ({last_error}); log:\n{log.read_text()[-3000:]}"
    nodes = {tuple(n["assetKey"]["path"])[-1]: {tuple(d["path"])[-1] for d in n["dependencyKeys"]} for n in answer["data"]["assetNodes"]}
    assert set(nodes) == EXPECTED_ASSETS
    assert nodes["predictions"] == {"locdiff_model", "clip_embeddings"}
    assert nodes["clip_embeddings"] == {"images"}
    schedules = _graphql(port, '{ repositoriesOrError { ... on RepositoryConnection { nodes { schedules { name cronSchedule } } } } }')
    names = {s["name"] for repo in schedules["data"]["repositoriesOrError"]["nodes"] for s in repo["schedules"]}
    assert "weekly_retrain" in names
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) is not None
