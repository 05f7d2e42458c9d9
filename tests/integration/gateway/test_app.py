"""The gateway assembled (gateway/app.py) on real servers: given URLs it connects,
provisions, migrates, serves, runs a task end to end and closes what it opened;
given a connection and a pool, it leaves them open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.registry import example_registry
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from mesh.embedded import NatsServer


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server of the test's own: the queue maintenance and the scheduler act on all it holds."""
    server = NatsServer(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


async def test_a_gateway_given_urls_serves_a_run_end_to_end_and_closes_what_it_opened(
    own_nats: NatsServer, database_url: str, tmp_path: Path
) -> None:
    settings = Settings(port=0, data_dir=tmp_path, workers=0)
    parts = Parts(worker=InProcessWorker(agents=["noop"], idle_poll_s=0.2), poll_s=0.2)
    gateway = Gateway(settings, example_registry(), parts)
    async with gateway.running(own_nats.url, database_url, token="t0ken") as running:
        assert running.api_url.startswith("http://127.0.0.1:")
        assert all(p is not None for p in (running.recorder, running.run_index, running.maintenance,
                                            running.scheduler, running.worker))  # fmt: skip
        headers = {"Authorization": "Bearer t0ken"}
        async with aiohttp.ClientSession(running.api_url, headers=headers) as http:
            async with http.get("/api/v1/agents") as resp:
                states = {a["key"]: a["state"] for a in (await resp.json())["agents"]}
            assert states["noop"] == "serving" and states["fuel-combustion"] == "registered"
            async with http.post("/api/v1/agents/noop/runs", json={"input": {"echo": 1}}) as resp:
                assert resp.status == 202, await resp.text()
                run_id = (await resp.json())["run_id"]
            async with asyncio.timeout(20):
                while True:
                    async with http.get(f"/api/v1/runs/{run_id}") as resp:
                        if (await resp.json())["status"] == "succeeded":
                            break
                    await asyncio.sleep(0.1)
            async with (
                aiohttp.ClientSession(running.api_url) as anonymous,
                anonymous.get("/api/v1/agents") as resp,
            ):
                assert resp.status == 401
        async with asyncio.timeout(20):  # the recorder wrote its outcome to PostgreSQL
            assert running.pool is not None  # as the application's role, which row security binds
            assert await running.pool.fetchval("SELECT current_user") == "af_app"
            while True:
                async with tenant_scope(running.pool, ALL_TENANTS) as conn:
                    if await conn.fetchval("SELECT 1 FROM executions WHERE run_id = $1", run_id):
                        break
                await asyncio.sleep(0.1)
    assert gateway.nc is not None and gateway.nc.is_closed
    assert gateway.pool is not None and gateway.pool.is_closing()


async def test_a_connection_and_a_pool_given_are_used_and_left_open(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    parts = Parts(recorder=False, run_index=False, billing=False, maintenance=False, scheduler=False,
                  serve=False, dedicated=False)  # fmt: skip
    gateway = Gateway(Settings(), example_registry(), parts)
    async with gateway.running(nc, pool, token=None):
        assert gateway.nc is nc and gateway.pool is pool and gateway.app is not None
        assert gateway.runner is None and gateway.recorder is None and gateway.scheduler is None
        assert gateway.dedicated is None
    # Only what it started itself: none of the connections it was given.
    assert [what for what, _, _ in gateway.stop_steps()] == [
        "the operations", "the lifecycle outbox", "the config reconcile", "the breaker follower",
        "the task queue",
    ]  # fmt: skip
    assert nc.is_connected
    assert await pool.fetchval("SELECT 1") == 1
