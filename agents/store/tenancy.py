"""Tenant isolation in PostgreSQL: the application's pool, and the tenant each
transaction runs as.

Every tenant-scoped table has FORCE ROW LEVEL SECURITY with a policy on the
transaction's ``af.tenant`` setting (``deployment/sql/007_tenancy.sql``), and
the application connects as ``af_app``, a role that owns no table, so the
database itself keeps one tenant from another's rows. :func:`tenant_scope` is the
one place that sets it: ``set_config('af.tenant', $1, true)`` inside the
transaction, so the setting ends with it and a pooled connection never carries
one tenant's setting into another's work. A connection that never set it sees
nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import asyncpg

__all__ = ["ALL_TENANTS", "APP_ROLE", "app_pool", "tenant_scope", "tenant_transaction"]

ALL_TENANTS: Final = "*"
"""The setting that sees every tenant: admin tokens and the platform's own writers
(the recorders, which project every tenant's events)."""

APP_ROLE: Final = "af_app"


async def app_pool(
    database_url: str, *, role: str = APP_ROLE, password: str | None = None, size: int = 10
) -> asyncpg.Pool:
    """A pool on ``database_url``'s server and database, logged in as ``role``
    (the URL's own user is the migrations' owner, which row security does not bind)."""
    pool = await asyncpg.create_pool(database_url, user=role, password=password, min_size=1, max_size=size)
    assert pool is not None
    return pool


@asynccontextmanager
async def tenant_scope(pool: asyncpg.Pool, tenant: str | None) -> AsyncIterator[asyncpg.Connection]:
    """A connection of ``pool`` inside a transaction that sees ``tenant``'s rows only
    (``None`` or :data:`ALL_TENANTS`: every tenant's)."""
    async with pool.acquire() as conn, tenant_transaction(conn, tenant):
        yield conn


@asynccontextmanager
async def tenant_transaction(conn: asyncpg.Connection, tenant: str | None) -> AsyncIterator[None]:
    """A transaction on ``conn`` as ``tenant`` (see :func:`tenant_scope`)."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('af.tenant', $1, true)", tenant or ALL_TENANTS)
        yield
