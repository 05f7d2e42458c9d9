"""A local failure-rate circuit breaker: one per agent per worker process.

closed → open when, over the last ``window_s``, at least ``min_calls`` calls
ended and at least ``failure_rate`` of them failed; open → half-open once
``open_s`` has passed (seen at the next call, or the next read of
:attr:`CircuitBreaker.state`); half-open → closed after ``half_open_calls``
probes succeed, → open again at the first probe that fails. Calls beyond the
probes, and every call while open, are refused (:meth:`CircuitBreaker.admit`
returns None).

Each admitted call carries a ticket (the breaker's generation): a call that
was admitted before a transition and ends after it does not count in the new
state, so a slow call that started while closed can neither close a
half-open breaker nor spend its probes.

**Fleet-wide override** (a later issue): :meth:`CircuitBreaker.override`
takes a state decided elsewhere (e.g. from the fleet-wide failure rate a
stream processor writes to KV). While set, it wins: ``OPEN`` refuses every
call, ``CLOSED`` admits every call (half-open probing stays local: clear the
override to let this breaker probe). The local window keeps counting
meanwhile, so clearing the override (``override(None)``) hands back to an
up-to-date local state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Final

from agents.resilience import metrics
from agents.resilience.policy import BreakerPolicy

__all__ = ["BreakerState", "CircuitBreaker"]

BUCKETS: Final = 10  # the window is a ring of this many time buckets


class BreakerState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """The value ``af_breaker_state`` shows: 0 closed, 1 half-open, 2 open."""
        return _GAUGE[self]


_GAUGE: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class CircuitBreaker:
    """The breaker of ``agent``: ``ticket = admit()``, run, then ``record(ticket, ok)``."""

    def __init__(
        self, agent: str, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.agent, self.policy, self._clock = agent, policy, clock
        self._state = BreakerState.CLOSED
        self._generation = 0  # bumped by every transition: tickets of older ones are ignored
        self._opened_at = 0.0
        self._probes_out = 0  # half-open probes admitted and not yet ended
        self._probes_ok = 0
        self._override: BreakerState | None = None
        self._bucket_s = policy.window_s / BUCKETS
        self._epoch = [-1] * BUCKETS  # which bucket index each ring slot holds
        self._calls = [0] * BUCKETS
        self._failures = [0] * BUCKETS
        self._gauge = metrics.BREAKER_STATE.labels(agent)
        self._gauge.set(BreakerState.CLOSED.gauge)

    @property
    def state(self) -> BreakerState:
        """The local state (an override does not change it), open → half-open once due."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.policy.open_s:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    @property
    def overridden(self) -> BreakerState | None:
        return self._override

    def override(self, state: BreakerState | None) -> None:
        """Let a state decided elsewhere (the fleet-wide breaker) win: ``OPEN``
        refuses every call, ``CLOSED`` admits every call; ``None``: the local one again."""
        if state is BreakerState.HALF_OPEN:
            raise ValueError("override with OPEN or CLOSED; None lets the local breaker probe")
        self._override = state

    @property
    def retry_after_s(self) -> float:
        """How long an open breaker stays open (0 when it is not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.policy.open_s - self._clock())

    def admit(self) -> int | None:
        """A ticket for one call, or None: refused, fail fast."""
        state = self.state if self._override is None else self._override
        if state is BreakerState.CLOSED:
            return self._generation
        if state is BreakerState.OPEN:
            return None
        if self._probes_out + self._probes_ok >= self.policy.half_open_calls:
            return None
        self._probes_out += 1
        return self._generation

    def release(self, ticket: int) -> None:
        """The end of an admitted call that says nothing (it was cancelled): frees its probe."""
        if ticket == self._generation and self._state is BreakerState.HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)

    def record(self, ticket: int, ok: bool) -> None:
        """The end of a call admitted with ``ticket``."""
        if ticket != self._generation:
            return  # admitted before a transition: it says nothing about the new state
        if self._state is BreakerState.HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)
            if not ok:
                self._move(BreakerState.OPEN)
                return
            self._probes_ok += 1
            if self._probes_ok >= self.policy.half_open_calls:
                self._move(BreakerState.CLOSED)
            return
        if self._state is BreakerState.OPEN:
            return
        calls, failures = self._count(ok)
        if not ok and calls >= self.policy.min_calls and failures >= self.policy.failure_rate * calls:
            self._move(BreakerState.OPEN)

    def _count(self, ok: bool) -> tuple[int, int]:
        """Add one call to the window; the window's (calls, failures) after it
        (summed only on a failure: a success cannot open the breaker)."""
        now = int(self._clock() / self._bucket_s)
        slot = now % BUCKETS
        if self._epoch[slot] != now:
            self._epoch[slot], self._calls[slot], self._failures[slot] = now, 0, 0
        self._calls[slot] += 1
        if ok:
            return 0, 0
        self._failures[slot] += 1
        oldest = now - BUCKETS
        calls = failures = 0
        for i in range(BUCKETS):
            if self._epoch[i] > oldest:
                calls += self._calls[i]
                failures += self._failures[i]
        return calls, failures

    def _move(self, to: BreakerState) -> None:
        metrics.BREAKER_TRANSITIONS.labels(self.agent, self._state.value, to.value).inc()
        self._state = to
        self._generation += 1
        self._probes_out = self._probes_ok = 0
        if to is BreakerState.OPEN:
            self._opened_at = self._clock()
        elif to is BreakerState.CLOSED:
            self._epoch = [-1] * BUCKETS  # a fresh window: the failures before it are history
        self._gauge.set(to.gauge)
