"""The configuration history in PostgreSQL (``config_versions``, migration 010).

One row per version of an agent's config (``tenant`` None) or of a tenant's
override; versions count from 1 per (agent, tenant) and are never changed or
removed (the application's role may only insert and read). Every function
takes a connection inside :func:`~agents.store.tenancy.tenant_scope`: row
security decides which tenants' rows it sees.
"""

from __future__ import annotations

import json
from typing import Any, Final

import asyncpg

__all__ = ["insert_version", "latest_versions", "list_versions", "read_version"]

_COLUMNS: Final = "agent, tenant, version, config, author, comment, created_at"


def _row(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    row["config"] = json.loads(row["config"])
    return row


async def insert_version(
    conn: asyncpg.Connection,
    agent: str,
    tenant: str | None,
    config: dict[str, Any],
    author: str,
    comment: str,
) -> dict[str, Any]:
    """Store ``config`` as the next version of (``agent``, ``tenant``); its row. Writers of one
    key take turns (a transaction-scoped advisory lock), so no two pick the same number."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 9))", f"{agent}/{tenant or '*'}")
    record = await conn.fetchrow(
        f"""INSERT INTO config_versions (agent, tenant, version, config, author, comment)
            SELECT $1, $2, coalesce(max(version), 0) + 1, $3::jsonb, $4, $5
            FROM config_versions WHERE agent = $1 AND coalesce(tenant, '*') = coalesce($2, '*')
            RETURNING {_COLUMNS}""",
        agent, tenant, json.dumps(config), author, comment,
    )  # fmt: skip
    assert record is not None
    return _row(record)


async def read_version(
    conn: asyncpg.Connection, agent: str, tenant: str | None, version: int | None = None
) -> dict[str, Any] | None:
    """Version ``version`` of (``agent``, ``tenant``), or the newest (None); None if there is none."""
    record = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM config_versions
            WHERE agent = $1 AND coalesce(tenant, '*') = coalesce($2, '*')
              AND ($3::int IS NULL OR version = $3)
            ORDER BY version DESC LIMIT 1""",
        agent, tenant, version,
    )  # fmt: skip
    return _row(record) if record is not None else None


async def list_versions(
    conn: asyncpg.Connection, agent: str, tenant: str | None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest ``limit`` versions of (``agent``, ``tenant``), newest first."""
    records = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM config_versions
            WHERE agent = $1 AND coalesce(tenant, '*') = coalesce($2, '*')
            ORDER BY version DESC LIMIT $3""",
        agent, tenant, limit,
    )  # fmt: skip
    return [_row(r) for r in records]


async def latest_versions(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The newest version of every (agent, tenant) this transaction sees."""
    records = await conn.fetch(
        f"""SELECT DISTINCT ON (agent, coalesce(tenant, '*')) {_COLUMNS} FROM config_versions
            ORDER BY agent, coalesce(tenant, '*'), version DESC"""
    )
    return [_row(r) for r in records]
