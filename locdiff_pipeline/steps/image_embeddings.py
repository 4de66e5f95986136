"""The `embeddings` table: frozen image-encoder vectors (scene descriptors or CLIP) per image and view.

Training images get the plain view; validation and benchmark (test) images get the plain view plus
test-time augmentations (DEFAULT_TEST_VIEWS views in all; GeoCLIP's protocol uses 16; no flips for
north-up imagery), so the test-time protocol is chosen on validation before it meets a benchmark. One
partition per shard of the images table; images are streamed in batches, so memory is bounded by the batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.ingest import IMAGES_TABLE
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint
from locdiff_pipeline.encoders.encoder_spec import DEFAULT_TEST_VIEWS, EncoderSpec
from locdiff_pipeline.encoders.image_encoder import ImageEncoder, build_encoder
from locdiff_pipeline.encoders.view_workers import ViewJob, ViewWorkers

EMBEDDINGS_TABLE = "embeddings"
EMBEDDING_VERSION = 4


def embedding_fingerprint(
    warehouse: Warehouse, dataset: str, shard: str, spec: EncoderSpec, test_views: int, imagery: str
) -> str:
    images = warehouse.manifest(IMAGES_TABLE, dataset=dataset, shard=shard)
    if images is None:
        raise FileNotFoundError(f"shard {shard} of dataset {dataset!r} is not ingested yet")
    checkpoint = None
    if spec.checkpoint:
        stat = os.stat(spec.checkpoint)
        checkpoint = (stat.st_size, stat.st_mtime_ns)
    return fingerprint(EMBEDDING_VERSION, images["fingerprint"], spec.to_dict(), checkpoint, test_views, imagery)


def views_for_split(split: str, test_views: int) -> int:
    """Test-time views for validation and benchmark images, the plain view alone for training images."""
    return test_views if split in ("val", "test") else 1


def build_embeddings(
    warehouse: Warehouse,
    dataset: str,
    shard: str,
    spec: EncoderSpec,
    *,
    test_views: int = DEFAULT_TEST_VIEWS,
    imagery: str = "ground",
    device: str = "cpu",
    batch_rows: int = 256,
    force: bool = False,
    load: Callable[[], ImageEncoder] | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> dict:
    """Write embeddings/dataset=NAME/shard=KEY; returns a summary (rows, encoder identity, cached or not).
    `load` (e.g. a cached factory) lets several shards share one loaded encoder; it is called only when
    the shard is not current. `progress` is told how many images each batch embedded. Images are decoded
    and viewed by `workers` processes (None: view_workers.default_workers for the encoder's device; 0: in this
    process) one batch ahead of the encoder; the embeddings do not depend on the number of workers."""
    key = embedding_fingerprint(warehouse, dataset, shard, spec, test_views, imagery)
    if not force and warehouse.is_current(EMBEDDINGS_TABLE, key, dataset=dataset, shard=shard):
        return {**warehouse.manifest(EMBEDDINGS_TABLE, dataset=dataset, shard=shard), "cached": True}
    encoder = load() if load is not None else build_encoder(spec, device=device)
    identity = encoder.identity
    manifest = {"fingerprint": key, "encoder": identity.to_dict(), "test_views": test_views, "imagery": imagery}
    columns = ["image_id", "split", "lat", "lon", "image_bytes", "source"]
    batches = warehouse.iter_batches(IMAGES_TABLE, batch_rows, columns=columns, dataset=dataset, shard=shard)
    with warehouse.write_partition(EMBEDDINGS_TABLE, manifest, dataset=dataset, shard=shard) as writer:
        rows = (batch.to_pylist() for batch in batches)
        for table, images in embed_row_batches(encoder, rows, test_views, imagery, workers):
            writer.write(table)
            if progress is not None:
                progress(images)
    return {**warehouse.manifest(EMBEDDINGS_TABLE, dataset=dataset, shard=shard), "cached": False}


def embed_row_batches(
    encoder: ImageEncoder, row_batches: Iterable[list[dict]], test_views: int, imagery: str, workers: int | None
) -> Iterator[tuple[pa.Table, int]]:
    """(embeddings table, images) per batch of image rows (image_id, split, lat, lon, image_bytes, source):
    each batch is decoded by the workers while the encoder embeds the batch before it."""
    with ViewWorkers(encoder.views, workers, str(encoder.device)) as views:
        decoding = None
        for rows in row_batches:
            submitted = _submit_views(views, rows, test_views, imagery)
            if views.workers == 0:  # decoded already, in this process: nothing to overlap, one batch held
                yield _embed_batch(encoder, submitted)
                continue
            if decoding is not None:
                yield _embed_batch(encoder, decoding)
            decoding = submitted
        if decoding is not None:
            yield _embed_batch(encoder, decoding)


def _submit_views(views: ViewWorkers, rows: list[dict], test_views: int, imagery: str) -> list[tuple]:
    """One decoding job per split of the batch (training images get one view, the others test_views)."""
    submitted = []
    for split in sorted({r["split"] for r in rows}):
        group = [r for r in rows if r["split"] == split]
        n_views = views_for_split(split, test_views)
        jobs = [ViewJob(r["image_id"], r["image_bytes"], r["source"], n_views, imagery) for r in group]
        submitted.append((group, n_views, views.submit(jobs)))
    return submitted


def _embed_batch(encoder: ImageEncoder, submitted: list[tuple]) -> tuple[pa.Table, int]:
    """One batch's embeddings, split by split and view by view as embed_views would give them, and its
    number of images."""
    ids, splits, vectors, views, lat, lon = [], [], [], [], [], []
    for group, n_views, decoded in submitted:
        embedded = encoder.embed_view_stacks(decoded.get(), n_views)
        for r, per_view in zip(group, embedded):
            for view, vector in enumerate(per_view):
                ids.append(r["image_id"])
                splits.append(r["split"])
                views.append(view)
                vectors.append(vector)
                lat.append(r["lat"])
                lon.append(r["lon"])
    dim = encoder.identity.embed_dim
    array = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
    images = sum(len(group) for group, _, _ in submitted)
    return embedding_batch(ids, splits, views, lat, lon, array, encoder.identity.label), images


def embedding_batch(
    ids: list[str],
    splits: list[str],
    views: list[int],
    lat: list[float],
    lon: list[float],
    vectors: np.ndarray,
    encoder_label: str,
) -> pa.Table:
    dim = vectors.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    return pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "split": pa.array(splits, pa.string()),
            "view": pa.array(views, pa.int16()),
            "lat": pa.array(lat, pa.float64()),
            "lon": pa.array(lon, pa.float64()),
            "encoder": pa.array([encoder_label] * len(ids), pa.string()),
            "embedding": embedding,
        }
    )


@dataclass
class Labelled:
    """One split's embeddings with their image ids and true coordinates, sorted by image id."""

    ids: list[str]
    embeddings: np.ndarray  # (N, D) plain views, or (N, views, D)
    lat: np.ndarray
    lon: np.ndarray


