"""The stack's one configuration file, `.stack/stack.env`: written once by the first `up`, edited by hand
after (ports, worker count); its password never leaves the project folder (git-ignores `.stack/`)."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

STACK_FOLDER = ".stack"
DEFAULT_PORTS = {"POSTGRES_PORT": 5433, "MLFLOW_PORT": 5001, "DASK_SCHEDULER_PORT": 8786, "DAGSTER_PORT": 3001}


@dataclass(frozen=True)
class StackConfig:
    """What every service of the stack and every client of it needs to know."""

    root: Path  # the project folder (LOCDIFF_HOME): warehouse/, catalog, the stack's files
    host: str
    postgres_port: int
    postgres_password: str
    postgres_data: Path
    mlflow_port: int
    dask_scheduler_port: int
    dagster_port: int
    shard_workers: int

    @property
    def folder(self) -> Path:
        return self.root / STACK_FOLDER

    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    def database_url(self, database: str) -> str:
        return f"postgresql://locdiff:{self.postgres_password}@{self.host}:{self.postgres_port}/{database}"

    def sqlalchemy_url(self, database: str) -> str:
        """For SQLAlchemy (MLflow, Dagster): psycopg2 named, as SQLAlchemy 2.1 would otherwise ask for psycopg 3."""
        return self.database_url(database).replace("postgresql://", "postgresql+psycopg2://", 1)

    def client_env(self) -> dict[str, str]:
        """What a client of the stack sets (`locdiff stack env` prints it as shell exports)."""
        return {
            "LOCDIFF_HOME": str(self.root),
            "DAGSTER_HOME": str(self.dagster_home),
            "MLFLOW_TRACKING_URI": f"http://{self.host}:{self.mlflow_port}",
            "LOCDIFF_DASK_SCHEDULER": f"tcp://{self.host}:{self.dask_scheduler_port}",
            "LOCDIFF_LOCK_DATABASE": self.database_url("locdiff"),
        }


def load_or_create(root: Path) -> StackConfig:
    """The project's stack configuration, written with free ports and a new password the first time."""
    path = Path(root) / STACK_FOLDER / "stack.env"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_new(path, Path(root))
    values = dict(
        line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    try:
        return StackConfig(
            root=Path(root).resolve(),
            host=values["STACK_HOST"],
            postgres_port=int(values["POSTGRES_PORT"]),
            postgres_password=values["POSTGRES_PASSWORD"],
            postgres_data=Path(values["POSTGRES_DATA"]),
            mlflow_port=int(values["MLFLOW_PORT"]),
            dask_scheduler_port=int(values["DASK_SCHEDULER_PORT"]),
            dagster_port=int(values["DAGSTER_PORT"]),
            shard_workers=int(values["SHARD_WORKERS"]),
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: missing or invalid {error} (delete the file to write a new one)") from None


def _write_new(path: Path, root: Path) -> None:
    ports = {name: _free_or_other(port) for name, port in DEFAULT_PORTS.items()}
    lines = [
        "# The team stack's settings, written once by `locdiff stack up`; edit freely (never commit: a password).",
        "STACK_HOST=127.0.0.1",
        *(f"{name}={port}" for name, port in ports.items()),
        f"POSTGRES_PASSWORD={secrets.token_hex(16)}",
        f"POSTGRES_DATA={_postgres_data(root)}",
        "SHARD_WORKERS=2",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def _postgres_data(root: Path) -> Path:
    """The database's folder: in the project, unless this runs as root, when the server (which refuses to
    run as root) runs as Debian's `postgres` user under its home, where that user can reach it."""
    if os.geteuid() != 0:
        return (root / STACK_FOLDER / "postgres").resolve()
    return Path("/var/lib/postgresql/locdiff-stacks") / secrets.token_hex(6)


def _free_or_other(port: int) -> int:
    """`port` when nothing listens on it here, else a free one."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return port
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
