"""Which image encoder embeds the images, and how many test-time views it makes: plain settings, kept apart
from the encoders themselves so the command line and the resources read their defaults without torch.

Two families:
- `descriptors` (the default): classical scene descriptors computed from pixels (encoders/scene_descriptors.py),
  no weights at all, so the bundled run sees without anything downloaded;
- an open_clip model name: with a pretrained tag (`pretrained`, from the Hugging Face hub or its local
  cache), a local checkpoint file (`checkpoint`), or neither (a seeded random init, which every output
  names as such).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DESCRIPTORS = "descriptors"
DEFAULT_TEST_VIEWS = 8  # views of each validation and benchmark image (GeoCLIP and the paper use 16)


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder: `descriptors`, or an open_clip model name with a pretrained tag, a local checkpoint file,
    or neither (the init seed then decides its weights)."""

    model_name: str = DESCRIPTORS
    checkpoint: str | None = None
    seed: int = 0
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.family == DESCRIPTORS and (self.checkpoint or self.pretrained):
            raise ValueError("the descriptors encoder has no weights: drop the checkpoint and the pretrained tag")
        if self.checkpoint and self.pretrained:
            raise ValueError(
                f"give the {self.model_name} weights one way: a pretrained tag ({self.pretrained}) or a "
                f"checkpoint file ({self.checkpoint}), not both"
            )

    @property
    def family(self) -> str:
        return DESCRIPTORS if self.model_name == DESCRIPTORS else "open_clip"

    def describe(self) -> str:
        """For run tags: 'descriptors', 'ViT-L-14@openai', 'ViT-B-32@checkpoint', 'ViT-S-32@seeded-init-0'."""
        if self.family == DESCRIPTORS:
            return DESCRIPTORS
        source = self.pretrained or ("checkpoint" if self.checkpoint else f"seeded-init-{self.seed}")
        return f"{self.model_name}@{source}"

    def to_dict(self) -> dict:
        return asdict(self)
