"""A full disk, said as such: one line naming the disk and what was being written.

Each library reports a full disk in its own words: Python's OSError says "[Errno 28] No space left on
device", torch's zip writer "[enforce fail at inline_container.cc:672] . unexpected pos ...", Arrow
"IOError: ... error writing bytes". `writing()` wraps a write that may fill the disk and turns any of them
into DiskFullError once the disk it wrote to is seen to be (nearly) full.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NEARLY_FULL_BYTES = 16 << 20  # less free than this after a failed write: the write failed for want of space
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed because its disk is full; the message names the disk and what was being written."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]"
        return str(self.strerror)


@contextmanager
def writing(path: str | Path, what: str) -> Iterator[None]:
    """Run a write to `path` (a file or folder, existing or not); a failure that a full disk explains is
    raised again as DiskFullError, any other failure as it was."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        if not _is_disk_full(error, Path(path)):
            raise
        raise DiskFullError(errno.ENOSPC, _message(Path(path), what)) from error


def _is_disk_full(error: BaseException, path: Path) -> bool:
    seen: BaseException | None = error
    while seen is not None:  # the OSError may sit under the library's own exception
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(_existing(path)).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _message(path: Path, what: str) -> str:
    existing = _existing(path)
    usage = shutil.disk_usage(existing)
    return (
        f"no space left on {_mount_point(existing)} ({usage.free >> 20} MiB free of {usage.total >> 20} MiB) "
        f"while writing {what} to {path}: free some space there and run it again (nothing half-written is kept)"
    )


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path
