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
`prediction_samples` (every decoded LocDiff sample, for density maps and calibration); the `predictions`
step (steps/predictions.py) caches and writes them. Dagster-free, so tests and notebooks call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method import baseline_densities, baselines, bootstrap, densities, shdd, sphere
from locdiff_pipeline.method.baseline_densities import BaselineDensities
from locdiff_pipeline.method.densities import DensityScores, KernelMixture
from locdiff_pipeline.method.model import LocDiffModel, Prediction, Samples
from locdiff_pipeline.method.protocol import (
    DENSITY_SAMPLES,
    Protocol,
    answer,
    density_draws,
    draws_needed,
    locdiff_density,
    region_bandwidth_km,
)
from locdiff_pipeline.method.views import MEAN_EMBEDDING, ViewRule
from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE, load_labelled
from locdiff_pipeline.steps.prediction_table import prediction_rows

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
        # LocDiff's density (protocol.locdiff_density): its kernels' centres, weights, width and uniform floor
        ("density_lat", pa.list_(pa.float32())),
        ("density_lon", pa.list_(pa.float32())),
        ("density_weight", pa.list_(pa.float32())),
        ("density_bandwidth_km", pa.float64()),
        ("density_floor", pa.float64()),
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
    region_deg: float = sphere.REGION_DEG  # the cells the bootstrap resamples (the truths' regions)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class BenchmarkPredictions:
    tables: list[pa.Table]
    samples: pa.Table
    resamples: bootstrap.Resamples  # of the benchmark's regions, behind every interval of its report
    images: int
    regions: int
    chosen: dict[str, str] = field(default_factory=dict)
    densities: dict[str, str] = field(default_factory=dict)  # each method's density, as chosen on validation
    hybrid_fallback_share: float = 0.0


@dataclass
class FittedBaselines:
    """What every benchmark is scored against, fitted on the training dataset only."""

    gallery: baselines.Gallery
    knn: baselines.KnnRetrieval
    cells: baselines.CellClassifier
    regressor: baselines.UnitVectorRegressor
    constant: tuple[float, float]
    densities: BaselineDensities


_fitted: dict[tuple, FittedBaselines] = {}  # one fit per training data and settings, shared by benchmarks


def baseline_view_rules(protocol: Protocol, L: int) -> tuple[ViewRule, ...]:
    """The view rules the baselines choose from on validation: the mean of the view embeddings, or LocDiff's
    chosen rule on their per-view predictions; both weigh the plain view as LocDiff's protocol does."""
    return tuple(ViewRule(rule, protocol.plain_weight, L) for rule in (MEAN_EMBEDDING, protocol.rule))


def fit_baselines(
    warehouse: Warehouse,
    training: str,
    settings: MethodSettings,
    views: int = 1,
    view_rules: tuple[ViewRule, ...] = (ViewRule(),),
) -> FittedBaselines:
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
        knn = baselines.fit_knn(gallery, *validation, settings.knn_k, view_rules=view_rules)
        cells = baselines.fit_cells(gallery, *validation, settings.cells, seed, view_rules=view_rules)
        regressor = baselines.fit_regressor_on_validation(
            gallery, *validation, steps=settings.regression_steps, seed=seed, view_rules=view_rules
        )
        constant = baselines.densest_location(gallery)
        fitted_densities = baseline_densities.fit_baseline_densities(
            gallery, knn.view_rule.plain_weight, cells, regressor.predict(validation[0]), constant, *validation
        )
        _fitted[key] = FittedBaselines(gallery, knn, cells, regressor, constant, fitted_densities)
    return _fitted[key]


def density_bandwidth_km(model: LocDiffModel, protocol: Protocol, settings: MethodSettings) -> float:
    """Kernel width of the sample density and of the 90 % regions: as set, else the protocol's (calibrated on
    validation, else the half-width of an SHDD peak at the model's L: finer structure than that is not
    representable at degree L)."""
    return settings.density_bandwidth_km or region_bandwidth_km(model, protocol)


SCORING_STAGES = 4  # baselines fitted, LocDiff sampled, every method with the chosen views, with the plain view


