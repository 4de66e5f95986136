"""Predict locations of image files with a trained model: the `locdiff predict` command's engine.

The model is a checkpoint folder or an MLflow reference (models:/locdiff@champion, models:/locdiff/3,
runs:/...); references resolve against the project's MLflow backend unless MLFLOW_TRACKING_URI is set.
Images are embedded by the encoder recorded with the model, in the same views as at evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from locdiff_pipeline.data.image_io import ImageDecodeError, read_image_file
from locdiff_pipeline.encoders.image_encoder import recorded_encoder
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.method.protocol import Protocol, sample_and_answer


@dataclass
class ImagePrediction:
    image: str
    lat: float
    lon: float
    spread_km: float
    region_km: float  # radius of the 90 % region around the answer (calibrated on validation)
    ranked: list[tuple[float, float, float]] = field(default_factory=list)  # (lat, lon, probability), best first


@dataclass
class PredictResult:
    predictions: list[ImagePrediction]
    errors: dict[str, str] = field(default_factory=dict)  # image -> reason
    model: str = ""
    encoder_note: str = ""


def resolve_model(reference: str) -> Path:
    """A local checkpoint folder for a path or an MLflow models:/ or runs:/ reference."""
    if "://" not in reference and ":/" not in reference:
        path = Path(reference)
        if not path.exists():
            raise FileNotFoundError(
                f"model {reference!r} is neither a checkpoint folder nor an MLflow reference (models:/NAME@ALIAS)"
            )
        return path
    from locdiff_pipeline.data.paths import mlruns_dir
    from locdiff_pipeline.tracking import registry

    store = mlruns_dir() / "mlflow.db"
    if not os.environ.get("MLFLOW_TRACKING_URI") and not store.is_file():  # create no store in a stranger folder
        raise FileNotFoundError(
            f"model {reference!r}: no MLflow store at {store} (run `locdiff run` in that project first, "
            "or set LOCDIFF_HOME to the project folder, or MLFLOW_TRACKING_URI)"
        )
    registry.configure()
    return registry.download_checkpoint(reference)


def predict(
    images: list[str | Path],
    model: str,
    *,
    views: int | None = None,
    rule: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    encoder_checkpoint: str | None = None,
    device: str | None = None,
    top_k: int | None = None,
) -> PredictResult:
    """Predict (lat, lon, spread_km, region_km) for each readable image; unreadable ones are reported in
    `errors`.

    `views`, `rule` and `samples` (diffusion samples per view, combined by the rule) default to the protocol
    chosen on validation and recorded with the model, so with the defaults an image gets the answer and the
    90 % region the benchmark's `predictions` table gives it; the views are made for the imagery the model
    was trained on (no flips for north-up imagery). With
    `top_k`, each prediction also carries the k most likely places of the mixture density of every sample
    drawn for it (the answer's and the region's) with their probabilities, as the table's ranked answers."""
    if any(value is not None and value < 1 for value in (views, samples, top_k)):
        raise ValueError(f"views, samples and top_k must be at least 1, got {views}, {samples} and {top_k}")
    loaded = LocDiffModel.load(resolve_model(model), device=device)
    recorded = Protocol.from_dict(loaded.metadata.get("protocol"))
    protocol = replace(
        recorded, views=views or recorded.views, rule=rule or recorded.rule, samples=samples or recorded.samples
    )
    encoder = recorded_encoder(loaded.encoder, encoder_checkpoint, loaded.device)
    result = PredictResult([], {}, model, encoder.identity.note)
    readable, names = [], []
    for image in images:
        try:
            readable.append(read_image_file(image))
            names.append(str(image))
        except ImageDecodeError as error:
            result.errors[str(image)] = str(error)
    if readable:
        embeddings = encoder.embed_views(readable, [Path(n).name for n in names], protocol.views, protocol.imagery)
        prediction, region, drawn = sample_and_answer(loaded, embeddings, protocol, seed)
        ranked = loaded.ranked(drawn, top_k, plain_weight=protocol.plain_weight) if top_k else None
        for i, name in enumerate(names):
            places = [] if ranked is None else [tuple(float(a[i, r]) for a in ranked) for r in range(top_k)]
            point = (
                float(prediction.lat[i]),
                float(prediction.lon[i]),
                float(prediction.spread_km[i]),
                float(region[i]),
            )
            result.predictions.append(ImagePrediction(name, *point, places))
    return result


def to_csv(result: PredictResult) -> str:
    """CSV with columns image,lat,lon,spread_km,region_km, or image,rank,lat,lon,probability when ranked answers
    were asked for; comment lines (#) say which model and encoder."""
    import csv
    import io

    buffer = io.StringIO()
    buffer.write(f"# model: {result.model}\n# {result.encoder_note}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    if any(p.ranked for p in result.predictions):
        writer.writerow(["image", "rank", "lat", "lon", "probability"])
        for p in result.predictions:
            for rank, (lat, lon, probability) in enumerate(p.ranked, start=1):
                writer.writerow([p.image, rank, f"{lat:.6f}", f"{lon:.6f}", f"{probability:.4f}"])
        return buffer.getvalue()
    writer.writerow(["image", "lat", "lon", "spread_km", "region_km"])
    for p in result.predictions:
        writer.writerow([p.image, f"{p.lat:.6f}", f"{p.lon:.6f}", f"{p.spread_km:.1f}", f"{p.region_km:.1f}"])
    return buffer.getvalue()


def to_json(result: PredictResult) -> str:
    """One JSON document: the model, the encoder note, each prediction (with its ranked places when asked
    for) and the images that could not be read."""
    import json

    return json.dumps(
        {
            "model": result.model,
            "encoder": result.encoder_note,
            "predictions": [_prediction_dict(p) for p in result.predictions],
            "errors": result.errors,
        },
        indent=2,
    )


def to_geojson(result: PredictResult) -> str:
    """A GeoJSON FeatureCollection (RFC 7946: [lon, lat] order, WGS 84): one Point Feature per image with
    its spread and, when asked for, its ranked places; the model and encoder note as foreign members."""
    import json

    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
            "properties": {k: v for k, v in _prediction_dict(p).items() if k not in ("lat", "lon")},
        }
        for p in result.predictions
    ]
    collection = {"type": "FeatureCollection", "features": features, "model": result.model}
    return json.dumps({**collection, "encoder": result.encoder_note}, indent=2)


def _prediction_dict(prediction: ImagePrediction) -> dict:
    row = {"image": prediction.image, "lat": prediction.lat, "lon": prediction.lon}
    row |= {"spread_km": prediction.spread_km, "region_km": prediction.region_km}
    if prediction.ranked:
        row["ranked"] = [
            {"rank": rank, "lat": lat, "lon": lon, "probability": probability}
            for rank, (lat, lon, probability) in enumerate(prediction.ranked, start=1)
        ]
    return row


FORMATS = {"csv": to_csv, "json": to_json, "geojson": to_geojson}

__all__ = ["predict", "to_csv", "to_json", "to_geojson", "FORMATS", "PredictResult", "ImagePrediction", "resolve_model"]
