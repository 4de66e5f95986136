"""The stack's PostgreSQL server: Debian's binaries, one cluster per project, loopback only.

It holds four databases: `dagster` (runs, event log, schedules: dagster-postgres), `mlflow` (the
tracking server's backend store), `mlflow_auth` (its users and permissions) and `locdiff` (the writers'
advisory lock, coordination/database_lock.py). They belong to the application role `locdiff`, which is no
superuser; the cluster's superuser `locdiff_admin` only creates them. PostgreSQL refuses to run as root;
run by root, every server command runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from contextlib import closing
from pathlib import Path

from locdiff_pipeline.stack.certificates import write_private
from locdiff_pipeline.stack.config import ADMIN_ROLE, APPLICATION_ROLE, SHARED_CLUSTERS, StackConfig

DATABASES = ("dagster", "mlflow", "mlflow_auth", "locdiff")
PROJECT_NOTE = ".project"  # beside a cluster's data folder: the project folder it belongs to


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries are not installed here."""


def binaries() -> Path:
    """The folder of initdb and pg_ctl (Debian: /usr/lib/postgresql/<version>/bin, newest first)."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if Path(folder, "initdb").exists():
            return Path(folder)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresMissing("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def start(config: StackConfig) -> None:
    """Create the cluster and its databases the first time; start the server on the loopback port."""
    data = config.postgres_data
    if not (data / "PG_VERSION").exists():
        _init_cluster(config)
    config.write_password_file()
    if not is_running(config):
        log = data.parent / f"{data.name}.log"
        options = f"-c listen_addresses={config.host} -p {config.postgres_port} -c unix_socket_directories={data}"
        _as_server_user(["pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"])
    _create_databases(config)


def stop(config: StackConfig) -> None:
    """Stop the server (fast: open sessions are ended), if it runs."""
    if (config.postgres_data / "postmaster.pid").exists():
        _as_server_user(["pg_ctl", "-D", str(config.postgres_data), "-m", "fast", "-w", "-t", "60", "stop"])


def is_running(config: StackConfig) -> bool:
    if not (config.postgres_data / "PG_VERSION").exists():
        return False
    completed = _server_command(["pg_ctl", "-D", str(config.postgres_data), "status"])
    return completed.returncode == 0 and "server is running" in completed.stdout


def server_pid(config: StackConfig) -> int | None:
    try:
        return int((config.postgres_data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def project_note(config: StackConfig) -> Path:
    """The note beside the cluster's data folder naming the project it belongs to (orphaned_clusters)."""
    return config.postgres_data.parent / f"{config.postgres_data.name}{PROJECT_NOTE}"


def cluster_files(config: StackConfig) -> list[Path]:
    """What the stack's cluster keeps on disk: its data folder, the server's log and the note naming the project."""
    data = config.postgres_data
    return [data, data.parent / f"{data.name}.log", project_note(config)]


def purge(config: StackConfig) -> list[Path]:
    """Stop the server and remove the cluster (every database, the roles' password hashes) from the disk; the
    paths removed."""
    stop(config)
    removed = [path for path in cluster_files(config) if path.exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def orphaned_clusters(folder: Path = SHARED_CLUSTERS) -> list[tuple[Path, Path]]:
    """(data folder, project folder) of each cluster under `folder` whose project folder no longer exists:
    databases that `down --purge` in that project can no longer remove."""
    if not folder.is_dir():
        return []
    notes = ((note, Path(note.read_text().strip())) for note in sorted(folder.glob(f"*{PROJECT_NOTE}")))
    return [(note.with_suffix(""), project) for note, project in notes if not project.exists()]


def _init_cluster(config: StackConfig) -> None:
    data = config.postgres_data
    data.mkdir(parents=True, exist_ok=True)
    project_note(config).write_text(f"{config.root.resolve()}\n")
    password_file = data.parent / f"{data.name}.password"
    write_private(password_file, (config.postgres_admin_password + "\n").encode())
    _give_to_server_user(data.parent, data, password_file)
    try:
        _as_server_user(
            [
                "initdb",
                "-D",
                str(data),
                "-U",
                ADMIN_ROLE,
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
            ]
        )
    finally:
        password_file.unlink(missing_ok=True)


def _create_databases(config: StackConfig) -> None:
    """The application role (login, no superuser, no role or database creation) and its databases."""
    connection = _admin_connection(config)
    connection.autocommit = True
    with closing(connection), connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APPLICATION_ROLE,))
        if cursor.fetchone() is None:
            cursor.execute(
                f"CREATE ROLE {APPLICATION_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s",
                (config.postgres_password,),
            )
        cursor.execute("SELECT datname FROM pg_database")
        existing = {row[0] for row in cursor.fetchall()}
        for name in DATABASES:
            if name not in existing:
                cursor.execute(f'CREATE DATABASE "{name}" OWNER {APPLICATION_ROLE}')


def _admin_connection(config: StackConfig):
    """The superuser's connection (password in the call, never in a URL or a command line). A cluster made
    before the roles were split has only `locdiff`, a superuser: it serves as both, with a warning."""
    import sys

    import psycopg2

    deadline = time.monotonic() + 30
    address = {"host": config.host, "port": config.postgres_port, "dbname": "postgres", "connect_timeout": 5}
    while True:
        try:
            return psycopg2.connect(user=ADMIN_ROLE, password=config.postgres_admin_password, **address)
        except psycopg2.OperationalError as error:
            if f'role "{ADMIN_ROLE}" does not exist' in str(error) or "authentication failed" in str(error):
                print(
                    f"warning: {config.postgres_data} was made by an earlier `locdiff stack up`: its role "
                    f"{APPLICATION_ROLE} is a superuser (remove that folder and run `up` to split the roles)",
                    file=sys.stderr,
                )
                return psycopg2.connect(user=APPLICATION_ROLE, password=config.postgres_password, **address)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _server_command(command: list[str]) -> subprocess.CompletedProcess:
    """A server binary, run as the `postgres` user when this runs as root (both refuse root)."""
    program = [str(binaries() / command[0]), *command[1:]]
    if os.geteuid() == 0:
        program = ["runuser", "-u", "postgres", "--", *program]
    return subprocess.run(program, capture_output=True, text=True, cwd="/")


def _as_server_user(command: list[str]) -> None:
    completed = _server_command(command)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed ({completed.returncode}): {(completed.stderr or completed.stdout)[-800:]}"
        )


def _give_to_server_user(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    user = pwd.getpwnam("postgres")
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)
