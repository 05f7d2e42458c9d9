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
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from tests.helpers import unique
from tests.integration.config.config_agents import configured
from tests.integration.gateway.conftest import served


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
    async with served(Gateway(settings, registry, parts), nc, database_url) as client:
        yield client
