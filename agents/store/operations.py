"""Long operations in PostgreSQL (``operations``, ``operation_events``): what was
asked, how far it got, how it ended, and every step of the way.

An operation belongs to the gateway that runs it (``owner``), which heartbeats
its row. Every write of the runner is fenced on ``owner``: once another gateway
took an operation over (its owner stopped heartbeating), the old owner's late
writes change nothing (:class:`OperationLost`). Rows are tenant-scoped by row
security (``tenant`` NULL: a fleet-wide operation, seen with every tenant only);
these functions take a connection already in :func:`~agents.store.tenancy.tenant_scope`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import asyncpg

from agents.errors import AgentError

__all__ = [
    "FINAL",
    "IdempotencyConflict",
    "Operation",
    "OperationEvent",
    "OperationFinished",
    "OperationLost",
    "OperationNotFound",
    "OperationStatus",
    "advance",
    "claim_abandoned",
    "create_operation",
    "get_operation",
    "heartbeat",
    "list_events",
    "list_operations",
    "prune_finished",
    "operation_by_key",
    "release",
    "request_cancel",
    "same_request",
]


class OperationStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL: Final = frozenset({OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELLED})


class OperationNotFound(AgentError):
    status = 404

    def __init__(self, op_id: str) -> None:
        super().__init__(f"no operation with id {op_id!r}")


class OperationFinished(AgentError):
    """Cancelling an operation that already ended."""

    status = 409


class IdempotencyConflict(AgentError):
    """An idempotency key reused for another request."""

    status = 409


class OperationLost(AgentError):
    """This gateway no longer owns the operation: another one took it over."""

    status = 409


@dataclass(frozen=True, slots=True)
class Operation:
    id: str
    kind: str
    tenant: str | None
    target: str
    status: OperationStatus
    progress: float
    message: str
    request: dict[str, Any]
    result: Any
    error: str | None
    idempotency_key: str | None
    created_by: str
    owner: str | None
    attempts: int
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Operation:
        values = {name: row[name] for name in cls.__slots__}  # type: ignore[attr-defined]
        values["status"] = OperationStatus(row["status"])
        values["request"] = json.loads(row["request"])
        values["result"] = None if row["result"] is None else json.loads(row["result"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class OperationEvent:
    """One step of an operation's history: a status, a progress, a message."""

    seq: int
    at: datetime
    status: OperationStatus
    progress: float
    message: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> OperationEvent:
        return cls(row["seq"], row["at"], OperationStatus(row["status"]), row["progress"], row["message"])


# Appends a history row numbered by the operation's own counter, bumped in the
# same statement: the runner and a cancel request never take the same seq.
_EVENT: Final = """
    WITH n AS (UPDATE operations SET events = events + 1 WHERE id = $1
               RETURNING id, events, tenant, status, progress)
    INSERT INTO operation_events (operation_id, seq, tenant, status, progress, message)
    SELECT id, events, tenant, status, progress, $2 FROM n"""


async def create_operation(
    conn: asyncpg.Connection, *, kind: str, target: str, tenant: str | None, request: dict[str, Any],
    created_by: str, owner: str, idempotency_key: str | None = None,
) -> tuple[Operation, bool]:  # fmt: skip
    """A new queued operation owned by ``owner``, and True; or, when
    ``idempotency_key`` already names one of this tenant's operations for the
    same kind, target and request, that one and False
    (:class:`IdempotencyConflict` if it was asked for something else)."""
    row = await conn.fetchrow(
        """INSERT INTO operations (id, kind, tenant, target, request, idempotency_key, created_by, owner,
                                   heartbeat_at, message)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, now(), 'accepted')
           ON CONFLICT (coalesce(tenant, '*'), idempotency_key) WHERE idempotency_key IS NOT NULL
           DO NOTHING RETURNING *""",
        uuid.uuid4().hex, kind, tenant, target, json.dumps(request), idempotency_key, created_by, owner,
    )  # fmt: skip
    if row is not None:
        await conn.execute(_EVENT, row["id"], row["message"])
        return Operation.from_row(row), True
    assert idempotency_key is not None
    existing = await operation_by_key(conn, tenant, idempotency_key)
    assert existing is not None  # the key is per tenant, and this transaction sees the tenant's rows
    return same_request(existing, kind, target, request), False


def same_request(existing: Operation, kind: str, target: str, request: dict[str, Any]) -> Operation:
    """``existing`` if it was asked for ``kind`` on ``target`` with ``request``
    (a retry under its idempotency key); else :class:`IdempotencyConflict`."""
    if (existing.kind, existing.target, existing.request) != (kind, target, request):
        raise IdempotencyConflict(
            f"Idempotency-Key {existing.idempotency_key!r} was used for another request "
            f"(operation {existing.id}: {existing.kind} {existing.target})"
        )
    return existing


async def operation_by_key(conn: asyncpg.Connection, tenant: str | None, key: str) -> Operation | None:
    row = await conn.fetchrow(
        "SELECT * FROM operations WHERE coalesce(tenant, '*') = coalesce($1, '*') AND idempotency_key = $2",
        tenant, key,
    )  # fmt: skip
    return None if row is None else Operation.from_row(row)


async def get_operation(conn: asyncpg.Connection, op_id: str) -> Operation:
    row = await conn.fetchrow("SELECT * FROM operations WHERE id = $1", op_id)
    if row is None:
        raise OperationNotFound(op_id)
    return Operation.from_row(row)


