"""The dataset catalog: one training dataset (with its train/val splits) and any number of benchmarks.

The paper's protocol trains on one dataset (MP16) and scores separate ones (Im2GPS3k, YFCC4k, ...):
the catalog says which is which. It is a YAML file (LOCDIFF_CATALOG, or the `catalog` setting of the
`datasets` resource) or the same mapping inline in run configuration:

    training:
      {name: mp16, preset: mp16, metadata_csv: /data/mp16/MP16_Pro.csv, images: /data/mp16/*.tar, layout: tar}
    benchmarks:
      - {name: im2gps3k, preset: im2gps3k, metadata_csv: /data/im2gps3k_places365.csv, images: /data/im2gps3ktest}

Without one, the bundled catalog: `bluemarble` for training, `bluemarble_heldout` and `etopo_shift` as
benchmarks (see data/bundled.py). An entry with `kind: bundled` renders one of those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from locdiff_pipeline.data import bundled
from locdiff_pipeline.data.datasets import IMAGERY, PRESETS, DatasetSpec, check_name
from locdiff_pipeline.data.image_sources import ARCHIVE_LAYOUTS, archive_paths
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint

FILES, BUNDLED_KIND = "files", "bundled"


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the catalog, as a user writes it."""

    name: str
    kind: str = FILES  # 'files' (your metadata CSV + images) or 'bundled' (rendered from assets/earth)
    preset: str = ""  # mp16, im2gps3k, yfcc26k, yfcc4k, gws15k, osv5m: column names, split, imagery
    metadata_csv: str = ""
    images: str = ""
    layout: str = "folder"
    split_column: str | None = None
    default_split: str | None = None
    val_share: float | None = None
    store_bytes: bool | None = None  # keep image bytes in the warehouse (default: yes, but not for MP16's preset)
    imagery: str | None = None  # 'ground' (photos: GeoCLIP's views) or 'north_up' (maps, aerial: no flips)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.kind not in (FILES, BUNDLED_KIND):
            raise ValueError(f"dataset {self.name!r}: kind must be {FILES!r} or {BUNDLED_KIND!r}, got {self.kind!r}")
        if self.kind == BUNDLED_KIND and self.name not in bundled.DATASETS:
            raise ValueError(f"dataset {self.name!r}: bundled datasets are {sorted(bundled.DATASETS)}")
        if self.kind == FILES and (not self.metadata_csv or not self.images):
            raise ValueError(f"dataset {self.name!r}: a 'files' dataset needs metadata_csv and images")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"dataset {self.name!r}: unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        if self.imagery is not None and self.imagery not in IMAGERY:
            raise ValueError(f"dataset {self.name!r}: imagery must be one of {IMAGERY}, got {self.imagery!r}")
        self._check_types()

    def _check_types(self) -> None:
        """Each field has the type its name promises (a YAML `val_share: abc` fails here, naming it)."""
        texts = ("kind", "preset", "metadata_csv", "images", "layout", "split_column", "default_split", "imagery")
        for name in texts:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"dataset {self.name!r}: {name} must be text, got {value!r}")
        share = self.val_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1):
            raise ValueError(f"dataset {self.name!r}: val_share must be a number from 0 to below 1, got {share!r}")
        if self.store_bytes is not None and not isinstance(self.store_bytes, bool):
            raise ValueError(f"dataset {self.name!r}: store_bytes must be true or false, got {self.store_bytes!r}")

    def source_fingerprint(self, recipe: bundled.BundledRecipe) -> str:
        """A fingerprint of the dataset's source files (size and modification time), without reading or
        rendering anything: it changes when the metadata CSV or an archive is replaced or appended to (a
        folder layout's images are not listed; its metadata CSV is). What the new-data sensor watches."""
        if self.kind == BUNDLED_KIND:
            files = [bundled.TRAINING_COORDINATES, bundled.HELDOUT_COORDINATES, bundled.BLUE_MARBLE, bundled.ETOPO]
            extra = recipe.to_dict()
        else:
            files = [Path(self.metadata_csv)]
            if self.layout in ARCHIVE_LAYOUTS:
                try:
                    files += archive_paths(self.images)
                except FileNotFoundError:
                    pass  # no archive yet: the CSV alone
            extra = None
        stats = [(str(f), *_size_and_mtime(f)) for f in files]
        return fingerprint(self.name, stats, extra)

    @classmethod
    def from_dict(cls, data: dict) -> DatasetEntry:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"dataset entry {data.get('name')!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**data)

    def spec(self, warehouse: Warehouse, recipe: bundled.BundledRecipe, benchmark: bool = False) -> DatasetSpec:
        """How to read the dataset; a bundled one is rendered first (once per recipe) under warehouse/sources.
        A benchmark's records are test images unless its entry or preset says otherwise."""
        if self.kind == BUNDLED_KIND:
            root = warehouse.root / "sources" / f"{self.name}-{fingerprint(recipe.to_dict())}"
            metadata = root / "metadata.csv"
            if not metadata.is_file():
                bundled.write_bundled_dataset(root, self.name, recipe)
            return DatasetSpec(
                self.name, str(metadata), str(root / "images"), "folder", split_column="split", imagery="north_up"
            )
        base = dict(PRESETS[self.preset]) if self.preset else ({"default_split": "test"} if benchmark else {})
        optional = {
            "default_split": self.default_split,
            "val_share": self.val_share,
            "imagery": self.imagery,
            "store_bytes": self.store_bytes,
        }
        chosen = {
            "split_column": self.split_column,
            "layout": self.layout,
            **{k: v for k, v in optional.items() if v is not None},
        }
        return DatasetSpec(self.name, self.metadata_csv, self.images, **{**base, **chosen})


