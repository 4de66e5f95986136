"""The bundled datasets: real MP16 photo locations seen through public world maps, with a benchmark
that shares no map pixel with training.

An "image" of a location is a square window of an equirectangular world map around the location
(moved by a seeded jitter so it does not pin the location exactly), resampled to image_px pixels.
Three datasets come from one layout:

- `bluemarble` (training): windows of NASA's Blue Marble at the bundled MP16 sample and at further MP16
  gallery locations, split into train and val by blocks of the globe;
- `bluemarble_heldout` (benchmark): windows of the same map at held-out MP16 locations (never in the
  training sample), in blocks of their own;
- `etopo_shift` (benchmark): the same held-out windows cut from the ETOPO1 relief map (a domain shift).

No benchmark window shares a single map pixel with a training or validation window, and no validation
window with a training one: windows are assigned by the block of the globe they fall in, and any that
would still touch a window of another role is dropped. Each metadata CSV records every window
(source_map, window_row, window_col, window_px) so anyone can recompute the overlaps.
Written in the MP16 layout (metadata CSV + folder of JPEGs), so the default run goes through exactly
the ingest that real datasets use. See assets/earth/SOURCES.md.
"""

from __future__ import annotations

import csv
import functools
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from locdiff_pipeline.data.image_io import encode_jpeg
from locdiff_pipeline.method import sphere

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "earth"
TRAINING_COORDINATES = ASSETS / "mp16_coordinates_sample.csv"
HELDOUT_COORDINATES = ASSETS / "mp16_heldout_pool.csv"
GALLERY_COORDINATES = ASSETS / "mp16_gallery_sample.csv"
BLUE_MARBLE = ASSETS / "bmng.jpg"
ETOPO = ASSETS / "etopo1.jpg"
MAP_WIDTH, MAP_HEIGHT = 5400, 2700  # both maps: 1/15 degree per pixel

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
    # further MP16 locations (at most 30,000) for training and validation windows: they never decide which
    # blocks are benchmark or validation blocks, so the benchmarks stay the same whatever their number
    gallery_count: int = 30000
    max_val: int = 600  # validation windows kept at most (the first, in the seeded order of their rows)
    max_val_per_block: int = 25  # and at most this many per validation sub-block: no one place dominates
    benchmark_count: int = 300  # held-out locations per benchmark (at most; fewer if the pool runs out)
    window_deg: float = 4.0
    jitter_deg: float = 0.5
    image_px: int = 96
    block_deg: float = 15.0  # the globe is cut into blocks this size; a block is a benchmark block or not
    val_block_deg: float = 7.5  # validation takes sub-blocks this size outside the benchmark blocks
    val_share: float = 0.2  # of the occupied validation sub-blocks
    benchmark_share: float = 0.15
    seed: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


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


