"""The paper's claims measured on the bundled data, one command, one table per claim.

    python benchmarks/claims.py [--root /tmp/locdiff-claims] [--only loss L protocol]

Runs the default graph in --root (cached: a project after `locdiff run` is reused as it is), then:

1. methods: LocDiff against LocDiff-H, kNN retrieval, cell classification, regression, chance and the
   constant guess on both bundled benchmarks (the default run's `accuracy` view);
2. loss and representation: SHDD with the KL loss (inverse, the paper's, and forward), SHDD with MSE, raw
   unit vectors with MSE;
3. the degree L: 10, 20, 40;
4. views and samples: the default model under fixed protocols (plain view, one sample; the plain view's
   mixture of 16 samples; the mixture of 8 views; 8 views x 4 samples) beside the one chosen on validation;
5. against memorisation: weight decay, condition dropout and training length, each with the share of 300
   of its own training images it places within 200 km (a memorising model: near 100 %).

Every variant trains on the same training embeddings with the default network, seed and steps, chooses its
test-time protocol on the validation split (the same rule as the pipeline), and is scored on both
benchmarks with it: % within 200 / 750 / 2,500 km, median error, and the share of truths inside the 90 %
region. The validation score (mean of the five accuracies) is printed beside: it is what chooses defaults;
the benchmark columns are never used to choose anything.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

SCALES = (200, 750, 2500)


def row(label: str, extra: str, errors: np.ndarray, regions: np.ndarray | None, seconds: float | None = None) -> str:
    accuracies = " ".join(f"{100 * np.mean(errors <= t):>6.1f}%" for t in SCALES)
    covered = "" if regions is None else f"{100 * np.mean(errors <= regions):.1f}%"
    tail = "" if seconds is None else f" {seconds:>7.0f}"
    return f"{label:<44} {extra:<34} {accuracies} {np.median(errors):>9.0f} {covered:>8}{tail}"


def header(extra: str, timed: bool = False) -> str:
    scales = " ".join(f"{str(t) + 'km':>7}" for t in SCALES)
    text = f"{'':<44} {extra:<34} {scales} {'median km':>9} {'in 90%':>8}" + (" train s" if timed else "")
    return text + "\n" + "-" * len(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/locdiff-claims")
    parser.add_argument(
        "--only", nargs="*", default=None, help="methods, loss, L, protocol, memorisation (default: all)"
    )
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["LOCDIFF_HOME"] = str(root)

    from locdiff_pipeline.data import shards
    from locdiff_pipeline.data.bundled import HELDOUT, SHIFTED
    from locdiff_pipeline.defs.graph_run import materialize_all
    from locdiff_pipeline.defs.resources import TrainingResource, WarehouseResource
    from locdiff_pipeline.method import sphere
    from locdiff_pipeline.method.protocol import Protocol, answer, draws_needed
    from locdiff_pipeline.method.training import train
    from locdiff_pipeline.steps import report_sql, report_tables
    from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE, load_labelled
    from locdiff_pipeline.steps.locdiff_model import choose_test_protocol, read_latest, training_data

    wanted = set(args.only or ("methods", "loss", "L", "protocol", "memorisation"))
    training = TrainingResource(shdd_degrees=[10, 20, 40])
    resources = {"warehouse": WarehouseResource(root=str(root)), "training": training}
    assert materialize_all(resources, raise_on_error=True).success
    store = resources["warehouse"].get()
    latest = read_latest(store)
    dataset = latest["training_dataset"]
    manifest = shards.manifest(store, EMBEDDINGS_TABLE, dataset)
    benchmarks = {name: load_labelled(store, name, "test", views=manifest["test_views"]) for name in (HELDOUT, SHIFTED)}
    base = training.config(manifest["encoder"]["embed_dim"])
    print(
        f"training dataset {dataset}; encoder {manifest['encoder']['label']}; default model {base.hidden_dims}, "
        f"L={base.L}, {base.steps} steps; benchmarks {', '.join(benchmarks)} ({len(benchmarks[HELDOUT].ids)} images)"
    )

    def scored(model, protocol: Protocol) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for name, test in benchmarks.items():
            embeddings = test.embeddings[:, : protocol.views]
            drawn = model.sample(embeddings, samples=draws_needed(protocol), seed=0)
            prediction, region = answer(model, drawn, protocol)
            out[name] = (sphere.haversine_km(test.lat, test.lon, prediction.lat, prediction.lon), region)
        return out

    if "methods" in wanted:
        print("\n1. Methods (the default run's accuracy view)")
        for name in benchmarks:
            print("\n" + report_tables.text_table(report_sql.accuracy_table(store, name, latest["version"])))

    def memorised(model, embeddings: np.ndarray, targets: np.ndarray, count: int = 300) -> float:
        """Share of the first `count` training rows answered within 200 km of their own location."""
        from locdiff_pipeline.method import shdd

        rows = np.random.default_rng(0).choice(len(embeddings), size=min(count, len(embeddings)), replace=False)
        lat, lon = shdd.decode(targets[rows], model.config.L)
        drawn = model.sample(embeddings[rows][:, None, :], samples=1, seed=0)
        plain = Protocol(views=1, samples=1, rule="mixture")
        prediction, _ = answer(model, drawn, plain)
        return float(np.mean(sphere.haversine_km(lat, lon, prediction.lat, prediction.lon) <= 200))

    def variant_table(title: str, variants: dict, memorisation: bool = False) -> None:
        print(f"\n{title}")
        print(
            header("protocol chosen on validation (val score)", timed=True) + ("  train<=200km" if memorisation else "")
        )
        for label, config in variants.items():
            embeddings, targets = training_data(store, dataset, config)
            started = time.perf_counter()
            model = train(config, embeddings, targets, log_every=10**9).model
            seconds = time.perf_counter() - started
            protocol, _ = choose_test_protocol(store, dataset, model, manifest)
            own = f"  {100 * memorised(model, embeddings, targets):.1f}%" if memorisation else ""
            for name, (errors, regions) in scored(model, protocol).items():
                extra = f"{protocol.describe()} ({protocol.validation_score:.3f})"
                print(row(f"{label} [{name}]", extra, errors, regions, seconds) + own, flush=True)

    if "loss" in wanted:
        variant_table(
            "2. Loss and representation",
            {
                "SHDD + KL inverse (LocDiff, default)": base,
                "SHDD + KL forward": base.with_(kl_direction="forward"),
                "SHDD + MSE": base.with_(loss="mse"),
                "raw xyz + MSE": base.with_(representation="xyz", loss="mse"),
            },
        )
    if "memorisation" in wanted:
        variant_table(
            "5. Against memorisation (chosen on validation like every default)",
            {
                "default": base,
                "weight decay 0.05": base.with_(weight_decay=0.05),
                "weight decay 0.5": base.with_(weight_decay=0.5),
                "condition dropout 0.3": base.with_(cond_dropout=0.3),
                "300 steps": base.with_(steps=300),
                "1,200 steps": base.with_(steps=1200),
            },
            memorisation=True,
        )
    if "L" in wanted:
        variant_table("3. Degree L", {f"L = {L}": base.with_(L=L) for L in (10, 20, 40)})
    if "protocol" in wanted:
        from locdiff_pipeline.method.model import LocDiffModel

        model = LocDiffModel.load(latest["checkpoint"])
        chosen = Protocol.from_dict(model.metadata["protocol"])
        fixed = {
            "chosen on validation": chosen,
            "plain view, 1 sample": replace(chosen, views=1, samples=1, plain_weight=None, rule="mixture"),
            "plain view, mixture of 16 samples": replace(
                chosen, views=1, samples=16, plain_weight=None, rule="mixture"
            ),
            "8 views, mixture, 1 sample each": replace(chosen, views=8, samples=1, plain_weight=None, rule="mixture"),
            "8 views, centre, 1 sample each": replace(chosen, views=8, samples=1, plain_weight=None, rule="centre"),
            "8 views, mixture, 4 samples each": replace(chosen, views=8, samples=4, plain_weight=None, rule="mixture"),
        }
        print("\n4. Views and samples (the default model; the region kernel calibrated on validation)")
        print(header("protocol"))
        for label, protocol in fixed.items():
            for name, (errors, regions) in scored(model, protocol).items():
                print(row(f"{label} [{name}]", protocol.describe(), errors, regions), flush=True)


if __name__ == "__main__":
    main()
