"""MLflow glue: a local SQLite tracking backend under mlruns/, the `locdiff` registered model and its
`champion` alias, which moves only when a new version beats the current champion on validation.

Each version records the SHA-256 of its checkpoint files (tag CHECKSUM_TAG); a checkpoint whose files
changed since registration is refused, and so is a version without that tag, whoever registered it (a
version the project did not register). MLflow stores absolute artifact paths, so a project folder that
was moved or copied has its store re-rooted when MLflow is configured (project_store), and a version
recorded elsewhere is still looked up under this project's mlruns/ on load.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from locdiff_pipeline.data.image_io import sha256_file
from locdiff_pipeline.data.paths import default_tracking_uri, mlruns_dir
from locdiff_pipeline.method.metrics import THRESHOLDS_KM, accuracy_column
from locdiff_pipeline.tracking import project_store

EXPERIMENT = "locdiff"
REGISTERED_MODEL = "locdiff"
CHAMPION = "champion"
VALIDATION_METRIC = "val_score"
CHECKSUM_TAG = "checkpoint_sha256"
# MLflow 3's UI opens an experiment without this tag as a GenAI one (an empty traces page): a training one
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
CHECKPOINT_FILES = ("config.json", "weights.pt")
SERVER_SCHEMES = ("http", "https", "databricks")  # tracking URIs whose server chooses artifact locations
_MODEL_REFERENCE = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?")


class ModelReferenceError(ValueError):
    """A model reference that does not resolve to a usable checkpoint; the message names it and why."""


ECHOED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # what mlflow.set_*_uri write into os.environ


def configure(tracking_uri: str | None = None, root: Path | None = None) -> str:
    """Point MLflow at the given URI, else $MLFLOW_TRACKING_URI, else the project's local backend.

    mlflow.set_tracking_uri and set_registry_uri also write their URI into the environment. The
    environment is put back as it was, so it only ever holds the user's setting: a later project in the
    same process (a test session, a notebook) is never pinned to this one's backend."""
    import mlflow

    before = {name: os.environ.get(name) for name in ECHOED}
    uri = follow_the_project_folder(tracking_uri, root)
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


def follow_the_project_folder(tracking_uri: str | None = None, root: Path | None = None) -> str:
    """The tracking URI in use (the given one, else $MLFLOW_TRACKING_URI, else the project's local backend),
    with the project's own store repointed at this folder's files when the project was copied or moved.
    Every command that may hand the store to MLflow's own tools (`mlflow ui`, `mlflow models serve`) calls
    it first, MLflow's import not needed; it creates nothing where there is no store."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)
    database = project_store.project_database(uri)
    if database is not None:  # a copied or moved project points at its own files, not the original's
        project_store.reroot(database)
    return uri


EXPERIMENT_DESCRIPTION = (
    "LocDiff training runs: SHDD diffusion conditioned on frozen image embeddings. Each run logs its "
    "parameters, per-step loss, validation accuracy at 1/25/200/750/2500 km and val_score (their mean), "
    "the chosen test-time protocol, and registers a `locdiff` version; `champion` moves only to a better one."
)
MODEL_DESCRIPTION = (
    "LocDiff image geolocation: serves lat, lon and spread_km from an image-encoder embedding. Each version "
    "says which dataset, input fingerprint, validation score and encoder it has; the `champion` alias is "
    "the best on validation. Versions trained without pretrained encoder weights say so."
)


def ensure_experiment(root: Path | None = None) -> str:
    """The experiment id, creating it (described) on first use: with a local backend, its artifacts under
    the project's mlruns/artifacts; with a tracking server, where the server puts them (started with
    --serve-artifacts: mlflow-artifacts:/ URIs, so registered models name no path of the machine that
    trained them, and every member of a team reads the same files)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # made by an earlier version
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return experiment.experiment_id
    location = None
    if urlparse(mlflow.get_tracking_uri()).scheme not in SERVER_SCHEMES:
        artifacts = mlruns_dir(root) / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        location = artifacts.as_uri()
    tags = {"mlflow.note.content": EXPERIMENT_DESCRIPTION, EXPERIMENT_KIND_TAG: MODEL_TRAINING}
    return mlflow.create_experiment(EXPERIMENT, artifact_location=location, tags=tags)


def log_dataset_input(name: str, location: Path, digest: str) -> None:
    """Record the training dataset (its embeddings table in the warehouse) as the active run's input."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    source = resolve_dataset_source(Path(location).as_uri())
    mlflow.log_input(MetaDataset(source, name=name, digest=digest[:36]), context="training")


def describe_version(version: int, text: str) -> None:
    """Describe a registered version, and the registered model itself when it has no description yet."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if not client.get_registered_model(REGISTERED_MODEL).description:
        client.update_registered_model(REGISTERED_MODEL, description=MODEL_DESCRIPTION)
    client.update_model_version(REGISTERED_MODEL, str(version), description=text)


def tag_version(version: int, tags: dict[str, str]) -> None:
    """Name what a registered version is (its training dataset, encoder, protocol) on the version itself."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, str(version), key, value)


def log_report(run_id: str, folder: Path, benchmark: str) -> None:
    """Attach a benchmark's report files (accuracy.md, plots) to the training run that made the model."""
    from mlflow import MlflowClient

    MlflowClient().log_artifacts(run_id, str(folder), artifact_path=f"reports/{benchmark}")


