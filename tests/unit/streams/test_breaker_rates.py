"""The breaker's state machine and sliding window (streams.processors.rates), directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.queue.breakers import BreakerState, BreakerStatus, TrialClaims, closed_breaker
from mesh.queue.runs import ExecutionFinished, RunStatus
from streams.processors.rates import BreakerPolicy, Window, Windows, apply, decide, timed

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = BreakerPolicy()  # 60 s, 5 calls, 50 % failed, slow > 5 s at 80 %, open 60 s, 3 trials


def run(
    at: float, status: RunStatus = RunStatus.SUCCEEDED, ms: float = 10.0, run_id: str = "r"
) -> ExecutionFinished:
    when = T0 + timedelta(seconds=at)
    return ExecutionFinished(run_id=run_id, agent="a", tenant="t", status=status, attempts=1,
                             enqueued_at=when, finished_at=when, duration_ms=ms)  # fmt: skip


def feed(events: list[ExecutionFinished], state: BreakerState | None = None) -> list[BreakerState | None]:
    window, state = Window(), state or closed_breaker("a")
    out = []
    for e in events:
        new = decide(window, state, e, POLICY, T0)
        out.append(new)
        state = new or state
    return out


OK, FAIL = RunStatus.SUCCEEDED, RunStatus.FAILED


@pytest.mark.parametrize(
    ("statuses", "opens_at"),
    [
        ([FAIL] * 4, None),  # under the minimum of 5 calls: no decision
        ([FAIL] * 5, 4),
        ([OK, OK, OK, FAIL, FAIL, FAIL], 5),  # 3 of 6: 50 % opens (at or over)
        ([OK, OK, OK, FAIL, FAIL], None),  # 2 of 5: 40 %
        ([RunStatus.EXPIRED] * 3 + [RunStatus.CANCELLED] * 3 + [FAIL] * 4, None),  # never ran: no calls
    ],
)
def test_failure_rate_opens_at_threshold_once_minimum_calls_are_in(
    statuses: list[RunStatus], opens_at: int | None
) -> None:
    out = feed([run(i, s) for i, s in enumerate(statuses)])
    opened = [i for i, s in enumerate(out) if s is not None]
    assert opened == ([] if opens_at is None else [opens_at])
    if opens_at is not None:
        state = out[opens_at]
        assert state is not None and state.state == BreakerStatus.OPEN
        assert state.open_until == T0 + timedelta(seconds=60) and state.epoch == 1


def test_slow_calls_open_at_80_percent() -> None:
    slow, fast = 5001.0, 5000.0  # "slower than 5 s": 5,000 ms is not slow
    assert feed([run(i, ms=slow) for i in range(4)] + [run(4, ms=fast)])[-1] is not None  # 4 of 5
    assert all(
        s is None for s in feed([run(i, ms=slow) for i in range(3)] + [run(i, ms=fast) for i in (3, 4)])
    )


def test_calls_older_than_the_window_are_forgotten() -> None:
    # 4 failures long ago, then 1 failure 60 s after the first: the first left the window.
    assert feed([run(0, FAIL), run(1, FAIL), run(2, FAIL), run(3, FAIL), run(60, FAIL)])[-1] is None
    assert feed([run(0, FAIL), run(1, FAIL), run(2, FAIL), run(3, FAIL), run(59, FAIL)])[-1] is not None


def test_calls_that_finished_before_the_breaker_closed_do_not_count() -> None:
    reclosed = BreakerState(agent="a", since=T0 + timedelta(seconds=100), epoch=4)
    assert all(s is None for s in feed([run(i, FAIL) for i in range(10)], reclosed))


def test_open_ignores_calls_and_half_opens_when_its_wait_is_over() -> None:
    opened = feed([run(i, FAIL) for i in range(5)])[-1]
    assert opened is not None
    assert feed([run(10 + i, FAIL) for i in range(10)], opened) == [None] * 10
    assert timed(opened, T0 + timedelta(seconds=59), POLICY) is None
    trial = timed(opened, T0 + timedelta(seconds=60), POLICY)
    assert trial is not None and (trial.state, trial.trials, trial.epoch) == (BreakerStatus.HALF_OPEN, 3, 2)
    forced = opened.model_copy(update={"open_until": None, "forced_by": "ops"})
    assert timed(forced, T0 + timedelta(days=999), POLICY) is None  # until closed by hand


@pytest.mark.parametrize(
    ("outcomes", "ends"),
    [([OK, OK, OK], BreakerStatus.CLOSED), ([OK, FAIL, OK], BreakerStatus.CLOSED),
     ([OK, FAIL, FAIL], BreakerStatus.OPEN), ([FAIL, FAIL, FAIL], BreakerStatus.OPEN)],
)  # fmt: skip
def test_half_open_decides_from_exactly_its_trials(outcomes: list[RunStatus], ends: BreakerStatus) -> None:
    state = BreakerState(agent="a", state=BreakerStatus.HALF_OPEN, since=T0, trials=3, epoch=2)
    claims = TrialClaims(epoch=2, runs=["t0", "t1", "t2"])
    window = Window()
    assert decide(window, state, run(1, FAIL, run_id="started-before"), POLICY, T0, claims) is None
    assert (
        decide(window, state, run(1, OK, run_id="t0"), POLICY, T0, TrialClaims(epoch=1, runs=["t0"])) is None
    )
    results = [
        decide(window, state, run(2, s, run_id=f"t{i}"), POLICY, T0, claims) for i, s in enumerate(outcomes)
    ]
    assert results[:2] == [None, None]
    assert results[2] is not None and results[2].state == ends and results[2].epoch == 3


events = st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.booleans()), max_size=80)


@settings(max_examples=300, deadline=None)
@given(events)
def test_window_opens_exactly_when_a_brute_force_count_of_the_last_60_s_says_so(
    steps: list[tuple[int, bool, bool]],
) -> None:
    """Against the definition: the calls of the 60 seconds ending at each event's second."""
    at, history, window, state = 0, [], Window(), closed_breaker("a")
    for gap, failed, slow in steps:
        at += gap
        history.append((at, failed, slow))
        new = decide(window, state, run(at, FAIL if failed else OK, 6000.0 if slow else 1.0), POLICY, T0)
        recent = [h for h in history if h[0] > at - 60]
        calls, bad, slows = len(recent), sum(h[1] for h in recent), sum(h[2] for h in recent)
        expected = calls >= 5 and (bad / calls >= 0.5 or slows / calls >= 0.8)
        assert (new is not None) == expected, (at, recent)
        if new is not None:
            return  # open: the rest is another spell's


