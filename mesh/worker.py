"""Task worker: pulls tasks by priority, runs a handler, records the outcome, acks.

Guarantees:

* **At-least-once delivery, exactly-once effect on state**: the outcome (run
  state in KV and the ``execution.finished`` event, deduplicated by run id)
  is durably written *before* the double ack (``ack_sync``). A crash at any
  point means a redelivery, never a lost task; a redelivered task whose
  outcome is already recorded is acked without running again. Side effects
  inside a handler must be fenced by :attr:`TaskContext.run_id`, because the
  server can accept a late ack from a stalled worker.
* **Visibility**: every in-flight task gets ``in_progress`` heartbeats at a
  third of its ack wait, so a long run is never redelivered while alive; a
  crashed worker's tasks come back after the ack wait.
* **Retries** use delayed redelivery (``nak`` with exponential backoff and
  jitter), never an instant storm. After the last attempt, or on a
  :class:`PermanentError`, the task goes to the DLQ with its history.
* **Drain** (``stop``): stop pulling, let in-flight work finish within the
  drain timeout, and ``nak`` (no delay) whatever is left so another worker
  takes it at once.
* **Claims**: a task's TTL bounds how long it may *wait*; the server removes
  the message at the TTL even while a worker runs it. So a run still going
  when its TTL is about to pass is *claimed*: its state becomes ``running``
  with a lease the worker renews, and the reaper leaves it alone until the
  lease lapses (the worker was lost: the run is recorded as expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mesh import lean, metrics, names
from mesh.dispatch import Budget, DispatchPolicy, Lane
from mesh.dlq import AttemptError, DeadLetter, dead_letter
from mesh.envelope import (
    CONTENT_TYPE,
    Envelope,
    decode,
    utcnow,
)
from mesh.errors import DecodeError
from mesh.outcome import (
    OutcomeMessage,
    finished_msg_id,
    outcome_message,
    replay_generation,
    stored_outcome_id,
    success_message,
)
from mesh.pipeline import Pipeline, parse_puback
from mesh.puller import Puller
from mesh.runs import RunState, RunStatus, get_run, put_run, run_key

__all__ = ["AgentQueueConfig", "PermanentError", "TaskContext", "TaskWorker"]

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """Raised by a handler for an error no retry can fix (bad input, a bug)."""


@dataclass(frozen=True, slots=True)
class AgentQueueConfig:
    agent: str
    ack_wait_s: float = 300.0
    max_attempts: int = 3
    concurrency: int | None = None  # over all its priorities; None: the worker's concurrency only
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_ack_pending: int = 1000
    priorities: Sequence[int] = (0, 1, 2, 3, 4)

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff before attempt ``attempt + 1``."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return max(0.05, random.uniform(ceiling / 2, ceiling))


@dataclass
class TaskContext:
    """What a handler sees of its task."""

    run_id: str
    agent: str
    tenant: str
    routing_key: str | None
    attempt: int
    input: Any
    envelope: Envelope
    _report: Callable[[float], Awaitable[None]] = field(repr=False)

    async def report_progress(self, percent: float) -> None:
        await self._report(max(0.0, min(100.0, float(percent))))


Handler = Callable[[TaskContext], Awaitable[Any]]


MANY_LANES = 10  # past this many lanes, sweeps ask the stream which lanes hold tasks first
CLAIM_AHEAD_S = 3.0  # claim a run this long before its TTL passes
LEASE_S = 30.0  # a claim lasts this long; renewed at a third left


@dataclass(eq=False, slots=True)
class _InFlight:
    msg: Msg
    lane: Lane[Puller]
    task: Envelope | None = None  # known once decoded
    running: Callable[[], RunState] | None = None  # the run state, built on demand
    lease_until: datetime | None = None  # claimed until
    finishing: bool = False  # the handler returned: its outcome is being written


class TaskWorker:
    """Serves tasks of the agents in ``handlers``. Own it with ``start()``/``stop()``."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        handlers: dict[str, tuple[AgentQueueConfig, Handler]],
        *,
        concurrency: int = 16,
        policy: DispatchPolicy | None = None,
        idle_poll_s: float = 1.0,
        claim_interval_s: float | None = 1.0,
        name: str = "worker",
    ) -> None:
        """``claim_interval_s``: how often runs near their TTL are claimed
        (None: never, for tests of what happens without)."""
        self.nc, self.js = nc, js
        self.handlers = handlers
        self.concurrency = concurrency
        self.policy = policy or DispatchPolicy()
        self.idle_poll_s = idle_poll_s
        self.claim_interval_s = claim_interval_s
        self.name = name
        self.lanes: list[Lane[Puller]] = []
        self._lane_of: dict[str, Lane[Puller]] = {}  # task subject -> lane
        self.completed = 0  # tasks that succeeded and were acked by this worker
        self._inflight: dict[asyncio.Task[None], _InFlight] = {}
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.pipeline = Pipeline(nc)

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        for agent, (cfg, _) in self.handlers.items():
            # The agent's concurrency holds across its priority lanes.
            budget = Budget(cfg.concurrency) if cfg.concurrency else None
            for priority in cfg.priorities:
                await ensure_lane(self.js, cfg, priority)
                puller = Puller(self.nc, names.STREAM_TASKS, names.task_consumer(agent, priority))
                await puller.start()
                # Never more in flight on a lane than its consumer lets be unacked:
                # past max_ack_pending the server answers pulls with 409s, and a
                # worker that keeps asking degrades to one message per round trip
                # (measured at concurrency 1,024 over 1,000: 2,800-6,400 tasks/s,
                # 17,000 with this cap and the wait for room below).
                limit = min(self.concurrency, cfg.max_ack_pending)
                self.lanes.append(Lane(agent, priority, puller, limit=limit, budget=budget))
                self._lane_of[names.task_subject(agent, priority)] = self.lanes[-1]
        await self.pipeline.start()
        self._room.set()
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name=f"{self.name}-dispatch"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat"),
        ]
        if self.claim_interval_s is not None:
            self._loops.append(asyncio.create_task(self._claim_loop(), name=f"{self.name}-claims"))

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Graceful drain; see the module docstring."""
        self._stopping.set()
        self._room.set()
        for loop in self._loops[:1]:
            loop.cancel()
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=drain_timeout)
            for task in pending:
                item = self._inflight.get(task)
                task.cancel()
                if item is not None:
                    with contextlib.suppress(Exception):
                        await item.msg.nak()
        for loop in self._loops[1:]:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # Lingering pulls may still deliver for up to idle_poll_s: hand those back.
        closed = await asyncio.gather(
            *(lane.source.close(settle_s=self.idle_poll_s + 0.5) for lane in self.lanes)
        )
        for msgs in closed:
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()
        self.lanes.clear()
        await self.pipeline.stop()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # ---- pulling -----------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self._inflight)
            if free <= 0 or not any(lane.has_room for lane in self.lanes):
                # Full, in total or on every lane: a finishing task makes room.
                self._room.clear()
                await self._room.wait()
                continue
            try:
                got = await self._sweep(free)
                if not got:
                    many = len(self.lanes) > MANY_LANES
                    got = await (self._idle_wait_many(free) if many else self._idle_wait())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down: back off, keep the loop alive
                log.warning("%s: pull failed: %s", self.name, exc)
                await asyncio.sleep(0.25)
                continue
            for lane, msgs in got:
                for msg in msgs:
                    self._launch(lane, msg)

    async def _sweep(self, free: int) -> list[tuple[Lane[Puller], list[Msg]]]:
        order = self.policy.order(self.lanes)
        if len(self.lanes) > MANY_LANES:
            # A worker serving many agents asks the stream once which lanes hold
            # tasks, instead of one empty pull per lane (100 agents: 500 lanes).
            stored = await self._stored_lanes()
            order = [lane for lane in order if lane in stored or lane.source.ready]
        for lane in order:
            room = min(free, lane.room)
            msgs = await lane.source.take(room)
            if msgs:
                return [(lane, msgs)]
        return []

    async def _idle_wait(self) -> list[tuple[Lane[Puller], list[Msg]]]:
        """Nothing ready on any lane with room: one lingering pull per such lane,
        first answer wins. A full lane (at its limit) takes no pull; if a task
        of it finishes meanwhile, the wait ends so the next sweep can serve it.

        Answers that come later wait in their puller's buffer for the next sweep.
        """
        lanes = [lane for lane in self.lanes if lane.has_room]
        # One lingering pull per lane at most: a lane whose pull from an earlier
        # wait is still open (that wait ended early) waits on it, adds none.
        waits: dict[asyncio.Future[Any], Lane[Puller]] = {
            asyncio.ensure_future(
                lane.source.arrival(1) if lane.source.outstanding else lane.source.wait(1, self.idle_poll_s)
            ): lane
            for lane in lanes
        }
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        wake = {stop}
        if len(lanes) < len(self.lanes):
            self._room.clear()
            wake.add(asyncio.ensure_future(self._room.wait()))
        try:
            pending: set[asyncio.Future[Any]] = set(waits)
            while pending:
                done, pending = await asyncio.wait(pending | wake, return_when=asyncio.FIRST_COMPLETED)
                pending -= wake
                got: list[tuple[Lane[Puller], list[Msg]]] = [
                    (waits[f], f.result()) for f in done if f in waits and f.result()
                ]
                if got or done & wake:
                    return got
            return []
        finally:
            for w in wake:
                w.cancel()
            for f in waits:
                if not f.done():
                    f.cancel()

    async def _stored_lanes(self) -> set[Lane[Puller]]:
        """This worker's lanes with tasks in the stream (waiting or in flight somewhere)."""
        info = await self.js.stream_info(names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.>")
        subjects = info.state.subjects or {}
        return {lane for subject, lane in self._lane_of.items() if subjects.get(subject)}

    async def _idle_wait_many(self, free: int) -> list[tuple[Lane[Puller], list[Msg]]]:
        """Nothing ready, many lanes: instead of a lingering pull per lane, listen
        to the task subjects themselves until one of ours is published (or a full
        lane gets room, or ``idle_poll_s`` passes); the next sweep then pulls it.
        Listening only while idle: a busy worker does not see every publish.
        Redeliveries and delayed retries publish nothing: the ``idle_poll_s``
        sweep finds those."""
        published = asyncio.Event()

        def on_task(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            lane = self._lane_of.get(subject.decode())
            if lane is not None and lane.has_room:
                published.set()

        # Only our agents' subjects when they are few; past that, one wildcard
        # (fewer subscriptions to make and drop on every idle spell).
        agents = sorted({lane.agent for lane in self.lanes})
        subjects = [f"{names.TASKS_PREFIX}.>"] if len(agents) > 10 else [
            f"{names.TASKS_PREFIX}.{agent}.*" for agent in agents
        ]  # fmt: skip
        listeners = [lean.DirectInbox(self.nc, subject, on_task) for subject in subjects]
        for listener in listeners:
            await listener.start()
        try:
            # A task stored before the subscription took effect is in the stream:
            # this sweep goes after the SUB on the same connection. (A lane whose
            # tasks are all in flight elsewhere answers 404: nothing to spin on.)
            got = await self._sweep(free)
            if got:
                return got
            wake = [asyncio.ensure_future(published.wait()), asyncio.ensure_future(self._stopping.wait())]
            if not all(lane.has_room for lane in self.lanes):
                self._room.clear()
                wake.append(asyncio.ensure_future(self._room.wait()))
            try:
                await asyncio.wait(wake, timeout=self.idle_poll_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in wake:
                    w.cancel()
            return []
        finally:
            for listener in listeners:
                await listener.stop()

    def _launch(self, lane: Lane[Puller], msg: Msg) -> None:
        lane.started()
        item = _InFlight(msg, lane)
        task = asyncio.create_task(self._run_guarded(item))
        self._inflight[task] = item
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        item = self._inflight.pop(task, None)
        if item is not None:
            item.lane.finished()
        self._room.set()

    async def _heartbeat_loop(self) -> None:
        """``in_progress`` for every in-flight task at a third of its ack wait."""
        period = min(cfg.ack_wait_s for cfg, _ in self.handlers.values()) / 3
        while True:
            await asyncio.sleep(period)
            for item in list(self._inflight.values()):
                with contextlib.suppress(Exception):
                    await item.msg.in_progress()

    async def _claim_loop(self) -> None:
        """Claim runs whose TTL is about to pass while they run; renew claims."""
        assert self.claim_interval_s is not None
        while True:
            await asyncio.sleep(self.claim_interval_s)
            now = utcnow()
            for item in list(self._inflight.values()):
                if item.finishing or item.running is None or item.task is None:
                    continue
                ttl = item.task.metadata.ttl_s
                if not ttl:
                    continue
                due = item.task.created_at + timedelta(seconds=ttl - CLAIM_AHEAD_S)
                if item.lease_until is not None:
                    due = item.lease_until - timedelta(seconds=LEASE_S / 3)
                if now < due:
                    continue
                state = item.running()
                state.lease_until = now + timedelta(seconds=LEASE_S)
                try:
                    # Sent while ``finishing`` is still False (see _write_state).
                    await self._write_state(state)
                    item.lease_until = state.lease_until
                except Exception as exc:  # NATS away: the next round tries again
                    log.warning("%s: could not claim %s: %s", self.name, state.run_id, exc)

    async def _write_state(self, state: RunState) -> None:
        """A running run's state, through the pipeline: buffered on the connection
        before this yields, so it goes out before any outcome written after the
        caller saw ``finishing`` False, and never lands on top of a final state."""
        data = state.model_dump_json().encode()
        parse_puback(await (await self.pipeline.request(run_key(state.run_id), data)))

    # ---- running -----------------------------------------------------------

    async def _run_guarded(self, item: _InFlight) -> None:
        """Run one task; if recording its outcome fails (NATS away), hand it back
        soon rather than after the full ack wait. The outcome writes are
        idempotent, so the next delivery finishes the job."""
        msg = item.msg
        try:
            await self._run(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: could not finish %s: %s", self.name, msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _run(self, item: _InFlight) -> None:
        lane, msg = item.lane, item.msg
        cfg, handler = self.handlers[lane.agent]
        attempt, _ = lean.delivery_of(msg)
        started = utcnow()
        try:
            task = decode(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            payload = task.payload if isinstance(task.payload, dict) else {}
        except DecodeError as exc:
            await self._undecodable(lane, msg, exc)
            return
        # A first attempt starts from its task alone: the run state (a model)
        # is built only when it is written (progress, a retry) or must carry
        # earlier attempts' errors, never on the common path.
        state: RunState | None = None
        if attempt > 1:
            if await _outcome_recorded(self.js, lane.agent, task):
                await self.pipeline.ack_sync(msg)  # outcome already recorded by an earlier delivery
                return
            state = await get_run(self.js, task.id)
            if state is not None and state.status.finished:  # an earlier replay generation's outcome
                state.result, state.finished_at = None, None
            state = _running(state or _state_from(task, lane.agent), attempt, started)

        def current() -> RunState:
            nonlocal state
            if state is None:
                state = _running(_state_from(task, lane.agent), attempt, started)
            return state

        async def report(percent: float) -> None:
            if item.finishing:  # a report not awaited by the handler, arriving late
                return
            running = current()
            running.progress = percent
            await self._write_state(running)

        item.task, item.running = task, current  # for claims (see _claim_loop)

        ctx = TaskContext(
            run_id=task.id, agent=lane.agent, tenant=task.metadata.tenant,
            routing_key=task.metadata.routing_key, attempt=attempt,
            input=payload.get("input"), envelope=task, _report=report,
        )  # fmt: skip
        t0 = time.perf_counter()
        series = metrics.for_agent(lane.agent)
        series.wait.observe(max(0.0, (started - task.created_at).total_seconds()))
        try:
            result = await handler(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            item.finishing = True
            series.run.observe(time.perf_counter() - t0)
            await self._failed(cfg, lane, msg, task, current(), attempt, exc)
            return
        item.finishing = True
        series.run.observe(time.perf_counter() - t0)
        if state is None:
            outcome = success_message(task, lane.agent, attempt, started, utcnow(), result)
        else:
            state.status, state.result, state.progress = RunStatus.SUCCEEDED, result, 100.0
            state.finished_at = utcnow()
            outcome = outcome_message(task, state)
        await self._record_outcome(outcome)
        await self.pipeline.ack_sync(msg)
        self.completed += 1
        series.completed.inc()

    async def _record_outcome(self, outcome: OutcomeMessage) -> None:
        """The execution event, durable before the ack (the server projects it into ``af_runs``)."""
        subject, data, headers = outcome
        parse_puback(await (await self.pipeline.request(subject, data, headers)))

    async def _failed(
        self,
        cfg: AgentQueueConfig,
        lane: Lane[Puller],
        msg: Msg,
        task: Envelope,
        state: RunState,
        attempt: int,
        exc: Exception,
    ) -> None:
        metrics.TASKS_FAILED.labels(lane.agent).inc()
        retryable = not isinstance(exc, PermanentError)
        state.errors.append(
            AttemptError(attempt=attempt, error=str(exc)[:8000] or type(exc).__name__,
                         error_type=type(exc).__name__, retryable=retryable)
        )  # fmt: skip
        state.error = f"{type(exc).__name__}: {exc}"
        if retryable and attempt < cfg.max_attempts:
            state.status, state.lease_until = RunStatus.QUEUED, None
            await _put_run_retrying(self.js, state)
            await msg.nak(delay=cfg.backoff(attempt))
            metrics.TASKS_RETRIED.labels(lane.agent).inc()
            return
        reason = "permanent error" if not retryable else f"failed {attempt} attempts"
        await self.dead_letter_task(msg, task, state, reason)
        await self.pipeline.ack_sync(msg)

    async def dead_letter_task(self, msg: Msg, task: Envelope, state: RunState, reason: str) -> None:
        """DLQ entry, final state and event: all durable before the original is removed."""
        await dead_letter(
            self.js,
            DeadLetter.of(
                payload=msg.data, origin="tasks", name=state.agent, subject=msg.subject,
                headers=dict(msg.headers or {}), errors=state.errors, reason=reason,
                tenant=state.tenant, run_id=state.run_id,
                first_attempt_at=state.errors[0].at if state.errors else None,
            ),
            dedup_id=f"tasks-{state.run_id}-{replay_generation(task)}",
        )  # fmt: skip
        state.status, state.finished_at = RunStatus.FAILED, utcnow()
        await self._record_outcome(outcome_message(task, state))
        metrics.TASKS_DEAD_LETTERED.labels(state.agent).inc()

    async def _undecodable(self, lane: Lane[Puller], msg: Msg, exc: DecodeError) -> None:
        log.warning("%s: undecodable task on %s: %s", self.name, msg.subject, exc)
        metrics.TASKS_DEAD_LETTERED.labels(lane.agent).inc()
        seq = msg.metadata.sequence.stream
        await dead_letter(
            self.js,
            DeadLetter.of(
                payload=msg.data, origin="tasks", name=lane.agent, subject=msg.subject,
                headers=dict(msg.headers or {}), reason=f"undecodable: {exc}",
                errors=[AttemptError(attempt=1, error=str(exc), error_type="DecodeError",
                                     retryable=False)],
            ),
            dedup_id=f"tasks-seq-{seq}",
        )  # fmt: skip
        await self.pipeline.ack_sync(msg)


async def _outcome_recorded(js: JetStreamContext, agent: str, task: Envelope) -> bool:
    """Was this delivery's outcome (this replay generation) already written?"""
    stored = await stored_outcome_id(js, agent, task.id)
    return stored == finished_msg_id(task.id, replay_generation(task))


async def _put_run_retrying(js: JetStreamContext, state: RunState, tries: int = 4) -> None:
    """Cold-path state write that rides out a short NATS outage (a restart), so
    an attempt's error is not lost from the history the DLQ will carry."""
    for attempt in range(1, tries + 1):
        try:
            await put_run(js, state)
            return
        except Exception:
            if attempt == tries:
                raise
            await asyncio.sleep(0.5 * attempt)


def _running(state: RunState, attempt: int, started: datetime) -> RunState:
    state.status, state.attempts, state.started_at = RunStatus.RUNNING, attempt, started
    return state


def _state_from(task: Envelope, agent: str) -> RunState:
    payload = task.payload if isinstance(task.payload, dict) else {}
    ttl = task.metadata.ttl_s
    return RunState(
        run_id=task.id, agent=agent, tenant=task.metadata.tenant,
        routing_key=task.metadata.routing_key, priority=int(task.metadata.priority),
        idempotency_key=payload.get("idempotency_key"), enqueued_at=task.created_at,
        expires_at=task.created_at + timedelta(seconds=ttl) if ttl else None,
        replay=replay_generation(task),
    )  # fmt: skip


async def ensure_lane(js: JetStreamContext, cfg: AgentQueueConfig, priority: int) -> None:
    """Create (or update) the durable pull consumer of one (agent, priority) lane."""
    name = names.task_consumer(cfg.agent, priority)
    config = ConsumerConfig(
        durable_name=name,
        filter_subject=names.task_subject(cfg.agent, priority),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=cfg.ack_wait_s,
        max_deliver=cfg.max_attempts,
        max_ack_pending=cfg.max_ack_pending,
        max_waiting=512,
    )
    await js.add_consumer(names.STREAM_TASKS, config)
