"""Each asset group materialized on its own, stage after stage, in the style of Dagster's example
projects: a group needs only what the groups before it wrote."""

from __future__ import annotations

import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from locdiff_pipeline.data import bundled
from locdiff_pipeline.definitions import defs
from locdiff_pipeline.defs.partitions import all_shards_tags
from locdiff_pipeline.defs.resources import (
    DatasetsResource,
    EncoderResource,
    EvaluationResource,
    MlflowResource,
    TrainingResource,
    WarehouseResource,
)

GROUP_ASSETS = {
    "ingest": {"image_metadata", "images"},
    "features": {"clip_embeddings", "shdd_tables"},
    "model": {"locdiff_model"},
    "evaluation": {"contamination", "predictions", "accuracy_report"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    resources = {
        "warehouse": WarehouseResource(root=str(root)),
        "datasets": DatasetsResource(bundled_count=160, bundled_benchmark_count=12),
        "encoder": EncoderResource(model_name="locdiff-tiny-vit", test_views=2),
        "training": TrainingResource(
            L=4, shdd_degrees=[4], steps=20, batch_size=32, hidden_dims=[32], timesteps=20, sample_steps=3
        ),
        "evaluation": EvaluationResource(regression_steps=20, chance_draws=2),
        "mlflow": MlflowResource(),
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
    assert all(e.passed for e in result.get_asset_check_evaluations())
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
    assert result.asset_materializations_for_node("locdiff_model")[0].metadata["model_version"].value == 1


def test_evaluation_group_for_one_benchmark(project):
    _materialize_group(project, "evaluation", partition_key=bundled.SHIFTED)
    reports = project[0] / "warehouse" / "reports"
    assert (reports / bundled.SHIFTED / "v1" / "accuracy.md").is_file() and not (reports / bundled.HELDOUT).exists()
