"""Queue maintenance: the dead-letter mover, TTL expiry and the queue gauges.

* **Mover.** Workers count attempts themselves and dead-letter a task whose
  attempts were all lost; the server's ``max_deliver`` is only a backstop
  (``max_attempts`` + an allowance for hand-backs). A task that reaches it is
  not redelivered and not removed: JetStream only announces it with a
  MAX_DELIVERIES advisory (captured durably in ``AF_ADVISORIES``). The mover
  checks for a recorded outcome first — a task whose outcome is recorded
  (its ack was lost) is deleted, not dead-lettered — and otherwise
  dead-letters it with its history, records a *presumed* failure
  (``lost-…``, which a stalled worker's real outcome still supersedes),
  then deletes the original: in that order, each step idempotent, so a crash
  anywhere repeats, never loses.
* **Expiry.** A task's TTL bounds its wait for a first start. Tasks carry no
  server TTL; the reaper finds queued runs past ``expires_at`` (the wait
  deadline, set only while a run has never started), records them as
  expired (a presumed outcome, after checking the stored event: the
  projection may lag) and deletes the task by the sequence its queued record
  holds. It scans the ``af_runs`` bucket every ``expiry_interval_s``. A worker
  starting a task past its deadline expires it too, instead of running it.
* **Gauges.** Depth, in-flight ratio (stall) and DLQ size every few seconds.

Several replicas may run this: the mover's consumer is shared, expiry uses
compare-and-set on the run record and on the run's event subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from mesh import names
from mesh.deadletters import AttemptError
from mesh.envelope import CONTENT_TYPE, Envelope, MessageType, Metadata, decode, named_run_id, utcnow
from mesh.errors import DecodeError
from mesh.queue import metrics
from mesh.queue.dlq import store_task_dead_letter
from mesh.queue.outcome import (
    expired_msg_id,
    lost_msg_id,
    replay_generation,
    stored_outcome,
    write_outcome,
)
from mesh.queue.runs import RunState, RunStatus, get_run, parse_run
from mesh.queue.stats import canary_stats, jetstream_stats, limit_stats, queue_stats
from mesh.stopping import cancel_within
from mesh.wire import protocol
from mesh.wire.connection import through_outage
from mesh.wire.consumer import ConsumerLoop, each

__all__ = ["QueueMaintenance", "expire_overdue", "move_max_delivered"]

log = logging.getLogger(__name__)


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
    try:
        task = decode(raw.data, headers.get(CONTENT_TYPE))
    except DecodeError:
        task = None
    generation = replay_generation(task) if task else 0
    if task is not None:
        stored = await stored_outcome(js, agent, task.id)
        if stored is not None and stored.decides(generation, real=False):
            # Its outcome is recorded (a success whose ack was lost, say): done, not dead.
            with contextlib.suppress(NotFoundError):
                await js.delete_msg(names.STREAM_TASKS, seq)
            return None
    state = await get_run(js, task.id) if task is not None else None
    if task is not None and (state is None or state.replay != generation):
        state = RunState(
            run_id=task.id, agent=agent, tenant=task.metadata.tenant,
            routing_key=task.metadata.routing_key, enqueued_at=task.created_at, replay=generation,
        )  # fmt: skip
    error = AttemptError(
        attempt=max(1, state.attempts if state else 0),
        error="no ack within the ack wait on the last delivery the server allows (worker crashed or hung)",
        error_type="MaxDeliveries",
    )
    errors = [*(state.errors if state else []), error]
    tenant = task.metadata.tenant if task else "default"
    run_id = task.id if task else named_run_id(raw.data, headers)  # an unread task may name its run
    await store_task_dead_letter(
        js, payload=raw.data, subject=raw.subject, headers=headers, agent=agent, errors=errors,
        reason="max deliveries reached", run_id=run_id,
        tenant=tenant, generation=generation if task is not None else None, seq=seq,
    )  # fmt: skip
    if task is not None and state is not None:
        state.errors, state.error = errors, error.error
        state.status, state.finished_at = RunStatus.FAILED, utcnow()
        # A presumed outcome of its own: a stalled last attempt that succeeds
        # after all is recorded and wins (not deduplicated against this one).
        await write_outcome(js, task, state, lost_msg_id(task.id, generation))
    with contextlib.suppress(NotFoundError):
        await js.delete_msg(names.STREAM_TASKS, seq)
    priority = int(raw.subject.rsplit(".", 1)[1])  # the lane's: af.tasks.<agent>.<priority>
    metrics.count_finished(agent, state.version if state else None, tenant, priority, metrics.FAILED)
    return run_id


async def _scan_runs(js: JetStreamContext) -> AsyncIterator[tuple[RunState, int]]:
    """Every run record (latest revision), with its revision, in one pass.

    An ephemeral last-per-subject consumer read until ``num_pending`` is 0:
    unlike a KV watch's end-of-initial-values marker, that cannot end early.
    """
    sub = await js.pull_subscribe(
        names.kv_subject(names.BUCKET_RUNS, ">"),
        stream=names.kv_stream(names.BUCKET_RUNS),
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
    """Why ``state`` is to be recorded as expired now, or None. Only a run that
    never started has a wait deadline (``expires_at``); a started one is the
    ack wait's business (a lost worker's task is redelivered)."""
    if state.status == RunStatus.QUEUED and state.expires_at is not None and state.expires_at + grace <= now:
        return f"TTL passed at {state.expires_at.isoformat()} before a worker started it"
    return None


async def expire_overdue(
    js: JetStreamContext, grace_s: float = 5.0, *, agent: str | None = None
) -> list[str]:
    """Record overdue runs (of ``agent`` only, if given) as expired and delete
    their tasks (see the module docstring); returns their run ids."""
    kv = await js.key_value(names.BUCKET_RUNS)
    now = utcnow()
    grace = timedelta(seconds=grace_s)
    expired: list[str] = []
    async for state, revision in _scan_runs(js):
        if agent is not None and state.agent != agent:
            continue
        reason = _overdue(state, now, grace)
        if reason is None:
            continue
        stored = await stored_outcome(js, state.agent, state.run_id)
        if stored is not None and stored.decides(state.replay, real=False):
            continue  # its outcome is recorded; the projection lags
        seq = state.seq
        state.status, state.finished_at, state.error = RunStatus.EXPIRED, now, reason
        try:  # compare-and-set: a worker that just claimed or finished it wins
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
        event_id = expired_msg_id(state.run_id, state.replay)
        await through_outage(functools.partial(write_outcome, js, task, state, event_id))
        if seq is not None:  # the task itself: no worker may start it now
            with contextlib.suppress(NotFoundError):
                await js.delete_msg(names.STREAM_TASKS, seq)
        metrics.count_finished(state.agent, state.version, state.tenant, state.priority, metrics.EXPIRED)
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
        self._mover: ConsumerLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.moved = 0

    async def start(self) -> None:
        await self.js.add_consumer(
            names.STREAM_ADVISORIES,
            ConsumerConfig(
                durable_name=names.CONSUMER_DLQ_MOVER, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, ack_wait=60, max_deliver=-1,
            ),
        )  # fmt: skip
        self._stopping = False
        self._mover = ConsumerLoop(
            self.nc, names.STREAM_ADVISORIES, names.CONSUMER_DLQ_MOVER, each(self._move, 2.0),
            batch=32, idle_s=self.poll_s, retry_delay_s=2.0, api_prefix=protocol.api_prefix(self.js),
        )  # fmt: skip
        await self._mover.start()
        self._tasks = [
            asyncio.create_task(self._every(self.expiry_interval_s, self._expire), name="expiry"),
            asyncio.create_task(self._every(self.stats_interval_s, self._stats), name="stats"),
        ]

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the loops by ``timeout`` s from now: the dead-letter mover (a
        :class:`~mesh.wire.consumer.ConsumerLoop`: a batch in hand may finish,
        what it took and did not move is handed back) and the periodic jobs,
        side by side. One cancel is not enough (:mod:`mesh.stopping`): a loop
        still running is cancelled again each second, and past the deadline it
        is left behind with a warning rather than waited for.
        """
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + timeout

        async def jobs() -> None:
            running = await cancel_within(self._tasks, deadline)
            if running:
                names_left = ", ".join(sorted(task.get_name() for task in running))
                log.warning(
                    "queue maintenance: %s still running %.0f s after stop; abandoned", names_left, timeout
                )

        await asyncio.gather(
            jobs(), self._mover.stop(deadline) if self._mover is not None else asyncio.sleep(0)
        )

    async def _move(self, msg: Msg) -> None:
        try:
            await move_max_delivered(self.js, msg.data)
        except Exception as exc:  # try again later, backing off up to a minute
            attempt, _ = protocol.delivery_of(msg)
            log.warning("dlq mover could not move %s (try %d): %s", msg.data[:200], attempt, exc)
            await msg.nak(delay=min(60.0, 2.0 ** min(attempt, 6)))
            return
        await msg.ack()
        self.moved += 1

    async def _every(self, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        while not self._stopping:
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
        stats = await queue_stats(self.js)
        await jetstream_stats(self.js)
        await limit_stats(self.js)
        await canary_stats(self.js)
        return stats
