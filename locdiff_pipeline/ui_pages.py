"""What `locdiff dev`'s guard adds to the Dagster UI it forwards (ui_guard.py): the report's figures, and a
first visit's graphs opened.

- **Figures.** `GET /locdiff/reports/BENCHMARK/vN/NAME.png` (data/paths.figure_url) answers that PNG from the project's
  warehouse/reports folder. Dagster shows a short markdown value in place but a long one behind a "[Show
  Markdown]" link, and a figure embedded as data is long: so accuracy_report's metadata links its figures
  here, and they show on the asset's page, each a click from its full size.
- **Graphs opened.** Dagster's lineage and job graphs draw every asset group collapsed (empty boxes, no
  asset) until the browser remembers a choice, one localStorage key per graph. Each HTML page gains a
  script, carrying the page's own CSP nonce, that records "every stage expanded" for the lineage and each
  job's graph where the browser has no choice yet, so the user's own later choice stands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from locdiff_pipeline.data.paths import FIGURES_URL
from locdiff_pipeline.defs import stages

FIGURE_NAME = re.compile(r"[\w.-]+/v\d+/(previews/)?[\w.-]+\.png")  # BENCHMARK/vN/[previews/]NAME.png only
GRAPH_KEY = "asset-graph-open-graph-nodes-{view}-{name}"  # Dagster 1.13's AssetGraphExplorer.tsx
GLOBAL_GRAPH = ("global", "__GLOBAL__")
# group ids as the graph names them: without, and with, Dagster's per-code-location flag
GROUP_IDS = [f"global@global:{g}" for g in stages.GROUPS] + [
    f"{stages.REPOSITORY}@{stages.LOCATION}:{g}" for g in stages.GROUPS
]
NONCE = re.compile(r"'nonce-([A-Za-z0-9+/=_-]+)'")


def figure_file(reports: Path, path: str) -> Path | None:
    """The PNG under `reports` that the request path names, or None (not a figure's path, or no such file):
    only BENCHMARK/vN/NAME.png, never a way out of the folder."""
    relative = path.removeprefix(FIGURES_URL)
    if not path.startswith(FIGURES_URL) or not FIGURE_NAME.fullmatch(relative) or ".." in relative.split("/"):
        return None
    file = (reports / relative).resolve()
    return file if file.is_relative_to(reports.resolve()) and file.is_file() else None


def graphs_opened_script() -> str:
    """The script's text: each graph's key set to every stage expanded, where the browser has none."""
    keys = [GRAPH_KEY.format(view=GLOBAL_GRAPH[0], name=GLOBAL_GRAPH[1])]
    keys += [GRAPH_KEY.format(view="job", name=job) for job in stages.JOBS]
    value = json.dumps({"expanded": ",".join(GROUP_IDS)})
    return (
        f"(function(){{try{{var v={json.dumps(value)};{json.dumps(keys)}.forEach(function(k){{"
        "if(window.localStorage.getItem(k)===null){window.localStorage.setItem(k,v);}});}catch(e){}})();"
    )


def with_graphs_opened(html: bytes, content_security_policy: str) -> bytes:
    """The page with graphs_opened_script() at the top of its <head>, under the nonce the page's CSP
    allows; the page unchanged where it has no <head> or its CSP no nonce."""
    nonce = NONCE.search(content_security_policy)
    head = html.find(b"<head>")
    if nonce is None or head < 0:
        return html
    script = f'<script nonce="{nonce[1]}">{graphs_opened_script()}</script>'.encode()
    at = head + len(b"<head>")
    return html[:at] + script + html[at:]
