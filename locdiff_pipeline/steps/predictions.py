"""Every method on one benchmark dataset, against one training dataset: LocDiff, LocDiff-H, the
baselines and two reference rows.

The training dataset alone provides the kNN gallery, the cells, the regressor's training data,
LocDiff-H's retrieval and the validation split that tunes them; the benchmark provides only the images
to score. LocDiff uses the test-time protocol recorded with the model (views, combination rule and the
plain view's weight, chosen on validation); the baselines see the same views, combined by the mean of
their embeddings or by LocDiff's rule on their per-view predictions, whichever validation prefers.
Every method is also scored from the plain view alone, as NAME/plain. Reference rows: `chance` (a
random training location, averaged over several draws) and `constant` (the training set's densest
location): a method is worth its row only above them.

Produces the rows of the `predictions` table (one per image and method, `chance` one per draw) and of
`prediction_samples` (every decoded LocDiff sample, for density maps and calibration). Dagster-free,
so tests and notebooks call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method import baselines, shdd, uncertainty
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.method.protocol import Protocol
from locdiff_pipeline.method.views import MEAN_EMBEDDING, ViewRule
from locdiff_pipeline.steps.clip_embeddings import EMBEDDINGS_TABLE, load_labelled
from locdiff_pipeline.steps.prediction_table import prediction_rows

PREDICTIONS_VERSION = 2  # 2: the baselines choose their view rule on validation; LocDiff weighs the plain view
LOCDIFF, LOCDIFF_H, KNN, CELLS, REGRESSION = "locdiff", "locdiff_h", "knn", "cell_classification", "regression"
CHANCE, CONSTANT = "chance", "constant"
PLAIN_SUFFIX = "/plain"
TOP_K = 5  # ranked answers kept per LocDiff and kNN prediction (the report's top-5 accuracy)
BASE_METHODS = (LOCDIFF, LOCDIFF_H, KNN, CELLS, REGRESSION)
REFERENCE_METHODS = (CHANCE, CONSTANT)
METHODS = BASE_METHODS + tuple(m + PLAIN_SUFFIX for m in BASE_METHODS) + REFERENCE_METHODS

SAMPLES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("method", pa.string()),
        ("sample_lat", pa.list_(pa.float32())),
        ("sample_lon", pa.list_(pa.float32())),
        ("bandwidth_km", pa.float64()),
    ]
)


@dataclass(frozen=True)
class MethodSettings:
    """Baseline, reference and uncertainty settings; None means 'chosen on validation' / 'from L'."""

    knn_k: int | None = None
    cells: int | None = None
    regression_steps: int = 1500
    hybrid_radius_km: float = baselines.HYBRID_RADIUS_KM
    density_bandwidth_km: float | None = None
    seed: int = 0
    chance_draws: int = 10

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class BenchmarkPredictions:
    tables: list[pa.Table]
    samples: pa.Table
    images: int
    chosen: dict[str, str] = field(default_factory=dict)
    hybrid_fallback_share: float = 0.0


@dataclass
class TrainingSide:
    """What every benchmark is scored against, fitted on the training dataset only."""

    gallery: baselines.Gallery
    knn: baselines.KnnRetrieval
    cells: baselines.CellClassifier
    regressor: baselines.UnitVectorRegressor
    constant: tuple[float, float]


_fitted: dict[tuple, TrainingSide] = {}  # one fit per training data and settings, shared by benchmarks


def baseline_view_rules(protocol: Protocol, L: int) -> tuple[ViewRule, ...]:
    """The view rules the baselines choose from on validation: the mean of the view embeddings, or LocDiff's
    chosen rule on their per-view predictions; both weigh the plain view as LocDiff's protocol does."""
    return tuple(ViewRule(rule, protocol.plain_weight, L) for rule in (MEAN_EMBEDDING, protocol.rule))


def fit_training_side(
    warehouse: Warehouse,
    training: str,
    settings: MethodSettings,
    views: int = 1,
    view_rules: tuple[ViewRule, ...] = (ViewRule(),),
) -> TrainingSide:
    """The gallery, the baselines tuned on validation (seeing the same `views` as at test, combined by the
    best of `view_rules`) and the constant reference, fitted once per training data, settings, views and
    rules in a process (every benchmark of a run reuses them)."""
    manifest = shards.manifest(warehouse, EMBEDDINGS_TABLE, training)
    if manifest is None:
        raise FileNotFoundError(f"the training dataset {training!r} has no complete embeddings yet")
    settings_key = tuple(sorted(settings.to_dict().items()))
    key = (str(warehouse.root), training, manifest["fingerprint"], settings_key, views, view_rules)
    if key not in _fitted:
        train = load_labelled(warehouse, training, "train")
        val = load_labelled(warehouse, training, "val", views=manifest["test_views"])
        gallery = baselines.Gallery(train.embeddings, train.lat, train.lon)
        validation = (val.embeddings[:, :views], val.lat, val.lon)
        seed = settings.seed
        _fitted.clear()
        _fitted[key] = TrainingSide(
            gallery,
            baselines.fit_knn(gallery, *validation, settings.knn_k, view_rules=view_rules),
            baselines.fit_cells(gallery, *validation, settings.cells, seed, view_rules=view_rules),
            baselines.fit_regressor_on_validation(
                gallery, *validation, steps=settings.regression_steps, seed=seed, view_rules=view_rules
            ),
            baselines.densest_location(gallery),
        )
    return _fitted[key]


def density_bandwidth_km(model: LocDiffModel, settings: MethodSettings) -> float:
    """Kernel width of the sample density: as set, else the half-width of an SHDD peak at the model's L
    (finer structure than that is not representable at degree L)."""
    return settings.density_bandwidth_km or shdd.default_rho_km(model.config.L)


