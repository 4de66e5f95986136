"""LocDiff's test-time protocol, chosen on validation: how many views, how many diffusion samples per view,
and how they combine.

Test-time views help only when they agree with the plain view; with a weak encoder, or imagery whose
augmentations move its content, they can pull a prediction away. So the protocol is not assumed but
chosen: every (rule, views, plain-view weight) candidate is scored on the validation images' own
test-time views, and the best is recorded with the model. The plain view (one view) is always a
candidate, so the chosen protocol is never worse than the plain view on validation.

Samples are a candidate's dimension too: one sample is a draw from the posterior, not its mode, and the
mixture of several (the mean of their SHDD vectors) is the posterior's density, whose mode is the better
answer when the model has learnt a spread-out posterior.

A candidate with more views or more samples must earn its place: it is eligible only when its gain over
the plain view with one sample, paired over the validation images, exceeds MARGIN_STANDARD_ERRORS standard
errors of that gain. With a few hundred validation images a gain of one or two images is noise, which a
plain argmax would adopt and the test set would then take back; and every extra view or sample costs a
diffusion run at test time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from locdiff_pipeline.method import densities, metrics, shdd, sphere, uncertainty
from locdiff_pipeline.method.model import LocDiffModel, Prediction, Samples
from locdiff_pipeline.method.views import COMBINE_RULES, PLAIN_WEIGHTS, sample_weights

VIEW_CHOICES = (1, 2, 4, 8, 16)
SAMPLE_CHOICES = (1, 4, 16, 64)
MARGIN_STANDARD_ERRORS = 2.0
REGION_SAMPLES = 16  # samples per image drawn at least, whatever the protocol answers from: the 90 % region's
# diffusion samples the choice may draw on validation: each candidate count of samples per view is tried only
# if every view of every validation image can have that many within it (a GPU affords every choice)
SAMPLE_BUDGET = {"cpu": 50_000, "cuda": 5_000_000}
REGION_BANDWIDTHS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # region kernel widths tried, in decoder radii
# LocDiff's density: a kernel around each of this many draws per image (spread over the protocol's views), enough
# for several modes to show where the draws disagree; its width and floor chosen on validation by NLL
DENSITY_SAMPLES = 64
FALLBACK_DENSITY_KM = 500.0  # the kernel of a protocol recorded with neither a density nor a region width


@dataclass(frozen=True)
class Protocol:
    """The recorded choice: combine `samples` diffusion samples of each of the first `views` views by `rule`,
    the plain view weighing `plain_weight` (None: every view alike); views are made for `imagery`."""

    rule: str = "mixture"
    views: int = 1
    validation_score: float | None = None
    imagery: str = "ground"
    plain_weight: float | None = None
    samples: int = 1
    # the width of the kernel that turns samples into 90 % regions, calibrated on validation (None: the
    # decoder's radius); then, measured there with it, the share of truths inside their region and the
    # correlation of log sample spread with log error
    region_bandwidth_km: float | None = None
    validation_coverage: float | None = None
    validation_spread_error_correlation: float | None = None
    # LocDiff's density (densities.KernelMixture over DENSITY_SAMPLES draws), chosen on validation by NLL; then,
    # measured there, its NLL (nats relative to uniform) and the share of truths in its 90 % region
    density_bandwidth_km: float | None = None
    density_floor: float | None = None
    validation_nll: float | None = None
    validation_hpd_coverage: float | None = None

    def describe(self) -> str:
        weight = "" if self.views == 1 or self.plain_weight is None else f", plain view {self.plain_weight:g}"
        draws = f" x {self.samples} samples" if self.samples > 1 else ""
        return f"{self.rule} of {self.views} view{'s' if self.views > 1 else ''}{weight}{draws}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Protocol:
        return cls(**data) if data else cls()


def view_choices(available: int) -> list[int]:
    """The view counts to try: VIEW_CHOICES up to what the embeddings hold, and all of them."""
    return sorted({*(v for v in VIEW_CHOICES if v <= available), available})


def choose_protocol(
    model: LocDiffModel,
    embeddings: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    sample_choices: tuple[int, ...] = SAMPLE_CHOICES,
    seed: int = 0,
    imagery: str = "ground",
) -> tuple[Protocol, list[dict]]:
    """The best (rule, views, plain weight, samples) on validation embeddings (N, V, D), and every candidate's
    scores; then the width of the kernel that turns its samples into 90 % regions, calibrated on the same
    images (`calibrate_region`).

    The samples are drawn once, the largest of the sample_choices that SAMPLE_BUDGET affords on the model's
    device for each of the V views (enough for REGION_SAMPLES per image); a candidate with k views and s
    samples uses each image's first k views and their first s samples. Ties go to fewer views, then fewer
    samples, then to the mixture rule, then to uniform weights."""
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"validation embeddings must be (N, views, D), got {array.shape}")
    budget = SAMPLE_BUDGET.get(model.device.type, SAMPLE_BUDGET["cpu"])
    affordable = tuple(s for s in sample_choices if s == 1 or array.shape[0] * array.shape[1] * s <= budget)
    drawn = model.sample(array, max(*affordable, -(-REGION_SAMPLES // array.shape[1])), seed)
    grid, per_image = score_candidates(model, drawn, lat, lon, affordable)
    best = select(grid, per_image)
    chosen = Protocol(best["rule"], best["views"], best["score"], imagery, best["plain_weight"], best["samples"])
    return fit_density(model, array, calibrate_region(model, drawn, chosen, lat, lon), lat, lon, seed), grid


def score_candidates(
    model: LocDiffModel, drawn: Samples, lat: np.ndarray, lon: np.ndarray, sample_choices: tuple[int, ...]
) -> tuple[list[dict], list[np.ndarray]]:
    """Every (samples, views, rule, plain weight) candidate's accuracies on the drawn validation samples, and
    its per-image scores (for the paired noise margin)."""
    grid, per_image = [], []
    for samples in sorted(sample_choices):
        for views in view_choices(drawn.lat.shape[1]):
            for rule in COMBINE_RULES:
                for plain_weight in PLAIN_WEIGHTS if views > 1 else (None,):
                    prediction = model.combine(drawn.first(views, samples), rule, plain_weight=plain_weight)
                    scores = metrics.accuracy(lat, lon, prediction.lat, prediction.lon)
                    row = {"rule": rule, "views": views, "samples": samples, "plain_weight": plain_weight}
                    grid.append({**row, "score": metrics.validation_score(scores), **scores})
                    per_image.append(metrics.per_image_score(lat, lon, prediction.lat, prediction.lon))
    return grid, per_image


def calibrate_region(
    model: LocDiffModel, drawn: Samples, protocol: Protocol, lat: np.ndarray, lon: np.ndarray
) -> Protocol:
    """The protocol with its region kernel's width: the narrowest of REGION_BANDWIDTHS (multiples of the
    decoder's radius) whose 90 % regions hold at least 90 % of the validation truths (else the widest), and
    what it measured there: that coverage and how the samples' spread tracks the error.

    Why: a region drawn from the samples alone is as narrow as the samples agree, and samples that agree
    are no guarantee of being right; the kernel's width is the one free parameter of the region, so
    validation sets it, as conformal prediction would set a radius."""
    base = shdd.default_rho_km(model.config.L)
    prediction, _ = answer(model, drawn, protocol, protocol.views, base)
    errors = sphere.haversine_km(lat, lon, prediction.lat, prediction.lon)
    for factor in REGION_BANDWIDTHS:  # narrowest first; none enough: the widest, the last tried
        coverage = float(np.mean(errors <= _regions(prediction, base * factor)))
        if coverage >= uncertainty.REGION_LEVEL:
            break
    return replace(
        protocol,
        region_bandwidth_km=base * factor,
        validation_coverage=coverage,
        validation_spread_error_correlation=uncertainty.spread_error_correlation(prediction.spread_km, errors),
    )


def density_draws(protocol: Protocol) -> int:
    """Samples per view that make LocDiff's density: DENSITY_SAMPLES per image over the protocol's views."""
    return -(-DENSITY_SAMPLES // protocol.views)


def locdiff_density(
    drawn: Samples, protocol: Protocol, bandwidth_km: float | None = None, floor: float | None = None
) -> densities.KernelMixture:
    """LocDiff's density for each image: a kernel around each of its first density_draws(protocol) decoded
    samples of each of the protocol's views, the views weighted as the protocol weighs them. The width and
    floor are the protocol's (chosen on validation) unless given.

    Why kernels around the decoded samples and not the mean of their SHDD vectors: the truncated series of a
    mixture of deltas goes negative (it rings), so it is no density as it is; clipped and renormalised, its
    mass depends on the clipping, and its width is fixed by L. The kernel mixture is a density exactly,
    positive everywhere, and its one width is fitted like every other method's."""
    posterior = drawn.first(protocol.views, density_draws(protocol))
    n, views, samples = posterior.lat.shape
    # a protocol recorded before densities were fitted: its region kernel, no floor
    width = bandwidth_km or protocol.density_bandwidth_km or protocol.region_bandwidth_km or FALLBACK_DENSITY_KM
    return densities.samples_mixture(
        posterior.lat.reshape(n, -1),
        posterior.lon.reshape(n, -1),
        width,
        (protocol.density_floor or 0.0) if floor is None else floor,
        sample_weights(views, samples, protocol.plain_weight),
    )


