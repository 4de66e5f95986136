"""`locdiff dev` (dagster dev on the project's instance), started on a project after a finished `locdiff run`
(a copy of the session's small run), really serves its asset graph, refuses other sites, launches nothing for
a model version already scored, shows the run's report in a browser, and stops on SIGTERM even when started
as a background job is (with SIGINT ignored), child processes included. One server for the module, started
once; the tests run in file order (served and guarded, the sensor and the browser, then the stop). The
UI's backfill through a daemon and the sensor's evaluation runs are driven in tests/test_team_stack.py."""

from __future__ import annotations

import json
import os
import re
import shutil
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

import psutil
import pytest
from dagster_ui import (
    FINISHED,
    SMALL,
    DagsterUI,
    check_no_port_runs_a_foreign_mutation,
    check_the_guard_refuses_launches,
    listening_ports,
    process_tree,
)

from locdiff_pipeline.defs.stages import LOCATION, TRAIN_JOB

REPOSITORY = Path(__file__).resolve().parents[1]
VIEWPORT = (1000, 700)  # a small laptop's browser window: what a user sees first must fit it
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


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory, small_run):
    tmp_path = tmp_path_factory.mktemp("dagster_dev") / "project"
    shutil.copytree(small_run, tmp_path, symlinks=True)  # the run's instance, warehouse and models, untouched
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
    env.update(SMALL, LOCDIFF_HOME=str(tmp_path))
    locdiff = Path(sys.executable).with_name("locdiff")

    def as_a_background_job() -> None:  # what a shell does to `cmd &` without job control
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [str(locdiff), "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPOSITORY,
        env=env,
        stdout=(log := open(tmp_path / "dagster_dev.log", "wb")),
        stderr=log,
        start_new_session=True,  # its own process group: the test can see every child it leaves
        preexec_fn=as_a_background_job,
    )
    try:
        yield process, port, tmp_path / "dagster_dev.log"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_dagster_dev_serves_the_asset_graph_and_refuses_other_sites(dagster_dev):
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
    _the_log_names_the_guarded_address_only(log, port)
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
    _the_guard_is_the_only_door(process, port)


def _the_guard_is_the_only_door(process, port: int) -> None:
    """No process of `locdiff dev` listens on a TCP port but the guard's (Dagster's webserver is on a Unix
    socket the guard alone opens, mode 600 in a folder of mode 700); a foreign mutation to each is refused."""
    tree = process_tree(process.pid)
    assert listening_ports(tree) == {port}
    check_no_port_runs_a_foreign_mutation("127.0.0.1", listening_ports(tree))
    sockets = [
        Path(c.laddr) for c in psutil.net_connections(kind="unix") if c.pid in tree and c.laddr.endswith(".sock")
    ]
    assert sockets and all(
        s.stat().st_mode & 0o777 == 0o600 and s.parent.stat().st_mode & 0o777 == 0o700 for s in sockets
    )


JOB_PAGE_RUNS = (  # the query the UI's job page makes: the job's runs that carry its code location's label
    '{ runsOrError(filter: {pipelineName: "locdiff_train", tags: [{key: ".dagster/repository", value: "%s"}]}) '
    "{ ... on Runs { results { runId status tags { key value } } } } }"
)


def _the_training_jobs_page_lists_the_cli_run(port: int) -> None:
    """`locdiff run` executes in process, yet its training run is a run of the code location's
    `locdiff_train` as the job page asks for it (the location and repository names read from the server)."""
    ui = DagsterUI("127.0.0.1", port)
    (repository,) = ui.data(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
    )["repositoriesOrError"]["nodes"]
    label = f"{repository['name']}@{repository['location']['name']}"
    listed = ui.data(JOB_PAGE_RUNS % label)["runsOrError"]["results"]
    assert len(listed) == 1 and listed[0]["status"] == "SUCCESS", listed
    assert any(tag["key"].startswith("locdiff") for tag in listed[0]["tags"])


def _the_log_names_the_guarded_address_only(log: Path, port: int) -> None:
    """`locdiff dev` prints one address, the guard's: never the webserver's private one, nor advice to run
    `dg dev` (which would serve the UI unguarded)."""
    deadline = time.monotonic() + 30
    while "is ready at" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text()
    assert "locdiff: the Dagster UI is ready at" in text, text[-2000:]
    assert set(re.findall(r"https?://[\w.]+:\d+", text)) == {f"http://127.0.0.1:{port}"}, text[-2000:]
    assert "dg dev" not in text and "Serving dagster-webserver" not in text


