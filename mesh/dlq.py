"""The dead-letter queue: where work goes after its last attempt.

A dead letter keeps the original payload and headers byte for byte, every
attempt's error with its time, and where it came from, so it can be inspected
and replayed exactly. Publishing is deduplicated by ``dedup_id`` so a mover
that crashes half-way and runs again stores one dead letter, not two.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Literal

from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field

from mesh import names
from mesh.envelope import CONTENT_TYPE, JSON, new_id, utcnow

__all__ = ["AttemptError", "DeadLetter", "dead_letter"]


class AttemptError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=1)
    error: str = Field(max_length=8192)
    error_type: str = "Error"
    retryable: bool = True
    at: datetime = Field(default_factory=utcnow)


class DeadLetter(BaseModel):
    """One dead letter, stored as JSON on ``af.dlq.<origin>.<name>``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_id)
    origin: Literal["tasks", "channels"]
    name: str  # agent key or channel name
    subject: str  # the subject the original was published on
    payload_b64: str  # the original bytes, exactly
    headers: dict[str, str] = Field(default_factory=dict)
    errors: list[AttemptError] = Field(default_factory=list)
    reason: str = "max attempts reached"
    tenant: str = "default"
    run_id: str | None = None
    first_attempt_at: datetime | None = None
    dead_at: datetime = Field(default_factory=utcnow)

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self.payload_b64)

    @classmethod
    def of(cls, *, payload: bytes, **fields: object) -> DeadLetter:
        return cls(payload_b64=base64.b64encode(payload).decode(), **fields)  # type: ignore[arg-type]


async def dead_letter(js: JetStreamContext, entry: DeadLetter, dedup_id: str) -> int:
    """Store ``entry`` durably; returns its DLQ stream sequence.

    ``dedup_id`` identifies the original (e.g. ``tasks-<run id>``): storing the
    same original twice within the duplicate window yields one dead letter.
    """
    ack = await js.publish(
        names.dlq_subject(entry.origin, entry.name),
        entry.model_dump_json().encode(),
        headers={CONTENT_TYPE: JSON, "Nats-Msg-Id": f"dlq-{dedup_id}", "AF-Tenant": entry.tenant},
    )
    return int(ack.seq)