SCORING_STAGES = 4  # baselines fitted, LocDiff sampled, every method with the chosen views, with the plain view


def predict_benchmark(
    warehouse: Warehouse,
    benchmark: str,
    training: str,
    model: LocDiffModel,
    views: int,
    samples_per_view: int,
    settings: MethodSettings,
    exclude: Collection[str] = (),
    progress: Callable[[int], None] = lambda done: None,
) -> BenchmarkPredictions:
    """Every method on the benchmark's test images (less `exclude`), from embeddings with `views` views.
    `progress(1)` is called after each of the SCORING_STAGES stages."""
    protocol = Protocol.from_dict(model.metadata.get("protocol"))
    used_views = min(protocol.views, views)
    side = fit_training_side(warehouse, training, settings, used_views, baseline_view_rules(protocol, model.config.L))
    progress(1)
    test = load_labelled(warehouse, benchmark, "test", views=views)
    excluded = set(exclude)
    keep = [i for i, image_id in enumerate(test.ids) if image_id not in excluded]
    ids, embeddings = [test.ids[i] for i in keep], test.embeddings[keep, :used_views]
    if not ids:
        raise ValueError(f"benchmark {benchmark!r} has no test images to score")
    true_lat, true_lon = test.lat[keep], test.lon[keep]
    n = len(ids)

    def rows(method: str, prediction, draws: int = 1, **extra) -> pa.Table:
        image_ids = np.repeat(ids, draws).tolist()
        truth = (np.repeat(true_lat, draws), np.repeat(true_lon, draws))
        return prediction_rows(
            method, training, image_ids, *truth, prediction.lat, prediction.lon, model.encoder, **extra
        )

    drawn = model.sample(embeddings, samples=samples_per_view, seed=settings.seed)
    progress(1)
    bandwidth = density_bandwidth_km(model, settings)
    separation = 2 * shdd.peak_width_km(model.config.L)  # ranked answers: the same spread for LocDiff and kNN
    tables, locdiff, fell_back = [], None, np.zeros(n, bool)
    weight = protocol.plain_weight
    for suffix, view_count in (("", used_views), (PLAIN_SUFFIX, 1)):
        prediction = model.combine(drawn, protocol.rule, view_count, weight)
        inputs = embeddings[:, :view_count]
        with_samples = prediction.sample_lat.shape[1] > 1  # one sample has no spread and no region of its own
        region = None
        if with_samples:
            levels = (uncertainty.REGION_LEVEL,)
            region = uncertainty.sample_regions(
                prediction.sample_lat, prediction.sample_lon, prediction.lat, prediction.lon, bandwidth, levels
            )[:, 0]
        ranked = model.ranked(drawn, TOP_K, view_count, weight) if model.config.representation == "shdd" else None
        hybrid, hybrid_fell_back = baselines.locdiff_h(
            side.gallery, inputs, prediction.lat, prediction.lon, settings.hybrid_radius_km, weight
        )
        knn = side.knn.predict(inputs)
        knn_ranked = baselines.knn_ranked(side.gallery, inputs, TOP_K, separation, plain_weight=weight)
        spread = prediction.spread_km if with_samples else None
        tables += [
            rows(LOCDIFF + suffix, prediction, spread_km=spread, region_km=region, ranked=ranked),
            rows(LOCDIFF_H + suffix, hybrid),
            rows(KNN + suffix, knn, spread_km=knn.spread_km, ranked=knn_ranked),
            rows(CELLS + suffix, side.cells.predict(inputs)),
            rows(REGRESSION + suffix, side.regressor.predict(inputs)),
        ]
        if not suffix:
            locdiff, fell_back = prediction, hybrid_fell_back
        progress(1)
    draws = settings.chance_draws
    tables.append(rows(CHANCE, baselines.chance(side.gallery, n, draws, settings.seed), draws=draws))
    tables.append(
        rows(CONSTANT, baselines.MethodPrediction(np.full(n, side.constant[0]), np.full(n, side.constant[1])))
    )
    samples = pa.table(
        {
            "image_id": ids,
            "method": [LOCDIFF] * n,
            "sample_lat": list(locdiff.sample_lat.astype(np.float32)),
            "sample_lon": list(locdiff.sample_lon.astype(np.float32)),
            "bandwidth_km": np.full(n, bandwidth),
        },
        schema=SAMPLES_SCHEMA,
    )
    chosen = {
        LOCDIFF: f"{Protocol(protocol.rule, used_views, plain_weight=weight).describe()} x {samples_per_view} "
        "samples (chosen on validation)",
        KNN: f"k={side.knn.k} of {baselines.KNN_K_CHOICES}; views: {side.knn.view_rule.describe()}",
        CELLS: f"cells={len(side.cells.centroids_lat)}, C={side.cells.C:g} of "
        f"{baselines.CELL_COUNT_CHOICES} x {baselines.CELL_C_CHOICES}; views: {side.cells.view_rule.describe()}",
        REGRESSION: f"lr={side.regressor.learning_rate:g}, steps={side.regressor.steps} of "
        f"{baselines.REGRESSION_LEARNING_RATES} x ({max(1, settings.regression_steps // 3)}, "
        f"{settings.regression_steps}); views: {side.regressor.view_rule.describe()}",
        LOCDIFF_H: f"radius={settings.hybrid_radius_km:g}km",
        CONSTANT: f"({side.constant[0]:.2f}, {side.constant[1]:.2f})",
        CHANCE: f"{draws} draws per image",
    }
    return BenchmarkPredictions(tables, samples, n, chosen, float(fell_back.mean()))
