"""Progress is told every tenth of a long step, with counts and time left."""

from __future__ import annotations

from locdiff_pipeline.steps.progress import Progress


def test_progress_reports_each_tenth_once_with_counts():
    said: list[str] = []
    progress = Progress("embedding", 200, said.append, unit="images")
    for _ in range(200):
        progress.advance()
    assert len(said) == 10
    assert [message.split(": ")[1].split("%")[0] for message in said] == [str(p) for p in range(10, 101, 10)]
    assert said[-1].startswith("embedding: 100% (200/200 images)") and "left" in said[-1]


def test_big_jumps_report_once_and_an_empty_step_says_nothing():
    said: list[str] = []
    progress = Progress("training", 3000, said.append, unit="steps")
    progress.advance(1500)  # half at once: one report, not five
    progress.advance(1500)
    assert [m.split(" (")[0] for m in said] == ["training: 50%", "training: 100%"]
    silent: list[str] = []
    Progress("nothing", 0, silent.append).advance(5)
    assert silent == []


def test_inside_terminal_bars_each_progress_draws_a_live_bar_that_ends_full():
    import io

    from locdiff_pipeline.steps.progress import terminal_bars

    screen, said = io.StringIO(), []
    with terminal_bars(screen):
        progress = Progress("embedding", 50, said.append, unit="images")
        for _ in range(50):
            progress.advance()
    Progress("after", 10, said.append).advance(10)  # outside the block: no bar
    drawn = screen.getvalue()
    assert "embedding" in drawn and "50/50" in drawn and "100%" in drawn and "images/s" in drawn
    assert "after" not in drawn
    assert len(said) == 11  # the log still gets every tenth
