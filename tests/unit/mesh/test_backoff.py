"""The one backoff formula: exponential, capped, jittered within its share, floored."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agents.resilience.retries import LaneConfig
from mesh.backoff import backoff_s
from mesh.queue.worker import AgentQueueConfig


@given(
    attempt=st.integers(1, 40),
    base=st.floats(0.001, 10),
    cap=st.floats(0.001, 120),
    jitter=st.floats(0, 1),
)
def test_a_wait_lies_between_the_jittered_share_and_the_capped_ceiling(
    attempt: int, base: float, cap: float, jitter: float
) -> None:
    ceiling = min(cap, base * 2 ** (attempt - 1))
    wait = backoff_s(attempt, base, cap, jitter=jitter)
    assert ceiling * (1 - jitter) - 1e-9 <= wait <= ceiling + 1e-9


def test_without_jitter_it_doubles_up_to_the_cap_and_never_below_the_floor() -> None:
    assert [backoff_s(n, 0.25, 1.5, jitter=0) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.5]
    assert backoff_s(1, 0.001, 1.0, jitter=0, floor_s=0.05) == 0.05


def test_the_queue_and_an_agents_retry_policy_wait_by_it() -> None:
    queue = AgentQueueConfig("a", backoff_base_s=1.0, backoff_max_s=8.0)
    assert all(2.0 <= queue.backoff(3) <= 4.0 for _ in range(50))  # half of it jitter
    lane = LaneConfig("a", backoff_base_s=1.0, backoff_max_s=8.0, jitter=0.0)
    assert lane.backoff(3) == 4.0
