"""The dataset catalog: one training dataset and its benchmarks, from YAML or inline, with names that
are safe as folders, partition keys and SQL values."""

from __future__ import annotations

import pytest
import yaml

from locdiff_pipeline.data import bundled
from locdiff_pipeline.data.catalog import BUNDLED_CATALOG, load_catalog
from locdiff_pipeline.data.datasets import DatasetSpec


def test_without_a_catalog_the_bundled_datasets_are_used():
    catalog = load_catalog()
    assert catalog == BUNDLED_CATALOG
    assert catalog.training.name == bundled.BUNDLED and catalog.benchmark_names == [bundled.HELDOUT, bundled.SHIFTED]


def test_a_yaml_catalog_names_training_and_benchmarks_with_presets(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "training": {
                    "name": "mp16",
                    "preset": "mp16",
                    "metadata_csv": "/d/mp16.csv",
                    "images": "/d/*.tar",
                    "layout": "tar",
                },
                "benchmarks": [
                    {"name": "im2gps3k", "preset": "im2gps3k", "metadata_csv": "/d/im.csv", "images": "/d/im"},
                    {"name": "osv5m", "preset": "osv5m", "metadata_csv": "/d/test.csv", "images": "/d/osv"},
                ],
            }
        )
    )
    catalog = load_catalog(path)
    assert catalog.benchmark_names == ["im2gps3k", "osv5m"]
    osv = catalog.benchmark("osv5m").spec(None, bundled.BundledRecipe(), benchmark=True)
    assert (osv.id_column, osv.lat_column, osv.default_split, osv.image_suffix) == ("id", "latitude", "test", ".jpg")
    training = catalog.training.spec(None, bundled.BundledRecipe())
    assert (training.layout, training.store_bytes, training.default_split) == ("tar", False, "train")
    inline = load_catalog(path, benchmarks=[{"name": "yfcc4k", "preset": "yfcc4k", "metadata_csv": "a", "images": "b"}])
    assert inline.training.name == "mp16" and inline.benchmark_names == ["yfcc4k"]


@pytest.mark.parametrize("name", ["x'; COPY (SELECT 1) TO 'INJ.csv'; --", "a/b", "a=b", "", "..", "naïve"])
def test_a_name_that_is_not_a_plain_word_is_refused(name):
    with pytest.raises(ValueError, match="dataset name must be letters"):
        load_catalog(training={"name": name, "metadata_csv": "a.csv", "images": "b"})
    with pytest.raises(ValueError, match="dataset name must be letters"):
        DatasetSpec(name, "a.csv", "b")


def test_mistakes_in_a_catalog_are_named(tmp_path):
    with pytest.raises(ValueError, match="repeated: \\['twice'\\]"):
        load_catalog(
            training={"name": "twice", "metadata_csv": "a", "images": "b"},
            benchmarks=[{"name": "twice", "metadata_csv": "a", "images": "b"}],
        )
    with pytest.raises(ValueError, match="unknown keys \\['lat'\\]"):
        load_catalog(training={"name": "t", "metadata_csv": "a", "images": "b", "lat": "LAT"})
    with pytest.raises(ValueError, match="needs metadata_csv and images"):
        load_catalog(training={"name": "t"})
    with pytest.raises(ValueError, match="imagery must be one of"):
        load_catalog(training={"name": "t", "metadata_csv": "a", "images": "b", "imagery": "aerial"})
    with pytest.raises(FileNotFoundError, match="catalog not found"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(KeyError, match="not a benchmark"):
        load_catalog().benchmark("nope")


def test_a_benchmark_without_a_preset_holds_test_images():
    catalog = load_catalog(
        training={"name": "mine", "metadata_csv": "a.csv", "images": "i"},
        benchmarks=[{"name": "theirs", "metadata_csv": "b.csv", "images": "j"}],
    )
    training, benchmark = catalog.specs(None, bundled.BundledRecipe())
    assert (training.default_split, benchmark.default_split) == ("train", "test")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training:\n  name: a\n  name: b\n", r"line 3, column 3: duplicate key 'name' \(first at line 2\)"),
        ("training: {name: a\nbenchmarks: []\n", r"line 2, column 11: expected ',' or '}'"),
        ("training: {name: a, metadata_csv: m.csv, images: i, val_share: abc}\n", "val_share must be a number"),
        ("training: {name: a, metadata_csv: m.csv, images: i, store_bytes: maybe}\n", "store_bytes must be true"),
        ("training: {name: a, metadata_csv: [m.csv], images: i}\n", "metadata_csv must be text"),
    ],
)
def test_a_yaml_mistake_is_named_with_its_line_and_nothing_wins_silently(tmp_path, text, message):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_catalog(catalog)


def test_locdiff_run_checks_the_catalog_and_each_csv_header_before_anything_runs(tmp_path, monkeypatch, capsys):
    from locdiff_pipeline.cli import main

    monkeypatch.setenv("LOCDIFF_HOME", str(tmp_path / "project"))
    metadata = tmp_path / "meta.csv"
    metadata.write_text("IMG_ID,LATITUDE,LON\na.jpg,1,2\n")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"training: {{name: mine, preset: mp16, metadata_csv: {metadata}, images: {tmp_path}}}\n")
    assert main(["run", "--catalog", str(catalog)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "column 'LAT' not in its header row (3 columns" in error, error
    assert not (tmp_path / "project").exists()  # checked before the lock or any write


def test_a_run_that_fails_on_its_input_ends_in_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """A training CSV with a header and no rows: the run stops at its first step, and the last line says
    which file and why (the run log above it keeps the details)."""
    from locdiff_pipeline.cli import main

    monkeypatch.setenv("LOCDIFF_HOME", str(tmp_path / "project"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "images").mkdir()
    metadata = tmp_path / "meta.csv"
    metadata.write_text("IMG_ID,LAT,LON\n")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"training: {{name: mine, metadata_csv: {metadata}, images: {tmp_path / 'images'}}}\n")
    assert main(["run", "--catalog", str(catalog)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"locdiff run: error: image_metadata: {metadata}: dataset 'mine' has a header and no rows"
