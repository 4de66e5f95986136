"""Which weight-free encoder geolocates unseen places: three arbiters that disagree, measured in one run.

    python benchmarks/encoder_choice.py [--epochs 10] [--folds 5]

The bundled default encoder (`descriptors`) was chosen on training data. #21 asks for thresholds on
`bluemarble_heldout` that the default does not reach, and encoders exist that do reach them on that
benchmark. This script puts three encoders before three arbiters, so that the choice can be read, not
guessed:

encoders (none with downloaded weights)
1. `descriptors`: the pipeline's encoder as it is (`build_encoder(EncoderSpec())`), scored by kNN retrieval
   (10 neighbours, cosine on training-standardised features, the SHDD mode of their locations);
2. the Im2GPS-like shape the issue measured (4 x 6 x 6 Lab bins, a 4 x 4 GIST grid; the same module, so
   its colour layout keeps the spread beside the mean, where the issue's had means only),
   scored the same way;
3. a small CNN trained from scratch on the training windows (32 px, four conv blocks of 16-64 channels,
   128 k-means cells of the training locations as classes with labels smoothed over 300 km, as PIGEON's
   haversine smoothing), scored by its most probable cell's centre.

arbiters
- validation: the pipeline's 281 validation images (27 regions, no training image touches them);
- grouped cross-validation over the training windows: their 15-degree blocks dealt into `--folds` folds,
  each fold predicted from the windows of the other folds that share no pixel with it (training data only;
  the benchmark's own construction, on thousands of windows);
- `bluemarble_heldout`, overall and by region: its two largest blocks hold 62 % of its images.

Only the first two may choose anything; the third is printed to show what choosing on it would do.

Then (`--only locdiff`) LocDiff itself, conditioned on the descriptors, on the CNN's cell log-probabilities
cross-fitted over the same folds (a CNN's output on its own training images would hand the denoiser a
condition far cleaner than any unseen image's), and on both side by side.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from locdiff_pipeline.data import bundled
from locdiff_pipeline.data.image_io import encode_jpeg
from locdiff_pipeline.encoders.encoder_spec import EncoderSpec
from locdiff_pipeline.encoders.image_encoder import build_encoder
from locdiff_pipeline.encoders.scene_descriptors import DescriptorSpec, describe
from locdiff_pipeline.method import baselines, protocol, shdd, sphere, training
from locdiff_pipeline.method.config import LocDiffConfig

SCALES_KM = (200, 750, 2500)
BLOCK_DEG = 15.0  # the training blocks grouped cross-validation holds out
IM2GPS_LIKE = DescriptorSpec(lab_bins=(4, 6, 6), gist_grid=4)
CNN_PX, CNN_WIDTH, CNN_CELLS, SMOOTHING_KM = 32, 16, 128, 300.0
KNN_K = 10
PARTS = ("arbiters", "locdiff")


@dataclass
class Images:
    """Rendered windows of one role: JPEG-decoded images as the pipeline ingests them, with their places."""

    images: list[Image.Image]
    lat: np.ndarray
    lon: np.ndarray
    block: np.ndarray
    windows: bundled.Windows


# 1. the bundled windows, rendered as the pipeline renders them --------------------------------------------


def render_roles() -> dict[str, Images]:
    """train, val and benchmark windows of the bundled layout (Blue Marble), JPEG round trip included."""
    recipe = bundled.BundledRecipe()
    layout = bundled.layout(recipe)
    world = np.asarray(Image.open(bundled.BLUE_MARBLE).convert("RGB"))
    roles = {
        "train": layout["training"].take(layout["training"].split == "train"),
        "val": layout["training"].take(layout["training"].split == "val"),
        "benchmark": layout["benchmark"],
    }
    rendered = {}
    for role, windows in roles.items():
        images = [
            Image.open(io.BytesIO(encode_jpeg(bundled.render(world, int(r), int(c), int(s), recipe.image_px))))
            for r, c, s in zip(windows.row, windows.col, windows.side, strict=True)
        ]
        block = bundled.block_of(windows.row + windows.side // 2, windows.col + windows.side // 2, BLOCK_DEG)
        rendered[role] = Images([im.convert("RGB") for im in images], windows.lat, windows.lon, block, windows)
    return rendered


# 2. the encoders and how each answers a place -------------------------------------------------------------


def descriptor_vectors(images: list[Image.Image], spec: DescriptorSpec) -> np.ndarray:
    """The pipeline's encoder for the default shape; the same preprocessing and module for another shape."""
    encoder = build_encoder(EncoderSpec())
    if spec == encoder.descriptor:
        return encoder.embed(images)
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    return np.concatenate([describe(pixels[i : i + 512], spec).numpy() for i in range(0, len(pixels), 512)])


