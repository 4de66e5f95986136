"""The frozen image encoder: an open_clip model, from a local checkpoint or a recorded seeded init.

No pretrained CLIP weights can be downloaded here, so without a checkpoint the encoder is built from a
fixed seed and `spec_identity()`/`is_pretrained` say so; every output that depends on the encoder
carries that identity. Test-time augmentation (GeoCLIP's protocol) lives here too, so the views are
made by the same code and encoder at training, evaluation and prediction time.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from locdiff_pipeline.data.compat import prepare_torchvision
from locdiff_pipeline.data.datasets import IMAGERY
from locdiff_pipeline.data.encoder_spec import EncoderSpec
from locdiff_pipeline.data.image_io import sha256_file

CONFIG_DIR = Path(__file__).parent / "encoder_configs"
SEEDED_INIT_NOTE = (
    "image encoder has NO pretrained weights (seeded random initialisation): accuracies do not reflect a real CLIP"
)


def encoder_note(identity: dict) -> str:
    """The sentence every encoder-dependent output carries (from a recorded identity dict)."""
    if identity["is_pretrained"]:
        return f"encoder {identity['label']} (local checkpoint)"
    return f"encoder {identity['label']}: {SEEDED_INIT_NOTE}"


@dataclass(frozen=True)
class EncoderIdentity:
    """What the embeddings were made with: recorded in tables, models and reports."""

    model_name: str
    checkpoint_sha256: str | None
    seed: int
    embed_dim: int

    @property
    def is_pretrained(self) -> bool:
        return self.checkpoint_sha256 is not None

    @property
    def label(self) -> str:
        """Short name, e.g. 'ViT-B-32@3f2a9c1b0d4e' or 'ViT-S-32@seeded-init-0'."""
        tag = self.checkpoint_sha256[:12] if self.checkpoint_sha256 else f"seeded-init-{self.seed}"
        return f"{self.model_name}@{tag}"

    @property
    def note(self) -> str:
        return encoder_note({"label": self.label, "is_pretrained": self.is_pretrained})

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label, "is_pretrained": self.is_pretrained}


def _open_clip():
    prepare_torchvision()
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


class ImageEncoder:
    """Embeds PIL images (plain view and augmented views) into L2-normalised float32 vectors."""

    def __init__(self, spec: EncoderSpec, device: str | torch.device = "cpu", batch_size: int = 64):
        open_clip = _open_clip()
        self.spec = spec
        self.device = torch.device(device)
        self.batch_size = batch_size
        if spec.checkpoint is not None:
            path = Path(spec.checkpoint)
            if not path.is_file():
                raise FileNotFoundError(f"encoder checkpoint not found: {path}")
            model, _, preprocess = open_clip.create_model_and_transforms(spec.model_name, pretrained=str(path))
            checkpoint_sha = sha256_file(path)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(spec.model_name, pretrained=None)
            checkpoint_sha = None
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.views = ViewMaker(preprocess, spec.seed)
        with torch.no_grad():
            size = _image_size(preprocess)
            embed_dim = int(self.model.encode_image(torch.zeros(1, 3, size, size, device=self.device)).shape[-1])
        self.identity = EncoderIdentity(spec.model_name, checkpoint_sha, spec.seed, embed_dim)

    @torch.no_grad()
    def embed_pixels(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """Embeddings (N, D) of preprocessed pixel tensors, in batches of batch_size."""
        out = []
        for i in range(0, len(pixels), self.batch_size):
            batch = torch.stack(pixels[i : i + self.batch_size])
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            else:
                batch = batch.to(self.device)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                features = self.model.encode_image(batch).float()
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.identity.embed_dim), np.float32)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Plain-view embeddings (N, D)."""
        return self.embed_pixels([self.preprocess(im) for im in images])

    def embed_views(
        self, images: list[Image.Image], keys: list[str], n_views: int, imagery: str = "ground"
    ) -> np.ndarray:
        """Embeddings (N, n_views, D) of the views ViewMaker makes (view 0 plain, then augmentations)."""
        pairs = zip(images, keys, strict=True)
        stacks = [torch.stack(self.views(image, key, n_views, imagery)) for image, key in pairs]
        return self.embed_view_stacks(stacks, n_views)

    def embed_view_stacks(self, stacks: list[torch.Tensor], n_views: int) -> np.ndarray:
        """Embeddings (N, n_views, D) of N images' view pixels, each (n_views, 3, H, W)."""
        pixels = [view for stacked in stacks for view in stacked.unbind(0)]
        return self.embed_pixels(pixels).reshape(len(stacks), n_views, -1)


class ViewMaker:
    """An image's views as pixel tensors: view 0 is the plain view, views 1.. are augmentations suited to
    the imagery (no flips for north-up imagery, where a mirror image is another place).

    Each image's augmentations are seeded by its key (and the encoder's seed), so the same image always
    gets the same views, in this process or in a decoding worker. Holds transforms only (no model), so
    worker processes can carry it.
    """

    def __init__(self, preprocess, seed: int):
        self.preprocess, self.seed = preprocess, seed
        self.augment = {imagery: _augmentation(preprocess, flips=imagery == "ground") for imagery in IMAGERY}

    def __call__(self, image: Image.Image, key: str, n_views: int, imagery: str = "ground") -> list[torch.Tensor]:
        pixels = [self.preprocess(image)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(key.encode()) + self.seed)
            pixels.extend(self.augment[imagery](image) for _ in range(n_views - 1))
        return pixels


def _image_size(preprocess) -> int:
    for transform in preprocess.transforms:
        size = getattr(transform, "size", None)
        if size is not None:
            return int(size if isinstance(size, int) else size[0])
    raise ValueError("cannot find the encoder's input size in its preprocessing")


def _augmentation(preprocess, flips: bool):
    """Test-time views: random resized crop, horizontal flip (GeoCLIP's views; only when `flips`) and
    colour jitter, then the encoder's normalisation."""
    from torchvision import transforms

    normalize = next(t for t in preprocess.transforms if isinstance(t, transforms.Normalize))
    size = _image_size(preprocess)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            *([transforms.RandomHorizontalFlip()] if flips else []),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            _to_rgb,
            transforms.ToTensor(),
            normalize,
        ]
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def recorded_encoder(recorded: dict | None, checkpoint: str | None, device) -> ImageEncoder:
    """The encoder a model records it was trained with (its `encoder` metadata), rebuilt: a seeded init from
    its seed; a pretrained one needs its checkpoint file, whose hash must match the record."""
    if not recorded:
        raise ValueError("the model records no image encoder; it cannot embed images")
    if recorded.get("is_pretrained") and checkpoint is None:
        raise ValueError(
            f"the model was trained on {recorded['label']}: pass that encoder checkpoint (--encoder-checkpoint PATH)"
        )
    spec = EncoderSpec(
        recorded["model_name"], checkpoint if recorded.get("is_pretrained") else None, int(recorded.get("seed", 0))
    )
    encoder = ImageEncoder(spec, device=device)
    if encoder.identity.label != recorded["label"]:
        raise ValueError(f"encoder {encoder.identity.label} does not match the model's {recorded['label']}")
    return encoder
