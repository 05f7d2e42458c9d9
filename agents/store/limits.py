"""The record of budget and quota changes in PostgreSQL (``limit_changes``, migration 011).

The live definitions are in KV ``af_budgets``, where the metering processor and
the queue read them; each change made through the API is also appended here,
with who made it, in the transaction that wraps its KV write: a KV write that
fails leaves no row. (A gateway that dies between the KV write and the commit
leaves a change without its row: the record is an audit, not the source.)
"""

from __future__ import annotations

import json
from typing import Any, Literal

import asyncpg

__all__ = ["limit_history", "record_limit_change"]

Kind = Literal["budget", "quota"]


async def record_limit_change(
    conn: asyncpg.Connection,
    kind: Kind,
    limit_id: str,
    *,
    tenant: str | None,
    agent: str | None,
    definition: dict[str, Any] | None,
    actor: str,
) -> None:
    """Append a put (``definition`` given) or a removal (None) of a limit."""
    await conn.execute(
        """INSERT INTO limit_changes (kind, limit_id, action, tenant, agent, definition, actor)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)""",
        kind, limit_id, "remove" if definition is None else "put", tenant, agent,
        None if definition is None else json.dumps(definition), actor,
    )  # fmt: skip


async def limit_history(
    conn: asyncpg.Connection, kind: Kind, limit_id: str, limit: int
) -> list[dict[str, Any]]:
    """The changes of one limit the transaction's tenant may see, newest first."""
    rows = await conn.fetch(
        """SELECT id, kind, limit_id, action, tenant, agent, definition, actor, at FROM limit_changes
           WHERE kind = $1 AND limit_id = $2 ORDER BY id DESC LIMIT $3""",
        kind, limit_id, limit,
    )  # fmt: skip
    out = []
    for row in rows:
        change = dict(row)
        if isinstance(change["definition"], str):
            change["definition"] = json.loads(change["definition"])
        out.append(change)
    return out
