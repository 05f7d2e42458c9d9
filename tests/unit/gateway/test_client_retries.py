"""The API client's retries, against a real aiohttp server that fails the first
requests: an idempotent request (a GET, or one with an Idempotency-Key) is retried on
502/503/504 and on a dropped connection, at most four times, as long as Retry-After
says when it says; a POST without a key is sent once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.client import ApiClient, ApiError, Retries

Serve = Callable[["Flaky"], Awaitable[str]]
FAST = Retries(attempts=4, base_s=0.01, max_s=0.05, budget_s=5.0)


@dataclass
class Flaky:
    """Fails the first ``failures`` requests with ``status`` (0: drops the connection)."""

    failures: int = 0
    status: int = 503
    retry_after: str | None = None
    seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.method)
        if len(self.seen) <= self.failures:
            if self.status == 0:
                assert request.transport is not None
                request.transport.close()  # the client sees the server disconnect
                return web.Response()
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response({"title": "Unavailable", "status": self.status}, status=self.status,
                                     headers=headers)  # fmt: skip
        return web.json_response({"ok": True, "key": request.headers.get("Idempotency-Key")})


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[TestServer] = []

    async def start(flaky: Flaky) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", flaky.handle)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def test_a_get_is_retried_past_two_503s(serve: Serve) -> None:
    flaky = Flaky(failures=2)
    async with ApiClient(await serve(flaky), None, retries=FAST) as api:
        assert (await api.request("GET", "/x"))["ok"]
    assert flaky.seen == ["GET"] * 3


@pytest.mark.parametrize("status", [502, 504])
async def test_bad_gateways_and_gateway_timeouts_are_retried(serve: Serve, status: int) -> None:
    flaky = Flaky(failures=1, status=status)
    async with ApiClient(await serve(flaky), None, retries=FAST) as api:
        data, _ = await api.download("/archive")
    assert b'"ok": true' in data and len(flaky.seen) == 2


async def test_a_dropped_connection_is_retried(serve: Serve) -> None:
    """aiohttp resends once by itself after a disconnect: two drops get past it."""
    async with ApiClient(await serve(Flaky(failures=2, status=0)), None, retries=FAST) as api:
        assert (await api.request("GET", "/x"))["ok"]
    once = Retries(attempts=1)
    async with ApiClient(await serve(Flaky(failures=2, status=0)), None, retries=once) as api:
        with pytest.raises(ApiError, match="closed the connection"):
            await api.request("GET", "/x")


async def test_it_gives_up_after_four_attempts_with_the_last_answer(serve: Serve) -> None:
    flaky = Flaky(failures=10)
    async with ApiClient(await serve(flaky), None, retries=FAST) as api:
        with pytest.raises(ApiError) as failed:
            await api.request("GET", "/x")
    assert failed.value.status == 503 and len(flaky.seen) == 4


async def test_a_post_is_sent_once_unless_it_carries_an_idempotency_key(
    serve: Serve,
) -> None:
    once = Flaky(failures=1)
    async with ApiClient(await serve(once), None, retries=FAST) as api:
        with pytest.raises(ApiError):
            await api.request("POST", "/runs", {"a": 1})
    assert once.seen == ["POST"]
    keyed = Flaky(failures=2)
    async with ApiClient(await serve(keyed), None, retries=FAST) as api:
        answer = await api.request("POST", "/runs", data=b"x", headers={"Idempotency-Key": "k1"})
    assert answer == {"ok": True, "key": "k1"} and keyed.seen == ["POST"] * 3


async def test_retry_after_is_honoured_and_one_past_the_budget_is_not_waited_for(
    serve: Serve,
) -> None:
    flaky = Flaky(failures=1, retry_after="1")
    async with ApiClient(await serve(flaky), None, retries=FAST) as api:
        started = time.monotonic()
        await api.request("GET", "/x")
        assert time.monotonic() - started >= 1.0
    later = Flaky(failures=1, retry_after="60")
    async with ApiClient(await serve(later), None, retries=FAST) as api:
        started = time.monotonic()
        with pytest.raises(ApiError) as failed:
            await api.request("GET", "/x")
        assert time.monotonic() - started < 1.0
    assert failed.value.status == 503 and len(later.seen) == 1


async def test_an_unreachable_gateway_is_one_line_after_the_retries(unused_tcp_port: int) -> None:
    started = time.monotonic()
    async with ApiClient(f"http://127.0.0.1:{unused_tcp_port}", None, retries=FAST) as api:
        with pytest.raises(ApiError, match="cannot reach the gateway at"):
            await api.request("GET", "/x")
    assert time.monotonic() - started < 5.0
