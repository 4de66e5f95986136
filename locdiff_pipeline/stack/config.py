"""The stack's one configuration file, `.stack/stack.env`: written once by the first `up`, edited by hand
after (ports, worker count); its passwords never leave the project folder (git-ignores `.stack/`).

No secret reaches a command line (where `ps` shows it to every local user): database URLs carry no
password, which libpq reads from `.stack/pgpass` (PGPASSFILE); MLflow's credentials travel in the
environment variables MLflow reads; dask's certificates are files under `.stack/tls/`.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from locdiff_pipeline.coordination.dask_identity import Identity
from locdiff_pipeline.stack.certificates import identity, write_private

STACK_FOLDER = ".stack"
DEFAULT_PORTS = {"POSTGRES_PORT": 5433, "MLFLOW_PORT": 5001, "DASK_SCHEDULER_PORT": 8786, "DAGSTER_PORT": 3001}
APPLICATION_ROLE = "locdiff"  # owns the databases; not a superuser
ADMIN_ROLE = "locdiff_admin"  # the cluster's superuser: creates the role and the databases, nothing else
MLFLOW_USER = "locdiff"  # the project's clients on the tracking server (they create the experiment and model)
MLFLOW_ADMIN = "admin"  # manages the tracking server's users
# generated once; those an earlier version did not write are appended on the next load
_GENERATED = (
    "POSTGRES_PASSWORD",
    "POSTGRES_ADMIN_PASSWORD",
    "MLFLOW_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SECRET_KEY",
)


@dataclass(frozen=True)
class StackConfig:
    """What every service of the stack and every client of it needs to know."""

    root: Path  # the project folder (LOCDIFF_HOME): warehouse/, catalog, the stack's files
    host: str
    postgres_port: int
    postgres_password: str
    postgres_admin_password: str
    postgres_data: Path
    mlflow_port: int
    mlflow_password: str
    mlflow_admin_password: str
    mlflow_secret_key: str
    dask_scheduler_port: int
    dagster_port: int
    shard_workers: int

    @property
    def folder(self) -> Path:
        return self.root / STACK_FOLDER

    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    @property
    def password_file(self) -> Path:
        """libpq's password file for the application role (PGPASSFILE), mode 600."""
        return self.folder / "pgpass"

    @property
    def tls_folder(self) -> Path:
        return self.folder / "tls"

    def dask_identity(self, name: str) -> Identity:
        """`name`'s certificate from the stack's authority (scheduler, worker, client or a host's name)."""
        return identity(self.tls_folder, name, hosts=(self.host,))

    @property
    def dask_scheduler(self) -> str:
        return f"tls://{self.host}:{self.dask_scheduler_port}"

    def database_url(self, database: str) -> str:
        """The application role's URL, without its password (libpq takes it from PGPASSFILE)."""
        return f"postgresql://{APPLICATION_ROLE}@{self.host}:{self.postgres_port}/{database}"

    def sqlalchemy_url(self, database: str) -> str:
        """For SQLAlchemy (MLflow, Dagster): psycopg2 named, as SQLAlchemy 2.1 would otherwise ask for psycopg 3."""
        return self.database_url(database).replace("postgresql://", "postgresql+psycopg2://", 1)

    def write_password_file(self) -> None:
        """`.stack/pgpass`: the application role's password for this server, readable by its owner only."""
        line = f"{self.host}:{self.postgres_port}:*:{APPLICATION_ROLE}:{self.postgres_password}\n"
        write_private(self.password_file, line.encode())

    def client_env(self) -> dict[str, str]:
        """What a client of the stack sets (`locdiff stack env` prints it as shell exports): its files and
        the project's MLflow credentials, which MLflow's clients read from these variables."""
        return {
            "LOCDIFF_HOME": str(self.root),
            "DAGSTER_HOME": str(self.dagster_home),
            "MLFLOW_TRACKING_URI": f"http://{self.host}:{self.mlflow_port}",
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
            "LOCDIFF_DASK_SCHEDULER": self.dask_scheduler,
            "LOCDIFF_DASK_TLS": str(self.dask_identity("client").certificate.parent),
            "LOCDIFF_LOCK_DATABASE": self.database_url("locdiff"),
            "PGPASSFILE": str(self.password_file),
        }

    def secret_values(self) -> list[str]:
        """Every secret of the stack (what must never appear in a command line, a log or a run's params)."""
        return [
            self.postgres_password,
            self.postgres_admin_password,
            self.mlflow_password,
            self.mlflow_admin_password,
            self.mlflow_secret_key,
        ]


def load_or_create(root: Path) -> StackConfig:
    """The project's stack configuration, written with free ports and new passwords the first time."""
    path = Path(root) / STACK_FOLDER / "stack.env"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_new(path, Path(root))
    values = _read(path)
    missing = [name for name in _GENERATED if name not in values]
    if missing:  # a stack.env of an earlier version: its new secrets, generated once
        with open(path, "a") as handle:
            handle.writelines(f"{name}={secrets.token_hex(16)}\n" for name in missing)
        values = _read(path)
    try:
        return StackConfig(
            root=Path(root).resolve(),
            host=values["STACK_HOST"],
            postgres_port=int(values["POSTGRES_PORT"]),
            postgres_password=values["POSTGRES_PASSWORD"],
            postgres_admin_password=values["POSTGRES_ADMIN_PASSWORD"],
            postgres_data=Path(values["POSTGRES_DATA"]),
            mlflow_port=int(values["MLFLOW_PORT"]),
            mlflow_password=values["MLFLOW_PASSWORD"],
            mlflow_admin_password=values["MLFLOW_ADMIN_PASSWORD"],
            mlflow_secret_key=values["MLFLOW_SECRET_KEY"],
            dask_scheduler_port=int(values["DASK_SCHEDULER_PORT"]),
            dagster_port=int(values["DAGSTER_PORT"]),
            shard_workers=int(values["SHARD_WORKERS"]),
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: missing or invalid {error} (delete the file to write a new one)") from None


def _read(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _write_new(path: Path, root: Path) -> None:
    ports = {name: _free_or_other(port) for name, port in DEFAULT_PORTS.items()}
    lines = [
        "# The team stack's settings, written once by `locdiff stack up`; edit freely (never commit: passwords).",
        "STACK_HOST=127.0.0.1",
        *(f"{name}={port}" for name, port in ports.items()),
        *(f"{name}={secrets.token_hex(16)}" for name in _GENERATED),
        f"POSTGRES_DATA={_postgres_data(root)}",
        "SHARD_WORKERS=2",
    ]
    write_private(path, ("\n".join(lines) + "\n").encode())


def _postgres_data(root: Path) -> Path:
    """The database's folder: in the project, unless this runs as root, when the server (which refuses to
    run as root) runs as Debian's `postgres` user under its home (SHARED_CLUSTERS), where that user can reach
    it; a note beside it names the project (postgres.orphaned_clusters)."""
    if os.geteuid() != 0:
        return (root / STACK_FOLDER / "postgres").resolve()
    return SHARED_CLUSTERS / secrets.token_hex(6)


SHARED_CLUSTERS = Path("/var/lib/postgresql/locdiff-stacks")  # root's stacks' clusters, one folder each


def _free_or_other(port: int) -> int:
    """`port` when nothing listens on it here, else a free one."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return port
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
