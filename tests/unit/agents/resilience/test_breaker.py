"""The local circuit breaker as a state machine, on a clock the test moves."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from agents.resilience import BreakerPolicy, BreakerState, CircuitBreaker
from tests.helpers import unique

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(**policy: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    settings = {"window_s": 10, "min_calls": 4, "failure_rate": 0.5, "open_s": 5, "half_open_calls": 2}
    settings.update(policy)
    return CircuitBreaker(unique("b"), BreakerPolicy.model_validate(settings), clock), clock


def _calls(breaker: CircuitBreaker, outcomes: str) -> None:
    """``outcomes``: one letter per call, ``s`` success, ``f`` failure."""
    for outcome in outcomes:
        ticket = breaker.admit()
        assert ticket is not None, f"refused while {breaker.state}"
        breaker.record(ticket, ok=outcome == "s")


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ("fff", CLOSED),  # under min_calls: however bad, it stays closed
        ("ffff", OPEN),  # min_calls, 100 % failures
        ("ssff", OPEN),  # min_calls, exactly the failure rate
        ("sssf", CLOSED),  # 25 % < 50 %
        ("sssfsf", CLOSED),  # 33 %
        ("sssffsff", OPEN),  # 4 of 8: the rate reaches 50 % at the last failure
        ("ssssss", CLOSED),
    ],
)
def test_closed_opens_on_the_failure_rate_once_min_calls_ended(outcomes: str, state: BreakerState) -> None:
    breaker, _ = _breaker()
    for outcome in outcomes:
        if breaker.state is OPEN:
            break
        _calls(breaker, outcome)
    assert breaker.state is state


def test_failures_older_than_the_window_are_forgotten() -> None:
    breaker, clock = _breaker()
    _calls(breaker, "fff")
    clock.now += 11  # past window_s
    _calls(breaker, "f")
    assert breaker.state is CLOSED  # 1 call in the window, under min_calls
    _calls(breaker, "fff")
    assert breaker.state is OPEN


def test_open_refuses_every_call_until_open_s_then_half_opens() -> None:
    breaker, clock = _breaker()
    _calls(breaker, "ffff")
    assert breaker.admit() is None and breaker.retry_after_s == pytest.approx(5)
    clock.now += 4.9
    assert breaker.admit() is None and breaker.state is OPEN
    clock.now += 0.1
    assert breaker.state is HALF_OPEN and breaker.retry_after_s == 0


def test_half_open_admits_its_probes_only_and_closes_when_they_all_succeed() -> None:
    breaker, clock = _breaker()
    _calls(breaker, "ffff")
    clock.now += 5
    first, second = breaker.admit(), breaker.admit()
    assert first is not None and second is not None
    assert breaker.admit() is None  # half_open_calls = 2
    breaker.record(first, ok=True)
    assert breaker.state is HALF_OPEN and breaker.admit() is None
    breaker.record(second, ok=True)
    assert breaker.state is CLOSED
    _calls(breaker, "fff")  # a fresh window: the old failures are gone
    assert breaker.state is CLOSED


def test_a_failed_probe_opens_it_again_for_open_s() -> None:
    breaker, clock = _breaker()
    _calls(breaker, "ffff")
    clock.now += 5
    probe = breaker.admit()
    assert probe is not None
    breaker.record(probe, ok=False)
    assert breaker.state is OPEN and breaker.retry_after_s == pytest.approx(5)


def test_a_call_admitted_before_a_transition_does_not_count_after_it() -> None:
    breaker, clock = _breaker()
    slow = breaker.admit()  # admitted while closed
    assert slow is not None
    _calls(breaker, "ffff")
    clock.now += 5
    assert breaker.state is HALF_OPEN
    breaker.record(slow, ok=True)  # ends now: says nothing about the half-open state
    assert breaker.state is HALF_OPEN
    probes = [breaker.admit(), breaker.admit()]
    assert None not in probes  # and it spent no probe


def test_a_cancelled_probe_frees_its_place() -> None:
    breaker, clock = _breaker(half_open_calls=1)
    _calls(breaker, "ffff")
    clock.now += 5
    probe = breaker.admit()
    assert probe is not None and breaker.admit() is None
    breaker.release(probe)
    assert breaker.admit() is not None


def test_an_override_wins_over_the_local_state_until_cleared() -> None:
    breaker, _ = _breaker()
    breaker.override(OPEN)
    assert breaker.admit() is None and breaker.state is CLOSED
    breaker.override(None)
    _calls(breaker, "ffff")
    breaker.override(CLOSED)
    _calls(breaker, "s")  # admitted though the local breaker is open
    assert breaker.state is OPEN and breaker.overridden is CLOSED
    breaker.override(None)
    assert breaker.admit() is None
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        breaker.override(HALF_OPEN)


def test_each_transition_is_counted_and_the_state_gauge_follows() -> None:
    breaker, clock = _breaker(half_open_calls=1)

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("af_breaker_state", {"agent": breaker.agent})

    def moved(a: BreakerState, b: BreakerState) -> float | None:
        labels = {"agent": breaker.agent, "from_state": a.value, "to_state": b.value}
        return REGISTRY.get_sample_value("af_breaker_transitions_total", labels)

    assert gauge() == 0
    _calls(breaker, "ffff")
    assert gauge() == 2 and moved(CLOSED, OPEN) == 1
    clock.now += 5
    assert breaker.state is HALF_OPEN and gauge() == 1 and moved(OPEN, HALF_OPEN) == 1
    _calls(breaker, "s")
    assert gauge() == 0 and moved(HALF_OPEN, CLOSED) == 1
