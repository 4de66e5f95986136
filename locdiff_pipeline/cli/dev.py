"""`locdiff dev`: the Dagster UI on the project's instance, behind the guard."""

from __future__ import annotations

import argparse


def add_dev(commands) -> None:
    dev = commands.add_parser(
        "dev",
        help="start the Dagster UI (its webserver and daemon) on this project's instance; SIGTERM or Ctrl-C stops it",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address to serve on (default %(default)s)")
    dev.add_argument("--port", type=int, default=3000, help="port (default %(default)s)")
    dev.add_argument("dagster_args", nargs=argparse.REMAINDER, help="further dagster-webserver options, after --")
    dev.set_defaults(handler=_dev, debug=False)


def _dev(args: argparse.Namespace) -> int:
    """Dagster's webserver and daemon on the project's instance (.dagster_home), the UI served through the
    guard that refuses runs launched by other web sites (dev_server.py, ui_guard.py)."""
    from locdiff_pipeline.data.paths import project_root
    from locdiff_pipeline.defs.instance import prepare_dagster_home
    from locdiff_pipeline.dev_server import guarded_env, serve

    env = guarded_env(str(prepare_dagster_home(project_root())))
    extra = args.dagster_args[1:] if args.dagster_args[:1] == ["--"] else args.dagster_args
    return serve(args.host, args.port, extra, env)
