"""Where image bytes come from: a folder tree, tar archives, or msgpack shards (MP16's distributions).

Every source answers `read(image_id) -> bytes` and gives a `reference` string that says where the image
lives, so tables can store a reference instead of the bytes at MP16 scale.
"""

from __future__ import annotations

import glob
import tarfile
from dataclasses import dataclass
from pathlib import Path

import msgpack


class ImageMissingError(KeyError):
    """No image for this id in the source."""


@dataclass(frozen=True)
class EmptyShard:
    """An archive or shard that holds no records: reported as a rejection of the shard itself."""

    path: str


def _expand(pattern: str) -> list[Path]:
    matches = sorted(Path(p) for p in glob.glob(pattern))
    if not matches:
        raise FileNotFoundError(f"no files match {pattern}")
    return matches


class FolderSource:
    """IMG_ID is a path relative to the root folder (MP16's `00/00/123456.jpg`, Im2GPS3k's file names)."""

    layout = "folder"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.empty_shards: list[EmptyShard] = []

    def reference(self, image_id: str) -> str:
        return str(self.root / image_id)

    def read(self, image_id: str) -> bytes:
        path = (self.root / image_id).resolve()
        if self.root.resolve() not in path.parents:
            raise ImageMissingError(f"image id {image_id!r} points outside the image folder")
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ImageMissingError(f"image not found at {path}") from None


class TarSource:
    """One or many tar archives (a glob); members are matched to ids by their path inside the archive."""

    layout = "tar"

    def __init__(self, pattern: str):
        self.index: dict[str, tuple[Path, tarfile.TarInfo]] = {}
        self.empty_shards = []
        self._open: dict[Path, tarfile.TarFile] = {}
        for path in _expand(pattern):
            with tarfile.open(path, "r:*") as archive:
                members = [m for m in archive.getmembers() if m.isfile()]
            if not members:
                self.empty_shards.append(EmptyShard(str(path)))
            for member in members:
                self.index.setdefault(member.name.removeprefix("./"), (path, member))

    def reference(self, image_id: str) -> str:
        path, member = self.index.get(image_id, (None, None))
        return f"tar:{path}::{member.name}" if path else f"tar:?::{image_id}"

    def read(self, image_id: str) -> bytes:
        if image_id not in self.index:
            raise ImageMissingError(f"image {image_id!r} is in no tar archive")
        path, member = self.index[image_id]
        if path not in self._open:
            self._open[path] = tarfile.open(path, "r:*")
        handle = self._open[path].extractfile(member)
        return handle.read() if handle is not None else b""


class MsgpackSource:
    """msgpack shards of records {"id": ..., "image": bytes} (the MP16 shards GeoCLIP-era code uses).

    The shards are scanned once for the offset of each record; reads then seek straight to it.
    """

    layout = "msgpack"
    ID_KEYS = ("id", "IMG_ID", "image_id")
    IMAGE_KEYS = ("image", "img", "bytes")

    def __init__(self, pattern: str):
        self.index: dict[str, tuple[Path, int]] = {}
        self.empty_shards = []
        for path in _expand(pattern):
            count = 0
            with open(path, "rb") as handle:
                unpacker = msgpack.Unpacker(handle, raw=False)
                offset = 0
                for record in unpacker:
                    record_id = self._field(record, self.ID_KEYS, path)
                    self.index.setdefault(str(record_id), (path, offset))
                    offset = unpacker.tell()
                    count += 1
            if count == 0:
                self.empty_shards.append(EmptyShard(str(path)))

    @staticmethod
    def _field(record: object, keys: tuple[str, ...], path: Path):
        if isinstance(record, dict):
            for key in keys:
                if key in record:
                    return record[key]
        raise ValueError(f"{path}: a record has none of the keys {keys}")

    def reference(self, image_id: str) -> str:
        path, offset = self.index.get(image_id, (None, -1))
        return f"msgpack:{path}@{offset}"

    def read(self, image_id: str) -> bytes:
        if image_id not in self.index:
            raise ImageMissingError(f"image {image_id!r} is in no msgpack shard")
        path, offset = self.index[image_id]
        with open(path, "rb") as handle:
            handle.seek(offset)
            record = next(msgpack.Unpacker(handle, raw=False))
        return bytes(self._field(record, self.IMAGE_KEYS, path))


def open_source(layout: str, location: str) -> FolderSource | TarSource | MsgpackSource:
    """The source for a layout name and a path (folder) or glob (tar, msgpack)."""
    if layout == "folder":
        return FolderSource(location)
    if layout == "tar":
        return TarSource(location)
    if layout == "msgpack":
        return MsgpackSource(location)
    raise ValueError(f"unknown image layout {layout!r}: use 'folder', 'tar' or 'msgpack'")


def read_reference(reference: str) -> bytes:
    """Image bytes from a reference written by a source: a path, 'tar:ARCHIVE::MEMBER' or 'msgpack:SHARD@OFFSET'."""
    if reference.startswith("tar:"):
        archive, member = reference.removeprefix("tar:").split("::", 1)
        with tarfile.open(archive, "r:*") as handle:
            extracted = handle.extractfile(member)
            if extracted is None:
                raise ImageMissingError(f"{reference}: member is not a file")
            return extracted.read()
    if reference.startswith("msgpack:"):
        shard, offset = reference.removeprefix("msgpack:").rsplit("@", 1)
        with open(shard, "rb") as handle:
            handle.seek(int(offset))
            record = next(msgpack.Unpacker(handle, raw=False))
        return bytes(MsgpackSource._field(record, MsgpackSource.IMAGE_KEYS, Path(shard)))
    try:
        return Path(reference).read_bytes()
    except FileNotFoundError:
        raise ImageMissingError(f"image not found at {reference}") from None
