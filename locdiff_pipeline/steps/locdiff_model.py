"""Train LocDiff on the warehouse tables, log it to MLflow and register it.

Parameters, per-step losses and validation accuracy go to an MLflow run; the checkpoint is logged as
a pyfunc model, registered as a version of `locdiff`, and `champion` moves only if it beats the
current champion on validation. Inputs are fingerprinted: the same data and config reuse the
finished run instead of training again, and a crashed run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locdiff_pipeline.coordination.processes import owner_is_gone, owner_tags
from locdiff_pipeline.data import shards
from locdiff_pipeline.data.disk_space import writing
from locdiff_pipeline.data.ingest import IMAGES_TABLE
from locdiff_pipeline.data.training_stream import DEFAULT_BUFFER_ROWS, EmbeddingStream, streams
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint
from locdiff_pipeline.encoders.image_encoder import encoder_note
from locdiff_pipeline.method import distributed, metrics
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.devices import resolve_device
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.method.protocol import Protocol, choose_protocol
from locdiff_pipeline.method.target_space import target_space
from locdiff_pipeline.method.training import MODEL_DIR, Validation, train
from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE, embedding_files, load_labelled
from locdiff_pipeline.steps.shdd_tables import SHDD_TABLE, load_shdd
from locdiff_pipeline.tracking import registry

CHECKPOINTS = "checkpoints"
TRAINING_VERSION = 4  # bump when training's inputs or outputs change: a new version retrains


@dataclass
class TrainedModel:
    version: int
    run_id: str
    checkpoint: Path
    validation: dict[str, float]
    promoted: bool
    champion_version: int
    cached: bool
    encoder: dict
    seconds: float = 0.0


def chance_validation_score(warehouse: Warehouse, dataset: str, draws: int = 20, seed: int = 0) -> float:
    """The validation score of a guess that ignores the image (a random training location, averaged over
    `draws`): the floor a trained model must clear to be worth anything."""
    table = shards.read(warehouse, IMAGES_TABLE, dataset, columns=["split", "lat", "lon"])
    split = np.array(table["split"].to_pylist())
    lat, lon = table["lat"].to_numpy(), table["lon"].to_numpy()
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(train) == 0 or len(val) == 0:
        return 0.0
    picks = np.random.default_rng(seed).choice(train, size=len(val) * draws)
    scores = metrics.accuracy(np.repeat(lat[val], draws), np.repeat(lon[val], draws), lat[picks], lon[picks])
    return metrics.validation_score(scores)


def validation_data(warehouse: Warehouse, dataset: str) -> Validation:
    """The validation images' plain-view embeddings and coordinates, read by filter (not the whole table)."""
    val = load_labelled(warehouse, dataset, "val")
    if not val.ids:
        raise ValueError(f"dataset {dataset!r} has no validation images (split 'val'): set a split column or val_share")
    return Validation(val.embeddings, val.lat, val.lon)