_DESCRIBED: dict[DescriptorSpec, dict[str, np.ndarray]] = {}


def role_descriptors(roles: dict[str, Images], spec: DescriptorSpec) -> dict[str, np.ndarray]:
    """Each role's descriptor vectors of one shape, computed once per run (the arbiters and LocDiff share
    the default's: two minutes on two cores)."""
    if spec not in _DESCRIBED:
        _DESCRIBED[spec] = {role: descriptor_vectors(images.images, spec) for role, images in roles.items()}
    return _DESCRIBED[spec]


def fold_epochs(epochs: int) -> int:
    """A fold's CNN trains on about four fifths of the windows, so for four fifths of the epochs."""
    return max(1, epochs * 4 // 5)


def knn_answers(train_x: np.ndarray, lat: np.ndarray, lon: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(N, 2) lat, lon: the pipeline's kNN baseline (training-standardised cosine, SHDD mode of 10)."""
    gallery = baselines.Gallery(train_x, lat, lon)
    answer = baselines.knn_predict(gallery, queries, KNN_K, aggregate="mode")
    return np.stack([answer.lat, answer.lon], axis=1)


class SmallCNN(torch.nn.Module):
    """Four blocks of two 3x3 convolutions (batch norm, ReLU) and a 2x2 max-pool, global average pooling, a
    linear layer to the cells."""

    def __init__(self, classes: int, width: int = CNN_WIDTH) -> None:
        super().__init__()
        widths = [3, width, 2 * width, 4 * width, 4 * width]
        blocks = [self._block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        self.features = torch.nn.Sequential(*blocks)
        self.head = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(widths[-1], classes))

    @staticmethod
    def _block(inputs: int, outputs: int) -> torch.nn.Sequential:
        layers = []
        for a in (inputs, outputs):
            layers += [torch.nn.Conv2d(a, outputs, 3, padding=1, bias=False), torch.nn.BatchNorm2d(outputs)]
            layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers, torch.nn.MaxPool2d(2))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels).mean(dim=(2, 3)))


def cnn_pixels(images: list[Image.Image]) -> torch.Tensor:
    rgb = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images]).float() / 255
    return F.interpolate(rgb, size=(CNN_PX, CNN_PX), mode="bilinear", antialias=True, align_corners=False)


