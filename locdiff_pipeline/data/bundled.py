"""The bundled datasets: real MP16 photo locations seen through public world maps, with a benchmark
that shares no map pixel with training.

An "image" of a location is a square window of an equirectangular world map around the location
(moved by a seeded jitter so it does not pin the location exactly), resampled to image_px pixels.
Three datasets come from one layout:

- `bluemarble` (training): windows of NASA's Blue Marble at the bundled MP16 sample and at further MP16
  gallery locations, split into train and val by blocks of the globe;
- `bluemarble_heldout` (benchmark): windows of the same map at held-out MP16 locations (never training
  locations), a few in each of many regions (7.5-degree cells) drawn in a seeded order, so no region
  decides a ranking;
- `etopo_shift` (benchmark): the same held-out windows cut from the ETOPO1 relief map (a domain shift).

No benchmark window shares a single map pixel with a training or validation window, and no validation
window with a training one: a training or validation window that would touch a window of a later-drawn
role is dropped. Each metadata CSV records every window
(source_map, window_row, window_col, window_px) so anyone can recompute the overlaps.
Written in the MP16 layout (metadata CSV + folder of JPEGs), so the default run goes through exactly
the ingest that real datasets use. See assets/earth/SOURCES.md.
"""

from __future__ import annotations

import csv
import functools
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from locdiff_pipeline.data.disk_space import writing
from locdiff_pipeline.data.image_io import encode_jpeg
from locdiff_pipeline.method import sphere

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "earth"
TRAINING_COORDINATES = ASSETS / "mp16_coordinates_sample.csv"
HELDOUT_COORDINATES = ASSETS / "mp16_heldout_pool.csv"
GALLERY_COORDINATES = ASSETS / "mp16_gallery_sample.csv"
BLUE_MARBLE = ASSETS / "bmng.jpg"
ETOPO = ASSETS / "etopo1.jpg"
MAP_WIDTH, MAP_HEIGHT = 5400, 2700  # both maps: 1/15 degree per pixel
MIN_REGIONS = 60

BUNDLED = "bluemarble"  # the bundled training dataset
HELDOUT = "bluemarble_heldout"
SHIFTED = "etopo_shift"
# dataset -> (map file, which locations)
DATASETS: dict[str, tuple[Path, str]] = {
    BUNDLED: (BLUE_MARBLE, "training"),
    HELDOUT: (BLUE_MARBLE, "benchmark"),
    SHIFTED: (ETOPO, "benchmark"),
}
METADATA_COLUMNS = [
    "IMG_ID",
    "LAT",
    "LON",
    "split",
    "mp16_source_row",
    "source_map",
    "window_row",
    "window_col",
    "window_px",
]


