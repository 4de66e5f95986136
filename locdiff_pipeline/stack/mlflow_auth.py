"""Who may use the stack's MLflow tracking server: MLflow's own basic-auth app, its users in PostgreSQL.

Without it anyone who reaches the server can register a model version and move the `champion` alias
that `locdiff predict --model models:/locdiff@champion` serves. With it:
- `admin` (password generated once, in `.stack/stack.env`) manages users and nothing else here;
- `locdiff`, the project's clients (`locdiff stack env` exports its credentials as MLflow's
  MLFLOW_TRACKING_USERNAME/PASSWORD): it creates the experiment and the registered model, so it alone
  may edit them;
- readers (`locdiff stack reader NAME`): read runs and load models (every user's default permission,
  READ), never register a version or move an alias;
- a request without credentials gets 401.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request

from locdiff_pipeline.stack.config import MLFLOW_ADMIN, MLFLOW_USER, StackConfig
from locdiff_pipeline.tracking.registry import EXPERIMENT, REGISTERED_MODEL

AUTH_DATABASE = "mlflow_auth"
AUTH_CACHE_SECONDS = 60


def server_env(config: StackConfig) -> dict[str, str]:
    """What the tracking server alone gets in its environment: the auth app's configuration file and the
    secrets MLflow reads from variables (never from its command line)."""
    settings = config.folder / "mlflow_auth.ini"
    settings.write_text(
        "# Written by `locdiff stack up` (MLflow's basic-auth app); secrets come from the environment.\n"
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {config.sqlalchemy_url(AUTH_DATABASE)}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # each check of a password is a deliberately slow hash, and training logs hundreds of requests: a
        # verified password is trusted for this long (a changed or deleted user's at most this late)
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(settings),
        "MLFLOW_AUTH_ADMIN_PASSWORD": config.mlflow_admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": config.mlflow_secret_key,
    }


def ensure_project_user(config: StackConfig) -> None:
    """Create the project's user on a new server (its password from stack.env). The experiment and the
    registered model it creates are its own; ones made before the server checked users (a stack of an
    earlier version) are given to it, or it could no longer train or register."""
    if _user_exists(config, MLFLOW_USER):
        return
    _create_user(config, MLFLOW_USER, config.mlflow_password)
    experiment = _admin_request(config, "GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}")
    if experiment:
        _grant_manage(config, "experiment", experiment["experiment"]["experiment_id"])
    if _admin_request(config, "GET", f"/api/2.0/mlflow/registered-models/get?name={REGISTERED_MODEL}"):
        _grant_manage(config, "registered_model", REGISTERED_MODEL)


def _grant_manage(config: StackConfig, resource_type: str, resource_id: str) -> None:
    grant = {"username": MLFLOW_USER, "resource_type": resource_type, "resource_id": resource_id}
    _admin_request(config, "POST", "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": "MANAGE"})


def create_reader(config: StackConfig, name: str) -> str:
    """A new user who may read runs and load models (the server's default permission) but edit nothing
    of the project's; its password, generated, is returned once and stored nowhere."""
    if _user_exists(config, name):
        raise ValueError(f"MLflow user {name!r} exists already")
    password = secrets.token_urlsafe(18)
    _create_user(config, name, password)
    return password


def _user_exists(config: StackConfig, name: str) -> bool:
    return bool(_admin_request(config, "GET", f"/api/2.0/mlflow/users/get?username={name}"))


def _create_user(config: StackConfig, name: str, password: str) -> None:
    _admin_request(config, "POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})


def _admin_request(config: StackConfig, method: str, path: str, body: dict | None = None) -> dict:
    """One REST call as the server's admin (basic auth in a header, never in a URL); {} for a GET of
    something that does not exist."""
    token = base64.b64encode(f"{MLFLOW_ADMIN}:{config.mlflow_admin_password}".encode()).decode()
    request = urllib.request.Request(
        f"http://{config.host}:{config.mlflow_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        if error.code == 404 and method == "GET":
            return {}
        raise
