"""The breaker's arithmetic: sliding-window failure and slow-call rates, and the state machine.

Pure functions over plain values (no I/O), so that they are tested directly.
resilience4j's time-based breaker is the model: a window of the last
``window_s`` seconds of calls, aggregated per second; once it holds at least
``minimum_calls``, a failure rate or a slow-call rate at or over its threshold
opens the breaker for ``open_s``; then half-open lets ``trials`` calls through,
and their rates close it or open it again. A *call* is a finished run that
succeeded or failed (expired and cancelled runs never ran: not calls). Time is
the events' own (``finished_at``), so replaying a partition gives the same
window; the open wait is counted on the processor's clock (``now``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from mesh.queue.breakers import BreakerState, BreakerStatus, TrialClaims
from mesh.queue.runs import ExecutionFinished, RunStatus

__all__ = ["BreakerPolicy", "Window", "Windows", "apply", "decide", "timed"]


class BreakerPolicy(BaseModel):
    """The breaker processor's settings (its ``options``), with resilience4j's defaults where it has them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: int = Field(60, ge=1, le=3600)  # sliding time window
    minimum_calls: int = Field(5, ge=1)  # no decision on fewer calls in the window
    failure_rate: float = Field(0.5, gt=0, le=1)  # open at or over this share of failed calls
    slow_call_s: float = Field(5.0, gt=0)  # a call longer than this is slow
    slow_rate: float = Field(0.8, gt=0, le=1)  # open at or over this share of slow calls
    open_s: float = Field(60.0, gt=0)  # wait in open before half-open
    trials: int = Field(3, ge=1)  # trial calls half-open lets through, across the fleet
    # Half-open this long without its trials' verdict: open again (None: wait, resilience4j's default).
    half_open_max_s: float | None = Field(None, gt=0)


class Window(BaseModel):
    """One breaker's calls per second over the window, and its current half-open spell's
    trial outcomes."""

    seconds: list[tuple[int, int, int, int]] = []  # (unix second, calls, failed, slow), oldest first
    trial_epoch: int = -1
    trial_outcomes: dict[str, tuple[bool, bool]] = {}  # run id -> (failed, slow)

    def add(self, second: int, failed: bool, slow: bool, window_s: int) -> None:
        self.forget(second, window_s)
        if self.seconds and self.seconds[-1][0] == second:
            _, calls, failures, slows = self.seconds[-1]
            self.seconds[-1] = (second, calls + 1, failures + failed, slows + slow)
            return
        self.seconds.append((second, 1, int(failed), int(slow)))
        self.seconds.sort()  # events of a partition come nearly in order: this is cheap

    def forget(self, now_second: int, window_s: int) -> None:
        """Drop the seconds that left the window ending at ``now_second``."""
        start = now_second - window_s + 1
        while self.seconds and self.seconds[0][0] < start:
            self.seconds.pop(0)

    def totals(self) -> tuple[int, int, int]:
        calls = sum(s[1] for s in self.seconds)
        return calls, sum(s[2] for s in self.seconds), sum(s[3] for s in self.seconds)

    def active(self, now_second: int, window_s: int) -> bool:
        """Has it calls in the window ending at ``now_second``?"""
        return bool(self.seconds) and self.seconds[-1][0] > now_second - window_s


class Windows(BaseModel):
    """One agent's value in the processor's table: its window, its versions' windows, and
    ``offset``, the source offset last applied (the fence: an event at or below it was
    applied already). One value: window, versions and fence are one changelog record."""

    offset: int = 0
    agent: Window = Window()
    versions: dict[str, Window] = {}


def apply(
    windows: Windows,
    finished: ExecutionFinished,
    policy: BreakerPolicy,
    now: datetime,
    agent: BreakerState,
    version: BreakerState | None = None,
    trials: TrialClaims | None = None,
    version_trials: TrialClaims | None = None,
) -> list[BreakerState]:
    """Apply one finished run to its agent's ``windows`` (in place): the transitions of the
    agent's breaker (``agent``) and of its version's (``version``: that of ``finished.version``)
    it causes. A version's breaker opens only while the agent's is closed and another version
    has calls in the window too (with one version, the agent's breaker is the one to open);
    every transition of the agent's breaker starts its versions' windows afresh."""
    changed = decide(windows.agent, agent, finished, policy, now, trials)
    if changed is not None or agent.state != BreakerStatus.CLOSED:
        windows.versions = {}
        return [changed] if changed is not None else []
    if version is None or finished.version is None:
        return []
    window = windows.versions.setdefault(finished.version, Window())
    second = int(finished.finished_at.timestamp())
    others = any(
        w.active(second, policy.window_s) for v, w in windows.versions.items() if v != finished.version
    )
    new = decide(window, version, finished, policy, now, version_trials, may_open=others)
    for stale in [v for v, w in windows.versions.items() if v != finished.version and not w.trial_outcomes
                  and not w.active(second, policy.window_s)]:  # fmt: skip
        del windows.versions[stale]  # a version gone: its window would only grow the record
    return [new] if new is not None else []


