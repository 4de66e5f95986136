"""The team stack for real (`locdiff stack up`): PostgreSQL, an MLflow tracking server, a dask scheduler with
a training worker and two shard workers, Dagster's daemon and webserver on the PostgreSQL instance. One
backfill through the UI's API fans the shards out over the workers, trains on the training worker, and
the sensor scores both benchmarks at once; then the fault cases, then `down`. Skipped only where
PostgreSQL's server is not installed (.ci/run installs Debian's package)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from dagster_ui import (
    FINISHED,
    SMALL,
    DagsterUI,
    check_backfill_order,
    check_evaluations_follow_the_model,
    check_no_port_runs_a_foreign_mutation,
    check_the_guard_refuses_launches,
    listening_ports,
    partition,
    process_tree,
)

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.bundled import BUNDLED
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.defs import run_tags
from locdiff_pipeline.stack import config as stack_config
from locdiff_pipeline.stack import mlflow_auth, postgres, services
from locdiff_pipeline.stack.certificates import identity
from locdiff_pipeline.stack.config import MLFLOW_USER

REPOSITORY = Path(__file__).resolve().parents[1]


def _locdiff(*arguments: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    locdiff = Path(sys.executable).with_name("locdiff")
    completed = subprocess.run(
        [str(locdiff), *arguments], env=env, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, (arguments, completed.stdout[-3000:], completed.stderr[-3000:])
    return completed


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    try:
        postgres.binaries()
    except postgres.PostgresMissing as missing:
        pytest.skip(f"{missing}: the team-stack test needs it (.ci/run installs it)")
    root = tmp_path_factory.mktemp("team")
    env = {key: value for key, value in os.environ.items() if key not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
    env.update(SMALL, LOCDIFF_HOME=str(root))
    started = time.monotonic()
    _locdiff("stack", "up", env=env)
    config = stack_config.load_or_create(root)
    client = {**env, **config.client_env()}
    os.environ["PGPASSFILE"] = client["PGPASSFILE"]  # this process's own database clients, as a team member's
    try:
        yield root, config, client, time.monotonic() - started
    finally:
        os.environ.pop("PGPASSFILE", None)
        subprocess.run([str(Path(sys.executable).with_name("locdiff")), "stack", "down"], env=env, timeout=300)


def _ui(config) -> DagsterUI:
    # a busy two-core machine: the guard answers 502 while the webserver is starved
    return DagsterUI(config.host, config.dagster_port, timeout=30, retries_on_502=4)


def _backfill_training_side(config) -> None:
    status, shard_keys = _ui(config).backfill_training_side(timeout=900)
    assert status == "COMPLETED_SUCCESS", (status, [(r["status"], partition(r)) for r in _ui(config).runs()])
    check_backfill_order(_ui(config), shard_keys)


def _ui_launched_training_is_tagged_like_the_clis(config) -> None:
    """The backfill's training run, launched through the UI's API, names its trigger, dataset and encoder as
    `locdiff run`'s runs do (defs/run_tags.py): the step added what the UI could not know."""
    (training,) = [r for r in _ui(config).runs() if ["locdiff_model"] in [a["path"] for a in r["assetSelection"] or []]]
    tags = {tag["key"]: tag["value"] for tag in training["tags"]}
    assert tags[run_tags.TRIGGER] == "launched in Dagster" and tags[run_tags.DATASET] == BUNDLED, tags
    assert tags[run_tags.ENCODER] == f"{SMALL['LOCDIFF_ENCODER']}@seeded-init-0", tags  # as test_cli_run's


def _wait_for_evaluations(config) -> list[dict]:
    found = _ui(config).finished_evaluations(timeout=600)
    assert len(found) == 2 and all(r["status"] in FINISHED for r in found), (
        f"the sensor's evaluation runs did not finish: {_ui(config).runs()}"
    )
    return found


def _step_pids(client_env: dict) -> dict[str, set[int]]:
    """Each step key's worker pids, from the STEP_WORKER_STARTED events in the stack's event log."""
    from dagster import DagsterEventType, DagsterInstance, EventRecordsFilter

    os.environ["DAGSTER_HOME"] = client_env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            pids: dict[str, set[int]] = {}
            records = instance.get_event_records(
                EventRecordsFilter(event_type=DagsterEventType.STEP_WORKER_STARTED), limit=100_000
            )
            for record in records:
                event = record.event_log_entry.dagster_event
                pid = int(event.event_specific_data.metadata["pid"].value)
                pids.setdefault(event.step_key, set()).add(pid)
            return pids
    finally:
        os.environ.pop("DAGSTER_HOME", None)


