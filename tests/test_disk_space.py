"""A full disk, whatever library hits it, reads as one line naming the disk and what was being written, and
leaves nothing half-written (data/disk_space.py). The disk is a real one: a 1 MiB tmpfs, mounted where the
test may (root on Linux, as in CI's container); elsewhere the test skips, saying so."""

from __future__ import annotations

import subprocess

import pyarrow as pa
import pytest
import torch

from locdiff_pipeline.data import bundled
from locdiff_pipeline.data.disk_space import DiskFullError, writing
from locdiff_pipeline.data.warehouse import Warehouse


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:200]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_torchs_own_words_for_a_full_disk_become_one_line(full_disk):
    target = full_disk / "checkpoint" / "weights.pt"
    target.parent.mkdir()
    with pytest.raises(DiskFullError) as raised:
        with writing(target.parent, "the training checkpoint"):
            torch.save(torch.zeros(1 << 20), target)  # 4 MiB into 1 MiB
    message = str(raised.value)
    assert f"no space left on {full_disk}" in message and "while writing the training checkpoint" in message
    assert "\n" not in message and "inline_container" not in message
    assert isinstance(raised.value.__cause__, RuntimeError)  # torch's error, kept as the cause


def test_a_rendering_that_fills_the_disk_leaves_no_folder(full_disk):
    root = full_disk / "sources" / "bluemarble_heldout-test"
    with pytest.raises(DiskFullError, match="while writing the rendered bluemarble_heldout images"):
        bundled.write_bundled_dataset(root, "bluemarble_heldout", bundled.BundledRecipe(benchmark_count=640))
    assert list((full_disk / "sources").iterdir()) == []  # neither the folder nor its staging


def test_a_table_that_fills_the_disk_leaves_no_partition(full_disk):
    warehouse = Warehouse(full_disk / "warehouse")
    noise = pa.table({"x": pa.array(torch.rand(1 << 19).numpy())})  # 4 MiB of incompressible floats
    with pytest.raises(DiskFullError, match="while writing the embeddings table, dataset=mine"):
        with warehouse.write_partition("embeddings", {"fingerprint": "f"}, dataset="mine") as writer:
            writer.write(noise)
    assert not warehouse.partition_dir("embeddings", dataset="mine").exists()


def test_other_failures_pass_through_untouched(tmp_path):
    with pytest.raises(ValueError, match="not about space"):
        with writing(tmp_path, "anything"):
            raise ValueError("not about space")


def test_a_full_disk_in_a_step_is_the_one_line_locdiff_run_prints(full_disk):
    """Through Dagster: the step's failure, as `locdiff run` reports it, is the full-disk line, not the
    writing library's own words (GraphRun.failures stops at the user code's error)."""
    from dagster import materialize

    from locdiff_pipeline.defs.assets.ingest import image_metadata
    from locdiff_pipeline.defs.graph_run import GraphRun
    from locdiff_pipeline.defs.resources import DatasetsResource, WarehouseResource

    result = materialize(
        [image_metadata],
        resources={
            "warehouse": WarehouseResource(root=str(full_disk / "warehouse")),
            "datasets": DatasetsResource(bundled_count=160, bundled_gallery_count=500, bundled_benchmark_count=12),
        },
        raise_on_error=False,
    )
    ((step, said),) = GraphRun([result]).failures()
    assert step == "image_metadata" and f": no space left on {full_disk} (" in said, said
    assert "while writing the rendered" in said and "\n" not in said and "Errno" not in said
