"""LocDiff image geolocation (spherical-harmonics Dirac-delta diffusion) as a Dagster pipeline."""

from __future__ import annotations

import os

# Torch's CPU matrix products (MKL) pick kernels by matrix shape: on AVX-512 machines a row's result then
# depends on how many rows share its batch (measured: 2e-5 apart, 0.005 degrees after sampling), so an
# image's answer would depend on the images predicted with it. MKL's strict reproducibility mode makes
# each row's result independent of its batch, at no measured cost; it must be set before MKL's first call,
# so here, where every entry point starts (a caller's own setting wins).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Predict image locations; see locdiff_pipeline.predict.predict (imported lazily: torch is heavy)."""
    from locdiff_pipeline.predict import predict as _predict

    return _predict(*args, **kwargs)
