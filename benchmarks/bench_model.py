"""LocDiff training and inference throughput on this machine's devices, against a baseline in the same run.

    python benchmarks/bench_model.py [--steps 60] [--images 256] [--device cpu|cuda|auto|all]

Training: optimiser steps/s of the default model (L=20, CS-UNet 512-256-128, batch 256, KL over 2048
anchors) and, as the baseline, of the same network trained with plain coefficient MSE (no anchors),
so the ratio shows what the SHDD KL loss costs. Inference: images/s for the full protocol (16 views x
1 sample, 50 DDIM steps, decode, spherical centre) and for the DDIM sampling alone. Embeddings are
random unit vectors: throughput does not depend on their content.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from locdiff_pipeline.method import shdd, sphere
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.devices import resolve_device
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.method.training import train


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work, so a timer measures it (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def training_steps_per_second(config: LocDiffConfig, embeddings: np.ndarray, targets: np.ndarray, steps: int) -> float:
    warm = train(config.with_(steps=5), embeddings, targets, log_every=10**9)  # compile/allocate once
    del warm
    sync(resolve_device(config.device))
    started = time.perf_counter()
    train(config.with_(steps=steps), embeddings, targets, log_every=10**9)
    sync(resolve_device(config.device))
    return steps / (time.perf_counter() - started)


def inference_images_per_second(model: LocDiffModel, images: int, views: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(images, views, model.config.embed_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    model.predict_embeddings(embeddings[:8])  # warm-up
    sync(model.device)
    started = time.perf_counter()
    model.predict_embeddings(embeddings)
    sync(model.device)
    full = images / (time.perf_counter() - started)
    started = time.perf_counter()
    model.sample_vectors(embeddings.reshape(-1, model.config.embed_dim))
    sync(model.device)
    sampling_only = images / (time.perf_counter() - started)
    return full, sampling_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--train-rows", type=int, default=4096)
    parser.add_argument("--device", default="all", help="cpu, cuda, auto, or all (cpu and, when present, cuda)")
    args = parser.parse_args()
    devices = (
        ["cpu", "cuda"]
        if args.device == "all" and torch.cuda.is_available()
        else (["cpu"] if args.device == "all" else [args.device])
    )
    rng = np.random.default_rng(0)
    lat, lon = sphere.random_points(args.train_rows, rng)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU")
    )
    print(f"{'device':<8} {'what':<44} {'rate':>12} {'baseline':>12} {'ratio':>7}")
    for name in devices:
        device = resolve_device(name)
        config = LocDiffConfig(embed_dim=512, device=str(device), eval_every=10**9, checkpoint_every=10**9)
        embeddings = rng.normal(size=(args.train_rows, config.embed_dim)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        targets = shdd.encode(lat, lon, config.L).astype(np.float32)
        kl = training_steps_per_second(config, embeddings, targets, args.steps)
        mse = training_steps_per_second(config.with_(loss="mse"), embeddings, targets, args.steps)
        print(
            f"{device.type:<8} {'train steps/s, KL loss (baseline: MSE loss)':<44} {kl:>12.2f} {mse:>12.2f} "
            f"{kl / mse:>7.2f}"
        )
        model = LocDiffModel(config, device=device)
        full, sampling = inference_images_per_second(model, args.images, args.views)
        print(
            f"{device.type:<8} {f'images/s, {args.views} views (baseline: sampling only)':<44} {full:>12.2f} "
            f"{sampling:>12.2f} {full / sampling:>7.2f}"
        )


if __name__ == "__main__":
    main()