def _worker_pids(config) -> dict[str, int]:
    from distributed import Client

    with Client(config.dask_scheduler, security=config.dask_identity("client").security(), timeout=10) as client:
        names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
        return {str(names[address]): pid for address, pid in client.run(os.getpid).items()}


def _sorted(root: Path, table: str, **keys) -> pa.Table:
    data = shards.read(Warehouse(root / "warehouse"), table, "bluemarble", **keys)
    data = data.drop_columns([c for c in ("source",) if c in data.column_names])  # absolute paths differ
    order = [("image_id", "ascending")] + ([("view", "ascending")] if "view" in data.column_names else [])
    return data.sort_by(order)


def _predictions(root: Path) -> pa.Table:
    import duckdb

    path = root / "warehouse" / "predictions"
    query = (
        f"SELECT dataset, image_id, method, pred_lat, pred_lon FROM read_parquet('{path}/**/*.parquet', "
        "hive_partitioning = true) WHERE method = 'locdiff' ORDER BY dataset, image_id"
    )
    with duckdb.connect() as connection:
        return connection.sql(query).to_arrow_table()


def test_the_team_stack_trains_through_dask_scores_on_the_tracking_server_survives_faults_and_stops(stack, small_run):
    root, config, client, up_seconds = stack
    started = time.monotonic()

    # 0. only the team gets in: loopback sockets, dask over mutual TLS, the UI guard on the stack's webserver
    _every_socket_listens_on_the_stack_host_only(config)
    _dask_refuses_clients_without_the_stacks_certificate(config)
    check_the_guard_refuses_launches(config.host, config.dagster_port)
    _the_guard_is_the_only_door_to_the_ui(config)

    # 1. the training side as one backfill over the shards, then the sensor's two evaluations at once
    _backfill_training_side(config)
    _ui_launched_training_is_tagged_like_the_clis(config)
    evaluations = _wait_for_evaluations(config)
    check_evaluations_follow_the_model(_ui(config), evaluations)
    first, second = sorted(evaluations, key=lambda r: r["startTime"])
    assert second["startTime"] < first["endTime"]  # the two benchmark runs ran side by side

    # 2. every step ran on a dask worker; training only on the worker that offers `training`
    workers = _worker_pids(config)
    pids = _step_pids(client)
    assert {"images", "image_embeddings", "shdd_tables", "locdiff_model", "predictions"} <= set(pids)
    assert set().union(*pids.values()) <= set(workers.values()), (pids, workers)
    assert pids["locdiff_model"] == {workers["training"]}
    assert len(set().union(pids["images"], pids["image_embeddings"])) >= 2  # the shards fanned out

    # 3. Dagster's runs are in PostgreSQL (no SQLite run storage in the instance folder)
    import psycopg2

    with closing(psycopg2.connect(config.database_url("dagster"))) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == len(_ui(config).runs())
    assert not list(config.dagster_home.rglob("*.db"))
    _the_writer_lock_lives_in_postgres(root, client["LOCDIFF_LOCK_DATABASE"])

    # 4. the same tables as one single-process `locdiff run` of the same configuration (the session's)
    single = small_run
    for table, keys in (("images", {}), ("shdd", {"L": 10})):
        assert _sorted(root, table, **keys).equals(_sorted(single, table, **keys)), table
    ours, theirs = _sorted(root, "embeddings"), _sorted(single, "embeddings")
    assert ours.drop_columns(["embedding"]).equals(theirs.drop_columns(["embedding"]))
    np.testing.assert_allclose(
        *(np.stack(t["embedding"].to_numpy(zero_copy_only=False)) for t in (ours, theirs)), atol=1e-5
    )
    stacked, alone = _predictions(root), _predictions(single)
    assert stacked.drop_columns(["pred_lat", "pred_lon"]).equals(alone.drop_columns(["pred_lat", "pred_lon"]))
    from locdiff_pipeline.method import sphere

    apart = sphere.haversine_km(*(np.asarray(t[c]) for t in (stacked, alone) for c in ("pred_lat", "pred_lon")))
    assert np.max(apart) < 1.0, np.max(apart)

    # 5. the champion is on the tracking server, with no path of this machine; predict loads it from there
    import mlflow

    uri = client["MLFLOW_TRACKING_URI"]  # the registry too: an earlier test may have set a global registry URI
    with _mlflow_user(MLFLOW_USER, config.mlflow_password):
        server = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        champion = server.get_model_version_by_alias("locdiff", "champion")
        artifact_location = server.get_experiment_by_name("locdiff").artifact_location
    assert str(root) not in champion.source and artifact_location.startswith("mlflow-artifacts:")
    images = sorted((root / "warehouse" / "sources").glob("bluemarble_heldout-*/images/**/*.jpg"))[:3]
    answer = _locdiff("predict", "--model", "models:/locdiff@champion", *map(str, images), env=client).stdout
    rows = [line.split(",") for line in answer.splitlines() if line and not line.startswith(("#", "image,"))]
    assert len(rows) == 3 and all(np.isfinite(float(r[1])) and np.isfinite(float(r[2])) for r in rows), answer
    _only_the_project_moves_the_champion(config, client, champion)
    _no_secret_in_command_lines_logs_or_params(config, client)

    # 6. faults: a worker SIGKILLed in the middle of a shard step, then PostgreSQL restarted between two runs
    before = _sorted(root, "embeddings")
    _kill_the_worker_of_a_running_shard_step(client)
    after = _sorted(root, "embeddings")
    assert after.drop_columns(["embedding"]).equals(before.drop_columns(["embedding"]))  # no half partition
    postgres.stop(config)
    postgres.start(config)
    rerun = _materialize(client, "accuracy_report", "bluemarble_heldout")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert _ui(config).runs()[0]["status"] == "SUCCESS"  # the webserver reads PostgreSQL again too

    # 7. `down` stops every process `up` started, children included, and the database server
    recorded = json.loads((config.folder / "pids.json").read_text())
    said = _locdiff("stack", "down", env=client).stdout
    for name, pid in recorded.items():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # no process left in the group `up` started for it
        assert not services.status(config)[name].startswith("running")
    assert not postgres.is_running(config)
    assert str(config.postgres_data) in said and "--purge" in said  # where the databases stay, and how to go
    # 8. `down --purge` removes the cluster and .stack/; a cluster whose project folder is gone is listed
    cluster = postgres.cluster_files(config)
    assert all(path.exists() for path in cluster)
    _locdiff("stack", "down", "--purge", env=client)
    assert not any(path.exists() for path in cluster) and not config.folder.exists()
    print(f"\nteam stack: up {up_seconds:.0f} s, test {time.monotonic() - started:.0f} s")


