"""Bad input on any route is a 4xx ``application/problem+json``, never a 5xx: the
cases each found as a 500 (see ``test_api_fuzz.py`` for the random search)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.integration.gateway.conftest import PROBLEM, body_routes, fill, nested

SCHEDULES = "/api/v1/queue/schedules"

# Python's json recurses per level: past ~1,000 levels it raises RecursionError, not
# ValueError. The fixture caps bodies at 64 KiB, so 30,000 levels is what fits.
TOO_DEEP = [
    pytest.param(b"[" * 30_000 + b"]" * 30_000, id="30000-lists"),
    pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="10000-objects"),
    pytest.param(b'{"input": ' * 100 + b"{}" + b"}" * 100, id="101-levels"),
]


@pytest.mark.parametrize("body", TOO_DEEP)
async def test_deeply_nested_json_is_400_on_every_body_route(api: TestClient[Any, Any], body: bytes) -> None:
    routes = body_routes(api)
    assert len(routes) >= 6, routes
    for method, template in routes:
        resp = await api.request(
            method, fill(template, "fuel-combustion"), data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400, (method, template, await resp.text())
        assert resp.content_type == PROBLEM
        assert "nested more than 100 levels" in (await resp.json())["detail"]


LONE_SURROGATES = [
    pytest.param(b'{"input": {"echo": "\\ud800"}}', id="in-a-value"),
    pytest.param(b'{"input": {"\\udc00": 1}}', id="in-a-key"),
    pytest.param(b'"\\udfff"', id="the-whole-body"),
    pytest.param(  # the store's encoder refused it: a 500
        b'{"name": "boundary-s", "agent": "noop", "cron": "@hourly", "input": {"echo": "\\ud800"}}',
        id="in-a-schedule",
    ),
]


@pytest.mark.parametrize("body", LONE_SURROGATES)
async def test_a_lone_surrogate_is_400_on_every_body_route(
    api: TestClient[Any, Any], schedules_cleaned: None, body: bytes
) -> None:
    # Valid JSON grammar, but no UTF-8 encoder takes it: it used to reach the store and 500.
    for method, template in body_routes(api):
        resp = await api.request(
            method, fill(template, "noop"), data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400, (method, template, await resp.text())
        assert "lone UTF-16 surrogate" in (await resp.json())["detail"]
    pair = b'{"input": {"echo": "\\ud83d\\ude00"}}'  # a surrogate pair is one character
    resp = await api.post("/api/v1/agents/noop/runs", data=pair, headers={"Content-Type": "application/json"})
    assert resp.status == 202


async def test_a_body_that_does_not_inflate_is_400(api: TestClient[Any, Any]) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    resp = await api.post("/api/v1/queue/batch", data=b"not gzip at all", headers=headers)
    assert resp.status == 400 and resp.content_type == PROBLEM
    assert "could not be read" in (await resp.json())["detail"]


async def test_json_nested_up_to_the_limit_is_accepted(api: TestClient[Any, Any]) -> None:
    # body -> input -> 98 more levels: 100 in all, the most a body may have
    resp = await api.post("/api/v1/agents/noop/runs", json={"input": nested(99)})
    assert resp.status == 202, await resp.text()
    resp = await api.post("/api/v1/agents/noop/runs", json={"input": nested(100)})
    assert resp.status == 400 and resp.content_type == PROBLEM


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs/été",
        "/api/v1/runs/%C3%A9t%C3%A9",
        "/api/v1/runs/a.b",
        "/api/v1/runs/*",
        "/api/v1/runs/%3E",
        "/api/v1/runs/a%2Fb",
        "/api/v1/runs/a%00b",
        "/api/v1/runs/abc%0A",
        "/api/v1/runs/" + "a" * 129,
        "/api/v1/queue/dlq/0",
        "/api/v1/queue/dlq/²",
        "/api/v1/queue/dlq/٣",
        "/api/v1/queue/dlq/99999999999999999999999",
        "/api/v1/queue/dlq?limit=²",
        "/api/v1/queue/dlq?after=99999999999999999999999",
        "/api/v1/queue/dlq?agent=*",
        "/api/v1/queue/dlq?agent=a.>",
        "/api/v1/queue/dlq?agent=été",
        "/api/v1/queue/schedules/abc%0A",
        "/api/v1/queue/schedules/été",
        "/api/v1/queue/schedules/a.*",
    ],
)
async def test_path_and_query_values_that_cannot_exist_are_4xx(api: TestClient[Any, Any], path: str) -> None:
    resp = await api.get(URL(path, encoded=True) if "%" in path else path)
    assert resp.status in (400, 404), (path, resp.status, await resp.text())
    assert resp.content_type == PROBLEM


@pytest.mark.parametrize("seq", [0, 2**63, 2**64, 2**70])
async def test_a_dead_letter_selection_past_the_sequence_range_is_422(
    api: TestClient[Any, Any], seq: int
) -> None:
    # NATS sequences are uint64: 2**64 and up made nats-server refuse the request (a 500).
    for path in ("/api/v1/queue/dlq/replay", "/api/v1/queue/dlq/purge"):
        resp = await api.post(path, json={"seq": seq})
        assert resp.status == 422 and resp.content_type == PROBLEM, (path, await resp.text())


async def test_a_run_id_of_the_envelope_pattern_is_looked_up(api: TestClient[Any, Any]) -> None:
    # Run ids are [A-Za-z0-9_-]{1,128}: one with _ or - can exist, so it is a 404, not a 400.
    resp = await api.get("/api/v1/runs/no_such-run_" + "x" * 110)
    assert resp.status == 404 and resp.content_type == PROBLEM


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("timezone", "America", "unknown time zone"),  # a directory of tzdata: IsADirectoryError
        ("timezone", "a" * 300, "unknown time zone"),  # OSError: file name too long
        ("cron", "0 0 30 2 *", "never fires"),  # croniter finds no next date for Feb 30
        ("cron", "0 0 31 4,6 *", "never fires"),
    ],
)
async def test_schedules_that_cannot_run_are_422_and_not_stored(
    api: TestClient[Any, Any], schedules_cleaned: None, field: str, value: str, needle: str
) -> None:
    body = {"name": "boundary-bad", "agent": "noop", "cron": "@hourly", field: value}
    for method, path in [("POST", SCHEDULES), ("PUT", f"{SCHEDULES}/boundary-bad")]:
        resp = await api.request(method, path, json=body)
        assert resp.status == 422 and resp.content_type == PROBLEM, await resp.text()
        assert needle in await resp.text()
        assert (await api.get(f"{SCHEDULES}/boundary-bad")).status == 404


BATCH = b"POST /api/v1/queue/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
AGENTS = b"GET /api/v1/agents HTTP/1.1\r\nHost: t\r\n"
REFUSED_BEFORE_THE_APP = [  # aiohttp's parser answers these itself, before any middleware
    pytest.param(BATCH + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", id="brotli-body"),
    pytest.param(b"GET /api/v1/runs/" + b"a" * 8200 + b" HTTP/1.1\r\nHost: t\r\n\r\n", id="url-over-8-KiB"),
    pytest.param(AGENTS + b"X-Big: " + b"a" * 8200 + b"\r\n\r\n", id="header-over-8-KiB"),
    pytest.param(AGENTS + b"Bad Name: 1\r\n\r\n", id="space-in-a-header-name"),
    pytest.param(BATCH + b"Content-Length: abc\r\n\r\n", id="bad-content-length"),
    pytest.param(BATCH + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", id="bad-chunk-size"),
    pytest.param(b"GET /api/v1/agents HTTP/9.9\r\nHost: t\r\n\r\n", id="unknown-http-version"),
]


@pytest.mark.parametrize("request_bytes", REFUSED_BEFORE_THE_APP)
async def test_requests_the_http_parser_refuses_are_400_problem_json_too(
    api: TestClient[Any, Any], request_bytes: bytes
) -> None:
    assert api.server.port is not None
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    try:
        writer.write(request_bytes)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()  # the server closes the connection after such an answer
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    assert status_line.split()[1] == "400", answer[:300]
    assert headers["content-type"].startswith(PROBLEM), (
        f"aiohttp's own answer is {headers['content-type']} again: see gateway/api/problems.py (ApiRunner)"
    )
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["title"] == "Bad Request" and problem["detail"]
