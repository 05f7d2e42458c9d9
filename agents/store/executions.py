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


async def _upsert(pool: asyncpg.Pool, events: Sequence[ExecutionFinished]) -> None:
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        await conn.executemany(
            """INSERT INTO executions (run_id, tenant, agent_key, status, attempts, input, result,
                                       error, errors, enqueued_at, started_at, finished_at, duration_ms,
                                       routing_key, priority, idempotency_key, replay, worker,
                                       first_started_at, audit)
               VALUES ($1,$2,$3,$4,$5,$6::jsonb,$7::jsonb,$8,$9::jsonb,$10,$11,$12,$13,$14,$15,$16,$17,
                       $18,$19,$20::jsonb)
               ON CONFLICT (run_id) DO UPDATE SET
                   status = EXCLUDED.status, attempts = EXCLUDED.attempts, result = EXCLUDED.result,
                   error = EXCLUDED.error, errors = EXCLUDED.errors, started_at = EXCLUDED.started_at,
                   finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms,
                   replay = EXCLUDED.replay, worker = EXCLUDED.worker,
                   first_started_at = EXCLUDED.first_started_at, audit = EXCLUDED.audit,
                   recorded_at = now()
               -- a replayed event changes nothing; a later outcome (DLQ replay) wins
               WHERE executions.finished_at < EXCLUDED.finished_at""",
            [
                (
                    e.run_id, e.tenant, e.agent, e.status.value, e.attempts,
                    json.dumps(e.input), json.dumps(e.result), e.error,
                    to_json(e.errors).decode(), e.enqueued_at, e.started_at, e.finished_at,
                    e.duration_ms, e.routing_key, e.priority, e.idempotency_key, e.replay, e.worker,
                    e.first_started_at or e.started_at, None if e.audit is None else json.dumps(e.audit),
                )
                for e in events
            ],
        )  # fmt: skip


async def get_execution(pool: asyncpg.Pool | asyncpg.Connection, run_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT * FROM executions WHERE run_id = $1", run_id)
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
