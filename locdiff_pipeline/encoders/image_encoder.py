"""The frozen image encoders, and the test-time views they embed.

Two families behind one interface (`ImageEncoder`): classical scene descriptors computed from pixels
(`DescriptorEncoder`, no weights: the bundled default), and open_clip models (`OpenClipEncoder`: a pretrained
tag from the hub or its cache, a local checkpoint, or a seeded random init). Every output that depends on the
encoder carries its identity (`EncoderIdentity`: tables, models, MLflow, reports, `predict`), and a
descriptor table is never called CLIP. The views are made here too, so training, evaluation and prediction
make them with the same code.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from locdiff_pipeline.data.datasets import IMAGERY
from locdiff_pipeline.data.image_io import sha256_file
from locdiff_pipeline.encoders.compat import import_open_clip, prepare_torchvision
from locdiff_pipeline.encoders.encoder_spec import DESCRIPTORS, EncoderSpec
from locdiff_pipeline.encoders.scene_descriptors import DESCRIPTOR_VERSION, DescriptorSpec, describe

SEEDED_INIT_NOTE = (
    "image encoder has NO pretrained weights (seeded random initialisation): accuracies do not reflect a real CLIP"
)
DESCRIPTORS_NOTE = (
    "classical scene descriptors computed from pixels (colour histogram, colour layout, GIST), no learned "
    "weights: not CLIP"
)


def encoder_note(identity: dict) -> str:
    """The sentence every encoder-dependent output carries (from a recorded identity dict)."""
    if identity.get("family") == DESCRIPTORS:
        return f"encoder {identity['label']}: {DESCRIPTORS_NOTE}"
    if identity["is_pretrained"]:
        source = f"pretrained tag {identity['pretrained']}" if identity.get("pretrained") else "local checkpoint"
        return f"encoder {identity['label']} ({source})"
    return f"encoder {identity['label']}: {SEEDED_INIT_NOTE}"


@dataclass(frozen=True)
class EncoderIdentity:
    """What the embeddings were made with: recorded in tables, models and reports."""

    model_name: str
    checkpoint_sha256: str | None
    seed: int
    embed_dim: int
    family: str = "open_clip"
    pretrained: str | None = None  # the open_clip tag the weights came from
    descriptor: dict | None = None  # the descriptors' DescriptorSpec

    @property
    def is_pretrained(self) -> bool:
        """Whether learned weights went in (rebuilding the encoder needs them)."""
        return self.checkpoint_sha256 is not None

    @property
    def label(self) -> str:
        """Short name: 'descriptors-v1', 'ViT-B-32@openai-3f2a9c1b0d4e', 'ViT-B-32@3f2a9c1b0d4e' (a checkpoint
        file) or 'ViT-S-32@seeded-init-0'."""
        if self.family == DESCRIPTORS:
            shape = "" if self.descriptor == DescriptorSpec().to_dict() else f"-{_short_hash(self.descriptor)}"
            return f"{DESCRIPTORS}-v{DESCRIPTOR_VERSION}{shape}"
        if self.checkpoint_sha256 is None:
            return f"{self.model_name}@seeded-init-{self.seed}"
        tag = f"{self.pretrained}-" if self.pretrained else ""
        return f"{self.model_name}@{tag}{self.checkpoint_sha256[:12]}"

    @property
    def note(self) -> str:
        return encoder_note(self.to_dict())

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label, "is_pretrained": self.is_pretrained}


def _short_hash(value) -> str:
    return f"{zlib.crc32(repr(value).encode()):08x}"


class ImageEncoder:
    """Embeds PIL images (plain view and augmented views) into L2-normalised float32 vectors (N, embed_dim).

    Subclasses set `spec`, `device`, `batch_size`, `preprocess` (PIL image to pixel tensor), `views`
    (a ViewMaker) and `identity`, and define `embed_pixels`."""

    spec: EncoderSpec
    device: torch.device
    batch_size: int
    preprocess: object
    views: ViewMaker
    identity: EncoderIdentity

    def embed_pixels(self, pixels: list[torch.Tensor]) -> np.ndarray:
        raise NotImplementedError

    def _embed_in_batches(self, pixels: list[torch.Tensor], forward) -> np.ndarray:
        """`forward` of pixel batches on the encoder's device, unit-normalised, back on the CPU."""
        out = []
        for i in range(0, len(pixels), self.batch_size):
            batch = torch.stack(pixels[i : i + self.batch_size])
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            else:
                batch = batch.to(self.device)
            out.append(torch.nn.functional.normalize(forward(batch).float(), dim=-1).cpu().numpy())
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


class DescriptorEncoder(ImageEncoder):
    """Classical scene descriptors (encoders/scene_descriptors.py): deterministic, no weights, batched torch on the
    encoder's device."""

    def __init__(self, spec: EncoderSpec, device: str | torch.device = "cpu", batch_size: int = 256):
        prepare_torchvision()
        from torchvision import transforms

        self.spec, self.device, self.batch_size = spec, torch.device(device), batch_size
        self.descriptor = DescriptorSpec()
        size = (self.descriptor.image_px, self.descriptor.image_px)
        resize = transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True)
        self.preprocess = transforms.Compose([_to_rgb, resize, transforms.ToTensor()])
        self.views = ViewMaker(self.preprocess, spec.seed)
        self.identity = EncoderIdentity(
            DESCRIPTORS, None, spec.seed, self.descriptor.dim, family=DESCRIPTORS, descriptor=self.descriptor.to_dict()
        )

    @torch.no_grad()
    def embed_pixels(self, pixels: list[torch.Tensor]) -> np.ndarray:
        return self._embed_in_batches(pixels, lambda batch: describe(batch, self.descriptor))


