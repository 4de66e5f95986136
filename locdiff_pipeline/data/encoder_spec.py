"""Which image encoder embeds the images, and how many test-time views it makes: plain settings, kept apart
from the encoder itself so the command line and the resources read their defaults without loading torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_TEST_VIEWS = 8  # views of each validation and benchmark image (GeoCLIP and the paper use 16)


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder: an open_clip model name, an optional local checkpoint file, the init seed without one."""

    model_name: str = "ViT-S-32"
    checkpoint: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
