"""`dagster asset materialize` headless, as the README documents it: the metadata split, then every
shard as its own run, launched at once (what a backfill does), each with Dagster's multiprocess
executor. The tables must equal those of one single-process run of the same configuration (the session's
`locdiff run` of dagster_ui.SMALL)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from dagster_ui import SMALL

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.warehouse import Warehouse

REPOSITORY = Path(__file__).resolve().parents[1]


def _cli(project: Path, *arguments: str) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(project / ".dagster_home"), "LOCDIFF_HOME": str(project), **SMALL}
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", *arguments, "-m", "locdiff_pipeline.definitions"]
    return subprocess.Popen(
        command, cwd=REPOSITORY, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return output


def _sorted(warehouse: Warehouse, table: str, **keys) -> pa.Table:
    data = shards.read(warehouse, table, "bluemarble", **keys)
    data = data.drop_columns(
        [c for c in ("source",) if c in data.column_names]
    )  # absolute paths differ between the two projects
    order = (
        [("image_id", "ascending")]
        + ([("view", "ascending")] if "view" in data.column_names else [])
        + ([("row", "ascending")] if table == "rejected" else [])
    )
    return data.sort_by(order)


def test_shards_run_in_parallel_with_the_multiprocess_executor_and_equal_one_single_process_run(tmp_path, small_run):
    parallel = tmp_path / "parallel"
    (parallel / ".dagster_home").mkdir(parents=True)
    _finish(_cli(parallel, "--select", "image_metadata"))
    keys = shards.dataset_shards(Warehouse(parallel / "warehouse"), "bluemarble")
    assert len(keys) > 1
    launched = [
        _cli(parallel, "--select", "images,image_embeddings,shdd_tables", "--partition", key) for key in keys
    ]  # all at once
    outputs = [_finish(process) for process in launched]
    assert all("multiprocess executor" in output and "RUN_SUCCESS" in output for output in outputs)
    for output in outputs:  # each shard's run checked its own shard, concurrently with the others
        verdicts = re.findall(r"Asset check '(\w+)' on '\w+' (passed|failed)", output)
        assert len(verdicts) == 7 and all(verdict == "passed" for _, verdict in verdicts), verdicts  # 3 + 2 + 2

    one, many = Warehouse(small_run / "warehouse"), Warehouse(parallel / "warehouse")
    assert shards.dataset_shards(one, "bluemarble") == keys
    assert 0 < _sorted(many, "images").num_rows == _sorted(one, "images").num_rows
    assert _sorted(many, "images").num_rows <= int(SMALL["LOCDIFF_BUNDLED_COUNT"]) + int(
        SMALL["LOCDIFF_BUNDLED_GALLERY_COUNT"]
    )
    for table, keys_of_table in (("images", {}), ("rejected", {}), ("shdd", {"L": 10}), ("shdd", {"L": 40})):
        assert _sorted(many, table, **keys_of_table).equals(_sorted(one, table, **keys_of_table)), table
    expected, actual = _sorted(one, "embeddings"), _sorted(many, "embeddings")
    assert actual.drop_columns(["embedding"]).equals(expected.drop_columns(["embedding"]))
    vectors = [np.stack(t["embedding"].to_numpy(zero_copy_only=False)) for t in (expected, actual)]
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-5)  # same encoder, same seeded views
