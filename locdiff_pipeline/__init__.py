"""LocDiff image geolocation (spherical-harmonics Dirac-delta diffusion) as a Dagster pipeline."""

from __future__ import annotations

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Predict image locations; see locdiff_pipeline.predict.predict (imported lazily: torch is heavy)."""
    from locdiff_pipeline.predict import predict as _predict

    return _predict(*args, **kwargs)