@dataclass(frozen=True)
class BundledRecipe:
    """Everything that determines the bundled datasets (recorded in their fingerprints)."""

    count: int = 3000  # how many of the bundled training coordinates to use (at most 3000)
    # further MP16 locations (at most 60,000) for training and validation windows: they never decide which
    # regions are benchmark regions, so the benchmarks stay the same whatever their number
    gallery_count: int = 60000
    val_count: int = 600  # validation images, drawn by the benchmark's rule from the training locations...
    val_share: float = 0.05  # ...and at most this share of them (a small training set keeps its training)
    benchmark_count: int = 640  # held-out images per benchmark (fewer only if the pool runs out)
    # at most this many images per region, and fewer when a count is small, so that even a small benchmark or
    # validation split spans at least MIN_REGIONS regions (a share of a few regions ranks nothing)
    per_region: int = 10
    region_deg: float = sphere.REGION_DEG  # regions: cells of this side, each as likely as any other
    window_deg: float = 4.0
    jitter_deg: float = 0.5
    image_px: int = 96
    seed: int = 16

    def to_dict(self) -> dict:
        return asdict(self)

    def cap(self, count: int) -> int:
        """The most images per region of a regional sample of `count`: per_region, or less when MIN_REGIONS
        regions at that cap would hold more than `count`."""
        return max(1, min(self.per_region, count // MIN_REGIONS))


@dataclass(frozen=True)
class Windows:
    """Locations and the map windows that picture them (top-left pixel before wrapping, side in pixels)."""

    source_row: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    split: np.ndarray
    row: np.ndarray
    col: np.ndarray
    side: np.ndarray

    def take(self, mask: np.ndarray) -> Windows:
        return Windows(**{name: value[mask] for name, value in asdict(self).items()})

    def __len__(self) -> int:
        return len(self.lat)


def load_coordinates(path: Path, count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `count` coordinates of a bundled sample: (source_row, lat, lon)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    count = len(rows) if count is None else count
    if not 0 <= count <= len(rows):
        raise ValueError(f"count must be between 1 and {len(rows)} (the bundled sample), got {count}")
    rows = rows[:count]
    source = np.array([int(r["source_row"]) for r in rows])
    lat, lon = sphere.validate_coordinates([float(r["LAT"]) for r in rows], [float(r["LON"]) for r in rows])
    return source, lat, lon


def block_of(row: np.ndarray, col: np.ndarray, block_deg: float) -> np.ndarray:
    """The block of the globe holding each map pixel (blocks are block_deg squares aligned with the map)."""
    block_px = int(round(block_deg * MAP_WIDTH / 360.0))
    return (np.asarray(row) // block_px) * (MAP_WIDTH // block_px + 1) + (np.asarray(col) % MAP_WIDTH) // block_px


def seeded_order(keys: np.ndarray, seed: str) -> np.ndarray:
    """The distinct keys in an order fixed by `seed` alone (a hash of each key): each key as likely as any
    other to come early, and a key's place does not move when others are added or removed."""
    distinct = np.unique(keys)
    return distinct[np.argsort([zlib.crc32(f"{seed}:{key}".encode()) for key in distinct], kind="stable")]


def regional_sample(windows: Windows, count: int, recipe: BundledRecipe, seed: str) -> np.ndarray:
    """Which of `windows` a regional sample takes: region cells (of the locations) in a seeded order, each
    occupied cell as likely as any other (so sparse regions weigh as much as MP16's dense cities), at most
    recipe.cap(count) windows from each (the first, in the windows' own seeded order), until `count`. The
    benchmark and validation are both drawn so, so validation measures what the benchmark does."""
    regions = sphere.region_of(windows.lat, windows.lon, recipe.region_deg)
    cap, taken, total = recipe.cap(count), [], 0
    for region in seeded_order(regions, seed):
        if total >= count:
            break
        taken.append(np.flatnonzero(regions == region)[:cap])
        total += len(taken[-1])
    chosen = np.sort(np.concatenate(taken))[:count] if taken else np.zeros(0, int)
    return np.isin(np.arange(len(windows)), chosen)


def place_windows(
    source: np.ndarray, lat: np.ndarray, lon: np.ndarray, split: np.ndarray, recipe: BundledRecipe, seed: int
) -> Windows:
    """Square windows window_deg across, centred on each location moved by up to jitter_deg; kept
    inside the map's rows (the window slides, the label stays), wrapping in longitude."""
    rng = np.random.default_rng(seed)
    per_deg = MAP_WIDTH / 360.0
    side = int(round(recipe.window_deg * per_deg))
    centre_lat = lat + rng.uniform(-recipe.jitter_deg, recipe.jitter_deg, len(lat))
    centre_lon = lon + rng.uniform(-recipe.jitter_deg, recipe.jitter_deg, len(lat))
    row = np.clip(np.floor((90.0 - centre_lat) * per_deg - side / 2).astype(int), 0, MAP_HEIGHT - side)
    col = np.floor((sphere.wrap_longitude(centre_lon) + 180.0) * per_deg - side / 2).astype(int) % MAP_WIDTH
    return Windows(source, lat, lon, split, row, col, np.full(len(lat), side))


def overlapping(windows: Windows, others: Windows) -> np.ndarray:
    """For each window, whether it shares at least one map pixel with any of `others` (columns wrap)."""
    if len(others) == 0:
        return np.zeros(len(windows), dtype=bool)
    rows = (windows.row[:, None] < others.row + others.side) & (others.row < (windows.row + windows.side)[:, None])
    right = (others.col[None, :] - windows.col[:, None]) % MAP_WIDTH < windows.side[:, None]
    left = (windows.col[:, None] - others.col[None, :]) % MAP_WIDTH < others.side[None, :]
    return (rows & (right | left)).any(axis=1)


@functools.lru_cache(maxsize=4)
def layout(recipe: BundledRecipe) -> dict[str, Windows]:
    """The training windows (train and val) and the benchmark windows, pixel-disjoint across roles.

    Drawn in this order, each role never touching the ones before it: the benchmark from the held-out pool,
    then validation from the training-sample and gallery windows that touch no benchmark window (each a
    regional_sample: many regions, a few images each, by one rule), then training: every other such window
    that touches no validation window. The benchmark depends on the held-out pool
    alone, so the training sample and the gallery (their number included) never move it."""
    pool_source, pool_lat, pool_lon = load_coordinates(HELDOUT_COORDINATES)
    pool = place_windows(pool_source, pool_lat, pool_lon, np.full(len(pool_lat), "test"), recipe, recipe.seed + 1)
    benchmark = pool.take(regional_sample(pool, recipe.benchmark_count, recipe, f"benchmark:{recipe.seed}"))
    source, lat, lon = load_coordinates(TRAINING_COORDINATES, recipe.count)
    sample = place_windows(source, lat, lon, np.full(len(lat), "train"), recipe, recipe.seed)
    gallery_source, gallery_lat, gallery_lon = load_coordinates(GALLERY_COORDINATES, recipe.gallery_count)
    gallery = place_windows(
        gallery_source, gallery_lat, gallery_lon, np.full(len(gallery_lat), "train"), recipe, recipe.seed + 2
    )
    training = concatenate(sample, gallery)
    training = training.take(~overlapping(training, benchmark))
    val_count = min(recipe.val_count, max(1, int(recipe.val_share * len(training))))
    val = training.take(regional_sample(training, val_count, recipe, f"val:{recipe.seed}"))
    val = Windows(**{**asdict(val), "split": np.full(len(val), "val")})
    train = training.take(~overlapping(training, val))
    return {"training": concatenate(train, val), "benchmark": benchmark}


def concatenate(first: Windows, second: Windows) -> Windows:
    return Windows(**{name: np.concatenate([value, getattr(second, name)]) for name, value in asdict(first).items()})


def render(world: np.ndarray, row: int, col: int, side: int, image_px: int) -> Image.Image:
    """The window [row, row+side) x [col, col+side) of a map (columns wrap), resampled to image_px."""
    cols = np.arange(col, col + side) % world.shape[1]
    return Image.fromarray(world[row : row + side][:, cols]).resize((image_px, image_px), Image.Resampling.BILINEAR)


def render_window(world: np.ndarray, lat: float, lon: float, window_deg: float, image_px: int) -> Image.Image:
    """A window_deg window of a map centred on (lat, lon), without jitter (for ad-hoc images)."""
    recipe = BundledRecipe(window_deg=window_deg, jitter_deg=0.0, image_px=image_px)
    window = place_windows(np.zeros(1, int), np.array([lat]), np.array([lon]), np.array(["test"]), recipe, 0)
    return render(world, int(window.row[0]), int(window.col[0]), int(window.side[0]), image_px)


def image_id(dataset: str, index: int, source_row: int) -> str:
    """MP16-style relative path ids: 'bluemarble/00/000042_13.jpg'."""
    return f"{dataset}/{index // 1000:02d}/{index:06d}_{source_row}.jpg"


def _render_images(folder: Path, world: np.ndarray, windows, ids: list[str], image_px: int) -> None:
    for i, identifier in enumerate(ids):
        path = folder / "images" / identifier
        path.parent.mkdir(parents=True, exist_ok=True)
        window = render(world, int(windows.row[i]), int(windows.col[i]), int(windows.side[i]), image_px)
        path.write_bytes(encode_jpeg(window))


def _write_metadata(path: Path, windows, ids: list[str], map_name: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(METADATA_COLUMNS)
        for i, identifier in enumerate(ids):
            writer.writerow(
                [
                    identifier,
                    f"{windows.lat[i]:.6f}",
                    f"{windows.lon[i]:.6f}",
                    windows.split[i],
                    int(windows.source_row[i]),
                    map_name,
                    int(windows.row[i]),
                    int(windows.col[i]),
                    int(windows.side[i]),
                ]
            )


def write_bundled_dataset(root: str | Path, dataset: str, recipe: BundledRecipe) -> Path:
    """Render one bundled dataset into `root` in the MP16 layout; returns the metadata CSV path.

    Everything is written into a staging folder beside `root`, renamed into place only when whole, so a
    crash or a full disk never leaves a half-rendered folder (nor a metadata file pointing at missing images).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown bundled dataset {dataset!r}; known: {sorted(DATASETS)}")
    map_path, role = DATASETS[dataset]
    windows = layout(recipe)[role]
    root = Path(root)
    with Image.open(map_path) as image:
        world = np.asarray(image.convert("RGB"))
    if world.shape[:2] != (MAP_HEIGHT, MAP_WIDTH):
        raise ValueError(
            f"{map_path}: expected a {MAP_WIDTH} x {MAP_HEIGHT} equirectangular map, got {world.shape[1]} x "
            f"{world.shape[0]}"
        )
    ids = [image_id(dataset, i, int(s)) for i, s in enumerate(windows.source_row)]
    staging = root.with_name(f".{root.name}.partial-{os.getpid()}")
    try:
        with writing(root, f"the rendered {dataset} images"):
            _render_images(staging, world, windows, ids, recipe.image_px)
            _write_metadata(staging / "metadata.csv", windows, ids, map_path.name)
        if root.exists():  # an earlier render's remains (it had no metadata, or this one would not run)
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metadata = root / "metadata.csv"
    return metadata
