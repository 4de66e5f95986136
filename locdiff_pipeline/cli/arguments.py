"""What every subcommand shares: argument types that say which option is wrong, and errors said in one line."""

from __future__ import annotations

import argparse
import re


def at_least(low: int):
    """An argparse type: a whole number no smaller than `low` (argparse then says which option is wrong)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def disk_hint(reason: str) -> str:
    """What a full disk looks like from SQLite, torch and the OS, said plainly."""
    if re.search(r"No space left on device|disk I/O error|database or disk is full", reason):
        return " (is the disk full? `df -h .`)"
    return ""


def one_line(error: BaseException) -> str:
    """The error as one line: its message's first line, or its type when it has none."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= 500 else first[:497] + "..."
