"""Dagster resources: paths, the dataset, the image encoder, training and evaluation settings.

Defaults run the bundled Blue Marble dataset on this machine. Every field can be set in the Dagster UI's
launchpad or a run config YAML; a field left unset (None) takes the LOCDIFF_* environment variable that
sets it (`locdiff_pipeline.settings`), else the default of the dataclass that owns it (LocDiffConfig,
MethodSettings, BundledRecipe, EncoderSpec). Resources pass on only what is set, by keyword, so each
default has one home.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, InitResourceContext

from locdiff_pipeline import settings
from locdiff_pipeline.coordination.project_lock import project_lock
from locdiff_pipeline.data.bundled import BundledRecipe
from locdiff_pipeline.data.catalog import Catalog, load_catalog
from locdiff_pipeline.data.datasets import DatasetSpec
from locdiff_pipeline.data.paths import project_root
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.defs import run_paths
from locdiff_pipeline.defs.partitions import PARTITION_TAG
from locdiff_pipeline.encoders.encoder_spec import DEFAULT_TEST_VIEWS, EncoderSpec
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.steps.scoring import MethodSettings


class WarehouseResource(ConfigurableResource):
    """Where tables and MLflow live: the project root (default: $LOCDIFF_HOME or the current directory).

    A run that uses it holds the project's writer lock (coordination/project_lock.py) while it runs, waiting up to
    `lock_wait_seconds` for another writer: shared for a run of one partition (one shard, one benchmark:
    it writes only that partition), exclusive otherwise. Steps of `locdiff run` work under that command's
    lock; runs launched from `dagster dev` never write beside an exclusive writer."""

    root: str = ""
    lock_wait_seconds: float | None = None  # None: $LOCDIFF_LOCK_WAIT (2 hours)

    def project_root(self) -> Path:
        if not self.root:
            return project_root()
        run_paths.check([("warehouse.root", self.root)])
        return Path(self.root).resolve()

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator["WarehouseResource"]:
        run = getattr(context, "run", None)
        one_partition = run is not None and PARTITION_TAG in run.tags
        label = f"dagster run {run.run_id}" if run is not None else "dagster step"
        current = settings.current()
        wait = current.lock_wait if self.lock_wait_seconds is None else self.lock_wait_seconds
        with project_lock(
            self.project_root(), wait, command=label, shared=one_partition, database=current.lock_database
        ):
            yield self.create_resource(context)

    def get(self) -> Warehouse:
        return Warehouse(self.project_root() / "warehouse")


class DatasetsResource(ConfigurableResource):
    """The dataset catalog: a training dataset and the benchmarks scored against it (data/catalog.py).

    `catalog` is a YAML file ($LOCDIFF_CATALOG; empty: the bundled datasets); `training` and
    `benchmarks` given inline replace the file's. Keep the catalog in a file for `dagster dev`, so the
    runs the daemon launches see the same datasets as the ones you launch."""

    catalog: str | None = None  # None: $LOCDIFF_CATALOG, else the bundled datasets
    training: dict[str, Any] = {}
    benchmarks: list[dict[str, Any]] = []
    bundled_count: int | None = None  # None: $LOCDIFF_BUNDLED_COUNT, else BundledRecipe's
    bundled_benchmark_count: int | None = None  # None: $LOCDIFF_BUNDLED_BENCHMARK_COUNT, else BundledRecipe's
    bundled_gallery_count: int | None = None  # None: $LOCDIFF_BUNDLED_GALLERY_COUNT, else BundledRecipe's
    max_rejected_share: float = 0.05

    def get(self) -> Catalog:
        inline = [
            (f"datasets: {key}", entry[key])
            for entry in [self.training, *self.benchmarks]
            for key in ("metadata_csv", "images")
            if isinstance(entry, dict) and isinstance(entry.get(key), str)
        ]
        run_paths.check(([("datasets.catalog", self.catalog)] if self.catalog is not None else []) + inline)
        catalog = settings.current().catalog if self.catalog is None else self.catalog
        return load_catalog(catalog, self.training, self.benchmarks)

    def recipe(self) -> BundledRecipe:
        environment = settings.current()
        chosen = {
            "count": _first_set(self.bundled_count, environment.bundled_count),
            "benchmark_count": _first_set(self.bundled_benchmark_count, environment.bundled_benchmark_count),
            "gallery_count": _first_set(self.bundled_gallery_count, environment.bundled_gallery_count),
        }
        return BundledRecipe(**_only_set(chosen))

    def specs(self, warehouse: Warehouse) -> list[DatasetSpec]:
        """Every dataset of the catalog, training first."""
        return self.get().specs(warehouse, self.recipe())

    def training_name(self) -> str:
        return self.get().training.name


class EncoderResource(ConfigurableResource):
    """The frozen image encoder: scene descriptors (no weights; the default), or an open_clip model with a
    pretrained tag (hub or its local cache), a local checkpoint, or neither (a seeded init every output names)."""

    model_name: str | None = None  # None: $LOCDIFF_ENCODER, else EncoderSpec's (descriptors)
    pretrained: str | None = None  # open_clip pretrained tag, e.g. openai; None: $LOCDIFF_ENCODER_PRETRAINED
    checkpoint: str | None = None  # local open_clip weights file; None: $LOCDIFF_ENCODER_CHECKPOINT
    seed: int | None = None
    test_views: int = DEFAULT_TEST_VIEWS  # views per validation and benchmark image (the paper uses 16)
    device: str = "auto"
    # processes that decode images and make their views ahead of the encoder; None: $LOCDIFF_DECODE_WORKERS,
    # else with a GPU one per core but one (at most 8), on the CPU none; 0: in the asset's own process
    decode_workers: int | None = None

    def spec(self) -> EncoderSpec:
        if self.checkpoint is not None:
            run_paths.check([("encoder.checkpoint", self.checkpoint)])
        environment = settings.current()
        chosen = {
            "model_name": _first_set(self.model_name, environment.encoder),
            "checkpoint": _first_set(self.checkpoint, environment.encoder_checkpoint),
            "pretrained": _first_set(self.pretrained, environment.encoder_pretrained),
            "seed": self.seed,
        }
        return EncoderSpec(**_only_set(chosen))

    def weights_file(self) -> str | None:
        """The local file of the encoder's weights (its checkpoint, or its pretrained tag's cached file), which
        the served model carries so it can embed images anywhere; None when there are no weights."""
        spec = self.spec()
        if spec.pretrained is not None:
            from locdiff_pipeline.encoders.open_clip_weights import resolve_pretrained

            return str(resolve_pretrained(spec.model_name, spec.pretrained))
        return spec.checkpoint


class TrainingResource(ConfigurableResource):
    """LocDiff hyper-parameters for the training asset. Each field left unset (None) takes
    LocDiffConfig's default, so LocDiffConfig stays the one source of defaults; `overrides` sets any
    other LocDiffConfig field (e.g. {"loss": "mse", "kl_direction": "forward"})."""

    L: int | None = None
    shdd_degrees: list[int] = [10, 20, 40]  # SHDD tables to build for SQL and inspection, besides L
    steps: int | None = None  # None: $LOCDIFF_STEPS, else LocDiffConfig's
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
        named = {name: getattr(self, name) for name in TRAINING_FIELDS}
        named["steps"] = _first_set(self.steps, settings.current().steps)
        return LocDiffConfig(**_only_set({**named, **self.overrides}), embed_dim=embed_dim)

    def degrees(self) -> list[int]:
        return sorted({*self.shdd_degrees, self.config().L})


class EvaluationResource(ConfigurableResource):
    """How each benchmark is scored: LocDiff sampling, the baselines, the uncertainty regions, the
    contamination check and the reference rows.

    Fields left unset take MethodSettings' defaults (knn_k and cells: chosen on the validation split).
    LocDiff's views and view-combination rule are the ones chosen on validation when the model was trained."""

    samples_per_view: int | None = None  # None: the protocol's, chosen on validation
    knn_k: int | None = None
    cells: int | None = None
    regression_steps: int | None = None
    hybrid_radius_km: float | None = None
    density_bandwidth_km: float | None = None
    seed: int | None = None
    near_duplicate_cosine: float = 0.95  # plain-view cosine (training-centred) at or above: a near duplicate...
    near_duplicate_max_hash_distance: int = 8  # ...whose perceptual hash differs in at most this many bits
    max_contaminated_share: float = 0.01  # the contamination check warns above this share of a benchmark
    exclude_contaminated: bool = False  # score without benchmark images found in the training data
    chance_draws: int | None = None  # the `chance` row: mean over this many random training locations per image
    region_deg: float | None = None  # side of the region cells every interval's bootstrap resamples (7.5 degrees)

    def settings(self) -> MethodSettings:
        named = {name: getattr(self, name) for name in METHOD_FIELDS}
        named["regression_steps"] = _first_set(self.regression_steps, settings.current().regression_steps)
        return MethodSettings(**_only_set(named))


