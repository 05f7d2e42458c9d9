"""An in-process gateway + worker + recorder on the session's real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner, Result
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.registry import example_registry
from agents.store.tenancy import app_pool
from gateway.api.problems import ApiRunner
from gateway.api.spec import endpoint_of
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.cli import cli
from gateway.settings import Settings
from mesh.schedules.definitions import list_definitions, remove_definition

TOKEN = "test-token"


class ApiTestServer(TestServer):
    """The app served as `up` serves it: aiohttp's own errors are problem+json too."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ApiRunner(self.app, **kwargs)


@pytest.fixture
async def api(
    nc: Client,
    mesh_js: JetStreamContext,
    pool: asyncpg.Pool,
    database_url: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[TestClient[Any, Any]]:
    """The gateway with its recorders and a worker (no maintenance, no scheduler), served by aiohttp's
    test server; the NATS connection and the pool are the test's. Parametrize indirectly
    with a dict of Settings to change some."""
    parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2,
                  worker=InProcessWorker(concurrency=8, idle_poll_s=0.2, drain_timeout_s=5))  # fmt: skip
    settings = Settings(**{"max_payload_bytes": 64 * 1024, **getattr(request, "param", {})})
    async with served(Gateway(settings, example_registry(), parts), nc, database_url) as client:
        yield client


@asynccontextmanager
async def served(gateway: Gateway, nc: Client, database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    """``gateway`` started on the test's NATS connection and served by aiohttp's test
    server, its client sending the admin token. Its pool logs in as the application's
    role, which row security binds: every handler's queries must set their tenant
    (the owner's ``pool`` fixture ran the migrations and sees all)."""
    app_db = await app_pool(database_url, size=gateway.settings.database_pool_size)
    try:
        async with gateway.running(nc, app_db, token=TOKEN):
            assert gateway.app is not None
            client = TestClient(ApiTestServer(gateway.app))
            await client.start_server()
            client.session.headers["Authorization"] = f"Bearer {TOKEN}"
            try:
                yield client
            finally:
                await client.close()
    finally:
        await app_db.close()


# --- the CLI against a served app ----------------------------------------------------


def agent_factory(api: TestClient[Any, Any], *args: str, token: str = TOKEN) -> Any:
    """``agent-factory --api-url … --token … ARGS`` in a thread (commands run their own loop)."""
    url = str(api.make_url("/")).rstrip("/")
    return asyncio.to_thread(CliRunner().invoke, cli, ["--api-url", url, "--token", token, *args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


# --- long operations (202 Accepted) ----------------------------------------------------

FINAL = ("succeeded", "failed", "cancelled")


async def follow(api: TestClient[Any, Any], resp: ClientResponse, timeout: float = 30) -> dict[str, Any]:
    """The operation a ``202`` answer started, once it ended (its Location followed)."""
    assert resp.status == 202, await resp.text()
    location = resp.headers["Location"]
    assert (await resp.json())["url"] == location
    async with asyncio.timeout(timeout):
        while True:
            op: dict[str, Any] = await (await api.get(location)).json()
            if op["status"] in FINAL:
                return op
            await asyncio.sleep(0.05)


# --- the routes of the app, for tests that go through all of them -------------------

PROBLEM = "application/problem+json"
PARAM = re.compile(r"\{(\w+)\}")


def api_routes(api: TestClient[Any, Any]) -> list[tuple[str, str]]:
    """(method, path template) of every registered route, HEAD included: a route added
    later is covered by the tests that use this without touching them."""
    assert api.app is not None
    return sorted({(r.method, r.resource.canonical) for r in api.app.router.routes() if r.resource})


def body_routes(api: TestClient[Any, Any]) -> list[tuple[str, str]]:
    """(method, path template) of every route that takes a JSON body (an upload's is not)."""
    assert api.app is not None
    raw = set()
    for r in api.app.router.routes():
        spec = endpoint_of(r.handler)
        if r.resource is not None and spec is not None and spec.body_media_type != "application/json":
            raw.add((r.method, r.resource.canonical))
    return [(m, p) for m, p in api_routes(api) if m in ("POST", "PUT", "PATCH") and (m, p) not in raw]


def fill(template: str, segment: str) -> str:
    """The path with every ``{param}`` replaced by ``segment``."""
    return PARAM.sub(lambda _: segment, template)


def nested(depth: int) -> dict[str, Any]:
    """``{"echo": {"echo": ... 1}}``, ``depth`` objects deep (the noop agent takes it)."""
    value: dict[str, Any] = {"echo": 1}
    for _ in range(depth - 1):
        value = {"echo": value}
    return value


async def assert_problem(resp: ClientResponse, method: str, context: object = None) -> None:
    """Never a 5xx; a 4xx is problem+json naming its own status."""
    text = "" if method == "HEAD" else await resp.text()
    where = (method, str(resp.url)[:300], resp.status, text[:300], repr(context)[:300])
    assert resp.status < 500, where
    if resp.status >= 400:
        assert resp.content_type == PROBLEM, where
        if method != "HEAD":
            assert json.loads(text)["status"] == resp.status, where


@pytest.fixture
async def schedules_cleaned(mesh_js: JetStreamContext) -> AsyncIterator[None]:
    """Schedules a test happened to create are removed again."""
    before = {d.name for d in await list_definitions(mesh_js)}
    yield
    for definition in await list_definitions(mesh_js):
        if definition.name not in before:
            await remove_definition(mesh_js, definition.name)
