"""Progress of a long step, told every tenth: counts, rate and time left, so a person watching a terminal
(or Dagster's run log) sees that embedding 4.7 M photos or 3,000 training steps is moving and when it ends."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Counts work done out of a known total and reports each time another `every` share is passed."""

    def __init__(self, what: str, total: int, report: Callable[[str], None], unit: str = "items", every: float = 0.1):
        self.what, self.total, self.report, self.unit, self.every = what, max(int(total), 0), report, unit, every
        self.done, self.started, self.next_share = 0, time.perf_counter(), every

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.total == 0:
            return
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
