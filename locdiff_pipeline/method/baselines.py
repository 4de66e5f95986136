"""Baselines on the same frozen image embeddings, and LocDiff-H.

The three families the paper compares against, each fitted on the training embeddings and tuned on
the validation split (never on test):

- kNN retrieval (the GeoCLIP family): cosine nearest training images, prediction = spherical centre
  of the top-k locations.
- cell classification (PlaNet / PIGEON): a cluster partition of the training locations, a
  multinomial logistic classifier over cells, prediction = the winning cell's centroid.
- direct regression (the naive family): an MLP from embedding to a unit vector, normalised.

LocDiff-H refines a LocDiff prediction with the retrieval gallery: the best-matching gallery image
within 200 km of it, or LocDiff's own prediction when that ring is empty.

Multi-view inputs (N, V, D): every method sees all test-time views, combined by a view rule chosen on
validation with its hyper-parameters (`views.ViewRule`): the normalised mean of the view embeddings, or
per-view predictions combined by LocDiff's own rule (the mixture's mode, or the spherical centre).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from locdiff_pipeline.method import metrics, retrieval, shdd, sphere, views
from locdiff_pipeline.method.standardise import guarded_spread, standardised
from locdiff_pipeline.method.views import ViewRule

KNN_K_CHOICES = (1, 3, 5, 10, 20, 50, 100)
# how kNN turns its neighbours' locations into one answer: their spherical centre, or the mode of their
# density (the mixture of their SHDD deltas, decoded: the densest place, never a point between places)
KNN_AGGREGATIONS = ("centre", "mode")
KNN_MODE_L = 20
CELL_COUNT_CHOICES = (16, 32, 64, 128, 256)
CELL_C_CHOICES = (0.1, 1.0, 10.0)
REGRESSION_LEARNING_RATES = (3e-4, 1e-3, 3e-3)
MIN_IMAGES_PER_CELL = 10
HYBRID_RADIUS_KM = 200.0
HYBRID_CANDIDATES = 256  # large galleries: LocDiff-H looks among this many nearest images (exact search: all)


@dataclass
class MethodPrediction:
    lat: np.ndarray
    lon: np.ndarray
    spread_km: np.ndarray | None = None


@dataclass
class Gallery:
    """Training images and their locations: the retrieval database and every baseline's training data.

    Inputs are standardised with the training statistics, as LocDiff's condition is: seeded-init (and
    real CLIP) embeddings share one large common direction, and raw cosines or logits on them mostly
    measure that direction. `features` are the standardised training embeddings, `embeddings` the
    same made unit-norm for cosine retrieval."""

    embeddings: np.ndarray
    lat: np.ndarray
    lon: np.ndarray

    def __post_init__(self) -> None:
        raw = normalise(self.embeddings)
        self.mean, self.std = raw.mean(axis=0), guarded_spread(raw.std(axis=0))
        self.features = standardised(raw, self.mean, self.std)
        self.embeddings = _unit(self.features)
        self.units = sphere.to_unit(self.lat, self.lon)
        self._retriever: retrieval.Retriever | None = None

    @property
    def retriever(self) -> retrieval.Retriever:
        """The search over `embeddings`, built at first use (an index over a large gallery takes a while)."""
        if self._retriever is None:
            self._retriever = retrieval.Retriever(self.embeddings)
        return self._retriever

    def standardise(self, embeddings: np.ndarray, plain_weight: float | None = None) -> np.ndarray:
        """(N, D) or (N, views, D) embeddings as the baselines see them: view-averaged, standardised."""
        return standardised(views.mean_embedding(embeddings, plain_weight), self.mean, self.std)

    def queries(self, embeddings: np.ndarray, plain_weight: float | None = None) -> np.ndarray:
        """Unit-norm standardised embeddings, comparable by cosine with `embeddings`."""
        return _unit(self.standardise(embeddings, plain_weight))


def _unit(array: np.ndarray) -> np.ndarray:
    return (array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Unit-norm rows; (N, V, D) multi-view input becomes the normalised mean of its views."""
    return views.mean_embedding(embeddings)


