"""The project's readers-writer lock as a PostgreSQL advisory lock, for writers on several machines.

A flock on `<root>/.locdiff.lock` is seen only by the machine that holds it (and not at all over many
network file systems), so a team's stack coordinates its writers through its database instead: the key is
a hash of the project folder's path (the shared warehouse is mounted at the same path everywhere),
`pg_advisory_lock_shared` for a run of one partition and `pg_advisory_lock` otherwise, on a connection
held for the block. The server drops the lock with the connection, so a holder killed with SIGKILL, or
a machine that vanished, frees it as the flock's kernel does. The holder describes itself in the
connection's application_name, which the message to a waiting writer quotes; an exclusive holder's
token (LOCK_TOKEN_ENV) lets the processes it starts work under its lock, as with the file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from locdiff_pipeline.coordination.lock_terms import LOCK_TOKEN_ENV, POLL_SECONDS, ProjectLocked

_APPLICATION = "locdiff-writer"


def lock_key(root: Path) -> int:
    """A signed 64-bit advisory-lock key for the project folder."""
    digest = hashlib.sha256(f"locdiff:{Path(root).resolve()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def database_lock(url: str, root: Path, wait_seconds: float, command: str | None, shared: bool) -> Iterator[dict]:
    """Hold the project's lock in the server at `url` for the block (see the module's docstring)."""
    import psycopg2

    key = lock_key(root)
    inherited = os.environ.get(LOCK_TOKEN_ENV)
    if inherited and any(inherited in name for name in _holders(url, key, exclusive_only=True)):
        yield {"token": inherited}  # a process started by the exclusive holder: it works under its lock
        return
    token = None if shared else uuid.uuid4().hex[:16]
    record = {
        "pid": os.getpid(),
        "command": (command or Path(sys.argv[0]).name)[:120],
        "shared": shared,
        "token": token,
    }
    # application_name holds 63 characters: the token first, so it is never cut
    label = " ".join(filter(None, [_APPLICATION, token, f"pid {record['pid']}", record["command"]]))[:63]
    connection = psycopg2.connect(url, application_name=label, connect_timeout=10)
    connection.autocommit = True
    try:
        _acquire(connection, url, key, root, wait_seconds, shared)
        if token:
            os.environ[LOCK_TOKEN_ENV] = token
        try:
            yield record
        finally:
            if token:
                if inherited is None:
                    os.environ.pop(LOCK_TOKEN_ENV, None)
                else:
                    os.environ[LOCK_TOKEN_ENV] = inherited
    finally:
        connection.close()  # the server releases the advisory lock with its session


def _acquire(connection, url: str, key: int, root: Path, wait_seconds: float, shared: bool) -> None:
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    deadline = time.monotonic() + wait_seconds
    with connection.cursor() as cursor:
        while True:
            cursor.execute(f"SELECT {function}(%s)", (key,))
            if cursor.fetchone()[0]:
                return
            if time.monotonic() >= deadline:
                holders = _holders(url, key, exclusive_only=False) or ["another process"]
                raise ProjectLocked(
                    f"{root} is being written by {', '.join(holders)} (lock held in the stack's database): "
                    "wait for it to finish, or give a waiting time (locdiff run --wait SECONDS)"
                )
            time.sleep(POLL_SECONDS)


def _holders(url: str, key: int, exclusive_only: bool) -> list[str]:
    """application_name of each session holding the key (exclusively, if asked)."""
    import psycopg2

    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    query = (
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s "
        "AND l.objsubid = 1" + (" AND l.mode = 'ExclusiveLock'" if exclusive_only else "")
    )
    with closing(psycopg2.connect(url, connect_timeout=10)) as connection, connection.cursor() as cursor:
        cursor.execute(query, (high, low))
        return [row[0] for row in cursor.fetchall()]
