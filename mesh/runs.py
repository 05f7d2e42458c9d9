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
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ConfigDict, Field

from mesh import names
from mesh.dlq import AttemptError

__all__ = ["RunState", "RunStatus", "get_run", "parse_run", "put_run", "run_key"]


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # ran out of attempts or hit a permanent error; also in the DLQ
    EXPIRED = "expired"  # its TTL passed before a worker took it

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.EXPIRED)


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
    expires_at: datetime | None = None
    # Set while a worker runs it past its TTL (the server has removed the task
    # message by then): the worker renews it; the reaper expires the run once
    # it lapses (the worker was lost). See mesh/worker.py, "claims".
    lease_until: datetime | None = None
    replay: int = 0  # DLQ replay generation this state belongs to


def run_key(run_id: str) -> str:
    return f"$KV.{names.BUCKET_RUNS}.{run_id}"


async def put_run(js: JetStreamContext, state: RunState) -> None:
    """Write the state durably (one JetStream publish)."""
    await js.publish(run_key(state.run_id), state.model_dump_json().encode())


async def get_run(js: JetStreamContext, run_id: str) -> RunState | None:
    kv = await js.key_value(names.BUCKET_RUNS)
    try:
        entry = await kv.get(run_id)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    return parse_run(entry.value)


def parse_run(data: bytes) -> RunState:
    """A run record: a :class:`RunState`, or the finished event projected into the bucket."""
    raw = json.loads(data)
    if isinstance(raw, dict) and "schema_version" in raw and "payload" in raw:
        from mesh.events import ExecutionFinished  # events builds on runs

        return ExecutionFinished.model_validate(raw["payload"]).run_state()
    return RunState.model_validate(raw)
