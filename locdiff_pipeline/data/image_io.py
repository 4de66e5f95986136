"""Decoding images with Pillow, with errors that name the image and the reason.

torchvision's compiled decoders are unavailable on the CPU build of torch here, and Pillow gives clear
errors for truncated or corrupt files, which ingest turns into per-record rejections. Hostile input is
refused before it costs anything: an image whose header declares more than `max_image_pixels()` pixels
is refused before decoding (a 48 KB PNG can declare 20000 x 20000), and a path that is not a regular
file (a FIFO, a device, a socket) is refused without being opened, so reading never hangs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from locdiff_pipeline import settings


class ImageDecodeError(ValueError):
    """An image could not be read; the message names the image and why."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than the configured limit; it was not decoded."""


class ImageReadError(ImageDecodeError):
    """The file could not be read at all (not a regular file, a symlink loop, no permission, ...)."""


def max_image_pixels() -> int:
    """The pixel-count limit: $LOCDIFF_MAX_IMAGE_PIXELS (100 Mpx by default: a 300 MB RGB decode, above any
    camera photo or map tile)."""
    return settings.current().max_image_pixels


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Fully decode image bytes to RGB, or raise ImageDecodeError naming `name`. Images declaring more than
    `max_pixels` (default: max_image_pixels()) are refused from their header, before decoding."""
    if not data:
        raise ImageDecodeError(f"{name}: empty image file")
    limit = max_pixels or max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, below
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > limit:
                    raise ImageTooLargeError(
                        f"{name}: image too large: {width} x {height} = {width * height:,} pixels, over the "
                        f"limit of {limit:,} (set LOCDIFF_MAX_IMAGE_PIXELS to change it)"
                    )
                image.load()  # force the full decode so truncated files fail here, not later
                return image.convert("RGB")
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own check, at twice its limit, fires first
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(declared[1]):,} pixels" if declared else "its declared size"
        raise ImageTooLargeError(f"{name}: image too large: {size}, over the limit of {limit:,}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({error})") from None


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of a regular file. Anything else is refused without opening it (opening a FIFO for
    reading blocks until a writer comes), as are symlink loops and unreadable files: ImageReadError,
    or FileNotFoundError when nothing is there."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks; a loop raises ELOOP here
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read file ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        raise ImageReadError(f"{path}: {kind}")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read file ({error.strerror or error})") from None


def read_image_bytes(path: str | Path) -> bytes:
    """An image file's bytes, or ImageDecodeError naming it (missing, unreadable, special)."""
    try:
        return read_file_bytes(path)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None


def read_image_file(path: str | Path) -> Image.Image:
    """Read and decode an image file, naming it in any error (missing, unreadable, special, too large, corrupt)."""
    return decode_image(read_image_bytes(path), str(path))


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
