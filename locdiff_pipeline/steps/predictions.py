"""The `predictions` step: every method scored on one benchmark against the latest model
(steps/scoring.py), written to the `predictions` and `prediction_samples` tables and cached by its inputs,
so an unchanged rerun reads the manifest instead of scoring again."""

from __future__ import annotations

from collections.abc import Callable

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.steps.contamination import CONTAMINATION_TABLE, contaminated_ids
from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE
from locdiff_pipeline.steps.locdiff_model import read_latest
from locdiff_pipeline.steps.prediction_table import PREDICTIONS_TABLE, predictions_are_current, write_predictions
from locdiff_pipeline.steps.scoring import METHODS, MethodSettings, predict_benchmark

PREDICTIONS_VERSION = 5  # bump when any method's predictions change: cached predictions are recomputed
CONTAMINATION_FIELDS = ("images", "exact", "near", "threshold", "max_hash_distance", "training_dataset")


def build_predictions(
    warehouse: Warehouse,
    benchmark: str,
    samples_per_view: int | None,
    settings: MethodSettings,
    *,
    exclude_contaminated: bool = False,
    device=None,
    progress: Callable[[int], None] = lambda done: None,
) -> dict:
    """Score `benchmark` against the latest model (unless its predictions are current); returns the
    predictions manifest with "rows", "model_version" and "cached"."""
    latest = read_latest(warehouse)
    version = latest["version"]
    embeddings = shards.manifest(warehouse, EMBEDDINGS_TABLE, benchmark)
    excluded = contaminated_ids(warehouse, benchmark) if exclude_contaminated else set()
    key = fingerprint(
        PREDICTIONS_VERSION,
        version,
        latest["run_id"],
        embeddings["fingerprint"],
        samples_per_view,
        settings.to_dict(),
        METHODS,
        sorted(excluded),
    )
    if predictions_are_current(warehouse, benchmark, version, key):
        manifest = warehouse.manifest(PREDICTIONS_TABLE, dataset=benchmark, model_version=version)
        return {**manifest, "model_version": version, "cached": True}
    model = LocDiffModel.load(latest["checkpoint"], device=device)
    training = latest["training_dataset"]
    scored = predict_benchmark(
        warehouse,
        benchmark,
        training,
        model,
        embeddings["test_views"],
        samples_per_view,
        settings,
        excluded,
        progress=progress,
    )
    contamination = warehouse.manifest(CONTAMINATION_TABLE, dataset=benchmark)
    manifest = {
        "fingerprint": key,
        "training_dataset": training,
        "methods": list(METHODS),
        "images": scored.images,
        "excluded_contaminated": len(excluded),
        "contamination": {name: contamination[name] for name in CONTAMINATION_FIELDS},
        "protocol": model.metadata.get("protocol"),
        "chosen": scored.chosen,
        "locdiff_h_fallback_share": scored.hybrid_fallback_share,
        "regions": scored.regions,
        "region_deg": settings.region_deg,
        "densities": scored.densities,
    }
    rows = write_predictions(warehouse, benchmark, version, scored.tables, scored.samples, scored.resamples, manifest)
    return {**manifest, "rows": rows, "model_version": version, "cached": False}
