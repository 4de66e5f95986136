"""`locdiff predict`: where image files were taken, from a registered model or a checkpoint folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from locdiff_pipeline.cli.arguments import at_least


def add_predict(commands, common: argparse.ArgumentParser) -> None:
    pred = commands.add_parser(
        "predict", help="predict the location of image files; CSV, JSON or GeoJSON on stdout", parents=[common]
    )
    pred.add_argument(
        "--model", required=True, help="checkpoint folder or MLflow reference, e.g. models:/locdiff@champion"
    )
    pred.add_argument(
        "--views", type=at_least(1), default=None, help="test-time views (default: the model's, chosen on validation)"
    )
    pred.add_argument("--rule", default=None, help="mixture or centre: how views combine (default: the model's)")
    pred.add_argument(
        "--samples",
        type=at_least(1),
        default=None,
        help="diffusion samples per view (default: the model's, chosen on validation)",
    )
    pred.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    pred.add_argument(
        "--encoder-checkpoint", help="the encoder checkpoint file, when the model was trained on real weights"
    )
    pred.add_argument("--device", default=None)
    pred.add_argument(
        "--top-k",
        type=at_least(1),
        default=None,
        help="print the K most likely places per image: rank, lat, lon, probability",
    )
    pred.add_argument(
        "--format",
        choices=("csv", "json", "geojson"),
        default="csv",
        help="csv, json, or geojson (one Point Feature per image, ranked places as properties; default %(default)s)",
    )
    pred.add_argument("images", nargs="+", type=Path)
    pred.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from locdiff_pipeline.predict import FORMATS, predict

    result = predict(
        args.images,
        args.model,
        views=args.views,
        rule=args.rule,
        samples=args.samples,
        seed=args.seed,
        encoder_checkpoint=args.encoder_checkpoint,
        device=args.device,
        top_k=args.top_k,
    )
    sys.stdout.write(FORMATS[args.format](result).rstrip("\n") + "\n")
    for reason in result.errors.values():
        print(f"error: {reason}", file=sys.stderr)
    return 1 if result.errors else 0
