"""The gateway (API, recorders, an in-process worker) with an agent that reads its config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.registry import Registry, example_registry
from agents.store.tenancy import app_pool
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from tests.helpers import unique
from tests.integration.config.config_agents import configured
from tests.integration.gateway.conftest import TOKEN, ApiTestServer


@pytest.fixture
def agent_key() -> str:
    return unique("configured")


@pytest.fixture
async def config_api(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str, agent_key: str
) -> AsyncIterator[TestClient[Any, Any]]:
    """As the gateway tests' ``api`` (``pool``: migrated), serving ``agent_key`` (a Configured agent) too."""
    registry = Registry([*example_registry(), configured(agent_key)])
    parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2,
                  worker=InProcessWorker(agents=[agent_key], concurrency=4, idle_poll_s=0.2,
                                         drain_timeout_s=5))  # fmt: skip
    settings = Settings(max_payload_bytes=64 * 1024)
    gateway = Gateway(settings, registry, parts)
    app_db = await app_pool(database_url, size=settings.database_pool_size)
    try:
        async with gateway.running(nc, app_db, token=TOKEN):
            assert gateway.app is not None
            client = TestClient(ApiTestServer(gateway.app))
            await client.start_server()
            client.session.headers["Authorization"] = f"Bearer {TOKEN}"
            yield client
            await client.close()
    finally:
        await app_db.close()
