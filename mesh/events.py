"""Shared event schemas: the facts that ``streams`` and ``agents`` both read.

They live in ``mesh`` so the two layers agree without importing each other.
Events are published on ``af.events.<kind>.<agent>`` inside an
:class:`~mesh.envelope.Envelope` whose ``type`` is the kind; a finished run
has a subject of its own, ``af.events.execution.finished.<agent>.<run id>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from mesh.runs import AttemptError, RunState, RunStatus

__all__ = ["EXECUTION_FINISHED", "ExecutionFinished"]

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

    def run_state(self) -> RunState:
        return RunState(
            run_id=self.run_id, agent=self.agent, tenant=self.tenant, routing_key=self.routing_key,
            priority=self.priority, status=self.status, attempts=self.attempts,
            progress=100.0 if self.status == RunStatus.SUCCEEDED else None,
            result=self.result, error=self.error, errors=self.errors,
            idempotency_key=self.idempotency_key, enqueued_at=self.enqueued_at,
            started_at=self.started_at, finished_at=self.finished_at, replay=self.replay,
            worker=self.worker, first_started_at=self.first_started_at or self.started_at, input=self.input,
        )  # fmt: skip
