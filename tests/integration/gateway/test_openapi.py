"""The API's contract: ``GET /api/v1/openapi.json`` documents every route of the real
app (a route added without its ``@endpoint`` marker fails here), is valid OpenAPI 3.1,
and what the routes really answer matches the schemas it documents."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.api.docs import DOCS_PATH, OPENAPI_PATH
from gateway.api.spec import endpoint, openapi
from tests.helpers import unique
from tests.integration.gateway.conftest import api_routes

pytestmark = pytest.mark.timeout(120)


def undocumented(routes: list[tuple[str, str]], doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The (method, path) routes the document lacks, or has without a summary or an answer's schema."""
    missing = []
    for method, path in routes:
        op = doc["paths"].get(path, {}).get(method.lower())
        answers = [a for status, a in (op or {}).get("responses", {}).items() if status.startswith("2")]
        described = all("schema" in m for a in answers for m in a.get("content", {}).values())
        has_body = any(a.get("content") for a in answers) or "204" in (op or {}).get("responses", {})
        if op is None or not op.get("summary") or not answers or not described or not has_body:
            missing.append((method, path))
    return missing


async def _document(api: TestClient[Any, Any]) -> dict[str, Any]:
    async with api.get(OPENAPI_PATH) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_every_route_of_the_app_is_documented_with_a_summary_and_an_answer_schema(
    api: TestClient[Any, Any],
) -> None:
    doc = await _document(api)
    routes = [(m, p) for m, p in api_routes(api) if m != "HEAD"]  # aiohttp's twin of each GET
    assert len(routes) >= 37
    assert undocumented(routes, doc) == []
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert documented == set(routes)  # and nothing documented that is not served


