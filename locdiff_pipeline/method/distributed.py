"""Data-parallel training across processes (PyTorch DDP), started by `torchrun`.

`torchrun --nproc_per_node=N -m locdiff_pipeline.train_ddp ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
each process then trains on its own GPU (NCCL) or CPU cores (gloo) with its own batches, DDP averages
the gradients, and only rank 0 evaluates, checkpoints, logs and registers. Outside torchrun every
function here describes a world of one, so the same training code runs either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The process's place in a torchrun launch (a world of one when not launched by torchrun)."""
    return World(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(net: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module to train: DDP-wrapped in a distributed world, else the module itself."""
    if not world.distributed:
        return net
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()


def broadcast_from_main(value, world: World):
    """Rank 0's value on every rank (a picklable object), so all ranks take the same branch."""
    if not world.distributed:
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]
