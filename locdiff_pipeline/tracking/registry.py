"""MLflow glue: a local SQLite tracking backend under mlruns/, the `locdiff` registered model and its
`champion` alias, which moves only when a new version beats the current champion on validation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from locdiff_pipeline.data.paths import default_tracking_uri, mlruns_dir

EXPERIMENT = "locdiff"
REGISTERED_MODEL = "locdiff"
CHAMPION = "champion"
VALIDATION_METRIC = "val_score"


ECHOED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # what mlflow.set_*_uri write into os.environ


def configure(tracking_uri: str | None = None, root: Path | None = None) -> str:
    """Point MLflow at the given URI, else $MLFLOW_TRACKING_URI, else the project's local backend.

    mlflow.set_tracking_uri and set_registry_uri also write their URI into the environment. The
    environment is put back as it was, so it only ever holds the user's setting: a later project in the
    same process (a test session, a notebook) is never pinned to this one's backend."""
    import mlflow

    before = {name: os.environ.get(name) for name in ECHOED}
    uri = tracking_uri or before["MLFLOW_TRACKING_URI"] or default_tracking_uri(root)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return uri


def ensure_experiment(root: Path | None = None) -> str:
    """The experiment id, creating it with its artifacts under mlruns/artifacts on first use."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = mlruns_dir(root) / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())


@dataclass
class Registration:
    version: int
    promoted: bool
    champion_version: int
    champion_score: float | None


def champion_score(client) -> tuple[int | None, float | None]:
    """(version, validation score) of the current champion, or (None, None)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    except MlflowException:
        return None, None
    score = client.get_run(version.run_id).data.metrics.get(VALIDATION_METRIC)
    return int(version.version), score


def register_and_promote(model_uri: str, run_id: str, score: float) -> Registration:
    """Register a new version and move `champion` to it only if it beats the current champion."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    version = int(mlflow.register_model(model_uri, REGISTERED_MODEL, tags={"run_id": run_id}).version)
    current_version, current_score = champion_score(client)
    promoted = current_score is None or score > current_score
    if promoted:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, str(version))
    client.set_model_version_tag(REGISTERED_MODEL, str(version), VALIDATION_METRIC, f"{score:.6f}")
    return Registration(
        version, promoted, version if promoted else current_version, score if promoted else current_score
    )


def find_finished_run(fingerprint_value: str) -> dict | None:
    """A finished training run with this input fingerprint and its registered version, if one exists."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string=f"tags.locdiff_fingerprint = '{fingerprint_value}' and attributes.status = 'FINISHED'",
        output_format="list",
        max_results=1,
    )
    if not runs or "registered_version" not in runs[0].data.tags:
        return None
    run = runs[0]
    return {
        "run_id": run.info.run_id,
        "version": int(run.data.tags["registered_version"]),
        "metrics": dict(run.data.metrics),
    }


def download_checkpoint(reference: str) -> Path:
    """Local folder of the LocDiff checkpoint behind a models:/ or runs:/ reference."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=reference))
    for candidate in [local, *local.rglob("*")]:
        if candidate.is_dir() and (candidate / "config.json").is_file() and (candidate / "weights.pt").is_file():
            return candidate
    raise FileNotFoundError(f"{reference} holds no LocDiff checkpoint (config.json + weights.pt)")
