"""Training rows streamed from the embeddings table's Parquet part files, in bounded memory.

Why: at MP16 scale the training embeddings alone are tens of GB; loading them (and their SHDD rows)
before the first step does not fit a GPU node's memory. The stream holds at most a few windows of rows.

The randomness, documented because it is not a uniform shuffle of the whole dataset:
- the unit of reading is one part file (a few hundred images); part files are split between DDP ranks
  once, disjointly and balanced by row count, so every training row belongs to exactly one rank;
- each epoch a rank visits its part files in a fresh random order (seeded by seed, rank, epoch) and
  groups them into consecutive windows of at least `buffer_rows` rows; the rows of a window are
  shuffled together (seeded by seed, rank, epoch, window). A batch therefore mixes rows of several part
  files from different shards, and every row of the rank is seen exactly once per epoch;
- batches are consecutive slices of the endless sequence epoch 0, epoch 1, ..., so batch k is a pure
  function of (files, seed, rank, batch size, buffer): a resumed run finds its place by arithmetic and
  continues exactly as the uninterrupted run would have.
Memory: the window being read, the window waiting in the prefetch queue and the window being sliced,
i.e. about 3 x buffer_rows rows, whatever the dataset's size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from locdiff_pipeline.method.distributed import World

DEFAULT_BUFFER_ROWS = 32768
READ_COLUMNS = ["split", "view", "lat", "lon", "embedding"]


@dataclass(frozen=True)
class Part:
    """One part file and how many training rows (plain view of the split) it holds."""

    path: Path
    rows: int


@dataclass
class Batch:
    row: np.ndarray  # int64 (part number << 32) + training row within the part: EmbeddingStream.image_ids names it
    embedding: np.ndarray  # (B, D) float32
    lat: np.ndarray  # (B,) float64
    lon: np.ndarray


def _training_mask(table, split: str):
    return pc.and_(pc.equal(table["split"], split), pc.equal(table["view"], 0))


def count_parts(files: list[Path], split: str = "train") -> list[Part]:
    """Each file's rows of `split` (plain view), reading only the two small columns that decide it."""
    parts = []
    for path in files:
        table = pq.read_table(path, columns=["split", "view"])
        parts.append(Part(Path(path), int(pc.sum(_training_mask(table, split)).as_py() or 0)))
    return parts


def assign_parts(parts: list[Part], world: World) -> list[Part]:
    """This rank's part files: a disjoint, row-balanced split of every part that holds rows (largest part
    first to the least loaded rank; ties by rank), the same on every rank."""
    holding = sorted((p for p in parts if p.rows), key=lambda p: (-p.rows, str(p.path)))
    if len(holding) < world.size:
        raise ValueError(
            f"{world.size} ranks but only {len(holding)} part files hold training rows: every rank needs at "
            f"least one (write more shards, or train on fewer processes)"
        )
    loads = [0] * world.size
    mine: list[Part] = []
    for part in holding:
        rank = min(range(world.size), key=lambda r: (loads[r], r))
        loads[rank] += part.rows
        if rank == world.rank:
            mine.append(part)
    return sorted(mine, key=lambda p: str(p.path))


def read_part(part: Part, split: str = "train", number: int = 0) -> Batch:
    """The training rows of one part file, in file order; `number` (the part's place in the stream's list)
    goes into each row's key. No Python object per row: the reader thread holds the GIL as little as it can."""
    table = pq.read_table(part.path, columns=READ_COLUMNS)
    table = table.filter(_training_mask(table, split))
    if table.num_rows != part.rows:
        raise ValueError(f"{part.path} changed while training: {table.num_rows} training rows, {part.rows} counted")
    flat = table["embedding"].combine_chunks()
    dim = flat.type.list_size
    return Batch(
        (np.int64(number) << 32) + np.arange(table.num_rows, dtype=np.int64),
        flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False),
        table["lat"].to_numpy(),
        table["lon"].to_numpy(),
    )


def _concat(batches: list[Batch]) -> Batch:
    return Batch(*(np.concatenate([getattr(b, f) for b in batches]) for f in ("row", "embedding", "lat", "lon")))


def _take(batch: Batch, rows: np.ndarray | slice) -> Batch:
    return Batch(batch.row[rows], batch.embedding[rows], batch.lat[rows], batch.lon[rows])


