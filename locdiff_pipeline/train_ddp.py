"""Train the LocDiff model on several GPUs (or CPU processes) with PyTorch DDP, from the warehouse.

    torchrun --nproc_per_node=4 -m locdiff_pipeline.train_ddp --L 20 --steps 200000 --batch-size 1024
    dagster asset materialize --select 'predictions,accuracy_report' -m locdiff_pipeline.definitions

Run from the project root after the upstream assets exist (images, image_embeddings, shdd_tables). The
run is logged and registered in MLflow exactly like the `locdiff_model` asset's, and recorded as the
latest model, so the downstream assets pick it up. The batch size is per process. Defaults come from
LocDiffConfig; nothing here imports Dagster.
"""

from __future__ import annotations

import argparse

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.bundled import BUNDLED
from locdiff_pipeline.data.paths import warehouse_dir
from locdiff_pipeline.data.training_stream import LOADINGS
from locdiff_pipeline.data.warehouse import Warehouse
from locdiff_pipeline.method import distributed
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE
from locdiff_pipeline.steps.locdiff_model import train_and_register, write_latest


def main(argv: list[str] | None = None) -> None:
    defaults = LocDiffConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=BUNDLED)
    parser.add_argument("--L", type=int, default=defaults.L)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--hidden", type=int, nargs="+", default=list(defaults.hidden_dims))
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--force", action="store_true", help="train even if a finished run of the same inputs exists")
    parser.add_argument(
        "--encoder-checkpoint",
        help="the pretrained encoder's weights the embeddings came from, logged so the served model embeds images",
    )
    parser.add_argument(
        "--loading",
        choices=LOADINGS,
        default="auto",
        help="stream the training rows from the embeddings' part files (each rank its own files), load them "
        "into memory, or stream when they would not fit in a few GB (auto)",
    )
    args = parser.parse_args(argv)
    store = Warehouse(warehouse_dir())
    manifest = shards.manifest(store, EMBEDDINGS_TABLE, args.dataset)
    if manifest is None:
        raise SystemExit(
            f"no embeddings for dataset {args.dataset!r} under {store.root}: materialize images, "
            f"image_embeddings and shdd_tables first"
        )
    config = LocDiffConfig(
        L=args.L,
        steps=args.steps,
        batch_size=args.batch_size,
        hidden_dims=tuple(args.hidden),
        device=args.device,
        embed_dim=manifest["encoder"]["embed_dim"],
    )
    trained = train_and_register(
        store,
        args.dataset,
        config,
        force=args.force,
        encoder_checkpoint=args.encoder_checkpoint,
        loading=args.loading,
    )
    world = distributed.current_world()
    if world.is_main and trained is not None:
        write_latest(store, trained, args.dataset)
        print(
            f"locdiff v{trained.version} (run {trained.run_id}), {world.size} process(es), validation "
            f"{trained.validation}"
        )
    distributed.barrier(world)


if __name__ == "__main__":
    main()
