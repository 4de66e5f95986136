"""`locdiff dev`: `dagster dev` on a private loopback port, the UI served through ui_guard's proxy.

The user's address (127.0.0.1:3000 by default) is the guard's; `dagster dev` listens on a free port of
127.0.0.1 that only this machine can reach. SIGTERM or Ctrl-C stops both: the guard stops serving and
`dagster dev` gets SIGTERM, which it passes to the webserver, daemon and code servers it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from locdiff_pipeline.data.paths import reports_dir
from locdiff_pipeline.defs.run_paths import GUARD_ENV
from locdiff_pipeline.ui_guard import build_app

STOP_SECONDS = 50  # dagster dev's own shutdown of its children takes a few seconds; then SIGKILL


def serve(host: str, port: int, dagster_args: list[str], env: dict[str, str], webserver_only: bool = False) -> int:
    """Serve until SIGTERM/SIGINT or until `dagster dev` exits; its exit status, or 0 when stopped.
    `webserver_only`: `dagster-webserver` alone (a team's stack runs its own dagster-daemon)."""
    private = _free_loopback_port()
    program = ["dagster-webserver"] if webserver_only else ["dagster", "dev"]
    command = [str(Path(sys.executable).with_name(program[0])), *program[1:]]
    command += ["-m", "locdiff_pipeline.definitions", "-h", "127.0.0.1", "-p", str(private)]
    # A shell starts a background job (`locdiff dev &`) with SIGINT ignored, and `dagster dev` handles
    # SIGTERM with whatever handles SIGINT: restored to the default, it and its children stop on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    child = subprocess.Popen(
        [*command, *dagster_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    ours = f"http://{host}:{port}"
    _relay(child.stdout, sys.stdout, private, ours)
    _relay(child.stderr, sys.stderr, private, ours)
    try:
        return asyncio.run(_proxy_while_running(child, host, port, f"http://127.0.0.1:{private}"))
    finally:
        _stop(child)


async def _proxy_while_running(child: subprocess.Popen, host: str, port: int, upstream: str) -> int:
    from aiohttp import web

    runner = web.AppRunner(build_app(upstream, host, reports_dir()), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"locdiff: starting the Dagster UI at http://{host}:{port} (guarded; see ui_guard.py)", file=sys.stderr)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stopped.set)
    try:
        while not stopped.is_set() and child.poll() is None:
            try:
                await asyncio.wait_for(stopped.wait(), timeout=0.5)
            except TimeoutError:
                pass
    finally:
        await runner.cleanup()
    return 0 if stopped.is_set() else child.returncode


def _relay(source, sink, private: int, ours: str) -> None:
    """Copy the child's output, but for what would send a user past the guard: the webserver's own
    address (said instead as the guard's, once it is ready) and the `dg dev` advice for `dagster dev`,
    which `locdiff dev` wraps (the warning and the source line Python prints under it)."""

    def copy() -> None:
        skip_next = False
        for line in source:
            if skip_next:
                skip_next = False
                continue
            if f"127.0.0.1:{private}" in line and "Serving dagster-webserver" in line:
                line = f"locdiff: the Dagster UI is ready at {ours}\n"
            elif "SupersessionWarning" in line and "dg dev" in line:
                skip_next = True
                continue
            sink.write(line)
            sink.flush()

    threading.Thread(target=copy, daemon=True).start()


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def guarded_env(dagster_home: str) -> dict[str, str]:
    """The environment of `dagster dev` and the runs it launches: the project's Dagster instance, and the
    mark that restricts run-config paths to the project's folders (defs/run_paths.py)."""
    return {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or dagster_home, GUARD_ENV: "1"}
