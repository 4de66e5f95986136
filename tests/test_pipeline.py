"""The Dagster graph end to end on a tiny configuration: real Dagster, MLflow (SQLite), DuckDB, Parquet.

One training dataset and two benchmarks (the bundled ones), the model trained once and each benchmark
scored in its own partition; then a third benchmark, with planted duplicates of training images, added
to the catalog: only its own work is done, and its contamination is found and can be excluded.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterInstance,
    RunRequest,
    build_schedule_context,
    build_sensor_context,
    materialize,
)
from PIL import Image

from locdiff_pipeline.data import bundled
from locdiff_pipeline.data.image_io import sha256_file
from locdiff_pipeline.definitions import defs
from locdiff_pipeline.defs.assets.evaluation import accuracy_report
from locdiff_pipeline.defs.assets.model import locdiff_model
from locdiff_pipeline.defs.checks import ALL_CHECKS
from locdiff_pipeline.defs.graph_run import materialize_all
from locdiff_pipeline.defs.jobs import EVALUATION_SELECTION
from locdiff_pipeline.defs.resources import (
    DatasetsResource,
    EncoderResource,
    EvaluationResource,
    MlflowResource,
    TrainingResource,
    WarehouseResource,
)
from locdiff_pipeline.defs.sensors.evaluate_new_model import evaluate_new_model
from locdiff_pipeline.encoders.image_encoder import DESCRIPTORS_NOTE
from locdiff_pipeline.method import bootstrap, metrics, shdd, sphere
from locdiff_pipeline.method.model import LocDiffModel
from locdiff_pipeline.method.protocol import Protocol, draws_needed
from locdiff_pipeline.predict import predict
from locdiff_pipeline.steps import report_sql, report_tables
from locdiff_pipeline.steps.scoring import CHANCE, METHODS
from locdiff_pipeline.tracking import pyfunc_model, registry, request_input

COUNT, GALLERY, BENCHMARK_COUNT, VIEWS, DEGREES, DRAWS = 300, 300, 40, 4, (4, 10), 3
BENCHMARKS = (bundled.HELDOUT, bundled.SHIFTED)


def tiny_resources(root, steps: int = 60, **evaluation) -> dict:
    return {
        "warehouse": WarehouseResource(root=str(root)),
        "datasets": DatasetsResource(
            bundled_count=COUNT, bundled_gallery_count=GALLERY, bundled_benchmark_count=BENCHMARK_COUNT
        ),
        "encoder": EncoderResource(test_views=VIEWS, decode_workers=1),  # the default: scene descriptors
        "training": TrainingResource(
            L=10,
            shdd_degrees=list(DEGREES),
            steps=steps,
            batch_size=64,
            hidden_dims=[64, 32],
            timesteps=50,
            sample_steps=5,
        ),
        "evaluation": EvaluationResource(samples_per_view=2, regression_steps=100, chance_draws=DRAWS, **evaluation),
        "mlflow": MlflowResource(),
    }


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
    images = _table(root, "images").to_pandas()
    splits = images.groupby(["dataset", "split"]).size().to_dict()
    assert set(splits) == {(bundled.BUNDLED, "train"), (bundled.BUNDLED, "val"), *((b, "test") for b in BENCHMARKS)}
    assert splits[(bundled.HELDOUT, "test")] == splits[(bundled.SHIFTED, "test")] == BENCHMARK_COUNT
    embeddings = _table(root, "embeddings").to_pandas().groupby("dataset").size().to_dict()
    train, val = splits[(bundled.BUNDLED, "train")], splits[(bundled.BUNDLED, "val")]
    assert embeddings == {bundled.BUNDLED: train + val * VIEWS, **{b: BENCHMARK_COUNT * VIEWS for b in BENCHMARKS}}
    located = (
        _table(root, "embeddings")
        .to_pandas()[["dataset", "image_id", "lat", "lon"]]
        .merge(images[["dataset", "image_id", "lat", "lon"]], on=["dataset", "image_id"], suffixes=("", "_of_image"))
    )  # every embedding row carries its image's coordinates (what streamed training reads)
    assert len(located) == sum(embeddings.values())
    assert (located["lat"] == located["lat_of_image"]).all() and (located["lon"] == located["lon_of_image"]).all()
    predictions = _table(root, "predictions").to_pandas()
    for benchmark in BENCHMARKS:
        rows = predictions[predictions["dataset"] == benchmark]
        assert set(rows["method"]) == set(METHODS) and set(rows["training_dataset"]) == {bundled.BUNDLED}
        assert len(rows) == BENCHMARK_COUNT * (len(METHODS) - 1 + DRAWS)  # chance: one row per draw
    protocol = json.loads((root / "warehouse" / "models" / "latest.json").read_text())
    checkpoint = json.loads((root / "warehouse" / "checkpoints").glob("*/model/config.json").__next__().read_text())
    chosen = checkpoint["metadata"]["protocol"]
    assert chosen["rule"] in ("mixture", "centre") and 1 <= chosen["views"] <= VIEWS and chosen["imagery"] == "north_up"
    samples = _table(root, "prediction_samples")
    assert samples.num_rows == 2 * BENCHMARK_COUNT
    drawn = draws_needed(replace(Protocol.from_dict(chosen), samples=2))  # samples_per_view, or the region's
    assert {len(s) for s in samples["sample_lat"].to_pylist()} == {chosen["views"] * drawn}
    assert protocol["training_dataset"] == bundled.BUNDLED
    evaluations = first.get_asset_check_evaluations()
    assert all(e.passed for e in evaluations if e.severity == AssetCheckSeverity.ERROR)
    # data checks and the model check once; contamination, coverage and the report per benchmark
    assert len(evaluations) == 7 + 1 + 3 * len(BENCHMARKS)


def test_a_run_over_every_shard_describes_each_shard_on_its_own(pipeline):
    """One run covers all shards; each shard's Partitions view still gets that shard's own counts (an
    observation per shard), which add up to the run's totals and match the rows written per shard."""
    root, instance, _ = pipeline
    images = _table(root, "images").to_pandas()
    images["shard"] = images["shard"].map(lambda number: f"{int(number):03d}")  # the partition key
    for asset_name in ("images", "image_embeddings", "shdd_tables"):
        records = instance.fetch_observations(AssetKey(asset_name), limit=1000).records
        by_shard = {r.partition_key: r.asset_observation.metadata for r in records}
        assert set(by_shard) == set(images["shard"].unique()) and len(by_shard) > 1, asset_name
        assert all(m["shard"].value == shard for shard, m in by_shard.items())
    observed = instance.fetch_observations(AssetKey("images"), limit=1000).records
    accepted = {r.partition_key: r.asset_observation.metadata["accepted"].value for r in observed}
    assert accepted == images.groupby("shard").size().to_dict()
    embedded = _table(root, "embeddings").to_pandas().groupby("shard").size()
    embedded = {f"{int(number):03d}": int(count) for number, count in embedded.items()}
    observed = instance.fetch_observations(AssetKey("image_embeddings"), limit=1000).records
    assert {r.partition_key: r.asset_observation.metadata["dagster/row_count"].value for r in observed} == embedded


