"""Ablation on the bundled data: SHDD-KL (both directions, three temperatures) vs SHDD-MSE vs raw xyz.

    python benchmarks/ablation.py [--steps 3000] [--root /tmp/locdiff-ablation] [--count 3000] [--only tau]

Materializes the cached upstream assets (ingest, embeddings, SHDD tables) of the bundled catalog in
--root, then trains six variants (SHDD with the KL loss in both directions and at three temperatures,
SHDD with MSE, raw unit vectors with MSE) on the same training embeddings, with the same network, seed
and step budget; each variant's test-time protocol (views, combination rule) is chosen on the
validation split, and each is scored with it on the leak-free held-out benchmark (no map pixel shared
with training). Prints the validation score (what chooses a default) beside the benchmark accuracies.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--root", default="/tmp/locdiff-ablation")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--L", type=int, default=20)
    parser.add_argument("--encoder", default="ViT-S-32")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only the variants whose name contains one of these strings"
    )
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["LOCDIFF_HOME"] = str(root)

    from locdiff_pipeline.data import shards
    from locdiff_pipeline.data.bundled import HELDOUT
    from locdiff_pipeline.defs.assets.features import clip_embeddings, shdd_tables
    from locdiff_pipeline.defs.assets.ingest import image_metadata, images
    from locdiff_pipeline.defs.graph_run import materialize_all
    from locdiff_pipeline.defs.resources import DatasetsResource, EncoderResource, TrainingResource, WarehouseResource
    from locdiff_pipeline.method import metrics, shdd
    from locdiff_pipeline.method.config import LocDiffConfig
    from locdiff_pipeline.method.training import train
    from locdiff_pipeline.steps.clip_embeddings import EMBEDDINGS_TABLE, load_labelled
    from locdiff_pipeline.steps.locdiff_model import choose_test_protocol, training_data

    resources = {
        "warehouse": WarehouseResource(root=str(root)),
        "datasets": DatasetsResource(bundled_count=args.count),
        "encoder": EncoderResource(model_name=args.encoder),
        "training": TrainingResource(L=args.L, shdd_degrees=[args.L]),
    }
    assert materialize_all(resources, selection=[image_metadata, images, clip_embeddings, shdd_tables]).success
    store = resources["warehouse"].get()
    dataset = resources["datasets"].training_name()
    training_manifest = shards.manifest(store, EMBEDDINGS_TABLE, dataset)
    views = shards.manifest(store, EMBEDDINGS_TABLE, HELDOUT)["test_views"]
    test = load_labelled(store, HELDOUT, "test", views=views)
    test_ids, test_embeddings, true_lat, true_lon = test.ids, test.embeddings, test.lat, test.lon
    embed_dim = test_embeddings.shape[-1]
    base = LocDiffConfig(L=args.L, embed_dim=embed_dim, steps=args.steps, eval_every=10**9, checkpoint_every=10**9)
    tau = shdd.default_tau(args.L)
    variants = {
        "SHDD + KL inverse (LocDiff)": base,
        "SHDD + KL forward": base.with_(kl_direction="forward"),
        f"SHDD + KL inverse, tau x0.5 ({tau / 2:.3f})": base.with_(tau=tau / 2),
        f"SHDD + KL inverse, tau x2 ({tau * 2:.3f})": base.with_(tau=tau * 2),
        "SHDD + MSE": base.with_(loss="mse"),
        "raw xyz + MSE": base.with_(representation="xyz", loss="mse"),
    }
    print(
        f"training on {dataset}, validation score = mean of the five accuracies on its val split; test: {HELDOUT} "
        f"({len(test_ids)} images, {views} views available); encoder {args.encoder}, L={args.L}, {args.steps} steps"
    )
    header = (
        f"{'variant':<40} {'protocol (val)':<28} {'val score':>9} "
        + " ".join(f"{str(t) + 'km':>8}" for t in metrics.THRESHOLDS_KM)
        + f" {'median km':>10} {'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    if args.only:
        variants = {name: config for name, config in variants.items() if any(key in name for key in args.only)}
    for name, config in variants.items():
        embeddings, targets = training_data(store, dataset, config)
        started = time.perf_counter()
        result = train(config, embeddings, targets, log_every=10**9)
        seconds = time.perf_counter() - started
        chosen, _ = choose_test_protocol(store, dataset, result.model, training_manifest)
        drawn = result.model.sample(test_embeddings[:, : chosen.views])
        prediction = result.model.combine(drawn, chosen.rule, plain_weight=chosen.plain_weight)
        scores = metrics.accuracy(true_lat, true_lon, prediction.lat, prediction.lon)
        lines.append(
            f"{name:<40} {chosen.describe():<28} {chosen.validation_score:>9.4f} "
            + " ".join(f"{100 * scores[metrics.accuracy_column(t)]:>7.1f}%" for t in metrics.THRESHOLDS_KM)
            + f" {scores['median_km']:>10.0f} {seconds:>8.0f}"
        )
        print(lines[-1], flush=True)
    print("\n".join(["", *lines]))


if __name__ == "__main__":
    main()