# each share and score with its bootstrap interval over regions (`_low`, `_high`), as the accuracy view holds them
_WITH_INTERVALS = (*(accuracy_column(t) for t in THRESHOLDS_KM), "nll", "hpd90_coverage")
BENCHMARK_METRICS = (
    *(f"{name}{end}" for name in _WITH_INTERVALS for end in ("", "_low", "_high")),
    "median_km",
    "hpd90_area",
)


BASELINES_LOGGED = ("chance", "constant")  # beside LocDiff's own metrics: "better than chance?" in MLflow alone


def log_benchmark_metrics(run_id: str, benchmark: str, rows: list[dict]) -> None:
    """LocDiff's results on a benchmark as metrics of the training run that made the model
    (`BENCHMARK/acc_750km`, ...), with chance's and the constant's beside them (`BENCHMARK/chance/...`), so
    MLflow's compare view and search_runs rank versions by them and answer "better than chance?". One value
    per model version and benchmark: a rescore that changes nothing logs nothing, one that changes a number
    (other scoring settings) logs it at the same step 0, where the newest value is the run's."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    by_method = {row["method"]: row for row in rows}
    prefixes = {"locdiff": f"{benchmark}/", **{m: f"{benchmark}/{m}/" for m in BASELINES_LOGGED}}
    wanted = {
        f"{prefix}{name}": float(by_method[method][name])
        for method, prefix in prefixes.items()
        if method in by_method
        for name in BENCHMARK_METRICS
        if by_method[method].get(name) is not None
    }
    client = MlflowClient()
    logged = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    changed = [Metric(key, value, now, 0) for key, value in wanted.items() if logged.get(key) != value]
    if changed:
        client.log_batch(run_id, metrics=changed)


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


def checkpoint_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of each file of a LocDiff checkpoint folder (what registration records)."""
    return {name: sha256_file(Path(directory) / name) for name in CHECKPOINT_FILES}


def verify_checkpoint(directory: Path, expected: dict[str, str], reference: str) -> None:
    """Refuse a checkpoint whose files differ from the digests recorded at registration."""
    changed = [name for name, digest in checkpoint_digests(directory).items() if expected.get(name) != digest]
    if changed:
        raise ModelReferenceError(
            f"model {reference!r}: {', '.join(changed)} in {directory} changed since registration "
            "(SHA-256 differs); refusing to load it"
        )


def register_and_promote(model_uri: str, run_id: str, score: float, digests: dict[str, str]) -> Registration:
    """Register a new version (with its checkpoint digests) and move `champion` to it only if it beats the
    current champion."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {"run_id": run_id, CHECKSUM_TAG: json.dumps(digests, sort_keys=True)}
    version = int(mlflow.register_model(model_uri, REGISTERED_MODEL, tags=tags).version)
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
    """Local folder of the LocDiff checkpoint behind a models:/ or runs:/ reference; for a registered
    version, checked against the digests recorded at registration. ModelReferenceError says why not."""
    import mlflow

    version = _model_version(reference)
    expected = None if version is None else _recorded_digests(version, reference)  # refused before any download
    try:
        local = _rerooted(version) or Path(mlflow.artifacts.download_artifacts(artifact_uri=reference))
    except Exception as error:  # MLflow raises many kinds for a missing model, alias or artifact
        raise ModelReferenceError(f"model {reference!r}: {_first_line(error)}") from None
    for candidate in [local, *local.rglob("*")]:
        if candidate.is_dir() and all((candidate / name).is_file() for name in CHECKPOINT_FILES):
            if expected is not None:
                verify_checkpoint(candidate, expected, reference)
            return candidate
    raise ModelReferenceError(f"model {reference!r} holds no LocDiff checkpoint (config.json + weights.pt)")


def _recorded_digests(version, reference: str) -> dict[str, str]:
    """The digests the project tagged the version with at registration; a version without them was not
    registered by the project (someone logged a model and registered it by hand) and is refused."""
    try:
        recorded = json.loads(version.tags[CHECKSUM_TAG])
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (KeyError, ValueError) as error:
        reason = "missing" if isinstance(error, KeyError) else "not a JSON object of digests"
        raise ModelReferenceError(
            f"model {reference!r} (version {version.version}): its {CHECKSUM_TAG} tag is {reason}; "
            "locdiff records its checkpoint's SHA-256 when it registers a version, so this one was registered "
            "some other way; refusing to load it"
        ) from None
    return recorded


def _model_version(reference: str):
    """The registered version a models:/NAME@ALIAS or models:/NAME/VERSION reference names, else None."""
    from mlflow import MlflowClient

    match = _MODEL_REFERENCE.fullmatch(reference)
    if match is None:
        return None
    client = MlflowClient()
    try:
        if match["alias"]:
            return client.get_model_version_by_alias(match["name"], match["alias"])
        return client.get_model_version(match["name"], match["version"])
    except Exception as error:
        raise ModelReferenceError(f"model {reference!r}: {_first_line(error)}") from None


def _rerooted(version) -> Path | None:
    """The version's artifact folder under this project's mlruns/ when MLflow recorded it under another
    folder that no longer holds it (the project was moved or copied); None when the recorded place is
    fine or the version is not a local file."""
    from mlflow import MlflowClient

    if version is None:
        return None
    location = MlflowClient().get_model_version_download_uri(version.name, version.version)
    if not location or not location.startswith("file:"):
        return None
    recorded = Path(unquote(urlparse(location).path))
    if recorded.exists() or "mlruns" not in recorded.parts:
        return None
    parts = recorded.parts
    inside = parts[len(parts) - 1 - parts[::-1].index("mlruns") + 1 :]
    moved = mlruns_dir().joinpath(*inside)
    return moved if moved.is_dir() else None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
