"""Random requests at every route and method (hypothesis): whatever the body, path
segment, query, content type or encoding, the answer is never a 5xx, and a 4xx is
``application/problem+json``. 100 examples per test keep the suite quick; run with
``--hypothesis-show-statistics`` to see which answers the examples reached.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from tests.integration.gateway.conftest import PARAM, api_routes, assert_problem, body_routes, fill, nested

SPECIAL_SEGMENTS = [
    "", ".", "..", "*", ">", "a.b", "a.*", "a.>", "%", "%2F", "%2e%2e", "%00", "%ff", "%C3%A9",
    "été", "x" * 3000, "0", "-1", "99999999999999999999999", "²", "٣", " ", "a b", "a\nb",
    "fuel-combustion", "noop", "\x00", "~", "$KV", "a/b", "_", "-",
]  # fmt: skip
SEGMENTS = st.one_of(  # one_of picks a branch evenly: the known-nasty values half the time
    st.sampled_from(SPECIAL_SEGMENTS),
    st.sampled_from(SPECIAL_SEGMENTS),
    st.text(max_size=40),
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
    st.sampled_from(SPECIAL_BODIES),
    st.binary(max_size=512),
    JSON.map(lambda v: json.dumps(v).encode()),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
     "text/plain", "application/octet-stream", "", "multipart/form-data; boundary=x",
     "application/x-www-form-urlencoded", "application/json; charset=nonsense"]
)  # fmt: skip
# "br" without Brotli installed: aiohttp's parser refuses it before the app (problem+json all the same).
ENCODINGS = st.sampled_from(["gzip", "deflate", "br", "identity", "nonsense"])
OTHER_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def encode_segment(segment: str, raw: bool) -> str:
    return segment if raw else quote(segment, safe="")


RANDOM = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one API for all examples
    phases=[p for p in Phase if p is not Phase.explain],  # minutes on a failure, for little
)


@RANDOM
@given(data=st.data(), segment=SEGMENTS, raw=st.booleans(), query=QUERY)
async def test_random_path_segments_and_queries_never_get_a_5xx(
    api: TestClient[Any, Any], data: st.DataObject, segment: str, raw: bool, query: dict[str, str]
) -> None:
    """Each example goes to every route with a path parameter, so a value that breaks
    one is not left to the luck of the draw; then to one route without (they vary by
    query only, and some are slow), and to one path with a method it does not have."""
    routes = api_routes(api)
    with_params = [(method, path) for method, path in routes if PARAM.search(path)]
    without = data.draw(st.sampled_from([r for r in routes if r not in with_params]), label="route without")
    other = data.draw(
        st.tuples(st.sampled_from(OTHER_METHODS), st.sampled_from(routes)), label="other method"
    )
    path_segment = segment if raw else quote(segment, safe="")
    for method, template in [*with_params, without, (other[0], other[1][1])]:
        resp = await api.request(method, fill(template, path_segment), params=query)
        await assert_problem(resp, method)


@RANDOM
@given(
    body=BODIES,
    content_type=st.just("application/json") | CONTENT_TYPES,
    encoding=st.none() | ENCODINGS,
    segment=st.just("noop") | SEGMENTS.map(lambda s: quote(s, safe="")),
)
async def test_random_bodies_never_get_a_5xx(
    api: TestClient[Any, Any],
    schedules_cleaned: None,
    body: bytes,
    content_type: str,
    encoding: str | None,
    segment: str,
) -> None:
    """Each example goes to every route that reads a body."""
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    compressed = encoding in ("gzip", "deflate") and bool(body)
    for method, template in body_routes(api):
        try:
            resp = await api.request(method, fill(template, segment), data=body, headers=headers)
        except aiohttp.ServerDisconnectedError:
            # A body the route never read is drained by aiohttp's protocol after the
            # handler; one that does not inflate makes it drop the connection there.
            assert compressed
            continue
        # aiohttp's parser inflates the body as it arrives, and may refuse one that
        # does not inflate before any route: that answer is problem+json too.
        await assert_problem(resp, method)


TEXT = st.text(max_size=300)  # any unicode (lone surrogates too, once through json.dumps)
NOOP_INPUTS = st.sampled_from([{"echo": 1}, {"echo": "\ud800"}, {"echo": None}, nested(98)]) | st.builds(
    lambda text: {"echo": text}, TEXT
)
# Per field: values the API must accept.
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
    "action": st.sampled_from(["deploy", "drain", "retire", "restart", "force-stop"]),
    "version": st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    "reason": st.none() | st.text(max_size=500),
    "drain_timeout_s": st.sampled_from([0.1, 1, 300]),
    "wait": st.booleans(),
}
# Per field: edge values the API may refuse, with a 4xx. Every one is tried on every
# route that takes the field, the rest of the body valid (a 500 hides past validation).
EDGES: dict[str, list[Any]] = {
    "agent": ["fuel-combustion", "no-such-agent", "Noop", "a" * 64, "é", "*", ""],
    "input": [
        {"fuel": "diesel", "quantity": 1, "unit": "L"},
        nested(99),
        nested(100),
        nested(300),
        [],
        "x",
        None,
    ],
    "priority": ["²", "URGENT", "", 5, -1, 2**64, 1.5, True, None],
    "tenant": ["é", "a" * 129, "", "a.b", "*", ">", None],
    "ttl_s": [0, 86_401, -1, 2**70, 1.5, "60", None],
    "idempotency_key": ["", "k" * 257, "\x00", "é", "a.b", "*", ">"],
    "routing_key": ["r" * 257, "\r\n", "é", "", "*"],
    "batch_key": ["", "k" * 257, "\x00", "é", "*"],
    "name": ["", "B", "a.b", "a*", ">", "é", "b" * 64, "-a", "a\n", "_a"],
    "cron": [
        "0 0 30 2 *",
        "0 0 31 4 *",
        "61 * * * *",
        "@every 0s",
        "@every 99999999h",
        "* * * * * * *",
        "",
        "@",
        "@every",
        "@every -1s",
        "0 0 29 2 1",
        "*/0 * * * *",
    ],
    "timezone": ["America", "Etc", "a" * 300, "../x", "\x00", "", "Europe/Paris/", "UTC/.."],
    "on": [
        "af.events.>",
        "af.events",
        "af.events.é",
        "nope.>",
        "af.events.a..b",
        "*",
        ">",
        "af.events.*.>",
        "af.events.execution.finished.noop.*",
        "af.events." + "a" * 300,
    ],
    "event_field": ["", "e" * 65, None],
    "kind": ["cron", "trigger", "x", None, ""],
    "seq": [0, -1, 2**63, 2**64, 2**70, 1.5, "1", None],
    "all": [False, 1, "true", None],
    "action": ["", "Deploy", "delete", "force_stop", None, 1],
    "version": ["", "v" * 65, "../1", "1 0", "é", "*", None],
    "reason": ["r" * 501, 1, "\x00"],
    "drain_timeout_s": [0, -1, 301, 2**70, "30", float("nan"), None],
    "wait": ["yes", 2, None],
}
LIFECYCLE_FIELDS = ("action", "version", "reason", "drain_timeout_s", "wait")
#: The agent the fuzz acts on: loaded nowhere, so no action reaches a real agent's
#: lifecycle (a retired noop would stop every later test's noop tasks).
LIFECYCLE_AGENT = "fuzz-nobody"
ANYTHING = JSON | st.sampled_from(SPECIAL_SEGMENTS)
RUN_FIELDS = ("priority", "tenant", "ttl_s", "idempotency_key", "routing_key")
SCHEDULE_FIELDS = ("name", "agent", "input", "priority", "tenant", "ttl_s", "kind")


def valid_body(template: str) -> tuple[list[str], st.SearchStrategy[dict[str, Any]]]:
    """(the body's fields, bodies made of valid values) for a body route."""
    run = {k: VALID[k] for k in RUN_FIELDS}
    if template.endswith("/runs"):
        return ["input", *run], st.fixed_dictionaries({"input": VALID["input"]}, optional=run)
    if template.endswith("/batch"):
        del run["idempotency_key"]
        task = st.fixed_dictionaries({"agent": VALID["agent"], "input": VALID["input"]}, optional=run)
        tasks = st.lists(task, min_size=1, max_size=3)
        return ["tasks", "batch_key"], st.fixed_dictionaries(
            {"tasks": tasks}, optional={"batch_key": VALID["batch_key"]}
        )
    if template.endswith("/lifecycle"):
        optional = {k: VALID[k] for k in LIFECYCLE_FIELDS[1:]}
        return list(LIFECYCLE_FIELDS), st.fixed_dictionaries({"action": VALID["action"]}, optional=optional)
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
    return [*SCHEDULE_FIELDS, "cron", "timezone", "on", "event_field"], cron | trigger


CRON = {"agent": "noop", "cron": "@hourly"}
TRIGGER = {"agent": "noop", "on": "af.events.x.*"}
TASK = {"agent": "noop", "input": {"echo": 1}}


def edge_bodies(template: str, names: Iterator[int]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(field, edge value, a body valid but for it) for every edge of every field the route takes."""
    if template.endswith("/runs"):
        for field in ("input", *RUN_FIELDS):
            yield from ((field, v, {"input": {"echo": 1}, field: v}) for v in EDGES[field])
    elif template.endswith("/batch"):
        for field in ("agent", "input", *RUN_FIELDS):
            yield from ((field, v, {"tasks": [{**TASK, field: v}]}) for v in EDGES[field])
        yield from (("batch_key", v, {"tasks": [TASK], "batch_key": v}) for v in EDGES["batch_key"])
    elif template.endswith("/lifecycle"):
        for field in LIFECYCLE_FIELDS:
            yield from ((field, v, {"action": "drain", field: v}) for v in EDGES[field])
    elif "/dlq/" in template:
        for field in ("seq", "agent", "all"):
            yield from ((field, v, {field: v}) for v in EDGES[field])
    else:
        for base, own in ((CRON, ("cron", "timezone")), (TRIGGER, ("on", "event_field"))):
            for field in (*SCHEDULE_FIELDS, *own):
                yield from (
                    (field, v, {**base, "name": f"edge-{next(names)}", field: v}) for v in EDGES[field]
                )


def schedule_path(template: str, body: dict[str, Any]) -> str:
    """PUT names the schedule in the path too: the body's name when it has a string one."""
    if template.endswith("/lifecycle"):
        return fill(template, LIFECYCLE_AGENT)
    name = body.get("name")
    return fill(template, quote(name if isinstance(name, str) else "noop", safe=""))


async def test_every_edge_value_of_every_body_field_is_a_4xx_or_accepted(
    api: TestClient[Any, Any], schedules_cleaned: None
) -> None:
    names = itertools.count()
    for method, template in body_routes(api):
        for field, value, body in edge_bodies(template, names):
            resp = await api.request(method, schedule_path(template, body), json=body)
            await assert_problem(resp, method, context=(field, value))


def near_valid(template: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body for the route with one field set to an edge value or to anything:
    the 5xx that hide past validation live here."""
    fields, base = valid_body(template)
    edge = st.sampled_from([f for f in fields if f in EDGES]).flatmap(
        lambda f: st.fixed_dictionaries({f: st.sampled_from(EDGES[f])})
    )
    anything = st.dictionaries(st.sampled_from(fields), ANYTHING, min_size=1, max_size=1)
    return st.builds(lambda body, changed: {**body, **changed}, base, st.just({}) | edge | anything)


@settings(RANDOM, max_examples=50)  # each example is a request per body route
@given(data=st.data())
async def test_near_valid_bodies_on_every_body_route_never_get_a_5xx(
    api: TestClient[Any, Any], schedules_cleaned: None, data: st.DataObject
) -> None:
    for method, template in body_routes(api):
        body = data.draw(near_valid(template), label=f"{method} {template}")
        resp = await api.request(method, schedule_path(template, body), json=body)
        event(f"{method} {template} -> {resp.status}")  # --hypothesis-show-statistics
        await assert_problem(resp, method, context=body)
