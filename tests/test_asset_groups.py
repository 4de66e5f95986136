"""Each asset group materialized on its own, stage after stage, in the style of Dagster's example
projects: a group needs only what the groups before it wrote."""

from __future__ import annotations

import re

import pytest
from dagster import AssetCheckSeverity, AssetSelection, DagsterInstance, materialize
from PIL import Image

from locdiff_pipeline import ui_pages
from locdiff_pipeline.data import bundled
from locdiff_pipeline.definitions import defs
from locdiff_pipeline.defs.graph_run import GraphRun
from locdiff_pipeline.defs.partitions import all_shards_tags
from locdiff_pipeline.defs.resources import (
    DatasetsResource,
    EncoderResource,
    EvaluationResource,
    MlflowResource,
    TrainingResource,
    WarehouseResource,
)
from locdiff_pipeline.steps.figures import PREVIEW_WIDTH_PX
from locdiff_pipeline.steps.scoring import METHODS

GALLERY = 100  # of the 30,000 bundled gallery locations: a small graph

GROUP_ASSETS = {
    "ingest": {"image_metadata", "images"},
    "features": {"image_embeddings", "shdd_tables"},
    "model": {"locdiff_model"},
    "evaluation": {"contamination", "predictions", "accuracy_report"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    resources = {
        "warehouse": WarehouseResource(root=str(root)),
        "datasets": DatasetsResource(bundled_count=160, bundled_gallery_count=GALLERY, bundled_benchmark_count=12),
        "encoder": EncoderResource(model_name="locdiff-tiny-vit", test_views=2),
        "training": TrainingResource(
            L=4, shdd_degrees=[4], steps=20, batch_size=32, hidden_dims=[32], timesteps=20, sample_steps=3
        ),
        "evaluation": EvaluationResource(regression_steps=20, chance_draws=2),
        "mlflow": MlflowResource(ui_url="http://127.0.0.1:5000"),  # links in the metadata
    }
    return root, resources, DagsterInstance.ephemeral()


def _materialize_group(project, group: str, **run):
    _, resources, instance = project
    result = materialize(
        [*defs.assets, *defs.asset_checks],
        resources=resources,
        instance=instance,
        selection=AssetSelection.groups(group),
        **run,
    )
    assert result.success
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == GROUP_ASSETS[group]
    evaluations = result.get_asset_check_evaluations()
    assert all(e.passed for e in evaluations if e.severity == AssetCheckSeverity.ERROR)
    for warning in (e for e in evaluations if e.check_name == "model_beats_chance_and_champion"):
        found = {k: v.value for k, v in warning.metadata.items()}
        assert warning.passed == (found["val_score"] > found["chance"] and found["is_champion"])
    return result


def test_ingest_group(project):
    _materialize_group(project, "ingest", tags=all_shards_tags())
    root, _, instance = project
    assert (root / "warehouse" / "images" / f"dataset={bundled.BUNDLED}").is_dir()
    assert instance.get_dynamic_partitions("benchmarks") == [bundled.HELDOUT, bundled.SHIFTED]


def test_features_group(project):
    _materialize_group(project, "features", tags=all_shards_tags())
    assert (project[0] / "warehouse" / "embeddings" / f"dataset={bundled.HELDOUT}").is_dir()


def test_model_group(project):
    result = _materialize_group(project, "model")
    metadata = result.asset_materializations_for_node("locdiff_model")[0].metadata
    assert metadata["model_version"].value == 1
    run_id = metadata["mlflow_run_id"].value
    assert metadata["mlflow_run"].url.startswith("http://127.0.0.1:5000/#/experiments/")
    assert metadata["mlflow_runs"].url.endswith("?workflowType=machine_learning")  # the runs table, not GenAI's
    assert metadata["mlflow_run"].url.endswith(f"/runs/{run_id}")
    assert metadata["registered_version"].url == "http://127.0.0.1:5000/#/models/locdiff/versions/1"


def test_evaluation_group_for_one_benchmark(project):
    result = _materialize_group(project, "evaluation", partition_key=bundled.SHIFTED)
    metadata = result.asset_materializations_for_node("accuracy_report")[0].metadata
    table = metadata["accuracy_table"].value
    shown = [record.data["method"] for record in table.records]  # every method; a /plain twin where it differs
    assert {m for m in METHODS if "/" not in m} <= set(shown) <= set(METHODS) and shown[0] == "locdiff"
    assert metadata["dagster/row_count"].value == len(METHODS)
    assert list(metadata)[:2] == ["headline", "accuracy_table"]  # the answer first, shown in place (< 1,000)
    headline = metadata["headline"].value
    assert headline.startswith(f"**{bundled.SHIFTED}**, model v1") and len(headline) < 1000
    assert 0.0 <= metadata["locdiff 750 km %"].value <= 100.0 and metadata["chance median km"].value > 0
    assert not [key for key in metadata if key.startswith(("knn ", "regression "))]  # keys stay narrow
    reports = project[0] / "warehouse" / "reports"
    for name in ("error_cdf", "error_map", "calibration", "density_maps"):  # previews, linked to full size
        preview, full = re.fullmatch(r"\[!\[[^]]*\]\(([^)]+)\)\]\(([^)]+)\)", metadata[name].value).groups()
        assert full == f"/locdiff/reports/{bundled.SHIFTED}/v1/{name}.png"
        shown = Image.open(ui_pages.figure_file(reports, preview))
        whole = Image.open(ui_pages.figure_file(reports, full))
        assert shown.width <= PREVIEW_WIDTH_PX < whole.width
        assert abs(shown.height / shown.width - whole.height / whole.width) < 0.01
    assert (reports / bundled.SHIFTED / "v1" / "accuracy.md").is_file() and not (reports / bundled.HELDOUT).exists()


def test_every_asset_has_kinds_and_the_code_version_of_its_fingerprint():
    from locdiff_pipeline.data.ingest import INGEST_VERSION
    from locdiff_pipeline.steps.locdiff_model import TRAINING_VERSION
    from locdiff_pipeline.steps.predictions import PREDICTIONS_VERSION

    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert set(specs) == set().union(*GROUP_ASSETS.values())
    assert all(1 <= len(spec.kinds) <= 3 and spec.code_version for spec in specs.values())
    assert specs["images"].code_version == str(INGEST_VERSION)
    assert specs["locdiff_model"].code_version == str(TRAINING_VERSION) and "mlflow" in specs["locdiff_model"].kinds
    assert specs["predictions"].code_version == str(PREDICTIONS_VERSION)


def test_a_failing_blocking_check_stops_training(project):
    """rejected_share fails (no share is under a negative threshold): it blocks, so nothing downstream of
    images runs, training included."""
    _, resources, instance = project
    strict = {
        **resources,
        "datasets": DatasetsResource(
            bundled_count=160, bundled_gallery_count=GALLERY, bundled_benchmark_count=12, max_rejected_share=-1
        ),
    }
    result = materialize(
        [*defs.assets, *defs.asset_checks],
        resources=strict,
        instance=instance,
        selection=AssetSelection.groups("ingest", "features", "model"),
        tags=all_shards_tags(),
        raise_on_error=False,
    )
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert "rejected_share" in failed
    ((step, said),) = GraphRun([result]).failures()
    assert "blocking check rejected_share on images failed:" in said and "\n" not in said  # `locdiff run`'s line
    assert re.search(r"\d+\.\d% of \w+'s records were rejected, above max_rejected_share -100\.0%", said), said
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert "images" in materialized and not materialized & {"image_embeddings", "shdd_tables", "locdiff_model"}