def load_labelled(warehouse: Warehouse, dataset: str, split: str, views: int | None = None) -> Labelled:
    """A split's rows, read with a filter so memory holds the split, not the table: plain views (N, D), or
    (N, views, D) when views is given."""
    where = ds.field("split") == split
    if views is None:
        where = where & (ds.field("view") == 0)
    table = shards.read(warehouse, EMBEDDINGS_TABLE, dataset, where=where)
    table = table.sort_by([("image_id", "ascending"), ("view", "ascending")])
    flat = table["embedding"].combine_chunks()
    dim = flat.type.list_size
    vectors = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    ids, lat, lon = table["image_id"].to_pylist(), table["lat"].to_numpy(), table["lon"].to_numpy()
    if views is None:
        return Labelled(ids, vectors, lat, lon)
    if len(ids) % views:
        raise ValueError(f"{dataset}/{split}: {len(ids)} embedding rows is not a multiple of {views} views")
    return Labelled(ids[::views], vectors.reshape(-1, views, dim), lat[::views], lon[::views])


def load_embeddings(
    warehouse: Warehouse, dataset: str, split: str, views: int | None = None
) -> tuple[list[str], np.ndarray]:
    """(image_ids, array) for a split: (N, D) for plain views, or (N, views, D) when views is given."""
    labelled = load_labelled(warehouse, dataset, split, views)
    return labelled.ids, labelled.embeddings


def embedding_files(warehouse: Warehouse, dataset: str) -> list[Path]:
    """Every part file of the dataset's embeddings, shard by shard: what training streams from."""
    files = []
    for shard in shards.dataset_shards(warehouse, dataset):
        folder = warehouse.partition_dir(EMBEDDINGS_TABLE, dataset=dataset, shard=shard)
        if warehouse.manifest(EMBEDDINGS_TABLE, dataset=dataset, shard=shard) is None:
            raise FileNotFoundError(f"shard {shard} of the {dataset!r} embeddings is not materialized")
        files.extend(sorted(folder.glob("part-*.parquet")))
    return files
