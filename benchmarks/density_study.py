"""Why LocDiff's density scores as it does, measured on validation only: one command, one table.

    python benchmarks/density_study.py [--root /tmp/locdiff-claims]

Runs (or reuses) the default graph in --root, then scores densities on the training dataset's validation
split, cut in two seeded halves: every density's kernel width and floor are chosen on half A by NLL
(`densities.fit_by_nll`, as the pipeline chooses them on the whole split) and scored on half B, so no number
here is scored on what chose it. Rows:

- kNN's kernels around its neighbours and the cell classifier's softmax over its cells (the baselines'
  families, as the pipeline fits them), for reference;
- LocDiff's kernels around its samples: the default model with 16, 64 and 256 samples per image; sampling
  temperatures 1.5 and 2 (the starting noise of the reverse chain scaled up, which spreads the samples);
  and models trained for 300, 600 and 2,400 steps (the default model: 1,200).

Each row: half B's NLL (nats relative to uniform; lower is better), the share of its truths inside the 90 %
highest-density region and that region's area (share of the Earth), the chosen width and floor, and two
medians that say whether the samples know their own error: the spread of an image's samples around their
centre and the distance from that centre to the truth. Nothing here is used by the pipeline.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABEL_WIDTH = 50


@dataclass
class Study:
    """The validation split in two seeded halves: every density is fitted on `half` and scored on the rest."""

    val: object  # steps.image_embeddings.Labelled
    half: np.ndarray
    truth: np.ndarray
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))

    def report(self, label: str, build, parameters: list[dict], spread: str = "", error: str = "") -> None:
        """Fit `build`'s parameters on half A by NLL, score half B, print one row."""
        from locdiff_pipeline.method import densities

        fit = densities.fit_by_nll(parameters, lambda **p: build(self.half, **p), self.truth[self.half])
        scores = build(~self.half, **fit.parameters).scores(self.truth[~self.half], self.rng)
        width = fit.parameters.get("bandwidth_km", fit.parameters.get("temperature", float("nan")))
        print(
            f"{label:<{LABEL_WIDTH}} {-scores.log_density.mean():>7.3f} {100 * scores.coverage():>6.1f}% "
            f"{100 * scores.area.mean():>5.1f}% {width:>9g} {fit.parameters['floor']:>6g} {spread:>7} {error:>7}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/locdiff-claims")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["LOCDIFF_HOME"] = str(root)

    from locdiff_pipeline.defs.graph_run import materialize_all
    from locdiff_pipeline.defs.resources import TrainingResource, WarehouseResource
    from locdiff_pipeline.steps.image_embeddings import load_labelled
    from locdiff_pipeline.steps.locdiff_model import read_latest

    # 1. the default run, its validation split in two seeded halves ---------------------------------------
    training = TrainingResource()
    resources = {"warehouse": WarehouseResource(root=str(root)), "training": training}
    assert materialize_all(resources, raise_on_error=True).success
    store = resources["warehouse"].get()
    latest = read_latest(store)
    dataset = latest["training_dataset"]
    study = halves(store, dataset)
    print(
        f"{'density':<{LABEL_WIDTH}} {'NLL':>7} {'in 90%':>7} {'area':>6} {'width':>9} {'floor':>6} "
        f"{'spread':>7} {'error':>7}"
    )
    baseline_rows(study, load_labelled(store, dataset, "train"))
    locdiff_rows(study, store, dataset, latest["checkpoint"], training)
    print("width: kernel width in km (cells: softmax temperature); spread, error: medians in km")


def halves(store, dataset: str) -> Study:
    """The dataset's validation split in two seeded halves (the same in every study), said in one line."""
    from locdiff_pipeline.method import sphere
    from locdiff_pipeline.steps.image_embeddings import load_labelled

    val = load_labelled(store, dataset, "val")
    half = np.random.default_rng(0).permutation(len(val.lat)) < len(val.lat) // 2
    print(f"validation of {dataset}: {len(val.lat)} images, halves of {half.sum()} (fit) and {(~half).sum()} (score)")
    return Study(val, half, sphere.to_unit(val.lat, val.lon))


