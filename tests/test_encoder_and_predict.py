"""The image encoder (seeded init vs a real local checkpoint) and `locdiff predict` as users run it."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ingest_fixtures import HOSTILE_REASONS, make_hostile_files
from PIL import Image

from locdiff_pipeline.data.bundled import BLUE_MARBLE, render_window
from locdiff_pipeline.encoders.encoder_spec import EncoderSpec
from locdiff_pipeline.encoders.image_encoder import SEEDED_INIT_NOTE, build_encoder
from locdiff_pipeline.method import sphere
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.model import LocDiffModel

TINY_ENCODER = "locdiff-tiny-vit"


@pytest.fixture(scope="module")
def world():
    with Image.open(BLUE_MARBLE) as image:
        return np.asarray(image.convert("RGB"))


def test_seeded_encoder_is_deterministic_and_says_it_is_not_pretrained(world):
    images = [render_window(world, 45.0, 7.0, 8.0, 96), render_window(world, -33.9, 151.2, 8.0, 96)]
    a, b = build_encoder(EncoderSpec(TINY_ENCODER, seed=3)), build_encoder(EncoderSpec(TINY_ENCODER, seed=3))
    assert np.array_equal(a.embed(images), b.embed(images))
    assert not a.identity.is_pretrained and a.identity.label == f"{TINY_ENCODER}@seeded-init-3"
    assert SEEDED_INIT_NOTE in a.identity.note
    views = a.embed_views(images, ["x", "y"], 4)
    assert views.shape == (2, 4, a.identity.embed_dim)
    assert np.allclose(np.linalg.norm(views, axis=-1), 1.0, atol=1e-5)
    assert np.allclose(views[:, 0], a.embed(images), atol=1e-6)  # view 0 is the plain view
    assert not np.allclose(views[:, 1], views[:, 0])  # the others are augmented


def test_decoding_workers_give_exactly_the_views_and_embeddings_of_the_main_process(tmp_path, world):
    from locdiff_pipeline.data.image_io import ImageDecodeError
    from locdiff_pipeline.encoders.view_workers import ViewJob, ViewWorkers

    images = [render_window(world, lat, lon, 8.0, 96) for lat, lon in ((45.0, 7.0), (-33.9, 151.2), (0.0, -60.0))]
    payloads = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        payloads.append(buffer.getvalue())
    (tmp_path / "on_disk.png").write_bytes(payloads[2])  # one image read from its reference, in the worker
    jobs = [ViewJob("a", payloads[0], None, 4, "ground"), ViewJob("b", payloads[1], None, 4, "north_up")]
    jobs.append(ViewJob("c", None, str(tmp_path / "on_disk.png"), 4, "ground"))
    encoder = build_encoder(EncoderSpec(TINY_ENCODER, seed=1))
    with ViewWorkers(encoder.views, 2) as pool:
        pending = pool.submit(jobs)  # returns at once; the workers decode while this process goes on
        in_workers = pending.get()
    with ViewWorkers(encoder.views, 0) as here:
        in_process = here.submit(jobs).get()
    assert len(in_workers) == 3 and all(p.shape[:2] == (4, 3) for p in in_workers)
    assert all(torch.equal(a, b) for a, b in zip(in_workers, in_process, strict=True))
    embedded = encoder.embed_view_stacks(in_workers, 4)
    decoded = [Image.open(io.BytesIO(p)).convert("RGB") for p in payloads]
    assert np.array_equal(embedded[[0, 2]], encoder.embed_views([decoded[0], decoded[2]], ["a", "c"], 4))
    assert np.array_equal(embedded[1], encoder.embed_views([decoded[1]], ["b"], 4, "north_up")[0])
    with ViewWorkers(encoder.views, 2) as pool, pytest.raises(ImageDecodeError, match="broken-1"):
        pool.submit([*jobs, ViewJob("broken-1", b"not an image", None, 1, "ground")]).get()


def test_checkpoint_path_loads_real_weights_through_the_user_code_path(tmp_path, world):
    images = [render_window(world, 10.0, 20.0, 8.0, 96)]
    source = build_encoder(EncoderSpec(TINY_ENCODER, seed=7))
    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save(source.model.state_dict(), checkpoint)
    loaded = build_encoder(EncoderSpec(TINY_ENCODER, checkpoint=str(checkpoint)))
    assert loaded.identity.is_pretrained and loaded.identity.checkpoint_sha256 is not None
    assert loaded.identity.label.startswith(f"{TINY_ENCODER}@") and "seeded" not in loaded.identity.label
    assert np.allclose(loaded.embed(images), source.embed(images), atol=1e-6)
    other_seed = build_encoder(EncoderSpec(TINY_ENCODER, seed=8))
    assert not np.allclose(other_seed.embed(images), source.embed(images), atol=1e-3)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_encoder(EncoderSpec(TINY_ENCODER, checkpoint=str(tmp_path / "missing.pt")))


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "locdiff_pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_cli_prints_valid_csv_and_names_bad_files(tmp_path, world):
    encoder = build_encoder(EncoderSpec(TINY_ENCODER))
    model = LocDiffModel(
        LocDiffConfig(
            L=6, embed_dim=encoder.identity.embed_dim, hidden_dims=(32,), time_dim=16, timesteps=20, sample_steps=4
        ),
        encoder.identity.to_dict(),
    )
    model.save(tmp_path / "model")
    good = []
    for i, (lat, lon) in enumerate([(48.0, 2.0), (-1.0, 36.0), (64.0, -20.0)]):
        path = tmp_path / f"img{i}.jpg"
        render_window(world, lat, lon, 8.0, 96).save(path)
        good.append(path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:200])  # a truncated JPEG
    missing = tmp_path / "missing.jpg"
    hostile = make_hostile_files(tmp_path)  # a decompression bomb, a FIFO, a symlink loop: refused, no hang
    done = _run_cli(
        "predict",
        "--model",
        str(tmp_path / "model"),
        "--views",
        "3",
        str(good[0]),
        str(corrupt),
        str(missing),
        *map(str, hostile.values()),
        *map(str, good[1:]),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    comments = [line for line in done.stdout.splitlines() if line.startswith("#")]
    assert any(SEEDED_INIT_NOTE in line for line in comments)
    rows = list(
        csv.DictReader(io.StringIO("\n".join(line for line in done.stdout.splitlines() if not line.startswith("#"))))
    )
    assert [r["image"] for r in rows] == [str(p) for p in good]
    for row in rows:
        assert -90 <= float(row["lat"]) <= 90 and -180 <= float(row["lon"]) <= 180 and float(row["spread_km"]) >= 0
    assert f"{corrupt}: corrupt or truncated image" in done.stderr
    assert f"{missing}: file not found" in done.stderr
    for kind, path in hostile.items():
        assert f"{path}: {HOSTILE_REASONS[kind]}" in done.stderr, kind


def test_predict_refuses_an_unknown_or_broken_model_in_one_line(tmp_path):
    done = _run_cli("predict", "--model", str(tmp_path / "nope"), str(tmp_path / "a.jpg"), cwd=tmp_path)
    assert done.returncode == 2 and "neither a checkpoint folder nor an MLflow reference" in done.stderr
    encoder = build_encoder(EncoderSpec(TINY_ENCODER))
    config = LocDiffConfig(L=4, embed_dim=encoder.identity.embed_dim, hidden_dims=(16,), time_dim=8, timesteps=10)
    for broken, damage in (("bad_weights", "weights.pt"), ("bad_config", "config.json")):
        folder = LocDiffModel(config, encoder.identity.to_dict()).save(tmp_path / broken)
        (folder / damage).write_bytes(b"{ this is not what it should be")
        done = _run_cli("predict", "--model", str(folder), str(tmp_path / "a.jpg"), cwd=tmp_path)
        assert done.returncode == 2 and f"{folder}: {damage} differ from the checksums" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        (folder / "checksums.json").unlink()  # a checkpoint saved before checksums: the file's own check
        done = _run_cli("predict", "--model", str(folder), str(tmp_path / "a.jpg"), cwd=tmp_path)
        assert done.returncode == 2 and f"{folder / damage}: " in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    debug = _run_cli("predict", "--debug", "--model", str(tmp_path / "bad_config"), "a.jpg", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def _csv_rows(stdout: str) -> list[dict]:
    return list(
        csv.DictReader(io.StringIO("\n".join(line for line in stdout.splitlines() if not line.startswith("#"))))
    )


def test_predict_top_k_prints_ranked_places_with_probabilities(tmp_path, world):
    encoder = build_encoder(EncoderSpec(TINY_ENCODER))
    config = LocDiffConfig(
        L=8, embed_dim=encoder.identity.embed_dim, hidden_dims=(32,), time_dim=16, timesteps=20, sample_steps=4
    )
    LocDiffModel(config, encoder.identity.to_dict()).save(tmp_path / "model")
    places = [(48.0, 2.0), (-1.0, 36.0)]
    images = []
    for i, (lat, lon) in enumerate(places):
        render_window(world, lat, lon, 8.0, 96).save(tmp_path / f"img{i}.jpg")
        images.append(str(tmp_path / f"img{i}.jpg"))
    # 3 views x 6 samples: every sample drawn is the answer's (draws_needed: 16 per image), so rank 1 is the answer
    common = ("predict", "--model", str(tmp_path / "model"), "--views", "3", "--samples", "6")
    ranked = _run_cli(*common, "--top-k", "3", *images, cwd=tmp_path)
    plain = _run_cli(*common, *images, cwd=tmp_path)
    assert ranked.returncode == 0 and plain.returncode == 0, ranked.stderr + plain.stderr
    rows, points = _csv_rows(ranked.stdout), _csv_rows(plain.stdout)
    for image, (lat, lon), point in zip(images, places, points, strict=True):
        mine = [r for r in rows if r["image"] == image]
        assert [int(r["rank"]) for r in mine] == [1, 2, 3]
        probabilities = [float(r["probability"]) for r in mine]
        assert all(0 < p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6
        assert (float(mine[0]["lat"]), float(mine[0]["lon"])) == pytest.approx(
            (float(point["lat"]), float(point["lon"])), abs=1e-5
        )
        errors = [sphere.haversine_km([lat], [lon], [float(r["lat"])], [float(r["lon"])])[0] for r in mine]
        assert min(errors) <= errors[0]  # the best of three is never farther than rank 1

    geojson = _run_cli(*common, "--top-k", "3", "--format", "geojson", *images, cwd=tmp_path)
    assert geojson.returncode == 0, geojson.stderr
    _assert_valid_geojson(json.loads(geojson.stdout), images, points)


def _assert_valid_geojson(document: dict, images: list[str], points: list[dict]) -> None:
    """RFC 7946: a FeatureCollection of Features with Point geometries as [lon, lat] in range."""
    assert document["type"] == "FeatureCollection" and len(document["features"]) == len(images)
    for feature, image, point in zip(document["features"], images, points, strict=True):
        assert feature["type"] == "Feature" and set(feature) >= {"geometry", "properties"}
        geometry = feature["geometry"]
        assert geometry["type"] == "Point" and len(geometry["coordinates"]) == 2
        lon, lat = geometry["coordinates"]
        assert -180 <= lon <= 180 and -90 <= lat <= 90
        assert (lat, lon) == pytest.approx((float(point["lat"]), float(point["lon"])), abs=1e-5)
        properties = feature["properties"]
        assert properties["image"] == image and properties["spread_km"] >= 0
        assert [r["rank"] for r in properties["ranked"]] == [1, 2, 3]