def block_of(row: np.ndarray, col: np.ndarray, recipe: BundledRecipe, block_deg: float | None = None) -> np.ndarray:
    """The block of the globe holding each map pixel (blocks are block_deg squares aligned with the map;
    recipe.block_deg unless given)."""
    block_px = int(round((block_deg or recipe.block_deg) * MAP_WIDTH / 360.0))
    return (np.asarray(row) // block_px) * (MAP_WIDTH // block_px + 1) + (np.asarray(col) % MAP_WIDTH) // block_px


def seeded_share(blocks: np.ndarray, share: float, seed: str) -> set[int]:
    """The blocks that, taken in a seeded order, hold about `share` of the given locations (MP16 is dense
    in a few places, so shares are counted in locations, not in blocks)."""
    ids, counts = np.unique(blocks, return_counts=True)
    order = np.argsort([zlib.crc32(f"{seed}:{int(i)}".encode()) for i in ids], kind="stable")
    cumulative = np.cumsum(counts[order]) / counts.sum()
    return {int(block) for block, total in zip(ids[order], cumulative, strict=True) if total <= share}


def block_roles(blocks: np.ndarray, recipe: BundledRecipe) -> dict[int, str]:
    """'benchmark' or 'train' for every block: the benchmark blocks hold about benchmark_share of the
    given locations."""
    chosen = seeded_share(blocks, recipe.benchmark_share, str(recipe.seed))
    return {int(block): "benchmark" if int(block) in chosen else "train" for block in np.unique(blocks)}


def validation_blocks(windows: Windows, roles: dict[int, str], recipe: BundledRecipe) -> set[int]:
    """A seeded val_share of the sub-blocks (val_block_deg) outside the benchmark blocks that hold any of
    `windows`, each sub-block as likely as any other: many small regions spread over the training areas, so
    validation measures what the benchmark does (places a few hundred km from any training image) over many
    regions, where shares counted in locations would give the few densest cities."""
    centre_row, centre_col = windows.row + windows.side // 2, windows.col + windows.side // 2
    outside = np.array([roles.get(int(b), "train") != "benchmark" for b in block_of(centre_row, centre_col, recipe)])
    occupied = np.unique(block_of(centre_row[outside], centre_col[outside], recipe, recipe.val_block_deg))
    return seeded_share(occupied, recipe.val_share, f"val:{recipe.seed}")


def first_per_block(windows: Windows, recipe: BundledRecipe) -> np.ndarray:
    """Whether each window is among the first max_val_per_block of its validation sub-block."""
    blocks = block_of(windows.row + windows.side // 2, windows.col + windows.side // 2, recipe, recipe.val_block_deg)
    rank = np.zeros(len(blocks), dtype=int)
    for block in np.unique(blocks):
        at = np.flatnonzero(blocks == block)
        rank[at] = np.arange(len(at))
    return rank < recipe.max_val_per_block


def inside_blocks(
    windows: Windows, blocks: set[int], recipe: BundledRecipe, block_deg: float | None = None
) -> np.ndarray:
    """Whether each window lies wholly in `blocks` (a window is smaller than a block, so its four corners
    decide)."""
    last = windows.side - 1
    corners = [block_of(windows.row + dr, windows.col + dc, recipe, block_deg) for dr in (0, last) for dc in (0, last)]
    return np.all([[int(b) in blocks for b in corner] for corner in corners], axis=0)


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

    Benchmark windows lie wholly inside benchmark blocks, validation windows wholly inside validation
    sub-blocks; a training window is dropped if its centre is in a benchmark block or it touches any
    validation or benchmark window. Which blocks are benchmark blocks depends on the training sample and
    the held-out pool alone, so gallery locations (further training and validation windows) never move
    the benchmarks."""
    source, lat, lon = load_coordinates(TRAINING_COORDINATES, recipe.count)
    sample = place_windows(source, lat, lon, np.full(len(lat), "train"), recipe, recipe.seed)
    pool_source, pool_lat, pool_lon = load_coordinates(HELDOUT_COORDINATES)
    pool = place_windows(pool_source, pool_lat, pool_lon, np.full(len(pool_lat), "test"), recipe, recipe.seed + 1)
    centres = [block_of(w.row + w.side // 2, w.col + w.side // 2, recipe) for w in (sample, pool)]
    roles = block_roles(np.concatenate(centres), recipe)
    gallery_source, gallery_lat, gallery_lon = load_coordinates(GALLERY_COORDINATES, recipe.gallery_count)
    gallery = place_windows(
        gallery_source, gallery_lat, gallery_lon, np.full(len(gallery_lat), "train"), recipe, recipe.seed + 2
    )
    training = concatenate(sample, gallery)
    benchmark_blocks = {block for block, role in roles.items() if role == "benchmark"}
    benchmark = pool.take(inside_blocks(pool, benchmark_blocks, recipe))
    benchmark = benchmark.take(np.arange(len(benchmark)) < recipe.benchmark_count)
    val_blocks = validation_blocks(training, roles, recipe)
    in_val_blocks = inside_blocks(training, val_blocks, recipe, recipe.val_block_deg)
    val = training.take(in_val_blocks & ~overlapping(training, benchmark))
    val = val.take(first_per_block(val, recipe) & (np.cumsum(first_per_block(val, recipe)) <= recipe.max_val))
    val = Windows(**{**asdict(val), "split": np.full(len(val), "val")})
    training_centres = block_of(training.row + training.side // 2, training.col + training.side // 2, recipe)
    in_train_blocks = np.array([roles.get(int(b), "train") == "train" for b in training_centres])
    train = training.take(in_train_blocks & ~overlapping(training, val) & ~overlapping(training, benchmark))
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


def write_bundled_dataset(root: str | Path, dataset: str, recipe: BundledRecipe) -> Path:
    """Render one bundled dataset into `root` in the MP16 layout; returns the metadata CSV path.

    Images are written first and the metadata CSV last, through a temporary name, so a crash never
    leaves a metadata file that points at missing images.
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
    for i, identifier in enumerate(ids):
        path = root / "images" / identifier
        path.parent.mkdir(parents=True, exist_ok=True)
        window = render(world, int(windows.row[i]), int(windows.col[i]), int(windows.side[i]), recipe.image_px)
        path.write_bytes(encode_jpeg(window))
    metadata = root / "metadata.csv"
    temporary = root / ".metadata.csv.tmp"
    with open(temporary, "w", newline="") as handle:
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
                    map_path.name,
                    int(windows.row[i]),
                    int(windows.col[i]),
                    int(windows.side[i]),
                ]
            )
    temporary.replace(metadata)
    return metadata