def training_data(warehouse: Warehouse, dataset: str, config: LocDiffConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train embeddings with their targets (SHDD table rows, or unit vectors for the xyz ablation), in memory."""
    rows = load_labelled(warehouse, dataset, "train")
    if config.representation == "shdd":
        table = load_shdd(warehouse, dataset, config.L)
        targets = np.stack([table[i] for i in rows.ids])
    else:
        targets = target_space(config).targets(rows.lat, rows.lon)
    return rows.embeddings, targets


def training_stream(warehouse: Warehouse, dataset: str, config: LocDiffConfig) -> EmbeddingStream:
    """This rank's stream of training rows from the embeddings' part files (targets made on the device)."""
    return EmbeddingStream(
        embedding_files(warehouse, dataset),
        batch_size=config.batch_size,
        seed=config.seed,
        world=distributed.current_world(),
    )


def choose_test_protocol(
    warehouse: Warehouse, dataset: str, model: LocDiffModel, embeddings_manifest: dict
) -> tuple[Protocol, list[dict]]:
    """LocDiff's test-time protocol (views, combination rule), chosen on the validation images' views."""
    val = load_labelled(warehouse, dataset, "val", views=embeddings_manifest["test_views"])
    imagery = embeddings_manifest.get("imagery", "ground")
    return choose_protocol(model, val.embeddings, val.lat, val.lon, seed=model.config.seed, imagery=imagery)


@dataclass(frozen=True)
class TrainingInputs:
    """What a training run is made of, and the key that names it: the same key reuses the finished run."""

    dataset: str
    config: LocDiffConfig
    embeddings_manifest: dict
    streaming: bool
    key: str
    checkpoint_dir: Path

    @property
    def encoder(self) -> dict:
        return self.embeddings_manifest["encoder"]

    @property
    def model_dir(self) -> Path:
        return self.checkpoint_dir / MODEL_DIR


def train_and_register(
    warehouse: Warehouse,
    dataset: str,
    config: LocDiffConfig,
    *,
    log=None,
    force: bool = False,
    tracking_uri: str | None = None,
    encoder_checkpoint: str | None = None,
    loading: str = "auto",
) -> TrainedModel | None:
    """Train (or reuse the finished run of the same inputs), log to MLflow and register. Under torchrun
    every rank calls this; rank 0 returns the TrainedModel, the other ranks None. `encoder_checkpoint`
    (the pretrained encoder's weights, when the embeddings came from one) is logged with the served model
    so that it can embed images; without it that model takes embeddings only. `loading`: "memory" loads
    the training rows, "stream" streams them from the embeddings' part files, "auto" streams when they
    would not fit in a few GB (training_stream.streams)."""
    import mlflow

    inputs = training_inputs(warehouse, dataset, config, loading)
    world = distributed.current_world()
    distributed.init(world, resolve_device(config.device))
    registry.configure(tracking_uri, root=warehouse.root.parent)
    experiment_id = registry.ensure_experiment(warehouse.root.parent) if world.is_main else None
    previous = None if force or not world.is_main else registry.find_finished_run(inputs.key)
    previous = distributed.broadcast_from_main(previous, world)  # every rank takes the same branch
    if previous is not None:
        return reused_model(previous, inputs)
    if inputs.encoder["embed_dim"] != config.embed_dim:
        raise ValueError(
            f"config.embed_dim={config.embed_dim} but the {inputs.encoder['label']} embeddings have "
            f"{inputs.encoder['embed_dim']} dimensions"
        )
    rows, train_rows = training_rows(warehouse, inputs)
    log_every = max(1, config.steps // 50)
    if not world.is_main:  # a DDP worker: trains its share; rank 0 logs, checkpoints and registers
        train(config, **rows, checkpoint_dir=inputs.checkpoint_dir, encoder=inputs.encoder, log_every=log_every)
        return None
    validation = validation_data(warehouse, dataset)
    _fail_stale_runs(inputs.key)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"locdiff-{dataset}-L{config.L}") as run:
        log_run_inputs(warehouse, inputs, train_rows, len(validation.lat))
        step_logger = StepLogger(log)
        with writing(inputs.checkpoint_dir, "the training checkpoint"):
            result = train(
                config,
                **rows,
                checkpoint_dir=inputs.checkpoint_dir,
                validation=validation,
                encoder=inputs.encoder,
                log=step_logger,
                log_every=log_every,
            )
        score = log_final_scores(result.validation, result.seconds, config.steps, step_logger.validated_at)
        protocol = choose_and_record_protocol(warehouse, inputs, result.model)
        registration = log_and_register_model(warehouse, inputs, score, protocol, encoder_checkpoint, run.info.run_id)
    return TrainedModel(
        version=registration.version,
        run_id=run.info.run_id,
        checkpoint=inputs.model_dir,
        validation=result.validation,
        promoted=registration.promoted,
        champion_version=registration.champion_version,
        cached=False,
        encoder=inputs.encoder,
        seconds=result.seconds,
    )


def training_inputs(warehouse: Warehouse, dataset: str, config: LocDiffConfig, loading: str) -> TrainingInputs:
    """The run's inputs (refusing tables not yet materialized) and its key: a fingerprint of the config, the
    tables' fingerprints and how rows are loaded (a streamed run samples other batches: another run)."""
    embeddings_manifest = shards.manifest(warehouse, EMBEDDINGS_TABLE, dataset)
    if embeddings_manifest is None:
        raise FileNotFoundError(f"the embeddings of {dataset!r} must be materialized first")
    streaming = streams(loading, embeddings_manifest["rows"], config.embed_dim, target_space(config).dim)
    shdd_manifest = shards.manifest(warehouse, SHDD_TABLE, dataset, L=config.L)
    if not streaming and config.representation == "shdd" and shdd_manifest is None:
        raise FileNotFoundError(f"the L={config.L} SHDD table of {dataset!r} must be materialized first")
    key = fingerprint(
        TRAINING_VERSION,
        config.to_dict(),
        embeddings_manifest["fingerprint"],
        None if streaming else shdd_manifest and shdd_manifest["fingerprint"],
        dataset,
        *([("stream", DEFAULT_BUFFER_ROWS)] if streaming else []),
    )
    return TrainingInputs(dataset, config, embeddings_manifest, streaming, key, warehouse.root / CHECKPOINTS / key)


def reused_model(previous: dict, inputs: TrainingInputs) -> TrainedModel:
    """The finished run of the same inputs, as this call's result (nothing trained, nothing registered)."""
    import mlflow

    champion_version, _ = registry.champion_score(mlflow.MlflowClient())
    return TrainedModel(
        version=previous["version"],
        run_id=previous["run_id"],
        checkpoint=inputs.model_dir,
        validation={k.removeprefix("val_"): v for k, v in previous["metrics"].items() if k.startswith("val_")},
        promoted=False,
        champion_version=champion_version,
        cached=True,
        encoder=inputs.encoder,
    )


def training_rows(warehouse: Warehouse, inputs: TrainingInputs) -> tuple[dict, int]:
    """`train`'s row arguments (a stream, or embeddings and targets in memory) and how many rows there are."""
    if inputs.streaming:
        stream = training_stream(warehouse, inputs.dataset, inputs.config)
        return {"stream": stream}, stream.total_rows
    embeddings, targets = training_data(warehouse, inputs.dataset, inputs.config)
    return {"embeddings": embeddings, "targets": targets}, len(embeddings)


def log_run_inputs(warehouse: Warehouse, inputs: TrainingInputs, train_rows: int, val_rows: int) -> None:
    """The MLflow run's tags (fingerprint, dataset, encoder, owner), dataset input and parameters."""
    import mlflow

    encoder = inputs.encoder
    mlflow.set_tags(
        {
            "locdiff_fingerprint": inputs.key,
            "dataset": inputs.dataset,
            "encoder": encoder["label"],
            "encoder_pretrained": str(encoder["is_pretrained"]).lower(),
            "encoder_note": encoder_note(encoder),
            **owner_tags(),
        }
    )
    embeddings_folder = warehouse.partition_dir(EMBEDDINGS_TABLE, dataset=inputs.dataset)
    registry.log_dataset_input(inputs.dataset, embeddings_folder, inputs.key)
    mlflow.log_params(
        {
            **inputs.config.to_dict(),
            "hidden_dims": ",".join(map(str, inputs.config.hidden_dims)),
            "train_rows": train_rows,
            "val_rows": val_rows,
            "training_data": "streamed from the embeddings' part files" if inputs.streaming else "in memory",
        }
    )


class StepLogger:
    """`train`'s log callback: each record as MLflow metrics at its step (with the validation score where the
    step validated, so it is a curve), passed on to `log`."""

    def __init__(self, log=None):
        self.log = log
        self.validated_at: set[int] = set()

    def __call__(self, step: int, record: dict[str, float]) -> None:
        import mlflow

        values = {k: float(v) for k, v in record.items() if k != "step"}
        if all(f"val_{metrics.accuracy_column(t)}" in values for t in metrics.THRESHOLDS_KM):
            scores = {k.removeprefix("val_"): v for k, v in values.items()}
            values[registry.VALIDATION_METRIC] = metrics.validation_score(scores)
            self.validated_at.add(step)
        mlflow.log_metrics(values, step=step)
        if self.log is not None:
            self.log(step, record)


def log_final_scores(validation: dict[str, float], seconds: float, steps: int, validated_at: set[int]) -> float:
    """Log the final validation scores (unless the last step logged them) and the training time; the score."""
    import mlflow

    score = metrics.validation_score(validation)
    final = {f"val_{k}": float(v) for k, v in validation.items()} | {registry.VALIDATION_METRIC: score}
    mlflow.log_metrics({**({} if steps in validated_at else final), "train_seconds": seconds}, step=steps)
    return score


def choose_and_record_protocol(warehouse: Warehouse, inputs: TrainingInputs, model: LocDiffModel) -> Protocol:
    """Choose the test-time protocol on validation, save it with the checkpoint and log it (params, the
    whole candidate grid, and its calibration on validation as metrics)."""
    import mlflow

    protocol, grid = choose_test_protocol(warehouse, inputs.dataset, model, inputs.embeddings_manifest)
    model.metadata["protocol"] = protocol.to_dict()
    with writing(inputs.model_dir, "the model checkpoint"):
        model.save(inputs.model_dir)
    mlflow.log_params(
        {
            "protocol_rule": protocol.rule,
            "protocol_views": protocol.views,
            "protocol_samples": protocol.samples,
            "protocol_plain_weight": "uniform" if protocol.plain_weight is None else protocol.plain_weight,
        }
    )
    calibration = {
        "val_coverage_90": protocol.validation_coverage,
        "val_spread_error_correlation": protocol.validation_spread_error_correlation,
    }
    mlflow.log_metrics({name: value for name, value in calibration.items() if value is not None and np.isfinite(value)})
    mlflow.log_dict({"chosen": protocol.to_dict(), "candidates": grid}, "protocol_choice.json")
    return protocol


def log_and_register_model(
    warehouse: Warehouse,
    inputs: TrainingInputs,
    score: float,
    protocol: Protocol,
    encoder_checkpoint: str | None,
    run_id: str,
) -> registry.Registration:
    """Log the checkpoint as a pyfunc of data only (loaded by the installed package's loader module:
    nothing pickled, no code in the artifact) with the digests of its data, its signature and input
    example; register it and move `champion` if it beats the current one."""
    import tempfile

    import mlflow
    import pandas as pd

    from locdiff_pipeline.tracking import pyfunc_model

    encoder = inputs.encoder
    (inputs.model_dir / "encoder_note.txt").write_text(encoder_note(encoder) + "\n")
    digests = registry.checkpoint_digests(inputs.model_dir)
    weights = encoder_checkpoint if encoder.get("is_pretrained") and encoder_checkpoint else None
    servable = not encoder.get("is_pretrained") or encoder_checkpoint  # can the served model embed images?
    example = _example_image(warehouse, inputs.dataset) if servable else None
    with tempfile.TemporaryDirectory(prefix="locdiff-model-") as staging:
        data = pyfunc_model.stage_model_data(inputs.model_dir, weights, Path(staging) / "data")
        info = mlflow.pyfunc.log_model(
            name=MODEL_DIR,
            loader_module=pyfunc_model.LOADER_MODULE,
            data_path=str(data),
            model_config={pyfunc_model.DIGESTS_CONFIG: pyfunc_model.data_digests(data)},
            signature=pyfunc_model.signature(),
            input_example=None if example is None else pd.DataFrame({"image": [example]}),
            pip_requirements=_pip_requirements(),
        )
    registration = registry.register_and_promote(info.model_uri, run_id, score, digests)
    description = (
        f"LocDiff trained on `{inputs.dataset}` (input fingerprint {inputs.key}); validation score {score:.4f} "
        f"(mean of the five accuracies); test-time protocol: {protocol.describe()}. {encoder_note(encoder)}"
    )
    registry.describe_version(registration.version, description)
    registry.tag_version(
        registration.version,
        {"dataset": inputs.dataset, "encoder": str(encoder.get("label", "")), "protocol": protocol.describe()},
    )
    mlflow.set_tag("mlflow.note.content", f"Model version {registration.version}: {description}")
    mlflow.set_tag("registered_version", str(registration.version))
    mlflow.set_tag("champion_after_run", str(registration.champion_version))
    return registration


def _fail_stale_runs(key: str) -> None:
    """Mark runs of this fingerprint left RUNNING by a crash as FAILED (the retry resumes their checkpoint):
    only runs whose process is gone; a live run of another process is never touched."""
    import mlflow

    stale = mlflow.search_runs(
        experiment_names=[registry.EXPERIMENT],
        filter_string=f"tags.locdiff_fingerprint = '{key}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    for run in stale:
        if owner_is_gone(run.data.tags):
            client.set_terminated(run.info.run_id, status="FAILED")


def _example_image(warehouse: Warehouse, dataset: str) -> bytes | None:
    """One validation image's bytes from the dataset: the registry's input example (what a request carries)."""
    for shard in shards.dataset_shards(warehouse, dataset):
        for batch in warehouse.iter_batches(IMAGES_TABLE, 64, ["split", "image_bytes"], dataset=dataset, shard=shard):
            for row in batch.to_pylist():
                if row["split"] == "val" and row["image_bytes"]:
                    return row["image_bytes"]
    return None


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "numpy", "pandas", "mlflow", "open_clip_torch")] + [
        "locdiff-pipeline"
    ]


LATEST = "models/latest.json"


def read_latest(warehouse: Warehouse) -> dict:
    """The model the downstream assets use: version, MLflow run id, checkpoint folder, encoder. The
    checkpoint is recorded relative to the warehouse, so a moved project folder still finds it."""
    path = warehouse.root / LATEST
    if not path.is_file():
        raise FileNotFoundError(f"no trained model recorded at {path}: materialize locdiff_model first")
    latest = json.loads(path.read_text())
    latest["checkpoint"] = str(warehouse.root / latest["checkpoint"])  # an absolute path stays as it is
    return latest


def _relative_to(path: Path, root: Path) -> str:
    return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else str(path)


def write_latest(warehouse: Warehouse, model: TrainedModel, dataset: str) -> None:
    """Record the model the downstream assets should use and the dataset it was trained on (atomically)."""
    path = warehouse.root / LATEST
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(
        json.dumps(
            {
                "version": model.version,
                "run_id": model.run_id,
                "checkpoint": _relative_to(model.checkpoint, warehouse.root),
                "encoder": model.encoder,
                "training_dataset": dataset,
            },
            indent=2,
        )
    )
    temporary.replace(path)
