"""One writer per project folder: the lock `locdiff run` and every Dagster run that writes the warehouse hold.

The lock is `fcntl.flock` on `<root>/.locdiff.lock`: the kernel releases it when its holder dies (SIGKILL
included), so a stale lock of a dead process is free by construction and the next writer simply takes it.
The file's text names the holder (pid, start time, command) for the message a second writer sees.

It is a readers-writer lock. `locdiff run` and any run that writes more than one partition (ingest's
split, training) hold it exclusively; a run of one partition (one shard, one benchmark), which writes
only that partition's files and swaps them in atomically, holds it shared, so a backfill's shard runs
still run in parallel with each other, never beside an exclusive writer. The processes an exclusive
holder starts (the multiprocess executor's step processes) inherit LOCK_TOKEN_ENV and work under their
parent's lock instead of waiting for it.

Writers on several machines (a team's stack: coordination/database_lock.py) cannot see one machine's flock:
with a PostgreSQL URL given (LOCDIFF_LOCK_DATABASE), the same readers-writer lock is a PostgreSQL
advisory lock on the project's key instead, which the server releases when its holder's connection dies.
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

from locdiff_pipeline.coordination.lock_terms import LOCK_TOKEN_ENV, POLL_SECONDS, ProjectLocked

__all__ = ["LOCK_FILE", "LOCK_TOKEN_ENV", "ProjectLocked", "holder", "project_lock"]

LOCK_FILE = ".locdiff.lock"


def holder(root: Path) -> dict:
    """What the lock file says about its holder ({} when none has written it, or when the process it names
    has exited: a holder killed with SIGKILL leaves its record behind, and its lock free)."""
    try:
        record = json.loads((Path(root) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and _alive(record.get("pid")) else {}


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def describe(record: dict) -> str:
    if not record:
        return "another process"
    return f"pid {record.get('pid')} ({record.get('command', '?')}, since {record.get('started', '?')})"


@contextmanager
def project_lock(
    root: str | Path,
    wait_seconds: float = 0.0,
    command: str | None = None,
    shared: bool = False,
    database: str | None = None,
) -> Iterator[dict]:
    """Hold the project's writer lock for the block (`shared`: beside other shared holders only); wait up
    to `wait_seconds` (inf: for ever) for a holder to finish, else raise ProjectLocked naming it. Yields
    the holder record written. With `database` (a PostgreSQL URL) the lock lives in that server."""
    if database:
        from locdiff_pipeline.coordination.database_lock import database_lock

        with database_lock(database, Path(root), wait_seconds, command, shared) as record:
            yield record
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    inherited = os.environ.get(LOCK_TOKEN_ENV)
    if inherited and holder(root).get("token") == inherited:
        yield holder(root)  # a process started by the holder: it works under its parent's lock
        return
    descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(descriptor, root, wait_seconds, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        record = {
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
            "shared": shared,
            "token": None if shared else uuid.uuid4().hex,
        }
        if not shared:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps(record).encode(), 0)
            os.environ[LOCK_TOKEN_ENV] = record["token"]
        elif not holder(root):  # the first live shared holder names itself; the others leave it be
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps(record).encode(), 0)
        try:
            yield record
        finally:
            if not shared:
                if inherited is None:
                    os.environ.pop(LOCK_TOKEN_ENV, None)
                else:
                    os.environ[LOCK_TOKEN_ENV] = inherited
                os.ftruncate(descriptor, 0)
            elif _try_lock(descriptor, fcntl.LOCK_EX):  # the last shared holder: nobody is left to name
                os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _try_lock(descriptor: int, mode: int) -> bool:
    try:
        fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _acquire(descriptor: int, root: Path, wait_seconds: float, mode: int) -> None:
    deadline = time.monotonic() + wait_seconds
    while not _try_lock(descriptor, mode):
        if time.monotonic() >= deadline:
            raise ProjectLocked(
                f"{root} is being written by {describe(holder(root))}: wait for it to finish, "
                "or give a waiting time (locdiff run --wait SECONDS)"
            )
        time.sleep(POLL_SECONDS)
