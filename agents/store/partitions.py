"""Monthly partitions of ``executions`` made ahead of time (deployment/sql, the
``executions_by_month`` migration).

A row whose month has no partition yet still lands (in ``executions_default``);
making that month moves it in. So a month made late costs a move, never a write.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Final

import asyncpg

__all__ = ["MONTHS_AHEAD", "ensure_partitions", "keep_partitions"]

log = logging.getLogger(__name__)

MONTHS_AHEAD: Final = 3
EVERY_S: Final = 6 * 3600.0


async def ensure_partitions(pool: asyncpg.Pool, months_ahead: int = MONTHS_AHEAD) -> int:
    """Make every month's partition from this one to ``months_ahead`` past it;
    returns how many were new (the function runs as the tables' owner)."""
    made = await pool.fetchval(
        "SELECT af_ensure_execution_partitions($1, $2)", datetime.now(UTC), months_ahead
    )
    return int(made)


async def keep_partitions(pool: asyncpg.Pool, every_s: float = EVERY_S) -> None:
    """Ensure the partitions every ``every_s`` (a gateway's background task, started
    after its own :func:`ensure_partitions`)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if made := await ensure_partitions(pool):
                log.info("executions: made %d monthly partition(s)", made)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # the database away
            log.warning("executions partitions: %s (again in %.0f s)", exc, every_s)
