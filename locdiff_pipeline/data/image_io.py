"""Decoding images with Pillow, with errors that name the image and the reason.

torchvision's compiled decoders are unavailable on the CPU build of torch here, and Pillow gives clear
errors for truncated or corrupt files, which ingest turns into per-record rejections.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """An image could not be read; the message names the image and why."""


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode image bytes to RGB, or raise ImageDecodeError naming `name`."""
    if not data:
        raise ImageDecodeError(f"{name}: empty image file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # force the full decode so truncated files fail here, not later
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({error})") from None


def read_image_file(path: str | Path) -> Image.Image:
    """Read and decode an image file, naming it in any error (missing, unreadable, corrupt)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except OSError as error:
        raise ImageDecodeError(f"{path}: cannot read file ({error.strerror})") from None
    return decode_image(data, str(path))


def perceptual_hash(image: Image.Image) -> int:
    """63-bit DCT perceptual hash (pHash; fits an int64 column): the signs of an image's lowest spatial
    frequencies against their median. A resized, re-encoded or recoloured copy keeps most bits;
    unrelated images differ in about half of them, flat ones included, whose low frequencies are noise."""
    import numpy as np
    from scipy.fft import dctn

    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(pixels, norm="ortho")[:8, :8].ravel()[1:]  # without the mean (DC) term: 63 bits
    bits = low > np.median(low)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hash_distance(a: int, b: int) -> int:
    """Hamming distance between two perceptual hashes (0 = same picture)."""
    return (a ^ b).bit_count()


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an image (the warehouse stores images this way)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes: the checksum recorded for every ingested image."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
