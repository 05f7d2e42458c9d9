"""The dead-letter queue: where work goes after its last attempt.

A dead letter keeps the original payload and headers byte for byte, every
attempt's error with its time, and where it came from, so it can be inspected
and replayed exactly. Operations: :func:`list_dead_letters`,
:func:`get_dead_letter`, :func:`replay` / :func:`replay_all`, :func:`purge`.
Publishing is deduplicated by ``dedup_id`` so a mover that crashes half-way
and runs again stores one dead letter, not two.

A dead letter always fits under the max payload: the queue accepts tasks of
at most half of it (:mod:`mesh.limits`) and the attempt history is trimmed
(:func:`mesh.deadletters.bounded_errors`). A replay republishes first and deletes
the dead letter only once the task is stored again, so a failure anywhere
leaves the dead letter in place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from pydantic import BaseModel, Field

from mesh import names
from mesh.deadletters import AttemptError, DeadLetter, bounded_errors, dead_letter
from mesh.envelope import CONTENT_TYPE, JSON, decode, encode, utcnow
from mesh.errors import WRONG_LAST_SEQUENCE, DecodeError, MeshError
from mesh.limits import ERRORS_BUDGET
from mesh.queue.outcome import replay_generation, stored_outcome
from mesh.queue.runs import RunStatus, get_run, get_run_entry, run_key
from mesh.wire.protocol import EXPECTED_LAST_SUBJECT_SEQ

__all__ = [
    "store_task_dead_letter",
    "DeadLetterNotFound",
    "DeadLetterView",
    "ReplayReport",
    "NotReplayable",
    "StaleDeadLetter",
    "count",
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


class NotReplayable(MeshError):
    """The dead letter is not a task this queue can replay (a channel's, or undecodable)."""

    status = 409


class StaleDeadLetter(MeshError):
    """The run succeeded after it was dead-lettered (a worker presumed lost finished)."""

    status = 409

    def __init__(self, seq: int, run_id: str) -> None:
        super().__init__(
            f"dead letter {seq} is stale: run {run_id} succeeded after it was dead-lettered; "
            "nothing to replay (purge it)"
        )
        self.seq, self.run_id = seq, run_id


async def store_task_dead_letter(
    js: JetStreamContext,
    *,
    payload: bytes,
    subject: str,
    headers: Mapping[str, str] | None,
    agent: str,
    errors: list[AttemptError],
    reason: str,
    run_id: str | None,
    tenant: str,
    generation: int | None,
    seq: int,
) -> int:
    """Dead-letter a task (the worker's last attempt, an undecodable task, the
    mover's): the one builder of a task's dead letter. Stored once however often
    it is retried: a task that was read once per run and replay generation
    (``tasks-<run>-<gen>``), one that could not be read once per stream sequence."""
    dedup_id = f"tasks-{run_id}-{generation}" if generation is not None else f"tasks-seq-{seq}"
    entry = DeadLetter.of(
        payload=payload, origin="tasks", name=agent, subject=subject, headers=dict(headers or {}),
        errors=errors, reason=reason, tenant=tenant, run_id=run_id,
        first_attempt_at=errors[0].at if errors else None,
    )  # fmt: skip
    return await dead_letter(js, entry, dedup_id=dedup_id)


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


# Headers of the stored original that must not travel with a replay: batch
# framing (a lone message with them is refused), compare-and-set
# expectations, and a server TTL (tasks wait under the reaper's deadline).
_NOT_REPLAYED = ("Nats-Batch-", "Nats-Expected-", "Nats-TTL", "Nats-Msg-Id")


async def replay(js: JetStreamContext, seq: int) -> str:
    """Put dead letter ``seq`` back on its queue, then remove it from the DLQ.

    The task keeps its run id; its replay generation goes up so the new
    outcome is recorded (not deduplicated against the failed one), and it may
    wait its TTL again from now. Republish first, delete last: a failure in
    between leaves the dead letter; a retry within the duplicate window
    stores one task (``Nats-Msg-Id: replay-<seq>``). Refuses a stale dead
    letter (:class:`StaleDeadLetter`): one whose run succeeded after all.
    """
    view = await get_dead_letter(js, seq)
    entry = view.entry
    if entry.origin != "tasks":
        raise NotReplayable(f"dead letter {seq} came from a channel; replay it with the channel API")
    headers = {k: v for k, v in entry.headers.items() if not k.startswith(_NOT_REPLAYED)}
    try:
        task = decode(entry.payload, headers.get(CONTENT_TYPE))
    except DecodeError as exc:
        raise NotReplayable(f"dead letter {seq} holds an undecodable task; purge it: {exc}") from exc
    generation = replay_generation(task)
    stored = await stored_outcome(js, entry.name, task.id)
    if stored is not None and stored.real and stored.generation == generation:
        state = await get_run(js, task.id)
        if state is not None and state.status == RunStatus.SUCCEEDED and state.replay == generation:
            raise StaleDeadLetter(seq, task.id)
    now = utcnow()
    state, revision = await get_run_entry(js, task.id)
    payload = dict(task.payload) if isinstance(task.payload, dict) else {}
    payload["replay"] = generation + 1
    payload["requeued_at"] = now.isoformat()  # its wait deadline counts from here
    # The rounds before travel with the task (the run record expires after
    # 24 h, a dead letter may wait longer), so the run's history survives.
    first = state.first_started_at or state.started_at if state is not None else None
    history = bounded_errors(entry.errors, budget=ERRORS_BUDGET // 2)
    payload["history"] = {
        "errors": [e.model_dump(mode="json") for e in history],
        "first_started_at": first.isoformat() if first else None,
    }
    task = task.model_copy(update={"payload": payload})
    headers["Nats-Msg-Id"] = f"replay-{seq}"
    ack = await js.publish(entry.subject, encode(task, headers.get(CONTENT_TYPE, JSON)), headers=headers)
    if state is not None:
        ttl = task.metadata.ttl_s
        state.status, state.finished_at, state.result, state.progress = RunStatus.QUEUED, None, None, None
        state.replay, state.returned, state.seq = payload["replay"], 0, int(ack.seq)
        state.expires_at = now + timedelta(seconds=ttl) if ttl else None
        # Compare-and-set: a worker may have taken the new task already, and
        # its state (or outcome) must not be overwritten by "queued". Any other
        # refusal is raised: the dead letter stays, and a retry stores one task.
        try:
            await js.publish(
                run_key(task.id), state.model_dump_json().encode(),
                headers={EXPECTED_LAST_SUBJECT_SEQ: str(revision)},
            )  # fmt: skip
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
    await js.delete_msg(names.STREAM_DLQ, seq)
    return task.id


class ReplayReport(BaseModel):
    """What :func:`replay_all` did: one dead letter failing does not stop the rest."""

    replayed: list[str] = Field(default_factory=list)
    failed: list[dict[str, object]] = Field(default_factory=list)  # {"seq", "error"}


async def replay_all(
    js: JetStreamContext, *, name: str | None = None, limit: int = 10_000, dead_by: datetime | None = None,
    after_each: Callable[[ReplayReport], Awaitable[None]] | None = None,
) -> ReplayReport:  # fmt: skip
    """Replay every task dead letter (of agent ``name`` if given) dead by
    ``dead_by`` (default: now). A replayed task that fails again is dead-lettered
    anew, later, and left there (else a task that always fails would loop until
    ``limit``); the same ``dead_by`` makes a call made again (a resumed one)
    replay what was dead when it was first asked, no more. ``after_each`` sees
    the report after every letter (progress; it may raise to stop there)."""
    dead_by = dead_by or utcnow()
    report = ReplayReport()
    after = 0
    while len(report.replayed) + len(report.failed) < limit:
        batch = await list_dead_letters(js, origin="tasks", name=name, after_seq=after, limit=100)
        if not batch:
            break
        after = batch[-1].seq
        for view in batch:
            if view.entry.dead_at > dead_by:
                continue
            try:
                report.replayed.append(await replay(js, view.seq))
            except (MeshError, APIError) as exc:
                report.failed.append({"seq": view.seq, "error": str(exc)})
            if after_each is not None:
                await after_each(report)
    return report


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
