"""Dagster resources: paths, the dataset, the image encoder, training settings.

Defaults run the bundled Blue Marble dataset on this machine; every field can be set in the Dagster
UI's launchpad, in a run config YAML, or through the LOCDIFF_* environment variables noted below.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, InitResourceContext

from locdiff_pipeline.data.bundled import BundledRecipe
from locdiff_pipeline.data.catalog import Catalog, load_catalog
from locdiff_pipeline.data.datasets import DatasetSpec
from locdiff_pipeline.data.image_encoder import EncoderSpec
from locdiff_pipeline.data.paths import project_root
from locdiff_pipeline.data.project_lock import project_lock
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.defs.partitions import PARTITION_TAG
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.steps.predictions import MethodSettings


class WarehouseResource(ConfigurableResource):
    """Where tables and MLflow live: the project root (default: $LOCDIFF_HOME or the current directory).

    A run that uses it holds the project's writer lock (data/project_lock.py) while it runs, waiting up to
    `lock_wait_seconds` for another writer: shared for a run of one partition (one shard, one benchmark:
    it writes only that partition), exclusive otherwise. Steps of `locdiff run` work under that command's
    lock; runs launched from `dagster dev` never write beside an exclusive writer."""

    root: str = ""
    lock_wait_seconds: float = float(os.environ.get("LOCDIFF_LOCK_WAIT", "7200"))

    def project_root(self) -> Path:
        return Path(self.root).resolve() if self.root else project_root()

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator["WarehouseResource"]:
        run = getattr(context, "run", None)
        one_partition = run is not None and PARTITION_TAG in run.tags
        label = f"dagster run {run.run_id}" if run is not None else "dagster step"
        with project_lock(self.project_root(), self.lock_wait_seconds, command=label, shared=one_partition):
            yield self.create_resource(context)

    def get(self) -> Warehouse:
        return Warehouse(self.project_root() / "warehouse")


class DatasetsResource(ConfigurableResource):
    """The dataset catalog: a training dataset and the benchmarks scored against it (data/catalog.py).

    `catalog` is a YAML file ($LOCDIFF_CATALOG; empty: the bundled datasets); `training` and
    `benchmarks` given inline replace the file's. Keep the catalog in a file for `dagster dev`, so the
    runs the daemon launches see the same datasets as the ones you launch."""

    catalog: str = os.environ.get("LOCDIFF_CATALOG", "")
    training: dict[str, Any] = {}
    benchmarks: list[dict[str, Any]] = []
    bundled_count: int = int(os.environ.get("LOCDIFF_BUNDLED_COUNT", "3000"))
    bundled_benchmark_count: int = int(os.environ.get("LOCDIFF_BUNDLED_BENCHMARK_COUNT", "300"))
    max_rejected_share: float = 0.05

    def get(self) -> Catalog:
        return load_catalog(self.catalog, self.training, self.benchmarks)

    def recipe(self) -> BundledRecipe:
        return BundledRecipe(count=self.bundled_count, benchmark_count=self.bundled_benchmark_count)

    def specs(self, warehouse: Warehouse) -> list[DatasetSpec]:
        """Every dataset of the catalog, training first."""
        return self.get().specs(warehouse, self.recipe())

    def training_name(self) -> str:
        return self.get().training.name


class EncoderResource(ConfigurableResource):
    """The frozen open_clip image encoder; without a checkpoint, a seeded init that every output names."""

    model_name: str = os.environ.get("LOCDIFF_ENCODER", "ViT-S-32")
    checkpoint: str | None = os.environ.get("LOCDIFF_ENCODER_CHECKPOINT") or None
    seed: int = 0
    test_views: int = 8  # views per validation and benchmark image (GeoCLIP and the paper use 16: --test-views 16)
    device: str = "auto"
    # processes that decode images and make their views ahead of the encoder; None: $LOCDIFF_DECODE_WORKERS,
    # else with a GPU one per core but one (at most 8), on the CPU none; 0: in the asset's own process
    decode_workers: int | None = None

    def spec(self) -> EncoderSpec:
        return EncoderSpec(self.model_name, self.checkpoint, self.seed)


class TrainingResource(ConfigurableResource):
    """LocDiff hyper-parameters for the training asset. Each field left unset (None) takes
    LocDiffConfig's default, so LocDiffConfig stays the one source of defaults; `overrides` sets any
    other LocDiffConfig field (e.g. {"loss": "mse", "kl_direction": "forward"})."""

    L: int | None = None
    shdd_degrees: list[int] = [10, 20, 40]  # SHDD tables to build for SQL and inspection, besides L
    steps: int | None = int(os.environ["LOCDIFF_STEPS"]) if os.environ.get("LOCDIFF_STEPS") else None
    batch_size: int | None = None
    hidden_dims: list[int] | None = None
    learning_rate: float | None = None
    timesteps: int | None = None
    sample_steps: int | None = None
    seed: int | None = None
    device: str | None = None
    overrides: dict[str, Any] = {}
    # "memory", "stream" (from the embeddings' part files, bounded memory) or "auto" (stream past a few GB)
    loading: str = "auto"

    def config(self, embed_dim: int = LocDiffConfig.embed_dim) -> LocDiffConfig:
        named = {
            name: getattr(self, name)
            for name in (
                "L",
                "steps",
                "batch_size",
                "hidden_dims",
                "learning_rate",
                "timesteps",
                "sample_steps",
                "seed",
                "device",
            )
        }
        return LocDiffConfig(
            **{k: v for k, v in {**named, **self.overrides}.items() if v is not None}, embed_dim=embed_dim
        )

    def degrees(self) -> list[int]:
        return sorted({*self.shdd_degrees, self.config().L})


class EvaluationResource(ConfigurableResource):
    """How each benchmark is scored: LocDiff sampling, the baselines, the uncertainty regions, the
    contamination check and the reference rows.

    Unset baseline hyper-parameters (knn_k, cells) are chosen on the validation split. LocDiff's views
    and view-combination rule are the ones chosen on validation when the model was trained."""

    samples_per_view: int = 1
    knn_k: int | None = None
    cells: int | None = None
    regression_steps: int = 1500
    hybrid_radius_km: float = 200.0
    density_bandwidth_km: float | None = None
    seed: int = 0
    near_duplicate_cosine: float = 0.95  # plain-view cosine (training-centred) at or above: a near duplicate...
    near_duplicate_max_hash_distance: int = 8  # ...whose perceptual hash differs in at most this many bits
    max_contaminated_share: float = 0.01  # the contamination check warns above this share of a benchmark
    exclude_contaminated: bool = False  # score without benchmark images found in the training data
    chance_draws: int = 10  # the `chance` row: mean over this many random training locations per image

    def settings(self) -> MethodSettings:
        return MethodSettings(
            self.knn_k,
            self.cells,
            self.regression_steps,
            self.hybrid_radius_km,
            self.density_bandwidth_km,
            self.seed,
            self.chance_draws,
        )


class MlflowResource(ConfigurableResource):
    """Where runs and the model registry live: this URI, else $MLFLOW_TRACKING_URI, else the project's
    SQLite backend under mlruns/ (what `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows)."""

    tracking_uri: str = ""
    ui_url: str = os.environ.get("LOCDIFF_MLFLOW_UI", "")  # e.g. http://127.0.0.1:5000: links in Dagster

    def uri(self) -> str | None:
        return self.tracking_uri or None

    def links(self, run_id: str, version: int) -> dict[str, str]:
        """Links to the run and the registered version in the MLflow UI, when its address is configured."""
        if not self.ui_url:
            return {}
        import mlflow as mlflow_api

        experiment = mlflow_api.get_run(run_id).info.experiment_id
        base = self.ui_url.rstrip("/")
        return {
            "mlflow_run": f"{base}/#/experiments/{experiment}/runs/{run_id}",
            "registered_version": f"{base}/#/models/locdiff/versions/{version}",
        }


def default_resources() -> dict:
    """Every resource with its defaults (the bundled data on this machine)."""
    return {
        "warehouse": WarehouseResource(),
        "datasets": DatasetsResource(),
        "encoder": EncoderResource(),
        "training": TrainingResource(),
        "evaluation": EvaluationResource(),
        "mlflow": MlflowResource(),
    }
