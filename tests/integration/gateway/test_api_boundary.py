"""The API's edge, route by route: every route outside the probes needs the token, and no
input (body, path segment, query) gets a 5xx; every 4xx is ``application/problem+json``.

The routes come from the app's router, so a route added later is covered without
touching this file.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from yarl import URL

from mesh.schedules import list_definitions, remove_definition
from tests.integration.gateway.conftest import TOKEN

# Open on purpose: kubelet probes and the Prometheus scraper carry no bearer token.
# Spelled out here, not imported from the auth module, so widening it fails this file.
OPEN = {"/healthz", "/readyz", "/metrics"}
PROBLEM = "application/problem+json"
PARAM = re.compile(r"\{(\w+)\}")
SCHEDULES = "/api/v1/queue/schedules"


def api_routes(api: TestClient[Any, Any]) -> list[tuple[str, str]]:
    """(method, path template) of every registered route, HEAD included."""
    assert api.app is not None
    return sorted({(r.method, r.resource.canonical) for r in api.app.router.routes() if r.resource})


def fill(template: str, segment: str) -> str:
    return PARAM.sub(lambda _: segment, template)


async def assert_problem(resp: aiohttp.ClientResponse, method: str) -> None:
    """A 4xx is problem+json naming its own status; nothing is ever a 5xx."""
    detail = "" if method == "HEAD" else (await resp.text())[:300]
    assert resp.status < 500, (method, str(resp.url)[:300], resp.status, detail)
    if resp.status >= 400:
        assert resp.content_type == PROBLEM, (method, str(resp.url)[:300], resp.status, detail)
        if method != "HEAD":
            assert json.loads(detail if len(detail) < 300 else await resp.text())["status"] == resp.status


async def test_every_route_but_the_probes_needs_the_token(api: TestClient[Any, Any]) -> None:
    routes = api_routes(api)
    guarded = [(method, path) for method, path in routes if path not in OPEN]
    assert {path for _, path in routes} >= OPEN
    assert len({path for _, path in guarded}) >= 11, guarded  # the enumeration sees the whole API
    async with aiohttp.ClientSession() as bare:  # no Authorization header at all
        for method, template in guarded:
            path = fill(template, "x")
            wrong = ("", "Bearer wrong", TOKEN, f"Bearer {TOKEN}x", f"bearer {TOKEN}", f"Bearer  {TOKEN}")
            answers = [await api.request(method, path, headers={"Authorization": a}) for a in wrong]
            answers.append(await bare.request(method, api.make_url(path)))
            for resp in answers:
                assert resp.status == 401, (method, path, resp.request_info.headers.get("Authorization"))
                assert resp.content_type == PROBLEM
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="agent-factory"'
                if method != "HEAD":
                    assert (await resp.json())["status"] == 401
            with_token = await api.request(method, path)  # the session sends the right token
            assert with_token.status != 401, (method, path)
        for method, path in routes:
            if path in OPEN:
                resp = await bare.request(method, api.make_url(path))
                assert resp.status == 200, (method, path)


async def test_an_unknown_path_without_the_token_is_401_not_404(api: TestClient[Any, Any]) -> None:
    resp = await api.get("/api/v1/no-such-thing", headers={"Authorization": ""})
    assert resp.status == 401 and resp.content_type == PROBLEM


def body_routes(api: TestClient[Any, Any]) -> list[tuple[str, str]]:
    return [(method, path) for method, path in api_routes(api) if method in ("POST", "PUT", "PATCH")]


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
]


@pytest.mark.parametrize("body", LONE_SURROGATES)
async def test_a_lone_surrogate_is_400_on_every_body_route(api: TestClient[Any, Any], body: bytes) -> None:
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


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"echo": 1}
    for _ in range(depth - 1):
        value = {"echo": value}
    return value


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


# --- property tests -----------------------------------------------------------------

SPECIAL_SEGMENTS = [
    "", ".", "..", "*", ">", "a.b", "a.*", "a.>", "%", "%2F", "%2e%2e", "%00", "%ff", "%C3%A9",
    "été", "x" * 3000, "0", "-1", "99999999999999999999999", "²", "٣", " ", "a b", "a\nb",
    "fuel-combustion", "noop", "\x00", "~", "$KV", "a/b", "_", "-",
]  # fmt: skip
SEGMENTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SPECIAL_SEGMENTS),
    st.from_regex(r"[A-Za-z0-9_.*>-]{1,200}", fullmatch=True),
)
QUERY_VALUES = st.one_of(st.text(max_size=40), st.sampled_from([v for v in SPECIAL_SEGMENTS if len(v) < 100]))
QUERY = st.dictionaries(st.sampled_from(["agent", "limit", "after", "kind", "x"]), QUERY_VALUES, max_size=3)
FIELDS = [
    "input", "priority", "tenant", "ttl_s", "idempotency_key", "routing_key", "tasks", "batch_key",
    "seq", "agent", "all", "name", "cron", "on", "kind", "timezone", "event_field", "echo",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=30), st.sampled_from(SPECIAL_SEGMENTS),
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner, max_size=5)
    ),
    max_leaves=25,
)
SPECIAL_BODIES = [
    b"", b"null", b"{}", b"[]", b"NaN", b"-Infinity", b'"\\ud800"', b'{"input": {"echo": "\\udc00"}}',
    b"1" * 5000, b"\xff\xfe", b"\x00", b'{"a":1,"a":2}', b"[" * 30_000, b'{"input": ' * 120,
    b'{"input": {"fuel": "diesel", "quantity": 1e400, "unit": "L"}}',
]  # fmt: skip
BODIES = st.one_of(
    st.binary(max_size=512),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(SPECIAL_BODIES),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
     "text/plain", "application/octet-stream", "", "multipart/form-data; boundary=x",
     "application/x-www-form-urlencoded", "application/json; charset=nonsense"]
)  # fmt: skip
# Not "br": without Brotli installed, aiohttp's parser refuses it (400 text/plain) before the app.
ENCODINGS = st.sampled_from([None, None, None, "gzip", "deflate", "identity", "nonsense"])
OTHER_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@pytest.fixture
async def schedules_cleaned(mesh_js: JetStreamContext) -> AsyncIterator[None]:
    """Schedules a random body happened to create are removed again."""
    before = {d.name for d in await list_definitions(mesh_js)}
    yield
    for definition in await list_definitions(mesh_js):
        if definition.name not in before:
            await remove_definition(mesh_js, definition.name)


def encode_segment(segment: str, raw: bool) -> str:
    return segment if raw else quote(segment, safe="")


RANDOM = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@RANDOM
@given(data=st.data())
async def test_random_requests_to_every_route_never_get_a_5xx(
    api: TestClient[Any, Any], schedules_cleaned: None, data: st.DataObject
) -> None:
    method, template = data.draw(st.sampled_from(api_routes(api)), label="route")
    if data.draw(st.integers(0, 9), label="other method?") == 0:
        method = data.draw(st.sampled_from(OTHER_METHODS), label="method")
    raw = data.draw(st.booleans(), label="raw segment")
    path = PARAM.sub(lambda _: encode_segment(data.draw(SEGMENTS, label="segment"), raw), template)
    headers = {"Content-Type": data.draw(CONTENT_TYPES, label="content type")}
    encoding = data.draw(ENCODINGS, label="content encoding")
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    body = data.draw(BODIES, label="body") if method not in ("GET", "HEAD") else None
    query = data.draw(QUERY, label="query")
    compressed = encoding in ("gzip", "deflate") and bool(body)
    try:
        resp = await api.request(method, path, data=body, params=query, headers=headers)
    except aiohttp.ServerDisconnectedError:
        # A body the route never read is drained by aiohttp's protocol after the
        # handler; one that does not inflate makes it drop the connection there.
        assert compressed
        event("compressed body not read by the route: connection dropped")
        return
    event(f"{method} {template} -> {resp.status}")  # --hypothesis-show-statistics
    if compressed and resp.status >= 400 and resp.content_type == "text/plain":
        # aiohttp's parser inflates the body as it arrives: one that does not inflate
        # may be refused there (400, text/plain), before any route or middleware.
        assert resp.status == 400
        return
    await assert_problem(resp, method)


TEXT = st.text(max_size=300)  # any unicode (lone surrogates too, once through json.dumps)
NOOP_INPUTS = st.sampled_from([{"echo": 1}, {"echo": "\ud800"}, {"echo": None}, nested(98)]) | st.builds(
    lambda text: {"echo": text}, TEXT
)
# Per field: values the API must accept, then edge values it may refuse (with a 4xx).
VALID: dict[str, st.SearchStrategy[Any]] = {
    "agent": st.just("noop"),
    "input": NOOP_INPUTS,
    "priority": st.sampled_from(["HIGH", "low", "Background", 0, 2, 4]),
    "tenant": st.sampled_from(["default", "t-1", "a" * 128]),
    "ttl_s": st.sampled_from([1, 60, 86_400]),
    "idempotency_key": st.text(min_size=1, max_size=256),
    "routing_key": st.text(max_size=256),
    "batch_key": st.text(min_size=1, max_size=256),
    "name": st.from_regex(r"boundary-[a-z0-9]{1,8}", fullmatch=True) | st.just("b" * 63),
    "cron": st.sampled_from(["@hourly", "@every 1h", "0 0 29 2 *", "0 0 * * *", "*/5 * * * * *"]),
    "timezone": st.sampled_from(["Europe/Paris", "UTC", "Etc/GMT-14"]),
    "on": st.sampled_from(["af.events.x.*", "af.events.custom.>"]),
    "event_field": st.none() | st.text(min_size=1, max_size=64),
    "seq": st.integers(min_value=1, max_value=2**63 - 1),
    "all": st.just(True),
}
EDGE: dict[str, st.SearchStrategy[Any]] = {
    "agent": st.sampled_from(["fuel-combustion", "no-such-agent", "Noop", "a" * 64, "é"]),
    "input": st.sampled_from([{"fuel": "diesel", "quantity": 1, "unit": "L"}, nested(99), [], "x"]),
    "priority": st.sampled_from(["²", "URGENT", 5, -1, 2**64, 1.5, True]),
    "tenant": st.sampled_from(["é", "a" * 129, "", "a.b", "*"]),
    "ttl_s": st.sampled_from([0, 86_401, -1, 2**70, 1.5]),
    "idempotency_key": st.sampled_from(["", "k" * 257, "\x00"]),
    "routing_key": st.just("r" * 257),
    "batch_key": st.sampled_from(["", "k" * 257]),
    "name": st.sampled_from(["", "B", "a.b", "a*", "é", "b" * 64, "-a", "a\n"]),
    "cron": st.sampled_from(
        ["0 0 30 2 *", "0 0 31 4 *", "61 * * * *", "@every 0s", "@every 99999999h", "* * * * * * *", "", "@"]
    ),
    "timezone": st.sampled_from(["America", "Etc", "a" * 300, "../x", "\x00", "", "Europe/Paris/"]),
    "on": st.sampled_from(["af.events.>", "af.events", "af.events.é", "nope.>", "af.events.a..b", "*"]),
    "event_field": st.sampled_from(["", "e" * 65]),
    "seq": st.sampled_from([0, -1, 2**63, 2**64, 2**70, 1.5, "1"]),
    "all": st.sampled_from([False, 1, "true"]),
}
ANYTHING = JSON | st.sampled_from(SPECIAL_SEGMENTS)


def valid_body(template: str) -> tuple[list[str], st.SearchStrategy[dict[str, Any]]]:
    """(the body's fields, bodies made of valid values) for a body route."""
    run = {k: VALID[k] for k in ("priority", "tenant", "ttl_s", "idempotency_key", "routing_key")}
    if template.endswith("/runs"):
        return ["input", *run], st.fixed_dictionaries({"input": VALID["input"]}, optional=run)
    if template.endswith("/batch"):
        del run["idempotency_key"]
        task = st.fixed_dictionaries({"agent": VALID["agent"], "input": VALID["input"]}, optional=run)
        tasks = st.lists(task, min_size=1, max_size=3)
        return ["tasks", "batch_key"], st.fixed_dictionaries(
            {"tasks": tasks}, optional={"batch_key": VALID["batch_key"]}
        )
    if "/dlq/" in template:
        one = [st.fixed_dictionaries({k: VALID[k]}) for k in ("seq", "agent", "all")]
        return ["seq", "agent", "all"], st.one_of(one)
    common = {k: VALID[k] for k in ("name", "agent", "input")}
    optional = {k: VALID[k] for k in ("priority", "tenant", "ttl_s")}
    cron = st.fixed_dictionaries(
        {**common, "cron": VALID["cron"]}, optional={**optional, "timezone": VALID["timezone"]}
    )
    trigger = st.fixed_dictionaries(
        {**common, "on": VALID["on"]}, optional={**optional, "event_field": VALID["event_field"]}
    )
    fields = [*common, *optional, "cron", "timezone", "on", "event_field", "kind"]
    return fields, cron | trigger


def near_valid(template: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body for the route, then maybe one field set to an edge value and maybe
    one to anything: the 5xx that hide past validation live here."""
    fields, base = valid_body(template)
    edge = st.sampled_from([f for f in fields if f in EDGE]).flatmap(
        lambda f: st.fixed_dictionaries({f: EDGE[f]})
    )
    anything = st.dictionaries(st.sampled_from(fields), ANYTHING, max_size=1)
    return st.builds(lambda body, e, a: {**body, **e, **a}, base, st.just({}) | edge, st.just({}) | anything)


@RANDOM
@given(data=st.data())
async def test_near_valid_bodies_on_every_body_route_never_get_a_5xx(
    api: TestClient[Any, Any], schedules_cleaned: None, data: st.DataObject
) -> None:
    method, template = data.draw(st.sampled_from(body_routes(api)), label="route")
    body = data.draw(near_valid(template), label="body")
    name = body.get("name") if isinstance(body.get("name"), str) and data.draw(st.booleans()) else None
    segment = name or data.draw(st.just("noop") | SEGMENTS)
    resp = await api.request(method, fill(template, quote(segment, safe="")), json=body)
    event(f"{method} {template} -> {resp.status}")  # --hypothesis-show-statistics
    await assert_problem(resp, method)
