"""open_clip weights by pretrained tag: read from the Hugging Face hub's local cache (offline), and, when they
are neither cached nor reachable, a failure at once with one line saying how to provide them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
TEST_TAG_SETUP = """
from locdiff_pipeline.encoders.compat import import_open_clip
import_open_clip()  # first: it makes open_clip importable on the CPU build of torch
from open_clip import pretrained
# a tag of the project's tiny test model, hosted (in this test) only in the local hub cache
pretrained._PRETRAINED["locdiff-tiny-vit"] = {"localtag": pretrained._pcfg(hf_hub="locdiff-tests/tiny-vit/")}
"""


def _python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPOSITORY,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "network",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["hub-offline", "hub-unreachable"],
)
def test_a_tag_neither_cached_nor_reachable_fails_at_once_with_one_line(tmp_path, network):
    started = time.perf_counter()
    completed = _python(
        """
        from locdiff_pipeline.encoders.encoder_spec import EncoderSpec
        from locdiff_pipeline.encoders.image_encoder import build_encoder
        build_encoder(EncoderSpec("ViT-B-32", pretrained="openai"))
        """,
        {"HF_HOME": str(tmp_path / "empty-cache"), **network},
    )
    elapsed = time.perf_counter() - started
    assert completed.returncode != 0
    last = completed.stderr.strip().splitlines()[-1]
    assert "WeightsUnavailable: open_clip weights ViT-B-32/openai are not in the local cache" in last
    assert "--encoder-checkpoint" in last
    assert elapsed < 45, elapsed  # the import takes most of it; the hub is not waited for


def test_locdiff_run_refuses_an_unavailable_tag_before_running_anything(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "locdiff_pipeline.cli", "run", "--encoder", "ViT-B-32", "--pretrained", "openai"],
        cwd=tmp_path,
        env={**os.environ, "HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1", "LOCDIFF_HOME": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "open_clip weights ViT-B-32/openai are not in the local cache" in lines[0]
    assert not (tmp_path / "warehouse").exists() and not (tmp_path / ".dagster_home").exists()


def test_a_tag_in_the_local_hub_cache_loads_offline_and_is_recorded(tmp_path):
    made = _python(
        TEST_TAG_SETUP
        + f"""
import torch
from safetensors.torch import save_file
from locdiff_pipeline.encoders.encoder_spec import EncoderSpec
from locdiff_pipeline.encoders.image_encoder import build_encoder
source = build_encoder(EncoderSpec("locdiff-tiny-vit", seed=5))
snapshot = {str(tmp_path)!r} + "/hf/hub/models--locdiff-tests--tiny-vit/snapshots/0123abcd"
import os
os.makedirs(snapshot)
weights = {{k: v.contiguous() for k, v in source.model.state_dict().items()}}
save_file(weights, snapshot + "/open_clip_model.safetensors")
os.makedirs({str(tmp_path)!r} + "/hf/hub/models--locdiff-tests--tiny-vit/refs")
open({str(tmp_path)!r} + "/hf/hub/models--locdiff-tests--tiny-vit/refs/main", "w").write("0123abcd")
torch.save(source.model.state_dict(), {str(tmp_path)!r} + "/same_weights.pt")
""",
        {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert made.returncode == 0, made.stderr
    used = _python(
        TEST_TAG_SETUP
        + f"""
import numpy as np
from PIL import Image
from locdiff_pipeline.encoders.encoder_spec import EncoderSpec
from locdiff_pipeline.encoders.image_encoder import build_encoder, recorded_encoder
image = Image.fromarray((np.arange(96 * 96 * 3) % 251).astype("uint8").reshape(96, 96, 3))
tagged = build_encoder(EncoderSpec("locdiff-tiny-vit", pretrained="localtag"))
from_file = build_encoder(EncoderSpec("locdiff-tiny-vit", checkpoint={str(tmp_path / "same_weights.pt")!r}))
assert np.allclose(tagged.embed([image]), from_file.embed([image]), atol=1e-6)
identity = tagged.identity.to_dict()
assert identity["is_pretrained"] and identity["pretrained"] == "localtag"
assert identity["label"].startswith("locdiff-tiny-vit@localtag-"), identity["label"]
assert "pretrained tag localtag" in tagged.identity.note
rebuilt = recorded_encoder(identity, None, "cpu")  # a model trained on the tag finds its weights again
assert rebuilt.identity.label == identity["label"]
print("ok")
""",
        {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert used.returncode == 0 and used.stdout.strip().endswith("ok"), used.stderr[-3000:]
