"""The hub's tests run as the application's role, so row security binds them (the
migrations' owner is a superuser here, which it does not)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.store.tenancy import app_pool
from gateway.app import Gateway
from tests.integration.gateway.conftest import served
from tests.integration.hub.installing import gateway_for


@pytest.fixture
async def app(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool logged in as ``af_app`` (``pool``: the migrations applied first)."""
    app = await app_pool(database_url, size=4)
    yield app
    await app.close()


@pytest.fixture
async def platform(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, TestClient[Any, Any]]]:
    """A gateway that can start dedicated workers, with its data dir in ``tmp_path``;
    it loads the example NoOp only (the installed agents come from the hub)."""
    gateway = gateway_for(tmp_path)
    async with served(gateway, nc, database_url) as client:
        yield gateway, client
