"""`locdiff dev`'s children (Dagster's webserver and daemon, each in a session of its own so that stopping
one stops its code servers) die with it even when it is killed outright; the real server is driven in
test_dagster_dev.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PARENT = """
import subprocess, sys, time
from locdiff_pipeline import dev_server
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(120)"],
    start_new_session=True,
    preexec_fn=dev_server._stop_with_parent(__import__("os").getpid()),
)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_child_in_its_own_session_dies_when_locdiff_dev_is_killed_outright():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        os.kill(child, 0)  # alive, and not in the parent's process group
        assert os.getpgid(child) != os.getpgid(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the child outlived its killed parent"
    finally:
        parent.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie, reaped by init soon, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