@dataclass
class ScoredImages:
    """The benchmark images being scored, and how to turn one method's predictions into table rows."""

    ids: list[str]
    embeddings: np.ndarray  # (N, views, D)
    lat: np.ndarray
    lon: np.ndarray
    training: str
    encoder: dict
    regions: np.ndarray  # the truths' region cells

    @property
    def truth(self) -> np.ndarray:
        """(N, 3) unit vectors of the true places, where densities are scored."""
        return sphere.to_unit(self.lat, self.lon)

    def rows(self, method: str, prediction, draws: int = 1, density: DensityScores | None = None, **extra) -> pa.Table:
        """The table rows of `method`'s predictions (`draws` per image, image-major), with the scores of its
        density at the truths when given."""
        image_ids = np.repeat(self.ids, draws).tolist()
        truth = (np.repeat(self.lat, draws), np.repeat(self.lon, draws))
        if density is not None and draws > 1:
            density = density.repeated(draws)
        regions = np.repeat(self.regions, draws)
        return prediction_rows(
            method,
            self.training,
            image_ids,
            *truth,
            prediction.lat,
            prediction.lon,
            self.encoder,
            regions=regions,
            density=density,
            **extra,
        )


def predict_benchmark(
    warehouse: Warehouse,
    benchmark: str,
    training: str,
    model: LocDiffModel,
    views: int,
    samples_per_view: int | None,
    settings: MethodSettings,
    exclude: Collection[str] = (),
    progress: Callable[[int], None] = lambda done: None,
) -> BenchmarkPredictions:
    """Every method on the benchmark's test images (less `exclude`), from embeddings with `views` views.
    LocDiff answers from the protocol's samples per view (or `samples_per_view`, when given); its 90 %
    region comes from at least protocol.REGION_SAMPLES, its density from protocol.DENSITY_SAMPLES. Each
    method with the chosen views is also scored as a density. `progress(1)` is called after each of the
    SCORING_STAGES stages."""
    recorded = Protocol.from_dict(model.metadata.get("protocol"))
    protocol = replace(recorded, samples=samples_per_view or recorded.samples)
    used_views = min(protocol.views, views)
    fitted = fit_baselines(warehouse, training, settings, used_views, baseline_view_rules(protocol, model.config.L))
    progress(1)
    images = benchmark_images(warehouse, benchmark, training, model.encoder, views, used_views, exclude, settings)
    draws = max(draws_needed(protocol), density_draws(protocol))
    drawn = model.sample(images.embeddings, samples=draws, seed=settings.seed)
    density = locdiff_density(drawn, protocol)  # scored at the truths and stored for the maps
    progress(1)
    tables, chosen_prediction, fell_back = [], None, None
    for suffix, view_count in (("", used_views), (PLAIN_SUFFIX, 1)):
        scored = score_methods(model, drawn, density, fitted, protocol, images, view_count, settings, suffix)
        tables += scored.tables
        if not suffix:
            chosen_prediction, fell_back = scored.locdiff, scored.hybrid_fell_back
        progress(1)
    tables += reference_rows(fitted, images, settings)
    samples = samples_table(images.ids, chosen_prediction, density_bandwidth_km(model, protocol, settings), density)
    chosen = chosen_settings(protocol, used_views, fitted, settings)
    resamples = bootstrap.region_resamples(images.regions, seed=settings.seed)
    return BenchmarkPredictions(
        tables,
        samples,
        resamples,
        len(images.ids),
        len(set(images.regions)),
        chosen,
        density_settings(protocol, fitted),
        float(fell_back.mean()),
    )


def density_settings(protocol: Protocol, fitted: FittedBaselines) -> dict[str, str]:
    """What each method's density used, chosen on validation (for the report's notes and the manifest)."""
    baselines_chosen = fitted.densities.describe()
    locdiff = (
        f"kernels of {protocol.density_bandwidth_km or 0:g} km around {DENSITY_SAMPLES} samples, floor "
        f"{protocol.density_floor or 0:g} (validation NLL {protocol.validation_nll or float('nan'):.3f})"
    )
    return {
        LOCDIFF: locdiff,
        LOCDIFF_H: "LocDiff's kernels around its samples, each refined as LocDiff-H refines the answer",
        KNN: baselines_chosen["knn"],
        CELLS: baselines_chosen["cells"],
        REGRESSION: baselines_chosen["regression"],
        CHANCE: baselines_chosen["chance"],
        CONSTANT: baselines_chosen["constant"],
    }


