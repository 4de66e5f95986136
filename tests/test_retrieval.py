"""Gallery search: the exact path is brute force, the faiss IVF path finds what exact search finds (all of
it when every list is probed), short answers are filled, and LocDiff-H gives the same answer on both."""

from __future__ import annotations

import numpy as np
from conftest import clustered_problem

from locdiff_pipeline.method import baselines, retrieval


def _unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_exact_search_is_the_brute_force_ranking():
    gallery, queries = _unit_rows(3000, 16, 0), _unit_rows(50, 16, 1)
    found = retrieval.Retriever(gallery).search(queries, 5)
    expected = np.argsort(-(queries @ gallery.T), axis=1)[:, :5]
    assert retrieval.Retriever(gallery).kind == "exact"
    np.testing.assert_array_equal(found, expected)


def test_device_search_is_exact_at_any_gallery_size():
    """The GPU path (run here on the CPU device: same code) searches exactly even above the IVF threshold."""
    gallery, queries = _unit_rows(3000, 16, 6), _unit_rows(70, 16, 7)
    on_device = retrieval.Retriever(gallery, exact_max_rows=0, device="cpu")
    assert on_device.kind == "exact on cpu" and on_device.index is None
    np.testing.assert_array_equal(on_device.search(queries, 7), retrieval.exact_top_k(gallery, queries, 7))


def test_ivf_probing_every_list_is_exact_and_probing_few_keeps_high_recall():
    gallery, queries = _unit_rows(20000, 32, 2), _unit_rows(300, 32, 3)
    exact = retrieval.exact_top_k(gallery, queries, 10)
    everything = retrieval.Retriever(gallery, exact_max_rows=0, lists=64, probes=64)
    assert everything.kind.startswith("faiss IVF64")
    np.testing.assert_array_equal(everything.search(queries, 10)[:, 0], exact[:, 0])
    some = retrieval.Retriever(gallery, exact_max_rows=0, lists=64, probes=16)
    recall_at_1 = np.mean(some.search(queries, 1)[:, 0] == exact[:, 0])
    assert recall_at_1 >= 0.5  # random directions are the hard case; clustered embeddings do far better


def test_answers_the_probed_lists_cannot_fill_are_searched_exactly():
    gallery, queries = _unit_rows(400, 8, 4), _unit_rows(20, 8, 5)
    sparse = retrieval.Retriever(gallery, exact_max_rows=0, lists=16, probes=1)  # about 25 rows probed, k = 60
    found = sparse.search(queries, 60)
    assert found.shape == (20, 60) and (found >= 0).all()
    assert all(len(set(row)) == 60 for row in found)


def test_locdiff_h_answers_the_same_on_a_large_gallery_index():
    lat, lon, features = clustered_problem(n=600, dim=32, seed=5)
    gallery = baselines.Gallery(features[:200], lat[:200], lon[:200])  # fewer rows than HYBRID_CANDIDATES
    queries = features[200:260]
    exact, exact_fell_back = baselines.locdiff_h(gallery, queries, np.clip(lat[200:260] + 1.0, -90, 90), lon[200:260])
    gallery._retriever = retrieval.Retriever(gallery.embeddings, exact_max_rows=0, lists=8, probes=8)
    indexed, indexed_fell_back = baselines.locdiff_h(
        gallery, queries, np.clip(lat[200:260] + 1.0, -90, 90), lon[200:260]
    )
    np.testing.assert_array_equal(exact_fell_back, indexed_fell_back)
    np.testing.assert_allclose(indexed.lat, exact.lat)
    np.testing.assert_allclose(indexed.lon, exact.lon)
    assert (~exact_fell_back).any()