@dataclass(frozen=True)
class Catalog:
    training: DatasetEntry
    benchmarks: tuple[DatasetEntry, ...]

    def __post_init__(self) -> None:
        names = [self.training.name, *(b.name for b in self.benchmarks)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"dataset names must be unique in the catalog (training and benchmarks); repeated: {repeated}"
            )

    @property
    def entries(self) -> tuple[DatasetEntry, ...]:
        return (self.training, *self.benchmarks)

    def specs(self, warehouse: Warehouse, recipe: bundled.BundledRecipe) -> list[DatasetSpec]:
        """How to read every dataset, training first."""
        return [
            self.training.spec(warehouse, recipe),
            *(b.spec(warehouse, recipe, benchmark=True) for b in self.benchmarks),
        ]

    @property
    def benchmark_names(self) -> list[str]:
        return [b.name for b in self.benchmarks]

    def benchmark(self, name: str) -> DatasetEntry:
        for entry in self.benchmarks:
            if entry.name == name:
                return entry
        raise KeyError(f"{name!r} is not a benchmark of the catalog; benchmarks: {self.benchmark_names}")

    @classmethod
    def from_dict(cls, data: dict) -> Catalog:
        if not isinstance(data, dict) or "training" not in data:
            raise ValueError("a catalog needs a 'training' dataset (and a list of 'benchmarks')")
        benchmarks = data.get("benchmarks") or []
        if not isinstance(benchmarks, list):
            raise ValueError("the catalog's 'benchmarks' must be a list of datasets")
        return cls(DatasetEntry.from_dict(data["training"]), tuple(DatasetEntry.from_dict(b) for b in benchmarks))


BUNDLED_CATALOG = Catalog(
    DatasetEntry(bundled.BUNDLED, kind=BUNDLED_KIND),
    (DatasetEntry(bundled.HELDOUT, kind=BUNDLED_KIND), DatasetEntry(bundled.SHIFTED, kind=BUNDLED_KIND)),
)


def load_catalog(
    path: str | Path | None = None, training: dict | None = None, benchmarks: list[dict] | None = None
) -> Catalog:
    """The catalog from a YAML file (else the bundled one), with inline `training`/`benchmarks` replacing
    the file's when given."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"dataset catalog not found: {file}")
        base = Catalog.from_dict(read_yaml(file))
    else:
        base = BUNDLED_CATALOG
    return Catalog(
        DatasetEntry.from_dict(training) if training else base.training,
        tuple(DatasetEntry.from_dict(b) for b in benchmarks) if benchmarks else base.benchmarks,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML lets the last one win)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(file: Path):
    """A YAML file's content (safe types only), or ValueError naming the file, the line and the problem."""
    try:
        return yaml.load(file.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ValueError(f"{file}: {where}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{file}: not valid YAML ({str(error).splitlines()[0]})") from None


def _size_and_mtime(path: Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)
    return stat.st_size, stat.st_mtime_ns
