"""Streaming training rows from embeddings part files: each row once per epoch across ranks, exact resume,
bounded memory, exact condition statistics, and a streamed training run that learns and resumes exactly."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import clustered_problem

from locdiff_pipeline.data.training_stream import EmbeddingStream, streams
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.distributed import World
from locdiff_pipeline.method.training import Validation, train
from locdiff_pipeline.steps.image_embeddings import embedding_batch


def write_parts(folder, features, lat, lon, rows_per_part, *, extra_val=3, seed=0):
    """Part files in the embeddings table's own schema: training rows, plus validation rows with two views
    in every part (which the stream must skip). Returns the files and the training ids in order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, start, part = [], 0, 0
    while start < len(lat):
        size = int(rng.integers(max(1, rows_per_part // 2), rows_per_part + 1))
        rows = range(start, min(start + size, len(lat)))
        ids = [f"img{i:06d}" for i in rows]
        splits, views = ["train"] * len(ids), [0] * len(ids)
        vectors, lats, lons = [features[i] for i in rows], [lat[i] for i in rows], [lon[i] for i in rows]
        for j in range(extra_val):
            for view in (0, 1):
                ids.append(f"val{part:04d}-{j}")
                splits.append("val")
                views.append(view)
                vectors.append(np.full(features.shape[1], 9.0, np.float32))
                lats.append(0.0)
                lons.append(0.0)
        path = folder / f"shard={part % 3:03d}" / f"part-{part:05d}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(embedding_batch(ids, splits, views, lats, lons, np.asarray(vectors, np.float32), "test"), path)
        files.append(path)
        start, part = rows.stop, part + 1
    return files


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    lat, lon, features = clustered_problem(n=1000, dim=16, seed=3)
    files = write_parts(tmp_path_factory.mktemp("parts"), features, lat, lon, rows_per_part=40)
    return files, features, lat, lon


def _rows(stream: EmbeddingStream, count: int, start_batch: int = 0):
    """The first `count` rows of the stream from start_batch: ids and embeddings, in order."""
    rows, vectors = [], []
    for batch in stream.batches(start_batch):
        rows.append(batch.row)
        vectors.append(batch.embedding)
        if sum(map(len, rows)) >= count:
            break
    return stream.image_ids(np.concatenate(rows)[:count]), np.concatenate(vectors)[:count]


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_training_row_is_seen_once_per_epoch_across_ranks(parts, ranks):
    files, features, _, _ = parts
    seen = []
    for rank in range(ranks):
        stream = EmbeddingStream(files, batch_size=7, seed=1, world=World(rank, ranks), buffer_rows=100)
        two_epochs, vectors = _rows(stream, 2 * stream.rows)
        first, second = two_epochs[: stream.rows], two_epochs[stream.rows :]
        assert len(set(first)) == len(first) == stream.rows  # once per epoch...
        assert set(second) == set(first) and second != first  # ...and the next epoch reshuffled
        assert not any(i.startswith("val") for i in first)  # other splits and views are skipped
        index = [int(i.removeprefix("img")) for i in first]
        assert np.array_equal(vectors[: stream.rows], features[index])  # each id keeps its own embedding
        seen.extend(first)
    assert len(seen) == len(set(seen)) == len(features)  # the ranks' shares are disjoint and cover everything
    if ranks > 1:
        shares = [EmbeddingStream(files, batch_size=7, world=World(r, ranks)).rows for r in range(ranks)]
        assert max(shares) - min(shares) <= 40  # balanced to within one part file


def test_a_stream_started_at_batch_k_continues_the_uninterrupted_stream(parts):
    files = parts[0]
    stream = EmbeddingStream(files, batch_size=9, seed=4, buffer_rows=120)
    ids, vectors = _rows(stream, 9 * 260)
    for k in (1, 13, 111, 200):  # inside a window, across windows, across the epoch boundary (1000 rows)
        resumed_ids, resumed_vectors = _rows(stream, 9 * 40, start_batch=k)
        assert resumed_ids == ids[9 * k : 9 * (k + 40)]
        assert np.array_equal(resumed_vectors, vectors[9 * k : 9 * (k + 40)])


def test_the_stream_holds_a_few_windows_whatever_the_dataset_size(parts):
    files = parts[0]
    stream = EmbeddingStream(files, batch_size=16, buffer_rows=60)
    _rows(stream, 3 * stream.rows)  # three epochs of 1,000 rows through a 60-row buffer
    largest_part = max(p.rows for p in stream.parts)
    assert 60 <= stream.peak_rows_held <= 3 * (60 + largest_part) + 16


def test_condition_statistics_equal_those_of_all_training_rows(parts):
    files, features, _, _ = parts
    mean, std = EmbeddingStream(files, batch_size=8, world=World(1, 2)).condition_statistics()
    reference = torch.from_numpy(features.astype(np.float64))
    assert np.allclose(mean, reference.mean(0).numpy(), atol=1e-9)
    assert np.allclose(std, reference.std(0).numpy(), atol=1e-9)  # every rank's rows, unbiased like torch.std


def test_more_ranks_than_part_files_is_refused(parts):
    with pytest.raises(ValueError, match="only 2 part files hold training rows"):
        EmbeddingStream(parts[0][:2], batch_size=8, world=World(0, 3))


def test_auto_loading_streams_only_past_the_memory_limit():
    assert not streams("auto", 3000, 512, 441)  # the bundled dataset stays in memory
    assert streams("auto", 4_720_000, 768, 1681)  # MP16 with ViT-L-14 at L = 40 streams
    assert streams("stream", 10, 8, 8) and not streams("memory", 10**9, 768, 1681)
    with pytest.raises(ValueError, match="loading must be one of"):
        streams("disk", 10, 8, 8)


TINY = dict(L=10, embed_dim=16, hidden_dims=(64, 32), time_dim=16, batch_size=64, anchors_per_step=512)
TINY |= dict(timesteps=100, sample_steps=10, eval_every=10**9, checkpoint_every=20)


def test_streamed_training_learns_and_resumes_exactly(tmp_path):
    lat, lon, features = clustered_problem(n=1400, dim=16, seed=7)
    files = write_parts(tmp_path / "parts", features[:1200], lat[:1200], lon[:1200], rows_per_part=50)
    validation = Validation(features[1200:], lat[1200:], lon[1200:])
    config = LocDiffConfig(**TINY, steps=300)
    learned = train(config, stream=EmbeddingStream(files, batch_size=64, buffer_rows=200), validation=validation)
    # the same stream with coordinates that no longer match the embeddings: the condition carries nothing
    shuffled = np.random.default_rng(1).permutation(1200)
    control_files = write_parts(tmp_path / "control", features[:1200], lat[shuffled], lon[shuffled], rows_per_part=50)
    control = train(config, stream=EmbeddingStream(control_files, batch_size=64), validation=validation)
    assert learned.validation["acc_750km"] > 0.6 and control.validation["acc_750km"] < 0.3

    short = config.with_(steps=60)
    stream = EmbeddingStream(files, batch_size=64, buffer_rows=200)
    interrupted = train(short, stream=stream, checkpoint_dir=tmp_path / "run", stop_after=40)
    resumed = train(short, stream=stream, checkpoint_dir=tmp_path / "run")
    straight = train(short, stream=stream, checkpoint_dir=tmp_path / "straight")
    assert (interrupted.steps_run, resumed.resumed_from) == (40, 40)
    for name, value in straight.model.net.state_dict().items():
        assert torch.allclose(value, resumed.model.net.state_dict()[name], atol=1e-6), name
    with pytest.raises(ValueError, match="cuts batches of 64 rows"):
        train(short.with_(batch_size=32), stream=stream)
