"""Sphere geometry: the one place that converts, measures and averages locations on Earth.

Degrees in and out; unit vectors u = (cos lat cos lon, cos lat sin lon, sin lat) inside. Every
other module (SHDD, decoding, metrics, baselines) calls these, so conventions cannot drift apart.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

EARTH_RADIUS_KM = 6371.0
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def validate_coordinates(lat: ArrayLike, lon: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (lat, lon) as 1-D float64 arrays, or raise ValueError saying what is wrong.

    Longitudes are accepted in [-180, 180] (both ends are the same meridian); latitudes in [-90, 90].
    """
    lat_arr = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon_arr = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    if lat_arr.ndim != 1 or lon_arr.ndim != 1:
        raise ValueError(f"lat and lon must be 1-D, got shapes {lat_arr.shape} and {lon_arr.shape}")
    if lat_arr.shape != lon_arr.shape:
        raise ValueError(f"lat and lon have mismatched shapes {lat_arr.shape} and {lon_arr.shape}")
    for name, values in (("lat", lat_arr), ("lon", lon_arr)):
        bad = ~np.isfinite(values)
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {index}")
    out_of_range = (lat_arr < -90.0) | (lat_arr > 90.0)
    if out_of_range.any():
        index = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(f"lat must be in [-90, 90]; index {index} has {lat_arr[index]}")
    out_of_range = (lon_arr < -180.0) | (lon_arr > 180.0)
    if out_of_range.any():
        index = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(f"lon must be in [-180, 180]; index {index} has {lon_arr[index]}")
    return lat_arr, lon_arr


