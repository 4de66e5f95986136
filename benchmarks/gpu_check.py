"""One GPU check, one command (under 8 minutes on one GPU): what the project does on CUDA, beside the CPU.

    python benchmarks/gpu_check.py                    # on a machine with CUDA
    python benchmarks/gpu_check.py --device cpu --quick   # a smoke run of the same code on a CPU

Prints: paper-sized training steps/s (L = 40, CS-UNet 2048-1024-512, batch 1024, 8,192 anchors;
bfloat16 autocast on CUDA) with the CPU figure beside it; embedding images/s for ViT-B-32 and ViT-L-14
(seeded init: speed does not depend on the weights) through the image_embeddings asset's path (640 x 480
JPEG bytes -> decode -> views -> encoder), in process and with decoding workers, against the encoder's
forward pass alone on pre-decoded tensors; decode vectors/s at L = 20 and 40 with its defaults and by
the grid and anchor searches against the bare matrix product on the same device; exact gallery search on the device
against the CPU's faiss IVF index on 1 M x 512 rows; then a short end-to-end
`locdiff run` on the device in a temporary project, with its wall time and table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embedding import measure  # noqa: E402
from bench_model import training_steps_per_second  # noqa: E402
from bench_retrieval import noisy_queries, synthetic_gallery  # noqa: E402
from bench_shdd import decode_timing  # noqa: E402

from locdiff_pipeline.encoders.view_workers import default_workers  # noqa: E402
from locdiff_pipeline.method import retrieval, shdd, sphere  # noqa: E402
from locdiff_pipeline.method.config import LocDiffConfig  # noqa: E402


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

    print("\nEmbedding 640 x 480 JPEGs (seeded-init weights): the asset's path vs the forward pass alone")
    workers = max(1, default_workers(args.device))
    print(f"{'encoder':>10} {'forward img/s':>14} {'in-process img/s':>17} {f'{workers} workers img/s':>17}")
    for model_name in ("ViT-B-32",) if args.quick else ("ViT-B-32", "ViT-L-14"):
        rates = measure(model_name, args.device, 16 if args.quick else 512, 1, [0, workers], 128)
        print(
            f"{model_name:>10} {rates['forward']:>14.1f} {rates[0]:>11.1f} ({rates[0] / rates['forward']:.2f}x) "
            f"{rates[workers]:>11.1f} ({rates[workers] / rates['forward']:.2f}x)"
        )

    print("\nDecode vs the bare matrix product + argmax against 100,000 anchors, same device")
    print(
        f"{'L':>4} {'matmul vec/s':>13} {'default':>10} {'anchors path':>13} {'grid path':>10} {'default / matmul':>17}"
    )
    for L in (20, 40):
        vectors = 500 if args.quick else 10_000
        r = {name: vectors / seconds for name, seconds in decode_timing(L, vectors, 100_000, args.device).items()}
        print(
            f"{L:>4} {r['matmul']:>13,.0f} {r['default']:>10,.0f} {r['anchors']:>13,.0f} {r['grid']:>10,.0f} "
            f"{r['default'] / r['matmul']:>16.2f}x ({shdd.default_coarse_search(args.device, L)})"
        )

    print("\nGallery search: exact on the device vs the CPU's faiss IVF index (nprobe 32), same gallery")
    rows = 50_000 if args.quick else 1_000_000
    gallery = synthetic_gallery(rows, 512, max(100, rows // 50))
    queries = noisy_queries(gallery, 2000)
    exact = retrieval.exact_top_k(gallery, queries[:200], 1)[:, 0]
    rates = {}
    for name, options in (("device exact", {"device": args.device}), ("cpu IVF", {"exact_max_rows": 0})):
        searcher = retrieval.Retriever(gallery, **options)
        start = time.perf_counter()
        found = searcher.search(queries, 1)[:, 0]
        rates[name] = (len(queries) / (time.perf_counter() - start), float(np.mean(found[:200] == exact)))
    print(f"{rows:,} x 512 rows, 2,000 queries")
    for name, (rate, recall) in rates.items():
        print(f"{name:>14} {rate:>10,.0f} queries/s  recall@1 {recall:.3f}")

    print("\nEnd to end")
    end_to_end(args.device, args.quick)


if __name__ == "__main__":
    main()
