"""A project's MLflow store follows its folder: copied or moved, it points at its own files.

MLflow records absolute artifact locations (the experiment's artifact root, each run's artifact URI, each
logged model's and registered version's storage location). A copy of a project folder would otherwise
keep writing its new runs and models into the original's mlruns/ and reading the original's models, and
a moved one would find nothing. Before MLflow is used on a project's own SQLite backend
(mlruns/mlflow.db), every location recorded under another project folder's mlruns/ is rewritten to the
same place under this one, in one transaction; a store that already points here is left untouched.
A tracking server, or any other backend the user names, keeps its own locations.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

# (table, column) pairs that hold artifact locations, as file URIs or plain paths
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)
_ARTIFACTS = "mlruns/artifacts"


def project_database(tracking_uri: str) -> Path | None:
    """The SQLite file of a project's own backend (…/mlruns/mlflow.db), or None for any other URI."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return database if database.parent.name == "mlruns" else None


def reroot(database: Path) -> int:
    """Rewrite locations recorded under another project's mlruns/ to this project's (the database's
    folder); returns how many were rewritten. A missing database (a new project) has nothing to rewrite."""
    if not database.is_file():
        return 0
    here = database.resolve().parent.parent
    with sqlite3.connect(database, timeout=60) as connection:
        connection.execute("BEGIN IMMEDIATE")  # one writer: concurrent processes rewrite once
        recorded = _recorded_project(connection)
        if recorded is None or recorded == here:
            return 0
        changed = 0
        for old, new in _prefixes(recorded, here):
            for table, column in _present(connection):
                cursor = connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old),
                )
                changed += cursor.rowcount
        return changed


def _recorded_project(connection: sqlite3.Connection) -> Path | None:
    """The project folder the store's `locdiff` experiment was created in (the folder above mlruns/)."""
    row = connection.execute("SELECT artifact_location FROM experiments WHERE name = 'locdiff'").fetchone()
    if not row or not row[0] or not row[0].startswith("file:"):
        return None
    path = Path(unquote(urlparse(row[0]).path))
    return path.parent.parent if path.as_posix().endswith(_ARTIFACTS) else None


def _prefixes(old: Path, new: Path) -> list[tuple[str, str]]:
    """(old, new) prefixes of mlruns/ locations, as file URIs and as plain paths (MLflow writes both)."""
    return [
        (f"{old.as_uri()}/mlruns/", f"{new.as_uri()}/mlruns/"),
        (f"file://{old.as_posix()}/mlruns/", f"{new.as_uri()}/mlruns/"),
        (f"{old.as_posix()}/mlruns/", f"{new.as_posix()}/mlruns/"),
    ]


def _present(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    """The location columns this MLflow schema has (older schemas lack logged_models)."""
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [(table, column) for table, column in LOCATION_COLUMNS if table in tables]
