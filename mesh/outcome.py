"""The two records that make a run's outcome durable: run state and event.

Both the worker and the dead-letter mover write exactly these, so a run that
finished, failed, died with its worker or expired looks the same to readers.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from mesh import names
from mesh.envelope import (
    CONTENT_TYPE,
    JSON,
    SCHEMA_VERSION,
    ChannelType,
    Envelope,
    MessageType,
    encode,
    new_id,
    utcnow,
)
from mesh.events import EXECUTION_FINISHED, ExecutionFinished
from mesh.runs import RunState, run_key

__all__ = ["OutcomeMessage", "outcome_messages", "replay_generation", "write_outcome"]

OutcomeMessage = tuple[str, bytes, dict[str, str] | None]


def replay_generation(task: Envelope) -> int:
    """How many times the task was replayed from the DLQ (0: never)."""
    return int(task.payload.get("replay", 0)) if isinstance(task.payload, dict) else 0


def outcome_messages(task: Envelope, state: RunState) -> list[OutcomeMessage]:
    """(subject, data, headers) of the finished event and the run-state record, in write order."""
    finished_at = state.finished_at or utcnow()
    event = ExecutionFinished(
        run_id=state.run_id, agent=state.agent, tenant=state.tenant, status=state.status,
        attempts=state.attempts, result=state.result, error=state.error,
        input=task.payload.get("input") if isinstance(task.payload, dict) else None,
        enqueued_at=state.enqueued_at, started_at=state.started_at, finished_at=finished_at,
        duration_ms=(finished_at - state.started_at).total_seconds() * 1000
        if state.started_at else None,
    )  # fmt: skip
    # Built from validated parts: construct without validating them again.
    envelope = Envelope.model_construct(
        schema_version=SCHEMA_VERSION, id=new_id(), correlation_id=task.correlation_id,
        causation_id=task.id, source=state.agent, target=None,
        message_type=MessageType.EVENT, channel_type=ChannelType.DURABLE,
        type=EXECUTION_FINISHED, payload=event.model_dump(mode="json"),
        metadata=task.metadata, created_at=finished_at, reply_to=None,
    )  # fmt: skip
    headers = {
        CONTENT_TYPE: JSON,
        # One event per run and replay generation, however often it is re-sent.
        "Nats-Msg-Id": f"finished-{state.run_id}-{replay_generation(task)}",
        "AF-Tenant": state.tenant,
    }
    # Order matters: the event first, then the final run state. A finished run
    # state is then proof that the event is stored, which is what lets a
    # redelivered task whose state is final be acked without writing again.
    return [
        (names.event_subject(EXECUTION_FINISHED, state.agent), encode(envelope), headers),
        (run_key(state.run_id), state.model_dump_json().encode(), None),
    ]


async def write_outcome(js: JetStreamContext, task: Envelope, state: RunState) -> None:
    """Unpipelined variant for cold paths (mover, reaper)."""
    for subject, data, headers in outcome_messages(task, state):
        await js.publish(subject, data, headers=headers)
