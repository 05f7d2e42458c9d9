"""The record that makes a run's outcome durable: its ``execution.finished`` event.

Both the worker and the queue maintenance (dead-letter mover, expiry) write
exactly this, so a run that finished, failed, died with its worker or
expired looks the same to readers. One message: the server projects the
event into ``af_runs`` as the run's final state (see :mod:`mesh.queue.runs`), so
a final run state is proof that the event is stored.

**One outcome per run and replay generation, for good** (not only within
JetStream's 2-minute duplicate window): every outcome is written by
:func:`record_outcome` with compare-and-set on the run's own event subject
(``Nats-Expected-Last-Subject-Sequence``), after checking what is stored
there. Two kinds of outcome exist:

* a *real* one (``finished-<run>-<gen>``), written by the worker that ran
  the attempt to its end, or a cancel (``cancelled-<run>-<gen>``,
  :mod:`mesh.queue.cancel`), which ends the run as decisively;
* a *presumed* one, written by someone who did not see the end: the reaper
  (``expired-…``: its TTL passed before it started) or the dead-letter path
  for a worker that was lost on the last attempt (``lost-…``).

A real outcome is written unless a real one of its generation (or a later
generation's outcome) is stored; it supersedes a presumed one (a stalled
worker that finishes after all is recorded). A presumed outcome is written
only if nothing of its generation is stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from pydantic_core import to_json

from mesh import names, trace
from mesh.deadletters import AttemptError, bounded_errors
from mesh.envelope import (
    CONTENT_TYPE,
    JSON,
    SCHEMA_VERSION,
    ChannelType,
    Envelope,
    MessageType,
    utcnow,
)
from mesh.errors import WRONG_LAST_SEQUENCE
from mesh.queue.runs import EXECUTION_FINISHED, RunState, RunStatus
from mesh.wire.protocol import expect_last_subject_seq, parse_headers

__all__ = [
    "OutcomeMessage",
    "StoredOutcome",
    "cancelled_msg_id",
    "expired_msg_id",
    "finished_msg_id",
    "lost_msg_id",
    "outcome_message",
    "record_outcome",
    "replay_generation",
    "js_send",
    "stored_outcome",
    "success_message",
    "wait_deadline",
    "write_outcome",
]

OutcomeMessage = tuple[str, bytes, bytes]  # subject, data, pre-encoded headers

# Plain strings, not the enums: pydantic-core serializes an enum member
# through a slower inference path, and this runs once per task.
_EVENT, _DURABLE = MessageType.EVENT.value, ChannelType.DURABLE.value
_SUCCEEDED = RunStatus.SUCCEEDED.value
_CONTENT_TYPE, _JSON = CONTENT_TYPE.encode(), JSON.encode()
_TRACEPARENT = trace.TRACEPARENT.encode()


def replay_generation(task: Envelope) -> int:
    """How many times the task was replayed from the DLQ (0: never)."""
    return int(task.payload.get("replay", 0)) if isinstance(task.payload, dict) else 0


def wait_deadline(task: Envelope) -> datetime | None:
    """By when the task must have started (its TTL), counted from its enqueue
    or, for a replayed dead letter, from its replay."""
    ttl = task.metadata.ttl_s
    if not ttl:
        return None
    since = task.created_at
    if isinstance(task.payload, dict) and "requeued_at" in task.payload:
        since = datetime.fromisoformat(task.payload["requeued_at"])
    return since + timedelta(seconds=ttl)


def finished_msg_id(run_id: str, generation: int) -> str:
    """One event per run and replay generation, however often it is re-sent."""
    return f"finished-{run_id}-{generation}"


class StoredOutcome(NamedTuple):
    """The last outcome stored on a run's event subject."""

    seq: int  # its AF_EVENTS sequence: what a compare-and-set write expects
    msg_id: str  # ``finished-…``, ``expired-…`` or ``lost-…`` ``-<run id>-<generation>``

    @property
    def generation(self) -> int:
        tail = self.msg_id.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    @property
    def real(self) -> bool:
        """Written by who saw the end: the worker, or a cancel (it ends the run)."""
        return self.msg_id.startswith(("finished-", "cancelled-"))

    def decides(self, generation: int, real: bool) -> bool:
        """Does this stored outcome make writing one of ``generation`` pointless?

        A later generation's outcome always does; of the same generation, a
        real outcome always does, a presumed one only for another presumed one.
        """
        if self.generation != generation:
            return self.generation > generation
        return self.real or not real


