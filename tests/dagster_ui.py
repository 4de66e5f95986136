"""The Dagster UI's GraphQL API as the tests drive it: what a user's "Materialize all" of the training side
does (a partition backfill), and what the sensor's evaluation runs look like. One copy for the tests that
start a real webserver (`locdiff dev`, the team stack)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request

# The graph's small configuration, through the resources' environment variables: what the tests that start a
# real webserver (`locdiff dev`, the team stack) backfill, and what the shared single-process reference run uses
SMALL = {
    "LOCDIFF_BUNDLED_COUNT": "160",
    "LOCDIFF_BUNDLED_GALLERY_COUNT": "100",
    "LOCDIFF_BUNDLED_BENCHMARK_COUNT": "15",
    "LOCDIFF_STEPS": "30",
    "LOCDIFF_REGRESSION_STEPS": "100",
    "LOCDIFF_ENCODER": "locdiff-tiny-vit",
    "LOCDIFF_SHARDS": "2",  # two shard runs show the fan-out as well as four, in one wave on two cores
    "OMP_NUM_THREADS": "1",
    "LOCDIFF_PROGRESS": "off",
}

# the training side of the graph: a backfill of these over every shard is "Materialize all" in the UI
TRAINING_SIDE = ["image_embeddings", "image_metadata", "images", "locdiff_model", "shdd_tables"]
EVALUATION_JOB = "locdiff_evaluate"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


class DagsterUI:
    """A client of one webserver's /graphql. `retries_on_502` covers a guard answering 502 while the webserver
    behind it is starved of CPU (the stack's test on a busy two-core machine)."""

    def __init__(self, host: str, port: int, timeout: float = 5, retries_on_502: int = 0) -> None:
        self.url = f"http://{host}:{port}/graphql"
        self.timeout = timeout
        self.retries_on_502 = retries_on_502

    def answer(self, query: str) -> dict:
        """The whole JSON answer (data and errors, as the server sent them)."""
        request = urllib.request.Request(
            self.url, data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
        )
        for attempt in range(self.retries_on_502 + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                if error.code != 502 or attempt == self.retries_on_502:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def data(self, query: str) -> dict:
        """The answer's data; an answer with errors fails the test, quoting them."""
        answer = self.answer(query)
        assert "errors" not in answer, answer
        return answer["data"]

    def runs(self) -> list[dict]:
        query = (
            "{ runsOrError { ... on Runs { results { runId status jobName startTime endTime tags { key value } "
            "assetSelection { path } } } } }"
        )
        return self.data(query)["runsOrError"]["results"]

    def shard_keys(self) -> list[str]:
        nodes = self.data("{ assetNodes { assetKey { path } partitionKeys } }")["assetNodes"]
        return next(n["partitionKeys"] for n in nodes if n["assetKey"]["path"] == ["images"])

    def backfill_training_side(self, timeout: float) -> tuple[str, list[str]]:
        """Launches the training side over every shard, waits for the backfill to finish, and returns its
        final status and the shard keys."""
        keys = self.shard_keys()
        selection = ", ".join('{path: ["%s"]}' % name for name in TRAINING_SIDE)
        launched = self.data(
            "mutation { launchPartitionBackfill(backfillParams: {partitionNames: %s, assetSelection: [%s], "
            "fromFailure: false}) { __typename ... on LaunchBackfillSuccess { backfillId } "
            "... on PythonError { message } } }" % (json.dumps(keys), selection)
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        status_query = (
            '{ partitionBackfillOrError(backfillId: "%s") { ... on PartitionBackfill { status } } }'
            % launched["backfillId"]
        )
        deadline, status = time.monotonic() + timeout, "REQUESTED"
        while status == "REQUESTED" and time.monotonic() < deadline:
            time.sleep(5)
            status = self.data(status_query)["partitionBackfillOrError"]["status"]
        return status, keys

    def finished_evaluations(self, timeout: float) -> list[dict]:
        """The sensor's two evaluation runs (one per benchmark) once both have finished; whatever there is
        at the deadline otherwise."""
        deadline, found = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            found = [r for r in self.runs() if r["jobName"] == EVALUATION_JOB]
            if len(found) == 2 and all(r["status"] in FINISHED for r in found):
                break
            time.sleep(5)
        return found


def check_backfill_order(ui: DagsterUI, shard_keys: list[str]) -> list[dict]:
    """What "Materialize all" of the training side must have done: the split, one run per shard (embedding and
    SHDD tables of that shard), then one training run that started after every shard's embeddings and SHDD
    tables were materialized (not waiting for their checks). Returns the backfill's runs."""
    backfill = [r for r in ui.runs() if r["jobName"] != EVALUATION_JOB]
    assert all(r["status"] == "SUCCESS" for r in backfill), [(r["status"], partition(r)) for r in backfill]
    by_partition = {partition(r): r for r in backfill if r["assetSelection"]}
    for key in shard_keys:
        assets = sorted(a["path"][-1] for a in by_partition[key]["assetSelection"])
        assert assets == ["image_embeddings", "images", "shdd_tables"], (key, assets)
    training = [r for r in backfill if {a["path"][-1] for a in r["assetSelection"]} == {"locdiff_model"}]
    assert len(backfill) == len(shard_keys) + 2 and len(training) == 1
    materialized = []
    for asset_name in ("image_embeddings", "shdd_tables"):
        events = ui.data(
            '{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset { assetMaterializations { partition '
            "timestamp } } } }" % asset_name
        )["assetOrError"]["assetMaterializations"]
        assert sorted(e["partition"] for e in events) == sorted(shard_keys), asset_name
        materialized += [float(e["timestamp"]) / 1000 for e in events]
    assert training[0]["startTime"] >= max(materialized)
    return backfill


def check_evaluations_follow_the_model(ui: DagsterUI, evaluations: list[dict]) -> None:
    """The sensor's evaluation runs, one per benchmark partition, all started after the model's
    materialization (the sensor reacts to it, not to the training run's end: its checks may still run)."""
    assert sorted(partition(r) for r in evaluations) == ["bluemarble_heldout", "etopo_shift"]
    assert all(r["status"] == "SUCCESS" for r in evaluations), [r["status"] for r in evaluations]
    model = ui.data(
        '{ assetOrError(assetKey: {path: ["locdiff_model"]}) { ... on Asset { assetMaterializations { timestamp } } } }'
    )["assetOrError"]["assetMaterializations"]
    trained_at = max(float(e["timestamp"]) / 1000 for e in model)
    assert all(r["startTime"] >= trained_at for r in evaluations)


def partition(run: dict) -> str | None:
    """A run's partition key (its `dagster/partition` tag), None for an unpartitioned run."""
    return next((t["value"] for t in run["tags"] if t["key"] == "dagster/partition"), None)


LAUNCH = (
    'mutation { launchPartitionBackfill(backfillParams: {partitionNames: ["000"], '
    'assetSelection: [{path: ["images"]}]}) { __typename } }'
)
LAUNCH_RUN = (
    'mutation L { launchRun(executionParams: {selector: {repositoryLocationName: "locdiff_pipeline.definitions", '
    'repositoryName: "__repository__", jobName: "locdiff_train"}}) { __typename } }'
)


def check_the_guard_refuses_launches(host: str, port: int) -> None:
    """Through the guard in front of a Dagster UI (`locdiff dev`, the stack's webserver): a mutation over GET,
    the repeated-`query` GET that once slipped past it, a POST from another site's page, a form-encoded POST,
    a DNS-rebinding Host, and GraphQL in two places at once are refused before Dagster sees them."""
    base = f"http://{host}:{port}"
    two_queries = urllib.parse.urlencode([("query", "query Q{version}"), ("query", LAUNCH_RUN)])
    json_body = {"Content-Type": "application/json"}
    launch = urllib.parse.urlencode({"query": LAUNCH})
    attempts = [
        ("GET", f"/graphql?{launch}", None, {}, 405),
        # the path as Dagster reads it: dot segments and repeated slashes lead to /graphql all the same
        *(("GET", f"{path}?{launch}", None, {}, 405) for path in ("/./graphql", "/x/../graphql", "//graphql")),
        ("GET", f"/%2e/graphql?{launch}", None, {}, 405),
        (  # the UI's host and port over another scheme: another origin
            "POST",
            "/graphql",
            json.dumps({"query": LAUNCH}).encode(),
            {**json_body, "Origin": f"https://{host}:{port}"},
            403,
        ),
        (  # a media type read from its parameters would be JSON to one reader and GraphQL to the other
            "POST",
            "/graphql",
            json.dumps({"query": LAUNCH}).encode(),
            {"Content-Type": "application/graphql; x=application/json"},
            415,
        ),
        ("GET", f"/graphql?{two_queries}", None, {}, 400),
        (
            "POST",
            "/graphql",
            json.dumps({"query": LAUNCH}).encode(),
            {**json_body, "Origin": "http://evil.example"},
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
            {**json_body, "Host": f"evil.example:{port}"},
            403,
        ),
        (
            "POST",
            f"/graphql?{urllib.parse.urlencode({'query': LAUNCH_RUN})}",
            b'{"query": "{ version }"}',
            json_body,
            400,
        ),
    ]
    for method, path, body, headers, status in attempts:
        request = urllib.request.Request(base + path, data=body, headers=headers, method=method)
        request.full_url = base + path  # sent as written: urllib keeps dot segments and repeated slashes
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                raise AssertionError(f"{method} {path} {headers} was forwarded: {answer.read()[:300]!r}")
        except urllib.error.HTTPError as refused:
            text = refused.read()
            assert refused.code == status and b"refused by locdiff dev" in text, (method, path, refused.code, text)


FOREIGN_MUTATION = "/graphql?" + urllib.parse.urlencode({"query": "mutation { setNuxSeen }"})


def listening_ports(pids: set[int]) -> set[int]:
    """The TCP ports any of `pids` listens on (psutil reads them from /proc)."""
    import psutil

    return {
        c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def process_tree(pid: int) -> set[int]:
    """`pid` and every process under it."""
    import psutil

    root = psutil.Process(pid)
    return {root.pid, *(child.pid for child in root.children(recursive=True))}


def check_no_port_runs_a_foreign_mutation(host: str, ports: set[int]) -> None:
    """A page of another site (Origin and Host its own) sends a mutation over GET to each port: none runs it,
    whatever listens there (the guard refuses it; a database or a TLS-only server cannot read it)."""
    for port in sorted(ports):
        request = urllib.request.Request(
            f"http://{host}:{port}{FOREIGN_MUTATION}", headers={"Origin": "http://evil.example", "Host": "evil.example"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                body = answer.read()
        except urllib.error.HTTPError:
            continue  # refused
        except (OSError, http.client.HTTPException):
            continue  # not HTTP there
        assert b"setNuxSeen" not in body, f"port {port} ran a foreign mutation: {body[:300]!r}"
