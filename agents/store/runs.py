"""The ``runs`` index in PostgreSQL: every run's latest state, listed and filtered.

Written by the recorder's :data:`~agents.recorder.RUN_INDEX` projection from
the ``af_runs`` bucket's stream; read by ``GET /api/v1/runs``. Pagination is
a keyset on (enqueued_at, run_id), newest first: a page never repeats or
skips a run however many runs arrive or finish between pages.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from nats.aio.msg import Msg

from agents.errors import AgentError
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from mesh.queue.runs import RunState, parse_run

__all__ = ["BadCursor", "RunFilter", "index_runs", "list_runs"]

log = logging.getLogger(__name__)

_COLUMNS = (
    "run_id, tenant, agent_key, status, priority, attempts, replay, enqueued_at, started_at, "
    "finished_at, error"
)


class BadCursor(AgentError):
    """A cursor this API did not hand out."""

    status = 400


async def index_runs(pool: asyncpg.Pool, msgs: list[Msg]) -> int:
    """Upsert the states ``msgs`` (writes to ``af_runs``) carry; returns how many.

    Only the newest state of each run in the batch is written, and only over
    an older one (``revision``: the bucket's stream sequence), so redelivered
    or out-of-order batches never move a row back.
    """
    newest: dict[str, tuple[int, RunState]] = {}
    for msg in msgs:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        try:
            state = parse_run(msg.data)
        except ValueError as exc:  # it stays in the bucket; only the index skips it
            log.error("run index: skipping unreadable record %s: %s", msg.subject, exc)
            continue
        revision = msg.metadata.sequence.stream
        if state.run_id not in newest or newest[state.run_id][0] < revision:
            newest[state.run_id] = (revision, state)
    if not newest:
        return 0
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        await conn.executemany(
            f"""INSERT INTO runs ({_COLUMNS}, revision)
                VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)
                ON CONFLICT (run_id) DO UPDATE SET
                    status = EXCLUDED.status, attempts = EXCLUDED.attempts, replay = EXCLUDED.replay,
                    started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
                    error = EXCLUDED.error, revision = EXCLUDED.revision
                WHERE runs.revision < EXCLUDED.revision""",
            [
                (
                    s.run_id, s.tenant, s.agent, s.status.value, s.priority, s.attempts, s.replay,
                    s.enqueued_at, s.started_at, s.finished_at, s.error and s.error[:2000], revision,
                )
                for revision, s in newest.values()
            ],
        )  # fmt: skip
    return len(newest)


class RunFilter:
    """What ``GET /api/v1/runs`` asks for (validated at the edge)."""

    def __init__(
        self,
        *,
        agent: str | None = None,
        tenant: str | None = None,
        statuses: Sequence[str] = (),
        since: datetime | None = None,
    ) -> None:
        self.agent, self.tenant, self.statuses, self.since = agent, tenant, list(statuses), since


async def list_runs(
    pool: asyncpg.Pool | asyncpg.Connection, where: RunFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of runs, newest first, and the cursor of the next (None: last page)."""
    clauses, args = [], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if where.agent is not None:
        clauses.append(f"agent_key = {arg(where.agent)}")
    if where.tenant is not None:
        clauses.append(f"tenant = {arg(where.tenant)}")
    if where.statuses:
        clauses.append(f"status = ANY({arg(where.statuses)}::text[])")
    if where.since is not None:
        clauses.append(f"enqueued_at >= {arg(where.since)}")
    if cursor is not None:
        at, run_id = decode_cursor(cursor)
        clauses.append(f"(enqueued_at, run_id) < ({arg(at)}, {arg(run_id)})")
    sql = f"SELECT {_COLUMNS} FROM runs"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += f" ORDER BY enqueued_at DESC, run_id DESC LIMIT {arg(limit + 1)}"
    rows = [dict(r) for r in await pool.fetch(sql, *args)]
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        row["agent"] = row.pop("agent_key")
    return rows, (encode_cursor(rows[-1]["enqueued_at"], rows[-1]["run_id"]) if more else None)


def encode_cursor(at: datetime, run_id: str) -> str:
    raw = json.dumps([at.isoformat(), run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, run_id = json.loads(raw)
        when = datetime.fromisoformat(at)
        if not isinstance(run_id, str) or when.tzinfo is None:
            raise ValueError("not a cursor")
        return when, run_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise BadCursor(f"cursor {cursor[:40]!r} is not one this API handed out") from exc
