"""SHDD encoder, decoder and KL loss: identities, known answers, round trips and failure modes."""

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre

from locdiff_pipeline.method import shdd, sphere


def _addition_theorem(cos_angle: np.ndarray, L: int) -> np.ndarray:
    return legendre.legval(cos_angle, (2 * np.arange(L + 1) + 1) / (4 * np.pi))


@pytest.mark.parametrize("L", [0, 1, 5, 20, 60])
def test_inner_product_is_the_addition_theorem(L):
    rng = np.random.default_rng(L)
    lat_p, lon_p = sphere.random_points(200, rng)
    lat_q, lon_q = sphere.random_points(200, rng)
    cos_angle = np.sum(sphere.to_unit(lat_p, lon_p) * sphere.to_unit(lat_q, lon_q), axis=1)
    inner = np.sum(shdd.encode(lat_p, lon_p, L) * shdd.encode(lat_q, lon_q, L), axis=1)
    assert np.max(np.abs(inner - _addition_theorem(cos_angle, L))) < 1e-10


def test_addition_theorem_holds_at_high_degree():
    lat, lon = np.array([89.9, -30.0, 0.0]), np.array([10.0, 179.9, -180.0])
    e = shdd.encode(lat, lon, 150)
    assert np.allclose((e * e).sum(1), shdd.peak_height(150), rtol=1e-10)


@pytest.mark.parametrize("L", [4, 20])
def test_basis_is_orthonormal_under_exact_quadrature(L):
    # Gauss-Legendre in cos(colatitude) x uniform longitudes integrates degree <= 2L exactly.
    nodes, weights = np.polynomial.legendre.leggauss(L + 1)
    n_lon = 2 * L + 2
    lon = np.arange(n_lon) * 360.0 / n_lon - 180.0
    lat = np.degrees(np.arcsin(nodes))
    grid_lat, grid_lon = np.repeat(lat, n_lon), np.tile(lon, len(lat))
    w = np.repeat(weights, n_lon) * (2 * np.pi / n_lon)
    basis = shdd.encode(grid_lat, grid_lon, L)
    gram = basis.T @ (basis * w[:, None])
    assert np.max(np.abs(gram - np.eye(shdd.num_coefficients(L)))) < 1e-12


def test_torch_twin_matches_and_keeps_device_and_dtype():
    rng = np.random.default_rng(7)
    lat, lon = sphere.random_points(64, rng)
    ref = shdd.encode(lat, lon, 20)
    out = shdd.encode_torch(torch.tensor(lat, dtype=torch.float32), torch.tensor(lon, dtype=torch.float32), 20)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert np.max(np.abs(out.numpy() - ref)) < 1e-4
    units = torch.tensor(sphere.to_unit(lat, lon))
    assert np.allclose(shdd.encode_units_torch(units, 20).numpy(), ref, atol=1e-12)


