"""`locdiff` command line: run the pipeline, predict image locations, print the accuracy report.

locdiff run                      materialize every asset on the bundled data, print the accuracy table
locdiff predict --model models:/locdiff@champion IMAGE [IMAGE ...]
locdiff report                   the accuracy table of the latest run (DuckDB over the warehouse)
locdiff dev                      `dagster dev` on the project's Dagster instance (stops on SIGTERM)
locdiff stack up|down|status|env a team's stack on loopback

One module per subcommand group (`run` with `report`, `predict`, `dev`, `stack`), each defining its
arguments beside its handler; this one only assembles them and turns an error into one line naming the
input and the reason (exit status 2; --debug shows the traceback instead).
"""

from __future__ import annotations

import argparse
import os
import sys

from locdiff_pipeline.cli import dev, predict, run, stack
from locdiff_pipeline.cli.arguments import disk_hint, one_line

__all__ = ["build_parser", "disk_hint", "main", "one_line"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locdiff", description="LocDiff image geolocation pipeline")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    run.add_run(commands, common)
    predict.add_predict(commands, common)
    run.add_report(commands, common)
    dev.add_dev(commands)
    stack.add_stack(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"locdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `locdiff report | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        if args.debug:
            raise
        reason = one_line(error)
        print(
            f"locdiff {args.command}: error: {reason}{disk_hint(reason)} (--debug shows the traceback)", file=sys.stderr
        )
        return 2
