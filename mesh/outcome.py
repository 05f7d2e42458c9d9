"""The record that makes a run's outcome durable: its ``execution.finished`` event.

Both the worker and the queue maintenance (dead-letter mover, expiry) write
exactly this, so a run that finished, failed, died with its worker or
expired looks the same to readers. One message: the server projects the
event into ``af_runs`` as the run's final state (see :mod:`mesh.runs`), so
a final run state is proof that the event is stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic_core import to_json

from mesh import names
from mesh.dlq import AttemptError
from mesh.envelope import (
    CONTENT_TYPE,
    JSON,
    SCHEMA_VERSION,
    ChannelType,
    Envelope,
    MessageType,
    utcnow,
)
from mesh.events import EXECUTION_FINISHED
from mesh.lean import parse_headers
from mesh.runs import RunState, RunStatus

__all__ = [
    "OutcomeMessage",
    "expired_msg_id",
    "finished_msg_id",
    "outcome_message",
    "replay_generation",
    "stored_outcome_id",
    "success_message",
    "write_outcome",
]

OutcomeMessage = tuple[str, bytes, bytes]  # subject, data, pre-encoded headers

# Plain strings, not the enums: pydantic-core serializes an enum member
# through a slower inference path, and this runs once per task.
_EVENT, _DURABLE = MessageType.EVENT.value, ChannelType.DURABLE.value
_SUCCEEDED = RunStatus.SUCCEEDED.value
_CONTENT_TYPE, _JSON = CONTENT_TYPE.encode(), JSON.encode()


def replay_generation(task: Envelope) -> int:
    """How many times the task was replayed from the DLQ (0: never)."""
    return int(task.payload.get("replay", 0)) if isinstance(task.payload, dict) else 0


def finished_msg_id(run_id: str, generation: int) -> str:
    """One event per run and replay generation, however often it is re-sent."""
    return f"finished-{run_id}-{generation}"


async def stored_outcome_id(js: JetStreamContext, agent: str, run_id: str) -> str | None:
    """``Nats-Msg-Id`` of the run's last stored finished event (None: none yet).

    The event is the truth; the state projected from it can lag by a moment,
    so callers deciding whether an outcome exists look here, not at the state.
    """
    try:
        raw = await js.get_last_msg(names.STREAM_EVENTS, names.finished_subject(agent, run_id))
    except NotFoundError:
        return None
    return (raw.headers or {}).get("Nats-Msg-Id")


def expired_msg_id(run_id: str, generation: int) -> str:
    """The reaper's event: an id of its own, so that a worker's real outcome
    arriving after an expiry is stored, not deduplicated against it."""
    return f"expired-{run_id}-{generation}"


def outcome_message(task: Envelope, state: RunState, msg_id: str | None = None) -> OutcomeMessage:
    """(subject, data, headers) of the run's finished event, from its run state."""
    return _finished(
        task, state.agent, state.status.value, state.attempts, state.started_at,
        state.finished_at or utcnow(), state.result,
        tenant=state.tenant, priority=state.priority, enqueued_at=state.enqueued_at,
        routing_key=state.routing_key, idempotency_key=state.idempotency_key,
        error=state.error, errors=state.errors, msg_id=msg_id,
    )  # fmt: skip


def success_message(
    task: Envelope, agent: str, attempt: int, started_at: datetime, finished_at: datetime, result: Any
) -> OutcomeMessage:
    """The finished event of a first attempt that succeeded: the same bytes as
    :func:`outcome_message` of its run state, without building that state
    (everything else a run state holds comes from the task itself)."""
    meta = task.metadata
    payload = task.payload if isinstance(task.payload, dict) else {}
    return _finished(
        task, agent, _SUCCEEDED, attempt, started_at, finished_at, result,
        tenant=meta.tenant, priority=int(meta.priority), enqueued_at=task.created_at,
        routing_key=meta.routing_key, idempotency_key=payload.get("idempotency_key"),
    )  # fmt: skip


def _finished(
    task: Envelope,
    agent: str,
    status: str,
    attempts: int,
    started_at: datetime | None,
    finished_at: datetime,
    result: Any,
    *,
    tenant: str,
    priority: int,
    enqueued_at: datetime,
    routing_key: str | None,
    idempotency_key: str | None,
    error: str | None = None,
    errors: list[AttemptError] | None = None,
    msg_id: str | None = None,
) -> OutcomeMessage:
    """Hot path (once per task): the envelope and its :class:`ExecutionFinished`
    payload are serialized straight from a dict by pydantic-core, without
    building and re-validating models whose parts were all validated already;
    ``tests/unit/mesh/test_outcome.py`` checks the bytes against both models.
    """
    run_id = task.id
    generation = replay_generation(task)
    msg_id = msg_id or finished_msg_id(run_id, generation)
    payload = task.payload if isinstance(task.payload, dict) else {}
    event: dict[str, Any] = {
        "run_id": run_id, "agent": agent, "tenant": tenant, "status": status,
        "attempts": attempts, "input": payload.get("input"), "priority": priority,
        "enqueued_at": enqueued_at, "started_at": started_at, "finished_at": finished_at,
        "duration_ms": (finished_at - started_at).total_seconds() * 1000 if started_at else None,
    }  # fmt: skip
    # Optional fields only when set (readers fill the defaults): fewer bytes per outcome.
    if result is not None:
        event["result"] = result
    if error is not None:
        event["error"] = error
    if errors:
        event["errors"] = errors
    if routing_key is not None:
        event["routing_key"] = routing_key
    if idempotency_key is not None:
        event["idempotency_key"] = idempotency_key
    if generation:
        event["replay"] = generation
    envelope = {
        # Deterministic: a re-sent outcome is the same event, id included.
        "schema_version": SCHEMA_VERSION, "id": msg_id, "correlation_id": task.correlation_id,
        "causation_id": run_id, "source": agent, "message_type": _EVENT, "channel_type": _DURABLE,
        "type": EXECUTION_FINISHED, "payload": event, "metadata": task.metadata,
        "created_at": finished_at,
    }  # fmt: skip
    # The tenant passed the envelope's token pattern and the id is ours: no CR/LF to escape.
    headers = b"NATS/1.0\r\n%s: %s\r\nNats-Msg-Id: %s\r\nAF-Tenant: %s\r\n\r\n" % (
        _CONTENT_TYPE, _JSON, msg_id.encode(), tenant.encode(),
    )  # fmt: skip
    # NaN/inf become null, as the models write them: the bytes stay JSON (jsonb refuses NaN).
    return names.finished_subject(agent, run_id), to_json(envelope, inf_nan_mode="null"), headers


async def write_outcome(
    js: JetStreamContext, task: Envelope, state: RunState, msg_id: str | None = None
) -> None:
    """Unpipelined variant for cold paths (mover, reaper)."""
    subject, data, headers = outcome_message(task, state, msg_id)
    await js.publish(subject, data, headers=parse_headers(headers))
