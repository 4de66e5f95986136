"""The embedding path (JPEG bytes -> decode -> views -> encoder) against the encoder's forward pass alone.

    python benchmarks/bench_embedding.py [--model ViT-S-32] [--images 512] [--views 1] [--device cpu]
                                         [--workers 0 1 ...] [--encoder-threads N]

Images are generated 640 x 480 JPEGs with smooth content (a photo's decoding cost). Measured in one run:
the forward pass alone on pre-decoded, preprocessed tensors (the ceiling), then the project's own
`embed_row_batches` (what the image_embeddings asset runs) with decoding in this process (workers = 0, the
path before #13) and with decoding workers, each as images/s and as a share of the forward-only rate.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from bench_model import sync
from PIL import Image

from locdiff_pipeline.data.image_io import decode_image
from locdiff_pipeline.encoders.encoder_spec import EncoderSpec
from locdiff_pipeline.encoders.image_encoder import ImageEncoder, build_encoder
from locdiff_pipeline.steps.image_embeddings import embed_row_batches


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


def forward_only(encoder: ImageEncoder, jpegs: list[bytes], views: int) -> float:
    """Images/s of the encoder alone on the images' views, decoded and preprocessed beforehand."""
    pixels = [
        view
        for i, data in enumerate(jpegs)
        for view in encoder.views(decode_image(data, f"photo {i}"), f"photo {i}", views)
    ]
    sync(encoder.device)
    start = time.perf_counter()
    encoder.embed_pixels(pixels)
    sync(encoder.device)
    return len(jpegs) / (time.perf_counter() - start)


def embedding_path(encoder: ImageEncoder, jpegs: list[bytes], views: int, workers: int, batch_rows: int) -> float:
    """Images/s of the asset's path, rows of `batch_rows` images as the images table streams them."""
    split = "train" if views == 1 else "val"
    rows = [
        {"image_id": f"photo {i}", "split": split, "lat": 0.0, "lon": 0.0, "image_bytes": data, "source": None}
        for i, data in enumerate(jpegs)
    ]
    batches = [rows[i : i + batch_rows] for i in range(0, len(rows), batch_rows)]
    sync(encoder.device)
    start = time.perf_counter()
    embedded = sum(n for _, n in embed_row_batches(encoder, batches, views, "ground", workers))
    sync(encoder.device)
    assert embedded == len(jpegs)
    return len(jpegs) / (time.perf_counter() - start)


def measure(model_name: str, device: str, images: int, views: int, workers: list[int], batch_rows: int) -> dict:
    """{'forward': img/s, workers: img/s, ...} for one encoder on one device, all in this run."""
    encoder = build_encoder(EncoderSpec(model_name, None, 0), device=device)
    jpegs = photo_jpegs(images)
    encoder.embed_pixels(encoder.views(decode_image(jpegs[0], "warm-up"), "warm-up", 1))
    rates = {"forward": forward_only(encoder, jpegs, views)}
    for count in workers:
        rates[count] = embedding_path(encoder, jpegs, views, count, batch_rows)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-S-32")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--views", type=int, default=1, help="1: training images; 8 or 16: benchmark images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-rows", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--encoder-threads",
        type=int,
        help="torch threads of the encoder (e.g. 1 on a 2-core machine: the encoder keeps one core to itself, as "
        "it keeps a GPU on a GPU machine, and the workers the other)",
    )
    args = parser.parse_args()
    if args.encoder_threads:
        torch.set_num_threads(args.encoder_threads)
    rates = measure(args.model, args.device, args.images, args.views, args.workers, args.batch_rows)
    print(
        f"{args.model} on {args.device} (torch threads {torch.get_num_threads()}), {args.images} JPEGs 640 x 480, "
        f"{args.views} view(s) each, batches of {args.batch_rows}"
    )
    print(f"{'path':>28} {'images/s':>9} {'vs forward only':>16}")
    print(f"{'forward only (pre-decoded)':>28} {rates['forward']:>9.1f} {1.0:>15.2f}x")
    for count in args.workers:
        label = "decode in process" if count == 0 else f"{count} decoding worker(s)"
        print(f"{label:>28} {rates[count]:>9.1f} {rates[count] / rates['forward']:>15.2f}x")


if __name__ == "__main__":
    main()
