"""The breaker processor: each agent's failure and slow-call rates, and its breaker's transitions.

Reads every finished execution (``af-executions``, partitioned by agent),
keeps each agent's sliding window in table ``breaker-windows`` and writes the
breaker's transitions to ``af_breakers`` (:mod:`mesh.queue.breakers`), which
every worker and the gateway follow. The arithmetic is :mod:`.rates`.

Exactly-once per event: all of an agent's events are in one partition, so one
owner writes its window; the window carries the source offset it last applied
and an event at or below it is skipped, and window and fence are one table
write (one changelog record, per agent per batch of events). A transition is written to KV *before* the
window that caused it, so a processor killed in between applies the event
again and decides again (the compare-and-set on the breaker's revision keeps
that from writing twice). A timer moves breakers whose open wait is over to
half-open (and, with ``half_open_max_s``, a half-open one without a verdict
back to open); with several replicas each tries and the compare-and-set lets
one win.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import faust

from mesh.envelope import utcnow
from mesh.queue.breakers import (
    BreakerState,
    BreakerStatus,
    breaker_scope,
    change_breaker,
    closed_breaker,
    follow_breakers,
    read_breaker,
    read_trials,
)
from mesh.queue.runs import ExecutionFinished
from mesh.wire.connection import through_outage
from mesh.wire.follow import KeyFollower
from streams.processors import rates
from streams.processors.app import Decisions, ProcessorConfig
from streams.processors.executions import read_finished, traced
from streams.processors.rates import BreakerPolicy, Windows, timed

__all__ = ["TABLE", "BreakerDecisions", "install"]

log = logging.getLogger(__name__)

TABLE = "breaker-windows"
BY = "processor"
BATCH = 500  # events taken at a time
BATCH_WAIT_S = 0.02  # how long a batch waits to fill (it adds at most this to a trip's reaction)


class BreakerDecisions(Decisions):
    """The decisions connection, plus every breaker as it stands (followed live)."""

    def __init__(self, app: faust.App, policy: BreakerPolicy, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.policy = policy
        self.ready = asyncio.Event()
        self.follower: KeyFollower[BreakerState] | None = None
        self.applied = 0  # events applied by this process (a fenced replay is not counted)
        self._closed: dict[str, BreakerState] = {}  # scopes without a key: closed (built once each)

    async def on_start(self) -> None:
        await super().on_start()
        assert self.nc is not None
        self.follower = follow_breakers(self.nc, self.js, None, lambda agent, state: None, resync_s=5.0)
        await self.follower.start()
        self.ready.set()

    async def on_stop(self) -> None:
        self.ready.clear()
        if self.follower is not None:
            await self.follower.stop()
        await super().on_stop()

    def breaker_of(self, agent: str, version: str | None = None) -> BreakerState:
        scope = breaker_scope(agent, version)
        state = self.follower.values.get(scope) if self.follower is not None else None
        if state is None:
            state = self._closed.get(scope) or self._closed.setdefault(scope, closed_breaker(agent, version))
        return state

    async def apply(self, windows: Windows, finished: ExecutionFinished) -> None:
        """Apply one finished run to its agent's ``windows``; write the transitions it causes."""
        agent = self.breaker_of(finished.agent)
        version = self.breaker_of(finished.agent, finished.version) if finished.version is not None else None
        trials = version_trials = None
        if agent.state == BreakerStatus.HALF_OPEN:
            trials, _ = await read_trials(self.js, agent.scope)
        if version is not None and version.state == BreakerStatus.HALF_OPEN:
            version_trials, _ = await read_trials(self.js, version.scope)
        seen = {agent.scope: agent} | ({version.scope: version} if version is not None else {})
        for new in rates.apply(
            windows, finished, self.policy, utcnow(), agent, version, trials, version_trials
        ):
            await self._change(seen[new.scope], new)

    async def time_passed(self) -> None:
        """Half-open every breaker whose open wait is over; open again a half-open one
        past its limit (:func:`.rates.timed`)."""
        if self.follower is None:
            return
        now = utcnow()
        for state in list(self.follower.values.values()):
            new = timed(state, now, self.policy)
            if new is not None:
                try:
                    await self._change(state, new)
                except Exception as exc:  # NATS away: the next tick tries again
                    log.warning("breaker of %s not moved to %s: %s", new.scope, new.state, exc)

    async def _change(self, seen: BreakerState, new: BreakerState) -> None:
        """Write ``new`` over ``seen`` unless the breaker moved on; rides out a short NATS
        outage (a failure past that crashes the processor, which then applies the event
        again from its last commit)."""

        async def write() -> int | None:
            current, revision = await read_breaker(self.js, new.agent, new.version)
            if current.epoch != seen.epoch or current.state != seen.state:
                return None  # it moved on meanwhile (an operator, another replica, an earlier try)
            return await change_breaker(self.js, new, current, revision, BY)

        if await through_outage(write) is not None and self.follower is not None:
            self.follower.values[new.scope] = new  # the next event sees it without waiting for its echo


def install(app: faust.App, source: faust.TopicT, config: ProcessorConfig) -> BreakerDecisions:
    """Add the breaker's table, agent and timer to ``app``; ``config.options``: :class:`BreakerPolicy`."""
    policy = BreakerPolicy.model_validate(dict(config.options))
    windows = app.Table(TABLE, default=None, partitions=config.partitions)
    decisions = BreakerDecisions(app, policy)
    app.service(decisions)  # type: ignore[arg-type]  # an instance: started with the app
    parsed: dict[str, tuple[Any, Windows]] = {}  # agent -> (the table's value, it parsed): parse once

    @app.agent(source, name="breaker")
    async def breaker(stream: faust.StreamT[Any]) -> None:
        # Batches, as metering's: Faust acks a batch's events only after this body, and each
        # agent's window is written once per batch (its transitions, to KV, as they happen).
        batches = cast(Any, stream).take_events(BATCH, within=BATCH_WAIT_S)
        async for events in batches:
            working: dict[str, tuple[int, Windows]] = {}  # agent -> (its partition, its window)
            for event in events:
                finished = read_finished(event.value)
                if finished is None:
                    continue
                agent, offset = finished.payload.agent, event.message.offset
                held = working.get(agent)
                if held is not None:
                    window = held[1]
                else:
                    stored = windows.data.get(agent)
                    cached = parsed.get(agent)
                    if cached is not None and cached[0] is stored:
                        window = cached[1]
                    else:  # first sight, or recovered from the changelog
                        window = Windows.model_validate(stored) if stored else Windows()
                if offset <= window.offset:
                    continue  # applied before a restart: its effect is in the window already
                if not decisions.ready.is_set():
                    await decisions.ready.wait()
                with traced(event, finished, "breaker"):
                    await decisions.apply(window, finished.payload)
                decisions.applied += 1
                window.offset = offset
                working[agent] = (event.message.partition, window)
            for agent, (partition, window) in working.items():
                value = window.model_dump()
                # Outside one event Faust cannot tell the partition: the agent's events say it.
                windows.send_changelog(partition, agent, value)
                windows.data[agent] = value
                parsed[agent] = (value, window)

    @app.timer(interval=0.25)  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def time_passed() -> None:
        if decisions.ready.is_set():
            await decisions.time_passed()

    return decisions
