"""`locdiff stack up|down|status|env|cert NAME|reader NAME`: a team's stack on this machine's loopback."""

from __future__ import annotations

import argparse

NAMED = ("cert", "reader")  # the actions that take a NAME


def add_stack(commands, common: argparse.ArgumentParser) -> None:
    stack = commands.add_parser(
        "stack",
        help="a team's stack on loopback: PostgreSQL, MLflow server, dask workers, Dagster daemon and UI",
        parents=[common],
    )
    stack.add_argument(
        "action",
        choices=("up", "down", "status", "env", *NAMED),
        help="env: the shell exports of a client; cert NAME: a dask certificate folder for a host's worker or "
        "client (its path is printed: copy it there, name it in LOCDIFF_DASK_TLS); reader NAME: an MLflow user "
        "who may read runs and load models but change nothing (its password is printed once)",
    )
    stack.add_argument("name", nargs="?", help="the host or person, for cert and reader")
    stack.add_argument(
        "--purge",
        action="store_true",
        help="with down: also remove the stack's data (its PostgreSQL cluster: every run, model record and user) "
        "and .stack/ (its passwords, keys and certificates)",
    )
    stack.set_defaults(handler=_stack)


def _stack(args: argparse.Namespace) -> int:
    """`locdiff stack ...` for the project folder (.stack/ holds its files)."""
    import shlex
    import sys

    from locdiff_pipeline.data.paths import project_root
    from locdiff_pipeline.stack import config, mlflow_auth, services

    stack = config.load_or_create(project_root())
    if (args.action in NAMED) != bool(args.name):
        print(
            f"locdiff stack: {args.action} {'takes a NAME' if args.action in NAMED else 'takes no NAME'}",
            file=sys.stderr,
        )
        return 2
    if args.action == "cert":
        print(stack.dask_identity(args.name).certificate.parent)
        return 0
    if args.action == "reader":
        print(f"MLflow user {args.name}, password {mlflow_auth.create_reader(stack, args.name)} (shown once)")
        return 0
    if args.action == "up":
        services.up(stack)
    if args.purge and args.action != "down":
        print("locdiff stack: --purge goes with down", file=sys.stderr)
        return 2
    if args.action == "down":
        print("stopped: " + (", ".join(services.down(stack)) or "nothing was running"))
        if args.purge:
            print("removed: " + ", ".join(str(path) for path in services.purge(stack)))
        else:
            print(
                f"the databases stay in {stack.postgres_data} and the secrets in {stack.folder}: "
                "`locdiff stack down --purge` removes both"
            )
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
