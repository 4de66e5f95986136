"""The Dagster graph end to end on a tiny configuration: real Dagster, MLflow (SQLite), DuckDB, Parquet."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pyarrow.dataset as ds
import pytest
from dagster import AssetKey, DagsterInstance, build_schedule_context, materialize

from locdiff_pipeline.definitions import defs
from locdiff_pipeline.defs.assets.evaluation import accuracy_report
from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.jobs import materialize_all
from locdiff_pipeline.defs.resources import (
    DatasetResource,
    EncoderResource,
    EvaluationResource,
    MlflowResource,
    TrainingResource,
    WarehouseResource,
)
from locdiff_pipeline.method import metrics, shdd
from locdiff_pipeline.steps import report_sql
from locdiff_pipeline.steps.predictions import METHODS
from locdiff_pipeline.tracking import registry

COUNT, VIEWS, DEGREES = 300, 4, (4, 10)


def tiny_resources(root) -> dict:
    return {
        "warehouse": WarehouseResource(root=str(root)),
        "dataset": DatasetResource(bundled_count=COUNT),
        "encoder": EncoderResource(model_name="locdiff-tiny-vit", test_views=VIEWS),
        "training": TrainingResource(
            L=10,
            shdd_degrees=list(DEGREES),
            steps=60,
            batch_size=64,
            hidden_dims=[64, 32],
            timesteps=50,
            sample_steps=5,
        ),
        "evaluation": EvaluationResource(samples_per_view=2, regression_steps=100),
        "mlflow": MlflowResource(),
    }


def _metadata(result, key: str) -> dict:
    return {
        m.asset_key.path[-1]: m.metadata
        for m in result.get_asset_materialization_events()
        for m in [m.event_specific_data.materialization]
    }[key]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    instance = DagsterInstance.ephemeral()
    first = materialize_all(tiny_resources(root), instance=instance)
    assert first.success
    return root, instance, first


def _table(root, name: str):
    return ds.dataset(str(root / "warehouse" / name), format="parquet", partitioning="hive").to_table()


def test_every_stage_wrote_its_rows(pipeline):
    root, _, first = pipeline
    images = _table(root, "images")
    assert images.num_rows == COUNT
    splits = dict(zip(*np.unique(images["split"].to_numpy(zero_copy_only=False), return_counts=True)))
    assert set(splits) == {"train", "val", "test"}
    embeddings = _table(root, "embeddings")
    assert embeddings.num_rows == COUNT + splits["test"] * (VIEWS - 1)
    predictions = _table(root, "predictions")
    assert predictions.num_rows == splits["test"] * len(METHODS)
    assert set(predictions["method"].to_pylist()) == set(METHODS)
    samples = _table(root, "prediction_samples")
    assert samples.num_rows == splits["test"]
    assert {len(s) for s in samples["sample_lat"].to_pylist()} == {VIEWS * 2}  # views x samples_per_view
    assert all(e.passed for e in first.get_asset_check_evaluations())
    assert len(first.get_asset_check_evaluations()) == len(ALL_CHECKS)


def test_shdd_tables_equal_the_encoder_on_ingested_coordinates(pipeline):
    root, _, _ = pipeline
    images = _table(root, "images").to_pandas().set_index("image_id")
    for L in DEGREES:
        table = ds.dataset(
            str(root / "warehouse" / "shdd" / "dataset=bluemarble" / f"L={L}"), format="parquet", partitioning="hive"
        ).to_table()
        coefficients = np.stack(table["coefficients"].to_numpy(zero_copy_only=False))
        rows = images.loc[table["image_id"].to_pylist()]
        expected = shdd.encode(rows["lat"].to_numpy(), rows["lon"].to_numpy(), L)
        assert coefficients.shape == (COUNT, (L + 1) ** 2)
        assert np.max(np.abs(coefficients - expected)) < 1e-5


def test_mlflow_run_and_registered_champion_exist(pipeline):
    root, _, first = pipeline
    registry.configure(root=root)
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(registry.REGISTERED_MODEL, registry.CHAMPION)
    assert int(champion.version) == 1
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["L"] == "10" and run.data.tags["encoder_pretrained"] == "false"
    assert "NO pretrained weights" in run.data.tags["encoder_note"]
    assert {"val_acc_750km", "val_score", "loss"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 10  # per-step losses
    assert _metadata(first, "locdiff_model")["model_version"].value == 1


def test_report_equals_a_direct_recomputation_from_the_prediction_table(pipeline):
    root, _, _ = pipeline
    predictions = _table(root, "predictions").to_pandas()
    rows = {
        r["method"]: r for r in report_sql.accuracy_table(WarehouseResource(root=str(root)).get(), dataset="bluemarble")
    }
    assert set(rows) == set(METHODS)
    for method, group in predictions.groupby("method"):
        expected = metrics.accuracy(group["true_lat"], group["true_lon"], group["pred_lat"], group["pred_lon"])
        for threshold in metrics.THRESHOLDS_KM:
            assert rows[method][metrics.accuracy_column(threshold)] == pytest.approx(
                expected[metrics.accuracy_column(threshold)]
            )
        assert rows[method]["median_km"] == pytest.approx(expected["median_km"])
        assert rows[method]["count"] == expected["count"]
    locdiff = predictions[predictions["method"] == "locdiff"]
    assert rows["locdiff"]["region_coverage"] == pytest.approx((locdiff["error_km"] <= locdiff["region_km"]).mean())
    assert rows["knn"]["region_coverage"] is None
    folder = root / "warehouse" / "reports" / "bluemarble" / "v1"
    for name in ("error_cdf.png", "error_map.png", "calibration.png", "density_maps.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    calibration = json.loads((folder / "calibration.json").read_text())
    observed = [point["observed"] for point in calibration]
    assert observed == sorted(observed)  # nested regions: coverage cannot fall as the level rises
    ninety = next(p["observed"] for p in calibration if p["level"] == 0.9)
    assert ninety == pytest.approx(rows["locdiff"]["region_coverage"], abs=1e-9)  # samples table reproduces region_km
    assert "NO pretrained weights" in (folder / "accuracy.md").read_text()


def test_rematerializing_one_asset_leaves_its_upstream_alone(pipeline):
    root, instance, _ = pipeline
    images_manifest = root / "warehouse" / "images" / "dataset=bluemarble" / "shard=000" / "_manifest.json"
    before = images_manifest.stat().st_mtime_ns
    only = materialize([accuracy_report], resources=tiny_resources(root), instance=instance)
    assert only.success
    assert {e.asset_key.path[-1] for e in only.get_asset_materialization_events()} == {"accuracy_report"}
    assert images_manifest.stat().st_mtime_ns == before


def test_second_run_of_the_graph_is_served_from_cache(pipeline):
    root, instance, _ = pipeline
    second = materialize_all(tiny_resources(root), instance=instance)
    assert second.success
    for key in ("image_metadata", "images", "clip_embeddings", "shdd_tables", "locdiff_model", "predictions"):
        assert _metadata(second, key)["cached"].value is True, key
    registry.configure(root=root)
    assert [
        int(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{registry.REGISTERED_MODEL}'")
    ] == [1]
    latest = json.loads((root / "warehouse" / "models" / "latest.json").read_text())
    assert latest["version"] == 1


class _ConstantModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_champion_moves_only_to_a_better_version(tmp_path):
    registry.configure(root=tmp_path)
    experiment = registry.ensure_experiment(tmp_path)
    outcomes = []
    for score in (0.5, 0.3, 0.7):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_metric(registry.VALIDATION_METRIC, score)
            info = mlflow.pyfunc.log_model(name="model", python_model=_ConstantModel(), pip_requirements=[])
        outcomes.append(registry.register_and_promote(info.model_uri, run.info.run_id, score))
    assert [(o.version, o.promoted, o.champion_version) for o in outcomes] == [
        (1, True, 1),
        (2, False, 1),
        (3, True, 3),
    ]
    version, score = registry.champion_score(mlflow.MlflowClient())
    assert (version, score) == (3, 0.7)


def test_definitions_hold_the_graph_schedule_and_checks():
    repository = defs.get_repository_def()
    keys = {key.path[-1] for key in repository.asset_graph.get_all_asset_keys()}
    assert keys == {
        "image_metadata",
        "images",
        "clip_embeddings",
        "shdd_tables",
        "locdiff_model",
        "predictions",
        "accuracy_report",
    }
    schedule = repository.get_schedule_def("weekly_retrain")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "locdiff_all"
    request = schedule.evaluate_tick(build_schedule_context()).run_requests[0]  # the weekly run covers every shard
    shard_keys = repository.asset_graph.get(AssetKey("images")).partitions_def.get_partition_keys()
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == (
        shard_keys[0],
        shard_keys[-1],
    )
    assert len(list(repository.asset_checks_defs_by_key)) == len(ALL_CHECKS)


def test_the_readme_sql_runs_against_the_warehouse(pipeline):
    """The README's SQL example, taken from the README itself, answers from this warehouse."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root, _, _ = pipeline
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### SQL over the warehouse") :]
    code = re.search(r'\.venv/bin/python -c "\n(.*?)\n"\n', section, re.S).group(1)
    completed = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "locdiff_h" in completed.stdout and "lat_band" in completed.stdout


def test_tracking_follows_the_project_not_an_earlier_configuration(tmp_path):
    """mlflow.set_tracking_uri echoes the URI into MLFLOW_TRACKING_URI; a later project must not inherit it."""
    first = registry.configure(root=tmp_path / "a")
    second = registry.configure(root=tmp_path / "b")
    assert first != second and second.endswith(str(tmp_path / "b" / "mlruns" / "mlflow.db"))
    assert mlflow.get_tracking_uri() == second
    explicit = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert registry.configure(explicit, root=tmp_path / "b") == explicit


def test_a_user_tracking_uri_in_the_environment_wins_every_time(tmp_path, monkeypatch):
    users = f"sqlite:///{tmp_path / 'users.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)
    assert registry.configure(root=tmp_path / "a") == users
    assert registry.configure(root=tmp_path / "b") == users
