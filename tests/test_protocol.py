"""LocDiff's test-time protocol: views combine in the Hilbert space (the mean SHDD vector is the mixture
of their densities), the protocol is chosen on validation, and north-up imagery is never flipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import clustered_problem

from locdiff_pipeline.encoders.encoder_spec import EncoderSpec
from locdiff_pipeline.encoders.image_encoder import build_encoder
from locdiff_pipeline.method import shdd, sphere, uncertainty
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.model import LocDiffModel, Samples
from locdiff_pipeline.method.protocol import REGION_BANDWIDTHS, Protocol, calibrate_region, choose_protocol, select
from locdiff_pipeline.method.training import train
from locdiff_pipeline.method.views import view_weights

L = 20
PARIS, MOSCOW = (48.86, 2.35), (55.76, 37.62)  # ~2,500 km apart: two well separated modes at L = 20


def _mixture(weights: tuple[float, float]) -> np.ndarray:
    a, b = (shdd.encode([p[0]], [p[1]], L)[0] for p in (PARIS, MOSCOW))
    return weights[0] * a + weights[1] * b


def _distances(lat: float, lon: float) -> tuple[float, float]:
    return tuple(float(sphere.haversine_km([lat], [lon], [p[0]], [p[1]])[0]) for p in (PARIS, MOSCOW))


@pytest.mark.parametrize(("weights", "heavier"), [((0.6, 0.4), 0), ((0.35, 0.65), 1)])
def test_a_mixture_of_two_shdds_decodes_to_the_heavier_one(weights, heavier):
    lat, lon = shdd.decode(_mixture(weights), L)
    assert _distances(lat[0], lon[0])[heavier] < 30


def test_equal_weights_decode_to_one_of_the_two_never_between():
    lat, lon = shdd.decode(_mixture((0.5, 0.5)), L)
    assert min(_distances(lat[0], lon[0])) < 30
    centre = sphere.spherical_centre([PARIS[0], MOSCOW[0]], [PARIS[1], MOSCOW[1]])
    assert min(_distances(*centre)) > 1000  # where the spherical centre of the two lands


def _model() -> LocDiffModel:
    return LocDiffModel(
        LocDiffConfig(L=L, embed_dim=8, hidden_dims=(16,), time_dim=8, timesteps=10, sample_steps=2, device="cpu")
    )


def test_combining_views_by_mixture_finds_the_majority_place_and_centre_falls_between():
    """Three views say Paris, two say Moscow: the mixture answers Paris; the spherical centre lands
    between them, where no view put the image."""
    points = [PARIS, PARIS, MOSCOW, PARIS, MOSCOW]
    vectors = torch.tensor(np.stack([shdd.encode([p[0]], [p[1]], L)[0] for p in points]), dtype=torch.float32)
    lat = np.array([[p[0]] for p in points])[None]
    lon = np.array([[p[1]] for p in points])[None]
    drawn = Samples(vectors[None, :, None, :], lat, lon)
    model = _model()
    mixture = model.combine(drawn, "mixture")
    centre = model.combine(drawn, "centre")
    assert _distances(mixture.lat[0], mixture.lon[0])[0] < 30
    assert min(_distances(centre.lat[0], centre.lon[0])) > 500
    first_two = model.combine(drawn, "mixture", views=2)  # the first two views alone: both Paris
    assert _distances(first_two.lat[0], first_two.lon[0])[0] < 30 and first_two.sample_lat.shape == (1, 2)
    assert mixture.spread_km[0] == pytest.approx(np.sqrt(2 / 5) * _distances(*MOSCOW)[0], rel=0.02)
    with pytest.raises(ValueError, match="rule must be one of"):
        model.combine(drawn, "median")


def test_a_heavier_plain_view_outweighs_three_views_that_disagree():
    """One plain view says Paris, three augmented views say Moscow: uniform weights answer Moscow, a plain
    weight of 0.75 answers Paris, by mixture and by centre alike (the centre then sits nearer Paris)."""
    points = [PARIS, MOSCOW, MOSCOW, MOSCOW]
    vectors = torch.tensor(np.stack([shdd.encode([p[0]], [p[1]], L)[0] for p in points]), dtype=torch.float32)
    drawn = Samples(
        vectors[None, :, None, :], np.array([[[p[0]] for p in points]]), np.array([[[p[1]] for p in points]])
    )
    model = _model()
    uniform, plain = model.combine(drawn, "mixture"), model.combine(drawn, "mixture", plain_weight=0.75)
    assert _distances(uniform.lat[0], uniform.lon[0])[1] < 30 and _distances(plain.lat[0], plain.lon[0])[0] < 30
    centre = model.combine(drawn, "centre", plain_weight=0.75)
    assert _distances(centre.lat[0], centre.lon[0])[0] < _distances(centre.lat[0], centre.lon[0])[1]
    ranked_lat, ranked_lon, _ = model.ranked(drawn, 2, plain_weight=0.75)
    assert _distances(ranked_lat[0, 0], ranked_lon[0, 0])[0] < 30  # rank 1 is the weighted mixture's mode
    assert plain.spread_km[0] == pytest.approx(np.sqrt(0.25) * _distances(*MOSCOW)[0], rel=0.02)


def test_view_weights_sum_to_one_and_give_the_plain_view_its_share():
    np.testing.assert_allclose(view_weights(4), [0.25] * 4)
    np.testing.assert_allclose(view_weights(4, 0.5), [0.5, 1 / 6, 1 / 6, 1 / 6])
    np.testing.assert_allclose(view_weights(1, 0.5), [1.0])
    with pytest.raises(ValueError, match="plain_weight"):
        view_weights(3, 1.5)


def test_the_chosen_protocol_is_the_best_validation_candidate_and_never_below_the_plain_view():
    lat, lon, features = clustered_problem(n=900, dim=32, seed=3)
    config = LocDiffConfig(
        L=6,
        embed_dim=32,
        hidden_dims=(64, 32),
        time_dim=16,
        steps=150,
        batch_size=128,
        timesteps=50,
        sample_steps=5,
        eval_every=10**9,
        device="cpu",
    )
    model = train(config, features[:700], shdd.encode(lat[:700], lon[:700], 6, dtype=np.float32)).model
    rng = np.random.default_rng(0)
    views = features[700:, None, :] + rng.normal(0, 0.05, (200, 4, 32)).astype(np.float32)  # noisy views
    views[:, 0] = features[700:]  # view 0 is the plain view
    protocol, grid = choose_protocol(model, views, lat[700:], lon[700:], sample_choices=(1, 4))
    weights = {1: (None,), 2: (None, 0.5, 0.75), 4: (None, 0.5, 0.75)}
    assert {(row["rule"], row["views"], row["samples"], row["plain_weight"]) for row in grid} == {
        (r, v, s, w) for r in ("mixture", "centre") for v in (1, 2, 4) for s in (1, 4) for w in weights[v]
    }
    best = max(row["score"] for row in grid if row["eligible"])
    assert protocol.validation_score == best
    plain = [row for row in grid if row["views"] == 1 and row["samples"] == 1]
    assert protocol.validation_score >= max(row["score"] for row in plain)
    chosen = (protocol.rule, protocol.views, protocol.samples, protocol.plain_weight)
    row = next(row for row in grid if (row["rule"], row["views"], row["samples"], row["plain_weight"]) == chosen)
    assert row["score"] == best and row["eligible"]
    more = [r for r in grid if r["eligible"] and (r["views"] > 1 or r["samples"] > 1)]
    assert all(r["gain_over_plain"] > 2 * r["gain_standard_error"] for r in more)
    assert all(type(r["eligible"]) is bool for r in grid)  # plain JSON in protocol_choice.json, not "False"
    # the region's kernel: the narrowest tried that covers 90 % of the validation truths, measured there
    assert protocol.region_bandwidth_km is not None and protocol.validation_coverage is not None
    rho = shdd.default_rho_km(config.L)
    assert any(protocol.region_bandwidth_km == pytest.approx(rho * f) for f in REGION_BANDWIDTHS)
    at_widest = protocol.region_bandwidth_km == pytest.approx(rho * REGION_BANDWIDTHS[-1])
    assert protocol.validation_coverage >= 0.9 or at_widest


def test_region_calibration_takes_the_narrowest_kernel_that_covers_ninety_percent():
    """Samples that all sit on one answer 1,000 km from the truth: only a kernel wide enough to reach 1,000 km
    covers the truth, and the calibration must find the first such width, not a wider one."""
    lat, lon = np.zeros(50), np.linspace(-20, 20, 50)
    answer_lon = lon + 1000.0 / 111.19  # 1,000 km east on the equator
    samples = np.repeat(answer_lon[:, None, None], 16, axis=2)  # (N, 1 view, 16 samples), all agree
    config = LocDiffConfig(L=10, embed_dim=4, hidden_dims=(8,), time_dim=8)
    model = LocDiffModel(config)
    drawn = Samples(
        torch.as_tensor(shdd.encode(np.zeros(samples.size), samples.ravel(), 10)).reshape(50, 1, 16, -1),
        np.zeros_like(samples),
        samples,
    )
    calibrated = calibrate_region(model, drawn, Protocol(samples=16), lat, lon)
    rho = shdd.default_rho_km(10)
    radii = {
        f: uncertainty.sample_regions(np.zeros((1, 16)), np.zeros((1, 16)), [0.0], [0.0], rho * f, (0.9,))[0, 0]
        for f in REGION_BANDWIDTHS
    }
    first = next(f for f in REGION_BANDWIDTHS if radii[f] >= 1000.0)
    assert calibrated.region_bandwidth_km == pytest.approx(rho * first)
    assert calibrated.validation_coverage == 1.0


def _candidate(views: int, per_image: list[float]) -> tuple[dict, np.ndarray]:
    scores = np.array(per_image, dtype=float)
    return {"rule": "mixture", "views": views, "plain_weight": None, "score": scores.mean()}, scores


def test_more_views_are_chosen_only_for_a_gain_beyond_noise():
    """One image better out of 200 is noise: the plain view stays. A gain on 30 images of 200, lost on
    none, is not: the views are chosen."""
    plain = [0.2] * 200
    noisy = plain.copy()
    noisy[0] = 0.4
    clear = [0.4] * 30 + [0.2] * 170
    for candidates, chosen_views in ((((1, plain), (8, noisy)), 1), (((1, plain), (8, noisy), (4, clear)), 4)):
        grid, per_image = (list(x) for x in zip(*(_candidate(v, scores) for v, scores in candidates), strict=True))
        assert select(grid, per_image)["views"] == chosen_views
        assert grid[1]["score"] > grid[0]["score"] and not grid[1]["eligible"]  # higher, yet noise


def test_north_up_imagery_gets_no_flips_and_ground_photos_do():
    encoder = build_encoder(EncoderSpec("locdiff-tiny-vit"))
    augments = encoder.views.augment.items()
    kinds = {imagery: [type(t).__name__ for t in augment.transforms] for imagery, augment in augments}
    assert "RandomHorizontalFlip" in kinds["ground"] and "RandomHorizontalFlip" not in kinds["north_up"]
    assert "RandomResizedCrop" in kinds["north_up"] and "ColorJitter" in kinds["north_up"]


def test_ranked_modes_of_a_mixture_follow_its_weights():
    places = [PARIS, MOSCOW, (40.71, -74.0)]
    vector = sum(w * shdd.encode([p[0]], [p[1]], L)[0] for w, p in zip((0.5, 0.3, 0.2), places, strict=True))
    lat, lon, probability = shdd.ranked_modes(vector, L, 3)
    for rank, place in enumerate(places):
        assert sphere.haversine_km([lat[0, rank]], [lon[0, rank]], [place[0]], [place[1]])[0] < 150
    assert probability[0, 0] > probability[0, 1] > probability[0, 2] > 0 and probability.sum() <= 1
    assert probability[0, 1] / probability[0, 0] == pytest.approx(0.3 / 0.5, rel=0.15)
    single_lat, single_lon, single = shdd.ranked_modes(shdd.encode([10.0], [20.0], L), L, 3)
    assert (single_lat[0, 0], single_lon[0, 0]) == pytest.approx((10.0, 20.0), abs=0.05)
    assert single[0, 0] > 0.5 and single[0, 1:].max() < 0.05  # one delta: one likely place, faint ripples