def benchmark_images(
    warehouse: Warehouse,
    benchmark: str,
    training: str,
    encoder: dict,
    views: int,
    used_views: int,
    exclude: Collection[str],
    settings: MethodSettings,
) -> ScoredImages:
    """The benchmark's test images less `exclude`, with their first `used_views` view embeddings."""
    test = load_labelled(warehouse, benchmark, "test", views=views)
    excluded = set(exclude)
    keep = [i for i, image_id in enumerate(test.ids) if image_id not in excluded]
    if not keep:
        raise ValueError(f"benchmark {benchmark!r} has no test images to score")
    ids, lat, lon = [test.ids[i] for i in keep], test.lat[keep], test.lon[keep]
    regions = sphere.region_of(lat, lon, settings.region_deg)
    return ScoredImages(ids, test.embeddings[keep, :used_views], lat, lon, training, encoder, regions)


@dataclass
class ScoredMethods:
    tables: list[pa.Table]
    locdiff: Prediction  # its sample_lat / sample_lon hold every sample drawn (the posterior), not only the answer's
    hybrid_fell_back: np.ndarray


def score_methods(
    model: LocDiffModel,
    drawn: Samples,
    density: KernelMixture,
    fitted: FittedBaselines,
    protocol: Protocol,
    images: ScoredImages,
    view_count: int,
    settings: MethodSettings,
    suffix: str,
) -> ScoredMethods:
    """LocDiff (its answer from the protocol's samples; its spread, 90 % region and ranked answers from every
    sample drawn, the model's posterior; its density `density`), LocDiff-H and the baselines from each image's
    first `view_count` views, as rows of methods named with `suffix`."""
    weight = protocol.plain_weight
    prediction, region = answer(model, drawn, protocol, view_count, density_bandwidth_km(model, protocol, settings))
    inputs = images.embeddings[:, :view_count]
    posterior = drawn.first(view_count, draws_needed(protocol))
    ranked = model.ranked(posterior, TOP_K, plain_weight=weight) if model.config.representation == "shdd" else None
    hybrid, hybrid_fell_back = baselines.locdiff_h(
        fitted.gallery, inputs, prediction.lat, prediction.lon, settings.hybrid_radius_km, weight
    )
    knn = fitted.knn.predict(inputs)
    separation = 2 * shdd.peak_width_km(model.config.L)  # ranked answers: the same spread for LocDiff and kNN
    knn_ranked = baselines.knn_ranked(fitted.gallery, inputs, TOP_K, separation, plain_weight=weight)
    regression = fitted.regressor.predict(inputs)
    scores = {} if suffix else method_densities(drawn, density, fitted, protocol, images, regression, settings)
    tables = [
        images.rows(
            LOCDIFF + suffix,
            prediction,
            spread_km=prediction.spread_km,
            region_km=region,
            ranked=ranked,
            density=scores.get(LOCDIFF),
        ),
        images.rows(LOCDIFF_H + suffix, hybrid, density=scores.get(LOCDIFF_H)),
        images.rows(KNN + suffix, knn, spread_km=knn.spread_km, ranked=knn_ranked, density=scores.get(KNN)),
        images.rows(CELLS + suffix, fitted.cells.predict(inputs), density=scores.get(CELLS)),
        images.rows(REGRESSION + suffix, regression, density=scores.get(REGRESSION)),
    ]
    return ScoredMethods(tables, prediction, hybrid_fell_back)


def method_densities(
    drawn: Samples,
    locdiff: KernelMixture,
    fitted: FittedBaselines,
    protocol: Protocol,
    images: ScoredImages,
    regression: baselines.MethodPrediction,
    settings: MethodSettings,
) -> dict[str, DensityScores]:
    """Each learned method's density scored at the truths (the same seeded draws for every method's regions):
    LocDiff's kernels around its samples (protocol.locdiff_density); LocDiff-H's around the same samples each
    refined as LocDiff-H refines LocDiff's answer (the width and floor LocDiff's, chosen on validation);
    the baselines' as baseline_densities fitted them on validation."""
    truth, chosen = images.truth, fitted.densities
    posterior = drawn.first(protocol.views, density_draws(protocol))
    sample_lat, sample_lon = (np.reshape(a, (len(truth), -1)) for a in (posterior.lat, posterior.lon))
    refined_lat, refined_lon, _ = baselines.locdiff_h_points(
        fitted.gallery,
        images.embeddings[:, : protocol.views],
        sample_lat,
        sample_lon,
        settings.hybrid_radius_km,
        protocol.plain_weight,
    )
    hybrid = densities.samples_mixture(
        refined_lat, refined_lon, locdiff.bandwidth_km, locdiff.floor, locdiff.weights[0]
    )
    knn = chosen.knn.parameters
    neighbours = baseline_densities.knn_neighbours(fitted.gallery, images.embeddings, fitted.knn.view_rule.plain_weight)
    cells = chosen.cells.parameters
    probabilities = baseline_densities.cell_probabilities(fitted.cells, images.embeddings, cells["temperature"])
    made = {
        LOCDIFF: locdiff,
        LOCDIFF_H: hybrid,
        KNN: baseline_densities.knn_density(fitted.gallery, neighbours, **knn),
        CELLS: densities.CellDensity(probabilities, chosen.cell_centroids, chosen.cell_areas, cells["floor"]),
        REGRESSION: densities.point_kernel(regression.lat, regression.lon, **chosen.regression.parameters),
    }
    return {name: density.scores(truth, np.random.default_rng(settings.seed)) for name, density in made.items()}


