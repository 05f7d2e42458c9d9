"""The hub's tests run as the application's role, so row security binds them (the
migrations' owner is a superuser here, which it does not)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from agents.store.tenancy import app_pool


@pytest.fixture
async def app(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool logged in as ``af_app`` (``pool``: the migrations applied first)."""
    app = await app_pool(database_url, size=4)
    yield app
    await app.close()
