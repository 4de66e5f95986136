"""Look at the Dagster UI as a user does: Debian's chromium driven by playwright (never a browser download).

Used by the README pictures script and the browser test. Chromium is started headless with the flags an
offline machine needs (no background networking, no component updates), in a fresh profile.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path(os.environ.get("LOCDIFF_CHROMIUM", "/usr/bin/chromium"))
OFFLINE_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


@contextlib.contextmanager
def browser_page(width: int = 1500, height: int = 900) -> Iterator:
    """A playwright page in headless Debian chromium."""
    from playwright.sync_api import sync_playwright

    if not chromium_available():
        raise FileNotFoundError(f"no chromium at {CHROMIUM}: `apt-get install chromium` (or set LOCDIFF_CHROMIUM)")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=OFFLINE_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def _dismiss_welcome(page) -> None:
    """Dagster's first-visit dialog (community links) covers the page: skip it when it shows."""
    skip = page.get_by_role("button", name="Skip")
    with contextlib.suppress(Exception):
        skip.wait_for(state="visible", timeout=4000)
    if skip.count():
        skip.first.click()


def open_asset_graph(page, base_url: str, assets: list[str], timeout_s: float = 60) -> str:
    """The global asset lineage as a first visit opens it (through `locdiff dev`'s guard every stage is
    expanded: ui_pages.py); waits until each asset's node is drawn, or `timeout_s`, and returns the page's
    text."""
    page.goto(f"{base_url}/asset-groups")
    _dismiss_welcome(page)
    page.get_by_text("Global asset lineage").first.wait_for(timeout=timeout_s * 1000)
    deadline, text = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        text = page.inner_text("body")
        if all(name in text for name in assets):
            break
        time.sleep(1)
    return text


def open_job_runs(page, base_url: str, job: str, location: str, wait_for: str) -> str:
    """A job's Runs tab, once `wait_for` (e.g. a run's short id) shows; the page's text."""
    page.goto(f"{base_url}/locations/{location}/jobs/{job}/runs")
    _dismiss_welcome(page)
    page.get_by_text(wait_for).first.wait_for(timeout=60_000)
    return page.inner_text("body")


def open_asset(page, base_url: str, asset: str, partition: str | None = None, wait_for: str = "Metadata") -> str:
    """An asset's latest materialization's metadata: the overview page, or for `partition` the Partitions
    tab with that partition selected (the overview shows whichever partition was materialized last); the
    page's text."""
    page.goto(f"{base_url}/assets/{asset}" + (f"?view=partitions&partition={partition}" if partition else ""))
    _dismiss_welcome(page)
    page.get_by_text(wait_for).first.wait_for(timeout=60_000)
    time.sleep(1)
    return page.inner_text("body")
