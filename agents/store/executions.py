"""Read and write agents and executions in PostgreSQL."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
from prometheus_client import Counter
from pydantic_core import to_json

from agents.registry import Registry
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from mesh import names
from mesh.queue.runs import ExecutionFinished

__all__ = ["EXECUTIONS_MENDED", "get_execution", "list_agents", "record_executions", "upsert_agents"]

log = logging.getLogger(__name__)

EXECUTIONS_MENDED = Counter(
    "af_executions_mended_total",
    "Executions PostgreSQL refused as sent, recorded with NUL replaced (mended) or not at all (dropped)",
    ["outcome"],
)


async def record_executions(pool: asyncpg.Pool, events: Sequence[ExecutionFinished]) -> int:
    """Upsert finished executions in one statement; returns how many had to be mended.

    Idempotent: the same event twice changes nothing; the outcome of a run
    replayed from the DLQ (a later ``finished_at``) replaces the failure.

    One event the database refuses must not stall every other one behind it
    (the recorder retries a failed batch): on a data error the batch is
    written event by event, and an event refused alone is written with its
    NUL characters replaced by U+FFFD (PostgreSQL stores none, in ``text``
    or ``jsonb``) and logged; one refused even then is logged and skipped.
    The event itself stays unchanged in ``AF_EVENTS`` either way.
    """
    if not events:
        return 0
    try:
        await _upsert(pool, events)
        return 0
    except asyncpg.DataError:
        pass
    mended = 0
    for event in events:
        try:
            await _upsert(pool, [event])
            continue
        except asyncpg.DataError as exc:
            log.error("execution %s refused by the database (%s): recording it with NUL replaced",
                      event.run_id, exc)  # fmt: skip
        mended += 1
        try:
            await _upsert(pool, [_without_nul(event)])
            EXECUTIONS_MENDED.labels("mended").inc()
        except asyncpg.DataError as exc:
            EXECUTIONS_MENDED.labels("dropped").inc()
            log.error("execution %s refused again (%s): not recorded; it stays in %s",
                      event.run_id, exc, names.STREAM_EVENTS)  # fmt: skip
    return mended


def _without_nul(event: ExecutionFinished) -> ExecutionFinished:
    return ExecutionFinished.model_validate_json(event.model_dump_json().replace("\\u0000", "\\ufffd"))


_COLUMNS = (
    "run_id, tenant, agent_key, status, attempts, input, result, error, errors, enqueued_at, started_at, "
    "finished_at, duration_ms, routing_key, priority, idempotency_key, replay, worker, first_started_at, "
    "audit"
)

# One row per run in a table partitioned by finished_at, whose key must hold that
# column too (deployment/sql/010): a later outcome (a DLQ replay) deletes the older
# row, possibly in another month, and an outcome no newer than the row's changes
# nothing. Runs are locked first (in run id order: no deadlock between two recorders),
# in a statement of their own, so the writes below see what a racing writer committed.
_LOCK = """SELECT pg_advisory_xact_lock(hashtextextended(r, 4146504))
    FROM unnest($1::text[]) WITH ORDINALITY AS runs(r, i) ORDER BY i"""
_DELETE_OLDER = "DELETE FROM executions WHERE run_id = $1 AND finished_at < $2"
_INSERT_NEWER = f"""INSERT INTO executions ({_COLUMNS})
    SELECT $1,$2,$3,$4,$5,$6::jsonb,$7::jsonb,$8,$9::jsonb,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20::jsonb
    WHERE NOT EXISTS (SELECT 1 FROM executions WHERE run_id = $1 AND finished_at >= $12)"""


async def _upsert(pool: asyncpg.Pool, batch: Sequence[ExecutionFinished]) -> None:
    newest: dict[str, ExecutionFinished] = {}
    for e in batch:  # a run twice in one batch: its newest outcome only (an older one is a no-op)
        if e.run_id not in newest or newest[e.run_id].finished_at < e.finished_at:
            newest[e.run_id] = e
    events = list(newest.values())
    rows = [
        (
            e.run_id, e.tenant, e.agent, e.status.value, e.attempts,
            json.dumps(e.input), json.dumps(e.result), e.error,
            to_json(e.errors).decode(), e.enqueued_at, e.started_at, e.finished_at,
            e.duration_ms, e.routing_key, e.priority, e.idempotency_key, e.replay, e.worker,
            e.first_started_at or e.started_at, None if e.audit is None else json.dumps(e.audit),
        )
        for e in events
    ]  # fmt: skip
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        await conn.execute(_LOCK, sorted({e.run_id for e in events}))
        await conn.executemany(_DELETE_OLDER, [(e.run_id, e.finished_at) for e in events])
        await conn.executemany(_INSERT_NEWER, rows)


async def get_execution(pool: asyncpg.Pool | asyncpg.Connection, run_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT * FROM executions WHERE run_id = $1 ORDER BY finished_at DESC LIMIT 1", run_id
    )
    if row is None:
        return None
    out = dict(row)
    for key in ("input", "result", "errors", "audit"):
        if isinstance(out[key], str):
            out[key] = json.loads(out[key])
    return out


async def upsert_agents(pool: asyncpg.Pool, registry: Registry | Iterable[Any]) -> None:
    rows = []
    for agent in registry:
        d = agent.describe()
        rows.append((d["key"], d["version"], d["description"],
                     json.dumps(d["input_schema"]), json.dumps(d["output_schema"])))  # fmt: skip
    await pool.executemany(
        """INSERT INTO agents (key, version, description, input_schema, output_schema)
           VALUES ($1,$2,$3,$4::jsonb,$5::jsonb)
           ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version,
               description = EXCLUDED.description, input_schema = EXCLUDED.input_schema,
               output_schema = EXCLUDED.output_schema, updated_at = now()""",
        rows,
    )


async def list_agents(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT key, version, description, state, registered_at, updated_at FROM agents ORDER BY key"
    )
    return [dict(r) for r in rows]
