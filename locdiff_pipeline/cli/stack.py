"""`locdiff stack up|down|status|env`: a team's stack on this machine's loopback."""

from __future__ import annotations

import argparse


def add_stack(commands, common: argparse.ArgumentParser) -> None:
    stack = commands.add_parser(
        "stack",
        help="a team's stack on loopback: PostgreSQL, MLflow server, dask workers, Dagster daemon and UI",
        parents=[common],
    )
    stack.add_argument("action", choices=("up", "down", "status", "env"), help="env: the shell exports of a client")
    stack.set_defaults(handler=_stack)


def _stack(args: argparse.Namespace) -> int:
    """`locdiff stack up|down|status|env` for the project folder (.stack/ holds its files)."""
    import shlex

    from locdiff_pipeline.data.paths import project_root
    from locdiff_pipeline.stack import config, services

    stack = config.load_or_create(project_root())
    if args.action == "up":
        services.up(stack)
    if args.action == "down":
        print("stopped: " + (", ".join(services.down(stack)) or "nothing was running"))
        return 0
    if args.action == "env":
        print("\n".join(f"export {name}={shlex.quote(value)}" for name, value in stack.client_env().items()))
        return 0
    for name, state in services.status(stack).items():
        print(f"{name:22} {state}")
    if args.action == "up":
        print(
            f"Dagster UI http://{stack.host}:{stack.dagster_port}  MLflow {stack.client_env()['MLFLOW_TRACKING_URI']}"
        )
        print('clients: eval "$(locdiff stack env)"')
    return 0