def _another_site_cannot_launch_runs(port: int) -> None:
    """Through the guard `locdiff dev` serves: every way another page could launch a run is refused before
    Dagster sees it (tests/dagster_ui.py), and no run is launched."""
    base = f"http://127.0.0.1:{port}"
    check_the_guard_refuses_launches("127.0.0.1", port)
    same_site = {"Content-Type": "application/json", "Origin": base}  # the UI's own page may
    request = urllib.request.Request(
        base + "/graphql", json.dumps({"query": "{ assetNodes { id } }"}).encode(), same_site
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["data"]["assetNodes"]
    runs = DagsterUI("127.0.0.1", port).runs()
    assert len(runs) == 3 and all(r["tags"] for r in runs)  # `locdiff run`'s own: training and two evaluations
    _the_training_jobs_page_lists_the_cli_run(port)
    backfills = _graphql(port, "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id } } } }")
    assert backfills["data"]["partitionBackfillsOrError"]["results"] == []


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


SENSOR_TICKS = (
    '{ sensorOrError(sensorSelector: {repositoryName: "%s", repositoryLocationName: "%s", sensorName: '
    '"evaluate_new_model"}) { ... on Sensor { sensorState { ticks(limit: 5) { status skipReason } } } } }'
)


def test_the_sensor_skips_a_scored_model_and_the_browser_shows_its_report(dagster_dev):
    """After a finished `locdiff run`, the daemon that `dagster dev` starts evaluates the sensor, which finds
    every benchmark scored by that model version and launches nothing; the run's report is on the asset's
    page, in a real browser."""
    process, port, log = dagster_dev
    _wait_until_served(process, port, log)
    ui = DagsterUI("127.0.0.1", port)
    (repository,) = ui.data(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
    )["repositoriesOrError"]["nodes"]
    query = SENSOR_TICKS % (repository["name"], repository["location"]["name"])
    deadline, ticks = time.monotonic() + 120, []
    while time.monotonic() < deadline and not ticks:
        ticks = ui.data(query)["sensorOrError"]["sensorState"]["ticks"]
        time.sleep(2)
    assert ticks and all(t["status"] == "SKIPPED" for t in ticks), (ticks, log.read_text()[-3000:])
    assert "scored" in ticks[0]["skipReason"], ticks
    assert len(ui.runs()) == 3 and not [r for r in ui.runs() if r["status"] not in FINISHED]
    _the_browser_shows_the_graph_and_the_report(port)


def test_dagster_dev_stops_by_pid_children_included(dagster_dev):
    """Last: SIGTERM to the pid `locdiff dev` started as, after the daemon's sensor ticks and the browser."""
    process, port, log = dagster_dev
    _wait_until_served(process, port, log)
    _stop(process, port)


def _the_browser_shows_the_graph_and_the_report(port: int) -> None:
    """What a user sees, in a real browser (Debian's chromium) at 1,000 x 700: the asset graph draws every
    asset on first load (no group to open), the training job's page lists the run `locdiff run` made, and
    accuracy_report's page shows the benchmark's headline, the accuracy table with LocDiff's 750 and 2,500 km
    shares in view without scrolling sideways, and the figures (served by the guard)."""
    sys.path.insert(0, str(REPOSITORY / "scripts"))
    import ui_browser

    if not ui_browser.chromium_available():
        assert os.environ.get("LOCDIFF_REQUIRE_BROWSER") != "1", f"no chromium at {ui_browser.CHROMIUM}"
        warnings.warn(
            f"no chromium at {ui_browser.CHROMIUM}: the browser check did not run (.ci/run installs it)", stacklevel=2
        )
        return
    base = f"http://127.0.0.1:{port}"
    (training,) = [run for run in DagsterUI("127.0.0.1", port).runs() if run["jobName"] == TRAIN_JOB]
    with ui_browser.browser_page(VIEWPORT[0], VIEWPORT[1]) as page:
        drawn = ui_browser.open_asset_graph(page, base, sorted(EXPECTED_ASSETS))
        assert {name for name in EXPECTED_ASSETS if name not in drawn} == set(), drawn[-800:]
        listed = ui_browser.open_job_runs(page, base, TRAIN_JOB, LOCATION, wait_for=training["runId"][:8])
        assert "No runs found" not in listed
        shown = ui_browser.open_asset(page, base, "accuracy_report", "bluemarble_heldout", wait_for="accuracy_table")
        assert "bluemarble_heldout\nMaterialized" in shown or "bluemarble_heldout Materialized" in shown, shown[:600]
        assert "bluemarble_heldout, model v1" in shown  # the headline names its benchmark
        table = page.locator("table").filter(has_text="750 km %").last  # the innermost: the accuracy table
        cells = {text.strip() for text in table.locator("td").all_inner_texts()}
        assert {"locdiff", "chance", "constant", "knn", "bluemarble_heldout"} <= cells, sorted(cells)[:20]
        _the_locdiff_row_shows_its_decisive_numbers_without_scrolling(table)
        _the_figures_are_drawn(page)


def _the_locdiff_row_shows_its_decisive_numbers_without_scrolling(table) -> None:
    """The LocDiff row's 750 km and 2,500 km cells lie inside what the page shows of the metadata table (its
    scrolling box) and inside the window: no sideways scrolling."""
    rows = table.locator("tr")
    header = [text.strip() for text in rows.first.locator("th, td").all_inner_texts()]
    texts = [[text.strip() for text in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]
    (index,) = [i for i, row in enumerate(texts) if row and row[0] == "locdiff"]
    for label in ("750 km %", "2500 km %"):
        cell = rows.nth(index).locator("td").nth(header.index(label))
        box, shown_up_to = cell.bounding_box(), min(VIEWPORT[0], cell.evaluate(SCROLLING_BOX))
        assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= shown_up_to, (label, box, shown_up_to)


# the right edge of what the nearest sideways-scrolling box around an element shows (the window's if none)
SCROLLING_BOX = """cell => {
    for (let box = cell.parentElement; box; box = box.parentElement) {
        const overflow = getComputedStyle(box).overflowX;
        if (overflow === 'auto' || overflow === 'scroll' || overflow === 'hidden') {
            return box.getBoundingClientRect().right;
        }
    }
    return window.innerWidth;
}"""


def _the_figures_are_drawn(page) -> None:
    """Every figure's preview was loaded (through the guard) and drawn, each a link to its full size."""
    figures = page.locator("img[src^='/locdiff/reports/']")
    figures.first.scroll_into_view_if_needed()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(figures.evaluate_all("imgs => imgs.map(i => i.naturalWidth > 0)")):
        time.sleep(0.5)
    widths = figures.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    # error CDF, error map, calibration, coverage against area, density maps
    assert len(widths) == 5 and all(widths), widths
    links = figures.evaluate_all("imgs => imgs.map(i => i.closest('a').getAttribute('href'))")
    assert all(link.endswith(".png") and "/previews/" not in link for link in links), links
