"""DDP training under a real `torchrun` (gloo on CPU): ranks stay in sync, rank 0 alone checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from locdiff_pipeline.data.bundled import BUNDLED
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method.distributed import current_world
from locdiff_pipeline.steps.locdiff_model import read_latest

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from conftest import clustered_problem
    from locdiff_pipeline.method import shdd
    from locdiff_pipeline.method.config import LocDiffConfig
    from locdiff_pipeline.method.training import Validation, train
    from locdiff_pipeline.method.distributed import current_world

    out = sys.argv[1]
    lat, lon, features = clustered_problem(n=1200, dim=32, seed=5)
    config = LocDiffConfig(L=6, embed_dim=32, hidden_dims=(64, 32), time_dim=16, batch_size=64, anchors_per_step=256,
                           timesteps=50, sample_steps=5, steps=40, checkpoint_every=20, eval_every=40, device="cpu")
    validation = Validation(features[1000:], lat[1000:], lon[1000:])
    result = train(config, features[:1000], shdd.encode(lat[:1000], lon[:1000], 6).astype(np.float32),
                   checkpoint_dir=os.path.join(out, "ckpt"), validation=validation, log_every=10)
    weights = b"".join(v.detach().numpy().tobytes() for v in result.model.net.state_dict().values())
    digest = hashlib.sha256(weights).hexdigest()
    world = current_world()
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as handle:
        record = {"digest": digest, "world": world.size, "validation": result.validation}
        record["history"] = len(result.history)
        json.dump(record, handle)
    """
)


def test_a_world_of_one_outside_torchrun():
    world = current_world()
    assert (world.rank, world.size, world.is_main, world.distributed) == (0, 1, True, False)


def test_torchrun_two_processes_train_in_sync(tmp_path):
    tests = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(_write(tmp_path)),
            str(tmp_path),
            str(tests),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]  # DDP kept the replicas identical
    assert ranks[0]["validation"] is not None and ranks[1]["validation"] is None  # rank 0 alone evaluates
    assert ranks[0]["history"] > 0 and ranks[1]["history"] > 0
    assert (tmp_path / "ckpt" / "model" / "weights.pt").is_file() and (tmp_path / "ckpt" / "train_state.pt").is_file()


def _split(root: Path) -> list[str]:
    import pyarrow.dataset as ds

    return (
        ds.dataset(str(root / "warehouse" / "images" / f"dataset={BUNDLED}"), format="parquet")
        .to_table()["split"]
        .to_pylist()
    )


def _write(folder: Path) -> Path:
    script = folder / "ddp_worker.py"
    script.write_text(WORKER)
    return script


def test_the_documented_torchrun_command_trains_logs_and_registers(tmp_path):
    """`torchrun -m locdiff_pipeline.train_ddp --loading stream` over a materialized warehouse: the ranks
    stream disjoint part files; one MLflow run, one registered version, latest.json downstream."""
    from locdiff_pipeline.defs.assets import SHARDED_ASSETS
    from locdiff_pipeline.defs.assets.ingest import image_metadata
    from locdiff_pipeline.defs.graph_run import materialize_all
    from locdiff_pipeline.defs.resources import DatasetsResource, EncoderResource, TrainingResource, WarehouseResource
    from locdiff_pipeline.tracking import registry

    resources = {
        "warehouse": WarehouseResource(root=str(tmp_path)),
        "datasets": DatasetsResource(bundled_count=150, bundled_gallery_count=100, bundled_benchmark_count=20),
        "encoder": EncoderResource(model_name="locdiff-tiny-vit", test_views=2),
        "training": TrainingResource(L=4, shdd_degrees=[4]),
    }
    assert materialize_all(resources, selection=[image_metadata, *SHARDED_ASSETS]).success
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOCDIFF_HOME": str(tmp_path)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "locdiff_pipeline.train_ddp",
        "--L",
        "4",
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--hidden",
        "32",
        "16",
        "--device",
        "cpu",
        "--loading",
        "stream",  # each rank reads its own part files of the embeddings table
    ]
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "locdiff v1" in completed.stdout and "2 process(es)" in completed.stdout
    latest = read_latest(Warehouse(tmp_path / "warehouse"))
    assert latest["version"] == 1 and Path(latest["checkpoint"], "weights.pt").is_file()
    import mlflow

    registry.configure(root=tmp_path)
    versions = mlflow.MlflowClient().search_model_versions(f"name='{registry.REGISTERED_MODEL}'")
    assert [int(v.version) for v in versions] == [1]
    run = mlflow.get_run(latest["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["L"] == "4"
    assert run.data.params["training_data"] == "streamed from the embeddings' part files"
    assert run.data.params["train_rows"] == str(sum(1 for i in _split(tmp_path) if i == "train"))