def test_a_route_without_its_marker_is_what_the_check_reports() -> None:
    """The check above is not vacuous: an unmarked route is reported, a marked one is not."""

    async def marked(request: web.Request) -> web.Response:
        return web.Response()

    async def unmarked(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/marked/{run_id}", endpoint("Marked", response=dict[str, int])(marked))
    app.router.add_post("/unmarked", unmarked)
    routes = [
        (r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource
    ]
    assert undocumented(routes, openapi(app)) == [("POST", "/unmarked")]


async def test_the_document_is_valid_openapi_3_1_and_built_once(api: TestClient[Any, Any]) -> None:
    doc = await _document(api)
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises OpenAPIValidationError, naming the bad part
    assert api.app is not None and openapi(api.app) is openapi(api.app)
    ops = [op for item in doc["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    by_security = {path: op.get("security") for path, item in doc["paths"].items() for op in item.values()}
    assert by_security["/healthz"] == [] and by_security[OPENAPI_PATH] == []
    assert by_security["/api/v1/runs"] is None  # the global bearerAuth applies
    assert doc["security"] == [{"bearerAuth": []}]


async def test_the_document_and_the_docs_page_are_open_and_the_page_fetches_nothing_from_outside(
    api: TestClient[Any, Any],
) -> None:
    async with aiohttp.ClientSession() as plain:  # no bearer token
        async with plain.get(api.make_url(OPENAPI_PATH)) as resp:
            assert resp.status == 200
        async with plain.get(api.make_url(DOCS_PATH)) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        async with plain.get(api.make_url("/api/v1/runs")) as resp:
            assert resp.status == 401  # the rest stays closed
    assert 'fetch("openapi.json")' in page
    assert re.search(r"https?://", page) is None, "the docs page must work without internet access"


class Answers:
    """Validates a live answer against the schema the document gives its route and status."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    async def check(self, resp: aiohttp.ClientResponse, method: str, path: str) -> Any:
        body = await resp.json(content_type=None)
        answer = self.doc["paths"][path][method.lower()]["responses"][str(resp.status)]
        schema = answer["content"][resp.content_type]["schema"]
        validator = Draft202012Validator(
            {**schema, "components": self.doc["components"]},
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert errors == [], (method, path, resp.status, errors[:5])
        return body


async def _get(api: TestClient[Any, Any], answers: Answers, url: str, path: str | None = None) -> Any:
    async with api.get(url) as resp:
        assert resp.status < 300, await resp.text()
        return await answers.check(resp, "GET", path or url.split("?")[0])


async def test_live_answers_match_the_documented_schemas(api: TestClient[Any, Any]) -> None:
    answers = Answers(await _document(api))
    tenant = unique("t")
    async with api.post("/api/v1/agents/noop/runs", json={"input": {"echo": 1}, "tenant": tenant}) as resp:
        accepted = await answers.check(resp, "POST", "/api/v1/agents/{key}/runs")
    async with asyncio.timeout(15):
        while (await _get(api, answers, accepted["url"], "/api/v1/runs/{run_id}"))["status"] != "succeeded":
            await asyncio.sleep(0.05)
        while not (await _get(api, answers, f"/api/v1/runs?tenant={tenant}"))["runs"]:
            await asyncio.sleep(0.1)
    for url in ["/healthz", "/readyz", "/api/v1/agents", "/api/v1/queue/stats", "/api/v1/queue/dlq",
                "/api/v1/channels", "/api/v1/breakers", "/api/v1/costs?group_by=tenant", "/api/v1/budgets",
                "/api/v1/queue/schedules", "/api/v1/tenants", "/api/v1/tokens"]:  # fmt: skip
        await _get(api, answers, url)
    await _get(api, answers, "/api/v1/agents/fuel-combustion", "/api/v1/agents/{key}")
    await _get(api, answers, "/api/v1/agents/noop/health", "/api/v1/agents/{key}/health")
    await _get(api, answers, "/api/v1/agents/noop/history", "/api/v1/agents/{key}/history")
    await _get(api, answers, "/api/v1/tenants/default", "/api/v1/tenants/{id}")
    quota = unique("q")
    async with api.put(f"/api/v1/quotas/{quota}", json={"tenant": tenant, "max_concurrent": 3}) as resp:
        await answers.check(resp, "PUT", "/api/v1/quotas/{id}")
    try:
        shown = await _get(api, answers, f"/api/v1/quotas/{quota}", "/api/v1/quotas/{id}")
        assert shown["running"] == 0
    finally:
        async with api.delete(f"/api/v1/quotas/{quota}") as resp:
            assert resp.status == 204
    async with api.get("/api/v1/runs/no-such-run") as resp:  # an error answer: the Problem schema
        assert resp.status == 404
        await answers.check(resp, "GET", "/api/v1/runs/{run_id}")


async def test_a_method_a_route_lacks_is_a_405_problem_that_names_the_allowed_ones(
    api: TestClient[Any, Any],
) -> None:
    """Found by the schemathesis run (tests/fuzz): the problem dropped aiohttp's Allow header."""
    for method, path, allowed in [
        ("TRACE", "/api/v1/agents", {"GET", "HEAD"}),
        ("PATCH", "/api/v1/runs/r1", {"GET", "HEAD", "DELETE"}),
        ("DELETE", "/api/v1/queue/schedules", {"GET", "HEAD", "POST"}),
    ]:
        async with api.request(method, path) as resp:
            assert resp.status == 405, (method, path)
            assert resp.content_type == "application/problem+json"
            assert (await resp.json())["status"] == 405
            assert set(resp.headers["Allow"].split(",")) == allowed, (method, path, resp.headers)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/agents/noop/lifecycle", {"action": "deploy", "reason": "a\u0000b"}),
        ("POST", "/api/v1/tenants", {"id": "nul-in-name", "name": "a\u0000b"}),
        ("PATCH", "/api/v1/tenants/default", {"name": "a\u0000b"}),
        ("POST", "/api/v1/tokens", {"scope": "admin", "name": "a\u0000b"}),
    ],
)
async def test_a_nul_character_in_a_text_that_postgresql_stores_is_a_422_not_a_500(
    api: TestClient[Any, Any], method: str, path: str, body: dict[str, Any]
) -> None:
    """Found by the schemathesis run (the lifecycle reason; the others by the same look):
    PostgreSQL text cannot hold a NUL, so the value is refused before it is stored."""
    async with api.request(method, path, json=body) as resp:
        assert resp.status == 422, await resp.text()
        assert resp.content_type == "application/problem+json"


@pytest.mark.parametrize("version", ["1.0.", "1..0", ".1"])
async def test_a_version_that_cannot_be_a_kv_key_token_is_a_400_not_a_500(
    api: TestClient[Any, Any], version: str
) -> None:
    """Found by the schemathesis run: ``noop.1.0.`` is no KV key (an empty token), and
    the canary metrics and the breakers look a version up by that key."""
    async with api.get("/api/v1/canary/noop/metrics", params={"version": version}) as resp:
        assert resp.status == 400, await resp.text()
    force = {"action": "close", "reason": "test", "by": "me", "version": version}
    async with api.post("/api/v1/breakers/noop", json=force) as resp:
        assert resp.status in (400, 422), await resp.text()
