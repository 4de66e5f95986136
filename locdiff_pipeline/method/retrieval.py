"""Cosine nearest neighbours over a gallery of unit vectors: the search behind kNN and LocDiff-H.

With a GPU, exact search there, whatever the gallery's size (a blocked matrix product and top-k in
torch: YFCC26k's 26,000 queries against MP16's 4.72 M x 768 are 10^14 multiply-adds, seconds on a
GPU). On the CPU, exact brute force for galleries up to EXACT_MAX_ROWS, so the bundled data and any
small gallery get exact answers; above it, a faiss inverted-file index (IVF, inner product), whose
recall against exact search is measured in `benchmarks/bench_retrieval.py` (those 10^14 multiply-adds
are about 20 minutes of two CPU cores).
"""

from __future__ import annotations

import math

import numpy as np
import torch

EXACT_MAX_ROWS = 200_000
_BLOCK_VALUES = 1 << 25  # similarities per block (128 MB of float32, 256 MB of indices at most)
_TRAINING_SAMPLE_PER_LIST = 40  # k-means sample: faiss wants at least 39 points per list


class Retriever:
    """Top-k most similar gallery rows (by inner product of unit vectors) for each query, best first."""

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        exact_max_rows: int = EXACT_MAX_ROWS,
        lists: int | None = None,
        probes: int = 32,
        device: str | None = None,
    ):
        """`device`: a torch device for exact search there at any size; None: CUDA when present and the
        gallery takes at most half its free memory, else the CPU paths (exact up to exact_max_rows, faiss
        IVF above)."""
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if device is None and torch.cuda.is_available() and self.vectors.nbytes <= torch.cuda.mem_get_info()[0] / 2:
            device = "cuda"
        self.on_device = None if device is None else torch.as_tensor(self.vectors, device=device)
        self.exact = self.on_device is not None or len(self.vectors) <= exact_max_rows
        self.index = None
        if not self.exact:
            self.index = _ivf_index(self.vectors, lists or int(math.sqrt(len(self.vectors))), probes)

    @property
    def kind(self) -> str:
        if self.on_device is not None:
            return f"exact on {self.on_device.device}"
        return "exact" if self.exact else f"faiss IVF{self.index.nlist},nprobe={self.index.nprobe}"

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(N, k) gallery row indices, most similar first (k is capped at the gallery size)."""
        k = min(k, len(self.vectors))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.on_device is not None:
            return _device_top_k(self.on_device, queries, k)
        if self.exact:
            return exact_top_k(self.vectors, queries, k)
        _, indices = self.index.search(queries, k)
        return _fill_missing(indices, self.vectors, queries)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute force: every query against every row, in blocks of queries sized by the gallery so memory
    stays bounded (2,048 queries x 1 M rows would be 8 GB of similarities and 16 GB of indices)."""
    k = min(k, len(vectors))
    block = _query_block(len(vectors), 2048)
    found = []
    for start in range(0, len(queries), block):
        similarity = queries[start : start + block] @ vectors.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1)
        found.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(found) if found else np.zeros((0, k), dtype=np.int64)


def _query_block(rows: int, most: int) -> int:
    """Queries per block so a block's similarities stay within _BLOCK_VALUES (at most `most`)."""
    return max(1, min(most, _BLOCK_VALUES // max(1, rows)))


def _device_top_k(vectors: torch.Tensor, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact search on the gallery's device: blocks of queries x every row, torch.topk of each block."""
    block = _query_block(len(vectors), 4096)
    found = []
    with torch.no_grad():
        for start in range(0, len(queries), block):
            part = torch.as_tensor(queries[start : start + block], device=vectors.device)
            found.append(torch.topk(part @ vectors.T, k, dim=1).indices.cpu().numpy())
    return np.concatenate(found) if found else np.zeros((0, k), dtype=np.int64)


def _ivf_index(vectors: np.ndarray, lists: int, probes: int):
    import faiss

    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    sample = min(len(vectors), lists * _TRAINING_SAMPLE_PER_LIST)
    rows = np.random.default_rng(0).choice(len(vectors), size=sample, replace=False)  # seeded: same index each run
    index.train(vectors[np.sort(rows)])
    index.add(vectors)
    index.nprobe = min(probes, lists)
    return index


def _fill_missing(indices: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """faiss answers -1 where the probed lists held fewer than k rows: those queries are searched exactly."""
    short = np.flatnonzero((indices < 0).any(axis=1))
    if len(short):
        indices[short] = exact_top_k(vectors, queries[short], indices.shape[1])
    return indices