def reference_rows(fitted: FittedBaselines, images: ScoredImages, settings: MethodSettings) -> list[pa.Table]:
    """The `chance` rows (a random training location, settings.chance_draws per image; its density the
    training locations') and the `constant` rows (the training set's densest location; its density a kernel
    there), each density's parameters chosen on validation."""
    n, draws = len(images.ids), settings.chance_draws
    constant = baselines.MethodPrediction(np.full(n, fitted.constant[0]), np.full(n, fitted.constant[1]))
    rng = np.random.default_rng(settings.seed)
    chance_density = baseline_densities.chance_density(fitted.gallery, **fitted.densities.chance.parameters)
    constant_density = densities.point_kernel(constant.lat, constant.lon, **fitted.densities.constant.parameters)
    return [
        images.rows(
            CHANCE,
            baselines.chance(fitted.gallery, n, draws, settings.seed),
            draws=draws,
            density=chance_density.scores(images.truth, rng),
        ),
        images.rows(CONSTANT, constant, density=constant_density.scores(images.truth, rng)),
    ]


def samples_table(ids: list[str], prediction: Prediction, bandwidth_km: float, density: KernelMixture) -> pa.Table:
    """Every decoded LocDiff sample per image (its answer's posterior, for the spread and the circle) and the
    kernels of its density, so SQL and the report's maps rebuild the density exactly."""
    n = len(ids)
    lat, lon = sphere.from_unit(density.centres.reshape(-1, 3))
    shape = density.centres.shape[:2]
    return pa.table(
        {
            "image_id": ids,
            "method": [LOCDIFF] * n,
            "sample_lat": list(prediction.sample_lat.astype(np.float32)),
            "sample_lon": list(prediction.sample_lon.astype(np.float32)),
            "bandwidth_km": np.full(n, bandwidth_km),
            "density_lat": list(lat.reshape(shape).astype(np.float32)),
            "density_lon": list(lon.reshape(shape).astype(np.float32)),
            "density_weight": list(density.weights.astype(np.float32)),
            "density_bandwidth_km": np.full(n, density.bandwidth_km),
            "density_floor": np.full(n, density.floor),
        },
        schema=SAMPLES_SCHEMA,
    )


def chosen_settings(
    protocol: Protocol, used_views: int, fitted: FittedBaselines, settings: MethodSettings
) -> dict[str, str]:
    """What each method used, as the report prints it (settings chosen on validation, with their grids)."""
    return {
        LOCDIFF: f"{replace(protocol, views=used_views).describe()} (chosen on validation); the 90 % region from "
        f"{draws_needed(protocol)} samples per view",
        KNN: f"k={fitted.knn.k} of {baselines.KNN_K_CHOICES}, {fitted.knn.aggregate} of "
        f"{baselines.KNN_AGGREGATIONS}; views: {fitted.knn.view_rule.describe()}",
        CELLS: f"cells={len(fitted.cells.centroids_lat)}, C={fitted.cells.C:g} of "
        f"{baselines.CELL_COUNT_CHOICES} x {baselines.CELL_C_CHOICES}; views: {fitted.cells.view_rule.describe()}",
        REGRESSION: f"lr={fitted.regressor.learning_rate:g}, steps={fitted.regressor.steps} of "
        f"{baselines.REGRESSION_LEARNING_RATES} x ({max(1, settings.regression_steps // 3)}, "
        f"{settings.regression_steps}); views: {fitted.regressor.view_rule.describe()}",
        LOCDIFF_H: f"radius={settings.hybrid_radius_km:g}km",
        CONSTANT: f"({fitted.constant[0]:.2f}, {fitted.constant[1]:.2f})",
        CHANCE: f"{settings.chance_draws} draws per image",
    }
