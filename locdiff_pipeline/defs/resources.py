"""Dagster resources: paths, the dataset, the image encoder, training settings.

Defaults run the bundled Blue Marble dataset on this machine; every field can be set in the Dagster
UI's launchpad, in a run config YAML, or through the LOCDIFF_* environment variables noted below.
"""

import os
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from locdiff_pipeline.data.datasets import PRESETS, DatasetSpec
from locdiff_pipeline.data.default_dataset import BUNDLED, DefaultDatasetRecipe, write_default_dataset
from locdiff_pipeline.data.image_encoder import EncoderSpec
from locdiff_pipeline.data.paths import project_root
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.steps.predictions import MethodSettings


class WarehouseResource(ConfigurableResource):
    """Where tables and MLflow live: the project root (default: $LOCDIFF_HOME or the current directory)."""

    root: str = ""

    def project_root(self) -> Path:
        return Path(self.root).resolve() if self.root else project_root()

    def get(self) -> Warehouse:
        return Warehouse(self.project_root() / "warehouse")


class DatasetResource(ConfigurableResource):
    """The dataset to ingest. kind='bluemarble' renders the bundled default; kind='files' reads yours."""

    name: str = BUNDLED
    kind: str = BUNDLED
    preset: str = ""  # mp16, im2gps3k, yfcc26k, yfcc4k, gws15k: their column names and splits
    metadata_csv: str = ""
    images: str = ""
    layout: str = "folder"
    split_column: str | None = None
    default_split: str = "train"
    val_share: float = 0.0
    store_bytes: bool = True
    bundled_count: int = int(os.environ.get("LOCDIFF_BUNDLED_COUNT", "3000"))
    max_rejected_share: float = 0.05

    def spec(self, warehouse: Warehouse) -> DatasetSpec:
        if self.kind == BUNDLED:
            recipe = DefaultDatasetRecipe(count=self.bundled_count)
            root = warehouse.root / "sources" / f"{BUNDLED}-{fingerprint(recipe.to_dict())}"
            metadata = root / "metadata.csv"
            if not metadata.is_file():
                write_default_dataset(root, recipe)
            return DatasetSpec(self.name, str(metadata), str(root / "images"), "folder", split_column="split")
        if self.kind != "files":
            raise ValueError(f"dataset kind must be 'bluemarble' or 'files', got {self.kind!r}")
        if not self.metadata_csv or not self.images:
            raise ValueError("a 'files' dataset needs metadata_csv and images")
        base = dict(PRESETS[self.preset]) if self.preset else {}
        base.update(split_column=self.split_column, layout=self.layout, store_bytes=self.store_bytes)
        if not self.preset:
            base.update(default_split=self.default_split, val_share=self.val_share)
        return DatasetSpec(self.name, self.metadata_csv, self.images, **base)


class EncoderResource(ConfigurableResource):
    """The frozen open_clip image encoder; without a checkpoint, a seeded init that every output names."""

    model_name: str = os.environ.get("LOCDIFF_ENCODER", "ViT-S-32")
    checkpoint: str | None = os.environ.get("LOCDIFF_ENCODER_CHECKPOINT") or None
    seed: int = 0
    test_views: int = 16
    device: str = "auto"

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
    """How the benchmark split is predicted: LocDiff sampling, the baselines and the uncertainty regions.

    Unset baseline hyper-parameters (knn_k, cells) are chosen on the validation split."""

    split: str = "test"
    samples_per_view: int = 1
    knn_k: int | None = None
    cells: int | None = None
    regression_steps: int = 1500
    hybrid_radius_km: float = 200.0
    density_bandwidth_km: float | None = None
    seed: int = 0

    def settings(self) -> MethodSettings:
        return MethodSettings(
            self.knn_k, self.cells, self.regression_steps, self.hybrid_radius_km, self.density_bandwidth_km, self.seed
        )


class MlflowResource(ConfigurableResource):
    """Where runs and the model registry live: this URI, else $MLFLOW_TRACKING_URI, else the project's
    SQLite backend under mlruns/ (what `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows)."""

    tracking_uri: str = ""

    def uri(self) -> str | None:
        return self.tracking_uri or None


def default_resources() -> dict:
    """Every resource with its defaults (the bundled data on this machine)."""
    return {
        "warehouse": WarehouseResource(),
        "dataset": DatasetResource(),
        "encoder": EncoderResource(),
        "training": TrainingResource(),
        "evaluation": EvaluationResource(),
        "mlflow": MlflowResource(),
    }