def cell_centres(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CNN_CELLS k-means cells of the training locations (the cell baseline's partition): their centres."""
    places = SimpleNamespace(lat=lat, lon=lon, units=sphere.to_unit(lat, lon))  # what cell_partition reads
    _, centre_lat, centre_lon = baselines.cell_partition(places, CNN_CELLS)
    return centre_lat, centre_lon


def smoothed_targets(lat: np.ndarray, lon: np.ndarray, centres: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """Each image's target over the cells: exp(-(d - d_min) / 300 km), normalised, where d is its distance to
    each cell centre (a near miss costs less than a far one)."""
    cosines = sphere.to_unit(lat, lon) @ sphere.to_unit(*centres).T
    distance = np.arccos(np.clip(cosines, -1.0, 1.0)) * sphere.EARTH_RADIUS_KM
    target = np.exp(-(distance - distance.min(axis=1, keepdims=True)) / SMOOTHING_KM)
    return torch.from_numpy(target / target.sum(axis=1, keepdims=True)).float()


@dataclass
class TrainedCNN:
    model: SmallCNN
    mean: torch.Tensor  # per-channel pixel statistics of its training images
    std: torch.Tensor

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor) -> np.ndarray:
        """(N, cells) cell probabilities of images."""
        self.model.eval()
        batches = ((pixels[i : i + 512] - self.mean) / self.std for i in range(0, len(pixels), 512))
        return torch.cat([F.softmax(self.model(batch), dim=1) for batch in batches]).numpy()


def train_cnn(
    pixels: torch.Tensor, lat: np.ndarray, lon: np.ndarray, centres: tuple[np.ndarray, np.ndarray], epochs: int
) -> TrainedCNN:
    """The CNN trained on (pixels, lat, lon) against the smoothed cells: AdamW, one-cycle schedule, a random
    shift of up to 2 px per batch; seeded."""
    torch.manual_seed(0)
    generator = np.random.default_rng(0)
    target = smoothed_targets(lat, lon, centres)
    mean, std = pixels.mean(dim=(0, 2, 3), keepdim=True), pixels.std(dim=(0, 2, 3), keepdim=True)
    train = (pixels - mean) / std
    model = SmallCNN(len(centres[0]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    batches = (len(train) + 127) // 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=epochs * batches)
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(generator.permutation(len(train)))
        for batch in order.split(128):
            shift = tuple(int(s) for s in generator.integers(-2, 3, size=2))
            logits = model(torch.roll(train[batch], shift, dims=(2, 3)))
            loss = -(target[batch] * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return TrainedCNN(model, mean, std)


def cnn_answers(
    train: torch.Tensor, lat: np.ndarray, lon: np.ndarray, queries: torch.Tensor, epochs: int
) -> np.ndarray:
    """Trains the CNN on (train, lat, lon) and answers each query with its most probable cell's centre."""
    centres = cell_centres(lat, lon)
    cell = train_cnn(train, lat, lon, centres, epochs).probabilities(queries).argmax(axis=1)
    return np.stack([centres[0][cell], centres[1][cell]], axis=1)


# 3. the arbiters ------------------------------------------------------------------------------------------


def grouped_folds(train: Images, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(held-out mask, gallery mask) per fold: whole 15-degree blocks held out, and the gallery keeps only
    windows that share no pixel with the held-out ones."""
    blocks = np.unique(train.block)
    fold_of_block = dict(zip(blocks, np.random.default_rng(1).permutation(len(blocks)) % folds, strict=True))
    fold = np.array([fold_of_block[b] for b in train.block])
    pairs = []
    for f in range(folds):
        held = fold == f
        pairs.append((held, ~held & ~bundled.overlapping(train.windows, train.windows.take(held))))
    return pairs


def errors_km(truth: Images, answers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    lat, lon = (truth.lat, truth.lon) if mask is None else (truth.lat[mask], truth.lon[mask])
    return sphere.haversine_km(lat, lon, answers[:, 0], answers[:, 1])


def summary(errors: np.ndarray) -> str:
    shares = " / ".join(f"{100 * np.mean(errors <= s):.1f}" for s in SCALES_KM)
    return f"{shares} % (median {np.median(errors):,.0f} km)"


def shares(errors: np.ndarray) -> str:
    return "/".join(f"{100 * np.mean(errors <= s):.0f}" for s in SCALES_KM[1:])


def by_region(benchmark: Images, errors: np.ndarray) -> str:
    """The benchmark's two largest blocks and the rest, at 750 and 2,500 km."""
    blocks, counts = np.unique(benchmark.block, return_counts=True)
    largest = blocks[np.argsort(-counts)[:2]]
    parts = []
    for block in largest:
        mask = benchmark.block == block
        lat, lon = sphere.spherical_centre(benchmark.lat[mask], benchmark.lon[mask])
        parts.append(f"block near {lat:.0f},{lon:.0f} (n={mask.sum()}): {shares(errors[mask])}")
    rest = ~np.isin(benchmark.block, largest)
    parts.append(f"the other {len(np.unique(benchmark.block[rest]))} blocks (n={rest.sum()}): {shares(errors[rest])}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="CNN epochs on the whole training set")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=PARTS, default=PARTS, help="arbiters, locdiff (default: both)")
    args = parser.parse_args()
    started = time.monotonic()
    roles = render_roles()
    train, val, benchmark = roles["train"], roles["val"], roles["benchmark"]
    folds = grouped_folds(train, args.folds)
    print(
        f"rendered {len(train.lat)} train, {len(val.lat)} val, {len(benchmark.lat)} benchmark windows; "
        f"{len(np.unique(train.block))} training blocks in {args.folds} folds ({time.monotonic() - started:.0f} s)"
    )
    if "locdiff" in args.only:
        locdiff_on_encoders(roles, folds, args.epochs)
    if "arbiters" not in args.only:
        return
    for name, answer in encoders(roles, args.epochs).items():
        cross = np.empty(len(train.lat))
        for held, gallery in folds:
            cross[held] = errors_km(train, answer(gallery, held), held)
        on_val = errors_km(val, answer(None, "val"))
        on_benchmark = errors_km(benchmark, answer(None, "benchmark"))
        print(
            f"\n{name}  ({time.monotonic() - started:.0f} s)\n  validation         {summary(on_val)}"
            f"\n  grouped CV         {summary(cross)}\n  bluemarble_heldout {summary(on_benchmark)}"
            f"\n    by region (750/2500 %): {by_region(benchmark, on_benchmark)}",
            flush=True,
        )
    chance = np.random.default_rng(0).integers(0, len(train.lat), len(benchmark.lat))
    print(
        f"\nchance on the benchmark (one random training place each): "
        f"{summary(sphere.haversine_km(benchmark.lat, benchmark.lon, train.lat[chance], train.lon[chance]))}"
    )


def encoders(roles: dict[str, Images], epochs: int) -> dict:
    """name -> answer(gallery mask or None for all training, held-out mask or a role name) -> (N, 2)."""
    train = roles["train"]

    def retrieval(spec: DescriptorSpec):
        vectors = role_descriptors(roles, spec)

        def answer(gallery, queries):
            keep = np.ones(len(train.lat), bool) if gallery is None else gallery
            asked = vectors[queries] if isinstance(queries, str) else vectors["train"][queries]
            return knn_answers(vectors["train"][keep], train.lat[keep], train.lon[keep], asked)

        return answer

    pixels = {role: cnn_pixels(images.images) for role, images in roles.items()}
    trained_on_all: dict[str, np.ndarray] = {}  # one CNN on every training window answers val and benchmark

    def cnn(gallery, queries):
        if gallery is None:
            if not trained_on_all:
                asked = torch.cat([pixels["val"], pixels["benchmark"]])
                answers = cnn_answers(pixels["train"], train.lat, train.lon, asked, epochs)
                trained_on_all.update(val=answers[: len(pixels["val"])], benchmark=answers[len(pixels["val"]) :])
            return trained_on_all[queries]
        keep, held = torch.from_numpy(gallery), torch.from_numpy(queries)
        return cnn_answers(
            pixels["train"][keep], train.lat[gallery], train.lon[gallery], pixels["train"][held], fold_epochs(epochs)
        )

    return {
        "descriptors (the default), kNN-10": retrieval(DescriptorSpec()),
        "Im2GPS-like shape (4x6x6 bins, 4x4 GIST), kNN-10": retrieval(IM2GPS_LIKE),
        f"CNN from scratch ({CNN_PX} px, {CNN_CELLS} cells), its cell": cnn,
    }


# 4. LocDiff conditioned on them --------------------------------------------------------------------------


def cross_fitted_log_probabilities(
    roles: dict[str, Images], folds: list[tuple[np.ndarray, np.ndarray]], epochs: int
) -> dict[str, np.ndarray]:
    """CNN cell log-probabilities as a condition without the CNN's own fit in them: each training window's
    from the fold CNN that never saw its block, validation's and the benchmark's the log of the fold CNNs'
    mean probability (the cells are one partition of every training location, so the folds agree on them)."""
    train = roles["train"]
    pixels = {role: cnn_pixels(images.images) for role, images in roles.items()}
    centres = cell_centres(train.lat, train.lon)
    held_out = np.zeros((len(train.lat), CNN_CELLS), np.float32)
    asked = torch.cat([pixels["val"], pixels["benchmark"]])
    others = []
    for held, gallery in folds:
        keep = torch.from_numpy(gallery)
        cnn = train_cnn(pixels["train"][keep], train.lat[gallery], train.lon[gallery], centres, fold_epochs(epochs))
        held_out[held] = cnn.probabilities(pixels["train"][torch.from_numpy(held)])
        others.append(cnn.probabilities(asked))
    mean = np.mean(others, axis=0)
    split = len(pixels["val"])
    by_role = {"train": held_out, "val": mean[:split], "benchmark": mean[split:]}
    return {role: np.log(np.maximum(p, 1e-4)).astype(np.float32) for role, p in by_role.items()}


def locdiff_row(roles: dict[str, Images], condition: dict[str, np.ndarray]) -> str:
    """LocDiff (the default config) trained on a condition, its protocol chosen on validation as the pipeline
    chooses it: validation and benchmark accuracy and the share of truths inside the 90 % region."""
    train = roles["train"]
    targets = shdd.encode(train.lat, train.lon, LocDiffConfig().L).astype(np.float32)
    config = LocDiffConfig(embed_dim=condition["train"].shape[1])
    model = training.train(config, condition["train"], targets, log_every=10**9).model
    chosen, _ = protocol.choose_protocol(model, condition["val"][:, None], roles["val"].lat, roles["val"].lon)
    parts = [f"{chosen.describe()} (val score {chosen.validation_score:.3f})"]
    for role in ("val", "benchmark"):
        drawn = model.sample(condition[role][:, None], samples=protocol.draws_needed(chosen), seed=0)
        prediction, region = protocol.answer(model, drawn, chosen)
        errors = errors_km(roles[role], np.stack([prediction.lat, prediction.lon], axis=1))
        parts.append(f"{role} {summary(errors)}, {100 * np.mean(errors <= region):.1f} % in 90 %")
    return "\n    ".join(parts)


def locdiff_on_encoders(roles: dict[str, Images], folds: list, epochs: int) -> None:
    descriptors = role_descriptors(roles, DescriptorSpec())
    cnn = cross_fitted_log_probabilities(roles, folds, epochs)
    conditions = {
        "descriptors (the default)": descriptors,
        "cross-fitted CNN cell log-probabilities": cnn,
        "both, side by side": {role: np.concatenate([descriptors[role], cnn[role]], axis=1) for role in roles},
    }
    print("\nLocDiff conditioned on each (default config, protocol chosen on validation)")
    for name, condition in conditions.items():
        print(f"  {name}\n    {locdiff_row(roles, condition)}", flush=True)


if __name__ == "__main__":
    main()
