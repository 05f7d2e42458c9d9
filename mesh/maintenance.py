"""Queue maintenance: the dead-letter mover, TTL expiry and the queue gauges.

* **Mover.** A task whose worker died on its last attempt is not redelivered
  and not removed: JetStream only announces it with a MAX_DELIVERIES
  advisory (captured durably in ``AF_ADVISORIES``). The mover dead-letters
  it with its history, records the failure, then deletes the original — in
  that order, each step idempotent, so a crash anywhere repeats, never loses.
* **Expiry.** A task whose TTL passes while queued vanishes silently from the
  stream; the reaper finds queued runs past ``expires_at`` and records them
  as expired (run state and ``execution.finished`` with status ``expired``).
  It scans the ``af_runs`` bucket every ``expiry_interval_s``. A run a
  worker claimed (still running as its TTL passed) is left alone while the
  worker renews its lease, and expired once the lease lapses (worker lost).
  An outcome already recorded wins over an expiry (the event is checked, not
  only the projected state), and the expiry event has an id of its own, so a
  worker's outcome that comes later is recorded too and becomes the final state.
* **Gauges.** Depth, in-flight ratio (stall) and DLQ size every few seconds.

Several replicas may run this: the mover's consumer is shared, expiry uses
compare-and-set on the run record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from mesh import metrics, names
from mesh.dlq import AttemptError, DeadLetter, dead_letter
from mesh.envelope import CONTENT_TYPE, Envelope, MessageType, Metadata, decode, utcnow
from mesh.errors import DecodeError
from mesh.outcome import (
    expired_msg_id,
    finished_msg_id,
    replay_generation,
    stored_outcome_id,
    write_outcome,
)
from mesh.puller import Puller
from mesh.runs import RunState, RunStatus, get_run, parse_run
from mesh.stats import queue_stats

__all__ = ["QueueMaintenance", "expire_overdue", "move_max_delivered"]

log = logging.getLogger(__name__)

MOVER = "dlq-mover"


async def move_max_delivered(js: JetStreamContext, advisory: bytes) -> str | None:
    """Dead-letter the task an advisory names; returns its run id (None: nothing to do)."""
    body = json.loads(advisory)
    seq = int(body["stream_seq"])
    try:
        raw = await js.get_msg(names.STREAM_TASKS, seq)
    except NotFoundError:
        return None  # acked late after all, or expired: nothing stranded
    assert raw.data is not None and raw.subject is not None
    headers = dict(raw.headers or {})
    agent = raw.subject.split(".")[2]
    error = AttemptError(
        attempt=int(body.get("deliveries", 0)) or 1,
        error="no ack within the ack wait on the last attempt (worker crashed or hung)",
        error_type="MaxDeliveries",
    )
    try:
        task = decode(raw.data, headers.get(CONTENT_TYPE))
    except DecodeError:
        task = None
    state = await get_run(js, task.id) if task is not None else None
    if task is not None and state is None:
        state = RunState(
            run_id=task.id, agent=agent, tenant=task.metadata.tenant,
            routing_key=task.metadata.routing_key, enqueued_at=task.created_at,
        )  # fmt: skip
    errors = [*(state.errors if state else []), error]
    run_id = task.id if task else None
    generation = replay_generation(task) if task else 0
    await dead_letter(
        js,
        DeadLetter.of(
            payload=raw.data, origin="tasks", name=agent, subject=raw.subject, headers=headers,
            errors=errors, reason="max deliveries reached", run_id=run_id,
            tenant=task.metadata.tenant if task else "default",
            first_attempt_at=errors[0].at,
        ),
        dedup_id=f"tasks-{run_id}-{generation}" if run_id else f"tasks-seq-{seq}",
    )  # fmt: skip
    if task is not None and state is not None and not state.status.finished:
        state.errors, state.error = errors, error.error
        state.status, state.attempts, state.finished_at = RunStatus.FAILED, error.attempt, utcnow()
        await write_outcome(js, task, state)
    with contextlib.suppress(NotFoundError):
        await js.delete_msg(names.STREAM_TASKS, seq)
    metrics.TASKS_DEAD_LETTERED.labels(agent).inc()
    return run_id


async def _scan_runs(js: JetStreamContext) -> AsyncIterator[tuple[RunState, int]]:
    """Every run record (latest revision), with its revision, in one pass.

    An ephemeral last-per-subject consumer read until ``num_pending`` is 0:
    unlike a KV watch's end-of-initial-values marker, that cannot end early.
    """
    sub = await js.pull_subscribe(
        f"$KV.{names.BUCKET_RUNS}.>",
        stream=f"KV_{names.BUCKET_RUNS}",
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0, mem_storage=True,
        ),
    )  # fmt: skip
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except TimeoutError:
                return
            for msg in msgs:
                if msg.data and not (msg.headers or {}).get("KV-Operation"):
                    try:
                        state = parse_run(msg.data)
                    except ValueError as exc:  # e.g. a foreign event on a finished-run subject
                        log.warning("skipping unreadable run record %s: %s", msg.subject, exc)
                        continue
                    yield state, msg.metadata.sequence.stream
            if msgs[-1].metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _overdue(state: RunState, now: datetime, grace: timedelta) -> str | None:
    """Why ``state`` is to be recorded as expired now, or None."""
    if state.status == RunStatus.QUEUED and state.expires_at is not None and state.expires_at + grace <= now:
        return f"TTL passed at {state.expires_at.isoformat()} before a worker took it"
    lease = state.lease_until
    if state.status == RunStatus.RUNNING and lease is not None and lease + grace <= now:
        return (
            "its worker was lost: it ran past its TTL (the task is gone from the queue, "
            f"so it cannot be retried) and stopped renewing its claim at {lease.isoformat()}"
        )
    return None


async def _outcome_exists(js: JetStreamContext, state: RunState) -> bool:
    """Is this run's outcome (of its replay generation) stored, whatever the projection says?"""
    stored = await stored_outcome_id(js, state.agent, state.run_id)
    return stored in (finished_msg_id(state.run_id, state.replay), expired_msg_id(state.run_id, state.replay))


