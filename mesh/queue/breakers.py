"""Fleet-wide circuit breakers: decided by the breaker processor, obeyed by every worker.

The processor (``streams.processors.breaker``) follows each agent's failure
and slow-call rates and writes its decision to KV bucket ``af_breakers``:

* key ``state.<scope>``: a :class:`BreakerState` as JSON (no key: closed);
* key ``trials.<scope>``: the :class:`TrialClaims` of the current half-open
  spell (its ``epoch`` is the state's), the run ids that may run as trials.

A *scope* is an agent (``<agent>``: its breaker) or one version of it
(``<agent>.<version>``, :func:`breaker_scope`: the breaker of the workers that
run that version, for a canary that fails while the other version serves).

Transitions are announced on ``af.events.breaker.changed.<agent>``
(:class:`BreakerChanged`: who, when, why; the audit of forced ones) and go
through :func:`change_breaker`, the one writer, which also pauses the agent's
JetStream consumers while it is open (``pause_until`` = the end of the open
wait), so its tasks wait in the queue instead of failing and burning retries.
(A version's breaker pauses no consumer: the consumers are shared with the
agent's other versions, whose workers go on taking its tasks.)

A worker follows its agents' keys, and those of the versions it runs
(:func:`follow_breakers`): while either is open the agent's lanes take
nothing (:attr:`mesh.queue.dispatch.Lane.tripped`) and deliveries that
arrive anyway are handed back unstarted, not as attempts; while the breaker
that governs (the agent's unless it is closed, else the version's) is
half-open a worker starts a task only once it has claimed one of its
``trials`` (:func:`claim_trial`, compare-and-set), so exactly that many run
across the fleet. What is not guaranteed: a worker cut off from NATS keeps the
state it last saw; tasks already running when a breaker opens finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from mesh import names
from mesh.envelope import Priority, utcnow
from mesh.kv import current_entries
from mesh.wire.follow import KeyFollower

__all__ = [
    "STATE_PREFIX",
    "TRIALS_PREFIX",
    "BreakerChanged",
    "BreakerState",
    "BreakerStatus",
    "TrialClaims",
    "breaker_scope",
    "change_breaker",
    "claim_trial",
    "closed_breaker",
    "follow_breakers",
    "force_breaker",
    "read_breaker",
    "read_breakers",
    "read_trials",
]

log = logging.getLogger(__name__)

STATE_PREFIX = "state."
TRIALS_PREFIX = "trials."
FORCED_PAUSE = timedelta(days=365)  # a breaker forced open without an end: paused until closed by hand


class BreakerStatus(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerState(BaseModel):
    """An agent's breaker (``version`` None), or one version's. ``epoch`` counts its
    transitions (trial claims belong to one)."""

    agent: str
    version: str | None = None
    state: BreakerStatus = BreakerStatus.CLOSED
    since: datetime
    open_until: datetime | None = None  # open: when it goes half-open (None: forced, until closed by hand)
    trials: int = 0  # half-open: how many trial tasks may run, across the fleet
    reason: str = ""
    forced_by: str | None = None  # an operator's force-open or force-close
    epoch: int = 0

    @property
    def is_open(self) -> bool:
        return self.state == BreakerStatus.OPEN

    @property
    def scope(self) -> str:
        return breaker_scope(self.agent, self.version)

    def describe(self) -> str:
        if self.state == BreakerStatus.CLOSED:
            return "closed"
        what = self.state.value
        if self.open_until is not None:
            what += f" until {self.open_until.isoformat()}"
        if self.state == BreakerStatus.HALF_OPEN:
            what += f" ({self.trials} trials)"
        return what + (f": {self.reason}" if self.reason else "")


def breaker_scope(agent: str, version: str | None = None) -> str:
    """``agent``, or its version's key (:func:`mesh.names.version_key`: ``+`` of semver's
    build metadata is ``=2B``)."""
    return agent if version is None else names.version_key(agent, version)


def closed_breaker(agent: str, version: str | None = None) -> BreakerState:
    """The breaker of a scope without a key."""
    return BreakerState(agent=agent, version=version, since=datetime.fromtimestamp(0, tz=UTC))


class TrialClaims(BaseModel):
    """The runs that claimed a trial of half-open spell ``epoch``."""

    epoch: int
    runs: list[str] = []


class BreakerChanged(BaseModel):
    """The event of a transition (``af.events.breaker.changed.<agent>``)."""

    agent: str
    previous: BreakerStatus
    state: BreakerState
    by: str  # "processor", or the operator who forced it
    at: datetime


def _parse(scope: str, data: bytes | None) -> BreakerState:
    agent = scope.split(".", 1)[0]
    if not data:
        return closed_breaker(agent)
    try:
        return BreakerState.model_validate_json(data)
    except ValidationError as exc:  # never let a bad value stop the fleet's work by accident
        log.error("breaker of %s is not a breaker state (%s); treating it as closed", scope, exc)
        return closed_breaker(agent)


async def _bucket(js: JetStreamContext) -> KeyValue:
    return await js.key_value(names.BUCKET_BREAKERS)


async def read_breaker(
    js: JetStreamContext, agent: str, version: str | None = None
) -> tuple[BreakerState, int | None]:
    """The breaker of ``agent`` (or of its ``version``) and its KV revision (None: no key, closed)."""
    kv = await _bucket(js)
    try:
        entry = await kv.get(STATE_PREFIX + breaker_scope(agent, version))
    except NotFoundError:
        return closed_breaker(agent, version), None
    state = _parse(breaker_scope(agent, version), entry.value)
    return state if state.version == version else closed_breaker(agent, version), entry.revision


async def read_breakers(js: JetStreamContext) -> dict[str, BreakerState]:
    """Every breaker that has a key, by scope (agents and versions not listed are closed)."""
    kv = await _bucket(js)
    entries = await current_entries(js, kv, names.BUCKET_BREAKERS, STATE_PREFIX + ">")
    return {e.key[len(STATE_PREFIX) :]: _parse(e.key[len(STATE_PREFIX) :], e.value) for e in entries}


async def read_trials(js: JetStreamContext, scope: str) -> tuple[TrialClaims | None, int | None]:
    """The trial claims of breaker ``scope`` (:func:`breaker_scope`) and their revision."""
    kv = await _bucket(js)
    try:
        entry = await kv.get(TRIALS_PREFIX + scope)
    except NotFoundError:
        return None, None
    if not entry.value:
        return None, entry.revision
    try:
        return TrialClaims.model_validate_json(entry.value), entry.revision
    except ValidationError:
        return None, entry.revision


def _rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def pause_lanes(js: JetStreamContext, agent: str, until: datetime) -> None:
    """Pause ``agent``'s task consumers (every priority) until ``until``; missing ones are skipped."""

    async def pause(priority: int) -> None:
        with contextlib.suppress(NotFoundError):
            await js.pause_consumer(names.STREAM_TASKS, names.task_consumer(agent, priority), _rfc3339(until))

    await asyncio.gather(*(pause(p) for p in Priority))