def test_the_chosen_protocol_is_never_worse_than_the_plain_view_on_validation(pipeline):
    root, _, _ = pipeline
    tracking_run = _champion_run(root)
    choice = json.loads(mlflow.artifacts.load_text(f"runs:/{tracking_run.info.run_id}/protocol_choice.json"))
    plain = max(row["score"] for row in choice["candidates"] if row["views"] == 1 and row["samples"] == 1)
    assert choice["chosen"]["validation_score"] >= plain
    assert {(row["rule"], row["views"]) for row in choice["candidates"]} >= {("mixture", VIEWS), ("centre", VIEWS)}


def test_the_bundled_benchmarks_are_clean_and_the_report_sets_them_beside_chance_and_constant(pipeline):
    root, _, first = pipeline
    with report_sql.connect(WarehouseResource(root=str(root)).get(), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM contamination").fetchall() == [(0,)]
        rows = report_sql.query(con, "SELECT dataset, training_dataset, method FROM accuracy")
    assert {(r["dataset"], r["training_dataset"], r["method"]) for r in rows} == {
        (b, bundled.BUNDLED, m) for b in BENCHMARKS for m in METHODS
    }
    for benchmark in BENCHMARKS:
        assert first.metadata("contamination", benchmark)["contaminated_share"].value == 0
        text = (root / "warehouse" / "reports" / benchmark / "v1" / "accuracy.md").read_text()
        assert "| constant |" in text and "| chance |" in text and "0 of 40 benchmark images" in text


def test_shdd_tables_equal_the_encoder_on_ingested_coordinates(pipeline):
    root, _, _ = pipeline
    images = _table(root, "images").to_pandas()
    images = images[images["dataset"] == bundled.BUNDLED].set_index("image_id")
    for L in DEGREES:
        folder = root / "warehouse" / "shdd" / f"dataset={bundled.BUNDLED}" / f"L={L}"
        table = ds.dataset(str(folder), format="parquet", partitioning="hive").to_table()
        coefficients = np.stack(table["coefficients"].to_numpy(zero_copy_only=False))
        rows = images.loc[table["image_id"].to_pylist()]
        expected = shdd.encode(rows["lat"].to_numpy(), rows["lon"].to_numpy(), L)
        assert coefficients.shape == (len(images), (L + 1) ** 2)
        assert np.max(np.abs(coefficients - expected)) < 1e-5


def _champion_run(root):
    registry.configure(root=root)
    client = mlflow.MlflowClient()
    return client.get_run(client.get_model_version_by_alias(registry.REGISTERED_MODEL, registry.CHAMPION).run_id)


def test_mlflow_run_and_registered_champion_exist(pipeline):
    root, _, first = pipeline
    run = _champion_run(root)
    client = mlflow.MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.data.params["L"] == "10" and run.data.tags["encoder_pretrained"] == "false"
    assert run.data.tags["dataset"] == bundled.BUNDLED and run.data.params["protocol_rule"] in ("mixture", "centre")
    assert DESCRIPTORS_NOTE in run.data.tags["encoder_note"]
    assert {"val_acc_750km", "val_score", "loss"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 10  # per-step losses
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_score")][-1] == 60  # at its real step
    for name in run.data.metrics:  # every metric at its real step, each step once: charts without false dips
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert steps == sorted(set(steps)), (name, steps)
    assert first.metadata("locdiff_model")["model_version"].value == 1
    assert {item.path for item in client.list_artifacts(run.info.run_id, "reports")} == {
        f"reports/{benchmark}" for benchmark in BENCHMARKS
    }
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == [bundled.BUNDLED] and inputs[0].tags[0].value == "training"
    version = client.get_model_version_by_alias(registry.REGISTERED_MODEL, registry.CHAMPION)
    assert bundled.BUNDLED in version.description and DESCRIPTORS_NOTE in version.description
    assert client.get_registered_model(registry.REGISTERED_MODEL).description == registry.MODEL_DESCRIPTION
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.note.content"] == registry.EXPERIMENT_DESCRIPTION


def test_the_registered_model_is_data_for_the_installed_loader_and_refuses_changed_files(
    pipeline, tmp_path, monkeypatch
):
    """The artifact holds data only (no pickle, no code): the installed package's loader module reads it
    after checking its digests; the pyfunc serves predictions; a changed weights file, or a code file
    slipped into the artifact, is refused before anything of it runs."""
    root, _, _ = pipeline
    _champion_run(root)
    location = mlflow.artifacts.download_artifacts("models:/locdiff@champion", dst_path=str(tmp_path / "copy"))
    files = {path.name for path in Path(location).rglob("*")}
    assert not any(name.endswith((".pkl", ".pickle", ".cloudpickle", ".py")) for name in files), files
    flavour = yaml.safe_load((Path(location) / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavour["loader_module"] == pyfunc_model.LOADER_MODULE and "model_code_path" not in flavour
    model = mlflow.pyfunc.load_model(location)
    assert model.metadata.get_input_schema().input_names() == ["image", "path", "embedding"]
    assert model.metadata.get_output_schema().input_names()[:4] == ["lat", "lon", "spread_km", "region_km"]
    assert {p.name for p in model.metadata.get_params_schema().params} == {"samples", "top_k"}
    example = model.metadata.load_input_example(location)  # one real image of the dataset, as bytes
    assert list(example.columns) == ["image"]
    stored = example["image"][0]  # bytes, or their base64 text as JSON keeps them
    image_bytes = stored if isinstance(stored, bytes) else base64.b64decode(stored)
    assert Image.open(io.BytesIO(image_bytes)).size[0] > 0
    embed_dim = LocDiffModel.load(next(Path(location).rglob("weights.pt")).parent).config.embed_dim
    frame = pd.DataFrame({"embedding": list(np.random.default_rng(0).normal(size=(3, embed_dim)))})
    served = model.predict(frame)
    assert list(served.columns) == ["lat", "lon", "spread_km", "region_km"] and served["lat"].between(-90, 90).all()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    image_file = allowed / "example.png"
    image_file.write_bytes(image_bytes)
    with pytest.raises(ValueError, match="row 0: the path input is off on this server"):
        model.predict(pd.DataFrame({"path": [str(image_file)]}))
    monkeypatch.setenv("LOCDIFF_SERVE_PATH_ROOT", str(allowed))
    by_bytes = model.predict(example, params={"top_k": 3})
    by_path = model.predict(pd.DataFrame({"path": [str(image_file)]}), params={"top_k": 3})
    assert np.allclose(by_bytes[["lat", "lon"]].values, by_path[["lat", "lon"]].values)  # same image, same answer
    probability = np.asarray(by_bytes["top_probability"][0])
    assert len(by_bytes["top_lat"][0]) == 3 and probability[0] == probability.max() and probability.sum() <= 1 + 1e-9
    with pytest.raises(ValueError, match="row 0: .*not a recognised image format"):
        model.predict(pd.DataFrame({"image": [b"not an image"]}))
    with pytest.raises(ValueError, match="give exactly one of"):
        model.predict(pd.DataFrame({"path": [str(image_file)], "image": [image_bytes]}))
    (weights,) = Path(location).rglob("weights.pt")
    planted = weights.parent / "pyfunc_code.py"
    marker = tmp_path / "code-ran"
    planted.write_text(f"open({str(marker)!r}, 'w').write('ran')\nimport locdiff_pipeline\n")
    with pytest.raises(registry.ModelReferenceError, match="pyfunc_code.py in .* changed since it was logged"):
        mlflow.pyfunc.load_model(location)
    assert not marker.exists()
    planted.unlink()
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(registry.ModelReferenceError, match="weights.pt in .* changed since it was logged"):
        mlflow.pyfunc.load_model(location)


def test_the_served_model_reads_paths_only_inside_its_folder_and_bounds_each_request(pipeline, tmp_path, monkeypatch):
    """The path input: off without LOCDIFF_SERVE_PATH_ROOT, then only inside it, with one answer for a file
    outside that exists and one that does not; rows, samples and top_k bounded with a 400-style error."""
    root, _, _ = pipeline
    registry.configure(root=root)
    model = mlflow.pyfunc.load_model("models:/locdiff@champion")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (allowed / "link").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setenv("LOCDIFF_SERVE_PATH_ROOT", str(allowed))
    refusals = []
    for outside in (
        "/etc/passwd",
        str(tmp_path / "secret.txt"),
        str(tmp_path / "missing.png"),
        "../secret.txt",
        "link",
    ):
        with pytest.raises(request_input.RequestRefused) as refused:
            model.predict(pd.DataFrame({"path": [outside]}))
        refusals.append(str(refused.value.message).replace(repr(outside), "PATH"))
        assert "secret" not in refused.value.message.replace(outside, "") and "root:" not in refused.value.message
    assert len(set(refusals)) == 1, refusals  # existing or not, outside is outside
    embed_dim = json.loads(next((root / "warehouse" / "checkpoints").glob("*/model/config.json")).read_text())[
        "config"
    ]["embed_dim"]
    rows = pd.DataFrame({"embedding": list(np.zeros((1, embed_dim)))})
    for params, bound in (({"samples": 100_000}, "samples must be between 1 and 256"), ({"top_k": 10**5}, "top_k")):
        with pytest.raises(request_input.RequestRefused, match=bound):
            model.predict(rows, params=params)
    with pytest.raises(request_input.RequestRefused, match="at most 256 rows"):
        model.predict(pd.DataFrame({"embedding": list(np.zeros((257, embed_dim)))}))
    with pytest.raises(request_input.RequestRefused, match=f"needs {embed_dim} finite numbers"):
        model.predict(pd.DataFrame({"embedding": [[float("nan")] * embed_dim]}))
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0")
    with pytest.raises(request_input.RequestRefused, match="ran past its 0 s deadline after 0 of 1 rows"):
        model.predict(rows)


def _file_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_copied_project_retrains_into_its_own_store_and_serves_its_own_champion(pipeline, tmp_path):
    """Copy a finished project, retrain in the copy: the original's mlruns/ is unchanged, and each project's
    champion is read from its own folder (MLflow's absolute artifact locations follow the copy)."""
    root, _, _ = pipeline
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    registry.configure(root=root)
    original_versions = len(mlflow.MlflowClient().search_model_versions(f"name='{registry.REGISTERED_MODEL}'"))
    before = _file_digests(root / "mlruns")
    resources = tiny_resources(copy, steps=61)  # another training configuration: a new fingerprint, a retrain
    retrained = materialize([locdiff_model], resources=resources, instance=DagsterInstance.ephemeral())
    (materialized,) = retrained.asset_materializations_for_node("locdiff_model")
    assert retrained.success and materialized.metadata["cached"].value is False
    assert _file_digests(root / "mlruns") == before
    for project, versions in ((root, original_versions), (copy, original_versions + 1)):
        registry.configure(root=project)
        client = mlflow.MlflowClient()
        assert len(client.search_model_versions(f"name='{registry.REGISTERED_MODEL}'")) == versions
        champion = client.get_model_version_by_alias(registry.REGISTERED_MODEL, registry.CHAMPION)
        location = client.get_model_version_download_uri(registry.REGISTERED_MODEL, champion.version)
        assert location.startswith(project.resolve().as_uri() + "/mlruns/"), location
        assert (
            mlflow.pyfunc.load_model("models:/locdiff@champion")
            .predict(
                pd.DataFrame(
                    {
                        "embedding": [
                            [0.0]
                            * LocDiffModel.load(
                                registry.download_checkpoint("models:/locdiff@champion")
                            ).config.embed_dim
                        ]
                    }
                )
            )["lat"]
            .between(-90, 90)
            .all()
        )
    registry.configure(root=root)


def test_report_equals_a_direct_recomputation_from_the_prediction_table(pipeline):
    root, _, _ = pipeline
    predictions = _table(root, "predictions").to_pandas()
    predictions = predictions[predictions["dataset"] == bundled.HELDOUT]
    rows = {
        r["method"]: r
        for r in report_sql.accuracy_table(WarehouseResource(root=str(root)).get(), dataset=bundled.HELDOUT)
    }
    assert set(rows) == set(METHODS)
    for method, group in predictions.groupby("method"):
        expected = metrics.accuracy(group["true_lat"], group["true_lon"], group["pred_lat"], group["pred_lon"])
        for threshold in metrics.THRESHOLDS_KM:
            column = metrics.accuracy_column(threshold)
            assert rows[method][column] == pytest.approx(expected[column])  # chance: the mean over its draws
        assert rows[method]["median_km"] == pytest.approx(expected["median_km"])
        assert rows[method]["count"] == group["image_id"].nunique() == BENCHMARK_COUNT
    assert len(predictions[predictions["method"] == CHANCE]) == DRAWS * BENCHMARK_COUNT
    locdiff = predictions[predictions["method"] == "locdiff"]
    assert rows["locdiff"]["region_coverage"] == pytest.approx((locdiff["error_km"] <= locdiff["region_km"]).mean())
    for method, group in predictions.groupby("method"):  # ranked answers: LocDiff and kNN keep five
        if method.split("/")[0] not in ("locdiff", "knn"):
            assert group["top_error_km"].isna().all() and rows[method]["top5_acc_750km"] is None
            continue
        for r in group.itertuples():
            assert 1 <= len(r.top_lat) <= 5 and sum(r.top_probability) <= 1 + 1e-9
            errors = sphere.haversine_km(
                [r.true_lat] * len(r.top_lat), [r.true_lon] * len(r.top_lon), r.top_lat, r.top_lon
            )
            assert r.top_error_km == pytest.approx(errors.min())
        assert rows[method]["top5_acc_750km"] == pytest.approx((group["top_error_km"] <= 750).mean())
    assert rows["knn"]["region_coverage"] is None  # the circle: LocDiff's only; every density has an HPD region
    folder = root / "warehouse" / "reports" / bundled.HELDOUT / "v1"
    for name in ("error_cdf.png", "error_map.png", "calibration.png", "coverage_area.png", "density_maps.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    calibration = json.loads((folder / "calibration.json").read_text())
    assert set(calibration) == {m for m in METHODS if "/" not in m}  # every method's density, none of the twins'
    for method, curve in calibration.items():
        observed = [point["observed"] for point in curve]
        assert observed == sorted(observed), method  # nested regions: coverage cannot fall as the level rises
        group = predictions[predictions["method"] == method]
        ninety = next(p["observed"] for p in curve if p["level"] == 0.9)
        assert (
            ninety == pytest.approx((group["hpd_level"] <= 0.9).mean()) == pytest.approx(rows[method]["hpd90_coverage"])
        )
        assert rows[method]["nll"] == pytest.approx(-group["log_density"].mean())
        assert rows[method]["hpd90_area"] == pytest.approx(group["hpd90_area"].mean())
        assert group["hpd90_area"].between(0, 1.05).all() and group["hpd_level"].between(0, 1).all()
        areas = [point["mean_area"] for point in curve]  # the coverage-area figure's x: nested regions grow
        assert areas == sorted(areas) and areas[-1] == pytest.approx(rows[method]["hpd90_area"]), method
    for method in (m for m in METHODS if "/" in m):  # a twin has points, not a density
        assert rows[method]["nll"] is None and predictions[predictions["method"] == method]["log_density"].isna().all()
    _the_intervals_are_a_bootstrap_over_the_benchmarks_regions(root, predictions, rows)
    assert DESCRIPTORS_NOTE in (folder / "accuracy.md").read_text()


def _the_intervals_are_a_bootstrap_over_the_benchmarks_regions(root, predictions, rows) -> None:
    """The report's intervals are method/bootstrap.py's over the bootstrap table written beside the predictions,
    whose regions are the truths' cells."""
    table = _table(root, "bootstrap").to_pandas()
    table = table[table["dataset"] == bundled.HELDOUT]
    resamples = bootstrap.Resamples(
        table["replicate"].to_numpy(), table["region"].to_numpy(object), table["weight"].to_numpy()
    )
    assert (
        set(table["region"])
        == set(predictions["region"])
        == set(sphere.region_of(predictions["true_lat"], predictions["true_lon"]))
    )
    for method in ("locdiff", "knn", CHANCE):
        group = predictions[predictions["method"] == method]
        for name, values in (("acc_750km", (group["error_km"] <= 750).astype(float)), ("nll", -group["log_density"])):
            low, high = bootstrap.ratio_interval(values.to_numpy(), group["region"].to_numpy(object), resamples)
            assert (rows[method][f"{name}_low"], rows[method][f"{name}_high"]) == (
                pytest.approx(low),
                pytest.approx(high),
            ), (method, name)
            assert low <= rows[method][name] <= high
    locdiff = predictions[predictions["method"] == "locdiff"].sort_values("image_id")
    knn = predictions[predictions["method"] == "knn"].sort_values("image_id")
    for name, value in (
        ("acc_750km", lambda g: (g["error_km"] <= 750).astype(float)),
        ("nll", lambda g: -g["log_density"]),
    ):
        low, high = bootstrap.paired_difference_interval(
            value(knn).to_numpy(), value(locdiff).to_numpy(), locdiff["region"].to_numpy(object), resamples
        )
        assert rows["knn"][f"{name}_minus_locdiff"] == pytest.approx(rows["knn"][name] - rows["locdiff"][name])
        assert (rows["knn"][f"{name}_minus_locdiff_low"], rows["knn"][f"{name}_minus_locdiff_high"]) == (
            pytest.approx(low),
            pytest.approx(high),
        ), name


def test_rematerializing_one_asset_leaves_its_upstream_alone(pipeline):
    root, instance, _ = pipeline
    images_manifest = root / "warehouse" / "images" / f"dataset={bundled.BUNDLED}" / "shard=000" / "_manifest.json"
    before = images_manifest.stat().st_mtime_ns
    only = materialize(
        [accuracy_report], resources=tiny_resources(root), instance=instance, partition_key=bundled.SHIFTED
    )
    assert only.success
    assert {e.asset_key.path[-1] for e in only.get_asset_materialization_events()} == {"accuracy_report"}
    assert images_manifest.stat().st_mtime_ns == before


def test_second_run_of_the_graph_is_served_from_cache(pipeline):
    root, instance, _ = pipeline
    second = materialize_all(tiny_resources(root), instance=instance)
    assert second.success
    for key in ("image_metadata", "images", "image_embeddings", "shdd_tables", "locdiff_model"):
        assert second.metadata(key)["cached"].value is True, key
    for benchmark in BENCHMARKS:
        for key in ("contamination", "predictions"):
            assert second.metadata(key, benchmark)["cached"].value is True, (key, benchmark)
    registry.configure(root=root)
    versions = mlflow.MlflowClient().search_model_versions(f"name='{registry.REGISTERED_MODEL}'")
    assert [int(v.version) for v in versions] == [1]
    latest = json.loads((root / "warehouse" / "models" / "latest.json").read_text())
    assert latest["version"] == 1


def _planted_benchmark(root, folder) -> dict:
    """A benchmark made of held-out images plus training images copied exactly (same bytes) and
    resized and re-encoded (near duplicates), in the MP16 layout."""
    training = next((root / "warehouse" / "sources").glob(f"{bundled.BUNDLED}-*"))
    heldout = next((root / "warehouse" / "sources").glob(f"{bundled.HELDOUT}-*"))
    with open(training / "metadata.csv") as handle:
        train_rows = [r for r in csv.DictReader(handle) if r["split"] == "train"]
    with open(heldout / "metadata.csv") as handle:
        clean_rows = list(csv.DictReader(handle))[:6]
    (folder / "images").mkdir(parents=True)
    records, planted = [], {"exact": {}, "near": {}}
    for kind, source_rows in (("exact", train_rows[:3]), ("near", train_rows[10:13])):
        for r in source_rows:
            image_id = f"{kind}_{len(records)}.jpg"
            data = (training / "images" / r["IMG_ID"]).read_bytes()
            if kind == "near":
                with Image.open(io.BytesIO(data)) as image:
                    buffer = io.BytesIO()
                    image.convert("RGB").resize((88, 88)).resize((96, 96)).save(buffer, "JPEG", quality=70)
                data = buffer.getvalue()
            (folder / "images" / image_id).write_bytes(data)
            records.append((image_id, r["LAT"], r["LON"]))
            planted[kind][image_id] = r["IMG_ID"]
    for r in clean_rows:
        image_id = "clean_" + r["IMG_ID"].replace("/", "_")
        shutil.copy(heldout / "images" / r["IMG_ID"], folder / "images" / image_id)
        records.append((image_id, r["LAT"], r["LON"]))
    with open(folder / "planted.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["IMG_ID", "LAT", "LON"])
        writer.writerows(records)
    return planted


@pytest.fixture(scope="module")
def third_benchmark(pipeline, tmp_path_factory):
    """The catalog gains a third benchmark (a YAML catalog file, as a user writes one)."""
    root, instance, _ = pipeline
    folder = tmp_path_factory.mktemp("planted")
    planted = _planted_benchmark(root, folder)
    entry = {
        "name": "planted",
        "metadata_csv": str(folder / "planted.csv"),
        "images": str(folder / "images"),
        "default_split": "test",
        "imagery": "north_up",
    }
    catalog = {
        "training": {"name": bundled.BUNDLED, "kind": "bundled"},
        "benchmarks": [{"name": name, "kind": "bundled"} for name in BENCHMARKS] + [entry],
    }
    (folder / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    resources = tiny_resources(root)
    resources["datasets"] = DatasetsResource(
        catalog=str(folder / "catalog.yaml"),
        bundled_count=COUNT,
        bundled_gallery_count=GALLERY,
        bundled_benchmark_count=BENCHMARK_COUNT,
    )
    manifests = sorted((root / "warehouse").glob(f"*/dataset={bundled.BUNDLED}/**/_manifest.json"))
    before = {path: path.stat().st_mtime_ns for path in manifests}
    third = materialize_all(resources, instance=instance)
    assert third.success
    return root, instance, resources, third, planted, before


def test_adding_a_benchmark_computes_only_its_own_work(third_benchmark):
    root, _, _, third, _, before = third_benchmark
    assert {path: path.stat().st_mtime_ns for path in before} == before  # no table of the training data rewritten
    assert third.metadata("locdiff_model")["cached"].value is True
    assert third.metadata("image_metadata")["datasets"].value["planted"]["cached"] is False
    assert all(
        third.metadata("image_metadata")["datasets"].value[name]["cached"] for name in (bundled.BUNDLED, *BENCHMARKS)
    )
    for benchmark in BENCHMARKS:
        assert third.metadata("predictions", benchmark)["cached"].value is True
    assert third.metadata("predictions", "planted")["cached"].value is False
    assert {r["dataset"] for r in report_sql.accuracy_table(WarehouseResource(root=str(root)).get())} == {
        *BENCHMARKS,
        "planted",
    }


def test_planted_duplicates_are_found_and_excluded_on_request(third_benchmark):
    root, instance, resources, third, planted, _ = third_benchmark
    store = WarehouseResource(root=str(root)).get()
    with report_sql.connect(store, read_only=True) as con:
        found = report_sql.query(
            con,
            "SELECT image_id, training_image_id, kind, similarity FROM contamination WHERE dataset = $1",
            ["planted"],
        )
    assert {r["image_id"]: (r["kind"], r["training_image_id"]) for r in found} == {
        **{i: ("exact", t) for i, t in planted["exact"].items()},
        **{i: ("near", t) for i, t in planted["near"].items()},
    }
    assert third.metadata("contamination", "planted")["contaminated_share"].value == pytest.approx(6 / 12)
    planted_run = third.results[-1]  # the catalog's last benchmark is scored last
    warning = next(e for e in planted_run.get_asset_check_evaluations() if e.check_name == "contamination_share")
    assert not warning.passed and warning.severity.value == "WARN"
    assert "they were scored (not excluded)" in (store.root / "reports" / "planted" / "v1" / "accuracy.md").read_text()
    excluding = {**resources, "evaluation": tiny_resources(root, exclude_contaminated=True)["evaluation"]}
    again = materialize(
        defs.assets + defs.asset_checks,
        resources=excluding,
        instance=instance,
        selection=EVALUATION_SELECTION,
        partition_key="planted",
    )
    assert again.success
    scored = {r["method"]: r["count"] for r in report_sql.accuracy_table(store, dataset="planted")}
    assert set(scored.values()) == {6}  # the six clean images, for every method
    assert "they were excluded from scoring" in (store.root / "reports" / "planted" / "v1" / "accuracy.md").read_text()


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
        digests = {name: f"{score}" for name in registry.CHECKPOINT_FILES}
        outcomes.append(registry.register_and_promote(info.model_uri, run.info.run_id, score, digests))
    assert [(o.version, o.promoted, o.champion_version) for o in outcomes] == [
        (1, True, 1),
        (2, False, 1),
        (3, True, 3),
    ]
    version, score = registry.champion_score(mlflow.MlflowClient())
    assert (version, score) == (3, 0.7)
    tags = mlflow.MlflowClient().get_model_version(registry.REGISTERED_MODEL, "3").tags
    assert json.loads(tags[registry.CHECKSUM_TAG]) == {name: "0.7" for name in registry.CHECKPOINT_FILES}


def test_definitions_hold_the_graph_schedule_sensor_and_checks():
    repository = defs.get_repository_def()
    keys = {key.path[-1] for key in repository.asset_graph.get_all_asset_keys()}
    assert keys == {
        "image_metadata",
        "images",
        "image_embeddings",
        "shdd_tables",
        "locdiff_model",
        "contamination",
        "predictions",
        "accuracy_report",
    }
    groups = {
        key.path[-1]: repository.asset_graph.get(key).group_name for key in repository.asset_graph.get_all_asset_keys()
    }
    assert set(groups.values()) == {"ingest", "features", "model", "evaluation"}
    assert repository.asset_graph.get(AssetKey("predictions")).partitions_def.name == "benchmarks"
    schedule = repository.get_schedule_def("weekly_retrain")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "locdiff_train"
    request = schedule.evaluate_tick(build_schedule_context()).run_requests[0]  # the weekly run covers every shard
    shard_keys = repository.asset_graph.get(AssetKey("images")).partitions_def.get_partition_keys()
    tags = request.tags
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (
        shard_keys[0],
        shard_keys[-1],
    )
    assert repository.get_sensor_def("evaluate_new_model").job_name == "locdiff_evaluate"
    assert len(list(repository.asset_checks_defs_by_key)) == len(ALL_CHECKS)


def test_the_documented_sql_runs_against_the_warehouse(pipeline):
    """docs/warehouse.md's SQL example, taken from the page itself, answers from this warehouse."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root, _, _ = pipeline
    page = (Path(__file__).resolve().parents[1] / "docs" / "warehouse.md").read_text()
    section = page[page.index("## SQL over the warehouse") :]
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
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ  # nothing leaks
    assert mlflow.get_registry_uri() == explicit


def test_a_user_tracking_uri_in_the_environment_wins_every_time(tmp_path, monkeypatch):
    users = f"sqlite:///{tmp_path / 'users.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)
    assert registry.configure(root=tmp_path / "a") == users
    assert registry.configure(root=tmp_path / "b") == users


def test_a_warehouse_written_before_ranked_answers_still_reports(tmp_path):
    """Predictions Parquet from an earlier version (no training_dataset, no ranked answers) still gets
    an accuracy view, with those columns NULL, so checks and reports keep working after an upgrade."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from locdiff_pipeline.data.warehouse import Warehouse

    store = Warehouse(tmp_path / "warehouse")
    folder = store.partition_dir("predictions", dataset="old", model_version=1)
    folder.mkdir(parents=True)
    old = {
        "image_id": ["a", "b"],
        "split": ["test"] * 2,
        "method": ["knn"] * 2,
        "error_km": [10.0, 900.0],
        "spread_km": [None, None],
    }
    old |= {"region_km": [float("nan")] * 2, "encoder": ["x"] * 2, "encoder_pretrained": [False] * 2}
    pq.write_table(pa.table(old), folder / "part-00000.parquet")
    (row,) = report_sql.accuracy_table(store)
    assert (row["dataset"], row["training_dataset"], row["acc_25km"], row["acc_750km"]) == ("old", None, 0.5, 0.5)
    assert row["top5_acc_750km"] is None


def test_the_new_data_sensor_requests_a_run_when_training_files_change_and_not_otherwise(tmp_path):
    from dagster import SkipReason, build_sensor_context

    from locdiff_pipeline.defs.sensors import retrain_on_new_data

    metadata = tmp_path / "metadata.csv"
    metadata.write_text("IMG_ID,LAT,LON\na.jpg,1,2\n")
    datasets = DatasetsResource(training={"name": "mine", "metadata_csv": str(metadata), "images": str(tmp_path)})
    sensor = defs.get_repository_def().get_sensor_def("retrain_on_new_data")
    assert sensor.job_name == "locdiff_train"

    def tick(cursor):
        context = build_sensor_context(cursor=cursor, resources={"datasets": datasets})
        result = retrain_on_new_data(context)
        return result, context.cursor

    first, cursor = tick(None)
    assert isinstance(first, SkipReason) and cursor  # the first look records the files
    unchanged, same = tick(cursor)
    assert isinstance(unchanged, SkipReason) and same == cursor
    with open(metadata, "a") as handle:
        handle.write("b.jpg,3,4\n")  # new records arrive
    request, moved = tick(cursor)
    assert request.run_key.startswith("mine:") and request.tags["locdiff/trigger"] == "new data" and moved != cursor
    again, _ = tick(moved)
    assert isinstance(again, SkipReason)


def test_mlflow_models_serve_answers_a_scoring_request(pipeline):
    """`mlflow models serve -m models:/locdiff@champion` (the user's command, local environment, bound to
    127.0.0.1) answers real HTTP scoring requests with predictions: 20 concurrent requests for one image as
    its first traffic get one answer, the one `locdiff predict` gives."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    root, _, _ = pipeline
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # as with the venv activated
    }
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", "models:/locdiff@champion", "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the server's workers go with it
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the model server did not come up"
                time.sleep(1)
        image = _table(root, "images").slice(0, 1)["image_bytes"][0].as_py()
        one_image = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}
        with ThreadPoolExecutor(20) as pool:  # the server's first traffic: 20 requests at once, one image
            first_traffic = list(pool.map(lambda _: _score(port, one_image), range(20)))
        _champion_run(root)
        embed_dim = json.loads(next((root / "warehouse" / "checkpoints").glob("*/model/config.json")).read_text())[
            "config"
        ]["embed_dim"]
        rows = np.random.default_rng(1).normal(size=(2, embed_dim)).tolist()
        by_vector = _score(port, {"dataframe_split": {"columns": ["embedding"], "data": [[row] for row in rows]}})
        by_image = _score(
            port,
            {
                "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]},
                "params": {"top_k": 2},
            },
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: what is under test is the answer, not the exit
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    predictions = by_vector["predictions"] + by_image["predictions"]
    assert len(predictions) == 3 and all(-90 <= p["lat"] <= 90 and -180 <= p["lon"] <= 180 for p in predictions)
    assert all(p["spread_km"] >= 0 for p in predictions) and len(predictions[2]["top_lat"]) == 2
    served_locally = mlflow.pyfunc.load_model("models:/locdiff@champion").predict(
        pd.DataFrame({"image": [image]}), params={"top_k": 2}
    )
    assert np.allclose([predictions[2]["lat"], predictions[2]["lon"]], served_locally[["lat", "lon"]].values[0])
    answers = {(p["lat"], p["lon"]) for reply in first_traffic for p in reply["predictions"]}
    assert len(answers) == 1, answers  # the same image, the same answer, however the requests interleave
    image_file = root / "first-traffic.png"
    image_file.write_bytes(image)
    (by_predict,) = predict([image_file], str(registry.download_checkpoint("models:/locdiff@champion"))).predictions
    assert np.allclose(next(iter(answers)), (by_predict.lat, by_predict.lon))


def _score(port: int, request: dict) -> dict:
    """POST a scoring request; an HTTP error fails with the server's own message."""
    import urllib.error
    import urllib.request

    posted = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(request).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(posted, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"HTTP {error.code}: {error.read().decode()[:2000]}") from None


def test_predict_on_the_benchmark_files_gives_the_table_answers(pipeline):
    """`predict` on a benchmark's image files, one by one or all together, answers what the `predictions`
    table holds for them (samples keyed by the image, not by the batch it came in)."""
    root, _, _ = pipeline
    registry.configure(root=root)
    champion = str(registry.download_checkpoint("models:/locdiff@champion"))
    (metadata,) = (root / "warehouse" / "sources").glob(f"{bundled.HELDOUT}-*/metadata.csv")
    with open(metadata, newline="") as handle:
        ids = [row["IMG_ID"] for row in csv.DictReader(handle)]
    files = [metadata.parent / "images" / image_id for image_id in ids]
    table = _table(root, "predictions").to_pandas()
    plain = table[(table["dataset"] == bundled.HELDOUT) & (table["method"] == "locdiff/plain")].set_index("image_id")
    together = predict(files, champion, views=1, samples=2).predictions
    alone = predict(files[-1:], champion, views=1, samples=2).predictions
    expected = plain.loc[ids, ["pred_lat", "pred_lon"]].to_numpy()
    answers = np.array([[p.lat, p.lon] for p in together + alone])
    distance = sphere.haversine_km(answers[:, 0], answers[:, 1], *np.vstack([expected, expected[-1:]]).T)
    # the same samples; a batched matrix product's last bits move the decoded mode by well under 1 % of a peak
    assert distance.max() < 0.01 * shdd.peak_width_km(10), distance.max()
    assert all(np.isfinite(p.region_km) and p.region_km > 0 for p in together)


def test_benchmark_results_rank_model_versions_in_mlflow(pipeline):
    """Each scored benchmark's LocDiff row is logged as metrics of the training run, so search_runs (and the
    UI's compare view) rank versions by benchmark results; the run describes itself."""
    root, _, _ = pipeline
    run = _champion_run(root)
    key = f"{bundled.HELDOUT}/acc_750km"
    (best, *_) = mlflow.search_runs(
        experiment_names=[registry.EXPERIMENT], order_by=[f"metrics.`{key}` DESC"], output_format="list"
    )
    rows = report_sql.accuracy_table(WarehouseResource(root=str(root)).get(), dataset=bundled.HELDOUT)
    locdiff = next(row for row in rows if row["method"] == "locdiff")
    assert best.info.run_id == run.info.run_id
    for name in ("acc_750km", "acc_2500km", "acc_750km_low", "acc_2500km_high", "median_km", "nll", "hpd90_coverage"):
        assert best.data.metrics[f"{bundled.HELDOUT}/{name}"] == pytest.approx(locdiff[name])
    assert f"{bundled.SHIFTED}/acc_750km" in best.data.metrics
    for baseline in registry.BASELINES_LOGGED:  # "better than chance?" answered in MLflow alone
        row = next(row for row in rows if row["method"] == baseline)
        assert best.data.metrics[f"{bundled.HELDOUT}/{baseline}/acc_750km"] == pytest.approx(row["acc_750km"])
    experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.tags[registry.EXPERIMENT_KIND_TAG] == "custom_model_development"  # opens on its runs
    assert run.data.tags["mlflow.note.content"].startswith("Model version ")
    version = mlflow.MlflowClient().get_model_version_by_alias(registry.REGISTERED_MODEL, registry.CHAMPION)
    assert version.tags["dataset"] == bundled.BUNDLED and version.tags["encoder"] == "descriptors-v1"
    assert version.tags["protocol"]


def test_the_predictions_page_says_its_columns_and_where_its_rows_are(pipeline):
    root, _, first = pipeline
    metadata = first.metadata("predictions", bundled.HELDOUT)
    columns = {column.name: column.type for column in metadata["dagster/column_schema"].value.columns}
    assert {"image_id", "method", "error_km", "log_density", "dataset", "model_version"} <= set(columns)
    assert columns["error_km"] == "double" and "rows" not in metadata  # dagster/row_count says it once
    folder = Path(metadata["parquet_folder"].value)
    assert folder.is_relative_to(root / "warehouse" / "predictions") and list(folder.glob("*.parquet"))
    assert ds.dataset(str(folder), format="parquet").count_rows() == metadata["dagster/row_count"].value
    import duckdb

    query = metadata["duckdb_query"].value.removeprefix("```sql\n").removesuffix("\n```")
    counts = dict(duckdb.sql(query).fetchall())
    assert sum(counts.values()) == metadata["dagster/row_count"].value and "locdiff" in counts


def test_a_rescore_of_the_same_version_keeps_one_value_per_benchmark_metric(pipeline):
    """The report rematerialized for the same model version (as a UI rescore does): every benchmark metric
    of the training run still has one value, at step 0, not a two-point curve of one version."""
    root, instance, _ = pipeline
    again = materialize(
        [*defs.assets, *defs.asset_checks],
        resources=tiny_resources(root),
        instance=instance,
        selection=AssetSelection.assets("accuracy_report"),
        partition_key=bundled.HELDOUT,
    )
    assert again.success
    run = _champion_run(root)
    client = mlflow.MlflowClient()
    names = [name for name in run.data.metrics if name.startswith(f"{bundled.HELDOUT}/")]
    assert len(names) > 20
    for name in names:
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0], name


def test_the_accuracy_table_leads_with_locdiff_and_the_scales_that_decide(pipeline):
    root, _, _ = pipeline
    rows = report_sql.accuracy_table(WarehouseResource(root=str(root)).get(), dataset=bundled.HELDOUT)
    shown = report_tables.display_rows(rows)
    assert list(shown[0]) == [label for label, _ in report_tables.DISPLAY_COLUMNS]
    assert list(shown[0])[1:5] == ["750 km %", "2500 km %", "750 km 95% CI", "2500 km 95% CI"]
    methods = [row["method"] for row in shown]
    assert methods[0] == "locdiff" and methods[-2:] == ["chance", "constant"]
    by_method = {row["method"]: row for row in rows}
    for method in methods:  # a /plain twin only where it differs from its method's row
        if "/" in method:
            family = by_method[method.split("/")[0]]
            assert any(by_method[method][c] != family[c] for _, c in report_tables.DISPLAY_COLUMNS[1:] if c in family)
    hidden = {m for m in by_method if "/" in m} - set(methods)
    assert all(by_method[m]["acc_750km"] == by_method[m.split("/")[0]]["acc_750km"] for m in hidden)
    locdiff = by_method["locdiff"]
    assert shown[0]["750 km %"] == round(100 * locdiff["acc_750km"], 1) and shown[0]["n"] == locdiff["count"]
    assert {row["benchmark"] for row in shown} == {bundled.HELDOUT}
    # the markdown and the terminal read in the same order, under the benchmark's heading
    text = report_tables.text_table(rows).splitlines()
    assert text[0].startswith(f"{bundled.HELDOUT}: model v1, trained on {bundled.BUNDLED}")
    assert [line.split()[0] for line in text[3 : 3 + len(methods)]] == methods
    markdown = report_tables.markdown_table(rows)
    assert [line.split(" | ")[0].removeprefix("| ") for line in markdown.splitlines()[4:]] == methods


def test_the_evaluation_sensor_scores_each_model_version_once(pipeline):
    """After a run that trained and scored the model, the sensor requests nothing; a new version gets one
    run per benchmark, tagged like the CLI's runs. (Last in this file: it adds a model event.)"""
    _, instance, _ = pipeline
    first = build_sensor_context(instance=instance)
    assert [r for r in evaluate_new_model(first) if isinstance(r, RunRequest)] == []
    event = {"model_version": 999, "training_dataset": bundled.BUNDLED, "encoder": "descriptors-v1"}
    instance.report_runless_asset_event(AssetMaterialization(asset_key="locdiff_model", metadata=event))
    later = build_sensor_context(instance=instance, cursor=first.cursor)
    requests = [r for r in evaluate_new_model(later) if isinstance(r, RunRequest)]
    assert sorted(r.partition_key for r in requests) == sorted(instance.get_dynamic_partitions("benchmarks"))
    assert all(r.tags["locdiff/model_version"] == "999" for r in requests)
    assert all(r.tags["locdiff/dataset"] == bundled.BUNDLED and r.tags["locdiff/trigger"] for r in requests)


def test_report_reads_a_read_only_warehouse_and_commands_leave_a_stranger_folder_empty(
    pipeline, tmp_path, monkeypatch, capsys
):
    """`locdiff report` reads through in-memory views (it writes no database file, so a read-only
    warehouse is fine); `report` and `predict` in a folder that is no project create nothing there."""
    from locdiff_pipeline.cli import main

    root, _, _ = pipeline
    copy = tmp_path / "readonly"
    shutil.copytree(root / "warehouse", copy / "warehouse", ignore=shutil.ignore_patterns("locdiff.duckdb*"))
    for path in [copy, *copy.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    monkeypatch.setenv("LOCDIFF_HOME", str(copy))
    try:
        assert main(["report", "--dataset", bundled.HELDOUT]) == 0
        table = capsys.readouterr().out
        assert bundled.HELDOUT in table and "locdiff" in table
        assert not (copy / "warehouse" / "locdiff.duckdb").exists()
    finally:
        for path in [copy, *copy.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    monkeypatch.setenv("LOCDIFF_HOME", str(stranger))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report"]) == 1
    assert main(["predict", "--model", "models:/locdiff@champion", str(tmp_path / "x.png")]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert list(stranger.iterdir()) == []


@pytest.fixture
def tracking_server(tmp_path):
    """A real MLflow tracking server (its own SQLite backend, artifacts served by it), as a team runs one."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "tracking_server"
    folder.mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--serve-artifacts"]
        + ["--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "wb"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[
                    -2000:
                ]
                time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_team_tracking_server_holds_the_champion_and_predict_loads_it_from_anywhere(
    pipeline, tmp_path, tracking_server, monkeypatch
):
    """With MLFLOW_TRACKING_URI naming a tracking server, training registers the champion there, its files
    stored by the server (mlflow-artifacts:/, no path of the machine that trained it), and `locdiff predict`
    in another folder loads it from the server."""
    root, _, _ = pipeline
    member = tmp_path / "member"
    shutil.copytree(root, member)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    trained = materialize(
        [locdiff_model], resources=tiny_resources(member, steps=62), instance=DagsterInstance.ephemeral()
    )
    assert trained.success
    client = mlflow.MlflowClient(tracking_server)
    champion = client.get_model_version_by_alias(registry.REGISTERED_MODEL, registry.CHAMPION)
    location = client.get_model_version_download_uri(registry.REGISTERED_MODEL, champion.version)
    run = client.get_run(champion.run_id)
    assert location.startswith("mlflow-artifacts:") and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert str(tmp_path) not in location + run.info.artifact_uri
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("LOCDIFF_HOME", str(elsewhere))
    (image,) = _table(root, "images").slice(0, 1)["image_bytes"].to_pylist()
    (elsewhere / "photo.png").write_bytes(image)
    (answer,) = predict([elsewhere / "photo.png"], "models:/locdiff@champion").predictions
    assert -90 <= answer.lat <= 90 and -180 <= answer.lon <= 180
    assert sorted(p.name for p in elsewhere.iterdir()) == ["photo.png"]  # nothing local: all from the server
