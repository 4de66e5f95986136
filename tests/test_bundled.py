"""The bundled datasets: training windows and benchmark windows share no map pixel, checked from the
window columns every metadata CSV carries (as anyone can recompute them)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from locdiff_pipeline.data import bundled
from locdiff_pipeline.method import sphere

RECIPE = bundled.BundledRecipe()  # the default the README's run uses


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundled")
    out = {}
    for name in bundled.DATASETS:
        metadata = bundled.write_bundled_dataset(root / name, name, RECIPE)
        with open(metadata, newline="") as handle:
            out[name] = (root / name, list(csv.DictReader(handle)))
    return out


def _footprint(rows: list[dict]) -> np.ndarray:
    """Every map pixel any of the windows covers (columns wrap around the antimeridian)."""
    mask = np.zeros((bundled.MAP_HEIGHT, bundled.MAP_WIDTH), dtype=bool)
    for r in rows:
        row, col, side = int(r["window_row"]), int(r["window_col"]), int(r["window_px"])
        mask[row : row + side, np.arange(col, col + side) % bundled.MAP_WIDTH] = True
    return mask


def test_no_benchmark_window_shares_a_pixel_with_training_and_validation_shares_none_with_training(written):
    _, training = written[bundled.BUNDLED]
    train = _footprint([r for r in training if r["split"] == "train"])
    val = _footprint([r for r in training if r["split"] == "val"])
    assert train.any() and val.any()
    assert not (train & val).any()
    for benchmark in (bundled.HELDOUT, bundled.SHIFTED):
        _, rows = written[benchmark]
        assert {r["split"] for r in rows} == {"test"}
        assert not (_footprint(rows) & (train | val)).any(), benchmark


def test_benchmark_locations_are_held_out_mp16_locations_and_both_benchmarks_share_them(written):
    _, training = written[bundled.BUNDLED]
    _, heldout = written[bundled.HELDOUT]
    _, shifted = written[bundled.SHIFTED]
    assert not {r["mp16_source_row"] for r in heldout} & {r["mp16_source_row"] for r in training}
    key = ("LAT", "LON", "window_row", "window_col", "window_px")
    assert [tuple(r[k] for k in key) for r in heldout] == [tuple(r[k] for k in key) for r in shifted]
    assert {r["source_map"] for r in heldout} == {"bmng.jpg"} and {r["source_map"] for r in shifted} == {"etopo1.jpg"}
    counts = {s: sum(r["split"] == s for r in training) for s in ("train", "val")}
    assert counts["train"] > 15000 and counts["val"] == RECIPE.val_count


def _region_shares(rows: list[dict]) -> np.ndarray:
    lat, lon = np.array([float(r["LAT"]) for r in rows]), np.array([float(r["LON"]) for r in rows])
    _, counts = np.unique(sphere.region_of(lat, lon, RECIPE.region_deg), return_counts=True)
    return counts / len(rows)


def test_the_benchmark_and_validation_span_many_regions_none_of_which_decides(written):
    """At least 600 images in at least 60 regions, none holding more than 5 % of them: a ranking on it rests
    on many places, not on a few cities."""
    _, heldout = written[bundled.HELDOUT]
    _, training = written[bundled.BUNDLED]
    for rows in (heldout, [r for r in training if r["split"] == "val"]):
        shares = _region_shares(rows)
        assert len(rows) >= 600 and len(shares) >= 60 and shares.max() <= 0.05, (len(rows), len(shares), shares.max())


def test_a_small_benchmark_still_spans_its_count_of_regions():
    small = bundled.BundledRecipe(count=300, gallery_count=300, benchmark_count=15)  # 5 % of 600: 30 val
    windows = bundled.layout(small)
    assert len(windows["benchmark"]) == 15 and len(_region_shares_of(windows["benchmark"])) == 15
    validation = windows["training"].take(windows["training"].split == "val")
    assert 20 <= len(validation) == len(_region_shares_of(validation))  # 5 % of the training locations


def _region_shares_of(windows: bundled.Windows) -> np.ndarray:
    _, counts = np.unique(sphere.region_of(windows.lat, windows.lon), return_counts=True)
    return counts / len(windows)


def test_the_benchmark_does_not_move_with_the_training_sample_or_the_gallery():
    """The benchmark depends on the held-out pool alone: the training data's size never changes it."""
    other = bundled.BundledRecipe(count=1000, gallery_count=5000)
    ours, theirs = bundled.layout(RECIPE)["benchmark"], bundled.layout(other)["benchmark"]
    assert np.array_equal(ours.source_row, theirs.source_row) and np.array_equal(ours.row, theirs.row)


def test_an_image_is_its_recorded_window_of_its_map(written):
    folder, rows = written[bundled.SHIFTED]
    with Image.open(bundled.ETOPO) as image:
        world = np.asarray(image.convert("RGB"))
    for r in rows[:5]:
        expected = bundled.render(
            world, int(r["window_row"]), int(r["window_col"]), int(r["window_px"]), RECIPE.image_px
        )
        with Image.open(folder / "images" / r["IMG_ID"]) as image:
            stored = np.asarray(image.convert("RGB"), dtype=float)
        assert np.abs(stored - np.asarray(expected, dtype=float)).mean() < 4  # JPEG noise only


def test_windows_are_near_their_location():
    windows = bundled.layout(RECIPE)["benchmark"]
    per_deg = bundled.MAP_WIDTH / 360
    centre_lat = 90 - (windows.row + windows.side / 2) / per_deg
    centre_lon = (windows.col + windows.side / 2) / per_deg - 180
    d_lon = (centre_lon - windows.lon + 180) % 360 - 180
    assert np.abs(centre_lat - windows.lat).max() <= RECIPE.jitter_deg + 0.2
    assert np.abs(d_lon).max() <= RECIPE.jitter_deg + 0.2
