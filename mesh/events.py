"""Shared event schemas: the facts that ``streams`` and ``agents`` both read.

They live in ``mesh`` so the two layers agree without importing each other.
Events are published on ``af.events.<kind>.<agent>`` inside an
:class:`~mesh.envelope.Envelope` whose ``type`` is the kind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from mesh.runs import RunStatus

__all__ = ["EXECUTION_FINISHED", "ExecutionFinished"]

EXECUTION_FINISHED: Final = "execution.finished"


class ExecutionFinished(BaseModel):
    """A run reached a final state. Published once per run (deduplicated by run id)."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    agent: str
    tenant: str
    status: RunStatus
    attempts: int
    result: Any = None
    error: str | None = None
    input: Any = None
    enqueued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime
    duration_ms: float | None = None
