"""Dataset descriptions: where the metadata and images are, and how their columns are named.

Presets carry the column names and split of the public datasets; paths always come from the user
(nothing is downloaded).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

# A dataset name becomes a warehouse folder (dataset=NAME), a Dagster partition key and a value in SQL.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# How test-time views may transform a dataset's images: ground photos get GeoCLIP's views (crops, flips,
# colour); north-up imagery (maps, aerial, satellite) never flips or rotates, since that moves places.
IMAGERY = ("ground", "north_up")


def check_name(name: str) -> str:
    """The dataset name, or ValueError: letters, digits, '_', '.', '-' only."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"dataset name must be letters, digits, '_', '.' or '-' (it names folders, partitions and SQL "
            f"rows), got {name!r}"
        )
    return name


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    metadata_csv: str
    images: str  # folder (layout 'folder') or a glob of archives/shards ('tar', 'msgpack')
    layout: str = "folder"
    id_column: str = "IMG_ID"
    lat_column: str = "LAT"
    lon_column: str = "LON"
    split_column: str | None = None  # None: every record gets default_split
    default_split: str = "train"
    val_share: float = 0.0  # with no split column: share of train cells held out as 'val'
    store_bytes: bool = True  # False: tables keep a reference to the source image (MP16 scale)
    batch_rows: int = 20000  # rows per part file: the unit of memory during ingest
    imagery: str = "ground"  # which test-time views suit the images (IMAGERY)
    image_suffix: str = ""  # appended to the id to find a folder image (OSV-5M ids carry no '.jpg')

    def __post_init__(self) -> None:
        if self.layout not in ("folder", "tar", "msgpack"):
            raise ValueError(f"layout must be 'folder', 'tar' or 'msgpack', got {self.layout!r}")
        check_name(self.name)
        if self.imagery not in IMAGERY:
            raise ValueError(f"imagery must be one of {IMAGERY}, got {self.imagery!r}")
        if not 0.0 <= self.val_share < 1.0:
            raise ValueError(f"val_share must be in [0, 1), got {self.val_share}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> DatasetSpec:
        return replace(self, **changes)


# Column names and splits as the datasets are distributed (GeoCLIP / Img2Loc conventions).
PRESETS: dict[str, dict] = {
    "mp16": dict(
        id_column="IMG_ID",
        lat_column="LAT",
        lon_column="LON",
        default_split="train",
        val_share=0.01,
        store_bytes=False,
        batch_rows=50000,
    ),
    "im2gps3k": dict(id_column="IMG_ID", lat_column="LAT", lon_column="LON", default_split="test"),
    "yfcc26k": dict(id_column="IMG_ID", lat_column="LAT", lon_column="LON", default_split="test"),
    "yfcc4k": dict(id_column="IMG_ID", lat_column="LAT", lon_column="LON", default_split="test"),
    "gws15k": dict(id_column="IMG_ID", lat_column="LAT", lon_column="LON", default_split="test"),
    # OSV-5M's test.csv: id, latitude, longitude, ...; its test zips unpacked into one folder of <id>.jpg
    "osv5m": dict(
        id_column="id", lat_column="latitude", lon_column="longitude", default_split="test", image_suffix=".jpg"
    ),
}


def preset(kind: str, metadata_csv: str, images: str, layout: str = "folder", **overrides) -> DatasetSpec:
    """A DatasetSpec for a known dataset: preset('im2gps3k', 'im2gps3k_places365.csv', 'im2gps3ktest/')."""
    if kind not in PRESETS:
        raise ValueError(f"unknown preset {kind!r}; known: {sorted(PRESETS)}")
    return DatasetSpec(
        name=overrides.pop("name", kind),
        metadata_csv=metadata_csv,
        images=images,
        layout=layout,
        **{**PRESETS[kind], **overrides},
    )
