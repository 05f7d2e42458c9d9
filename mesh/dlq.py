"""The dead-letter queue: where work goes after its last attempt.

A dead letter keeps the original payload and headers byte for byte, every
attempt's error with its time, and where it came from, so it can be inspected
and replayed exactly. Operations: :func:`list_dead_letters`,
:func:`get_dead_letter`, :func:`replay` / :func:`replay_all`, :func:`purge`.
Publishing is deduplicated by ``dedup_id`` so a mover that crashes half-way
and runs again stores one dead letter, not two.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Literal

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from mesh import names
from mesh.envelope import CONTENT_TYPE, JSON, decode, encode, new_id, utcnow
from mesh.errors import DecodeError, MeshError

__all__ = [
    "AttemptError",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterView",
    "count",
    "dead_letter",
    "get_dead_letter",
    "list_dead_letters",
    "purge",
    "replay",
    "replay_all",
]


class DeadLetterNotFound(MeshError):
    status = 404

    def __init__(self, seq: int) -> None:
        super().__init__(f"no dead letter with sequence {seq}")
        self.seq = seq


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


# ---- operating the DLQ ------------------------------------------------------


class DeadLetterView(BaseModel):
    """A dead letter as listed: its DLQ sequence plus the record."""

    seq: int
    entry: DeadLetter


def _filter(origin: str | None, name: str | None) -> str:
    if origin is None:
        return f"{names.DLQ_PREFIX}.>"
    return names.dlq_subject(origin, name) if name else f"{names.DLQ_PREFIX}.{origin}.>"


async def list_dead_letters(
    js: JetStreamContext,
    *,
    origin: str | None = "tasks",
    name: str | None = None,
    limit: int = 100,
    after_seq: int = 0,
) -> list[DeadLetterView]:
    """Dead letters in stream order, from ``after_seq`` on (``limit`` at most)."""
    out: list[DeadLetterView] = []
    subject = _filter(origin, name)
    seq = after_seq + 1
    while len(out) < limit:
        try:
            raw = await js.get_msg(names.STREAM_DLQ, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        assert raw.seq is not None and raw.data is not None
        out.append(DeadLetterView(seq=raw.seq, entry=DeadLetter.model_validate_json(raw.data)))
        seq = raw.seq + 1
    return out


async def get_dead_letter(js: JetStreamContext, seq: int) -> DeadLetterView:
    try:
        raw = await js.get_msg(names.STREAM_DLQ, seq=seq)
    except NotFoundError:
        raise DeadLetterNotFound(seq) from None
    assert raw.data is not None
    return DeadLetterView(seq=seq, entry=DeadLetter.model_validate_json(raw.data))


async def replay(js: JetStreamContext, seq: int) -> str:
    """Put dead letter ``seq`` back on its queue, then remove it from the DLQ.

    The task keeps its run id; its replay generation goes up so the new
    outcome is recorded (not deduplicated against the failed one). A crash
    between the two steps replays at most once: the republish carries a
    ``Nats-Msg-Id`` derived from the DLQ sequence.
    """
    view = await get_dead_letter(js, seq)
    entry = view.entry
    if entry.origin != "tasks":
        raise MeshError(f"dead letter {seq} came from a channel; replay it with the channel API")
    headers = dict(entry.headers)
    data = entry.payload
    try:
        task = decode(data, headers.get(CONTENT_TYPE))
    except DecodeError as exc:
        raise MeshError(f"dead letter {seq} holds an undecodable task; purge it: {exc}") from exc
    payload = dict(task.payload) if isinstance(task.payload, dict) else {}
    payload["replay"] = int(payload.get("replay", 0)) + 1
    task = task.model_copy(update={"payload": payload})
    content_type = headers.get(CONTENT_TYPE, JSON)
    headers["Nats-Msg-Id"] = f"replay-{seq}"
    from mesh.runs import RunStatus, get_run, put_run  # runs imports dlq

    state = await get_run(js, task.id)
    if state is not None:
        state.status, state.finished_at, state.result = RunStatus.QUEUED, None, None
        state.replay, state.lease_until = payload["replay"], None
        # The republished task carries its TTL header: it may wait that long again.
        ttl = task.metadata.ttl_s or float(headers.get("Nats-TTL", 0) or 0)
        state.expires_at = utcnow() + timedelta(seconds=ttl) if ttl else None
        await put_run(js, state)
    await js.publish(entry.subject, encode(task, content_type), headers=headers)
    await js.delete_msg(names.STREAM_DLQ, seq)
    return task.id


async def replay_all(js: JetStreamContext, *, name: str | None = None, limit: int = 10_000) -> list[str]:
    """Replay every task dead letter (of agent ``name`` if given); returns run ids."""
    replayed: list[str] = []
    after = 0
    while len(replayed) < limit:
        batch = await list_dead_letters(js, origin="tasks", name=name, after_seq=after, limit=100)
        if not batch:
            break
        for view in batch:
            replayed.append(await replay(js, view.seq))
        after = batch[-1].seq
    return replayed


async def purge(
    js: JetStreamContext, *, origin: str | None = None, name: str | None = None,
    seq: int | None = None,
) -> int:  # fmt: skip
    """Delete one dead letter (``seq``) or all of an origin/agent; returns how many."""
    if seq is not None:
        await get_dead_letter(js, seq)
        await js.delete_msg(names.STREAM_DLQ, seq)
        return 1
    before = await count(js, origin=origin, name=name)
    await js.purge_stream(names.STREAM_DLQ, subject=_filter(origin, name))
    return before


async def count(js: JetStreamContext, *, origin: str | None = None, name: str | None = None) -> int:
    info = await js.stream_info(names.STREAM_DLQ, subjects_filter=_filter(origin, name))
    return sum((info.state.subjects or {}).values())
