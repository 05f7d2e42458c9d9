"""The lifecycle states of an agent version and the transitions allowed between them.

::

    CREATED → VALIDATING → VALIDATED → DEPLOYING → WARMING_UP → RUNNING → DRAINING → RETIRED
                   ↘ FAILED      ↘ RETIRED    ↘ FAILED     ↘ FAILED    ↕ DEGRADED  ↘ FORCE_STOPPED

``RUNNING`` and ``DEGRADED`` move to each other (health), and either may
fail or drain. ``FAILED`` and ``FORCE_STOPPED`` may be deployed again (a
restart) or retired. ``RETIRED`` is final. Pure logic: the manager applies
these under a lock and records them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from agents.errors import AgentError

__all__ = ["TRANSITIONS", "IllegalTransition", "State", "check_transition"]


class State(StrEnum):
    CREATED = "created"
    VALIDATING = "validating"
    VALIDATED = "validated"
    DEPLOYING = "deploying"
    WARMING_UP = "warming_up"
    RUNNING = "running"
    DEGRADED = "degraded"
    DRAINING = "draining"
    RETIRED = "retired"
    FAILED = "failed"
    FORCE_STOPPED = "force_stopped"


TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.CREATED: frozenset({State.VALIDATING}),
    State.VALIDATING: frozenset({State.VALIDATED, State.FAILED}),
    State.VALIDATED: frozenset({State.DEPLOYING, State.RETIRED}),
    State.DEPLOYING: frozenset({State.WARMING_UP, State.FAILED}),
    State.WARMING_UP: frozenset({State.RUNNING, State.FAILED}),
    State.RUNNING: frozenset({State.DEGRADED, State.DRAINING, State.FAILED}),
    State.DEGRADED: frozenset({State.RUNNING, State.DRAINING, State.FAILED}),
    State.DRAINING: frozenset({State.RETIRED, State.FORCE_STOPPED}),
    State.FAILED: frozenset({State.DEPLOYING, State.RETIRED}),
    State.FORCE_STOPPED: frozenset({State.DEPLOYING, State.RETIRED}),
    State.RETIRED: frozenset(),
}


class IllegalTransition(AgentError):
    """A transition the state machine does not allow from the current state."""

    status = 409

    def __init__(self, current: State, wanted: State) -> None:
        allowed = sorted(s.value for s in TRANSITIONS[current])
        then = f"allowed next: {', '.join(allowed)}" if allowed else "it is final: nothing follows"
        super().__init__(f"cannot go from {current.value} to {wanted.value}; {then}")
        self.current, self.wanted, self.allowed = current, wanted, allowed


def check_transition(current: State, wanted: State) -> State:
    """``wanted`` if the machine allows it from ``current``; else :class:`IllegalTransition`."""
    if wanted not in TRANSITIONS[current]:
        raise IllegalTransition(current, wanted)
    return wanted
