"""The stack's Dagster UI: Dagster's webserver on a private Unix socket behind ui_guard's proxy (as `locdiff dev`
serves it), on the stack's instance. Run as `python -m locdiff_pipeline.stack.webserver HOST PORT`."""

from __future__ import annotations

import os
import sys

from locdiff_pipeline.dev_server import guarded_env, serve


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    # the webserver keeps one pooled PostgreSQL connection, which a restart of the server leaves dead (the
    # next request answered 500, measured): recycled after a second, a restart costs no request
    return serve(host, port, ["--db-pool-recycle", "1"], guarded_env(os.environ["DAGSTER_HOME"]), webserver_only=True)


if __name__ == "__main__":
    sys.exit(main())
