"""Which LocDiff density hedges where the image is new: candidates scored on validation only (#42).

    python benchmarks/posterior_study.py --root <project folder of a finished `locdiff run`>

The validation split in the same two seeded halves as `density_study.py`: each density's widths, shares and
floor are chosen on half A by NLL and scored on half B. Candidates (each 64 samples per image, plain view):

- models: the default (1,200 steps); trained on the training rows with every repeated (embedding, place)
  counted once; trained for 2,400 steps; an ensemble of M members (seeds), each CS-UNet narrower than the
  default and trained on batches of batch_size / M (M members cost about what one default model does), 64 / M
  samples from each, pooled;
- each model's samples under three floors: uniform (the pipeline's density before #42); the model's own prior
  (kernels around places it samples under the null condition, plus a small uniform share); the training
  locations' density (kernels around a seeded sample of them, plus a small uniform share).

Each row: half B's NLL (nats relative to uniform, lower is better), the share of truths inside the 90 % region
and its area, the median spread of an image's samples about its answer, the correlation of log spread with
log error (do the samples know when they are unsure?), the answer's accuracy at 750 and 2,500 km, and the
training time. Nothing here is used by the pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from density_study import Study, halves  # noqa: E402

SAMPLES = 64
PRIOR_SAMPLES = 256
PRIOR_WIDTHS_KM = (250.0, 500.0, 1000.0, 2000.0)
PRIOR_SHARES = (0.1, 0.3, 0.5, 0.7, 0.9)
BLEND_FLOORS = (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7)


@dataclass
class Drawn:
    """One candidate's validation samples (N, S), its answers, and places drawn from its prior (U,)."""

    label: str
    lat: np.ndarray
    lon: np.ndarray
    answer_lat: np.ndarray
    answer_lon: np.ndarray
    prior_lat: np.ndarray
    prior_lon: np.ndarray
    seconds: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--members", type=int, nargs="*", default=[4])
    parser.add_argument("--long-steps", type=int, default=2400)
    parser.add_argument("--candidates", default="once,long,long-half-batch,members", help="which models to train")
    parser.add_argument("--member-dims", default="128,64,32")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    os.environ["LOCDIFF_HOME"] = str(root)

    from locdiff_pipeline.defs.resources import TrainingResource, WarehouseResource
    from locdiff_pipeline.method import sphere
    from locdiff_pipeline.method.model import LocDiffModel
    from locdiff_pipeline.steps.image_embeddings import load_labelled
    from locdiff_pipeline.steps.locdiff_model import read_latest, training_data

    store = WarehouseResource(root=str(root)).get()
    latest = read_latest(store)
    dataset = latest["training_dataset"]
    study = halves(store, dataset)
    val = study.val
    header()
    default = LocDiffModel.load(latest["checkpoint"])
    candidates = [drawn_from([default], "default", val.embeddings, 0.0)]
    base = TrainingResource().config(default.config.embed_dim)
    inputs, targets = training_data(store, dataset, base)
    train_rows = load_labelled(store, dataset, "train")
    places = np.random.default_rng(0).choice(len(train_rows.lat), PRIOR_SAMPLES, replace=False)
    training_places = sphere.to_unit(train_rows.lat[places], train_rows.lon[places])[None]
    unique = np.unique(np.concatenate([inputs, targets], axis=1), axis=0, return_index=True)[1]
    print(f"training rows: {len(inputs)}, of which {len(unique)} distinct (embedding, place) pairs", flush=True)
    half = base.with_(steps=args.long_steps, batch_size=base.batch_size // 2)
    chosen = args.candidates.split(",")
    for key, label, config, rows in (
        ("once", "repeats counted once", base, np.sort(unique)),
        ("long", f"{args.long_steps} steps", base.with_(steps=args.long_steps), slice(None)),
        ("long-half-batch", f"{args.long_steps} steps, batch {half.batch_size}", half, slice(None)),
    ):
        if key not in chosen:
            continue
        started = time.perf_counter()
        trained = train_member(config, inputs[rows], targets[rows])
        candidates.append(drawn_from([trained], label, val.embeddings, time.perf_counter() - started))
    dims = tuple(int(d) for d in args.member_dims.split(","))
    for members in args.members if "members" in chosen else []:
        started = time.perf_counter()
        trained = [
            train_member(base.with_(seed=k, hidden_dims=dims, batch_size=base.batch_size // members), inputs, targets)
            for k in range(members)
        ]
        label = f"{members} members {'-'.join(map(str, dims))}, batch {base.batch_size // members}"
        candidates.append(drawn_from(trained, label, val.embeddings, time.perf_counter() - started))
    for drawn in candidates:
        score_rows(study, drawn, training_places)


def train_member(config, inputs: np.ndarray, targets: np.ndarray):
    from locdiff_pipeline.method.training import train

    return train(config, inputs, targets, log_every=10**9).model


def drawn_from(models: list, label: str, embeddings: np.ndarray, seconds: float) -> Drawn:
    """SAMPLES per image pooled evenly over `models`, the answer as the mode of the pooled mixture, and
    PRIOR_SAMPLES prior places pooled alike."""
    import torch

    each = SAMPLES // len(models)
    drawn = [model.sample(embeddings, each, seed=0) for model in models]
    lat = np.concatenate([d.lat.reshape(len(embeddings), -1) for d in drawn], axis=1)
    lon = np.concatenate([d.lon.reshape(len(embeddings), -1) for d in drawn], axis=1)
    mixture = torch.stack([d.vectors.reshape(len(embeddings), -1, d.vectors.shape[-1]).mean(dim=1) for d in drawn])
    answer_lat, answer_lon = models[0].space.decode(mixture.mean(dim=0))
    priors = [model.sample_prior(PRIOR_SAMPLES // len(models), seed=1) for model in models]
    prior_lat = np.concatenate([p[0] for p in priors])
    prior_lon = np.concatenate([p[1] for p in priors])
    return Drawn(label, lat, lon, answer_lat, answer_lon, prior_lat, prior_lon, seconds)


def header() -> None:
    print(
        f"{'candidate':<52} {'NLL':>7} {'in 90%':>7} {'area':>6} {'spread':>7} {'corr':>6} {'750km':>6} "
        f"{'2500km':>6} {'train s':>7}  chosen"
    )


def score_rows(study: Study, drawn: Drawn, training_places: np.ndarray) -> None:
    """Three rows: the samples' kernels with a uniform floor, blended with kernels around the model's prior
    places, and blended with kernels around training places (1, U, 3)."""
    from locdiff_pipeline.method import densities, metrics, sphere, uncertainty

    val, rest = study.val, ~study.half
    units = sphere.to_unit(drawn.lat.ravel(), drawn.lon.ravel()).reshape(*drawn.lat.shape, 3)
    spread = sphere.spread_about_km(units, sphere.to_unit(drawn.answer_lat, drawn.answer_lon))
    error = sphere.haversine_km(val.lat, val.lon, drawn.answer_lat, drawn.answer_lon)
    accuracy = metrics.accuracy(val.lat[rest], val.lon[rest], drawn.answer_lat[rest], drawn.answer_lon[rest])
    model_prior = sphere.to_unit(drawn.prior_lat, drawn.prior_lon)[None]

    def samples(rows, bandwidth_km):
        return densities.samples_mixture(drawn.lat[rows], drawn.lon[rows], bandwidth_km, 0.0, None)

    def uniform_floor(rows, bandwidth_km, floor):
        return densities.samples_mixture(drawn.lat[rows], drawn.lon[rows], bandwidth_km, floor, None)

    def floor_of(prior):
        def blend(rows, bandwidth_km, prior_km, prior_share, floor):
            part = densities.KernelMixture(prior, np.full((1, prior.shape[1]), 1.0 / prior.shape[1]), prior_km)
            return densities.Blend((samples(rows, bandwidth_km), part), (1.0 - prior_share - floor, prior_share))

        return blend

    blends = [
        {"bandwidth_km": b, "prior_km": p, "prior_share": s, "floor": f}
        for b in densities.BANDWIDTHS_KM
        for p in PRIOR_WIDTHS_KM
        for s in PRIOR_SHARES
        for f in BLEND_FLOORS
        if s + f < 1.0
    ]
    for suffix, build, grid in (
        ("uniform floor", uniform_floor, densities.kernel_grid()),
        ("model prior floor", floor_of(model_prior), blends),
        ("training places floor", floor_of(training_places), blends),
    ):
        fit = densities.fit_by_nll(grid, lambda b=build, **p: b(study.half, **p), study.truth[study.half])
        scores = build(rest, **fit.parameters).scores(study.truth[rest], study.rng)
        correlation = uncertainty.spread_error_correlation(spread[rest], error[rest])
        chosen = " ".join(f"{k}={v:g}" for k, v in fit.parameters.items())
        print(
            f"{drawn.label + ', ' + suffix:<52} {-scores.log_density.mean():>7.3f} {100 * scores.coverage():>6.1f}% "
            f"{100 * scores.area.mean():>5.1f}% {np.median(spread[rest]):>7.0f} {correlation:>+6.2f} "
            f"{100 * accuracy['acc_750km']:>5.1f}% {100 * accuracy['acc_2500km']:>5.1f}% "
            f"{drawn.seconds:>7.0f}  {chosen}",
            flush=True,
        )


if __name__ == "__main__":
    main()
