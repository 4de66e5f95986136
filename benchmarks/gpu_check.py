"""One GPU check, one command (under 8 minutes on one GPU): what the project does on CUDA, beside the CPU.

    python benchmarks/gpu_check.py                    # on a machine with CUDA
    python benchmarks/gpu_check.py --device cpu --quick   # a smoke run of the same code on a CPU

Prints: paper-sized training steps/s (L = 40, CS-UNet 2048-1024-512, batch 1024, 8,192 anchors;
bfloat16 autocast on CUDA) with the CPU figure beside it; embedding images/s for ViT-B-32 and ViT-L-14
(seeded init: speed does not depend on the weights) through the whole path (640 x 480 JPEG bytes ->
decode -> preprocess -> encoder) against the encoder's forward pass alone on pre-decoded tensors;
decode vectors/s at L = 20 and 40 against the bare matrix product on the same device; then a short
end-to-end `locdiff run` on the device in a temporary project, with its wall time and table.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import training_steps_per_second  # noqa: E402

from locdiff_pipeline.data.image_encoder import EncoderSpec, ImageEncoder  # noqa: E402
from locdiff_pipeline.data.image_io import decode_image  # noqa: E402
from locdiff_pipeline.method import shdd, sphere  # noqa: E402
from locdiff_pipeline.method.config import LocDiffConfig  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training(device: str, steps: int, quick: bool) -> float:
    overrides = dict(steps=steps, device=device, eval_every=10**9, checkpoint_every=10**9)
    if quick:
        overrides |= dict(L=10, hidden_dims=(64, 32), batch_size=64, anchors_per_step=256)
    config = LocDiffConfig.paper_sized(**overrides)
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(8 * config.batch_size, config.embed_dim)).astype(np.float32)
    lat, lon = sphere.random_points(len(embeddings), rng)
    targets = shdd.encode(lat, lon, config.L, dtype=np.float32)
    return training_steps_per_second(config, embeddings, targets, steps)


def photo_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Photo-sized JPEGs (640 x 480) with smooth random content, so decoding costs what a photo costs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def embedding(model_name: str, device: str, images: int) -> tuple[float, float]:
    """(whole path images/s, forward-only images/s) for one encoder on `device`."""
    encoder = ImageEncoder(EncoderSpec(model_name, None, 0), device=device)
    jpegs = photo_jpegs(images)
    encoder.embed([decode_image(jpegs[0], "warm-up")])
    _sync(encoder.device)
    start = time.perf_counter()
    encoder.embed([decode_image(data, f"photo {i}") for i, data in enumerate(jpegs)])
    _sync(encoder.device)
    whole = images / (time.perf_counter() - start)
    pixels = [encoder.preprocess(decode_image(data, "photo")) for data in jpegs]
    start = time.perf_counter()
    encoder._embed_tensors(pixels)
    _sync(encoder.device)
    return whole, images / (time.perf_counter() - start)


def decoding(L: int, device: str, vectors: int, anchors: int) -> tuple[float, float]:
    """(decode vectors/s, bare matrix product vectors/s) on `device`, both against the same `anchors`."""
    rng = np.random.default_rng(L)
    lat, lon = sphere.random_points(vectors, rng)
    coeffs = torch.tensor(shdd.encode(lat, lon, L), dtype=torch.float32, device=device)
    coeffs += 0.3 / np.sqrt(4 * np.pi) * torch.randn_like(coeffs)
    table = shdd.anchor_table(*sphere.fibonacci_lattice(anchors), L, device=device)
    anchor_table = table.table
    _sync(torch.device(device))
    start = time.perf_counter()
    block = max(1, (1 << 25) // anchors)
    for i in range(0, vectors, block):
        (coeffs[i : i + block] @ anchor_table.T).argmax(dim=1)
    _sync(torch.device(device))
    matmul = vectors / (time.perf_counter() - start)
    start = time.perf_counter()
    shdd.decode(coeffs, L, anchors=table)  # the same anchors as the matrix product: like for like
    _sync(torch.device(device))
    return vectors / (time.perf_counter() - start), matmul


def end_to_end(device: str, quick: bool) -> None:
    locdiff = Path(sys.executable).with_name("locdiff")
    with tempfile.TemporaryDirectory() as home:
        sizes = ["--count", "300", "--benchmark-count", "40", "--steps", "60"] if quick else ["--steps", "1000"]
        command = [str(locdiff), "run", "--device", device, *sizes]
        start = time.perf_counter()
        done = subprocess.run(
            command,
            env={**os.environ, "LOCDIFF_HOME": home, "LOCDIFF_PROGRESS": "off"},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        table = [line for line in done.stdout.splitlines() if line.strip()]
        print(f"`locdiff run --device {device} {' '.join(sizes)}`: exit {done.returncode}, {seconds:.0f} s")
        print("\n".join(table[-30:]) if done.returncode == 0 else done.stderr[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that the script runs")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --quick to check the script itself")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, device {args.device} ({name}), CPU threads {torch.get_num_threads()}")

    steps = 10 if args.quick else 200
    on_device = training(args.device, steps, args.quick)
    on_cpu = training("cpu", 5 if args.quick else 10, args.quick) if args.device != "cpu" else on_device
    print("\nTraining, paper-sized" + (" (quick: small)" if args.quick else ""))
    print(f"{'device':>8} {'steps/s':>9}\n{args.device:>8} {on_device:>9.2f}\n{'cpu':>8} {on_cpu:>9.2f}")
    print(f"ratio {args.device} / cpu: {on_device / on_cpu:.1f}x")

    print("\nEmbedding 640 x 480 JPEGs (seeded-init weights), whole path vs forward pass alone")
    print(f"{'encoder':>10} {'path img/s':>11} {'forward img/s':>14} {'path / forward':>15}")
    for model_name in ("ViT-B-32",) if args.quick else ("ViT-B-32", "ViT-L-14"):
        whole, forward = embedding(model_name, args.device, 16 if args.quick else 512)
        print(f"{model_name:>10} {whole:>11.1f} {forward:>14.1f} {whole / forward:>14.2f}x")

    print("\nDecode vs the bare matrix product (argmax over the anchors), same device")
    print(f"{'L':>4} {'decode vec/s':>13} {'matmul vec/s':>13} {'decode / matmul':>16}")
    for L in (20, 40):
        decode_rate, matmul_rate = decoding(L, args.device, 500 if args.quick else 10_000, 100_000)
        print(f"{L:>4} {decode_rate:>13,.0f} {matmul_rate:>13,.0f} {decode_rate / matmul_rate:>15.2f}x")

    print("\nEnd to end")
    end_to_end(args.device, args.quick)


if __name__ == "__main__":
    main()