def to_unit(lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
    """Unit vectors (N, 3) for validated degree coordinates."""
    return unit_vectors(*validate_coordinates(lat, lon))


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors (N, 3) in float64 for degree arrays already known to be valid (no checks)."""
    lat_r, lon_r = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    cos_lat = np.cos(lat_r)
    return np.stack([cos_lat * np.cos(lon_r), cos_lat * np.sin(lon_r), np.sin(lat_r)], axis=-1)


def from_unit(xyz: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees, lon in [-180, 180), from vectors (N, 3); vectors need not be unit length."""
    v = np.asarray(xyz, dtype=np.float64)
    if v.ndim != 2 or v.shape[-1] != 3:
        raise ValueError(f"expected vectors of shape (N, 3), got {v.shape}")
    norm = np.linalg.norm(v, axis=-1)
    if np.any(norm == 0) or not np.all(np.isfinite(norm)):
        raise ValueError("cannot convert a zero or non-finite vector to a location")
    v = v / norm[:, None]
    lat = np.degrees(np.arcsin(np.clip(v[:, 2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(v[:, 1], v[:, 0]))
    return lat, wrap_longitude(lon)


def wrap_longitude(lon: ArrayLike) -> np.ndarray:
    """Map longitudes to [-180, 180)."""
    return (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Great-circle distance in km between paired points (haversine: accurate at small distances)."""
    lat1_arr, lon1_arr = validate_coordinates(lat1, lon1)
    lat2_arr, lon2_arr = validate_coordinates(lat2, lon2)
    if lat1_arr.shape != lat2_arr.shape:
        raise ValueError(f"point sets have mismatched shapes {lat1_arr.shape} and {lat2_arr.shape}")
    p1, p2 = np.radians(lat1_arr), np.radians(lat2_arr)
    dlat = p2 - p1
    dlon = np.radians(lon2_arr - lon1_arr)
    h = np.sin(dlat / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def angle_between_units(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle in radians between paired unit vectors, stable for tiny and near-antipodal angles."""
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    dot = np.sum(u * v, axis=-1)
    return np.arctan2(cross, dot)


def spherical_centre(lat: ArrayLike, lon: ArrayLike, weights: ArrayLike | None = None) -> tuple[float, float]:
    """Geographic centre of points: the normalised (weighted) mean of their unit vectors.

    Right across the antimeridian and near the poles, unlike an average of degrees. Raises when the
    mean vector vanishes (e.g. two antipodal points), since no centre is defined then.
    """
    units = to_unit(lat, lon)
    w = np.ones(len(units)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(units),):
        raise ValueError(f"weights must have shape ({len(units)},), got {w.shape}")
    mean = (units * w[:, None]).sum(axis=0)
    if np.linalg.norm(mean) < 1e-12 * max(float(np.abs(w).sum()), 1.0):
        raise ValueError("the points' mean vector is zero (e.g. antipodal points): no spherical centre")
    c_lat, c_lon = from_unit(mean[None, :])
    return float(c_lat[0]), float(c_lon[0])


def grouped_centre_and_spread(
    units: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and spread of G groups of S unit vectors, given as an array (G, S, 3), with optional
    weights (S,) of the S members (uniform by default).

    Returns (lat, lon, spread_km): the (weighted) spherical centre of each group and the (weighted)
    root-mean-square great-circle distance of the group's points from it. When a group's mean vector
    vanishes the first point stands in as its centre.
    """
    if units.ndim != 3 or units.shape[-1] != 3:
        raise ValueError(f"expected (groups, samples, 3), got {units.shape}")
    weights = _member_weights(units.shape[1], weights)
    mean = np.einsum("gsk,s->gk", units, weights)
    norm = np.linalg.norm(mean, axis=-1)
    degenerate = norm < 1e-12
    mean[degenerate] = units[degenerate, 0]
    centre = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    lat, lon = from_unit(centre)
    return lat, lon, spread_about_km(units, centre, weights)


def spread_about_km(units: np.ndarray, centre: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) RMS great-circle distance (km) of each group's points (G, S, 3) from its centre (G, 3)."""
    angles = angle_between_units(units, centre[:, None, :])
    return EARTH_RADIUS_KM * np.sqrt(angles**2 @ _member_weights(units.shape[1], weights))


def _member_weights(members: int, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.full(members, 1.0 / members)
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (members,) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"weights must be {members} non-negative numbers with a positive sum, got {weights}")
    return weights / weights.sum()


def fibonacci_lattice(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n near-uniform points on the sphere (Fibonacci lattice), as (lat, lon) degrees."""
    if n < 1:
        raise ValueError(f"need at least one anchor, got n={n}")
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    lon = np.degrees((i * GOLDEN_ANGLE) % (2.0 * math.pi))
    return np.degrees(np.arcsin(z)), wrap_longitude(lon)


def random_points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform over the sphere's area (uniform z and longitude), as (lat, lon) degrees."""
    z = rng.uniform(-1.0, 1.0, size=n)
    lon = rng.uniform(-180.0, 180.0, size=n)
    return np.degrees(np.arcsin(z)), lon


def mean_spacing_rad(n_points: int) -> float:
    """Typical angular spacing of n near-uniform points: the side of a square of area 4 pi / n."""
    return math.sqrt(4.0 * math.pi / n_points)


REGION_DEG = 7.5  # the default side of a region cell: the unit the benchmarks are drawn and bootstrapped by


def region_of(lat: ArrayLike, lon: ArrayLike, size_deg: float = REGION_DEG) -> np.ndarray:
    """The region cell (a size_deg x size_deg square of latitude and longitude) holding each location, named by
    its south-west corner: '+37.5,-127.5'. Images of one region are not independent draws (one landscape,
    one climate), so benchmarks are built and bootstrapped by region, never by image."""
    if not 0 < size_deg <= 90:
        raise ValueError(f"size_deg must lie in (0, 90], got {size_deg}")
    lat = np.clip(np.asarray(lat, dtype=float), -90.0, 90.0)
    rows = np.minimum(np.floor((lat + 90.0) / size_deg), np.ceil(180.0 / size_deg) - 1)  # the north pole: top row
    cols = np.floor(((wrap_longitude(lon) + 180.0) % 360.0) / size_deg)
    south, west = rows * size_deg - 90.0, cols * size_deg - 180.0
    return np.array([f"{s:+.1f},{w:+.1f}" for s, w in zip(south, west, strict=True)], dtype=object)
