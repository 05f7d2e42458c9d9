"""Request and response bodies of the management API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.sandbox.levels import Levels
from mesh.envelope import Priority, priority_by_name
from mesh.queue.producer import DEFAULT_TTL_S, MAX_TTL_S

__all__ = ["AgentView", "RunAccepted", "RunRequest", "RunView", "SandboxView"]


class RunRequest(BaseModel):
    """``POST /api/v1/agents/{key}/runs``."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(description="The agent's input, checked against its schema")
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    ttl_s: int = Field(default=DEFAULT_TTL_S, ge=1, le=MAX_TTL_S)
    tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,128}$")
    routing_key: str | None = Field(default=None, max_length=256)

    _priority = field_validator("priority", mode="before")(priority_by_name)


class RunAccepted(BaseModel):
    run_id: str
    agent: str
    status: str = "queued"
    duplicate: bool = False
    url: str


class RunView(BaseModel):
    run_id: str
    agent: str
    tenant: str
    status: str
    attempts: int = 0
    progress: float | None = None
    result: Any = None
    error: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)
    enqueued_at: datetime | None = None
    started_at: datetime | None = None  # the last attempt's start
    finished_at: datetime | None = None
    input: Any = None
    priority: str = "NORMAL"
    replay: int = 0  # how often it was replayed from the DLQ (its errors say which round: "replay")
    worker: str | None = None  # who ran the last attempt (name@host/pid)
    first_started_at: datetime | None = None
    audit: dict[str, Any] | None = None  # what it cost, as its runner measured (a sandboxed run)
    idempotency_key: str | None = None
    routing_key: str | None = None


class SandboxView(BaseModel):
    """Whether pool workers sandbox each task, and what containment this host gives."""

    enabled: bool
    levels: Levels


class AgentView(BaseModel):
    """An agent as ``Agent.describe()`` shows it, and whether this gateway's workers serve it."""

    key: str
    version: str
    description: str
    input_schema: dict[str, Any] = Field(description="JSON Schema of its input")
    output_schema: dict[str, Any] = Field(description="JSON Schema of its output")
    state: Literal["serving", "registered"]
