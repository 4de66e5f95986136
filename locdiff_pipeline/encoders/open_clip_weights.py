"""Where an open_clip pretrained tag's weights come from: the local cache first (the Hugging Face hub's, or
open_clip's own for URL weights), then the network when the machine has one.

Nothing here forces the hub offline: a user with a network downloads the weights once, and later runs read
them from the cache. When they are neither cached nor reachable, `resolve_pretrained` fails at once with one
line that says how to provide them (a download request left to itself hangs for about 50 s first).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

HF_WEIGHTS = "open_clip_pytorch_model.bin"
REACH_TIMEOUT_S = 5.0


class WeightsUnavailable(RuntimeError):
    """The weights of a pretrained tag are not on this machine and cannot be downloaded."""


def tag_config(model_name: str, tag: str) -> dict:
    """open_clip's configuration of a pretrained tag (hub repository or URL, QuickGELU, normalisation)."""
    from locdiff_pipeline.encoders.compat import import_open_clip

    open_clip = import_open_clip()
    config = open_clip.get_pretrained_cfg(model_name, tag)
    if not config:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {model_name}; its tags: {known or 'none'}")
    return config


def resolve_pretrained(model_name: str, tag: str) -> Path:
    """The local file holding `model_name`'s weights for `tag`: from the cache, else downloaded."""
    config = tag_config(model_name, tag)
    if config.get("hf_hub"):
        repo, filename = os.path.split(config["hf_hub"])  # 'org/repo/' names the default weights file
        filename = filename or HF_WEIGHTS
        cached = _hub_cached(repo, filename)
        if cached is not None:
            return cached
        _require_network(model_name, tag, _hub_endpoint())
        from open_clip.pretrained import download_pretrained_from_hf

        return Path(download_pretrained_from_hf(repo, filename=filename))
    url = config["url"]
    cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    if cached.is_file():
        return cached
    _require_network(model_name, tag, url)
    from open_clip.pretrained import download_pretrained_from_url

    return Path(download_pretrained_from_url(url))


def _hub_cached(repo: str, filename: str) -> Path | None:
    """The cached file of a hub repository (its safetensors twin first, as open_clip prefers), if any."""
    from huggingface_hub import try_to_load_from_cache

    names = [filename]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, "open_clip_model.safetensors" if filename == HF_WEIGHTS else filename[:-4] + ".safetensors")
    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _require_network(model_name: str, tag: str, address: str) -> None:
    """Return if `address` answers within REACH_TIMEOUT_S (and the hub is not set offline); else raise one line."""
    if not _offline() and _reachable(address):
        return
    reason = "HF_HUB_OFFLINE is set" if _offline() else f"{urlparse(address).hostname} cannot be reached"
    raise WeightsUnavailable(
        f"open_clip weights {model_name}/{tag} are not in the local cache and {reason}: download them once on a "
        f"machine with a network (same HF_HOME), or pass the weights file with --encoder-checkpoint PATH"
    )


def _reachable(address: str) -> bool:
    """Whether a TCP connection to the address's host opens within REACH_TIMEOUT_S (name lookup included,
    which a plain socket timeout does not bound)."""
    parsed = urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=REACH_TIMEOUT_S):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(REACH_TIMEOUT_S)
    return bool(outcome and outcome[0])