async def resume_lanes(js: JetStreamContext, agent: str) -> None:
    async def resume(priority: int) -> None:
        with contextlib.suppress(NotFoundError):
            await js.resume_consumer(names.STREAM_TASKS, names.task_consumer(agent, priority))

    await asyncio.gather(*(resume(p) for p in Priority))


async def change_breaker(
    js: JetStreamContext, new: BreakerState, previous: BreakerState, revision: int | None, by: str
) -> int | None:
    """Store ``new`` over ``previous`` (compare-and-set on ``revision``; None: whatever is
    there, an operator's force), pause or resume the agent's consumers and announce it.
    Returns the new revision, or None when the key moved on since ``revision`` (nothing written).

    Opening writes the key first (workers follow it within milliseconds), then pauses the
    consumers; closing and half-opening resume them first, so a worker's first pull after
    it sees the change finds a consumer that delivers."""
    kv = await _bucket(js)
    key, data = STATE_PREFIX + new.scope, new.model_dump_json().encode()
    agent_wide = new.version is None  # a version's breaker pauses no consumer (shared by all versions)
    if not new.is_open:
        if agent_wide:
            await resume_lanes(js, new.agent)
        if new.state == BreakerStatus.HALF_OPEN:  # the claims first: a worker that sees the state can claim
            await kv.put(TRIALS_PREFIX + new.scope, TrialClaims(epoch=new.epoch).model_dump_json().encode())
    try:
        written = await (kv.put(key, data) if revision is None else kv.update(key, data, last=revision))
    except KeyWrongLastSequenceError:
        if not new.is_open and agent_wide:  # what won may be open: its consumers stay paused
            current, _ = await read_breaker(js, new.agent)
            if current.is_open:
                await pause_lanes(js, new.agent, current.open_until or utcnow() + FORCED_PAUSE)
        return None
    if new.is_open and agent_wide:
        await pause_lanes(js, new.agent, new.open_until or utcnow() + FORCED_PAUSE)
    event = BreakerChanged(agent=new.agent, previous=previous.state, state=new, by=by, at=utcnow())
    await js.publish(names.breaker_subject(new.agent), event.model_dump_json().encode())
    log.info("breaker of %s: %s -> %s (%s)", new.scope, previous.state, new.describe(), by)
    return written


async def force_breaker(
    js: JetStreamContext, agent: str, open_: bool, by: str, reason: str, open_for_s: float | None = None,
    version: str | None = None,
) -> BreakerState:  # fmt: skip
    """An operator opens (for ``open_for_s``, or until closed by hand) or closes ``agent``'s
    breaker, or its ``version``'s."""
    previous, _ = await read_breaker(js, agent, version)
    now = utcnow()
    new = BreakerState(
        agent=agent, version=version, state=BreakerStatus.OPEN if open_ else BreakerStatus.CLOSED, since=now,
        open_until=now + timedelta(seconds=open_for_s) if open_ and open_for_s else None,
        reason=reason, forced_by=by, epoch=previous.epoch + 1,
    )  # fmt: skip
    await change_breaker(js, new, previous, None, by)
    return new


async def claim_trial(js: JetStreamContext, state: BreakerState, run_id: str) -> bool:
    """Claim one of half-open ``state``'s trials for ``run_id`` (a run claims once, however
    often it is delivered); False when all are taken or the spell is over."""
    kv = await _bucket(js)
    for _ in range(20):  # every worker of the agent may race for the last trial
        claims, revision = await read_trials(js, state.scope)
        if claims is None or revision is None or claims.epoch != state.epoch:
            return False
        if run_id in claims.runs:
            return True
        if len(claims.runs) >= state.trials:
            return False
        claims.runs.append(run_id)
        try:
            await kv.update(TRIALS_PREFIX + state.scope, claims.model_dump_json().encode(), last=revision)
            return True
        except KeyWrongLastSequenceError:
            continue
    return False


def follow_breakers(
    nc: Client,
    js: JetStreamContext,
    scopes: list[str] | None,
    on_change: Callable[[str, BreakerState], None],
    resync_s: float = 10.0,
) -> KeyFollower[BreakerState]:
    """Follows the breakers of ``scopes`` (:func:`breaker_scope`; None: every one), calling
    ``on_change(scope, state)``; start it before the first pull."""
    return KeyFollower(nc, js, names.BUCKET_BREAKERS, STATE_PREFIX, scopes, _parse, on_change, resync_s)
