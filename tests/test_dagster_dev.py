"""`locdiff dev` (dagster dev on the project's instance) really serves the asset graph, and stops on SIGTERM
even when started as a background job is (with SIGINT ignored), child processes included."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import pytest
from dagster_ui import EVALUATION_JOB, DagsterUI, partition

REPOSITORY = Path(__file__).resolve().parents[1]
VIEWPORT = (1500, 1000)  # a laptop's browser window: what a user sees first
EXPECTED_ASSETS = {
    "image_metadata",
    "images",
    "image_embeddings",
    "shdd_tables",
    "locdiff_model",
    "contamination",
    "predictions",
    "accuracy_report",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    return DagsterUI("127.0.0.1", port).answer(query)


@pytest.fixture
def dagster_dev(tmp_path):
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    # a small configuration through the resources' environment variables, for the backfill test
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LOCDIFF_HOME": str(tmp_path),
        "LOCDIFF_BUNDLED_COUNT": "160",
        "LOCDIFF_BUNDLED_GALLERY_COUNT": "100",
        "LOCDIFF_BUNDLED_BENCHMARK_COUNT": "15",
        "LOCDIFF_STEPS": "30",
        "LOCDIFF_ENCODER": "locdiff-tiny-vit",
        "OMP_NUM_THREADS": "1",
        "LOCDIFF_SHARDS": "2",  # two shard runs show the fan-out as well as four, in one wave on two cores
    }
    locdiff = Path(sys.executable).with_name("locdiff")

    def as_a_background_job() -> None:  # what a shell does to `cmd &` without job control
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [str(locdiff), "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPOSITORY,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "dagster_dev.log", "wb"),
        start_new_session=True,  # its own process group: the test can see every child it leaves
        preexec_fn=as_a_background_job,
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
    assert answer is not None and answer.get("data"), (
        f"dagster dev never answered ({last_error}); log:\n{log.read_text()[-3000:]}"
    )
    nodes = {
        tuple(n["assetKey"]["path"])[-1]: {tuple(d["path"])[-1] for d in n["dependencyKeys"]}
        for n in answer["data"]["assetNodes"]
    }
    assert set(nodes) == EXPECTED_ASSETS
    assert nodes["predictions"] == {"locdiff_model", "contamination"}
    assert nodes["image_embeddings"] == {"images"}
    schedules = _graphql(
        port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { schedules { name cronSchedule } } } } }"
    )
    names = {s["name"] for repo in schedules["data"]["repositoriesOrError"]["nodes"] for s in repo["schedules"]}
    assert "weekly_retrain" in names
    sensors = _graphql(
        port,
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name sensorState { status } } } } } }",
    )
    states = {
        s["name"]: s["sensorState"]["status"]
        for repo in sensors["data"]["repositoriesOrError"]["nodes"]
        for s in repo["sensors"]
    }
    assert states == {"evaluate_new_model": "RUNNING", "retrain_on_new_data": "STOPPED"}  # the new-data one: opt-in
    _another_site_cannot_launch_runs(port)
    _stop(process, port)


LAUNCH = (
    'mutation { launchPartitionBackfill(backfillParams: {partitionNames: ["000"], '
    'assetSelection: [{path: ["images"]}]}) { __typename } }'
)


def _another_site_cannot_launch_runs(port: int) -> None:
    """Through the guard `locdiff dev` serves: a mutation over GET, a POST from another site's page, a
    form-encoded POST and a DNS-rebinding Host are refused before Dagster sees them; no run is launched."""

    base = f"http://127.0.0.1:{port}"
    attempts = [
        ("GET", f"/graphql?{urllib.parse.urlencode({'query': LAUNCH})}", None, {}, 405),
        (
            "POST",
            "/graphql",
            json.dumps({"query": LAUNCH}).encode(),
            {"Content-Type": "application/json", "Origin": "http://evil.example"},
            403,
        ),
        (
            "POST",
            "/graphql",
            urllib.parse.urlencode({"query": LAUNCH}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
        ),
        (
            "POST",
            "/graphql",
            json.dumps({"query": LAUNCH}).encode(),
            {"Content-Type": "application/json", "Host": f"evil.example:{port}"},
            403,
        ),
    ]
    for method, path, body, headers, status in attempts:
        request = urllib.request.Request(base + path, data=body, headers=headers, method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status and b"refused by locdiff dev" in refused.value.read(), (method, headers)
    same_site = {"Content-Type": "application/json", "Origin": base}  # the UI's own page may
    request = urllib.request.Request(
        base + "/graphql", json.dumps({"query": "{ assetNodes { id } }"}).encode(), same_site
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["data"]["assetNodes"]
    assert (
        DagsterUI("127.0.0.1", port).runs() == []
        and _graphql(port, "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id } } } }")["data"][
            "partitionBackfillsOrError"
        ]["results"]
        == []
    )


def _stop(process, port: int) -> None:
    """SIGTERM to the pid `locdiff dev` started as: it and every process it started (webserver, daemon,
    code servers) are gone within 60 s, and the port is closed."""
    os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    try:
        process.wait(timeout=60)
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.5)
        left = _group_alive(process.pid)
    finally:
        if process.poll() is None or _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode is not None and not left, "dagster dev or a child outlived SIGTERM by 60 s"
    with pytest.raises(OSError):
        _graphql(port, "{ assetNodes { id } }")


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_until_served(process, port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _graphql(port, "{ assetNodes { id } }").get("data", {}).get("assetNodes"):
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"dagster dev never answered; log:\n{log.read_text()[-3000:]}")


def test_a_backfill_runs_each_shard_as_its_own_run_then_training_then_the_sensor_scores_each_benchmark(dagster_dev):
    """What "Materialize all" of the training side does in the UI: the daemon that `dagster dev` starts
    launches the split, one run per shard (in parallel), then training after every shard is done; the
    sensor then launches one evaluation run per benchmark partition."""
    process, port, log = dagster_dev
    _wait_until_served(process, port, log)
    ui = DagsterUI("127.0.0.1", port)
    status, shard_keys = ui.backfill_training_side(timeout=600)
    runs = ui.runs()
    assert status == "COMPLETED_SUCCESS", (
        status,
        [(r["status"], r["assetSelection"]) for r in runs],
        log.read_text()[-3000:],
    )

    backfill = [r for r in runs if r["jobName"] != EVALUATION_JOB]
    assert all(r["status"] == "SUCCESS" for r in backfill)
    by_partition = {partition(r): r for r in backfill if r["assetSelection"]}
    shard_runs = [by_partition[key] for key in shard_keys]
    assert all(
        sorted(a["path"][-1] for a in r["assetSelection"]) == ["image_embeddings", "images", "shdd_tables"]
        for r in shard_runs
    )
    training = [r for r in backfill if {a["path"][-1] for a in r["assetSelection"]} == {"locdiff_model"}]
    assert len(backfill) == len(shard_keys) + 2 and len(training) == 1
    materialized = []  # training waits for every shard's embeddings and SHDD tables (not for their checks)
    for asset_name in ("image_embeddings", "shdd_tables"):
        answer = _graphql(
            port,
            '{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset { assetMaterializations { partition '
            "timestamp } } } }" % asset_name,
        )
        events = answer["data"]["assetOrError"]["assetMaterializations"]
        assert sorted(e["partition"] for e in events) == sorted(shard_keys)
        materialized += [float(e["timestamp"]) / 1000 for e in events]
    assert training[0]["startTime"] >= max(materialized)
    evaluations = ui.finished_evaluations(timeout=300)  # the sensor notices the new model, scores each benchmark
    assert sorted(partition(r) for r in evaluations) == ["bluemarble_heldout", "etopo_shift"], log.read_text()[-3000:]
    assert all(r["status"] == "SUCCESS" for r in evaluations), [r["status"] for r in evaluations]
    model = _graphql(
        port,
        '{ assetOrError(assetKey: {path: ["locdiff_model"]}) '
        "{ ... on Asset { assetMaterializations { timestamp } } } }",
    )["data"]["assetOrError"]["assetMaterializations"]
    trained_at = max(float(e["timestamp"]) / 1000 for e in model)  # the sensor reacts to the materialization
    assert all(r["startTime"] >= trained_at for r in evaluations)  # (the training run's checks may still run)
    _the_browser_shows_the_graph_and_the_report(port)
    _stop(process, port)


def _the_browser_shows_the_graph_and_the_report(port: int) -> None:
    """What a user sees, in a real browser (Debian's chromium): the asset graph draws every asset, and
    accuracy_report's page shows the accuracy table with its rows (not a "[Show Markdown]" link)."""
    sys.path.insert(0, str(REPOSITORY / "scripts"))
    import ui_browser

    if not ui_browser.chromium_available():
        assert os.environ.get("LOCDIFF_REQUIRE_BROWSER") != "1", f"no chromium at {ui_browser.CHROMIUM}"
        warnings.warn(
            f"no chromium at {ui_browser.CHROMIUM}: the browser check did not run (.ci/run installs it)", stacklevel=2
        )
        return
    base = f"http://127.0.0.1:{port}"
    with ui_browser.browser_page(VIEWPORT[0], VIEWPORT[1]) as page:
        drawn = ui_browser.open_asset_graph(page, base, sorted(EXPECTED_ASSETS))
        assert {name for name in EXPECTED_ASSETS if name not in drawn} == set()
        shown = ui_browser.open_asset(page, base, "accuracy_report", "bluemarble_heldout", wait_for="accuracy_table")
        assert "bluemarble_heldout\nMaterialized" in shown or "bluemarble_heldout Materialized" in shown, shown[:600]
        table = page.locator("table").filter(has_text="750 km %").last  # the innermost: the accuracy table
        cells = {text.strip() for text in table.locator("td").all_inner_texts()}
        assert {"locdiff", "chance", "constant", "knn"} <= cells, sorted(cells)[:20]
        _the_locdiff_row_shows_its_decisive_numbers_without_scrolling(table)


def _the_locdiff_row_shows_its_decisive_numbers_without_scrolling(table) -> None:
    """The LocDiff row's 750 km and 2,500 km cells lie inside the window's width: no sideways scrolling."""
    rows = table.locator("tr")
    header = [text.strip() for text in rows.first.locator("th, td").all_inner_texts()]
    texts = [[text.strip() for text in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]
    (index,) = [i for i, row in enumerate(texts) if row and row[0] == "locdiff"]
    for label in ("750 km %", "2500 km %"):
        box = rows.nth(index).locator("td").nth(header.index(label)).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= VIEWPORT[0], (label, box)
