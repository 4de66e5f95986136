"""Remake the README's pictures from a finished `locdiff run`: the asset graph as `locdiff dev` shows it,
the accuracy report's page, and four figures of the run's report (error CDF, density maps, calibration,
coverage against area).

    .venv/bin/locdiff run                                   # README command 1
    .venv/bin/python scripts/readme_pictures.py --root .    # needs Debian's chromium: scripts/setup_browser.sh

The screenshots come from a real `locdiff dev` on the project and headless chromium (scripts/ui_browser.py);
the figures are copied from the report folder of the latest model, as the run wrote them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ui_browser  # noqa: E402

from locdiff_pipeline.defs.assets import ALL_ASSETS  # noqa: E402

ASSETS = [asset.key.path[-1] for asset in ALL_ASSETS]  # the graph's own list: every one must be drawn
FIGURES = ("error_cdf.png", "density_maps.png", "calibration.png", "coverage_area.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder of the finished run")
    parser.add_argument("--benchmark", default="bluemarble_heldout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "pictures")
    args = parser.parse_args(argv)
    root, out = args.root.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    latest = json.loads((root / "warehouse" / "models" / "latest.json").read_text())
    report = root / "warehouse" / "reports" / args.benchmark / f"v{latest['version']}"
    for name in FIGURES:
        shutil.copyfile(report / name, out / name)
        print(f"copied {report / name}")
    with _locdiff_dev(root) as base:
        with ui_browser.browser_page(width=1500, height=900) as page:
            drawn = ui_browser.open_asset_graph(page, base, ASSETS)
            missing = [name for name in ASSETS if name not in drawn]
            if missing:
                raise SystemExit(f"the asset graph did not draw {missing}")
            page.screenshot(path=str(out / "asset_graph.png"))
            ui_browser.open_asset(page, base, "accuracy_report", args.benchmark, wait_for="accuracy_table")
            page.screenshot(path=str(out / "accuracy_report.png"))
    print(f"pictures in {out}")
    return 0


class _locdiff_dev:
    """`locdiff dev` on the project, on a free port, stopped by SIGTERM on exit."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        locdiff = Path(sys.executable).with_name("locdiff")
        self.process = subprocess.Popen(
            [str(locdiff), "dev", "--port", str(port)],
            cwd=self.root,
            env={**os.environ, "LOCDIFF_HOME": str(self.root)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=2):
                    return base
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit("locdiff dev exited before serving") from None
                time.sleep(1)
        raise SystemExit("locdiff dev did not serve within 120 s")

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
