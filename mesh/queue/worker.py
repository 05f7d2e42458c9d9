"""Task worker: pulls tasks by priority, runs a handler, records the outcome, acks.

Guarantees:

* **At-least-once delivery, one recorded outcome**: the outcome (the
  ``execution.finished`` event, projected into the run state) is durably
  written *before* the double ack (``ack_sync``), with compare-and-set on the
  run's event subject (:func:`mesh.queue.outcome.record_outcome`), so a run and
  replay generation gets one outcome for good, however often it is delivered
  or run. A redelivered task whose outcome is already recorded is acked
  without running again. Side effects inside a handler must be fenced by
  :attr:`TaskContext.run_id`: a worker stalled past its ack wait (or killed
  after its effect, before its outcome) means the handler runs again.
* **Run state writes never overwrite a final state**: progress, claims and
  retry errors are compare-and-set on the record's revision and stop once
  the record is final.
* **Visibility**: every task a worker holds — running or buffered, waiting
  to start — gets ``in_progress`` heartbeats at a third of its ack wait, so
  it is never redelivered while the worker lives; a crashed worker's tasks
  come back after the ack wait.
* **Attempts count runs started, not deliveries**: a delivery handed back
  unstarted (a drain) is recorded as returned (``RunState.returned``) before
  its ``nak``. A redelivery whose previous attempt left no outcome counts
  that attempt as lost; past ``max_attempts`` the task is dead-lettered
  without running again, with a *presumed* outcome that a stalled worker
  finishing after all still supersedes.
* **Retries** use delayed redelivery (``nak`` with exponential backoff and
  jitter), never an instant storm. After the last attempt, or on a
  :class:`PermanentError`, the task goes to the DLQ with its history.
* **Outcomes always fit** (:mod:`mesh.limits`): a result too large to record
  fails the run permanently (:class:`~mesh.limits.ResultTooLarge`); an
  outcome write that fails for a moment (NATS restarting) is retried for up
  to 15 s before the task is handed back, so a short outage does not rerun it.
* **TTL = how long a task may wait for its first start.** Tasks carry no
  server TTL (the server would remove a task under a running worker). A
  first start past the deadline records the run as expired and does not run
  it; the reaper (:mod:`mesh.queue.maintenance`) expires and deletes tasks still
  waiting. A run still going near its deadline is *claimed* (state
  ``running``) so the reaper leaves it alone.
* **Drain** (``stop``): stop pulling, let in-flight work finish within the
  drain timeout, and hand back (``nak``, no delay) whatever is left so
  another worker takes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError
from pydantic import ValidationError
from pydantic_core import to_json

from mesh import names, trace
from mesh.backoff import backoff_s
from mesh.deadletters import AttemptError
from mesh.envelope import (
    CONTENT_TYPE,
    Envelope,
    MessageType,
    Metadata,
    decode,
    named_run_id,
    utcnow,
)
from mesh.errors import WRONG_LAST_SEQUENCE, DecodeError, PermanentError
from mesh.limits import PayloadLimits, ResultTooLarge
from mesh.queue import metrics
from mesh.queue.agent_config import ConfigWatch
from mesh.queue.breakers import BreakerState, BreakerStatus, breaker_scope, claim_trial, follow_breakers
from mesh.queue.dispatch import Budget, DispatchPolicy, Lane
from mesh.queue.dlq import store_task_dead_letter
from mesh.queue.gates import Gate, GateWatch, HeldBy, Probes
from mesh.queue.outcome import (
    OutcomeMessage,
    expired_msg_id,
    lost_msg_id,
    outcome_message,
    record_outcome,
    replay_generation,
    stored_outcome,
    success_message,
    wait_deadline,
)
from mesh.queue.producer import CALL_DEPTH_HEADER
from mesh.queue.runs import ModelUsage, RunState, RunStatus, get_run_entry, run_key
from mesh.queue.slots import ConcurrencyQuotas
from mesh.queue.spans import Attempt, outcome_span, stamped
from mesh.wire import protocol
from mesh.wire.connection import through_outage
from mesh.wire.publisher import Pipeline, parse_puback
from mesh.wire.puller import Puller

__all__ = ["AgentQueueConfig", "PermanentError", "TaskContext", "TaskWorker", "ensure_lane", "has_lane"]

log = logging.getLogger(__name__)
_NO_PROBES = Probes()
_GAUGE = {BreakerStatus.CLOSED: 0, BreakerStatus.HALF_OPEN: 1, BreakerStatus.OPEN: 2}  # as af_breaker_state


class Companion(Protocol):
    """Something that lives as long as a worker (:meth:`TaskWorker.attach`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


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
    version: str | None = None  # the agent version this worker runs: on every finished event

    @property
    def max_deliveries(self) -> int:
        """The consumer's ``max_deliver``: a backstop only. Attempts are counted by
        the worker (runs started); deliveries handed back unstarted (drains)
        are not attempts, so the server must allow more deliveries than that."""
        return self.max_attempts + HAND_BACK_ALLOWANCE

    def backoff(self, attempt: int) -> float:
        """Exponential backoff before attempt ``attempt + 1``, half of it jitter."""
        return backoff_s(attempt, self.backoff_base_s, self.backoff_max_s, jitter=0.5, floor_s=0.05)


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
    #: Set by a handler that measured what running it cost (a sandboxed run's
    #: audit record): carried on the finished event and kept with the execution.
    audit: dict[str, Any] | None = None
    #: Model tokens the handler reported (:meth:`report_usage`), carried on the finished event.
    usage: list[dict[str, Any]] | None = None
    #: How many agent calls deep this run is (0: nobody's run asked for it; agents.calls).
    call_depth: int = 0

    @property
    def correlation_id(self) -> str | None:
        return self.envelope.correlation_id

    async def report_progress(self, percent: float) -> None:
        await self._report(max(0.0, min(100.0, float(percent))))

    def report_usage(self, model: str, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Record tokens spent on ``model`` (priced by metering). Raises ``ValidationError``
        for a negative count or an empty model name."""
        usage = ModelUsage(model=model, input_tokens=input_tokens, output_tokens=output_tokens)
        if self.usage is None:
            self.usage = []
        self.usage.append(usage.model_dump())


Handler = Callable[[TaskContext], Awaitable[Any]]


MANY_LANES = 10  # past this many lanes, sweeps ask the stream which lanes hold tasks first
CLAIM_AHEAD_S = 3.0  # claim a run this long before its wait deadline passes
SHOW_RUNNING_AFTER_S = 1.0  # a run going this long gets its "running" state written (one KV write)
HAND_BACK_ALLOWANCE = 50  # deliveries past max_attempts before the server gives up (backstop)
PLACEMENT_RETURN_MAX_S = 5.0  # a task for other workers comes back after 0.1 s x deliveries, at most this
QUOTA_RETURN_DELAY_S = 2.0  # a task handed back for a full concurrency quota comes back after this
QUOTA_RECHECK_S = 1.0  # a task waiting for a slot tries again at least this often
READ_TRIES = 8  # a redelivery's reads before its handler: tried again for up to 14 s
RECORD_PATIENCE_S = 15.0  # how long an outcome write rides out a NATS outage before a hand-back
_LOST = "no outcome within the ack wait: the worker was lost (crashed, killed or stalled)"


@dataclass(eq=False, slots=True)
class _InFlight:
    msg: Msg
    lane: Lane[Puller]
    task: Envelope | None = None  # known once decoded
    running: Callable[[], RunState] | None = None  # the run state, built on demand
    claimable: bool = False  # a first start whose record may still say "queued" with a deadline
    finishing: bool = False  # the handler returned: its outcome is being written
    revision: int | None = None  # the run record's KV revision last seen or written (compare-and-set)
    settled: bool = False  # the record is final (or a later generation's): no more state writes
    cancelled: bool = False  # stopped by a cancel request (mesh.queue.cancel), which recorded its outcome
    stopped: bool = False  # force-stopped by its agent's dispatch gate: handed back
    started: datetime | None = None  # when this attempt started (once decoded)
    shown: bool = False  # its running state is written (a progress report, a claim, or running long)
    wants_slot: bool = False  # its agent has a concurrency quota and it holds no slot yet (mesh.queue.slots)
    traced: Attempt | None = None  # its spans, when this process records any (mesh.queue.spans)


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
        follow_gates: bool = True,
        obey_breakers: bool = True,
        obey_quotas: bool = True,
        role: str = "pool",
        config: ConfigWatch | None = None,
    ) -> None:
        """``claim_interval_s``: how often runs near their TTL are claimed
        (None: never, for tests of what happens without). ``follow_gates``:
        obey the agents' dispatch gates (:mod:`mesh.queue.gates`). ``role``:
        ``pool`` (shared workers) or ``dedicated`` (an agent's own workers,
        the only ones a dedicated agent's gate is open to). ``obey_breakers``: obey
        the agents' circuit breakers (:mod:`mesh.queue.breakers`). ``obey_quotas``: keep the
        fleet-wide concurrency quotas (:mod:`mesh.queue.slots`). ``config``: the
        agents' live config (started and stopped with this worker); a tenant's
        ``pinned_version`` and ``mode`` decide which workers run its tasks
        (:meth:`_misplaced`)."""
        self.nc, self.js = nc, js
        self.handlers = handlers
        # Each agent's version (on its finished events, for canary metrics); None: not known.
        self.versions = {agent: cfg.version for agent, (cfg, _) in handlers.items()}
        self.concurrency = concurrency
        self.policy = policy or DispatchPolicy()
        self.idle_poll_s = idle_poll_s
        self.claim_interval_s = claim_interval_s
        self.name = name
        self.role = role
        # Who ran a run, as its record says: findable in logs and on the host.
        self.identity = f"{name}@{socket.gethostname()}/{os.getpid()}"
        self.limits = PayloadLimits.of(nc.max_payload)
        self.lanes: list[Lane[Puller]] = []
        self._lane_of: dict[str, Lane[Puller]] = {}  # task subject -> lane
        self.completed = 0  # tasks that succeeded and were acked by this worker
        self._inflight: dict[asyncio.Task[None], _InFlight] = {}
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.pipeline = Pipeline(nc)
        self._cancels: list[Subscription] = []
        self.gates = GateWatch(nc, js, list(handlers), self._on_gate) if follow_gates else None
        # Each agent's breaker, and its version's when the version is known (a canary's own).
        self._breaker_scopes = {
            a: [a] + ([breaker_scope(a, v)] if v is not None else []) for a, v in self.versions.items()
        }
        scopes = [scope for scopes in self._breaker_scopes.values() for scope in scopes]
        self.breakers = follow_breakers(nc, js, scopes, self._on_breaker) if obey_breakers else None
        self.quotas = ConcurrencyQuotas(nc, js, self._on_slots) if obey_quotas else None
        self._slots_held: dict[str, tuple[list[str], float]] = {}  # run id -> (scopes, lease s)
        self._slot_waits: dict[str, int] = {}  # scope -> tasks here waiting for one of its slots
        self._slot_rechecks: dict[str, asyncio.TimerHandle] = {}  # agent -> a lease's end
        self._slots_warned = -10.0  # when a failed claim was last logged (monotonic)
        self._slot_pending: dict[str, int] = {}  # agent -> its tasks here that want a slot, hold none
        self.probes: dict[str, Probes] = {}  # what each agent's health probes last said here
        self._companions: list[Companion] = [config] if config is not None else []
        self.config = config
        self._gate_returns: set[asyncio.Task[None]] = set()

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        for agent, (cfg, _) in self.handlers.items():
            # The agent's concurrency holds across its priority lanes.
            budget = Budget(cfg.concurrency) if cfg.concurrency else None
            for priority in cfg.priorities:
                await ensure_lane(self.js, cfg, priority)
                puller = Puller(
                    self.nc,
                    names.STREAM_TASKS,
                    names.task_consumer(agent, priority),
                    protocol.api_prefix(self.js),
                )
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
        if self.gates is not None:  # before the first pull: a closed agent takes nothing
            await self.gates.start()
        if self.breakers is not None:  # likewise an agent whose breaker is open
            await self.breakers.start()
        if self.quotas is not None:  # and one whose concurrency quota is taken up
            await self.quotas.start()
            self._on_slots("*")
        for companion in self._companions:  # e.g. health probes: also before the first pull
            await companion.start()
        self._cancels = [
            await self.nc.subscribe(names.cancel_subject(agent), cb=self._on_cancel)
            for agent in self.handlers
        ] + [
            await self.nc.subscribe(names.inflight_subject(agent), cb=self._on_held_query)
            for agent in self.handlers
        ]
        self._room.set()
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name=f"{self.name}-dispatch"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat"),
        ]
        if self.claim_interval_s is not None:
            self._loops.append(asyncio.create_task(self._claim_loop(), name=f"{self.name}-claims"))

    def attach(self, companion: Companion) -> None:
        """Start ``companion`` with this worker (after its lanes exist, before its
        first pull) and stop it once the worker has stopped (after its drain)."""
        self._companions.append(companion)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Graceful drain; see the module docstring."""
        self._stopping.set()
        self._room.set()
        for loop in self._loops[:1]:
            loop.cancel()
        if self.gates is not None:
            await self.gates.stop()
        if self.breakers is not None:
            await self.breakers.stop()
        if self._gate_returns:  # hand-backs under way finish (else they wait out their ack wait)
            await asyncio.wait(list(self._gate_returns), timeout=self.idle_poll_s + 2.0)
            for returning in list(self._gate_returns):
                returning.cancel()
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=drain_timeout)
            for task in pending:  # started and cut short: these count as attempts
                item = self._inflight.get(task)
                task.cancel()
                if item is not None:
                    with contextlib.suppress(Exception):
                        await item.msg.nak()
        for loop in self._loops[2:]:  # no more claims; the heartbeats go on while handing back
            loop.cancel()
        # Lingering pulls may still deliver for up to idle_poll_s: hand those
        # back, each recorded as returned (not an attempt) before its nak.
        closed = await asyncio.gather(
            *(lane.source.close(settle_s=self.idle_poll_s + 0.5) for lane in self.lanes)
        )
        await asyncio.gather(
            *(
                self._hand_back(lane.agent, msg)
                for lane, msgs in zip(self.lanes, closed, strict=True)
                for msg in msgs
            )
        )
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self.lanes.clear()
        for sub in self._cancels:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._cancels = []
        await self.pipeline.stop()
        if self.quotas is not None:
            await self.quotas.stop()
        for handle in self._slot_rechecks.values():
            handle.cancel()
        for companion in reversed(self._companions):  # last: a sandbox serves the drain's runs
            await companion.stop()

    async def _on_cancel(self, msg: Msg) -> None:
        """A run was cancelled (its outcome is recorded already, :mod:`mesh.queue.cancel`):
        stop its handler here if this worker runs it. One whose outcome is being
        written is left to finish that write, which finds the cancel and yields."""
        run_id = msg.data.decode(errors="replace")
        for task, item in list(self._inflight.items()):
            if item.task is not None and item.task.id == run_id and not item.finishing:
                item.cancelled = True
                task.cancel()
                log.info("%s: run %s cancelled; its handler is stopped", self.name, run_id)

    async def _on_held_query(self, msg: Msg) -> None:
        """Say how many of the agent's tasks this worker holds (mesh.queue.gates.held_tasks)."""
        agent = msg.subject[len(names.INFLIGHT_PREFIX) + 1 :]
        running = sum(1 for item in self._inflight.values() if item.lane.agent == agent)
        held = sum(len(lane.source.ready) for lane in self.lanes if lane.agent == agent)
        if msg.reply:
            answer = HeldBy(worker=self.identity, role=self.role, version=self.versions.get(agent),
                            running=running, held=held,
                            probes=self.probes.get(agent, _NO_PROBES))  # fmt: skip
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, answer.model_dump_json().encode())

    async def _hand_back(self, agent: str, msg: Msg, delay: float | None = None) -> None:
        """Return a delivery this worker never started: record it as returned
        (so it does not count as an attempt), then ``nak`` it for another worker
        (after ``delay`` seconds, if given)."""
        try:
            task = decode(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
        except DecodeError:
            task = None  # the next worker dead-letters it
        if task is not None:
            try:
                await self._note_returned(agent, msg, task)
            except Exception as exc:  # it will count as an attempt: say so
                log.warning("%s: could not record %s as handed back: %s", self.name, task.id, exc)
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)

    async def _note_returned(self, agent: str, msg: Msg, task: Envelope) -> None:
        generation = replay_generation(task)
        for _ in range(4):
            current, revision = await get_run_entry(self.js, task.id)
            if current is not None and _settled(current, generation):
                return  # recorded already: its redelivery is acked without running
            if current is None or current.replay != generation:
                current = _state_from(task, agent, protocol.delivery_of(msg)[1])
                current.status, current.expires_at = RunStatus.QUEUED, wait_deadline(task)
            current.returned += 1
            if await self._cas_state(current, revision) is not None:
                return

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
                    if lane.closed:  # closed while this pull was out: back to the queue now
                        self._return_later(lane.agent, [msg])
                    else:
                        self._launch(lane, msg)

    # ---- dispatch gates ------------------------------------------------------

    def _on_gate(self, agent: str, gate: Gate) -> None:
        """The agent's gate changed: open or close its lanes; when closed, hand
        back what this worker holds of it unstarted, and on a stop also what runs."""
        lanes = [lane for lane in self.lanes if lane.agent == agent]
        is_open = gate.open_to(self.role)
        for lane in lanes:
            lane.gated = not is_open
        if is_open:
            self._room.set()
            return
        self._close(agent, lanes, stop=gate.stop)

    def _breakers_of(self, agent: str) -> list[BreakerState]:
        """The agent's breaker, then its version's (the one this worker runs), as followed."""
        if self.breakers is None:
            return []
        values = self.breakers.values
        return [state for scope in self._breaker_scopes[agent] if (state := values.get(scope)) is not None]

    def _on_breaker(self, scope: str, state: BreakerState) -> None:
        """A breaker of the agent changed: while it or its version's is open its lanes take
        nothing and what this worker holds of it unstarted goes back; half-open, a task starts
        only with a trial claimed (:meth:`_trial_refused`); what runs goes on either way."""
        agent = state.agent
        tripped = any(b.is_open for b in self._breakers_of(agent))
        worst = max((_GAUGE[b.state] for b in self._breakers_of(agent)), default=0)
        metrics.BREAKER_STATE.labels(agent).set(worst)
        lanes = [lane for lane in self.lanes if lane.agent == agent]
        for lane in lanes:
            lane.tripped = tripped
        if tripped:
            self._close(agent, lanes, stop=False)
        else:
            self._room.set()

    def _trial_breaker(self, agent: str) -> BreakerState | None:
        """The half-open breaker a task of ``agent`` needs a trial of: the agent's, or, while
        the agent's is closed, its version's; None: no trial needed."""
        states = self._breakers_of(agent)
        if not states or states[0].state != BreakerStatus.CLOSED:
            return states[0] if states and states[0].state == BreakerStatus.HALF_OPEN else None
        version = states[1] if len(states) > 1 else None
        return version if version is not None and version.state == BreakerStatus.HALF_OPEN else None

    async def _trial_refused(self, agent: str, run_id: str) -> bool:
        """Half-open and no trial left for ``run_id``: True, and the agent's lanes here take
        nothing more until its breaker changes (the trials' outcomes decide it)."""
        state = self._trial_breaker(agent)
        if state is None or await claim_trial(self.js, state, run_id):
            return False
        if self._trial_breaker(agent) is state:  # not changed meanwhile
            lanes = [lane for lane in self.lanes if lane.agent == agent]
            for lane in lanes:
                lane.tripped = True
            self._close(agent, lanes, stop=False)
        metrics.BREAKER_REFUSED.labels(agent).inc()
        return True

    # ---- concurrency quotas ---------------------------------------------------

    def _on_slots(self, scope: str) -> None:
        """A limit or an agent scope's slots changed: each lane's room under its agent's
        quota follows (``"*"``: every agent's), so a full agent takes nothing here."""
        if scope == "*":
            agents: list[str] = list(self.handlers)
        elif scope.startswith("agent.") and scope[6:] in self.handlers:
            agents = [scope[6:]]
        else:
            return
        for agent in agents:
            self._quota_room(agent)

    def _quota_room(self, agent: str) -> None:
        """The agent's free slots as this worker knows them: its quota, less the holders
        seen in af_slots and the slots this worker holds (a claim before its watch
        message), less its tasks here that want a slot and hold none yet."""
        assert self.quotas is not None
        scope = f"agent.{agent}"
        limit = self.quotas.limits.get(scope)
        room = None
        if limit is not None:
            holders = set(self.quotas.held(scope))
            holders.update(run for run, (scopes, _) in self._slots_held.items() if scope in scopes)
            room = max(0, limit - len(holders) - self._slot_pending.get(agent, 0))
        for lane in self.lanes:
            if lane.agent == agent:
                lane.quota_room = room
        if (handle := self._slot_rechecks.pop(agent, None)) is not None:
            handle.cancel()
        if room == 0 and (until := self.quotas.next_expiry(scope)) is not None:
            # A lease that ends frees a slot without any write: look again then.
            delay = max(0.05, until - time.time() + 0.01)
            self._slot_rechecks[agent] = asyncio.get_running_loop().call_later(delay, self._quota_room, agent)
        if room != 0:
            self._room.set()

    async def _take_slots(self, item: _InFlight, task: Envelope, scopes: list[tuple[str, int]]) -> bool:
        """Claim a slot of each of ``scopes`` for ``task`` (in order; all or none), waiting
        here while one is full, up to ``limit`` tasks per scope; past that the task goes back
        to the queue for a while (not an attempt). False: handed back, or the worker stops."""
        assert self.quotas is not None
        cfg, _ = self.handlers[item.lane.agent]
        lease = cfg.ack_wait_s
        delivered, _ = protocol.delivery_of(item.msg)
        waited = False
        while True:
            if not scopes:  # the quotas changed while it waited: nothing limits it now
                return True
            claimed: list[str] = []
            blocked: tuple[str, int] | None = None
            try:
                for scope, limit in scopes:
                    try:
                        taken = await self.quotas.claim(scope, limit, task.id, self.identity, lease)
                    except Exception as exc:  # af_slots cannot answer: wait as if full, never run unlimited
                        self._slots_unreachable(scope, exc)
                        taken = False
                    if not taken:
                        blocked = (scope, limit)
                        break
                    claimed.append(scope)
            finally:
                if len(claimed) < len(scopes):  # blocked or interrupted: none held while waiting
                    for scope in claimed:
                        try:
                            await self.quotas.release(scope, task.id)
                        except Exception as exc:  # its lease ends after the ack wait instead
                            self._slots_unreachable(scope, exc)
            if blocked is None:
                self._slots_held[task.id] = ([s for s, _ in scopes], lease)
                self._slot_settled(item)
                return True
            scope, limit = blocked
            waiting = self._slot_waits.get(scope, 0)
            # Hand back while the server's delivery allowance is large (a hand-back is a
            # delivery); past half of it, wait here whatever the number waiting.
            if waiting >= limit and delivered <= HAND_BACK_ALLOWANCE // 2:
                metrics.QUOTA_WAITS.labels(item.lane.agent, "returned").inc()
                await self._hand_back(item.lane.agent, item.msg, delay=QUOTA_RETURN_DELAY_S)
                return False
            if not waited:
                waited = True
                metrics.QUOTA_WAITS.labels(item.lane.agent, "waited").inc()
            self._slot_waits[scope] = waiting + 1
            try:
                until = self.quotas.next_expiry(scope)  # a lease ending frees a slot unannounced
                timeout = QUOTA_RECHECK_S if until is None else until - time.time() + 0.01
                await self.quotas.changed(scope, max(0.01, min(QUOTA_RECHECK_S, timeout)))
            finally:
                self._slot_waits[scope] -= 1
            if self._stopping.is_set():
                await self._hand_back(item.lane.agent, item.msg)
                return False
            scopes = self.quotas.applicable(item.lane.agent, task.metadata.tenant)

    def _misplaced(self, agent: str, tenant: str) -> str | None:
        """Why ``tenant``'s tasks of ``agent`` are not this worker's to run: its config
        pins another version (``pinned``), or puts them on the agent's own workers and
        this is a shared one (``dedicated``). None: this worker may run them."""
        assert self.config is not None
        merged = self.config.merged(agent, tenant)
        if merged.pinned_version is not None and merged.pinned_version != self.versions.get(agent):
            return "pinned"
        if merged.mode == "dedicated" and self.role != "dedicated":
            return "dedicated"
        return None

    async def _place_elsewhere(self, item: _InFlight, task: Envelope, why: str) -> None:
        """Hand a task its tenant's config puts on other workers back to the queue,
        not as an attempt, for one of them; the later the delivery the longer it
        stays away. Once the deliveries allowed for hand-backs are used up (no
        worker that may run it took it: none runs the pinned version, or the
        agent has no dedicated workers), dead-letter it with the reason: replayable."""
        agent, msg = item.lane.agent, item.msg
        delivered, seq = protocol.delivery_of(msg)
        if delivered <= HAND_BACK_ALLOWANCE:
            metrics.TASKS_PLACED_ELSEWHERE.labels(agent, why).inc()
            await self._hand_back(agent, msg, delay=min(PLACEMENT_RETURN_MAX_S, 0.1 * delivered))
            return
        assert self.config is not None
        merged = self.config.merged(agent, task.metadata.tenant)
        wanted = (f"pinned to version {merged.pinned_version}" if why == "pinned"
                  else "in dedicated mode (the agent's own workers only)")  # fmt: skip
        generation = replay_generation(task)
        current, _ = await get_run_entry(self.js, task.id)
        if current is None or current.replay != generation:
            current = _state_from(task, agent, seq)
        current.error = (f"not started: tenant {task.metadata.tenant} of {agent} is {wanted}, and no "
                         f"worker that may run it took it in {delivered} deliveries")  # fmt: skip
        await self.dead_letter_task(msg, task, current, f"unplaced: {wanted}")
        await self.pipeline.ack_sync(msg)

    def _slot_settled(self, item: _InFlight) -> None:
        """``item`` holds its slots now, or never will (handed back, finished)."""
        if item.wants_slot:
            item.wants_slot = False
            self._slot_pending[item.lane.agent] -= 1
            if self.quotas is not None:
                self._quota_room(item.lane.agent)

    def _slots_unreachable(self, scope: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._slots_warned >= 10.0:  # once per 10 s, not once per waiting task
            self._slots_warned = now
            log.warning("%s: cannot claim a slot of %s (%s: run provision?); its tasks wait",
                        self.name, scope, exc)  # fmt: skip

    async def _give_slots(self, run_id: str) -> None:
        held = self._slots_held.pop(run_id, None)
        if held is None or self.quotas is None:
            return
        for scope in held[0]:
            try:
                await self.quotas.release(scope, run_id)
            except Exception as exc:  # its lease ends after the ack wait instead
                log.warning("%s: could not give back %s's slot of %s: %s", self.name, run_id, scope, exc)

    async def _renew_slots(self) -> None:
        """Extend the leases of the slots this worker's runs hold (one write per scope)."""
        assert self.quotas is not None
        now = time.time()
        by_scope: dict[str, dict[str, float]] = {}
        for run_id, (scopes, lease) in list(self._slots_held.items()):
            for scope in scopes:
                by_scope.setdefault(scope, {})[run_id] = now + lease
        for scope, leases in by_scope.items():
            try:
                await self.quotas.renew(scope, leases, self.identity)
            except Exception as exc:  # the next heartbeat tries again
                log.warning("%s: could not renew slots of %s: %s", self.name, scope, exc)

    def set_probes(self, agent: str, probes: Probes) -> None:
        """The agent's health probes in this worker said ``probes`` (agents.lifecycle.health):
        a failing readiness (or a startup not yet passed) closes its lanes here only."""
        self.probes[agent] = probes
        unready = probes.ready is False or probes.started is False
        lanes = [lane for lane in self.lanes if lane.agent == agent]
        was = any(lane.unready for lane in lanes)
        for lane in lanes:
            lane.unready = unready
        if was and not unready:
            self._room.set()
        elif unready and not was:
            self._close(agent, lanes, stop=False)

    def _close(self, agent: str, lanes: list[Lane[Puller]], stop: bool) -> None:
        """Hand back what this worker holds of ``agent`` unstarted; with ``stop``, what runs too."""
        if stop:
            for task, item in list(self._inflight.items()):
                if item.lane.agent == agent and not item.finishing:
                    item.stopped = True
                    task.cancel()
        for lane in lanes:
            held = list(lane.source.ready)
            lane.source.ready.clear()
            self._return_later(agent, held, lane)
        self._room.set()  # the dispatch loop looks at its lanes again

    def _return_later(self, agent: str, msgs: list[Msg], lane: Lane[Puller] | None = None) -> None:
        """Hand ``msgs`` back (not counted as attempts), then, with ``lane``,
        whatever its pulls still out deliver before they end."""
        task = asyncio.create_task(self._return(agent, msgs, lane), name=f"{self.name}-gate-return")
        self._gate_returns.add(task)
        task.add_done_callback(self._gate_returns.discard)

    async def _return(self, agent: str, msgs: list[Msg], lane: Lane[Puller] | None) -> None:
        await asyncio.gather(*(self._hand_back(agent, msg) for msg in msgs))
        while lane is not None and lane.closed and lane.source.outstanding:
            late = await lane.source.arrival(1_000)
            await asyncio.gather(*(self._hand_back(agent, msg) for msg in late))

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
        listeners = [protocol.DirectInbox(self.nc, subject, on_task) for subject in subjects]
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
        if self.quotas is not None and self.quotas.limits and f"agent.{lane.agent}" in self.quotas.limits:
            # Counted against the agent's free slots here at once, not when its claim is
            # seen in af_slots: the next sweep must not pull what the quota has no room for.
            item.wants_slot = True
            self._slot_pending[lane.agent] = self._slot_pending.get(lane.agent, 0) + 1
            self._quota_room(lane.agent)
        task = asyncio.create_task(self._run_guarded(item))
        self._inflight[task] = item
        metrics.TASKS_IN_PROGRESS.labels(lane.agent).inc()
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        item = self._inflight.pop(task, None)
        if item is not None:
            metrics.TASKS_IN_PROGRESS.labels(item.lane.agent).dec()
            item.lane.finished()
            self._slot_settled(item)
        self._room.set()

    async def _heartbeat_loop(self) -> None:
        """``in_progress`` at a third of the ack wait for every task this worker
        holds: running, or buffered in a puller (a lingering pull answered
        after its wait ended) until a lane has room to start it."""
        period = min(cfg.ack_wait_s for cfg, _ in self.handlers.values()) / 3
        while True:
            await asyncio.sleep(period)
            held = [item.msg for item in self._inflight.values()]
            held += [msg for lane in self.lanes for msg in lane.source.ready]
            for msg in held:
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            if self._slots_held and self.quotas is not None:
                await self._renew_slots()

    async def _claim_loop(self) -> None:
        """Write the running state of attempts that go on: a record says "queued"
        until something is written (a short attempt goes from queued to its
        outcome with no state write at all). Each attempt running longer than
        :data:`SHOW_RUNNING_AFTER_S` is shown running (``get``, ``runs ls``),
        and a first start is claimed as its wait deadline nears, since the
        reaper expires a run still queued past its deadline."""
        assert self.claim_interval_s is not None
        show_after = timedelta(seconds=SHOW_RUNNING_AFTER_S)
        while True:
            await asyncio.sleep(self.claim_interval_s)
            now = utcnow()
            for item in list(self._inflight.values()):
                if item.shown or item.finishing or item.running is None or item.task is None:
                    continue
                deadline = wait_deadline(item.task) if item.claimable else None
                near_deadline = deadline is not None and now >= deadline - timedelta(seconds=CLAIM_AHEAD_S)
                if not near_deadline and (item.started is None or now - item.started < show_after):
                    continue
                try:
                    await self._write_state(item, item.running())
                except Exception as exc:  # NATS away: the next round tries again
                    log.warning("%s: could not claim %s: %s", self.name, item.task.id, exc)

    async def _write_state(self, item: _InFlight, state: RunState) -> bool:
        """Compare-and-set write of a run's state that never lands on a final
        one: False (nothing written, and nothing more will be) once the record
        is final for this generation or belongs to a later one."""
        for _ in range(4):
            if item.settled:
                return False
            if item.revision is None:
                current, item.revision = await get_run_entry(self.js, state.run_id)
                if current is not None and _settled(current, state.replay):
                    item.settled = True
                    return False
            written = await self._cas_state(state, item.revision)
            if written is not None:
                item.revision, item.claimable, item.shown = written, False, True
                return True
            item.revision = None
        return False

    async def _cas_state(self, state: RunState, revision: int) -> int | None:
        """Write ``state`` if the record is still at ``revision``; its new revision, or None."""
        headers = protocol.expect_last_subject_seq(protocol.EMPTY_HEADERS, revision)
        try:
            ack = await self.pipeline.publish(
                run_key(state.run_id), state.model_dump_json().encode(), headers
            )
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            return None
        return ack.seq

    # ---- running -----------------------------------------------------------

    async def _run_guarded(self, item: _InFlight) -> None:
        """Run one task; if recording its outcome fails (NATS away longer than
        :data:`RECORD_PATIENCE_S`), hand it back soon rather than after the full
        ack wait. Outcome writes are compare-and-set, so the next delivery
        finds a recorded outcome or records it once."""
        msg = item.msg
        try:
            await self._run(item)
        except asyncio.CancelledError:
            if item.stopped:
                # Force-stopped by its gate: an operator's decision, not the task's
                # failure, so back to the queue at once and not counted as an attempt
                # (what it did before the stop may have happened: runs are redelivered
                # at least once, as after any crash).
                await self._hand_back(item.lane.agent, msg)
                return
            if not item.cancelled:
                raise
            # Stopped by a cancel, whose outcome is recorded: the task is done.
            with contextlib.suppress(Exception):
                await self.pipeline.ack_sync(msg)
        except Exception as exc:
            log.warning("%s: could not finish %s: %s", self.name, msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _run(self, item: _InFlight) -> None:
        lane, msg = item.lane, item.msg
        started = utcnow()
        try:
            task = decode(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            payload = task.payload if isinstance(task.payload, dict) else {}
        except DecodeError as exc:
            await self._undecodable(lane, msg, exc)
            return
        if self.config is not None and self.config.values:
            why = self._misplaced(lane.agent, task.metadata.tenant)
            if why is not None:  # not this worker's to run: no trace of it here
                await self._place_elsewhere(item, task, why)
                return
        entered = self._trace(item, task, started) if trace.recording() else None
        try:
            scopes = (
                self.quotas.applicable(lane.agent, task.metadata.tenant) if self.quotas is not None else []
            )
            if not scopes:
                await self._run_task(item, task, payload, started)
                return
            if not await self._take_slots(item, task, scopes):
                return
            try:  # a run holding slots starts when it got them, and gives them back however it ends
                await self._run_task(item, task, payload, utcnow())
            finally:
                await self._give_slots(task.id)
        finally:
            if item.traced is not None:
                item.traced.end()
            elif entered is not None:
                trace.leave(entered)

    def _trace(self, item: _InFlight, task: Envelope, started: datetime) -> trace.Entered | None:
        """With tracing on: the attempt's spans (:mod:`mesh.queue.spans`) if its trace is
        sampled, else its trace context passed on without a span."""
        headers = item.msg.headers
        if not trace.sampled((headers or {}).get(trace.TRACEPARENT)):
            return trace.enter_unsampled(headers)  # what it sends stays in its trace
        item.traced = Attempt(headers, task, item.lane.agent, started)
        return None

    async def _run_task(
        self, item: _InFlight, task: Envelope, payload: dict[str, Any], started: datetime
    ) -> None:
        lane, msg = item.lane, item.msg
        cfg, handler = self.handlers[lane.agent]
        delivered, seq = protocol.delivery_of(msg)
        generation = int(payload.get("replay", 0))  # replay_generation(task), inline
        # The event subject's last sequence, for the outcome's compare-and-set:
        # a first delivery of a first generation expects none (no lookup).
        expect: int | None = 0 if generation == 0 else None
        attempt = 1
        # A first delivery starts from its task alone: the run state (a model)
        # is built only when it is written (progress, a retry) or must carry
        # earlier attempts' errors, never on the common path.
        state: RunState | None = None
        if delivered > 1:
            resumed = await self._redelivered(item, cfg, task, delivered, seq, started)
            if resumed is None:
                return
            attempt, state, expect = resumed
            state.version = cfg.version
        waited = (started - task.created_at).total_seconds()
        ttl = task.metadata.ttl_s
        # A first start past its wait deadline (the cheap test first: a replay's
        # deadline counts from its replay, later than the enqueue).
        if attempt == 1 and ttl and waited > ttl and (deadline := wait_deadline(task)) and started > deadline:
            await self._expire(lane, msg, task, seq, deadline)
            return
        if self.breakers is not None and await self._trial_refused(lane.agent, task.id):
            await self._hand_back(lane.agent, msg)  # not started: not an attempt
            return

        def current_state() -> RunState:
            nonlocal state
            if state is None:
                state = _running(_state_from(task, lane.agent, seq), attempt, started)
                state.worker, state.version = self.identity, cfg.version
            return state

        async def report(percent: float) -> None:
            if item.finishing:  # a report not awaited by the handler, arriving late
                return
            running = current_state()
            running.progress = percent
            await self._write_state(item, running)

        item.task, item.running, item.claimable, item.started = task, current_state, attempt == 1, started

        ctx = TaskContext(
            run_id=task.id, agent=lane.agent, tenant=task.metadata.tenant,
            routing_key=task.metadata.routing_key, attempt=attempt,
            input=payload.get("input"), envelope=task, _report=report,
        )  # fmt: skip
        if msg.headers and CALL_DEPTH_HEADER in msg.headers:
            ctx.call_depth = _depth(msg.headers[CALL_DEPTH_HEADER])
        if item.traced is not None:
            item.traced.started(attempt, cfg.version)
        t0 = time.perf_counter()
        series = metrics.for_run(lane.agent, cfg.version, task.metadata.tenant, lane.priority)
        # Traced attempts only (tracing recording and the trace sampled): else None, no cost.
        exemplar = item.traced.exemplar if item.traced is not None else None
        series.wait.observe(max(0.0, waited), exemplar)
        labels = trace.run_labels.set(ctx)
        try:
            result = await handler(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            item.finishing = True
            series.run.observe(time.perf_counter() - t0, exemplar)
            failing = current_state()
            failing.audit = ctx.audit
            if ctx.usage:
                failing.usage = [ModelUsage.model_validate(u) for u in ctx.usage]
            await self._failed(cfg, item, task, failing, attempt, exc, expect)
            return
        finally:
            trace.run_labels.reset(labels)
        item.finishing = True
        series.run.observe(time.perf_counter() - t0, exemplar)
        fresh = state is None and not generation  # no earlier attempt or replay to carry
        # The event carries the run's trace: the task's own, or (traced) its write span's, below.
        parent = None if item.traced is not None else (msg.headers or {}).get(trace.TRACEPARENT)
        outcome = self._success(task, lane.agent, current_state, attempt, started, result, fresh, ctx, parent)
        if isinstance(outcome, ResultTooLarge):
            await self._failed(cfg, item, task, current_state(), attempt, outcome, expect)
            return
        if await self._record_success(item, outcome, task, expect):
            self.completed += 1
            series.succeeded.inc()
        await self.pipeline.ack_sync(msg)

    async def _record_success(
        self, item: _InFlight, outcome: OutcomeMessage, task: Envelope, expect: int | None
    ) -> bool:
        """:meth:`_record` of a success; traced, inside its ``outcome.write`` span, which the
        event then names as its parent. The common case: no event yet (expect == 0), one
        publish and no lookup."""
        agent = item.lane.agent
        if item.traced is None:
            return await (
                self._record_first(outcome, agent, task)
                if expect == 0
                else self._record(outcome, agent, task, expect)
            )
        with outcome_span(item.traced):
            outcome = stamped(outcome)
            return await (
                self._record_first(outcome, agent, task)
                if expect == 0
                else self._record(outcome, agent, task, expect)
            )

    def _success(
        self, task: Envelope, agent: str, running: Callable[[], RunState], attempt: int,
        started: datetime, result: Any, fresh: bool, ctx: TaskContext, traceparent: str | None,
    ) -> OutcomeMessage | ResultTooLarge:  # fmt: skip
        """The outcome event of a handler's result, or why it cannot be one."""
        if fresh:
            outcome = success_message(
                task, agent, attempt, started, utcnow(), result, self.identity, ctx.audit,
                self.versions.get(agent), ctx.usage, traceparent,
            )  # fmt: skip
        else:  # a retry, or a replay: the outcome carries the earlier attempts' errors
            state = running()
            state.status, state.result, state.progress = RunStatus.SUCCEEDED, result, 100.0
            state.finished_at, state.audit = utcnow(), ctx.audit
            if ctx.usage:
                state.usage = [ModelUsage.model_validate(u) for u in ctx.usage]
            outcome = outcome_message(task, state, traceparent=traceparent)
        # Cheap first check (most outcomes are small), then the result itself.
        if len(outcome[1]) > self.limits.result and (size := _size(result)) > self.limits.result:
            state = running()
            state.result, state.progress, state.finished_at = None, None, None
            return ResultTooLarge(size, self.limits.result)
        return outcome

    async def _redelivered(
        self,
        item: _InFlight,
        cfg: AgentQueueConfig,
        task: Envelope,
        delivered: int,
        seq: int,
        started: datetime,
    ) -> tuple[int, RunState, int | None] | None:
        """A delivery after the first: (attempt, run state, event sequence to
        expect), or None when it is settled here: its outcome is recorded
        already (acked), or every attempt was lost with its worker (dead-lettered)."""  # fmt: skip
        generation = replay_generation(task)
        # Reads only, before the handler: ride out a short outage (a node rejoining its
        # cluster answers 503 for a while) instead of failing the delivery, which would
        # count as one more attempt of a run that never started (the partition test saw
        # runs of a frozen node's worker fail so). The heartbeat keeps the delivery meanwhile.
        agent = item.lane.agent
        stored = await through_outage(lambda: stored_outcome(self.js, agent, task.id), READ_TRIES)
        if stored is not None and stored.decides(generation, real=True):
            await self.pipeline.ack_sync(item.msg)  # recorded by an earlier delivery
            return None
        expect = stored.seq if stored is not None else 0
        current, item.revision = await through_outage(lambda: get_run_entry(self.js, task.id), READ_TRIES)
        if current is None or current.replay != generation:
            current = _state_from(task, item.lane.agent, seq)
        elif current.status.finished:  # a presumed outcome (e.g. expired): this run supersedes it
            current.result, current.finished_at = None, None
        attempt = delivered - current.returned  # deliveries handed back unstarted are no attempts
        if attempt > 1:
            _note_lost_attempt(current, attempt - 1)
            if attempt > cfg.max_attempts:  # every attempt was lost with its worker
                await self._give_up(item.lane, item.msg, task, current, attempt - 1, expect)
                return None
        current = _running(current, attempt, started)
        current.worker = self.identity
        return attempt, current, expect

    async def _record_first(self, outcome: OutcomeMessage, agent: str, task: Envelope) -> bool:
        """:meth:`_record` of a run's first outcome, inline (once per task): create-only
        on the event subject; anything but a plain success goes the general way."""
        subject, data, headers = outcome
        try:
            create_only = protocol.expect_last_subject_seq(headers, 0)
            parse_puback(await (await self.pipeline.request(subject, data, create_only)))
            return True
        except Exception:  # an event exists, or NATS is away: look, then decide
            return await self._record(outcome, agent, task, None)

    async def _record(
        self, outcome: OutcomeMessage, agent: str, task: Envelope, expect: int | None, *, real: bool = True
    ) -> bool:
        """The execution event, durable before the ack (the server projects it
        into ``af_runs``); False if this generation's outcome was recorded
        already. Rides out a short NATS outage (:data:`RECORD_PATIENCE_S`)."""
        loop = asyncio.get_running_loop()
        give_up, pause = loop.time() + RECORD_PATIENCE_S, 0.25
        while True:
            try:
                return await record_outcome(
                    self.js, self.pipeline.publish, outcome, agent=agent, run_id=task.id,
                    generation=replay_generation(task), real=real, expect=expect,
                )  # fmt: skip
            except APIError as exc:
                if exc.err_code:  # the stream refused it: waiting will not help
                    raise
                failure: Exception = exc
            except Exception as exc:  # timeout, connection lost, no responders: NATS restarting
                failure = exc
            if loop.time() + pause > give_up:
                raise failure
            await asyncio.sleep(pause)
            pause, expect = min(pause * 2, 2.0), None  # the write may have landed: look first

    async def _failed(
        self,
        cfg: AgentQueueConfig,
        item: _InFlight,
        task: Envelope,
        state: RunState,
        attempt: int,
        exc: Exception,
        expect: int | None,
    ) -> None:
        lane, msg = item.lane, item.msg
        labels = (lane.agent, cfg.version, task.metadata.tenant, lane.priority)
        metrics.count_attempt_failed(*labels)
        retryable = not isinstance(exc, PermanentError | ResultTooLarge)
        state.errors.append(
            AttemptError(attempt=attempt, error=str(exc)[:8000] or type(exc).__name__,
                         error_type=type(exc).__name__, retryable=retryable, replay=state.replay)
        )  # fmt: skip
        state.error = f"{type(exc).__name__}: {exc}"[:8000]
        if item.traced is not None:
            item.traced.failed(exc, will_retry=retryable and attempt < cfg.max_attempts)
        if retryable and attempt < cfg.max_attempts:
            state.status = RunStatus.QUEUED  # started already: no wait deadline any more
            if not await self._write_state_patiently(item, state):
                await self.pipeline.ack_sync(msg)  # its outcome is recorded (another copy ran)
                return
            await msg.nak(delay=cfg.backoff(attempt))
            metrics.count_retried(*labels)
            return
        reason = "permanent error" if not retryable else f"failed {attempt} attempts"
        with outcome_span(item.traced):
            await self.dead_letter_task(msg, task, state, reason, expect=expect)
        await self.pipeline.ack_sync(msg)

    async def _write_state_patiently(self, item: _InFlight, state: RunState) -> bool:
        """Cold-path state write that rides out a short NATS outage (a restart), so
        an attempt's error is not lost from the history the DLQ will carry."""

        async def write() -> bool:
            try:
                return await self._write_state(item, state)
            except Exception:
                item.revision = None  # it may have landed: read the revision again
                raise

        return await through_outage(write)

    async def _give_up(
        self, lane: Lane[Puller], msg: Msg, task: Envelope, state: RunState, attempts: int, expect: int | None
    ) -> None:
        """Every attempt was lost with its worker: dead-letter it without running
        again, with a *presumed* outcome (a stalled worker may still finish)."""
        state.error = f"{attempts} attempts lost with their workers (crashed, killed or stalled)"
        state.attempts = attempts
        await self.dead_letter_task(
            msg, task, state, "max attempts lost", expect=expect, msg_id=lost_msg_id(task.id, state.replay)
        )
        await self.pipeline.ack_sync(msg)

    async def _expire(
        self, lane: Lane[Puller], msg: Msg, task: Envelope, seq: int, deadline: datetime
    ) -> None:
        """A first start past the wait deadline: recorded as expired, not run."""
        state = _state_from(task, lane.agent, seq)
        state.status, state.finished_at = RunStatus.EXPIRED, utcnow()
        state.error = f"TTL passed at {deadline.isoformat()} before a worker started it"
        outcome = outcome_message(task, state, expired_msg_id(task.id, state.replay), _event_parent(msg))
        if await self._record(outcome, lane.agent, task, None, real=False):
            metrics.count_finished(lane.agent, None, state.tenant, lane.priority, metrics.EXPIRED)
        await self.pipeline.ack_sync(msg)

    async def dead_letter_task(
        self,
        msg: Msg,
        task: Envelope,
        state: RunState,
        reason: str,
        *,
        expect: int | None = None,
        msg_id: str | None = None,
    ) -> None:
        """DLQ entry, then the final state and event: all durable before the
        original is removed. Nothing is dead-lettered for a run whose outcome
        is recorded already (``msg_id`` given: a presumed outcome)."""
        real = msg_id is None
        stored = await stored_outcome(self.js, state.agent, state.run_id)
        if stored is not None and stored.decides(state.replay, real):
            return
        await store_task_dead_letter(
            self.js, payload=msg.data, subject=msg.subject, headers=msg.headers, agent=state.agent,
            errors=state.errors, reason=reason, run_id=state.run_id, tenant=state.tenant,
            generation=replay_generation(task), seq=protocol.delivery_of(msg)[1],
        )  # fmt: skip
        state.status, state.finished_at, state.progress = RunStatus.FAILED, utcnow(), None
        outcome = outcome_message(task, state, msg_id, _event_parent(msg))
        expect = stored.seq if stored is not None else 0
        if await self._record(outcome, state.agent, task, expect, real=real):
            metrics.count_finished(state.agent, state.version, state.tenant, state.priority, metrics.FAILED)

    async def _undecodable(self, lane: Lane[Puller], msg: Msg, exc: DecodeError) -> None:
        """Dead-letter a task no worker can read, and, when it names a usable run
        id, record that run as failed (with every validation error) so the
        publisher can find out what happened (``GET /api/v1/runs/<id>``)."""
        log.warning("%s: undecodable task on %s: %s", self.name, msg.subject, exc)
        seq = msg.metadata.sequence.stream
        error = AttemptError(attempt=1, error=str(exc)[:8000], error_type="DecodeError", retryable=False)
        stand_in = _stand_in_task(msg, lane.agent)
        tenant = stand_in.metadata.tenant if stand_in else "default"
        metrics.count_finished(lane.agent, None, tenant, lane.priority, metrics.FAILED)
        run_id = stand_in.id if stand_in is not None else None
        await store_task_dead_letter(
            self.js, payload=msg.data, subject=msg.subject, headers=msg.headers, agent=lane.agent,
            errors=[error], reason=f"undecodable: {exc}", run_id=run_id,
            tenant=tenant, generation=None, seq=seq,
        )  # fmt: skip
        if stand_in is not None:
            state = _state_from(stand_in, lane.agent, seq)
            state.status, state.attempts, state.finished_at = RunStatus.FAILED, 1, utcnow()
            state.error, state.errors = f"undecodable task: {exc}"[:8000], [error]
            await self._record(outcome_message(stand_in, state), lane.agent, stand_in, None)
        await self.pipeline.ack_sync(msg)


def _event_parent(msg: Msg) -> str | None:
    """The ``traceparent`` a run's finished event carries (cold paths): the span current in
    this process when it records spans (the outcome write's), else the task's own."""
    return (trace.current_parent() if trace.recording() else None) or (msg.headers or {}).get(
        trace.TRACEPARENT
    )


def _stand_in_task(msg: Msg, agent: str) -> Envelope | None:
    """An envelope for an undecodable task's run, when it names a usable run id
    (:func:`~mesh.envelope.named_run_id`), with the input it gave if any."""
    headers = msg.headers or {}
    run_id = named_run_id(msg.data, headers)
    if run_id is None:
        return None
    try:
        raw = json.loads(msg.data)
    except (ValueError, RecursionError):  # named by its header only
        raw = None
    payload = raw.get("payload") if isinstance(raw, dict) else None
    given = payload.get("input") if isinstance(payload, dict) else None
    try:
        return Envelope(
            id=run_id, type="task.run", message_type=MessageType.COMMAND,
            payload={"agent": agent, "input": given},
            metadata=Metadata(tenant=headers.get("AF-Tenant") or "default"),
        )  # fmt: skip
    except ValidationError:  # a tenant no run can have
        return None


def _size(result: Any) -> int:
    return len(to_json(result, inf_nan_mode="null"))


def _settled(current: RunState, generation: int) -> bool:
    """Is the stored record final for ``generation``, or a later generation's?"""
    return current.replay > generation or (current.replay == generation and current.status.finished)


def _note_lost_attempt(state: RunState, attempt: int) -> None:
    """An attempt that left no error and no outcome was lost with its worker."""
    if not any(e.attempt == attempt and e.replay == state.replay for e in state.errors):
        state.errors.append(
            AttemptError(attempt=attempt, error=_LOST, error_type="WorkerLost", replay=state.replay)
        )
        state.errors.sort(key=lambda e: (e.replay, e.attempt))


def _depth(header: str) -> int:
    """A task's call depth as its header says (a header no number fits: the deepest allowed)."""
    try:
        return max(0, int(header))
    except ValueError:
        return 1 << 16


def _running(state: RunState, attempt: int, started: datetime) -> RunState:
    state.status, state.attempts, state.started_at = RunStatus.RUNNING, attempt, started
    state.expires_at = None  # started: the wait deadline no longer applies
    if state.first_started_at is None:
        state.first_started_at = started
    return state


def _state_from(task: Envelope, agent: str, seq: int | None = None) -> RunState:
    """A run's state from its task alone; a replayed task brings the earlier
    rounds' attempt errors and first start (``history``, :func:`mesh.queue.dlq.replay`)."""
    payload = task.payload if isinstance(task.payload, dict) else {}
    state = RunState(
        run_id=task.id, agent=agent, tenant=task.metadata.tenant,
        routing_key=task.metadata.routing_key, priority=int(task.metadata.priority),
        idempotency_key=payload.get("idempotency_key"), enqueued_at=task.created_at,
        replay=replay_generation(task), seq=seq,
    )  # fmt: skip
    history = payload.get("history")
    if history and isinstance(history, dict):
        with contextlib.suppress(ValidationError, TypeError):
            state.errors = [AttemptError.model_validate(e) for e in history.get("errors", [])]
            first = history.get("first_started_at")
            state.first_started_at = datetime.fromisoformat(first) if isinstance(first, str) else None
    return state


async def ensure_lane(js: JetStreamContext, cfg: AgentQueueConfig, priority: int) -> None:
    """Create (or update) the durable pull consumer of one (agent, priority) lane."""
    name = names.task_consumer(cfg.agent, priority)
    config = ConsumerConfig(
        durable_name=name,
        filter_subject=names.task_subject(cfg.agent, priority),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=cfg.ack_wait_s,
        max_deliver=cfg.max_deliveries,
        max_ack_pending=cfg.max_ack_pending,
        max_waiting=512,
    )
    await js.add_consumer(names.STREAM_TASKS, config)


async def has_lane(js: JetStreamContext, agent: str, priority: int) -> bool:
    """Has a worker ever served ``agent`` at ``priority`` (its lane's consumer exists)?"""
    try:
        await js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, priority))
    except NotFoundError:
        return False
    return True