def baseline_rows(study: Study, train_rows) -> None:
    """2. The baselines' families, as the pipeline fits them: kNN's kernels and the cells' softmax."""
    from locdiff_pipeline.method import baseline_densities, baselines, densities, sphere

    val = study.val
    gallery = baselines.Gallery(train_rows.embeddings, train_rows.lat, train_rows.lon)
    neighbours = baseline_densities.knn_neighbours(gallery, val.embeddings, None)
    counts = [k for k in baselines.KNN_K_CHOICES if k <= neighbours.shape[1]]
    study.report(
        "kNN: kernels around its k neighbours",
        lambda rows, k, **p: baseline_densities.knn_density(gallery, neighbours[rows], k, **p),
        [{"k": k, **p} for k in counts for p in densities.kernel_grid()],
    )
    half = study.half
    cells = baselines.fit_cells(gallery, val.embeddings[half], val.lat[half], val.lon[half])
    centroids = sphere.to_unit(cells.centroids_lat, cells.centroids_lon)
    areas = densities.voronoi_areas(centroids)
    study.report(
        "cells: softmax spread over each cell",
        lambda rows, temperature, floor: densities.CellDensity(
            baseline_densities.cell_probabilities(cells, val.embeddings[rows], temperature), centroids, areas, floor
        ),
        [{"temperature": t, "floor": f} for t in baseline_densities.TEMPERATURES for f in densities.FLOORS],
    )


def locdiff_rows(study: Study, store, dataset: str, checkpoint: str, training) -> None:
    """3. LocDiff's kernels around its samples: sample count, sampling temperature, training length."""
    from locdiff_pipeline.data import shards
    from locdiff_pipeline.method.model import LocDiffModel
    from locdiff_pipeline.method.training import train
    from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE
    from locdiff_pipeline.steps.locdiff_model import training_data

    embeddings = study.val.embeddings
    model = LocDiffModel.load(checkpoint)
    for samples in (16, 64, 256):
        locdiff_row(study, f"LocDiff default, {samples} samples", model.sample(embeddings, samples, seed=0))
    for temperature in (1.5, 2.0):
        locdiff_row(
            study,
            f"LocDiff default, 64 samples at temperature {temperature:g}",
            hot(model, embeddings, 64, temperature),
        )
    base = training.config(shards.manifest(store, EMBEDDINGS_TABLE, dataset)["encoder"]["embed_dim"])
    for steps in (300, 600, 2400):
        inputs, targets = training_data(store, dataset, base.with_(steps=steps))
        started = time.perf_counter()
        trained = train(base.with_(steps=steps), inputs, targets, log_every=10**9).model
        label = f"LocDiff {steps} steps ({time.perf_counter() - started:.0f} s), 64 samples"
        locdiff_row(study, label, trained.sample(embeddings, 64, seed=0))


def locdiff_row(study: Study, label: str, drawn) -> None:
    """One row of LocDiff's sample density, with the median spread of the samples and error of their centre."""
    from locdiff_pipeline.method import densities, sphere

    val = study.val
    lat, lon = (np.reshape(a, (len(val.lat), -1)) for a in (drawn.lat, drawn.lon))
    units = sphere.to_unit(lat.ravel(), lon.ravel()).reshape(*lat.shape, 3)
    centre = units.mean(axis=1)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    spread = sphere.spread_about_km(units, centre)
    error = sphere.haversine_km(val.lat, val.lon, *sphere.from_unit(centre))
    study.report(
        label,
        lambda rows, **p: densities.samples_mixture(lat[rows], lon[rows], p["bandwidth_km"], p["floor"], None),
        densities.kernel_grid(),
        f"{np.median(spread):.0f}",
        f"{np.median(error):.0f}",
    )


def hot(model, embeddings: np.ndarray, samples: int, temperature: float):
    """Samples whose reverse chain starts from the model's own keyed noise scaled by `temperature`."""
    from locdiff_pipeline.method import row_noise
    from locdiff_pipeline.method.model import Samples

    flat = np.repeat(np.asarray(embeddings, np.float32), samples, axis=0)
    index = np.tile(np.arange(samples), len(embeddings))
    start = temperature * row_noise.starting_noise(flat, index, 0, model.space.dim)
    vectors = model.sample_vectors(flat, seed=0, start=start)
    lat, lon = model.space.decode(vectors)
    shape = (len(embeddings), 1, samples)
    return Samples(vectors.reshape(*shape, -1), lat.reshape(shape), lon.reshape(shape))


if __name__ == "__main__":
    main()
