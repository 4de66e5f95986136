"""`locdiff dev`: Dagster's webserver and daemon, the UI served through ui_guard's proxy on one TCP port.

The user's address (127.0.0.1:3000 by default) is the guard's and the only TCP port that serves HTTP:
Dagster's webserver listens on a Unix socket in a folder only this user can open (ui_webserver.py), which
the guard alone connects to, and the daemon (schedules, sensors, backfills, the run queue) listens on none.
They are what `dagster dev` starts, each with its own code server. SIGTERM or Ctrl-C stops all of it: the
guard stops serving, and each child's process group (its code servers included) gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from locdiff_pipeline.data.paths import reports_dir
from locdiff_pipeline.defs.run_paths import GUARD_ENV
from locdiff_pipeline.ui_guard import build_app
from locdiff_pipeline.ui_webserver import READY

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SECONDS = 50  # the webserver's and daemon's own shutdown of their code servers takes seconds; then SIGKILL
WORKSPACE = ["-m", "locdiff_pipeline.definitions"]


def serve(host: str, port: int, webserver_args: list[str], env: dict[str, str], webserver_only: bool = False) -> int:
    """Serve until SIGTERM/SIGINT or until a child exits; its exit status, or 0 when stopped. `webserver_args`:
    further dagster-webserver options; `webserver_only`: no daemon (a team's stack runs its own)."""
    folder = Path(tempfile.mkdtemp(prefix="locdiff-ui-"))  # mode 700: this user's alone
    socket = folder / "dagster.sock"
    commands = [[sys.executable, "-m", "locdiff_pipeline.ui_webserver", str(socket), *WORKSPACE, *webserver_args]]
    if not webserver_only:
        commands.append([str(Path(sys.executable).with_name("dagster-daemon")), "run", *WORKSPACE])
    # A shell starts a background job (`locdiff dev &`) with SIGINT ignored; restored, the children stop on it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    children = []
    try:
        for command in commands:
            child = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,  # its own group: stopped with its code servers (_stop)
                preexec_fn=_stop_with_parent(os.getpid()),
            )
            children.append(child)
            _relay(child.stdout, sys.stdout, f"http://{host}:{port}")
            _relay(child.stderr, sys.stderr, f"http://{host}:{port}")
        return asyncio.run(_proxy_while_running(children, host, port, socket))
    finally:
        _stop(children)
        shutil.rmtree(folder, ignore_errors=True)


async def _proxy_while_running(children: list[subprocess.Popen], host: str, port: int, socket: Path) -> int:
    from aiohttp import web

    runner = web.AppRunner(build_app(host, reports_dir(), socket), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"locdiff: starting the Dagster UI at http://{host}:{port} (guarded; see ui_guard.py)", file=sys.stderr)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stopped.set)
    try:
        while not stopped.is_set() and all(child.poll() is None for child in children):
            try:
                await asyncio.wait_for(stopped.wait(), timeout=0.5)
            except TimeoutError:
                pass
    finally:
        await runner.cleanup()
    exited = [child.returncode for child in children if child.poll() is not None]
    return 0 if stopped.is_set() else (exited[0] or 1)


def _relay(source, sink, ours: str) -> None:
    """Copy a child's output, but for the webserver's own address (said instead as the guard's, once it is
    ready)."""

    def copy() -> None:
        for line in source:
            sink.write(f"locdiff: the Dagster UI is ready at {ours}\n" if READY in line else line)
            sink.flush()

    threading.Thread(target=copy, daemon=True).start()


def _stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM to each child's process group (it and the code servers it started), SIGKILL after STOP_SECONDS."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        _signal_group(child, signal.SIGTERM)
    for child in running:
        try:
            child.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for child in children:  # a code server that outlived its parent
        _signal_group(child, signal.SIGKILL)


def _stop_with_parent(parent: int):
    """A child's first act: ask Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG), so a `locdiff dev`
    killed outright (SIGKILL, a crash) leaves no webserver or daemon behind in its own session."""

    def arrange() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def _signal_group(child: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(child.pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def guarded_env(dagster_home: str) -> dict[str, str]:
    """The environment of `dagster dev` and the runs it launches: the project's Dagster instance, and the
    mark that restricts run-config paths to the project's folders (defs/run_paths.py)."""
    return {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or dagster_home, GUARD_ENV: "1"}
