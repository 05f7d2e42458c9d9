"""Fixtures of the lifecycle tests: the session's PostgreSQL, migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from agents.store.migrations import apply_migrations


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=12)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    yield pool
    await pool.close()