def _verdict(calls: int, failed: int, slow: int, policy: BreakerPolicy) -> str | None:
    """Why these calls open the breaker, or None."""
    if calls < policy.minimum_calls or calls == 0:
        return None
    if failed / calls >= policy.failure_rate:
        return f"{failed} of {calls} calls failed ({failed / calls:.0%} >= {policy.failure_rate:.0%})"
    if slow / calls >= policy.slow_rate:
        return (f"{slow} of {calls} calls slower than {policy.slow_call_s:g} s "
                f"({slow / calls:.0%} >= {policy.slow_rate:.0%})")  # fmt: skip
    return None


def _opened(state: BreakerState, reason: str, now: datetime, policy: BreakerPolicy) -> BreakerState:
    return BreakerState(
        agent=state.agent, version=state.version, state=BreakerStatus.OPEN, since=now,
        open_until=now + timedelta(seconds=policy.open_s), reason=reason, epoch=state.epoch + 1,
    )  # fmt: skip


def decide(
    window: Window,
    state: BreakerState,
    finished: ExecutionFinished,
    policy: BreakerPolicy,
    now: datetime,
    trials: TrialClaims | None = None,
    may_open: bool = True,
) -> BreakerState | None:
    """Apply one finished run to ``window`` (in place) and return the breaker's new state
    if it changes. ``state``: the breaker now; ``trials``: its claims when half-open;
    ``may_open``: False keeps a closed breaker closed (its window goes on counting)."""
    if finished.status not in (RunStatus.SUCCEEDED, RunStatus.FAILED):
        return None
    failed = finished.status == RunStatus.FAILED
    slow = finished.duration_ms is not None and finished.duration_ms > policy.slow_call_s * 1000
    if state.state == BreakerStatus.CLOSED:
        if finished.finished_at < state.since:  # before it (re)closed: from a window that is over
            return None
        second = int(finished.finished_at.timestamp())
        window.add(second, failed, slow, policy.window_s)
        reason = _verdict(*window.totals(), policy)
        if reason is None or not may_open:
            return None
        window.seconds = []  # a new window after the open spell, as resilience4j resets its metrics
        return _opened(state, reason, now, policy)
    if state.state == BreakerStatus.HALF_OPEN:
        if trials is None or trials.epoch != state.epoch or finished.run_id not in trials.runs:
            return None  # not one of this spell's trials (e.g. a task that started before the trip)
        if window.trial_epoch != state.epoch:
            window.trial_epoch, window.trial_outcomes = state.epoch, {}
        window.trial_outcomes[finished.run_id] = (failed, slow)
        if len(window.trial_outcomes) < state.trials:
            return None
        outcomes = list(window.trial_outcomes.values())
        calls, bad, slows = len(outcomes), sum(f for f, _ in outcomes), sum(s for _, s in outcomes)
        reason = _verdict(calls, bad, slows, policy.model_copy(update={"minimum_calls": 1}))
        if reason is not None:
            return _opened(state, f"trials: {reason}", now, policy)
        return BreakerState(agent=state.agent, version=state.version, state=BreakerStatus.CLOSED, since=now,
                            reason=f"{calls} trials passed", epoch=state.epoch + 1)  # fmt: skip
    return None  # open: calls that finish now started before it opened


def timed(state: BreakerState, now: datetime, policy: BreakerPolicy) -> BreakerState | None:
    """What time alone changes: an open wait that is over goes half-open with ``policy.trials``
    trials (never a breaker forced open until closed by hand), and a half-open spell past
    ``policy.half_open_max_s`` opens again. None: nothing is due."""
    if state.state == BreakerStatus.HALF_OPEN:
        limit = policy.half_open_max_s
        if limit is None or now < state.since + timedelta(seconds=limit):
            return None
        return _opened(state, f"trials gave no verdict within {limit:g} s", now, policy)
    if not state.is_open or state.open_until is None or now < state.open_until:
        return None
    return BreakerState(
        agent=state.agent, version=state.version, state=BreakerStatus.HALF_OPEN, since=now,
        trials=policy.trials, reason="open wait over", epoch=state.epoch + 1,
    )  # fmt: skip