async def expire_overdue(js: JetStreamContext, grace_s: float = 5.0) -> list[str]:
    """Record overdue runs as expired (see the module docstring); returns their run ids."""
    kv = await js.key_value(names.BUCKET_RUNS)
    now = utcnow()
    grace = timedelta(seconds=grace_s)
    expired: list[str] = []
    async for state, revision in _scan_runs(js):
        reason = _overdue(state, now, grace)
        if reason is None or await _outcome_exists(js, state):
            continue
        state.status, state.finished_at, state.error = RunStatus.EXPIRED, now, reason
        state.lease_until = None
        try:  # compare-and-set: a worker that just finished it wins
            await kv.update(state.run_id, state.model_dump_json().encode(), last=revision)
        except KeyWrongLastSequenceError:
            continue
        task = Envelope(
            id=state.run_id, type="task.run", message_type=MessageType.COMMAND,
            payload={"agent": state.agent, "replay": state.replay}, created_at=state.enqueued_at,
            metadata=Metadata(tenant=state.tenant, routing_key=state.routing_key),
        )  # fmt: skip
        # The state is already final (CAS won), so the event must not be lost
        # to a short outage: retry it before giving up.
        for attempt in range(1, 5):
            try:
                await write_outcome(js, task, state, expired_msg_id(state.run_id, state.replay))
                break
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5 * attempt)
        metrics.TASKS_EXPIRED.labels(state.agent).inc()
        expired.append(state.run_id)
    return expired


class QueueMaintenance:
    """Runs the mover, the expiry reaper and the gauges. ``start()``/``stop()``."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        expiry_interval_s: float = 30.0,
        stats_interval_s: float = 5.0,
        poll_s: float = 1.0,
    ) -> None:
        self.nc, self.js = nc, js
        self.expiry_interval_s = expiry_interval_s
        self.stats_interval_s = stats_interval_s
        self.poll_s = poll_s
        self._puller: Puller | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.moved = 0

    async def start(self) -> None:
        await self.js.add_consumer(
            names.STREAM_ADVISORIES,
            ConsumerConfig(
                durable_name=MOVER, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, ack_wait=60, max_deliver=-1,
            ),
        )  # fmt: skip
        self._puller = Puller(self.nc, names.STREAM_ADVISORIES, MOVER)
        await self._puller.start()
        self._tasks = [
            asyncio.create_task(self._mover(), name="dlq-mover"),
            asyncio.create_task(self._every(self.expiry_interval_s, self._expire), name="expiry"),
            asyncio.create_task(self._every(self.stats_interval_s, self._stats), name="stats"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._puller is not None:
            for msg in await self._puller.close(settle_s=self.poll_s + 0.5):
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _mover(self) -> None:
        assert self._puller is not None
        while True:
            try:
                msgs = await self._puller.take(32) or await self._puller.wait(1, self.poll_s)
                for msg in msgs:
                    await self._move(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dlq mover: %s", exc)
                await asyncio.sleep(0.5)

    async def _move(self, msg: Msg) -> None:
        try:
            await move_max_delivered(self.js, msg.data)
        except Exception as exc:  # leave it for a retry after the ack wait
            log.warning("dlq mover could not move %s: %s", msg.data[:200], exc)
            await msg.nak(delay=1)
            return
        await msg.ack()
        self.moved += 1

    async def _every(self, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("queue maintenance: %s", exc)
            await asyncio.sleep(interval)

    async def _expire(self) -> list[str]:
        return await expire_overdue(self.js)

    async def _stats(self) -> object:
        return await queue_stats(self.js)