class OpenClipEncoder(ImageEncoder):
    """An open_clip image tower: weights from a pretrained tag (hub or its local cache), a local checkpoint
    file, or, with neither, a seeded random init (which every output names)."""

    def __init__(self, spec: EncoderSpec, device: str | torch.device = "cpu", batch_size: int = 64):
        open_clip = import_open_clip()
        self.spec, self.device, self.batch_size = spec, torch.device(device), batch_size
        weights = _weights_file(spec)
        if weights is not None:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model_name, pretrained=str(weights), **_tag_options(spec)
            )
        else:
            with seeded_global_rng(spec.seed):
                model, _, preprocess = open_clip.create_model_and_transforms(spec.model_name, pretrained=None)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.views = ViewMaker(preprocess, spec.seed)
        with torch.no_grad():
            size = _image_size(preprocess)
            embed_dim = int(self.model.encode_image(torch.zeros(1, 3, size, size, device=self.device)).shape[-1])
        checkpoint_sha = sha256_file(weights) if weights is not None else None
        self.identity = EncoderIdentity(
            spec.model_name, checkpoint_sha, spec.seed, embed_dim, pretrained=spec.pretrained
        )

    @torch.no_grad()
    def embed_pixels(self, pixels: list[torch.Tensor]) -> np.ndarray:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                return self.model.encode_image(batch)

        return self._embed_in_batches(pixels, forward)


def _weights_file(spec: EncoderSpec) -> Path | None:
    """The local file of the encoder's weights: its checkpoint, or its pretrained tag's (cached or
    downloaded); None for a seeded init."""
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"encoder checkpoint not found: {path}")
        return path
    if spec.pretrained is not None:
        from locdiff_pipeline.encoders.open_clip_weights import resolve_pretrained

        return resolve_pretrained(spec.model_name, spec.pretrained)
    return None


def _tag_options(spec: EncoderSpec) -> dict:
    """What open_clip sets up from a pretrained tag and not from a bare weights file: the activation the
    weights were trained with and the tag's image normalisation."""
    if spec.pretrained is None:
        return {}
    from locdiff_pipeline.encoders.open_clip_weights import tag_config

    config = tag_config(spec.model_name, spec.pretrained)
    options = {
        "force_quick_gelu": bool(config.get("quick_gelu", False)),
        "image_mean": config.get("mean"),
        "image_std": config.get("std"),
        "image_interpolation": config.get("interpolation"),
        "image_resize_mode": config.get("resize_mode"),
    }
    return {name: value for name, value in options.items() if value is not None}


def build_encoder(spec: EncoderSpec, device: str | torch.device = "cpu") -> ImageEncoder:
    """The encoder a spec names."""
    if spec.family == DESCRIPTORS:
        return DescriptorEncoder(spec, device=device)
    return OpenClipEncoder(spec, device=device)


_GLOBAL_RNG_LOCK = threading.Lock()


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """torch's global generator seeded for this block alone, its state put back after. torchvision's
    random transforms and open_clip's initialisation draw from the global generator and take no
    generator of their own, so the block holds a process-wide lock: a model server answers concurrent
    requests in threads, whose seeded draws would otherwise interleave (issue #24)."""
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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
        with seeded_global_rng(zlib.crc32(key.encode()) + self.seed):
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
    colour jitter, then the encoder's own normalisation, if it has one."""
    from torchvision import transforms

    normalize = [t for t in preprocess.transforms if isinstance(t, transforms.Normalize)]
    size = _image_size(preprocess)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            *([transforms.RandomHorizontalFlip()] if flips else []),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            _to_rgb,
            transforms.ToTensor(),
            *normalize,
        ]
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def recorded_encoder(recorded: dict | None, checkpoint: str | None, device) -> ImageEncoder:
    """The encoder a model records it was trained with (its `encoder` metadata), rebuilt: the descriptors or a
    seeded init from the record alone; pretrained weights from `checkpoint`, else from the recorded tag
    (hub cache); the rebuilt encoder's label (weights hash included) must match the record."""
    if not recorded:
        raise ValueError("the model records no image encoder; it cannot embed images")
    pretrained = recorded.get("pretrained") if checkpoint is None else None
    if recorded.get("is_pretrained") and checkpoint is None and pretrained is None:
        raise ValueError(
            f"the model was trained on {recorded['label']}: pass that encoder checkpoint (--encoder-checkpoint PATH)"
        )
    weights = checkpoint if recorded.get("is_pretrained") else None
    spec = EncoderSpec(recorded["model_name"], weights, int(recorded.get("seed", 0)), pretrained)
    encoder = build_encoder(spec, device=device)
    if encoder.identity.label != recorded["label"]:
        raise ValueError(f"encoder {encoder.identity.label} does not match the model's {recorded['label']}")
    return encoder