def top_k_similar(gallery: Gallery, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar gallery rows (cosine) per query, best first: exact for galleries up
    to retrieval.EXACT_MAX_ROWS, a faiss IVF index above (`retrieval.Retriever`)."""
    return gallery.retriever.search(queries, k)


def knn_predict(gallery: Gallery, embeddings: np.ndarray, k: int, aggregate: str = "centre") -> MethodPrediction:
    """The k most similar training images' locations, as one answer (KNN_AGGREGATIONS) with their RMS spread
    around it."""
    neighbours = top_k_similar(gallery, gallery.queries(embeddings), k)
    lat, lon, spread = sphere.grouped_centre_and_spread(gallery.units[neighbours])
    if aggregate == "mode":
        mixture = shdd.encode(gallery.lat[neighbours].ravel(), gallery.lon[neighbours].ravel(), KNN_MODE_L)
        lat, lon = shdd.decode(mixture.reshape(len(neighbours), k, -1).mean(axis=1), KNN_MODE_L)
        spread = sphere.spread_about_km(gallery.units[neighbours], sphere.to_unit(lat, lon))
    elif aggregate != "centre":
        raise ValueError(f"kNN aggregation must be one of {KNN_AGGREGATIONS}, got {aggregate!r}")
    return MethodPrediction(lat, lon, spread)


def _pick(
    candidates: list,
    predict: Callable[[object, np.ndarray], MethodPrediction],
    validation_embeddings: np.ndarray,
    val_lat: np.ndarray,
    val_lon: np.ndarray,
    view_rules: Sequence[ViewRule] = (ViewRule(),),
) -> tuple[object, ViewRule]:
    """The (candidate, view rule) pair whose prediction scores best on validation (mean of the five
    accuracies); `predict(candidate, embeddings)` takes (N, D) embeddings. Ties go to the earlier pair."""
    scored = []
    for candidate in candidates:
        for rule in _distinct_rules(view_rules, validation_embeddings):
            prediction = views.apply(lambda e, c=candidate: predict(c, e), validation_embeddings, rule)
            score = metrics.validation_score(metrics.accuracy(val_lat, val_lon, prediction.lat, prediction.lon))
            scored.append((score, -len(scored), candidate, rule))
    best = max(scored, key=lambda row: row[:2])
    return best[2], best[3]


def _distinct_rules(view_rules: Sequence[ViewRule], embeddings: np.ndarray) -> list[ViewRule]:
    """The rules worth scoring: with a single view every rule gives the same answer, so only the first."""
    single = np.ndim(embeddings) == 2 or np.shape(embeddings)[1] == 1
    return list(view_rules[:1]) if single else list(dict.fromkeys(view_rules))


@dataclass
class KnnRetrieval:
    """kNN retrieval with its chosen k, aggregation and view rule."""

    gallery: Gallery
    k: int
    view_rule: ViewRule = field(default_factory=ViewRule)
    aggregate: str = "centre"

    def predict(self, embeddings: np.ndarray) -> MethodPrediction:
        return views.apply(lambda e: knn_predict(self.gallery, e, self.k, self.aggregate), embeddings, self.view_rule)


def fit_knn(
    gallery: Gallery,
    val_embeddings: np.ndarray,
    val_lat: np.ndarray,
    val_lon: np.ndarray,
    k: int | None = None,
    view_rules: Sequence[ViewRule] = (ViewRule(),),
) -> KnnRetrieval:
    """kNN retrieval with k as given, else the best of KNN_K_CHOICES, with the best aggregation
    (KNN_AGGREGATIONS) and view rule (`view_rules`) on validation."""
    counts = [k] if k is not None else [c for c in KNN_K_CHOICES if c <= len(gallery.lat)]
    candidates = [(count, aggregate) for count in counts for aggregate in KNN_AGGREGATIONS]
    (best_k, aggregate), rule = _pick(
        candidates, lambda c, e: knn_predict(gallery, e, *c), val_embeddings, val_lat, val_lon, view_rules
    )
    return KnnRetrieval(gallery, best_k, rule, aggregate)


@dataclass
class CellClassifier:
    """Cells = spherical k-means clusters of training locations; a logistic classifier over them."""

    centroids_lat: np.ndarray
    centroids_lon: np.ndarray
    classifier: object
    gallery: Gallery
    C: float = 10.0
    view_rule: ViewRule = field(default_factory=ViewRule)

    def predict(self, embeddings: np.ndarray) -> MethodPrediction:
        return views.apply(self._predict_rows, embeddings, self.view_rule)

    def _predict_rows(self, embeddings: np.ndarray) -> MethodPrediction:
        cell = self.classifier.predict(self.gallery.standardise(embeddings))
        return MethodPrediction(self.centroids_lat[cell], self.centroids_lon[cell])


def cell_partition(gallery: Gallery, cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster the training locations into `cells` cells (k-means on unit vectors, so distances are
    chords on the sphere): (label per image, centre lat, centre lon), each centre the spherical centre of
    its cell's training locations."""
    from sklearn.cluster import KMeans

    cells = max(1, min(cells, len(gallery.lat)))
    labels = KMeans(n_clusters=cells, n_init=4, random_state=seed).fit_predict(gallery.units)
    centre_lat, centre_lon = np.empty(cells), np.empty(cells)
    for cell in np.unique(labels):
        inside = labels == cell
        centre_lat[cell], centre_lon[cell] = sphere.spherical_centre(gallery.lat[inside], gallery.lon[inside])
    return labels, centre_lat, centre_lon


def fit_cell_classifier(
    gallery: Gallery,
    cells: int,
    seed: int = 0,
    C: float = 10.0,
    partition: tuple | None = None,
    start: SoftmaxClassifier | None = None,
) -> CellClassifier:
    """A multinomial logistic regression (inverse regularisation C) from standardised embedding to cell,
    started from `start`'s weights when given (a warm start along a path of C)."""
    labels, centre_lat, centre_lon = partition or cell_partition(gallery, cells, seed)
    classifier = SoftmaxClassifier.fit(gallery.features, labels, len(centre_lat), C, start)
    return CellClassifier(centre_lat, centre_lon, classifier, gallery, C)


class SoftmaxClassifier:
    """Multinomial logistic regression with sklearn's objective (mean cross-entropy + ||W||^2 / (2 C N)),
    solved by full-batch L-BFGS in torch: the same model as sklearn's LogisticRegression at a fraction of
    its time on tens of thousands of images and hundreds of cells (measured: docs/results.md)."""

    MAX_ITERATIONS = 60

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias

    @classmethod
    def fit(
        cls, x: np.ndarray, labels: np.ndarray, classes: int, C: float, start: SoftmaxClassifier | None = None
    ) -> SoftmaxClassifier:
        features, targets = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
        weight = torch.zeros(features.shape[1], classes) if start is None else start.weight.clone()
        bias = torch.zeros(classes) if start is None else start.bias.clone()
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        penalty = 1.0 / (2.0 * C * len(features))
        optimizer = torch.optim.LBFGS(
            [weight, bias], max_iter=cls.MAX_ITERATIONS, history_size=20, line_search_fn="strong_wolfe"
        )

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(features @ weight + bias, targets)
            loss = loss + penalty * (weight**2).sum()
            loss.backward()
            return loss

        optimizer.step(objective)
        return cls(weight.detach(), bias.detach())

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) logits of standardised features (N, D)."""
        with torch.no_grad():
            return (torch.as_tensor(x, dtype=torch.float32) @ self.weight + self.bias).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1)


def fit_cells(
    gallery: Gallery,
    val_embeddings: np.ndarray,
    val_lat: np.ndarray,
    val_lon: np.ndarray,
    cells: int | None = None,
    seed: int = 0,
    C: float | None = None,
    view_rules: Sequence[ViewRule] = (ViewRule(),),
) -> CellClassifier:
    """A cell classifier with the given cell count and C, else the best pair of CELL_COUNT_CHOICES x
    CELL_C_CHOICES, and the best of `view_rules`, on validation (counts that leave fewer than
    MIN_IMAGES_PER_CELL training images per cell are skipped)."""
    counts = (
        [cells] if cells is not None else [c for c in CELL_COUNT_CHOICES if c * MIN_IMAGES_PER_CELL <= len(gallery.lat)]
    )
    counts = counts or [max(1, len(gallery.lat) // MIN_IMAGES_PER_CELL)]
    strengths = [C] if C is not None else list(CELL_C_CHOICES)
    fitted = {}
    for count in counts:
        partition, start = cell_partition(gallery, count, seed), None
        for strength in sorted(strengths):  # strongest regularisation first, each fit starting from the last
            fitted[(count, strength)] = fit_cell_classifier(gallery, count, seed, strength, partition, start)
            start = fitted[(count, strength)].classifier
    key, rule = _pick(list(fitted), lambda key, e: fitted[key].predict(e), val_embeddings, val_lat, val_lon, view_rules)
    fitted[key].view_rule = rule
    return fitted[key]


class UnitVectorRegressor(torch.nn.Module):
    """MLP from a standardised embedding to a point on the sphere (output normalised to unit length)."""

    def __init__(self, gallery: Gallery, hidden: int = 512):
        super().__init__()
        self.gallery = gallery  # its training statistics standardise the inputs
        self.view_rule = ViewRule()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(gallery.features.shape[1], hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.net(x), dim=-1)

    def predict(self, embeddings: np.ndarray) -> MethodPrediction:
        return views.apply(self._predict_rows, embeddings, self.view_rule)

    @torch.no_grad()
    def _predict_rows(self, embeddings: np.ndarray) -> MethodPrediction:
        self.eval()
        units = self(torch.tensor(self.gallery.standardise(embeddings), dtype=torch.float32)).double().numpy()
        lat, lon = sphere.from_unit(units)
        return MethodPrediction(lat, lon)


def fit_regressor(
    gallery: Gallery,
    steps: int = 1500,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
    snapshots: tuple[int, ...] = (),
) -> UnitVectorRegressor | list[UnitVectorRegressor]:
    """Train the regressor to minimise the great-circle angle to the true location. With `snapshots`,
    the list of copies taken after each of those step counts (the last is `steps`)."""
    import copy

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UnitVectorRegressor(gallery)
    model.learning_rate = learning_rate
    x = torch.tensor(gallery.features, dtype=torch.float32)
    y = torch.tensor(gallery.units, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    taken = []
    model.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        cosine = (model(x[index]) * y[index]).sum(-1).clamp(-1 + 1e-6, 1 - 1e-6)
        loss = torch.acos(cosine).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in snapshots:
            snapshot = copy.deepcopy(model)
            snapshot.steps = step
            taken.append(snapshot)
    model.steps = steps
    return taken if snapshots else model


def fit_regressor_on_validation(
    gallery: Gallery,
    val_embeddings: np.ndarray,
    val_lat: np.ndarray,
    val_lon: np.ndarray,
    steps: int = 1500,
    seed: int = 0,
    view_rules: Sequence[ViewRule] = (ViewRule(),),
) -> UnitVectorRegressor:
    """The regressor whose learning rate (REGRESSION_LEARNING_RATES) and step count (a third of `steps`,
    or all of them), and view rule of `view_rules`, score best on validation."""
    candidates = [
        model
        for rate in REGRESSION_LEARNING_RATES
        for model in fit_regressor(
            gallery, steps, learning_rate=rate, seed=seed, snapshots=tuple(sorted({max(1, steps // 3), steps}))
        )
    ]
    model, rule = _pick(candidates, lambda model, e: model.predict(e), val_embeddings, val_lat, val_lon, view_rules)
    model.view_rule = rule
    return model


def locdiff_h(
    gallery: Gallery,
    embeddings: np.ndarray,
    locdiff_lat: np.ndarray,
    locdiff_lon: np.ndarray,
    radius_km: float = HYBRID_RADIUS_KM,
    plain_weight: float | None = None,
) -> tuple[MethodPrediction, np.ndarray]:
    """LocDiff-H: the most similar gallery image (by the views' mean embedding, weighted as LocDiff's
    protocol weighs the views) within radius_km of LocDiff's prediction; where that ring holds no
    gallery image, LocDiff's prediction itself. On a gallery searched through an index (above
    retrieval.EXACT_MAX_ROWS) the ring is searched among the HYBRID_CANDIDATES most similar images only.
    Returns the prediction and a boolean mask of the images that fell back."""
    lat, lon, found = locdiff_h_points(
        gallery, embeddings, np.asarray(locdiff_lat)[:, None], np.asarray(locdiff_lon)[:, None], radius_km, plain_weight
    )
    return MethodPrediction(lat[:, 0], lon[:, 0]), ~found[:, 0]


def locdiff_h_points(
    gallery: Gallery,
    embeddings: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    radius_km: float = HYBRID_RADIUS_KM,
    plain_weight: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LocDiff-H's refinement of several points per image (N, S): each point becomes the location of the
    image's most similar gallery image within radius_km of it, or stays where that ring is empty. One
    similarity per image and gallery row serves all of its points (so LocDiff's samples refine at the cost
    of its answer). Returns (lat, lon, found), each (N, S); `found` is False where the ring was empty."""
    queries = gallery.queries(embeddings, plain_weight)
    n, count = np.shape(lat)
    centres = sphere.to_unit(np.ravel(lat), np.ravel(lon)).reshape(n, count, 3)
    cos_radius = np.cos(radius_km / sphere.EARTH_RADIUS_KM)
    best = np.full((n, count), -1)
    if not gallery.retriever.exact:  # a large gallery: the most similar of the HYBRID_CANDIDATES nearest
        nearest = gallery.retriever.search(queries, HYBRID_CANDIDATES)
        inside = np.einsum("nsd,nkd->nsk", centres, gallery.units[nearest]) >= cos_radius
        best = np.where(inside.any(axis=2), np.take_along_axis(nearest, inside.argmax(axis=2), axis=1), -1)
    else:
        rows = max(1, 1024 // count)
        for start in range(0, n, rows):
            stop = start + rows
            inside = centres[start:stop] @ gallery.units.T >= cos_radius  # (rows, S, G)
            similarity = (queries[start:stop] @ gallery.embeddings.T)[:, None, :]
            chosen = np.where(inside, similarity, -np.inf).argmax(axis=2)
            best[start:stop] = np.where(inside.any(axis=2), chosen, -1)
    found = best >= 0
    out_lat, out_lon = np.array(lat, dtype=float), np.array(lon, dtype=float)
    out_lat[found], out_lon[found] = gallery.lat[best[found]], gallery.lon[best[found]]
    return out_lat, out_lon, found


def chance(gallery: Gallery, count: int, draws: int, seed: int = 0) -> MethodPrediction:
    """The `chance` reference: `draws` random training locations for each of `count` images
    (count * draws predictions, image-major), so accuracies average over the draws."""
    picks = np.random.default_rng(seed).integers(0, len(gallery.lat), size=count * draws)
    return MethodPrediction(gallery.lat[picks], gallery.lon[picks])


def densest_location(gallery: Gallery, L: int = 20) -> tuple[float, float]:
    """The `constant` reference: the training set's single densest location, the mode of the mixture of
    its SHDD_L deltas (the mean SHDD vector is that mixture, by linearity), found by the decoder."""
    mixture = shdd.encode(gallery.lat, gallery.lon, L).mean(axis=0, keepdims=True)
    lat, lon = shdd.decode(mixture, L)
    return float(lat[0]), float(lon[0])


def knn_ranked(
    gallery: Gallery,
    embeddings: np.ndarray,
    k: int,
    separation_km: float,
    neighbours: int = 50,
    plain_weight: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kNN's k ranked answers: the locations of the most similar training images, skipping any within
    separation_km of an answer already taken; each answer's probability is the share of the
    `neighbours` most similar images within separation_km / 2 of it. (N, k) arrays (lat, lon,
    probability); NaN where the neighbours hold fewer than k separate places."""
    nearest = top_k_similar(gallery, gallery.queries(embeddings, plain_weight), neighbours)
    apart, inside = np.cos(separation_km / sphere.EARTH_RADIUS_KM), np.cos(separation_km / 2 / sphere.EARTH_RADIUS_KM)
    lat, lon, probability = (np.full((len(nearest), k), np.nan) for _ in range(3))
    for i, row in enumerate(nearest):
        units, picks = gallery.units[row], []
        for j, unit in enumerate(units):
            if all(unit @ units[p] < apart for p in picks):
                picks.append(j)
            if len(picks) == k:
                break
        for rank, j in enumerate(picks):
            lat[i, rank], lon[i, rank] = gallery.lat[row[j]], gallery.lon[row[j]]
            probability[i, rank] = np.mean(units @ units[j] >= inside)
    return lat, lon, probability
