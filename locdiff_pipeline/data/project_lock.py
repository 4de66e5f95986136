"""One writer per project folder: the exclusive lock that `locdiff run` and every Dagster step that writes
the warehouse hold.

The lock is `fcntl.flock` on `<root>/.locdiff.lock`: the kernel releases it when its holder dies (SIGKILL
included), so a stale lock of a dead process is free by construction and the next writer simply takes it.
The file's text names the holder (pid, start time, command) for the message a second writer sees. The
processes a holder starts (the multiprocess executor's step processes) inherit LOCK_TOKEN_ENV and work
under their parent's lock instead of waiting for it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".locdiff.lock"
LOCK_TOKEN_ENV = "LOCDIFF_LOCK_TOKEN"
POLL_SECONDS = 0.5


class ProjectLocked(RuntimeError):
    """Another process is writing this project folder."""


def holder(root: Path) -> dict:
    """What the lock file says about its holder ({} when none has written it)."""
    try:
        return json.loads((Path(root) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(record: dict) -> str:
    if not record:
        return "another process"
    return f"pid {record.get('pid')} ({record.get('command', '?')}, since {record.get('started', '?')})"


@contextmanager
def project_lock(root: str | Path, wait_seconds: float = 0.0, command: str | None = None) -> Iterator[dict]:
    """Hold the project's writer lock for the block; wait up to `wait_seconds` (inf: for ever) for a
    holder to finish, else raise ProjectLocked naming it. Yields the holder record written."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    inherited = os.environ.get(LOCK_TOKEN_ENV)
    if inherited and holder(root).get("token") == inherited:
        yield holder(root)  # a process started by the holder: it works under its parent's lock
        return
    descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(descriptor, root, wait_seconds)
        record = {
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
            "token": uuid.uuid4().hex,
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(record).encode(), 0)
        os.environ[LOCK_TOKEN_ENV] = record["token"]
        try:
            yield record
        finally:
            if inherited is None:
                os.environ.pop(LOCK_TOKEN_ENV, None)
            else:
                os.environ[LOCK_TOKEN_ENV] = inherited
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _acquire(descriptor: int, root: Path, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ProjectLocked(
                    f"{root} is being written by {describe(holder(root))}: wait for it to finish, "
                    "or give a waiting time (locdiff run --wait SECONDS)"
                ) from None
            time.sleep(POLL_SECONDS)
