"""Where image bytes come from: a folder tree, tar archives, or msgpack shards (MP16's distributions).

A folder is read by path. Archives are scanned once (by the metadata split) into an index of id ->
reference, sharded like the metadata; each shard then reads its images by seeking straight to them,
so no process ever holds an index of the whole dataset. References ('PATH', 'tar:ARCHIVE::MEMBER@OFFSET+SIZE',
'msgpack:SHARD@OFFSET') are what tables store in place of the bytes at MP16 scale.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import msgpack

from locdiff_pipeline.data.image_io import ImageReadError, read_file_bytes


class ImageMissingError(KeyError):
    """No image for this id in the source."""


ARCHIVE_LAYOUTS = ("tar", "msgpack")
MSGPACK_ID_KEYS = ("id", "IMG_ID", "image_id")
MSGPACK_IMAGE_KEYS = ("image", "img", "bytes")
_TAR_MEMBER = re.compile(r"(?P<member>.*)@(?P<offset>\d+)\+(?P<size>\d+)")
_COMPRESSED = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}


def archive_paths(pattern: str) -> list[Path]:
    """The archives a glob names, sorted (their order decides which copy of a repeated id is kept)."""
    matches = sorted(Path(p) for p in glob.glob(pattern))
    if not matches:
        raise FileNotFoundError(f"no files match {pattern}")
    return matches


def scan_archive(layout: str, path: Path, problems: list[dict] | None = None) -> Iterator[tuple[str, str]]:
    """(image_id, reference) for every record of one archive, streamed in archive order.

    A corrupt stretch does not fail the dataset: the records before it are yielded, and the problem (the
    archive, the byte offset, the reason) is appended to `problems` (raised as ValueError without it).
    A record without an id is skipped the same way; bytes that break the archive's framing end its scan,
    as nothing after them can be located."""

    def problem(offset: int, reason: str) -> None:
        found = {"archive": str(path), "offset": int(offset), "reason": f"{reason} at byte {offset} of {path}"}
        if problems is None:
            raise ValueError(found["reason"])
        problems.append(found)

    if layout == "tar":
        archive = None
        try:
            with tarfile.open(path, "r:*") as archive:
                while (member := archive.next()) is not None:
                    if member.isfile():
                        yield (
                            member.name.removeprefix("./"),
                            f"tar:{path}::{member.name}@{member.offset_data}+{member.size}",
                        )
                    archive.members.clear()  # keep memory bounded by one member, not the archive
        except (tarfile.TarError, OSError, EOFError) as error:
            problem(archive.offset if archive is not None else 0, f"unreadable tar data ({error})")
    elif layout == "msgpack":
        with open(path, "rb") as handle:
            unpacker = msgpack.Unpacker(handle, raw=False)
            offset = 0
            while True:
                try:
                    record = next(unpacker)
                except StopIteration:
                    break
                except Exception as error:  # msgpack raises FormatError, ExtraData, StackError, ValueError...
                    problem(offset, f"corrupt msgpack data ({type(error).__name__}: {error})")
                    break
                image_id = _field(record, MSGPACK_ID_KEYS, path, required=False)
                if image_id is None:
                    problem(offset, f"a msgpack record with none of the id keys {MSGPACK_ID_KEYS}")
                else:
                    yield str(image_id), f"msgpack:{path}@{offset}"
                offset = unpacker.tell()
    else:
        raise ValueError(f"layout {layout!r} has no archives to scan: use 'tar' or 'msgpack'")


def _field(record: object, keys: tuple[str, ...], path: Path | str, required: bool = True):
    if isinstance(record, dict):
        for key in keys:
            if key in record:
                return record[key]
    if not required:
        return None
    raise ValueError(f"{path}: a record has none of the keys {keys}")


class FolderSource:
    """IMG_ID is a path relative to the root folder (MP16's `00/00/123456.jpg`, Im2GPS3k's file names)."""

    def __init__(self, root: str | Path, suffix: str = ""):
        self.root, self.suffix = Path(root), suffix
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")

    def reference(self, image_id: str) -> str:
        return str(self.root / (image_id + self.suffix))

    def read(self, image_id: str) -> bytes:
        """The image's bytes; ImageMissingError when there is none, ImageReadError when it cannot be read
        (a symlink loop, no permission, a FIFO or other special file, which is never opened)."""
        path = self.root / (image_id + self.suffix)
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as error:  # RuntimeError: Python < 3.13 reports symlink loops so
            raise ImageReadError(f"{path}: cannot resolve the path ({error})") from None
        if self.root.resolve() not in resolved.parents:
            raise ImageMissingError(f"image id {image_id!r} points outside the image folder")
        try:
            return read_file_bytes(resolved)
        except FileNotFoundError:
            raise ImageMissingError(f"image not found at {resolved}") from None


class IndexedSource:
    """Archive images of one shard, found through that shard's part of the archive index."""

    def __init__(self, layout: str, index: dict[str, str]):
        self.layout, self.index = layout, index

    def reference(self, image_id: str) -> str:
        return self.index.get(image_id, f"{self.layout}:?::{image_id}")

    def read(self, image_id: str) -> bytes:
        if image_id not in self.index:
            raise ImageMissingError(f"image {image_id!r} is in no {self.layout} archive")
        return read_reference(self.index[image_id])


def read_reference(reference: str) -> bytes:
    """Image bytes from a reference written by a source: a path, 'tar:ARCHIVE::MEMBER@OFFSET+SIZE' or
    'msgpack:SHARD@OFFSET'."""
    if reference.startswith("tar:"):
        archive, member = reference.removeprefix("tar:").split("::", 1)
        located = _TAR_MEMBER.fullmatch(member)
        if located is None:  # a reference without an offset: find the member by name
            with tarfile.open(archive, "r:*") as handle:
                extracted = handle.extractfile(member)
                if extracted is None:
                    raise ImageMissingError(f"{reference}: member is not a file")
                return extracted.read()
        with _open_decompressed(archive) as handle:
            handle.seek(int(located["offset"]))
            return handle.read(int(located["size"]))
    if reference.startswith("msgpack:"):
        shard, offset = reference.removeprefix("msgpack:").rsplit("@", 1)
        try:
            with open(shard, "rb") as handle:
                handle.seek(int(offset))
                record = next(msgpack.Unpacker(handle, raw=False))
            return bytes(_field(record, MSGPACK_IMAGE_KEYS, shard))
        except FileNotFoundError:
            raise ImageMissingError(f"archive not found: {shard}") from None
        except Exception as error:  # any msgpack error, a missing image key, a non-bytes image field
            raise ImageReadError(f"corrupt msgpack record at byte {offset} of {shard} ({error})") from None
    try:
        return Path(reference).read_bytes()
    except FileNotFoundError:
        raise ImageMissingError(f"image not found at {reference}") from None


def _open_decompressed(path: str):
    """The archive as a seekable stream of its tar bytes (offsets in a compressed tar are in the
    decompressed stream; seeking there costs a decompression, so MP16 tars are best left uncompressed)."""
    with open(path, "rb") as handle:
        magic = handle.read(6)
    for prefix, opener in _COMPRESSED.items():
        if magic.startswith(prefix):
            return opener(path, "rb")
    return open(path, "rb")
