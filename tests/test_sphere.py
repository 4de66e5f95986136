"""Sphere geometry: known distances, centres across the antimeridian and at the poles, lattices."""

import numpy as np
import pytest

from locdiff_pipeline.method import sphere


def test_haversine_known_answers():
    # A quarter of a great circle, and a degree of latitude.
    assert sphere.haversine_km([0], [0], [0], [90])[0] == pytest.approx(np.pi / 2 * sphere.EARTH_RADIUS_KM)
    assert sphere.haversine_km([10], [20], [11], [20])[0] == pytest.approx(np.radians(1) * sphere.EARTH_RADIUS_KM)
    # Paris - New York is about 5837 km on this sphere.
    assert sphere.haversine_km([48.8566], [2.3522], [40.7128], [-74.0060])[0] == pytest.approx(5837, abs=5)
    # The two ends of the longitude range are the same meridian.
    assert sphere.haversine_km([33.0], [-180.0], [33.0], [180.0])[0] == pytest.approx(0.0, abs=1e-9)


def test_unit_round_trip_and_wrap():
    rng = np.random.default_rng(0)
    lat, lon = sphere.random_points(1000, rng)
    lat2, lon2 = sphere.from_unit(sphere.to_unit(lat, lon))
    assert np.allclose(lat, lat2) and np.allclose(sphere.haversine_km(lat, lon, lat2, lon2), 0, atol=1e-6)
    assert np.all((lon2 >= -180) & (lon2 < 180))
    assert sphere.wrap_longitude([180.0, -180.0, 190.0])[:2].tolist() == [-180.0, -180.0]


@pytest.mark.parametrize(
    ("lats", "lons", "expected"),
    [
        ([0.0, 0.0], [-170.0, 170.0], (0.0, 180.0)),  # across the antimeridian, not at lon 0
        ([89.0, 89.0, 89.0, 89.0], [0.0, 90.0, 180.0, -90.0], (90.0, None)),  # around the pole
        ([0.0, 0.0, 0.0], [10.0, 20.0, 30.0], (0.0, 20.0)),
    ],
)
def test_spherical_centre(lats, lons, expected):
    lat, lon = sphere.spherical_centre(lats, lons)
    assert lat == pytest.approx(expected[0], abs=1e-9)
    if expected[1] is not None:
        assert sphere.haversine_km([lat], [lon], [expected[0]], [expected[1]])[0] < 1e-6


def test_spherical_centre_is_the_great_circle_midpoint_across_the_antimeridian():
    lat, lon = sphere.spherical_centre([10.0, 10.0], [179.0, -179.0])
    assert abs(lon) == pytest.approx(180.0)
    assert lat > 10.0  # a great circle bulges poleward of the parallel
    d1, d2 = sphere.haversine_km([lat, lat], [lon, lon], [10.0, 10.0], [179.0, -179.0])
    assert d1 == pytest.approx(d2) and d1 + d2 == pytest.approx(
        sphere.haversine_km([10.0], [179.0], [10.0], [-179.0])[0]
    )


def test_spherical_centre_rejects_antipodes():
    with pytest.raises(ValueError, match="antipodal"):
        sphere.spherical_centre([0.0, 0.0], [0.0, 180.0])


def test_grouped_centre_and_spread():
    units = sphere.to_unit([0.0, 0.0, 0.0, 0.0], [179.5, -179.5, 179.5, -179.5]).reshape(2, 2, 3)
    lat, lon, spread = sphere.grouped_centre_and_spread(units)
    assert np.allclose(lat, 0) and np.allclose(np.abs(lon), 180)
    half_degree_km = np.radians(0.5) * sphere.EARTH_RADIUS_KM
    assert np.allclose(spread, half_degree_km, rtol=1e-6)


def test_fibonacci_lattice_is_near_uniform():
    lat, lon = sphere.fibonacci_lattice(4000)
    units = sphere.to_unit(lat, lon)
    assert np.linalg.norm(units.mean(axis=0)) < 1e-3
    # Equal-area: the share of points above latitude 30 equals the cap's area share (1 - sin 30) / 2.
    assert np.mean(lat > 30) == pytest.approx(0.25, abs=0.002)
    rng = np.random.default_rng(3)
    rlat, _ = sphere.random_points(200000, rng)
    assert np.mean(rlat > 30) == pytest.approx(0.25, abs=0.005)


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        ([91.0], [0.0], "lat must be in"),
        ([np.nan], [0.0], "non-finite"),
        ([0.0], [np.inf], "non-finite"),
        ([0.0], [200.0], "lon must be in"),
        ([0.0, 1.0], [0.0], "mismatched shapes"),
    ],
)
def test_bad_coordinates_are_named(lat, lon, message):
    with pytest.raises(ValueError, match=message):
        sphere.to_unit(lat, lon)
