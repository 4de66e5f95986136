"""Is the process that started a run still alive? Runs record their pid and host so that a later start
marks only the runs of dead processes as failed, never a live run of another process."""

from __future__ import annotations

import os
import socket

PID_TAG = "locdiff.pid"
HOST_TAG = "locdiff.host"


def owner_tags() -> dict[str, str]:
    """Tags naming this process, recorded on the runs it starts."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def owner_is_gone(tags: dict[str, str]) -> bool:
    """True when the tags name a process on this host that no longer exists. Runs from another host, or
    without the tags, cannot be checked from here: they are left alone."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    try:
        os.kill(int(tags[PID_TAG]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
