"""The `contamination` table: benchmark images that also appear in the training dataset.

Large training crawls (MP16 is Flickr) contain copies of benchmark photos, and a copy scored as a test
image measures memory, not geolocation. Per benchmark image: an exact duplicate is a training image with
the same bytes (sha256); a near duplicate is one of its most similar training images by plain-view
embedding (cosine at or above a threshold, after centring on the training mean: raw CLIP-style
embeddings share one large common direction) whose perceptual hash is also within a few bits.

Why both: with a real CLIP, a cosine near 1 means the same picture; with an encoder that has no
pretrained weights (this environment's seeded init) unrelated flat images (open sea, ice) reach
cosines above those of a resized, re-encoded copy, while their perceptual hashes differ in a third
of their bits. `max_hash_distance=63` turns the hash gate off.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.image_io import hash_distance
from locdiff_pipeline.data.ingest import IMAGES_TABLE
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint
from locdiff_pipeline.steps.image_embeddings import EMBEDDINGS_TABLE, load_embeddings

CONTAMINATION_TABLE = "contamination"
CONTAMINATION_VERSION = 1
EXACT, NEAR = "exact", "near"
TRAINING_SPLITS = ("train", "val")
SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("training_dataset", pa.string()),
        ("training_image_id", pa.string()),
        ("kind", pa.string()),
        ("similarity", pa.float64()),
    ]
)


def _image_keys(warehouse: Warehouse, dataset: str, splits: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """image_id -> (sha256, perceptual hash) for the dataset's images in `splits`."""
    table = shards.read(warehouse, IMAGES_TABLE, dataset, columns=["image_id", "split", "sha256", "phash"])
    columns = (table[c].to_pylist() for c in ("image_id", "split", "sha256", "phash"))
    return {i: (digest, phash) for i, split, digest, phash in zip(*columns, strict=True) if split in splits}


def _plain_embeddings(warehouse: Warehouse, dataset: str, splits: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    parts = [load_embeddings(warehouse, dataset, split) for split in splits]
    ids = [i for part_ids, _ in parts for i in part_ids]
    vectors = [v for _, v in parts if len(v)]
    return ids, (np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))


def nearest_training_images(
    training: np.ndarray, queries: np.ndarray, k: int = 1, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the indices (N, k) of its k most similar training rows and their cosines, best
    first, after centring both on the training mean."""
    mean = training.mean(axis=0, keepdims=True)

    def centred(x: np.ndarray) -> np.ndarray:
        x = x - mean
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    gallery = centred(training)
    best, similarity = [], []
    for start in range(0, len(queries), block):
        scores = centred(queries[start : start + block]) @ gallery.T
        top = np.argsort(-scores, axis=1)[:, :k]
        best.append(top)
        similarity.append(np.take_along_axis(scores, top, axis=1))
    return (np.concatenate(best), np.concatenate(similarity)) if best else (np.zeros((0, k), int), np.zeros((0, k)))


def find_contamination(
    warehouse: Warehouse,
    benchmark: str,
    training: str,
    threshold: float,
    max_hash_distance: int = 8,
    candidates: int = 5,
) -> pa.Table:
    """Rows of the contamination table for one benchmark (an exact duplicate wins over a near one)."""
    training_keys = _image_keys(warehouse, training, TRAINING_SPLITS)
    by_sha = {}
    for image_id, (digest, _) in sorted(training_keys.items()):
        by_sha.setdefault(digest, image_id)
    benchmark_keys = _image_keys(warehouse, benchmark, ("test",))
    rows = [(i, by_sha[digest], EXACT, 1.0) for i, (digest, _) in sorted(benchmark_keys.items()) if digest in by_sha]
    exact = {r[0] for r in rows}
    training_ids, training_vectors = _plain_embeddings(warehouse, training, TRAINING_SPLITS)
    ids, vectors = load_embeddings(warehouse, benchmark, "test")
    if len(training_ids) and len(ids):
        k = min(candidates, len(training_ids))
        nearest, similarity = nearest_training_images(training_vectors, vectors, k=k)
        for image_id, indices, cosines in zip(ids, nearest, similarity, strict=True):
            if image_id in exact:
                continue
            phash = benchmark_keys[image_id][1]
            for index, cosine in zip(indices, cosines, strict=True):
                match = training_ids[index]
                if cosine >= threshold and hash_distance(phash, training_keys[match][1]) <= max_hash_distance:
                    rows.append((image_id, match, NEAR, float(cosine)))
                    break
    columns = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    return pa.table(
        {
            "image_id": pa.array(columns[0], pa.string()),
            "training_dataset": pa.array([training] * len(rows), pa.string()),
            "training_image_id": pa.array(columns[1], pa.string()),
            "kind": pa.array(columns[2], pa.string()),
            "similarity": pa.array(columns[3], pa.float64()),
        },
        schema=SCHEMA,
    )


def build_contamination(
    warehouse: Warehouse, benchmark: str, training: str, threshold: float, max_hash_distance: int = 8
) -> dict:
    """Write contamination/dataset=BENCHMARK (cached by its inputs); returns its manifest with counts."""
    manifests = [
        shards.manifest(warehouse, table, name)
        for name in (benchmark, training)
        for table in (IMAGES_TABLE, EMBEDDINGS_TABLE)
    ]
    if any(m is None for m in manifests):
        raise FileNotFoundError(f"images and embeddings of {benchmark!r} and {training!r} must be materialized first")
    inputs = [m["fingerprint"] for m in manifests]
    key = fingerprint(CONTAMINATION_VERSION, inputs, training, threshold, max_hash_distance)
    if warehouse.is_current(CONTAMINATION_TABLE, key, dataset=benchmark):
        return {**warehouse.manifest(CONTAMINATION_TABLE, dataset=benchmark), "cached": True}
    table = find_contamination(warehouse, benchmark, training, threshold, max_hash_distance)
    kinds = table["kind"].to_pylist()
    images = len(load_embeddings(warehouse, benchmark, "test")[0])
    summary = {
        "fingerprint": key,
        "training_dataset": training,
        "threshold": threshold,
        "max_hash_distance": max_hash_distance,
        "images": images,
        "exact": kinds.count(EXACT),
        "near": kinds.count(NEAR),
    }
    with warehouse.write_partition(CONTAMINATION_TABLE, summary, dataset=benchmark) as writer:
        writer.write(table)
    return {**warehouse.manifest(CONTAMINATION_TABLE, dataset=benchmark), "cached": False}


def contaminated_ids(warehouse: Warehouse, benchmark: str) -> set[str]:
    """Benchmark images with a duplicate in the training data (raises if the table is not built)."""
    return set(warehouse.read(CONTAMINATION_TABLE, columns=["image_id"], dataset=benchmark)["image_id"].to_pylist())
