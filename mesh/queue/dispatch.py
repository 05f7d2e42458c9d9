"""Which lane the next pull goes to: the one place dispatch decisions are made.

A *lane* is one (agent, priority) consumer. A lane whose agent's dispatch
gate is closed (:mod:`mesh.queue.gates`: the lifecycle says the agent is not
ready, drains or is retired), whose agent's circuit breaker is open
(:mod:`mesh.queue.breakers`), whose agent's fleet-wide concurrency quota has
no slot free (:mod:`mesh.queue.slots`), or whose agent's readiness probe
fails in this worker, has no room, so no sweep tries it. The policy is strict
priority with an anti-starvation share; per-tenant weights, per-key limits
and "why is this pending" answers will hang off :class:`DispatchPolicy` too,
so the worker never grows a second decision path.

Policy, precisely: lanes are tried highest priority first (CRITICAL=0) and,
within a level, agents in rotating order. Every ``1/fair_share``-th sweep
(default every 10th) is a *fair* sweep: it starts at one (level, agent)
below the top level instead, then that level's other agents, the levels
below it, and last the higher ones. Fair sweeps take the (level, agent)
pairs in turn with their own counter, so whatever the number of agents and
levels, under a sustained CRITICAL load each lower level with work still
gets at least ``fair_share / (levels - 1)`` of the sweeps, and each agent
with work at that level at least its ``1 / agents`` part of that: every
agent's BACKGROUND work keeps moving. (Rotating agents by the sweep count
alone, as before, put the same agent first on every fair sweep whenever
the number of agents shared a factor with ``1/fair_share``: with two
agents, one agent's BACKGROUND lane got every fair sweep, the other's
none.) A pair whose lane turns out empty passes its turn on, in that
order, so no sweep is wasted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Budget", "DispatchPolicy", "Lane"]

T = TypeVar("T")


@dataclass(eq=False)
class Budget:
    """An in-flight limit shared by several lanes: an agent's concurrency over its priorities."""

    limit: int
    in_flight: int = 0


@dataclass(eq=False)
class Lane(Generic[T]):
    """One consumer a worker pulls from; ``source`` is the puller (or a stub in tests)."""

    agent: str
    priority: int
    source: T
    in_flight: int = 0
    limit: int = 1_000_000  # this lane's own cap (its consumer's max_ack_pending)
    budget: Budget | None = None  # shared with the agent's other lanes
    gated: bool = False  # its agent's dispatch gate is closed (mesh.queue.gates): take nothing
    unready: bool = False  # its agent's readiness probe fails in this worker: take nothing here
    tripped: bool = False  # its agent's circuit breaker is open (mesh.queue.breakers): take nothing
    # The slots its agent's fleet-wide concurrency quota has free (mesh.queue.slots); None: no quota.
    quota_room: int | None = None

    @property
    def room(self) -> int:
        """How many more tasks this lane may start now."""
        room = self.limit - self.in_flight
        if self.budget is not None:
            room = min(room, self.budget.limit - self.budget.in_flight)
        if self.quota_room is not None:
            room = min(room, self.quota_room)
        return room

    @property
    def has_room(self) -> bool:
        """May this lane start a task now: its gate is open, its agent ready here, its
        breaker not open, and it has room."""
        return not (self.gated or self.unready or self.tripped) and self.room > 0

    @property
    def closed(self) -> bool:
        """Closed to new tasks (by its gate, its agent's readiness or its breaker), room or not."""
        return self.gated or self.unready or self.tripped

    def started(self) -> None:
        self.in_flight += 1
        if self.budget is not None:
            self.budget.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        if self.budget is not None:
            self.budget.in_flight -= 1


class DispatchPolicy:
    """Strict priority with a guaranteed share for lower levels."""

    def __init__(self, fair_share: float = 0.1) -> None:
        if not 0.0 <= fair_share <= 0.5:
            raise ValueError("fair_share must be between 0 and 0.5")
        self.fair_share = fair_share
        self._every = round(1 / fair_share) if fair_share > 0 else 0
        self._sweeps = 0
        # Separate turn counters for ordinary and fair sweeps: deriving either
        # rotation from ``_sweeps`` ties it to the fair period.
        self._ordinary_turns = 0
        self._fair_turns = 0

    def order(self, lanes: Sequence[Lane[T]]) -> list[Lane[T]]:
        """The order to try ``lanes`` in for the next sweep (lanes with no room left out)."""
        self._sweeps += 1
        open_lanes = [lane for lane in lanes if lane.has_room]
        if not open_lanes:
            return []
        agents = sorted({lane.agent for lane in open_lanes})
        levels = sorted({lane.priority for lane in open_lanes})
        if self._every and len(levels) > 1 and self._sweeps % self._every == 0:
            lower = levels[1:]
            turn = self._fair_turns
            self._fair_turns += 1
            # Levels vary fastest, so consecutive fair sweeps spread over the levels.
            start = lower[turn % len(lower)]
            first_agent = (turn // len(lower)) % len(agents)
        else:
            start = levels[0]
            first_agent = self._ordinary_turns % len(agents)
            self._ordinary_turns += 1
        rank = {agent: (i - first_agent) % len(agents) for i, agent in enumerate(agents)}
        # From ``start`` down to the lowest level, then the levels above ``start``.
        return sorted(open_lanes, key=lambda lane: (lane.priority < start, lane.priority, rank[lane.agent]))