def test_a_half_open_spell_without_a_verdict_opens_again_only_past_its_limit() -> None:
    state = BreakerState(agent="a", state=BreakerStatus.HALF_OPEN, since=T0, trials=3, epoch=2)
    assert timed(state, T0 + timedelta(days=9), POLICY) is None  # no limit: wait, as resilience4j
    limited = POLICY.model_copy(update={"half_open_max_s": 30.0})
    assert timed(state, T0 + timedelta(seconds=29), limited) is None
    again = timed(state, T0 + timedelta(seconds=30), limited)
    assert again is not None and (again.state, again.epoch) == (BreakerStatus.OPEN, 3)
    assert again.reason == "trials gave no verdict within 30 s"


def test_unknown_or_out_of_range_options_are_refused() -> None:
    with pytest.raises(ValueError, match="window_sec"):
        BreakerPolicy.model_validate({"window_sec": 10})
    with pytest.raises(ValueError, match="failure_rate"):
        BreakerPolicy.model_validate({"failure_rate": 1.5})


def versioned(at: float, version: str, status: RunStatus = RunStatus.SUCCEEDED) -> ExecutionFinished:
    return run(at, status).model_copy(update={"version": version})


def test_a_failing_version_opens_its_own_breaker_only_while_another_version_serves() -> None:
    windows, agent = Windows(), closed_breaker("a")
    canary = closed_breaker("a", "2.0.0")
    out = []
    for i in range(10):  # a 20 % canary that fails: 20 % failed overall, 100 % of the canary's
        for _ in range(4):
            out += apply(windows, versioned(i, "1.0.0"), POLICY, T0, agent, closed_breaker("a", "1.0.0"))
        out += apply(windows, versioned(i, "2.0.0", FAIL), POLICY, T0, agent, canary)
        if out:
            break
    assert i == 4  # at the canary's fifth call
    assert [(s.version, s.state) for s in out] == [("2.0.0", BreakerStatus.OPEN)]
    assert out[0].reason == "5 of 5 calls failed (100% >= 50%)"


def test_with_one_version_only_the_agents_breaker_opens() -> None:
    windows, agent, only = Windows(), closed_breaker("a"), closed_breaker("a", "1.0.0")
    out = [apply(windows, versioned(i, "1.0.0", FAIL), POLICY, T0, agent, only) for i in range(5)]
    assert out[:4] == [[]] * 4
    assert [(s.version, s.state) for s in out[4]] == [(None, BreakerStatus.OPEN)]
    assert windows.versions == {}  # a transition of the agent's breaker: versions start afresh


def test_a_version_that_alone_has_calls_in_the_window_does_not_open_its_own_breaker() -> None:
    windows, agent, only = Windows(), closed_breaker("a"), closed_breaker("a", "1.0.0")
    for i in range(6):  # runs that carry no version: the agent's window only
        assert apply(windows, run(i), POLICY, T0, agent, None) == []
    # 5 of 5 of the version's calls failed, 5 of 11 of the agent's (45 %): no other version
    # serves, so stopping this one's workers would stop the agent: that is the agent's call.
    out = [apply(windows, versioned(10 + i, "1.0.0", FAIL), POLICY, T0, agent, only) for i in range(5)]
    assert out == [[]] * 5
    assert windows.versions["1.0.0"].totals() == (5, 5, 0)  # counted all the same