def _points_with_poles_and_seams(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = sphere.random_points(count, np.random.default_rng(seed))
    edges_lat = [90.0, -90.0, 89.9999, -89.9999, 0.0, 45.5, 0.0]
    edges_lon = [0.0, 180.0, -180.0, 179.9999, -0.0001, 33.0, -180.0]
    return np.concatenate([lat, edges_lat]), np.concatenate([lon, edges_lon])


@pytest.mark.parametrize("L", [10, 40, 80, 100])
def test_float32_tables_are_finite_and_within_1e_5_of_float64_up_to_degree_100(L):
    """The precision the float32 model tables need, on every path (sphericart up to its checked degree, the
    recurrence above it): finite, and each vector within 1e-5 (relative) of the float64 reference."""
    lat, lon = _points_with_poles_and_seams(2000, L)
    reference = shdd.encode(lat, lon, L)  # float64
    table = shdd.encode_torch(torch.tensor(lat), torch.tensor(lon), L, dtype=torch.float32)
    assert table.dtype == torch.float32 and torch.isfinite(table).all()
    relative = np.linalg.norm(table.double().numpy() - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert relative.max() < 1e-5


@pytest.mark.parametrize("L", [10, 40, shdd.SPHERICART_MAX_DEGREE])
def test_sphericart_and_the_recurrence_agree_up_to_the_degree_sphericart_is_used_at(L):
    """Both float64 paths give the same table (basis, order, signs, normalisation) where sphericart is used:
    a sphericart release that breaks at a lower degree fails here."""
    pytest.importorskip("sphericart")
    lat, lon = _points_with_poles_and_seams(3000, 100 + L)
    lat_r, lon_r = torch.deg2rad(torch.tensor(lat)), torch.deg2rad(torch.tensor(lon))
    recurrence = shdd._harmonics_chunked(torch.sin(lat_r), torch.cos(lat_r), lon_r, L).numpy()
    table = shdd.encode(lat, lon, L)
    assert np.max(np.linalg.norm(table - recurrence, axis=1) / np.linalg.norm(recurrence, axis=1)) < 1e-10


def test_sphericart_tables_are_the_same_from_the_worker_pool_the_calling_thread_and_concurrent_callers():
    """The pooled chunks equal one thread's, and four threads encoding at once each get their own exact
    table: a sphericart calculator shared by two threads wrote wrong values (measured), so each thread has its own."""
    pytest.importorskip("sphericart")
    from concurrent.futures import ThreadPoolExecutor

    from locdiff_pipeline.method import sphericart_table

    L = 20
    sets = [sphere.random_points(9000, np.random.default_rng(seed)) for seed in range(4)]
    serial = []
    for lat, lon in sets:
        table = np.empty((len(lat), (L + 1) ** 2))
        sphericart_table._compute_chunks(
            lambda a, b, lat=lat, lon=lon: sphere.unit_vectors(lat[a:b], lon[a:b]),
            L,
            table,
            list(range(0, len(lat), 500)),
            500,
        )
        serial.append(table)
    with ThreadPoolExecutor(4) as callers:
        pooled = list(callers.map(lambda p: sphericart_table.harmonics_of_points(p[0], p[1], L, np.float64), sets))
    for mine, reference in zip(pooled, serial):
        np.testing.assert_array_equal(mine, reference)


@pytest.mark.parametrize("L", [20, 40])
def test_decode_inverts_encode_everywhere(L):
    lat = np.array([90.0, -90.0, 0.0, 0.0, 0.0, 45.0, -60.0, 89.5, 12.3])
    lon = np.array([0.0, 0.0, -180.0, 180.0, 179.99, -179.99, 0.0, 100.0, -45.6])
    rng = np.random.default_rng(L)
    r_lat, r_lon = sphere.random_points(100, rng)
    lat, lon = np.concatenate([lat, r_lat]), np.concatenate([lon, r_lon])
    d_lat, d_lon = shdd.decode(shdd.encode(lat, lon, L), L)
    assert np.max(sphere.haversine_km(lat, lon, d_lat, d_lon)) < 2.0


@pytest.mark.parametrize("L", [5, 20, 40])
def test_grid_synthesis_equals_the_function_at_every_grid_point(L):
    rng = np.random.default_rng(L)
    coeffs = torch.tensor(rng.standard_normal((3, shdd.num_coefficients(L))))
    grid = shdd._grid_values(coeffs, L).reshape(3, -1)
    lat, lon = sphere.from_unit(shdd._grid_units(L, torch.float64, "cpu").numpy())
    direct = coeffs @ shdd.encode_torch(torch.tensor(lat), torch.tensor(lon), L).T
    assert torch.allclose(grid, direct, atol=1e-10 * float(direct.abs().max()))


@pytest.mark.parametrize("L", [20, 40])
def test_grid_and_matrix_paths_decode_to_the_same_places(L):
    rng = np.random.default_rng(3 + L)
    lat, lon = sphere.random_points(300, rng)
    clean = shdd.encode(lat, lon, L)
    for sigma in (0.0, 0.3, 1.0):
        noisy = torch.tensor(clean + sigma / np.sqrt(4 * np.pi) * rng.standard_normal(clean.shape), dtype=torch.float32)
        grid = shdd.decode(noisy, L, coarse="grid")
        matrix = shdd.decode(noisy, L, coarse="anchors")
        apart = sphere.haversine_km(*grid, *matrix)
        # both refine to the same mode unless two modes are nearly equal, which noise makes rare
        assert np.mean(apart < 1.0) >= 0.97, (sigma, np.sort(apart)[-10:])
    assert shdd.decode(torch.tensor(clean), L)[0].shape == (300,)
    with pytest.raises(ValueError, match="coarse search must be one of"):
        shdd.decode(clean, L, coarse="fft")


@pytest.mark.parametrize("L", [5, 20, 49, 50, 80])
def test_grid_is_no_coarser_than_the_default_anchors(L):
    rings, longitudes = shdd.grid_shape(L)
    anchors_apart = sphere.mean_spacing_rad(shdd._default_anchor_count(L))
    assert np.pi / (rings - 1) == pytest.approx(2 * np.pi / longitudes)
    assert 2 * np.pi / longitudes <= anchors_apart
    assert longitudes & (longitudes - 1) == 0 and longitudes >= 2 * L + 2  # a power of two, no aliasing


def test_both_grid_evaluations_find_the_same_grid_point_and_the_default_is_one_of_them():
    L = 20
    rng = np.random.default_rng(5)
    lat, lon = sphere.random_points(200, rng)
    noisy = shdd.encode(lat, lon, L) + 1.0 / np.sqrt(4 * np.pi) * rng.standard_normal((200, shdd.num_coefficients(L)))
    smoothed = shdd._smoothed(torch.tensor(noisy, dtype=torch.float32), L, None)
    synthesis, table = shdd._grid_argmax(smoothed, L), shdd._grid_table_argmax(smoothed, L)
    # float rounding may only swap grid points of near-equal value, which lie next to each other
    apart = sphere.haversine_km(
        *sphere.from_unit(synthesis.double().numpy()), *sphere.from_unit(table.double().numpy())
    )
    assert np.mean(apart == 0.0) >= 0.95 and apart.max() < 500.0
    assert shdd.default_coarse_search("cpu", L) in ("grid", "grid-table")
    decoded = {coarse: shdd.decode(noisy, L, coarse=coarse) for coarse in ("auto", "grid", "grid-table")}
    for coarse in ("grid", "grid-table"):
        assert np.mean(sphere.haversine_km(*decoded["auto"], *decoded[coarse]) < 1.0) >= 0.97


def test_first_argmax_is_torch_argmax_over_the_flattened_grid():
    values = torch.randint(0, 5, (64, 7, 16)).float()  # many ties: the first occurrence must win
    assert torch.equal(shdd._first_argmax(values), torch.argmax(values.reshape(64, -1), dim=1))


def test_decode_accepts_torch_and_custom_anchors():
    lat, lon = np.array([35.0, -20.0]), np.array([139.0, -47.0])
    anchors = shdd.anchor_table(*sphere.fibonacci_lattice(3000), 20)
    coeffs = torch.tensor(shdd.encode(lat, lon, 20), dtype=torch.float32)
    d_lat, d_lon = shdd.decode(coeffs, 20, anchors=anchors)
    assert np.max(sphere.haversine_km(lat, lon, d_lat, d_lon)) < 2.0


def test_decode_degrades_gracefully_with_noise():
    rng = np.random.default_rng(11)
    L = 20
    lat, lon = sphere.random_points(200, rng)
    clean = shdd.encode(lat, lon, L)
    coeff_rms = 1.0 / np.sqrt(4 * np.pi)
    medians = []
    for sigma in (0.0, 0.3, 1.0, 3.0, 10.0):
        noisy = clean + sigma * coeff_rms * rng.standard_normal(clean.shape)
        d_lat, d_lon = shdd.decode(noisy, L)
        medians.append(float(np.median(sphere.haversine_km(lat, lon, d_lat, d_lon))))
    # Measured on this seed: ~0.1, ~10, ~35, ~100 km, then chance (~8000+ km, the median of random guesses is ~10000).
    assert medians[0] < 1.0
    assert medians == sorted(medians)
    assert medians[2] < 100 and medians[3] < 300
    assert medians[4] > 3000


def test_cap_smoothing_weights_match_numeric_cap_average():
    L, rho_km = 12, 800.0
    weights = shdd.cap_smoothing_weights(L, rho_km)
    c = np.cos(rho_km / sphere.EARTH_RADIUS_KM)
    t, w = np.polynomial.legendre.leggauss(200)
    t = c + (1 - c) * (t + 1) / 2  # map [-1, 1] onto [c, 1]
    for l in range(L + 1):
        p_l = legendre.legval(t, np.eye(L + 1)[l])
        assert weights[l] == pytest.approx(np.sum(w * p_l) / 2, abs=1e-12)
    assert np.all(shdd.cap_smoothing_weights(L, 0.0) == 1.0)


def test_kl_loss_is_zero_at_target_and_has_gradients():
    L = 10
    rng = np.random.default_rng(5)
    anchors = shdd.anchor_table(*sphere.fibonacci_lattice(2000), L)
    target = torch.tensor(shdd.encode(*sphere.random_points(8, rng), L), dtype=torch.float32)
    for direction in ("inverse", "forward"):
        assert shdd.kl_loss(target, target, anchors.table, direction=direction).item() == pytest.approx(0.0, abs=1e-6)
    pred = torch.tensor(shdd.encode(*sphere.random_points(8, rng), L), dtype=torch.float32, requires_grad=True)
    loss = shdd.kl_loss(pred, target, anchors.table)
    loss.backward()
    assert loss.item() > 0.1 and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # Closer predictions have lower loss: 50 km off beats 2000 km off.
    lat, lon = np.array([10.0]), np.array([20.0])
    t = torch.tensor(shdd.encode(lat, lon, L), dtype=torch.float32)
    near = torch.tensor(shdd.encode(lat + 0.45, lon, L), dtype=torch.float32)
    far = torch.tensor(shdd.encode(lat + 18.0, lon, L), dtype=torch.float32)
    assert shdd.kl_loss(near, t, anchors.table) < shdd.kl_loss(far, t, anchors.table)


def test_kl_loss_rejects_bad_shapes_and_direction():
    table = torch.zeros(10, 16)
    with pytest.raises(ValueError, match="perfect square"):
        shdd.kl_loss(torch.zeros(2, 15), torch.zeros(2, 15), torch.zeros(10, 15))
    with pytest.raises(ValueError, match="shapes differ"):
        shdd.kl_loss(torch.zeros(2, 16), torch.zeros(3, 16), table)
    with pytest.raises(ValueError, match="direction"):
        shdd.kl_loss(torch.zeros(2, 16), torch.zeros(2, 16), table, direction="sideways")


@pytest.mark.parametrize(
    ("lat", "lon", "L", "message"),
    [
        ([95.0], [0.0], 5, "lat must be in"),
        ([np.nan], [0.0], 5, "non-finite"),
        ([0.0], [-np.inf], 5, "non-finite"),
        ([0.0, 1.0], [0.0], 5, "mismatched shapes"),
        ([0.0], [0.0], -1, "non-negative integer"),
        ([0.0], [0.0], 2.5, "non-negative integer"),
    ],
)
def test_encode_rejects_bad_input(lat, lon, L, message):
    with pytest.raises(ValueError, match=message):
        shdd.encode(lat, lon, L)


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        shdd.decode(np.zeros((2, 10)), 2)
    with pytest.raises(ValueError, match="NaN"):
        shdd.decode(np.full((1, 9), np.nan), 2)
    with pytest.raises(ValueError, match="rho"):
        shdd.decode(np.zeros((1, 9)), 2, rho=-1.0)


@pytest.mark.parametrize("L", [1, 3, 10, 20, 40, 90])
def test_peak_width_is_the_first_zero_of_the_decoded_kernel(L):
    """The width used for rho and the density bandwidth is where F = sum (2l+1)/(4 pi) P_l first
    crosses zero, found here by brute force on a fine grid of angles."""
    angles = np.linspace(1e-6, np.pi, 400_001)
    kernel = np.polynomial.legendre.legval(np.cos(angles), (2 * np.arange(L + 1) + 1) / (4 * np.pi))
    first = angles[np.argmax(kernel <= 0)]
    assert shdd.peak_width_km(L) == pytest.approx(sphere.EARTH_RADIUS_KM * first, abs=0.2)
    assert shdd.peak_width_km(L) == pytest.approx(
        sphere.EARTH_RADIUS_KM * 3.8317 / (L + 1), rel=0.02 if L > 2 else 0.05
    )


def test_weighted_kl_is_the_weighted_mean_of_per_vector_kls():
    """In float64, so the identity is checked to rounding, whatever order the sums run in."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.tensor(shdd.encode([10.0, -40.0, 60.0], [20.0, 100.0, -30.0], 6), dtype=torch.float64)
    predictions = targets + 0.05 * torch.randn(targets.shape, generator=generator, dtype=torch.float64)
    anchors = shdd.fibonacci_anchors(2000, 6, dtype=torch.float64).table
    each = torch.stack([shdd.kl_loss(predictions[i : i + 1], targets[i : i + 1], anchors) for i in range(3)])
    weights = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    weighted = shdd.kl_loss(predictions, targets, anchors, weights=weights)
    assert float(weighted) == pytest.approx(float((each * weights).sum() / weights.sum()), rel=1e-9)
    assert float(shdd.kl_loss(predictions, targets, anchors)) == pytest.approx(float(each.mean()), rel=1e-9)
