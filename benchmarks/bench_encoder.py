"""The scene-descriptor encoder's throughput against open_clip ViT-S-32's forward pass, in one run.

    python benchmarks/bench_encoder.py [--images 512] [--device cpu] [--clip-model ViT-S-32]

Two image sizes: the bundled windows (96 x 96 JPEGs) and photos (640 x 480 JPEGs). For the descriptors, the
whole path the embedding asset runs (JPEG bytes -> decode -> preprocess -> descriptors, `embed_row_batches`
with decoding in this process); for ViT-S-32 (seeded init: the weights do not change its speed) the same
path, and its forward pass alone on pre-decoded tensors (its ceiling). Each as images/s and as a ratio to
ViT-S-32's forward pass measured in the same run.
"""

from __future__ import annotations

import argparse
import io

import torch
from bench_embedding import embedding_path, forward_only, photo_jpegs
from PIL import Image

from locdiff_pipeline.encoders.encoder_spec import DESCRIPTORS, EncoderSpec
from locdiff_pipeline.encoders.image_encoder import build_encoder


def window_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """96 x 96 JPEGs, the size of the bundled windows."""
    out = []
    for photo in photo_jpegs(count, seed):
        image = Image.open(io.BytesIO(photo)).resize((96, 96), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clip-model", default="ViT-S-32")
    parser.add_argument("--batch-rows", type=int, default=256)
    args = parser.parse_args()
    encoders = {
        "descriptors": build_encoder(EncoderSpec(DESCRIPTORS), device=args.device),
        args.clip_model: build_encoder(EncoderSpec(args.clip_model), device=args.device),
    }
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.images} images per size")
    print(f"{'images':>10} {'encoder':>12} {'path':>22} {'images/s':>9} {'vs ViT forward':>15}")
    for size, jpegs in (("96 x 96", window_jpegs(args.images)), ("640 x 480", photo_jpegs(args.images))):
        for encoder in encoders.values():  # warm-up: lazy initialisation, caches, allocator
            forward_only(encoder, jpegs[:32], 1)
        baseline = forward_only(encoders[args.clip_model], jpegs, 1)
        rows = [
            (args.clip_model, "forward only", baseline),
            (args.clip_model, "whole path", embedding_path(encoders[args.clip_model], jpegs, 1, 0, args.batch_rows)),
            ("descriptors", "descriptors only", forward_only(encoders["descriptors"], jpegs, 1)),
            ("descriptors", "whole path", embedding_path(encoders["descriptors"], jpegs, 1, 0, args.batch_rows)),
        ]
        for name, path, rate in rows:
            print(f"{size:>10} {name:>12} {path:>22} {rate:>9.1f} {rate / baseline:>14.2f}x")


if __name__ == "__main__":
    main()
