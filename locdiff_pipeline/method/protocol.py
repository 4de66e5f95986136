"""LocDiff's test-time protocol, chosen on validation: how many views, and how their samples combine.

Test-time views help only when they agree with the plain view; with a weak encoder, or imagery whose
augmentations move its content, they can pull a prediction away. So the protocol is not assumed but
chosen: every (rule, views, plain-view weight) candidate is scored on the validation images' own
test-time views, and the best is recorded with the model. The plain view (one view) is always a
candidate, so the chosen protocol is never worse than the plain view on validation.

A candidate with more views must earn its place: it is eligible only when its gain over the plain view,
paired over the validation images, exceeds MARGIN_STANDARD_ERRORS standard errors of that gain. With a
few hundred validation images a gain of one or two images is noise, which a plain argmax would adopt
and the test set would then take back; and every extra view costs a sample at test time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from locdiff_pipeline.method import metrics
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.method.views import COMBINE_RULES, PLAIN_WEIGHTS

VIEW_CHOICES = (1, 2, 4, 8, 16)
MARGIN_STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class Protocol:
    """The recorded choice: combine the first `views` views by `rule`, the plain view weighing
    `plain_weight` (None: every view alike); views are made for `imagery`."""

    rule: str = "mixture"
    views: int = 1
    validation_score: float | None = None
    imagery: str = "ground"
    plain_weight: float | None = None

    def describe(self) -> str:
        weight = "" if self.views == 1 or self.plain_weight is None else f", plain view {self.plain_weight:g}"
        return f"{self.rule} of {self.views} view{'s' if self.views > 1 else ''}{weight}"

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
    samples: int = 1,
    seed: int = 0,
    imagery: str = "ground",
) -> tuple[Protocol, list[dict]]:
    """The best (rule, views, plain weight) on validation embeddings (N, V, D), and every candidate's scores.

    The samples are drawn once for all V views; a candidate with k views uses each image's first k.
    Ties go to fewer views (cheaper at test time), then to the mixture rule, then to uniform weights."""
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"validation embeddings must be (N, views, D), got {array.shape}")
    drawn = model.sample(array, samples, seed)
    grid, per_image = [], []
    for views in view_choices(array.shape[1]):
        for rule in COMBINE_RULES:
            for plain_weight in PLAIN_WEIGHTS if views > 1 else (None,):
                prediction = model.combine(drawn, rule, views, plain_weight)
                scores = metrics.accuracy(lat, lon, prediction.lat, prediction.lon)
                score = metrics.validation_score(scores)
                grid.append({"rule": rule, "views": views, "plain_weight": plain_weight, "score": score, **scores})
                per_image.append(metrics.per_image_score(lat, lon, prediction.lat, prediction.lon))
    best = select(grid, per_image)
    return Protocol(best["rule"], best["views"], best["score"], imagery, best["plain_weight"]), grid


def select(grid: list[dict], per_image: list[np.ndarray]) -> dict:
    """The chosen row of `grid` (candidates with "rule", "views", "plain_weight", "score"), given each
    candidate's per-image scores: the best-scoring eligible one, where a candidate is eligible when it is
    a plain-view candidate or beats the best plain-view candidate by more than MARGIN_STANDARD_ERRORS
    paired standard errors. Each row gains "gain_over_plain", "gain_standard_error" and "eligible".
    Ties go to fewer views, then the mixture rule, then uniform weights."""

    def preference(row: dict) -> tuple:
        return row["score"], -row["views"], row["rule"] == "mixture", row["plain_weight"] is None

    plain = max((i for i, row in enumerate(grid) if row["views"] == 1), key=lambda i: preference(grid[i]))
    for row, scores in zip(grid, per_image, strict=True):
        gain = scores - per_image[plain]
        error = float(np.std(gain, ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
        row["gain_over_plain"], row["gain_standard_error"] = float(gain.mean()), error
        row["eligible"] = bool(row["views"] == 1 or gain.mean() > MARGIN_STANDARD_ERRORS * error)
    return max((row for row in grid if row["eligible"]), key=preference)
