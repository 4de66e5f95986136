"""Small datasets in each real layout (folder, tar, msgpack), with one record of every bad kind."""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path

import msgpack
import numpy as np
from PIL import Image

# id -> (LAT, LON, what is wrong with it, expected rejection kind)
BAD_RECORDS = {
    "bad/lat_missing.jpg": ("", "10", "image ok", "lat missing"),
    "bad/lat_text.jpg": ("north", "10", "image ok", "lat not a number"),
    "bad/lat_range.jpg": ("95.5", "10", "image ok", "lat out of range [-90, 90]"),
    "bad/lon_nan.jpg": ("10", "nan", "image ok", "lon is nan"),
    "bad/lon_range.jpg": ("10", "-181", "image ok", "lon out of range [-180, 180]"),
    "bad/no_image.jpg": ("10", "10", "no image", "image missing"),
    "bad/corrupt.jpg": ("10", "10", "corrupt", "corrupt image"),
    "bad/truncated.jpg": ("10", "10", "truncated", "corrupt image"),
}


# what `read_image_file` says of each hostile file (after "PATH: ")
HOSTILE_REASONS = {
    "bomb": "image too large:",
    "fifo": "not a regular file",
    "loop": "cannot read file",
}


def bomb_png() -> bytes:
    """A 20000 x 20000 PNG of a few tens of KB: 400 M pixels (1.2 GB as RGB) if anything decoded it."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def make_hostile_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """A decompression bomb, a named pipe nobody writes to, and a symlink loop, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    bomb, fifo, loop = (folder / f"{prefix}{name}" for name in ("bomb.png", "fifo.jpg", "loop.jpg"))
    bomb.write_bytes(bomb_png())
    os.mkfifo(fifo)
    (folder / f"{prefix}loop_b.jpg").symlink_to(loop.name)
    loop.symlink_to(f"{prefix}loop_b.jpg")
    return {"bomb": bomb, "fifo": fifo, "loop": loop}


def jpeg(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_dataset(root: Path, layout: str, good: int = 40, shards: int = 2, extra_column: bool = True) -> dict:
    """Write metadata.csv and images in `layout`; return what ingest should produce."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    images: dict[str, bytes] = {}
    rows = []
    for i in range(good):
        image_id = f"{i % 3:02d}/{i:06d}.jpg"
        images[image_id] = jpeg(i)
        rows.append([image_id, f"{rng.uniform(-80, 80):.6f}", f"{rng.uniform(-179, 179):.6f}", f"place {i}"])
    good_ids = [r[0] for r in rows]
    rows.insert(5, ["", "1", "1", "no id"])  # missing id
    rows.append([good_ids[3], "0", "0", "second copy"])  # duplicate id: the first is kept
    for image_id, (lat, lon, condition, _) in BAD_RECORDS.items():
        rows.append([image_id, lat, lon, condition])
        if condition == "image ok":
            images[image_id] = jpeg(hash(image_id) % 1000)
        elif condition == "corrupt":
            images[image_id] = b"this is not an image at all"
        elif condition == "truncated":
            images[image_id] = jpeg(99, size=64)[:300]
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["IMG_ID", "LAT", "LON"] + (["city"] if extra_column else []))
        for row in rows:
            writer.writerow(row if extra_column else row[:3])
    names = sorted(images)
    if layout == "folder":
        for name, data in images.items():
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "images" / name).write_bytes(data)
        location = str(root / "images")
    elif layout == "tar":
        (root / "shards").mkdir(exist_ok=True)
        for s in range(shards):
            with tarfile.open(root / "shards" / f"part-{s:03d}.tar", "w") as archive:
                for name in names[s::shards]:
                    info = tarfile.TarInfo(name)
                    info.size = len(images[name])
                    archive.addfile(info, io.BytesIO(images[name]))
        with tarfile.open(root / "shards" / f"part-{shards:03d}.tar", "w"):
            pass  # an empty archive
        location = str(root / "shards" / "*.tar")
    elif layout == "msgpack":
        (root / "shards").mkdir(exist_ok=True)
        for s in range(shards):
            with open(root / "shards" / f"mp16-{s:03d}.msg", "wb") as handle:
                for name in names[s::shards]:
                    handle.write(msgpack.packb({"id": name, "image": images[name]}, use_bin_type=True))
        (root / "shards" / f"mp16-{shards:03d}.msg").write_bytes(b"")  # an empty shard
        location = str(root / "shards" / "*.msg")
    else:
        raise ValueError(layout)
    return {
        "metadata": str(root / "metadata.csv"),
        "images": location,
        "good_ids": good_ids,
        "good_bytes": {i: images[i] for i in good_ids},
    }
