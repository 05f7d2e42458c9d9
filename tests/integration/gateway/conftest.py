"""An in-process gateway + worker + recorder on the session's real NATS and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.recorder import Recorder
from agents.registry import example_registry
from agents.runtime import worker_for
from agents.store.executions import upsert_agents
from agents.store.migrations import apply_migrations
from gateway.api import Services, create_app
from mesh.queue import TaskQueue
from mesh.settings import Settings

TOKEN = "test-token"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    yield pool
    await pool.close()


@pytest.fixture
async def api(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool
) -> AsyncIterator[TestClient[Any, Any]]:
    registry = example_registry()
    await upsert_agents(pool, registry)
    settings = Settings(max_payload_bytes=64 * 1024)
    queue = TaskQueue(nc, mesh_js, max_payload=settings.max_payload_bytes)
    await queue.start()
    services = Services(nc, mesh_js, pool, registry, settings, queue, lambda: set(registry.keys()))
    recorder = Recorder(nc, mesh_js, pool, poll_s=0.2)
    await recorder.start()
    worker = worker_for(nc, mesh_js, registry, concurrency=8, idle_poll_s=0.2)
    await worker.start()
    client = TestClient(TestServer(create_app(services, TOKEN)))
    await client.start_server()
    client.session.headers["Authorization"] = f"Bearer {TOKEN}"
    yield client
    await client.close()
    await worker.stop(drain_timeout=5)
    await recorder.stop()
    await queue.stop()