def _the_writer_lock_lives_in_postgres(root: Path, url: str) -> None:
    """Readers share the advisory lock, a writer waits for them and is told who holds it, and a holder's
    closed connection frees it (as a killed process's would)."""
    from locdiff_pipeline.coordination.project_lock import LOCK_TOKEN_ENV, ProjectLocked, project_lock

    with project_lock(root, command="reader one", shared=True, database=url):
        with project_lock(root, command="reader two", shared=True, database=url):
            with pytest.raises(ProjectLocked, match="reader"):
                with project_lock(root, command="a writer", database=url):
                    pass
    with project_lock(root, command="the writer", database=url):
        assert not (root / ".locdiff.lock").exists()
        token = os.environ.pop(LOCK_TOKEN_ENV)  # as another process, which has not inherited the writer's token
        try:
            with pytest.raises(ProjectLocked, match="the writer"):
                with project_lock(root, command="a reader", shared=True, database=url):
                    pass
        finally:
            os.environ[LOCK_TOKEN_ENV] = token
    with project_lock(root, command="free again", database=url):
        pass


def _materialize(client: dict, asset: str, partition: str) -> subprocess.CompletedProcess:
    """`dagster asset materialize` of one partition: on the stack's instance, its steps on the dask workers."""
    command = [
        str(Path(sys.executable).with_name("dagster")),
        *["asset", "materialize", "--select", asset, "--partition", partition, "-m", "locdiff_pipeline.definitions"],
    ]
    return subprocess.run(command, env=client, cwd=REPOSITORY, capture_output=True, text=True, timeout=600)


