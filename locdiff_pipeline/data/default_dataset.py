"""The bundled default dataset: real MP16 photo locations seen through NASA Blue Marble imagery.

It is written out in the MP16 layout (a metadata CSV plus a folder tree of JPEG images) so that the
default run goes through exactly the ingest that real datasets use. See assets/bluemarble/SOURCES.md.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from locdiff_pipeline.data.image_io import encode_jpeg
from locdiff_pipeline.method import sphere

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "bluemarble"
COORDINATES_CSV = ASSETS / "mp16_coordinates_sample.csv"
BLUE_MARBLE = ASSETS / "bmng.jpg"
SPLITS = ("train", "val", "test")
BUNDLED = "bluemarble"  # the bundled dataset's name and kind


@dataclass(frozen=True)
class DefaultDatasetRecipe:
    """Everything that determines the rendered dataset (recorded in its manifest)."""

    count: int = 3000  # how many of the bundled coordinates to use (at most 3000)
    window_deg: float = 8.0
    jitter_deg: float = 2.0
    image_px: int = 96
    split_cell_deg: float = 2.0
    val_share: float = 0.1
    test_share: float = 0.1
    seed: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


def load_coordinates(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `count` bundled MP16 coordinates: (source_row, lat, lon)."""
    with open(COORDINATES_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not 1 <= count <= len(rows):
        raise ValueError(f"count must be between 1 and {len(rows)} (the bundled sample), got {count}")
    rows = rows[:count]
    source = np.array([int(r["source_row"]) for r in rows])
    lat, lon = sphere.validate_coordinates([float(r["LAT"]) for r in rows], [float(r["LON"]) for r in rows])
    return source, lat, lon


def split_by_location(lat: np.ndarray, lon: np.ndarray, recipe: DefaultDatasetRecipe) -> np.ndarray:
    """Assign whole cells of the globe to train/val/test by a seeded hash of the cell."""
    rows = np.floor((lat + 90.0) / recipe.split_cell_deg).astype(int)
    cols = np.floor((sphere.wrap_longitude(lon) + 180.0) / recipe.split_cell_deg).astype(int)
    draws = np.array([zlib.crc32(f"{recipe.seed}:{r}:{c}".encode()) / 2**32 for r, c in zip(rows, cols)])
    return np.where(
        draws < recipe.test_share, "test", np.where(draws < recipe.test_share + recipe.val_share, "val", "train")
    )


def render_window(world: np.ndarray, lat: float, lon: float, window_deg: float, image_px: int) -> Image.Image:
    """A square window of an equirectangular map centred on (lat, lon), wrapping in longitude and
    reflecting at the poles, resampled to image_px x image_px."""
    height, width, _ = world.shape
    per_deg = width / 360.0
    half = window_deg * per_deg / 2.0
    centre_col = (lon + 180.0) * per_deg
    centre_row = (90.0 - lat) * per_deg
    offsets = np.linspace(-half, half, image_px)
    cols = np.floor(centre_col + offsets).astype(int) % width
    rows = np.floor(centre_row + offsets).astype(int)
    over_north, over_south = rows < 0, rows >= height
    rows = np.where(over_north, -rows - 1, np.where(over_south, 2 * height - rows - 1, rows))
    window = world[rows[:, None], cols[None, :]]
    flipped = over_north | over_south  # across a pole the map is seen from the other side
    window[flipped] = window[flipped][:, ::-1]
    return Image.fromarray(window)


def image_id(index: int, source_row: int) -> str:
    """MP16-style relative path ids: 'bm/00/000042_13.jpg'."""
    return f"bm/{index // 1000:02d}/{index:06d}_{source_row}.jpg"


def write_default_dataset(root: str | Path, recipe: DefaultDatasetRecipe) -> Path:
    """Render the dataset into `root` in the MP16 layout; returns the metadata CSV path.

    Files are written first and the metadata CSV last, through a temporary name, so a crash never
    leaves a metadata file that points at missing images.
    """
    root = Path(root)
    source, lat, lon = load_coordinates(recipe.count)
    split = split_by_location(lat, lon, recipe)
    rng = np.random.default_rng(recipe.seed)
    shift_lat = rng.uniform(-recipe.jitter_deg, recipe.jitter_deg, len(lat))
    shift_lon = rng.uniform(-recipe.jitter_deg, recipe.jitter_deg, len(lat))
    with Image.open(BLUE_MARBLE) as image:
        world = np.asarray(image.convert("RGB"))
    ids = [image_id(i, int(s)) for i, s in enumerate(source)]
    for i, identifier in enumerate(ids):
        centre_lat = float(np.clip(lat[i] + shift_lat[i], -89.9, 89.9))
        centre_lon = float(sphere.wrap_longitude(lon[i] + shift_lon[i]))
        path = root / "images" / identifier
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(render_window(world, centre_lat, centre_lon, recipe.window_deg, recipe.image_px)))
    metadata = root / "metadata.csv"
    temporary = root / ".metadata.csv.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["IMG_ID", "LAT", "LON", "split", "mp16_source_row"])
        for i, identifier in enumerate(ids):
            writer.writerow([identifier, f"{lat[i]:.6f}", f"{lon[i]:.6f}", split[i], int(source[i])])
    temporary.replace(metadata)
    return metadata
