"""Training loop: DDPM on target-space vectors conditioned on image embeddings, resumable.

Every step draws its randomness from a generator seeded by (seed, step), so a run resumed from its
last checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from locdiff_pipeline.method import distributed, metrics
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.devices import resolve_device, seed_everything, step_generator
from locdiff_pipeline.method.model import LocDiffModel

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"

LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class Validation:
    """Held-out plain-view embeddings and true coordinates, scored during training."""

    embeddings: np.ndarray
    lat: np.ndarray
    lon: np.ndarray


class RowStream(Protocol):
    """Training rows read in bounded memory (data.training_stream.EmbeddingStream): batches of embeddings
    with their coordinates, batch k a pure function of k so that a resumed run continues exactly."""

    rows: int
    batch_size: int

    def batches(self, start_batch: int = 0) -> Iterator: ...

    def condition_statistics(self) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TrainResult:
    model: LocDiffModel
    steps_run: int
    resumed_from: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    validation: dict[str, float] | None = None


def evaluate(model: LocDiffModel, validation: Validation, seed: int = 0) -> dict[str, float]:
    prediction = model.predict_embeddings(validation.embeddings, samples=1, seed=seed)
    return metrics.accuracy(validation.lat, validation.lon, prediction.lat, prediction.lon)


def cosine_learning_rate(config: LocDiffConfig, step: int) -> float:
    """Cosine decay from the configured rate to zero; a pure function of the step, so resuming needs no
    scheduler state."""
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(step, config.steps) / max(config.steps, 1)))


def _save_state(checkpoint_dir: Path, model: LocDiffModel, optimizer: torch.optim.Optimizer, step: int) -> None:
    model.save(checkpoint_dir / MODEL_DIR)
    temporary = checkpoint_dir / f".{STATE_FILE}.{os.getpid()}"
    try:
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, temporary)
        os.replace(temporary, checkpoint_dir / STATE_FILE)
    except BaseException:  # a full disk, an interrupt: leave no half-written file behind
        temporary.unlink(missing_ok=True)
        raise


def _on_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class InMemoryBatches:
    """Training rows held on the device; each step draws a batch with replacement from the step's generator."""

    def __init__(self, embeddings: np.ndarray, targets: np.ndarray, model: LocDiffModel, device: torch.device):
        _check_arrays(embeddings, targets, model.space.dim, model.config)
        self.batch_size = model.config.batch_size
        self.cond = torch.tensor(np.asarray(embeddings, dtype=np.float32), device=device)
        self.x0 = torch.tensor(np.asarray(targets, dtype=np.float32), device=device) * model.space.scale

    def fit_condition_statistics(self, model: LocDiffModel, world: distributed.World) -> None:
        model.net.set_condition_statistics(self.cond)

    def next(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled targets, conditions) of one batch."""
        index = torch.randint(0, self.x0.shape[0], (self.batch_size,), generator=generator, device=self.x0.device)
        return self.x0[index], self.cond[index]

    def close(self) -> None:
        pass


class StreamedBatches:
    """Training rows streamed in bounded memory; targets are computed on the device from each batch's
    coordinates. Batch k is a pure function of k, so a resumed run continues exactly."""

    def __init__(self, stream: RowStream, model: LocDiffModel, device: torch.device, start_step: int):
        if stream.batch_size != model.config.batch_size:
            raise ValueError(
                f"the stream cuts batches of {stream.batch_size} rows, the config asks {model.config.batch_size}"
            )
        self.stream, self.space, self.device = stream, model.space, device
        self.embed_dim = model.config.embed_dim
        self.batches = stream.batches(start_step)

    def fit_condition_statistics(self, model: LocDiffModel, world: distributed.World) -> None:
        if world.is_main:  # the other ranks receive rank 0's buffers when DDP wraps the net
            model.net.set_condition_moments(*(torch.from_numpy(m) for m in self.stream.condition_statistics()))

    def next(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(self.batches)
        cond = _on_device(batch.embedding, self.device)
        if cond.shape[1] != self.embed_dim:
            raise ValueError(f"config.embed_dim={self.embed_dim}, the stream's embeddings have {cond.shape[1]}")
        return self.space.targets_on(batch.lat, batch.lon, self.device) * self.space.scale, cond

    def close(self) -> None:
        self.batches.close()  # stops the stream's reader thread


def train(
    config: LocDiffConfig,
    embeddings: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    *,
    stream: RowStream | None = None,
    checkpoint_dir: str | Path | None = None,
    validation: Validation | None = None,
    encoder: dict | None = None,
    log: LogFn | None = None,
    log_every: int = 50,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) a LocDiff model on (N, embed_dim) embeddings and (N, dim) unscaled targets held in
    memory (batches drawn with replacement), or on a `stream` of (embedding, lat, lon) rows whose targets
    are computed on the training device each step.

    With a checkpoint_dir, the model and optimizer are saved every `checkpoint_every` steps and at the
    end, and a later call resumes from the last save. `stop_after` ends the call early at that step
    (as a crash would), for tests of resuming.
    """
    started = time.perf_counter()
    world = distributed.current_world()
    device = distributed.init(world, resolve_device(config.device))
    seed_everything(config.seed)
    model = LocDiffModel(config, encoder, device=device)
    if (stream is None) == (embeddings is None and targets is None):
        raise ValueError("train on in-memory embeddings and targets, or on a stream: one of the two")
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    checkpoint_path = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_step = _resume(checkpoint_path, model, optimizer, device)
    if stream is None:
        batches = InMemoryBatches(embeddings, targets, model, device)
    else:
        batches = StreamedBatches(stream, model, device, start_step)
    if start_step == 0:
        batches.fit_condition_statistics(model, world)
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    try:
        history = _run_steps(
            model,
            batches,
            optimizer,
            world,
            device,
            range(start_step, end),
            validation,
            checkpoint_path,
            log,
            log_every,
        )
    finally:
        batches.close()
    model.net.eval()
    final = _final_validation(model, validation, history, end) if world.is_main else None
    return TrainResult(model, end - start_step, start_step, time.perf_counter() - started, history, final)


