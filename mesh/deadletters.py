"""Dead letters: the record of work that will not be tried again, and how it is stored.

A dead letter keeps the original payload and headers byte for byte, every
attempt's error with its time (:class:`AttemptError`, trimmed by
:func:`bounded_errors` so it always fits), and where it came from. The task
queue (``mesh.queue.dlq``: listing, replay, purge) and the channels both
write them here, on ``af.dlq.<origin>.<name>`` in ``AF_DLQ``.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Literal

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field

from mesh import names
from mesh.envelope import CONTENT_TYPE, JSON, new_id, utcnow
from mesh.errors import PayloadTooLarge
from mesh.limits import ERRORS_BUDGET, MAX_ERROR_CHARS

__all__ = ["AttemptError", "DeadLetter", "bounded_errors", "dead_letter"]


class AttemptError(BaseModel):
    """One attempt's error, as the run state, the event and the dead letter keep it."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=1)
    error: str = Field(max_length=8192)
    error_type: str = "Error"
    retryable: bool = True
    at: datetime = Field(default_factory=utcnow)
    replay: int = Field(default=0, ge=0)  # the DLQ replay generation it belongs to (0: the first round)


_KEEP_FIRST, _KEEP_LAST = 5, 20


def bounded_errors(errors: list[AttemptError], budget: int = ERRORS_BUDGET) -> list[AttemptError]:
    """``errors`` trimmed to ``budget`` bytes of text (:data:`~mesh.limits.ERRORS_BUDGET`):
    the first 5 and last 20 attempts at most, each text cut to its share. An
    event or a dead letter carries this, so however many attempts failed with
    however long a message, it stays under the max payload."""
    if len(errors) > _KEEP_FIRST + _KEEP_LAST:
        errors = errors[:_KEEP_FIRST] + errors[-_KEEP_LAST:]
    share = min(MAX_ERROR_CHARS, budget // max(1, len(errors)))
    if all(len(e.error.encode()) <= share for e in errors):
        return errors
    return [
        e if len(e.error.encode()) <= share
        else e.model_copy(update={"error": e.error.encode()[: share - 3].decode(errors="ignore") + "..."})
        for e in errors
    ]  # fmt: skip


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
    def of(cls, *, payload: bytes, errors: list[AttemptError] | None = None, **fields: object) -> DeadLetter:
        return cls(
            payload_b64=base64.b64encode(payload).decode(),
            errors=bounded_errors(errors or []),
            **fields,  # type: ignore[arg-type]
        )


async def dead_letter(js: JetStreamContext, entry: DeadLetter, dedup_id: str) -> int:
    """Store ``entry`` durably; returns its DLQ stream sequence.

    ``dedup_id`` identifies the original (e.g. ``tasks-<run id>``): storing the
    same original twice within the duplicate window yields one dead letter.
    Raises :class:`PayloadTooLarge` (before sending) for an original too large
    to dead-letter (only a task published around the queue's size limit).
    """
    data = entry.model_dump_json().encode()
    try:
        ack = await js.publish(
            names.dlq_subject(entry.origin, entry.name),
            data,
            headers={CONTENT_TYPE: JSON, "Nats-Msg-Id": f"dlq-{dedup_id}", "AF-Tenant": entry.tenant},
        )
    except MaxPayloadError as exc:
        raise PayloadTooLarge(len(data), None, what="dead letter") from exc
    return int(ack.seq)
