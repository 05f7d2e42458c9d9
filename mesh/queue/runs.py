"""Run state: what a run is doing now, kept in the ``af_runs`` KV bucket (24 h).

The KV record is the live view (queued → running → finished, progress,
attempt errors). Writers: the enqueuer (the queued record), a worker (retry
errors, progress) and, for the final state, the server itself: ``af_runs``
sources ``af.events.execution.finished.<agent>.<run id>`` with a subject
transform onto ``$KV.af_runs.<run id>``, so a worker writes one message per
outcome, not two, and a final record can only exist once its event does.
A record therefore holds either a :class:`RunState` or a finished event's
envelope; :func:`parse_run` reads both.

PostgreSQL keeps the permanent record, written from the same events, so the
API reads KV first and the database after the record has expired.

:class:`ExecutionFinished` is that event's payload, published on
``af.events.execution.finished.<agent>.<run id>``: the fact ``streams`` and
``agents`` both read (they agree through ``mesh`` without importing each
other).
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from mesh import names
from mesh.deadletters import AttemptError
from mesh.envelope import CONTENT_TYPE, Envelope, decode
from mesh.errors import DecodeError

__all__ = [
    "EXECUTION_FINISHED",
    "ExecutionFinished",
    "LIFECYCLE_CHANGED",
    "LifecycleChanged",
    "ModelUsage",
    "RunState",
    "RunStatus",
    "get_run",
    "get_run_entry",
    "parse_run",
    "run_key",
    "stored_task",
]


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # ran out of attempts or hit a permanent error; also in the DLQ
    EXPIRED = "expired"  # its TTL passed before a worker took it
    CANCELLED = "cancelled"  # someone asked to stop it before it finished

    @property
    def finished(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.EXPIRED, RunStatus.CANCELLED})


class ModelUsage(BaseModel):
    """Tokens a run's agent reported spending on one model call (``RunContext.report_usage``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)


class RunState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str
    agent: str
    tenant: str = "default"
    routing_key: str | None = None
    priority: int = 2
    status: RunStatus = RunStatus.QUEUED
    attempts: int = 0
    progress: float | None = Field(default=None, ge=0, le=100)
    result: Any = None
    error: str | None = None
    errors: list[AttemptError] = Field(default_factory=list)
    idempotency_key: str | None = None
    enqueued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The wait deadline: set while the run waits for its first start (the
    # reaper expires a queued run past it); None once a worker started it.
    expires_at: datetime | None = None
    seq: int | None = None  # the task's AF_TASKS sequence (the reaper deletes an expired task by it)
    returned: int = 0  # deliveries handed back unstarted (a drain): not attempts
    replay: int = 0  # DLQ replay generation this state belongs to
    worker: str | None = None  # who ran the latest attempt (``name@host/pid``)
    input: Any = None  # in a final record (from its event); a live one's is in its task (stored_task)
    first_started_at: datetime | None = None  # the first attempt's start (None: started_at)
    audit: dict[str, Any] | None = None  # the latest attempt's cost as measured (ExecutionFinished.audit)
    version: str | None = None  # the agent version that ran the latest attempt
    usage: list[ModelUsage] = Field(default_factory=list)  # model tokens the latest attempt reported


EXECUTION_FINISHED: Final = "execution.finished"


class ExecutionFinished(BaseModel):
    """A run reached a final state. Published once per run and replay generation
    (deduplicated by ``Nats-Msg-Id``); it is also the run's final state in
    ``af_runs``, which the server projects from these events."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    agent: str
    tenant: str
    status: RunStatus
    attempts: int
    result: Any = None
    error: str | None = None
    errors: list[AttemptError] = Field(default_factory=list)
    input: Any = None
    routing_key: str | None = None
    priority: int = 2
    idempotency_key: str | None = None
    replay: int = 0  # DLQ replay generation this outcome belongs to
    enqueued_at: datetime
    started_at: datetime | None = None  # the last attempt's start
    finished_at: datetime
    duration_ms: float | None = None
    worker: str | None = None  # who ran the last attempt (``name@host/pid``); None: no worker did
    first_started_at: datetime | None = None  # the first attempt's start; None: started_at
    # What running it cost, as its runner measured (a sandboxed run: exit status, CPU,
    # peak memory, error category …; agents.sandbox), for metering; None: not measured
    audit: dict[str, Any] | None = None
    version: str | None = None  # the agent version that ran the last attempt; None: not known
    # Model tokens the last attempt reported (``RunContext.report_usage``), for metering
    usage: list[ModelUsage] = Field(default_factory=list)

    def run_state(self) -> RunState:
        return RunState(
            run_id=self.run_id, agent=self.agent, tenant=self.tenant, routing_key=self.routing_key,
            priority=self.priority, status=self.status, attempts=self.attempts,
            progress=100.0 if self.status == RunStatus.SUCCEEDED else None,
            result=self.result, error=self.error, errors=self.errors,
            idempotency_key=self.idempotency_key, enqueued_at=self.enqueued_at,
            started_at=self.started_at, finished_at=self.finished_at, replay=self.replay,
            worker=self.worker, first_started_at=self.first_started_at or self.started_at, input=self.input,
            audit=self.audit, version=self.version, usage=self.usage,
        )  # fmt: skip


LIFECYCLE_CHANGED: Final = "lifecycle.changed"


class LifecycleChanged(BaseModel):
    """An agent version moved from one lifecycle state to another (``agents.lifecycle``).

    The payload of an envelope on ``af.events.lifecycle.changed.<agent>``,
    published once per transition (``Nats-Msg-Id: lifecycle-<id>``), at least
    once: a transition whose event was not confirmed is published again, so a
    reader that must not double-count keys on ``id``."""

    model_config = ConfigDict(extra="ignore")

    id: int  # the transition's row in lifecycle_transitions
    agent: str
    version: str
    from_state: str
    to_state: str
    actor: str  # who asked: an API token's name, a CLI user, "system"
    reason: str | None = None
    at: datetime


_RUN_KEY_PREFIX: Final = names.kv_subject(names.BUCKET_RUNS, "")


def run_key(run_id: str) -> str:
    return _RUN_KEY_PREFIX + run_id


async def get_run(js: JetStreamContext, run_id: str) -> RunState | None:
    return (await get_run_entry(js, run_id))[0]


async def get_run_entry(js: JetStreamContext, run_id: str) -> tuple[RunState | None, int]:
    """The run's state and its KV revision (0: no record), for compare-and-set writes."""
    kv = await js.key_value(names.BUCKET_RUNS)
    try:
        entry = await kv.get(run_id)
    except KeyNotFoundError:
        return None, 0
    if not entry.value:
        return None, int(entry.revision or 0)
    return parse_run(entry.value), int(entry.revision or 0)


def parse_run(data: bytes) -> RunState:
    """A run record: a :class:`RunState`, or the finished event projected into the bucket."""
    raw = json.loads(data)
    if isinstance(raw, dict) and "schema_version" in raw and "payload" in raw:
        return ExecutionFinished.model_validate(raw["payload"]).run_state()
    return RunState.model_validate(raw)


async def stored_task(js: JetStreamContext, state: RunState) -> Envelope | None:
    """The run's task, still in ``AF_TASKS`` at the sequence its record holds
    (waiting, in flight or between attempts); None once it is gone."""
    if state.seq is None:
        return None
    try:
        raw = await js.get_msg(names.STREAM_TASKS, state.seq)
    except NotFoundError:
        return None
    try:
        task = decode(raw.data or b"", (raw.headers or {}).get(CONTENT_TYPE))
    except DecodeError:
        return None
    return task if task.id == state.run_id else None