class MlflowResource(ConfigurableResource):
    """Where runs and the model registry live: this URI, else $MLFLOW_TRACKING_URI, else the project's
    SQLite backend under mlruns/ (what `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows)."""

    tracking_uri: str = ""
    ui_url: str | None = None  # e.g. http://127.0.0.1:5000, for links in Dagster; None: $LOCDIFF_MLFLOW_UI

    def uri(self) -> str | None:
        run_paths.check_tracking_uri("mlflow.tracking_uri", self.tracking_uri)
        return self.tracking_uri or None

    def links(self, run_id: str, version: int) -> dict[str, str]:
        """Links to the experiment's runs table, the run and the registered version in the MLflow UI, when its
        address is configured. MLflow 3.17 opens an experiment on its GenAI overview unless the address says
        `workflowType=machine_learning` (its UI reads that before the browser's stored choice)."""
        ui_url = _first_set(self.ui_url, settings.current().mlflow_ui)
        if not ui_url:
            return {}
        import mlflow as mlflow_api

        experiment = mlflow_api.get_run(run_id).info.experiment_id
        base = ui_url.rstrip("/")
        return {
            "mlflow_runs": f"{base}/#/experiments/{experiment}?workflowType=machine_learning",
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


# TrainingResource fields that are LocDiffConfig fields of the same name
TRAINING_FIELDS = (
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
METHOD_FIELDS = tuple(field.name for field in dataclass_fields(MethodSettings))


def _first_set(*values):
    """The first value that is not None (a resource field, then its environment variable), else None."""
    return next((value for value in values if value is not None), None)


def _only_set(values: dict) -> dict:
    """The keyword arguments that were set: unset ones leave the dataclass's default in place."""
    return {name: value for name, value in values.items() if value is not None}
