"""Start, stop and report the stack's processes: each in its own session, its log in `.stack/logs`, its
pid in `.stack/pids.json`, so `down` stops every process `up` started (and their children)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from locdiff_pipeline.defs.run_paths import GUARD_ENV
from locdiff_pipeline.stack import mlflow_auth, postgres
from locdiff_pipeline.stack.config import StackConfig

STOP_SECONDS = 30
READY_SECONDS = 180


# dask's scheduler and workers serve their HTTP routes without TLS or certificates: none of them, here
NO_HTTP_ROUTES = {"DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": "[]", "DASK_DISTRIBUTED__WORKER__HTTP__ROUTES": "[]"}


def _program(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def commands(config: StackConfig) -> dict[str, list[str]]:
    """Every process of the stack but PostgreSQL, by name, in start order. Each listens on the stack's host
    only; dask speaks TLS with the stack's certificates; no argument holds a secret (`ps` shows them all)."""
    scheduler = config.dask_scheduler
    # with --no-dashboard dask still serves its HTTP routes (health, metrics, logs, call stacks, a proxy) on the
    # dashboard address, every interface by default (measured): kept on the stack's host, and with no route at
    # all (NO_HTTP_ROUTES in service_env), since plain HTTP there answers whoever asks, certificate or not
    loopback_http = ["--no-dashboard", "--dashboard-address", f"{config.host}:0"]
    worker = [
        *[_program("dask"), "worker", scheduler, "--host", config.host, "--nthreads", "1"],
        *["--local-directory", str(config.folder / "dask"), *loopback_http],
        *config.dask_identity("worker").server_arguments(),
    ]
    found = {
        "mlflow": [
            *[_program("mlflow"), "server", "--app-name", "basic-auth"],
            *["--backend-store-uri", config.sqlalchemy_url("mlflow")],
            *["--serve-artifacts", "--artifacts-destination", str(config.folder / "artifacts")],
            *["--host", config.host, "--port", str(config.mlflow_port), "--workers", "1"],
        ],
        "dask-scheduler": [
            *[_program("dask"), "scheduler", "--protocol", "tls", "--host", config.host],
            *["--port", str(config.dask_scheduler_port), *loopback_http],
            *config.dask_identity("scheduler").server_arguments(),
        ],
        # the training queue: the only worker that offers `training` (the GPU machine in a real deployment)
        "dask-worker-training": [*worker, "--name", "training", "--resources", "training=1"],
        **{f"dask-worker-{k}": [*worker, "--name", f"shards-{k}"] for k in range(1, config.shard_workers + 1)},
        "dagster-daemon": [_program("dagster-daemon"), "run", "-m", "locdiff_pipeline.definitions"],
        "dagster-webserver": [
            sys.executable,
            "-m",
            "locdiff_pipeline.stack.webserver",
            config.host,
            str(config.dagster_port),
        ],
    }
    return found


def service_env(config: StackConfig, name: str = "") -> dict[str, str]:
    """The caller's environment (its settings included) plus the stack's client settings, dask's refusal
    of unencrypted links, and the guard's mark: the runs the UI launches execute on the daemon and the
    workers, which must refuse run config that points outside the project (defs/run_paths.py), as under
    `locdiff dev`. The MLflow server alone also gets its auth app's secrets."""
    env = {
        **os.environ,
        **config.client_env(),
        GUARD_ENV: "1",
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        **NO_HTTP_ROUTES,
    }
    if name == "mlflow":
        env.update(mlflow_auth.server_env(config))
    return env


