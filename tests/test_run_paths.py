"""Runs launched from the UI `locdiff dev` serves may point their run config only at the project's folders
(defs/run_paths.py); elsewhere (locdiff run, tests, Python) every path is the caller's own choice."""

from __future__ import annotations

import pytest
from dagster import materialize

from locdiff_pipeline.defs.resources import DatasetsResource, EncoderResource, WarehouseResource
from locdiff_pipeline.defs.run_paths import GUARD_ENV, RunPathRefused


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("LOCDIFF_HOME", str(project))
    monkeypatch.delenv("LOCDIFF_CATALOG", raising=False)
    monkeypatch.delenv("LOCDIFF_RUN_CONFIG_ROOTS", raising=False)
    monkeypatch.setenv(GUARD_ENV, "1")
    return project


def test_ui_launched_runs_may_not_point_outside_the_project(guarded, tmp_path):
    with pytest.raises(RunPathRefused, match="warehouse.root '/tmp/anywhere' is outside the folders"):
        WarehouseResource(root="/tmp/anywhere").project_root()
    assert WarehouseResource(root=str(guarded / "sub")).project_root() == guarded / "sub"
    outside = {"name": "mine", "metadata_csv": "/etc/passwd", "images": str(guarded)}
    with pytest.raises(RunPathRefused, match="datasets: metadata_csv '/etc/passwd'"):
        DatasetsResource(training=outside).get()
    with pytest.raises(RunPathRefused, match=r"datasets: images '/data/shards/\*.tar' is outside"):
        DatasetsResource(
            training={**outside, "metadata_csv": str(guarded / "m.csv"), "images": "/data/shards/*.tar"}
        ).get()
    with pytest.raises(RunPathRefused, match="encoder.checkpoint"):
        EncoderResource(model_name="ViT-S-32", checkpoint="/root/.ssh/id_rsa").spec()
    with pytest.raises(RunPathRefused, match="datasets.catalog"):
        DatasetsResource(catalog=str(tmp_path / "elsewhere.yaml")).get()


def test_the_servers_catalog_folders_and_an_explicit_setting_allow_more(guarded, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "meta.csv").write_text("IMG_ID,LAT,LON\n")
    catalog = tmp_path / "catalogs" / "team.yaml"
    catalog.parent.mkdir()
    catalog.write_text(f"training: {{name: team, metadata_csv: {data / 'meta.csv'}, images: {data / 'images'}}}\n")
    monkeypatch.setenv("LOCDIFF_CATALOG", str(catalog))
    inline = {"name": "again", "metadata_csv": str(data / "meta.csv"), "images": str(data / "images" / "*.tar")}
    assert DatasetsResource(training=inline).get().training.name == "again"  # the catalog's own folders
    with pytest.raises(RunPathRefused):
        WarehouseResource(root=str(tmp_path / "other")).project_root()
    monkeypatch.setenv("LOCDIFF_RUN_CONFIG_ROOTS", str(tmp_path / "other"))
    assert WarehouseResource(root=str(tmp_path / "other")).project_root() == tmp_path / "other"


def test_without_the_guard_every_path_is_the_callers(tmp_path, monkeypatch):
    monkeypatch.delenv(GUARD_ENV, raising=False)
    assert WarehouseResource(root=str(tmp_path / "anywhere")).project_root() == tmp_path / "anywhere"


def test_a_ui_launched_run_with_a_foreign_path_fails_and_writes_nothing(guarded, tmp_path):
    from locdiff_pipeline.defs.assets.ingest import image_metadata

    target = tmp_path / "not-the-project"
    result = materialize(
        [image_metadata],
        resources={"warehouse": WarehouseResource(root=str(target)), "datasets": DatasetsResource()},
        raise_on_error=False,
    )
    assert not result.success and not target.exists()


def test_a_ui_launched_run_logs_to_the_servers_tracking_store_only(guarded, tmp_path, monkeypatch):
    from locdiff_pipeline.defs.resources import MlflowResource

    outside = tmp_path / "elsewhere" / "mlflow.db"
    for uri in (f"sqlite:///{outside}", outside.as_uri(), str(outside), "http://collector.example:5000"):
        with pytest.raises(RunPathRefused, match="mlflow.tracking_uri"):
            MlflowResource(tracking_uri=uri).uri()
    inside = f"sqlite:///{guarded / 'mlruns' / 'mlflow.db'}"
    assert MlflowResource(tracking_uri=inside).uri() == inside
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")  # the server's own
    assert MlflowResource(tracking_uri="http://127.0.0.1:5001").uri() == "http://127.0.0.1:5001"
    assert MlflowResource().uri() is None  # unset: the server's own setting
    assert not outside.parent.exists()