async def list_operations(
    conn: asyncpg.Connection, *, statuses: list[str] | None = None, kinds: list[str] | None = None,
    limit: int = 50,
) -> list[Operation]:  # fmt: skip
    """Newest first."""
    rows = await conn.fetch(
        """SELECT * FROM operations
           WHERE ($1::text[] IS NULL OR status = ANY($1)) AND ($2::text[] IS NULL OR kind = ANY($2))
           ORDER BY created_at DESC, id DESC LIMIT $3""",
        statuses, kinds, limit,
    )  # fmt: skip
    return [Operation.from_row(r) for r in rows]


async def list_events(
    conn: asyncpg.Connection, op_id: str, *, after: int = 0, limit: int = 1000
) -> list[OperationEvent]:
    rows = await conn.fetch(
        """SELECT seq, at, status, progress, message FROM operation_events
           WHERE operation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3""",
        op_id, after, limit,
    )  # fmt: skip
    return [OperationEvent.from_row(r) for r in rows]


_UNSET: Final[Any] = object()


async def advance(
    conn: asyncpg.Connection, op_id: str, owner: str, *, status: OperationStatus | None = None,
    progress: float | None = None, message: str | None = None, result: Any = _UNSET,
    error: str | None = None, event: bool = True,
) -> Operation:  # fmt: skip
    """Write what the runner ``owner`` knows of ``op_id`` now, and (``event``) one
    history row of it. Fenced: :class:`OperationLost` if ``owner`` no longer owns
    it or it already ended."""
    row = await conn.fetchrow(
        """UPDATE operations SET
               status = coalesce($3, status),
               progress = coalesce($4, progress),
               message = coalesce($5, message),
               result = CASE WHEN $6 THEN $7::jsonb ELSE result END,
               error = coalesce($8, error),
               heartbeat_at = now(),
               attempts = attempts + (CASE WHEN $3 = 'running' THEN 1 ELSE 0 END),
               started_at = CASE WHEN $3 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
               finished_at = CASE WHEN $3 IN ('succeeded', 'failed', 'cancelled') THEN now() END
           WHERE id = $1 AND owner = $2 AND finished_at IS NULL
           RETURNING *""",
        op_id, owner, status, None if progress is None else min(max(progress, 0.0), 100.0),
        None if message is None else message[:2000], result is not _UNSET,
        None if result is _UNSET else json.dumps(result, default=str), error and error[:4000],
    )  # fmt: skip
    if row is None:
        raise OperationLost(f"operation {op_id} is no longer run by {owner}")
    if event:
        await conn.execute(_EVENT, op_id, row["message"])
    return Operation.from_row(row)


async def request_cancel(conn: asyncpg.Connection, op_id: str) -> Operation:
    """Ask ``op_id`` to stop at its next step (again is a no-op);
    :class:`OperationFinished` if it already ended."""
    row = await conn.fetchrow(
        """UPDATE operations SET cancel_requested_at = coalesce(cancel_requested_at, now())
           WHERE id = $1 AND finished_at IS NULL
           RETURNING *""",
        op_id,
    )
    if row is None:
        op = await get_operation(conn, op_id)  # 404 if absent or not this tenant's
        raise OperationFinished(f"operation {op_id} already {op.status.value}")
    await conn.execute(_EVENT, op_id, "cancel requested")
    return Operation.from_row(row)


async def heartbeat(conn: asyncpg.Connection, owner: str) -> dict[str, bool]:
    """Mark ``owner``'s unfinished operations alive; each one it still owns, and
    whether its cancellation was asked."""
    rows = await conn.fetch(
        """UPDATE operations SET heartbeat_at = now() WHERE owner = $1 AND finished_at IS NULL
           RETURNING id, cancel_requested_at IS NOT NULL AS cancel""",
        owner,
    )
    return {r["id"]: r["cancel"] for r in rows}


async def claim_abandoned(
    conn: asyncpg.Connection, owner: str, stale_s: float, limit: int = 100
) -> list[tuple[Operation, str | None]]:
    """Take over the unfinished operations whose owner stopped heartbeating for
    ``stale_s`` (or that have none); each with the owner it had."""
    rows = await conn.fetch(
        """UPDATE operations o SET owner = $1, heartbeat_at = now()
           FROM (SELECT id, owner FROM operations
                 WHERE finished_at IS NULL AND owner IS DISTINCT FROM $1
                   AND (owner IS NULL OR heartbeat_at < now() - make_interval(secs => $2))
                 ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) old
           WHERE o.id = old.id
           RETURNING o.*, old.owner AS previous_owner""",
        owner, stale_s, limit,
    )  # fmt: skip
    return [(Operation.from_row(r), r["previous_owner"]) for r in rows]


async def prune_finished(conn: asyncpg.Connection, keep_s: float, limit: int = 10_000) -> int:
    """Delete up to ``limit`` operations that finished more than ``keep_s`` ago, oldest
    first, with their history (``ON DELETE CASCADE``) and so their idempotency keys;
    returns how many. Unfinished operations are never deleted, however old."""
    done = await conn.execute(
        """DELETE FROM operations WHERE id IN (
               SELECT id FROM operations WHERE finished_at < now() - make_interval(secs => $1)
               ORDER BY finished_at LIMIT $2)""",
        keep_s, limit,
    )  # fmt: skip
    return int(done.split()[-1])


async def release(conn: asyncpg.Connection, op_id: str, owner: str, message: str) -> None:
    """Hand ``op_id`` back (queued, no owner) for the next gateway to resume."""
    done = await conn.execute(
        """UPDATE operations SET owner = NULL, status = 'queued', message = $3
           WHERE id = $1 AND owner = $2 AND finished_at IS NULL""",
        op_id, owner, message,
    )  # fmt: skip
    if done != "UPDATE 0":
        await conn.execute(_EVENT, op_id, message)
