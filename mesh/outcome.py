"""The record that makes a run's outcome durable: its ``execution.finished`` event.

Both the worker and the queue maintenance (dead-letter mover, expiry) write
exactly this, so a run that finished, failed, died with its worker or
expired looks the same to readers. One message: the server projects the
event into ``af_runs`` as the run's final state (see :mod:`mesh.runs`), so
a final run state is proof that the event is stored.
"""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from pydantic_core import to_json

from mesh import names
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
from mesh.runs import RunState

__all__ = ["OutcomeMessage", "finished_msg_id", "outcome_message", "replay_generation", "write_outcome"]

OutcomeMessage = tuple[str, bytes, dict[str, str]]


def replay_generation(task: Envelope) -> int:
    """How many times the task was replayed from the DLQ (0: never)."""
    return int(task.payload.get("replay", 0)) if isinstance(task.payload, dict) else 0


def finished_msg_id(run_id: str, generation: int) -> str:
    """One event per run and replay generation, however often it is re-sent."""
    return f"finished-{run_id}-{generation}"


def outcome_message(task: Envelope, state: RunState) -> OutcomeMessage:
    """(subject, data, headers) of the run's finished event.

    Hot path (once per task): the envelope and its :class:`ExecutionFinished`
    payload are serialized straight from a dict by pydantic-core, without
    building and re-validating models whose parts were all validated already;
    ``tests/unit/mesh/test_outcome.py`` checks the bytes against both models.
    """
    finished_at = state.finished_at or utcnow()
    generation = replay_generation(task)
    msg_id = finished_msg_id(state.run_id, generation)
    payload = task.payload if isinstance(task.payload, dict) else {}
    event: dict[str, Any] = {
        "run_id": state.run_id, "agent": state.agent, "tenant": state.tenant,
        "status": state.status, "attempts": state.attempts, "input": payload.get("input"),
        "priority": state.priority, "enqueued_at": state.enqueued_at,
        "started_at": state.started_at, "finished_at": finished_at,
        "duration_ms": (finished_at - state.started_at).total_seconds() * 1000
        if state.started_at else None,
    }  # fmt: skip
    # Optional fields only when set (readers fill the defaults): fewer bytes per outcome.
    if state.result is not None:
        event["result"] = state.result
    if state.error is not None:
        event["error"] = state.error
    if state.errors:
        event["errors"] = state.errors
    if state.routing_key is not None:
        event["routing_key"] = state.routing_key
    if state.idempotency_key is not None:
        event["idempotency_key"] = state.idempotency_key
    if generation:
        event["replay"] = generation
    envelope = {
        # Deterministic: a re-sent outcome is the same event, id included.
        "schema_version": SCHEMA_VERSION, "id": msg_id, "correlation_id": task.correlation_id,
        "causation_id": task.id, "source": state.agent,
        "message_type": MessageType.EVENT, "channel_type": ChannelType.DURABLE,
        "type": EXECUTION_FINISHED, "payload": event, "metadata": task.metadata,
        "created_at": finished_at,
    }  # fmt: skip
    headers = {
        CONTENT_TYPE: JSON,
        "Nats-Msg-Id": msg_id,
        "AF-Tenant": state.tenant,
    }
    return names.finished_subject(state.agent, state.run_id), to_json(envelope), headers


async def write_outcome(js: JetStreamContext, task: Envelope, state: RunState) -> None:
    """Unpipelined variant for cold paths (mover, reaper)."""
    subject, data, headers = outcome_message(task, state)
    await js.publish(subject, data, headers=headers)
