"""Dagster's webserver on a Unix socket, so that the UI's only TCP port is the guard's.

dagster-webserver (1.13) serves on a TCP port, which checks neither Origin nor Host: any local user, and any
page that scans loopback ports, reached it past the guard. This runs dagster-webserver's own command, with
every option it takes (workspace, instance, database pool), and does its last stage, hosting the app, on a
Unix socket instead, in a folder only this user can open; the guard (ui_guard.py) alone connects to it.

    python -m locdiff_pipeline.ui_webserver SOCKET [dagster-webserver options]
"""

from __future__ import annotations

import logging
import os
import socket as stdlib_socket
import sys
from pathlib import Path

READY = "Serving dagster-webserver on unix socket"  # the line dev_server waits for


def host_on_socket(socket: Path):
    """A stand-in for dagster_webserver.cli.host_dagster_ui_with_workspace_process_context that serves the
    same app (create_app_from_workspace_process_context, as that function builds it) on `socket`; the host
    and port it is given are not used."""
    import uvicorn
    from dagster_webserver import cli
    from dagster_webserver.app import create_app_from_workspace_process_context

    def host(workspace_process_context, host, port, path_prefix, log_level, live_data_poll_rate=None) -> None:
        app = create_app_from_workspace_process_context(
            workspace_process_context, path_prefix, live_data_poll_rate, lifespan=cli._lifespan
        )
        logging.getLogger(cli.WEBSERVER_LOGGER_NAME).info(f"{READY} {socket} in process {os.getpid()}")
        _private_socket_file(socket)
        uvicorn.run(app, uds=str(socket), log_level=log_level)

    return host


def _private_socket_file(path: Path) -> None:
    """Leave a socket file of mode 600 at `path`: uvicorn sets a new socket to 666 but keeps the mode of one that
    is there when it binds (uvicorn/server.py), which asyncio then replaces with its own."""
    with stdlib_socket.socket(stdlib_socket.AF_UNIX) as placeholder:
        placeholder.bind(str(path))
    path.chmod(0o600)


def main() -> None:
    socket, options = Path(sys.argv[1]), sys.argv[2:]
    if not socket.parent.is_dir() or socket.parent.stat().st_mode & 0o077:
        raise SystemExit(f"{socket.parent} must be a folder only its owner can open (mode 700)")
    os.umask(0o077)  # the socket file itself: mode 600
    from dagster_webserver import cli

    cli.host_dagster_ui_with_workspace_process_context = host_on_socket(socket)
    sys.argv = ["dagster-webserver", *options]
    cli.main()


if __name__ == "__main__":
    main()