async def stored_outcome(js: JetStreamContext, agent: str, run_id: str) -> StoredOutcome | None:
    """The run's last stored finished event (None: none yet).

    The event is the truth; the state projected from it can lag by a moment,
    so callers deciding whether an outcome exists look here, not at the state.
    """
    try:
        raw = await js.get_last_msg(names.STREAM_EVENTS, names.finished_subject(agent, run_id))
    except NotFoundError:
        return None
    assert raw.seq is not None
    return StoredOutcome(raw.seq, (raw.headers or {}).get("Nats-Msg-Id", ""))


def expired_msg_id(run_id: str, generation: int) -> str:
    """The reaper's (presumed) outcome: an id of its own, so that a worker's real
    outcome arriving after an expiry is stored, not deduplicated against it."""
    return f"expired-{run_id}-{generation}"


def cancelled_msg_id(run_id: str, generation: int) -> str:
    """A cancel's outcome. Decisive like a real one: a worker finishing after
    it is not recorded, and a cancel after a real outcome is refused."""
    return f"cancelled-{run_id}-{generation}"


def lost_msg_id(run_id: str, generation: int) -> str:
    """The presumed outcome of a run whose worker was lost on its last attempt."""
    return f"lost-{run_id}-{generation}"


def outcome_message(
    task: Envelope, state: RunState, msg_id: str | None = None, traceparent: str | None = None
) -> OutcomeMessage:
    """(subject, data, headers) of the run's finished event, from its run state;
    ``traceparent``: the run's trace context, for whoever reads the event."""
    return _finished(
        task, state.agent, state.status.value, state.attempts, state.started_at,
        state.finished_at or utcnow(), state.result,
        tenant=state.tenant, priority=state.priority, enqueued_at=state.enqueued_at,
        routing_key=state.routing_key, idempotency_key=state.idempotency_key,
        error=state.error, errors=state.errors, msg_id=msg_id, worker=state.worker,
        first_started_at=state.first_started_at, audit=state.audit, version=state.version,
        usage=[u.model_dump() for u in state.usage] or None, traceparent=traceparent,
    )  # fmt: skip


