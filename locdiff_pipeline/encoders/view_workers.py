"""Image decoding and view making in worker processes, a batch ahead of the encoder.

Why: on a GPU a ViT's forward pass takes a fraction of a millisecond per image, less than decoding a photo
and cropping, jittering and normalising its views; done one image at a time in the main process, the GPU
waits. (On a 2-core CPU the forward pass costs ten times the decoding and takes every core, so there the
default is no workers: `benchmarks/bench_embedding.py`.) Workers are spawned, fresh interpreters with one
torch thread each: a worker forked from this process (many threads: torch's OpenMP team, arrow's pool, the
SHDD table's workers) can inherit a lock some other thread held at the fork and wait on it for ever, which
hung a CI run; the view maker (transforms only) is pickled to each worker once. They read the image (bytes
or a reference into a file, tar or msgpack shard), decode it with the project's guarded decoder and send
back the views' pixels as arrays through the pool's pipe (not shared memory, which containers often cap at
64 MB; the copy costs little beside decoding). A view is seeded by its image's key, so the embeddings are
identical with any number of workers, including none (everything in this process).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from locdiff_pipeline import settings
from locdiff_pipeline.data.image_io import decode_image
from locdiff_pipeline.data.image_sources import read_reference
from locdiff_pipeline.encoders.compat import prepare_torchvision
from locdiff_pipeline.encoders.image_encoder import ViewMaker


@dataclass(frozen=True)
class ViewJob:
    """One image to decode and view: its bytes, or the reference to read them from."""

    image_id: str
    image_bytes: bytes | None
    source: str | None
    views: int
    imagery: str


def default_workers(device: str = "cpu") -> int:
    """$LOCDIFF_DECODE_WORKERS, else for an encoder on a GPU one per core but one (at most 8), and none for
    an encoder on the CPU, whose forward pass already takes every core (measured on 2 cores: workers
    gained nothing there, benchmarks/bench_embedding.py)."""
    configured = settings.current().decode_workers
    if configured is not None:
        return configured
    if torch.device(device).type == "cpu":
        return 0
    return min(8, max(1, (os.cpu_count() or 1) - 1))


def make_views(maker: ViewMaker, job: ViewJob) -> torch.Tensor:
    """(views, 3, H, W) pixels of one image: read, decode (ImageDecodeError naming the image), view."""
    payload = job.image_bytes or read_reference(job.source)
    image = decode_image(payload, job.image_id)
    return torch.stack(maker(image, job.image_id, job.views, job.imagery))


_MAKER: ViewMaker | None = None


def _start_worker(pickled_maker: bytes) -> None:
    """A spawned worker's start: torchvision made importable on the CPU build of torch before the maker's
    transforms are unpickled (they import it)."""
    global _MAKER
    prepare_torchvision()
    _MAKER = pickle.loads(pickled_maker)
    torch.set_num_threads(1)  # as DataLoader workers: the cores are shared


def _worker_views(job: ViewJob) -> np.ndarray:
    return make_views(_MAKER, job).numpy()


class _Done:
    """An in-process result, with the pool result's get()."""

    def __init__(self, value: list[torch.Tensor]):
        self.value = value

    def get(self) -> list[torch.Tensor]:
        return self.value


class _FromPool:
    def __init__(self, result):
        self.result = result

    def get(self) -> list[torch.Tensor]:
        return [torch.from_numpy(pixels) for pixels in self.result.get()]


class ViewWorkers:
    """A pool of spawned view makers (or none: workers=0). `submit` returns at once with a handle whose
    get() gives each job's pixels in job order (or raises the first job's error), so the caller embeds
    one batch while the next decodes. Use as a context manager: the pool ends with the block."""

    def __init__(self, maker: ViewMaker, workers: int | None = None, device: str = "cpu"):
        self.maker = maker
        self.workers = default_workers(device) if workers is None else workers
        self._pool = None

    def __enter__(self) -> ViewWorkers:
        if self.workers > 0:
            context = multiprocessing.get_context("spawn")  # never fork a multi-threaded process (module doc)
            self._pool = context.Pool(self.workers, initializer=_start_worker, initargs=(pickle.dumps(self.maker),))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def submit(self, jobs: Sequence[ViewJob]):
        if self._pool is None:
            return _Done([make_views(self.maker, job) for job in jobs])
        chunk = max(1, len(jobs) // (4 * self.workers))
        return _FromPool(self._pool.map_async(_worker_views, jobs, chunksize=chunk))