class EmbeddingStream:
    """Endless shuffled batches of (row key, embedding, lat, lon) for one DDP rank; see the module doc."""

    def __init__(
        self,
        files: list[Path],
        *,
        batch_size: int,
        seed: int = 0,
        world: World | None = None,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        split: str = "train",
    ):
        self.world = world or World()
        self.batch_size, self.seed, self.buffer_rows, self.split = batch_size, seed, max(1, buffer_rows), split
        self.all_parts = count_parts(files, split)
        self.parts = assign_parts(self.all_parts, self.world)
        self._number = {part.path: number for number, part in enumerate(self.all_parts)}
        self.rows = sum(p.rows for p in self.parts)
        self.total_rows = sum(p.rows for p in self.all_parts)
        self.rows_held = 0  # rows loaded and not yet released: what bounds memory (tests watch its peak)
        self.peak_rows_held = 0
        self._lock = threading.Lock()

    def windows(self, epoch: int) -> list[list[Part]]:
        """The epoch's windows: the rank's parts in a seeded random order, cut after buffer_rows rows."""
        order = np.random.default_rng((self.seed, self.world.rank, epoch)).permutation(len(self.parts))
        windows, current, held = [], [], 0
        for index in order:
            current.append(self.parts[index])
            held += self.parts[index].rows
            if held >= self.buffer_rows:
                windows.append(current)
                current, held = [], 0
        if current:
            windows.append(current)
        return windows

    def _load_window(self, epoch: int, index: int, window: list[Part]) -> Batch:
        rows = _concat([read_part(p, self.split, self._number[p.path]) for p in window])
        shuffle = np.random.default_rng((self.seed, self.world.rank, epoch, index)).permutation(len(rows.lat))
        self._hold(len(rows.lat))
        return _take(rows, shuffle)

    def _hold(self, rows: int) -> None:
        with self._lock:
            self.rows_held += rows
            self.peak_rows_held = max(self.peak_rows_held, self.rows_held)

    def _windows_from(self, start_row: int) -> Iterator[tuple[Batch, int]]:
        """(window rows, offset to start at) from the row position `start_row` of the endless sequence."""
        epoch, offset = divmod(start_row, self.rows)
        while True:
            for index, window in enumerate(self.windows(epoch)):
                size = sum(p.rows for p in window)
                if offset >= size:
                    offset -= size
                    continue
                yield self._load_window(epoch, index, window), offset
                offset = 0
            epoch += 1

    def batches(self, start_batch: int = 0, prefetch: int = 1) -> Iterator[Batch]:
        """Batches start_batch, start_batch + 1, ... for ever; the next window is read by a background
        thread while the current one is consumed (Parquet decoding releases the GIL)."""
        filled: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()

        def offer(item) -> bool:
            """Queue an item unless the consumer has gone; False when it has."""
            while not stop.is_set():
                try:
                    filled.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self._windows_from(start_batch * self.batch_size):
                    if not offer(item):
                        return
            except BaseException as error:  # handed to the consumer, raised there
                offer((error, 0))

        reader = threading.Thread(target=produce, name="embedding-stream", daemon=True)
        reader.start()
        pending: list[Batch] = []
        pending_rows = 0
        try:
            while True:
                window, offset = filled.get()
                if isinstance(window, BaseException):
                    raise window
                size = len(window.lat)
                if offset:
                    self._release(offset)
                position = offset
                while position < size:
                    take = min(self.batch_size - pending_rows, size - position)
                    pending.append(_take(window, slice(position, position + take)))
                    pending_rows += take
                    position += take
                    if pending_rows == self.batch_size:
                        batch = pending[0] if len(pending) == 1 else _concat(pending)
                        pending, pending_rows = [], 0
                        self._release(self.batch_size)
                        yield batch
                del window
        finally:
            stop.set()

    def _release(self, rows: int) -> None:
        with self._lock:
            self.rows_held -= rows

    def image_ids(self, rows: np.ndarray) -> list[str]:
        """The image ids of row keys from batches (reads the parts they name): for inspection and tests."""
        names: dict[int, list[str]] = {}
        for number in np.unique(np.asarray(rows) >> 32):
            part = self.all_parts[int(number)]
            table = pq.read_table(part.path, columns=["image_id", "split", "view"])
            names[int(number)] = table.filter(_training_mask(table, self.split))["image_id"].to_pylist()
        return [names[int(r >> 32)][int(r & 0xFFFFFFFF)] for r in np.asarray(rows)]

    def condition_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of every training row's embedding (all ranks' parts), accumulated
        one part at a time in float64 (Chan's parallel update), for the denoiser's standardisation."""
        count, mean, squares = 0, None, None
        for part in self.all_parts:
            if not part.rows:
                continue
            values = read_part(part, self.split).embedding.astype(np.float64)
            n, part_mean = len(values), values.mean(axis=0)
            part_squares = ((values - part_mean) ** 2).sum(axis=0)
            if mean is None:
                count, mean, squares = n, part_mean, part_squares
                continue
            delta = part_mean - mean
            total = count + n
            mean = mean + delta * n / total
            squares = squares + part_squares + delta**2 * count * n / total
            count = total
        if mean is None:
            raise ValueError("no training rows to standardise the condition with")
        std = np.sqrt(squares / max(count - 1, 1))  # unbiased, as torch.std
        return mean, std


LOADINGS = ("auto", "memory", "stream")
IN_MEMORY_LIMIT_BYTES = 4 << 30  # "auto" streams when the in-memory arrays would pass this


def streams(loading: str, rows: int, embed_dim: int, target_dim: int) -> bool:
    """Whether training streams: as asked, or ("auto") when `rows` embeddings and their float32 targets
    would take more than IN_MEMORY_LIMIT_BYTES in memory."""
    if loading not in LOADINGS:
        raise ValueError(f"training data loading must be one of {LOADINGS}, got {loading!r}")
    if loading == "auto":
        return rows * (embed_dim + target_dim) * 4 > IN_MEMORY_LIMIT_BYTES
    return loading == "stream"