def success_message(
    task: Envelope,
    agent: str,
    attempt: int,
    started_at: datetime,
    finished_at: datetime,
    result: Any,
    worker: str | None = None,
    audit: dict[str, Any] | None = None,
    version: str | None = None,
    usage: list[dict[str, Any]] | None = None,
    traceparent: str | None = None,
) -> OutcomeMessage:
    """The finished event of a first attempt that succeeded: the same bytes as
    :func:`outcome_message` of its run state, without building that state
    (everything else a run state holds comes from the task itself)."""
    meta = task.metadata
    payload = task.payload if isinstance(task.payload, dict) else {}
    return _finished(
        task, agent, _SUCCEEDED, attempt, started_at, finished_at, result,
        tenant=meta.tenant, priority=int(meta.priority), enqueued_at=task.created_at,
        routing_key=meta.routing_key, idempotency_key=payload.get("idempotency_key"), worker=worker,
        audit=audit, version=version, usage=usage, traceparent=traceparent,
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
    worker: str | None = None,
    first_started_at: datetime | None = None,
    audit: dict[str, Any] | None = None,
    version: str | None = None,
    usage: list[dict[str, Any]] | None = None,
    traceparent: str | None = None,
) -> OutcomeMessage:
    """Hot path (once per task): the envelope and its :class:`ExecutionFinished`
    payload are serialized straight from a dict by pydantic-core, without
    building and re-validating models whose parts were all validated already;
    ``tests/unit/mesh/queue/test_outcome.py`` checks the bytes against both models.
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
        event["errors"] = bounded_errors(errors)  # under the max payload however many attempts
    if routing_key is not None:
        event["routing_key"] = routing_key
    if idempotency_key is not None:
        event["idempotency_key"] = idempotency_key
    if generation:
        event["replay"] = generation
    if worker is not None:
        event["worker"] = worker
    if first_started_at is not None and first_started_at != started_at:
        event["first_started_at"] = first_started_at
    if audit is not None:
        event["audit"] = audit
    if version is not None:
        event["version"] = version
    if usage:
        event["usage"] = usage
    envelope = {
        # Deterministic: a re-sent outcome is the same event, id included.
        "schema_version": SCHEMA_VERSION, "id": msg_id, "correlation_id": task.correlation_id,
        "causation_id": run_id, "source": agent, "message_type": _EVENT, "channel_type": _DURABLE,
        "type": EXECUTION_FINISHED, "payload": event, "metadata": task.metadata,
        "created_at": finished_at,
    }  # fmt: skip
    # The tenant passed the envelope's token pattern and the id is ours: no CR/LF to escape
    # (nor in a traceparent: the worker passes one it read or wrote, 55 hex chars and dashes).
    traced = b"%s: %s\r\n" % (_TRACEPARENT, traceparent.encode()) if traceparent else b""
    headers = b"NATS/1.0\r\n%s: %s\r\nNats-Msg-Id: %s\r\nAF-Tenant: %s\r\n%s\r\n" % (
        _CONTENT_TYPE, _JSON, msg_id.encode(), tenant.encode(), traced,
    )  # fmt: skip
    # NaN/inf become null, as the models write them: the bytes stay JSON (jsonb refuses NaN).
    return names.finished_subject(agent, run_id), to_json(envelope, inf_nan_mode="null"), headers


Send = Callable[[str, bytes, bytes], Awaitable[object]]  # subject, data, pre-encoded headers


async def record_outcome(
    js: JetStreamContext,
    send: Send,
    outcome: OutcomeMessage,
    *,
    agent: str,
    run_id: str,
    generation: int,
    real: bool = True,
    expect: int | None = None,
) -> bool:
    """Store ``outcome`` unless its generation's outcome is decided already (see
    the module docstring); True if stored, False if it was not needed.

    ``expect``: the event subject's last sequence if known (0: no event yet,
    the first attempt's common case, which costs no lookup); None looks it up.
    A concurrent writer makes the compare-and-set fail: look again, decide again.
    """
    subject, data, headers = outcome
    for _ in range(8):
        if expect is None:
            stored = await stored_outcome(js, agent, run_id)
            if stored is not None and stored.decides(generation, real):
                return False
            expect = stored.seq if stored is not None else 0
        try:
            await send(subject, data, expect_last_subject_seq(headers, expect))
            return True
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            expect = None
    raise RuntimeError(f"could not record the outcome of run {run_id}: its event subject keeps changing")


def js_send(js: JetStreamContext) -> Send:
    """A :data:`Send` over plain ``js.publish`` (cold paths)."""

    async def send(subject: str, data: bytes, headers: bytes) -> object:
        return await js.publish(subject, data, headers=parse_headers(headers))

    return send


async def write_outcome(
    js: JetStreamContext, task: Envelope, state: RunState, msg_id: str, *, real: bool = False
) -> bool:
    """Unpipelined :func:`record_outcome` of ``state`` for cold paths (mover, reaper)."""
    return await record_outcome(
        js, js_send(js), outcome_message(task, state, msg_id),
        agent=state.agent, run_id=state.run_id, generation=replay_generation(task), real=real,
    )  # fmt: skip