def _kill_the_worker_of_a_running_shard_step(client: dict) -> None:
    """Re-embed shard 000 and SIGKILL the worker process the moment its step starts there: dask's nanny
    restarts the worker and the scheduler reruns the task, or the run fails and a rerun completes."""
    from dagster import DagsterEventType, DagsterInstance

    command = [
        str(Path(sys.executable).with_name("dagster")),
        *["asset", "materialize", "--select", "image_embeddings", "--partition", "000"],
        *["-m", "locdiff_pipeline.definitions"],
    ]
    os.environ["DAGSTER_HOME"] = client["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            before = {run.run_id for run in instance.get_runs()}
            process = subprocess.Popen(
                command, env=client, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            killed, deadline = None, time.monotonic() + 300
            while killed is None and process.poll() is None and time.monotonic() < deadline:
                for run in instance.get_runs(limit=3):
                    if run.run_id in before:
                        continue
                    started = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_WORKER_STARTED)
                    for record in started.records:
                        killed = int(record.event_log_entry.dagster_event.event_specific_data.metadata["pid"].value)
                        os.kill(killed, signal.SIGKILL)
                        break
                time.sleep(0.02)
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    output, _ = process.communicate(timeout=600)
    assert killed is not None, f"the step was never seen running: {output[-2000:]}"
    if process.returncode != 0:  # the run failed with its worker: a rerun completes
        again = _materialize(client, "image_embeddings", "000")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    outcome = "the run failed, a rerun completed" if process.returncode else "dask reran the step, the run succeeded"
    print(f"\nworker pid {killed} killed in image_embeddings[000]: {outcome}")


def _stack_pids(config) -> set[int]:
    """Every process of the stack: the groups `up` started (children included) and PostgreSQL's server."""
    import psutil

    roots = [*json.loads((config.folder / "pids.json").read_text()).values(), postgres.server_pid(config)]
    found = set()
    for pid in roots:
        process = psutil.Process(pid)
        found |= {process.pid, *(child.pid for child in process.children(recursive=True))}
    return found


def _every_socket_listens_on_the_stack_host_only(config) -> None:
    import psutil

    pids = _stack_pids(config)
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    stray = [(c.pid, psutil.Process(c.pid).name(), c.laddr) for c in listening if c.laddr.ip != config.host]
    assert not stray, f"listening beyond {config.host}: {stray}"
    ports = {c.laddr.port for c in listening}
    assert {config.postgres_port, config.mlflow_port, config.dask_scheduler_port, config.dagster_port} <= ports
    assert len(ports) >= 4 + 2 * (config.shard_workers + 1)  # each worker and its nanny, too


def _the_guard_is_the_only_door_to_the_ui(config) -> None:
    """The webserver's process tree listens on the guard's port alone (Dagster's webserver on a Unix socket);
    no port of the stack runs a foreign page's mutation; dask's HTTP ports have no routes (no logs, call stacks,
    identity or proxy for a caller without a certificate)."""
    pids = json.loads((config.folder / "pids.json").read_text())
    assert listening_ports(process_tree(pids["dagster-webserver"])) == {config.dagster_port}
    check_no_port_runs_a_foreign_mutation(config.host, listening_ports(_stack_pids(config)))
    scheduler_http = listening_ports(process_tree(pids["dask-scheduler"])) - {config.dask_scheduler_port}
    assert scheduler_http  # the dashboard address dask binds whatever it is told
    for port in scheduler_http:
        for path in ("/info/main/logs.html", "/json/identity.json", "/health", "/proxy/8786/127.0.0.1/status"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://{config.host}:{port}{path}", timeout=10)
            assert refused.value.code == 404, (port, path)


def _dask_refuses_clients_without_the_stacks_certificate(config) -> None:
    """No certificate, a certificate of another authority, plain tcp://: the scheduler answers none of them
    (each asks it who it is, the first message any client sends); the stack's own certificate gets its answer."""
    import ssl

    address = config.dask_scheduler
    no_certificate = ssl.create_default_context(cafile=str(config.dask_identity("client").authority))
    no_certificate.check_hostname = False  # as dask's own contexts: the authority is what is checked
    stranger = identity(config.folder.parent / "stranger-tls", "client")  # valid, but of another authority
    attempts = {
        "no certificate": (address, no_certificate),
        "another authority": (address, _client_context(stranger)),
        "plain tcp": (address.replace("tls://", "tcp://"), None),
    }
    for label, (target, context) in attempts.items():
        with pytest.raises(OSError):  # distributed's CommClosedError is one
            _scheduler_identity(target, context)
            pytest.fail(f"{label}: the scheduler answered")
    assert _scheduler_identity(address, _client_context(config.dask_identity("client")))["type"] == "Scheduler"


def _client_context(holder):
    return holder.security().get_connection_args("client")["ssl_context"]


def _scheduler_identity(address: str, context) -> dict:
    import asyncio

    from distributed.comm import connect

    async def ask() -> dict:
        comm = await connect(address, timeout=5, **({"ssl_context": context} if context else {}))
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    return asyncio.run(ask())


class _mlflow_user:
    """MLflow's clients read their credentials from the environment: these, for the block's duration."""

    NAMES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

    def __init__(self, username: str | None, password: str | None) -> None:
        self.values = dict(zip(self.NAMES, (username, password)))

    def __enter__(self) -> None:
        self.before = {name: os.environ.pop(name, None) for name in self.NAMES}
        os.environ.update({k: v for k, v in self.values.items() if v is not None})

    def __exit__(self, *exc) -> None:
        for name, value in self.before.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def _only_the_project_moves_the_champion(config, client: dict, champion) -> None:
    """Without credentials: 401 on a new version and on the alias; a reader: refused both; the stack's
    credentials: both work, and a version registered without the project's checksums is refused at load."""
    import mlflow

    uri = client["MLFLOW_TRACKING_URI"]
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)  # mlflow.register_model, as an intruder would call it, takes the global URIs
    mlflow.set_registry_uri(uri)
    try:
        untagged = _refused_then_allowed(config, uri, champion)
        with _mlflow_user(MLFLOW_USER, config.mlflow_password):
            _a_version_without_checksums_is_refused(untagged)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _refused_then_allowed(config, uri: str, champion):
    import mlflow
    from mlflow.exceptions import MlflowException

    reader_password = mlflow_auth.create_reader(config, "reader")
    for user, password, code in ((None, None, 401), ("reader", reader_password, 403)):
        with _mlflow_user(user, password):
            intruder = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            with pytest.raises(MlflowException) as refused:
                mlflow.register_model(champion.source, "locdiff")  # what `locdiff` does, without its tags
            assert refused.value.get_http_status_code() == code, (user, refused.value)
            with pytest.raises(MlflowException) as refused:
                intruder.set_registered_model_alias("locdiff", "champion", "1")
            assert refused.value.get_http_status_code() == code, (user, refused.value)
    with _mlflow_user(MLFLOW_USER, config.mlflow_password):
        member = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        untagged = mlflow.register_model(champion.source, "locdiff")
        member.set_registered_model_alias("locdiff", "champion", champion.version)  # unchanged, but allowed
    return untagged


def _a_version_without_checksums_is_refused(version) -> None:
    """What `locdiff predict --model` and evaluation load through: the version's files are never used."""
    from locdiff_pipeline.tracking import registry

    with pytest.raises(registry.ModelReferenceError, match="checkpoint_sha256 tag is missing.*refusing to load it"):
        registry.download_checkpoint(f"models:/locdiff/{version.version}")


def _no_secret_in_command_lines_logs_or_params(config, client: dict) -> None:
    import mlflow

    command_lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    logs = {path: path.read_text(errors="replace") for path in (config.folder / "logs").glob("*.log")}
    logs[config.postgres_data] = (config.postgres_data.parent / f"{config.postgres_data.name}.log").read_text()
    uri = client["MLFLOW_TRACKING_URI"]
    with _mlflow_user(MLFLOW_USER, config.mlflow_password):
        server = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        runs = server.search_runs([server.get_experiment_by_name("locdiff").experiment_id])
    params = " ".join(f"{k}={v}" for run in runs for k, v in {**run.data.params, **run.data.tags}.items())
    assert runs and len(command_lines.splitlines()) > 10 and logs
    for secret in config.secret_values():
        assert secret not in command_lines
        assert not [str(path) for path, text in logs.items() if secret in text]
        assert secret not in params


def test_status_names_a_cluster_whose_project_folder_is_gone(tmp_path):
    """Clusters of root's stacks live beside notes naming their project folders: one whose folder is gone is
    listed (its databases hold its users' password hashes until someone removes them); a live one is not."""
    for name, project in (("gone", tmp_path / "deleted-project"), ("alive", tmp_path)):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}{postgres.PROJECT_NOTE}").write_text(f"{project}\n")
    assert postgres.orphaned_clusters(tmp_path) == [(tmp_path / "gone", tmp_path / "deleted-project")]
    assert postgres.orphaned_clusters(tmp_path / "no-such-folder") == []