def up(config: StackConfig) -> None:
    """Start whatever is not running; return once each service answers."""
    (config.folder / "logs").mkdir(parents=True, exist_ok=True)
    write_instance_yaml(config)
    postgres.start(config)
    pids = _read_pids(config)
    for name, command in commands(config).items():
        if _alive(pids.get(name)):
            continue
        log = open(config.folder / "logs" / f"{name}.log", "ab")
        process = subprocess.Popen(
            command,
            env=service_env(config, name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=config.root,
        )
        pids[name] = process.pid
        _write_pids(config, pids)
        _wait_ready(config, name, process)
        if name == "mlflow":
            mlflow_auth.ensure_project_user(config)


def down(config: StackConfig) -> list[str]:
    """Stop every process `up` started (SIGTERM to its process group, SIGKILL after STOP_SECONDS), then
    PostgreSQL; the names stopped. The data stays (purge removes it)."""
    pids, stopped = _read_pids(config), []
    for name in reversed(list(pids)):
        if _stop_group(pids[name]):
            stopped.append(name)
    _write_pids(config, {})
    if postgres.is_running(config):
        postgres.stop(config)
        stopped.append("postgres")
    return stopped


def purge(config: StackConfig) -> list[Path]:
    """After `down`: remove the stack's data, the cluster (every database) and .stack/ (its passwords, keys
    and certificates, Dagster's instance file, logs, dask's scratch); the paths removed."""
    removed = postgres.purge(config)
    if config.folder.exists():
        shutil.rmtree(config.folder)
        removed.append(config.folder)
    return removed


def status(config: StackConfig) -> dict[str, str]:
    """Each service: 'running (pid N)' or 'stopped'; then each cluster of a project folder that is gone."""
    pids = _read_pids(config)
    report = {"postgres": f"running (pid {postgres.server_pid(config)})" if postgres.is_running(config) else "stopped"}
    for name in commands(config):
        report[name] = f"running (pid {pids[name]})" if _alive(pids.get(name)) else "stopped"
    for data, project in postgres.orphaned_clusters():
        report[f"orphaned {data.name}"] = f"databases of {project} (gone) in {data}: remove that folder to free them"
    return report


def write_instance_yaml(config: StackConfig) -> None:
    """Dagster's instance on the stack's PostgreSQL, with a run queue the daemon drains. Its URL holds no
    password (libpq reads PGPASSFILE), so neither does the instance ref Dagster puts on its code servers'
    command lines."""
    config.dagster_home.mkdir(parents=True, exist_ok=True)
    yaml = config.dagster_home / "dagster.yaml"
    yaml.write_text(
        "# Written by `locdiff stack up` from .stack/stack.env (edit that file instead).\n"
        "storage:\n  postgres:\n"
        f"    postgres_url: {config.sqlalchemy_url('dagster')}\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "  config:\n    max_concurrent_runs: 4\n"
        "telemetry:\n  enabled: false\n"
    )
    yaml.chmod(0o600)


def _wait_ready(config: StackConfig, name: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not _answers(config, name):
        if process.poll() is not None:
            log = (config.folder / "logs" / f"{name}.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{name} exited with status {process.returncode}:\n{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer within {READY_SECONDS} s (its log: .stack/logs/{name}.log)")
        time.sleep(0.5)


def _answers(config: StackConfig, name: str) -> bool:
    if name == "mlflow":
        return _http_ok(f"http://{config.host}:{config.mlflow_port}/health")
    if name == "dask-scheduler":
        return _port_open(config.host, config.dask_scheduler_port)
    if name.startswith("dask-worker"):
        return _worker_connected(config, name.removeprefix("dask-worker-"))
    if name == "dagster-webserver":
        return _http_ok(f"http://{config.host}:{config.dagster_port}/server_info")
    return True  # the daemon answers nothing: alive is ready


def _worker_connected(config: StackConfig, label: str) -> bool:
    from distributed import Client

    wanted = "training" if label == "training" else f"shards-{label}"
    try:
        with Client(config.dask_scheduler, security=config.dask_identity("client").security(), timeout=5) as client:
            names = {info.get("name") for info in client.scheduler_info()["workers"].values()}
    except OSError:
        return False
    return any(str(name).startswith(wanted) for name in names)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _stop_group(pid: int | None) -> bool:
    if not _alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return True


def _read_pids(config: StackConfig) -> dict[str, int]:
    try:
        return json.loads((config.folder / "pids.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_pids(config: StackConfig, pids: dict[str, int]) -> None:
    (config.folder / "pids.json").write_text(json.dumps(pids, indent=1))
