"""What the guard adds to the UI it forwards (ui_pages.py): the report's figures from the reports folder and
nothing else, and the script that opens a first visit's graphs, under the page's own CSP nonce. Driven
through the real guard (ui_guard.build_app) in front of a small upstream page server; the real Dagster UI
in a browser: tests/test_dagster_dev.py."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

from aiohttp import ClientSession, web
from yarl import URL

from locdiff_pipeline import ui_pages
from locdiff_pipeline.data.paths import figure_url
from locdiff_pipeline.defs import stages
from locdiff_pipeline.ui_guard import build_app

CSP = "script-src 'nonce-abc123' 'strict-dynamic'; object-src 'none'"
PAGE = b"<!DOCTYPE html><html><head><title>Dagster</title></head><body></body></html>"


def _reports(tmp_path: Path) -> Path:
    reports = tmp_path / "warehouse" / "reports"
    (reports / "bench" / "v3" / "previews").mkdir(parents=True)
    (reports / "bench" / "v3" / "error_cdf.png").write_bytes(b"\x89PNG full")
    (reports / "bench" / "v3" / "previews" / "error_cdf.png").write_bytes(b"\x89PNG small")
    (reports / "bench" / "v3" / "accuracy.md").write_text("not a figure")
    (tmp_path / "secret.png").write_bytes(b"outside the reports folder")
    return reports


def test_a_figure_is_served_from_the_reports_folder_only(tmp_path):
    reports = _reports(tmp_path)
    url = figure_url("bench", 3, "error_cdf.png")
    assert ui_pages.figure_file(reports, url).read_bytes() == b"\x89PNG full"
    preview = figure_url("bench", 3, "previews/error_cdf.png")
    assert ui_pages.figure_file(reports, preview).read_bytes() == b"\x89PNG small"
    for refused in (
        "/locdiff/reports/bench/v3/accuracy.md",  # not a PNG
        "/locdiff/reports/bench/v3/missing.png",
        "/locdiff/reports/../../secret.png",
        "/locdiff/reports/bench/../../../secret.png",
        "/locdiff/reports/bench/v3/../../../../secret.png",
        "/locdiff/reports//etc/v1/passwd.png",
        "/elsewhere/bench/v3/error_cdf.png",
    ):
        assert ui_pages.figure_file(reports, refused) is None, refused


def test_the_graphs_open_with_every_stage_expanded_unless_the_browser_chose():
    page = ui_pages.with_graphs_opened(PAGE, CSP).decode()
    script = re.search(r'<head><script nonce="abc123">(.*?)</script><title>', page)[1]
    assert script == ui_pages.graphs_opened_script()
    keys = json.loads(re.search(r"(\[\"asset-graph.*?\])\.forEach", script)[1])
    assert keys == [
        "asset-graph-open-graph-nodes-global-__GLOBAL__",
        *(f"asset-graph-open-graph-nodes-job-{job}" for job in stages.JOBS),
    ]
    stored, _ = json.JSONDecoder().raw_decode(script, script.index("var v=") + len("var v="))
    expanded = json.loads(stored)["expanded"]  # the value Dagster itself stores: {"expanded": "id,id,..."}
    assert {f"global@global:{group}" for group in stages.GROUPS} <= set(expanded.split(","))
    assert "getItem(k)===null" in script  # a choice the user made stays
    assert ui_pages.with_graphs_opened(PAGE, "script-src 'self'") == PAGE  # no nonce: no script at all
    assert ui_pages.with_graphs_opened(b"{}", CSP) == b"{}"  # not a page


def test_the_guard_serves_figures_and_opened_pages_and_forwards_the_rest(tmp_path):
    reports = _reports(tmp_path)
    answers = asyncio.run(_through_the_guard(reports))
    assert answers["figure"] == (200, "image/png", b"\x89PNG small")
    assert answers["no such figure"][0] == 404
    # dot segments are resolved as the server would (ui_guard.served_path): /secret.png, Dagster's page to answer
    assert answers["escape"][1] == "text/html" and b"outside the reports folder" not in answers["escape"][2]
    status, kind, body = answers["page"]
    assert status == 200 and kind == "text/html" and b'<script nonce="abc123">' in body
    assert answers["json"] == (200, "application/json", b'{"data": 1}')  # untouched


async def _through_the_guard(reports: Path) -> dict[str, tuple[int, str, bytes]]:
    async def page(request: web.Request) -> web.Response:
        if request.path == "/graphql":
            return web.Response(body=b'{"data": 1}', content_type="application/json")
        return web.Response(body=PAGE, content_type="text/html", headers={"Content-Security-Policy": CSP})

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", page)
    upstream, upstream_port = await _serve(upstream_app)
    guard, guard_port = await _serve(build_app("127.0.0.1", reports, upstream=f"http://127.0.0.1:{upstream_port}"))
    base = f"http://127.0.0.1:{guard_port}"
    paths = {
        "figure": "/locdiff/reports/bench/v3/previews/error_cdf.png",
        "escape": "/locdiff/reports/bench/v3/../../../../secret.png",
        "no such figure": "/locdiff/reports/bench/v3/calibration.png",
        "page": "/asset-groups",
        "json": "/graphql?query=%7Bversion%7D",
    }
    answers = {}
    try:
        async with ClientSession() as session:
            for name, path in paths.items():
                async with session.get(URL(base + path, encoded=True)) as answer:  # sent as written
                    answers[name] = (answer.status, answer.content_type, await answer.read())
    finally:
        await guard.cleanup()
        await upstream.cleanup()
    return answers


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port