def _resume(
    checkpoint_path: Path | None, model: LocDiffModel, optimizer: torch.optim.Optimizer, device: torch.device
) -> int:
    """Load the model and optimizer of an earlier, interrupted call of the same config; the step to start at."""
    if checkpoint_path is None or not (checkpoint_path / STATE_FILE).is_file():
        return 0
    state = torch.load(checkpoint_path / STATE_FILE, map_location=device, weights_only=True)
    loaded = LocDiffModel.load(checkpoint_path / MODEL_DIR, device=device)
    if loaded.config != model.config:
        raise ValueError(f"{checkpoint_path} holds a run with a different config; use a new checkpoint folder")
    model.net.load_state_dict(loaded.net.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _run_steps(
    model: LocDiffModel,
    batches: InMemoryBatches | StreamedBatches,
    optimizer: torch.optim.Optimizer,
    world: distributed.World,
    device: torch.device,
    steps: range,
    validation: Validation | None,
    checkpoint_path: Path | None,
    log: LogFn | None,
    log_every: int,
) -> list[dict[str, float]]:
    """The training loop over `steps`; returns the logged records (loss, learning rate, validation)."""
    config = model.config
    trainable = distributed.wrap(model.net, world, device)
    history: list[dict[str, float]] = []
    running: list[float] = []
    model.net.train()
    for step in steps:
        # 1. this step's learning rate and randomness (each rank its own batches)
        learning_rate = cosine_learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        generator = step_generator(config.seed + 7919 * world.rank, step, device)
        # 2. a batch, and one optimiser step on its loss
        x0, cond = batches.next(generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model.diffusion.training_loss(trainable, x0, cond, model.space, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), 1.0)
        optimizer.step()
        running.append(float(loss.detach()))
        # 3. log the mean loss, validating on rank 0 every eval_every steps
        done = step + 1
        evaluate_now = (
            world.is_main and validation is not None and (done % config.eval_every == 0 or done == config.steps)
        )
        if done % log_every == 0 or done == steps.stop or evaluate_now:
            record = {"step": done, "loss": float(np.mean(running)), "lr": learning_rate}
            running = []
            if evaluate_now:
                record.update({f"val_{k}": v for k, v in evaluate(model, validation).items()})
                model.net.train()
            history.append(record)
            if log is not None and world.is_main:
                log(done, record)
        # 4. checkpoint
        if checkpoint_path is not None and (done % config.checkpoint_every == 0 or done == steps.stop):
            if world.is_main:
                _save_state(checkpoint_path, model, optimizer, done)
            distributed.barrier(world)
    return history


def _final_validation(
    model: LocDiffModel, validation: Validation | None, history: list[dict[str, float]], end: int
) -> dict[str, float] | None:
    """The validation scores of a finished run: those logged at its last step, else evaluated now."""
    if validation is None or end != model.config.steps:
        return None
    last = history[-1] if history and history[-1]["step"] == end else {}
    logged = {k.removeprefix("val_"): v for k, v in last.items() if k.startswith("val_")}
    return logged or evaluate(model, validation)


def _check_arrays(embeddings: np.ndarray, targets: np.ndarray, dim: int, config: LocDiffConfig) -> None:
    if embeddings is None or targets is None or embeddings.shape[0] != targets.shape[0] or embeddings.shape[0] == 0:
        rows = [None if a is None else a.shape[0] for a in (embeddings, targets)]
        raise ValueError(f"need matching, non-empty embeddings and targets, got {rows[0]} and {rows[1]} rows")
    if targets.shape[1] != dim:
        raise ValueError(
            f"targets have {targets.shape[1]} columns, the {config.representation} space of L={config.L} needs {dim}"
        )
