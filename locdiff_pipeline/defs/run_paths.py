"""Where a run's configuration may point, for runs launched from the UI that `locdiff dev` serves.

Anyone who can use the Dagster UI can launch a run with any run config, and a path in it is read or
written by the run's process: a warehouse root anywhere, a "metadata CSV" that is /etc/passwd. So in
runs started under `locdiff dev` (its processes carry GUARD_ENV), a path set in run config must lie in
the project folder, in a folder of the catalog the server was started with (LOCDIFF_CATALOG: its file's
folder and its datasets'), or in a folder LOCDIFF_RUN_CONFIG_ROOTS adds; an MLflow tracking URI is a
local store held to the same rule, or the server's own. `locdiff run`, the tests and plain Python are not
restricted: whoever runs them already chose every path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from locdiff_pipeline import settings
from locdiff_pipeline.data.paths import project_root

GUARD_ENV = "LOCDIFF_UI_GUARD"  # set by `locdiff dev` for dagster dev and the runs it launches
_GLOB = re.compile(r"[*?\[]")


class RunPathRefused(ValueError):
    """A run-config path outside the folders a UI-launched run may use."""


def check(paths: list[tuple[str, str | Path]]) -> None:
    """Refuse any (what, path) whose path (a file, folder or glob from run config) lies outside the allowed
    folders, when guarded; the allowed folders (the server's catalog read from disk) are found once."""
    if os.environ.get(GUARD_ENV) != "1" or not paths:
        return
    roots = allowed_roots()
    for what, path in paths:
        resolved = _fixed_part(path)
        if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
            raise RunPathRefused(
                f"{what} {str(path)!r} is outside the folders a run launched from the UI may use "
                f"({', '.join(str(r) for r in roots)}); set LOCDIFF_RUN_CONFIG_ROOTS before `locdiff dev` to "
                "allow more"
            )


def check_tracking_uri(what: str, uri: str) -> None:
    """Refuse, when guarded, a tracking URI from run config that writes outside the allowed folders: a local
    store (sqlite:///PATH, file:PATH or a plain path) is checked as a path; any other URI (a tracking server,
    a database) must be the one the server itself was started with ($MLFLOW_TRACKING_URI), or run config
    could send the project's runs and models to a store of its choosing."""
    if os.environ.get(GUARD_ENV) != "1" or not uri:
        return
    local = _local_store(uri)
    if local is not None:
        check([(what, local)])
    elif uri != os.environ.get("MLFLOW_TRACKING_URI"):
        raise RunPathRefused(
            f"{what} {uri!r} is not this server's tracking URI; a run launched from the UI logs where the server "
            "does (unset it in run config)"
        )


def _local_store(uri: str) -> str | None:
    """The file a local MLflow store URI writes to, None for a server or database URI."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        return unquote(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else ":memory:"
    if parts.scheme == "file":
        return unquote(parts.path)
    return uri if not parts.scheme or len(parts.scheme) == 1 else None  # a plain (or Windows drive) path


def allowed_roots() -> list[Path]:
    """The project folder, the server's catalog file's folder and its datasets' folders, and the extra roots."""
    from locdiff_pipeline.data.catalog import FILES, load_catalog

    current = settings.current()
    roots = [project_root(), *(current.run_config_roots or [])]
    if current.catalog:
        roots.append(Path(current.catalog).resolve().parent)
        for entry in load_catalog(current.catalog).entries:
            if entry.kind == FILES:
                roots += [_fixed_part(entry.metadata_csv).parent, _fixed_part(entry.images)]
    return [Path(root).resolve() for root in roots]


def _fixed_part(path: str | Path) -> Path:
    """The path up to its first glob character (a shard pattern's folder), resolved."""
    text = str(Path(path).expanduser())
    match = _GLOB.search(text)
    if match:
        text = text[: match.start()].rsplit("/", 1)[0] or "/"
    return Path(text).resolve()