def fit_density(
    model: LocDiffModel, embeddings: np.ndarray, protocol: Protocol, lat: np.ndarray, lon: np.ndarray, seed: int = 0
) -> Protocol:
    """The protocol with its density's kernel width and floor: the pair of densities.kernel_grid() whose
    densities give the validation truths the smallest mean negative log-likelihood; and, with them, that NLL
    and the share of truths inside the 90 % highest-density regions."""
    drawn = model.sample(embeddings[:, : protocol.views], density_draws(protocol), seed)
    truth = sphere.to_unit(lat, lon)
    fit = densities.fit_by_nll(
        densities.kernel_grid(), lambda **chosen: locdiff_density(drawn, protocol, **chosen), truth
    )
    width, floor = fit.parameters["bandwidth_km"], fit.parameters["floor"]
    chosen = replace(protocol, density_bandwidth_km=width, density_floor=floor)
    scores = locdiff_density(drawn, chosen).scores(truth, np.random.default_rng(seed))
    return replace(chosen, validation_nll=fit.nll, validation_hpd_coverage=scores.coverage())


def select(grid: list[dict], per_image: list[np.ndarray]) -> dict:
    """The chosen row of `grid` (candidates with "rule", "views", "samples", "plain_weight", "score"), given
    each candidate's per-image scores: the best-scoring eligible one, where a candidate is eligible when it is
    a plain-view, one-sample candidate or beats the best of those by more than MARGIN_STANDARD_ERRORS paired
    standard errors. Each row gains "gain_over_plain", "gain_standard_error" and "eligible". Ties go to fewer
    views, then fewer samples, then the mixture rule, then uniform weights."""

    def preference(row: dict) -> tuple:
        return (
            row["score"],
            -row["views"],
            -row.get("samples", 1),
            row["rule"] == "mixture",
            row["plain_weight"] is None,
        )

    def is_plain(row: dict) -> bool:
        return row["views"] == 1 and row.get("samples", 1) == 1

    plain = max((i for i, row in enumerate(grid) if is_plain(row)), key=lambda i: preference(grid[i]))
    for row, scores in zip(grid, per_image, strict=True):
        gain = scores - per_image[plain]
        error = float(np.std(gain, ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
        row["gain_over_plain"], row["gain_standard_error"] = float(gain.mean()), error
        row["eligible"] = bool(is_plain(row) or gain.mean() > MARGIN_STANDARD_ERRORS * error)
    return max((row for row in grid if row["eligible"]), key=preference)


def draws_needed(protocol: Protocol) -> int:
    """Samples per view to draw for `answer`: the protocol's, and enough for REGION_SAMPLES per image."""
    return max(protocol.samples, -(-REGION_SAMPLES // protocol.views))


def answer(
    model: LocDiffModel, drawn: Samples, protocol: Protocol, views: int | None = None, bandwidth_km: float | None = None
) -> tuple[Prediction, np.ndarray]:
    """Each image's answer under `protocol` (from its first `views` views, the protocol's samples of each)
    with its 90 % region radius in km. The region, the spread and the prediction's samples come from the
    first draws_needed(protocol) samples of each view (the model's posterior), so an answer from one sample
    still has a region of its own; the region's kernel is `bandwidth_km`, else the protocol's calibrated one,
    else the decoder's radius."""
    weight = protocol.plain_weight
    point = model.combine(drawn.first(views, protocol.samples), protocol.rule, plain_weight=weight)
    posterior = drawn.first(views, draws_needed(protocol))
    n, view_count, samples = posterior.lat.shape
    units = sphere.to_unit(posterior.lat.ravel(), posterior.lon.ravel()).reshape(n, view_count * samples, 3)
    spread = sphere.spread_about_km(
        units, sphere.to_unit(point.lat, point.lon), sample_weights(view_count, samples, weight)
    )
    prediction = Prediction(point.lat, point.lon, spread, posterior.lat.reshape(n, -1), posterior.lon.reshape(n, -1))
    return prediction, _regions(prediction, bandwidth_km or region_bandwidth_km(model, protocol))


def region_bandwidth_km(model: LocDiffModel, protocol: Protocol) -> float:
    """The kernel width of `protocol`'s 90 % regions: calibrated on validation, else the decoder's radius."""
    return protocol.region_bandwidth_km or shdd.default_rho_km(model.config.L)


def sample_and_answer(
    model: LocDiffModel, embeddings: np.ndarray, protocol: Protocol, seed: int = 0
) -> tuple[Prediction, np.ndarray, Samples]:
    """An image's answer and 90 % region as the benchmark table gives them: draws_needed(protocol) samples of
    each of its views with `seed` (keyed by the image, not the batch), then `answer`. Also the draws."""
    drawn = model.sample(embeddings, samples=draws_needed(protocol), seed=seed)
    prediction, region = answer(model, drawn, protocol)
    return prediction, region, drawn


def _regions(prediction: Prediction, bandwidth_km: float) -> np.ndarray:
    """The 90 % region radius in km of each image's samples under a kernel of `bandwidth_km`."""
    level = (uncertainty.REGION_LEVEL,)
    return uncertainty.sample_regions(
        prediction.sample_lat, prediction.sample_lon, prediction.lat, prediction.lon, bandwidth_km, level
    )[:, 0]
