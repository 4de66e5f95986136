"""The rules of the guard `locdiff dev` serves the Dagster UI through (the real proxy in front of a real
`dagster dev` is exercised in test_dagster_dev.py)."""

from __future__ import annotations

import pytest

from locdiff_pipeline.ui_guard import refusal, served_path

HOST = {"Host": "127.0.0.1:3000"}
JSON = {**HOST, "Content-Type": "application/json"}
MUTATION = "mutation Launch { launchRun(executionParams: {}) { __typename } }"


@pytest.mark.parametrize(
    ("method", "path", "headers", "query", "status"),
    [
        ("GET", "/graphql", HOST, {"query": "{ runsOrError { __typename } }"}, None),
        ("GET", "/graphql", HOST, {"query": MUTATION}, 405),
        ("GET", "/graphql", HOST, {"query": 'subscription { pipelineRunLogs(runId: "x") { __typename } }'}, 405),
        # a document with a query and a mutation: what runs is what operationName names
        ("GET", "/graphql", HOST, {"query": "query Q { version } " + MUTATION, "operationName": "Launch"}, 405),
        ("GET", "/graphql", HOST, {"query": "query Q { version } " + MUTATION, "operationName": "Q"}, None),
        ("GET", "/graphql", HOST, {"query": "query Q { version } " + MUTATION}, 405),  # ambiguous: refused
        ("GET", "/graphql", HOST, {"query": "mutation {"}, 405),  # does not parse: not a plain query
        ("GET", "/graphql", HOST, {}, None),  # the GraphiQL page
        ("POST", "/graphql", JSON, {}, None),
        ("POST", "/graphql", {**JSON, "Origin": "http://127.0.0.1:3000"}, {}, None),
        ("POST", "/graphql", {**JSON, "Origin": "http://evil.example"}, {}, 403),
        ("POST", "/graphql", {**JSON, "Origin": "null"}, {}, 403),  # a sandboxed iframe or a file: page
        ("POST", "/graphql", {**HOST, "Content-Type": "text/plain"}, {}, 415),
        ("POST", "/graphql", {**HOST, "Content-Type": "application/x-www-form-urlencoded"}, {}, 415),
        ("POST", "/graphql", {**JSON, "Host": "evil.example:3000"}, {}, 403),  # DNS rebinding
        ("GET", "/graphql", {**HOST, "Upgrade": "websocket", "Origin": "http://evil.example"}, {}, 403),
        ("GET", "/graphql", {**HOST, "Upgrade": "websocket", "Origin": "http://127.0.0.1:3000"}, {}, None),
        ("GET", "/assets", {**HOST, "Origin": "http://evil.example"}, {}, None),  # reading a page changes nothing
        ("POST", "/report_async_error", {**HOST, "Origin": "http://evil.example"}, {}, 403),
        # the path as the server reads it: dot segments, repeated slashes and percent-encoded dots (received
        # decoded) lead to /graphql, where a mutation over GET is refused
        ("GET", "/./graphql", HOST, {"query": MUTATION}, 405),
        ("GET", "/x/../graphql", HOST, {"query": MUTATION}, 405),
        ("GET", "//graphql", HOST, {"query": MUTATION}, 405),
        ("GET", "/./graphql/", HOST, {"query": MUTATION}, 405),
        # the same host and port over another scheme is another origin
        ("POST", "/graphql", {**JSON, "Origin": "https://127.0.0.1:3000"}, {}, 403),
        ("POST", "/graphql", {**JSON, "Origin": "HTTP://127.0.0.1:3000"}, {}, None),  # schemes ignore case
        # a media type is its type: parameters never make another type JSON
        ("POST", "/graphql", {**HOST, "Content-Type": "application/graphql; x=application/json"}, {}, 415),
        ("POST", "/graphql", {**HOST, "Content-Type": "application/graphql"}, {}, 415),
        ("POST", "/graphql", {**HOST, "Content-Type": "application/json; charset=utf-8"}, {}, None),
        ("POST", "/graphql", {**HOST, "Content-Type": "Application/JSON"}, {}, None),
    ],
)
def test_the_guard_forwards_only_what_the_ui_itself_could_send(method, path, headers, query, status):
    refused = refusal(method, path, headers, query, "127.0.0.1")
    assert (refused[0] if refused else None) == status, refused


def test_a_ui_served_beyond_loopback_takes_any_host_but_still_its_own_origin_only():
    headers = {"Host": "workstation.lan:3000", "Content-Type": "application/json"}
    assert refusal("POST", "/graphql", headers, {}, "0.0.0.0") is None
    assert refusal("POST", "/graphql", {**headers, "Origin": "http://evil.example"}, {}, "0.0.0.0")[0] == 403


@pytest.mark.parametrize(
    ("method", "query", "has_body"),
    [
        # the bypass: the guard once read the first `query`, Dagster reads the last
        ("GET", [("query", "query Q { version }"), ("query", MUTATION)], False),
        (
            "GET",
            [("query", "query Q { version } " + MUTATION), ("operationName", "Q"), ("operationName", "Launch")],
            False,
        ),
        ("GET", [("query", "query Q { version }"), ("variables", "{}"), ("variables", "{}")], False),
        ("POST", [("query", "query Q { version }")], True),  # Dagster reads the body, not this
        ("GET", [("query", "query Q { version }")], True),  # Dagster reads this, not the body
    ],
)
def test_the_guard_refuses_a_request_dagster_could_read_otherwise(method, query, has_body):
    refused = refusal(method, "/graphql", JSON, query, "127.0.0.1", has_body=has_body)
    assert refused is not None and refused[0] == 400, refused


def test_each_parameter_once_in_its_one_place_still_passes():
    assert (
        refusal("GET", "/graphql", HOST, [("query", "query Q { version }"), ("operationName", "Q")], "127.0.0.1")
        is None
    )
    assert refusal("POST", "/graphql", JSON, [("unrelated", "1")], "127.0.0.1", has_body=True) is None


@pytest.mark.parametrize(
    ("received", "served"),
    [
        ("/graphql", "/graphql"),
        ("/./graphql", "/graphql"),
        ("/x/../graphql", "/graphql"),
        ("//graphql", "/graphql"),
        ("/../../graphql", "/graphql"),  # no climbing above the root
        ("/a/b/./", "/a/b/"),
        ("/assets/locdiff_model", "/assets/locdiff_model"),
        ("/", "/"),
    ],
)
def test_paths_are_read_as_the_server_reads_them(received, served):
    assert served_path(received) == served
