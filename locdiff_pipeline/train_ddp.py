"""Train the LocDiff model on several GPUs (or CPU processes) with PyTorch DDP, from the warehouse.

    torchrun --nproc_per_node=4 -m locdiff_pipeline.train_ddp --L 20 --steps 200000 --batch-size 1024
    dagster asset materialize --select 'predictions,accuracy_report' -m locdiff_pipeline.definitions

Run from the project root after the upstream assets exist (images, clip_embeddings, shdd_tables). The
run is logged and registered in MLflow exactly like the `locdiff_model` asset's, and recorded as the
latest model, so the downstream assets pick it up. The batch size is per process.
"""

from __future__ import annotations

import argparse

from locdiff_pipeline import distributed, shards
from locdiff_pipeline.embedding_table import EMBEDDINGS_TABLE
from locdiff_pipeline.resources import DatasetResource, TrainingResource, WarehouseResource
from locdiff_pipeline.train_step import train_and_register, write_latest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=DatasetResource().name)
    parser.add_argument("--L", type=int, default=TrainingResource().L)
    parser.add_argument("--steps", type=int, default=TrainingResource().steps)
    parser.add_argument("--batch-size", type=int, default=TrainingResource().batch_size)
    parser.add_argument("--hidden", type=int, nargs="+", default=TrainingResource().hidden_dims)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--force", action="store_true", help="train even if a finished run of the same inputs exists")
    args = parser.parse_args(argv)
    store = WarehouseResource().get()
    manifest = shards.manifest(store, EMBEDDINGS_TABLE, args.dataset)
    if manifest is None:
        raise SystemExit(f"no embeddings for dataset {args.dataset!r} under {store.root}: materialize images, clip_embeddings and shdd_tables first")
    training = TrainingResource(L=args.L, steps=args.steps, batch_size=args.batch_size, hidden_dims=args.hidden, device=args.device)
    trained = train_and_register(store, args.dataset, training.config(manifest["encoder"]["embed_dim"]), force=args.force)
    world = distributed.current_world()
    if world.is_main and trained is not None:
        write_latest(store, trained)
        print(f"locdiff v{trained.version} (run {trained.run_id}), {world.size} process(es), validation {trained.validation}")
    distributed.barrier(world)


if __name__ == "__main__":
    main()
