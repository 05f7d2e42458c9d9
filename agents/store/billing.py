"""Billing records in PostgreSQL (``billing_records``), and cost totals read from them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg

from agents.store.tenancy import ALL_TENANTS, tenant_scope
from mesh.queue.billing import BillingRecord

__all__ = ["GROUPS", "PERIODS", "cost_totals", "record_billing"]

_COLUMNS = list(BillingRecord.model_fields)
_TYPES = {"status": "text", "finished_at": "timestamptz", "cpu_ms": "float8", "wall_ms": "float8"}
_INTS = {"amount_nano", "compute_nano", "tokens_nano", "storage_nano", "network_nano", "input_tokens",
         "output_tokens", "unpriced_tokens", "bytes_written", "bytes_network"}  # fmt: skip
_INSERT = (
    f"INSERT INTO billing_records ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(
        f"${i}::{'int8' if c in _INTS else _TYPES.get(c, 'text')}[]" for i, c in enumerate(_COLUMNS, 1)
    )
    + ") ON CONFLICT (id) DO NOTHING"
)

GROUPS = ("agent", "tenant")
PERIODS = ("hour", "day", "month")


async def record_billing(pool: asyncpg.Pool, records: Sequence[BillingRecord]) -> int:
    """Insert ``records`` in one statement; one already recorded (same id) is left as is.
    Returns how many were new."""
    if not records:
        return 0
    rows = [r.model_dump() for r in records]
    columns = [[row[c].value if c == "status" else row[c] for row in rows] for c in _COLUMNS]
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        result = await conn.execute(_INSERT, *columns)
    return int(result.rsplit(" ", 1)[-1])


async def cost_totals(
    pool: asyncpg.Pool | asyncpg.Connection,
    group_by: Literal["agent", "tenant"],
    period: Literal["hour", "day", "month"],
    since: datetime,
    until: datetime,
    agent: str | None = None,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Cost per ``group_by`` and ``period`` (UTC) of the executions finished in [since, until)."""
    assert group_by in GROUPS and period in PERIODS  # checked at the edge; never interpolate others
    rows = await pool.fetch(
        f"""SELECT {group_by} AS key, date_trunc('{period}', finished_at AT TIME ZONE 'UTC') AS start,
                   currency, count(*) AS executions, sum(amount_nano) AS amount_nano,
                   sum(compute_nano) AS compute_nano, sum(tokens_nano) AS tokens_nano,
                   sum(storage_nano) AS storage_nano, sum(network_nano) AS network_nano,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(cpu_ms) AS cpu_ms
            FROM billing_records
            WHERE finished_at >= $1 AND finished_at < $2
              AND ($3::text IS NULL OR agent = $3) AND ($4::text IS NULL OR tenant = $4)
            GROUP BY 1, 2, 3 ORDER BY 2, 1""",
        since, until, agent, tenant,
    )  # fmt: skip
    return [dict(row) for row in rows]
