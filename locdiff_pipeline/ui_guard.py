"""The guard `locdiff dev` puts in front of Dagster's UI: no run launched by another web site.

Dagster's webserver (1.13) executes any GraphQL operation it is sent, a mutation such as
launchPartitionBackfill included, over GET (query parameters) as over POST, and checks neither the
`Origin` of a request nor its `Host` (dagster_webserver/graphql.py, graphql_http_endpoint). So any page a
user opens can launch runs on their `dagster dev` with an <img> tag or a form, and a DNS-rebinding page
can read it. `locdiff dev` therefore serves Dagster's webserver on a Unix socket only this user can open
(ui_webserver.py: no TCP port to reach past the guard) and serves this reverse proxy on the address the
user asked for, which forwards a request only if:

1. its Host header names the loopback address the UI listens on (when it listens on loopback);
2. a state-changing request (any method but GET/HEAD/OPTIONS, and every WebSocket handshake) comes from
   the UI's own origin (its scheme, host and port), or from no browser page at all (no Origin header: curl,
   scripts, the tests);
3. a GET to /graphql carries a query, never a mutation or a subscription;
4. a POST to /graphql is application/json (a form or text/plain body is what a cross-site form can send
   without asking first; a media type is read from its type alone, never from its parameters);
5. a request to /graphql says one thing only: no repeated `query`, `operationName` or `variables`
   (Starlette, so Dagster, reads the last of a repeated parameter; a guard reading the first was bypassed
   by `?query=query Q{version}&query=<mutation>`), no GraphQL parameter in a POST's query string (Dagster
   reads the body) and no body on a GET (Dagster reads the query string).

Every rule reads the path as the server behind it will: percent-decoded, dot segments resolved, repeated
slashes collapsed (`served_path`), and that path is the one forwarded, so `/./graphql`, `//graphql` or
`/%2e/graphql` are /graphql to the guard as to Dagster. Everything else passes through, WebSockets (the UI's
live updates) included; the guard adds the report's figures and opens a first visit's graphs (ui_pages.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, UnixConnector, WSMsgType, web
from yarl import URL

from locdiff_pipeline import ui_pages
from locdiff_pipeline.data.paths import FIGURES_URL

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
GRAPHQL_BODY = "application/json"
UI_SCHEME = "http"  # the guard serves plain HTTP: its own origin is http://HOST:PORT
GRAPHQL_PARAMETERS = ("query", "operationName", "variables")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "host", "content-length"}
)


def refusal(
    method: str,
    path: str,
    headers,
    query: Mapping[str, str] | Iterable[tuple[str, str]],
    listen_host: str,
    has_body: bool = False,
) -> tuple[int, str] | None:
    """(status, reason) when the request must not reach Dagster, else None (rules 1-5 above), for a request
    to `path` as received (percent-decoded); the rules read served_path(path). `query`: the query string's
    parameters, as (name, value) pairs in order when a name may repeat."""
    path = served_path(path)
    host = headers.get("Host", "")
    if listen_host in LOOPBACK_HOSTS and urlsplit(f"//{host}").hostname not in LOOPBACK_HOSTS:
        return 403, f"Host {host!r} is not this loopback UI's address (a DNS-rebinding page?)"
    origin = headers.get("Origin")
    changes_state = method not in SAFE_METHODS or headers.get("Upgrade", "").lower() == "websocket"
    if changes_state and origin is not None and origin.lower() != f"{UI_SCHEME}://{host}".lower():
        return 403, f"a request from another site ({origin}) may not change this UI's state"
    if path.rstrip("/") != "/graphql" or headers.get("Upgrade", "").lower() == "websocket":
        return None
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    ambiguous = _ambiguity(method, [name for name, _ in pairs], has_body)
    if ambiguous:
        return 400, ambiguous
    query = dict(pairs)
    if method == "GET" and "query" in query and _operation_kind(query["query"], query.get("operationName")) != "query":
        return 405, "GraphQL mutations and subscriptions are accepted over POST only"
    media_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if method == "POST" and media_type != GRAPHQL_BODY:
        return 415, f"GraphQL over POST takes {GRAPHQL_BODY} only"
    return None


def served_path(path: str) -> str:
    """`path` (percent-decoded) as the server reads it: dot segments resolved (RFC 3986, 5.2.4: the client
    library that forwards the request does so) and repeated slashes collapsed; a trailing slash kept."""
    segments: list[str] = []
    parts = path.split("/")
    for part in parts:
        if part == "..":
            if segments:
                segments.pop()
        elif part not in ("", "."):
            segments.append(part)
    trailing = len(parts) > 1 and parts[-1] in ("", ".", "..") and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


def _ambiguity(method: str, names: list[str], has_body: bool) -> str | None:
    """Why Dagster might read another operation from this /graphql request than the guard did (rule 5)."""
    repeated = sorted({name for name in names if name in GRAPHQL_PARAMETERS and names.count(name) > 1})
    if repeated:
        return f"{', '.join(repeated)} given more than once: say each once"
    if method == "POST" and any(name in GRAPHQL_PARAMETERS for name in names):
        return "a POST carries its GraphQL request in the body, not the query string"
    if method == "GET" and has_body:
        return "a GET carries its GraphQL request in the query string, not a body"
    return None


def _operation_kind(document: str, operation_name: str | None) -> str:
    """'query', 'mutation' or 'subscription': what the document would run; 'unknown' when it does not
    parse or names no such operation (refused over GET: only a plain query passes)."""
    from graphql import OperationDefinitionNode, parse
    from graphql.error import GraphQLError

    try:
        operations = [d for d in parse(document).definitions if isinstance(d, OperationDefinitionNode)]
    except GraphQLError:
        return "unknown"
    chosen = [o for o in operations if operation_name is None or (o.name and o.name.value == operation_name)]
    kinds = {o.operation.value for o in chosen}
    return kinds.pop() if len(kinds) == 1 else "unknown"


def build_app(
    listen_host: str, reports: Path | None = None, unix_socket: Path | None = None, upstream: str = "http://localhost"
) -> web.Application:
    """The proxy: every path of the webserver, HTTP and WebSocket, behind refusal(); the webserver listens on
    `unix_socket` (ui_webserver.py: no TCP port), else at `upstream`. With `reports` (the warehouse's reports
    folder), its figures at data/paths.FIGURES_URL."""

    async def start(app: web.Application) -> None:
        connector = UnixConnector(path=str(unix_socket)) if unix_socket is not None else None
        app["session"] = ClientSession(
            connector=connector, auto_decompress=False, timeout=ClientTimeout(total=None, sock_connect=10)
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        refused = refusal(
            request.method, request.path, request.headers, list(request.query.items()), listen_host, request.body_exists
        )
        if refused is not None:
            return web.Response(status=refused[0], text=f"refused by locdiff dev: {refused[1]}\n")
        path = served_path(request.path)
        if path.startswith(FIGURES_URL) and request.method in ("GET", "HEAD"):
            figure = ui_pages.figure_file(reports, path) if reports is not None else None
            return web.FileResponse(figure) if figure else web.Response(status=404, text="no such figure\n")
        try:
            target = _target(upstream, path, request.raw_path)
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await _forward_websocket(request, target)
            return await _forward_http(request, target)
        except ClientConnectionError:
            return web.Response(status=502, text="Dagster's webserver is not answering (yet): try again in a moment\n")

    app = web.Application(client_max_size=64 << 20)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _target(upstream: str, path: str, raw_path: str) -> URL:
    """The upstream URL of a request: its served path (what the guard decided on) and its query string as
    received."""
    query = raw_path.partition("?")[2]
    base = URL(upstream).with_path(path)
    return URL(f"{base}?{query}", encoded=True) if query else base


async def _forward_http(request: web.Request, target: URL) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    async with request.app["session"].request(
        request.method,
        target,
        headers=headers,
        data=await request.read() if request.can_read_body else None,
        allow_redirects=False,
    ) as answer:
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.method == "GET" and answer.content_type == "text/html" and "Content-Encoding" not in answer.headers:
            page = ui_pages.with_graphs_opened(await answer.read(), answer.headers.get("Content-Security-Policy", ""))
            return web.Response(status=answer.status, headers=headers, body=page)
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        async for chunk in answer.content.iter_chunked(1 << 16):
            await response.write(chunk)
        await response.write_eof()
        return response


async def _forward_websocket(request: web.Request, target: URL) -> web.WebSocketResponse:
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    client = web.WebSocketResponse(protocols=protocols)
    await client.prepare(request)
    async with request.app["session"].ws_connect(target.with_scheme("ws"), protocols=protocols) as server:

        async def pump(source, sink) -> None:
            async for message in source:
                if message.type == WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                else:
                    break
            await sink.close()

        await asyncio.gather(pump(client, server), pump(server, client), return_exceptions=True)
    return client
