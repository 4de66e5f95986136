"""Progress of a long step, told every tenth: counts, rate and time left, so a person watching a terminal
(or Dagster's run log) sees that embedding 4.7 M photos or 3,000 training steps is moving and when it ends.

Inside `terminal_bars()` (what `locdiff run` opens when stderr is a terminal), each Progress also draws a
live tqdm bar with the same counts, rate and time left, updated at every advance, not only each tenth.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

_bar_stream: TextIO | None = None  # set by terminal_bars(): where live bars are drawn


@contextlib.contextmanager
def terminal_bars(stream: TextIO | None = None) -> Iterator[None]:
    """Draw a live bar for every Progress made in this process while the block runs (the in-process run's
    steps execute here); `stream` defaults to stderr."""
    global _bar_stream
    previous, _bar_stream = _bar_stream, stream or sys.stderr
    try:
        yield
    finally:
        _bar_stream = previous


class Progress:
    """Counts work done out of a known total and reports each time another `every` share is passed."""

    def __init__(self, what: str, total: int, report: Callable[[str], None], unit: str = "items", every: float = 0.1):
        self.what, self.total, self.report, self.unit, self.every = what, max(int(total), 0), report, unit, every
        self.done, self.started, self.next_share = 0, time.perf_counter(), every
        self.bar = None
        if _bar_stream is not None and self.total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=what, unit=f" {unit}", file=_bar_stream, dynamic_ncols=True)

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.total == 0:
            return
        if self.bar is not None:
            self.bar.update(count)
            if self.done >= self.total:
                self.bar.close()
        share = self.done / self.total
        if share + 1e-12 < self.next_share and self.done < self.total:
            return
        while self.next_share <= share + 1e-12:
            self.next_share += self.every
        self.report(self.message())

    def message(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.what}: {100 * self.done / self.total:.0f}% ({self.done:,}/{self.total:,} {self.unit}), "
            f"{rate:,.1f} {self.unit}/s, about {_duration(left)} left"
        )


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: no rate yet
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
