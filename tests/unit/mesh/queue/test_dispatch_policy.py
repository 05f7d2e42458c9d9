"""The dispatch policy: strict priority, rotation within a level, a guaranteed share below."""

from __future__ import annotations

import collections

import pytest

from mesh.queue.dispatch import Budget, DispatchPolicy, Lane


def lanes(agents: list[str], priorities: range = range(5)) -> list[Lane[None]]:
    return [Lane(agent, p, None) for agent in agents for p in priorities]


def served(
    policy: DispatchPolicy, agents: list[str], has_work: set[tuple[str, int]], sweeps: int
) -> collections.Counter[tuple[str, int]]:
    """Which (agent, level) each sweep serves: the first lane in its order with work,
    as the worker's sweep takes it. Every agent has a lane at each of the five levels."""
    ls = lanes(agents)
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    for _ in range(sweeps):
        lane = next(lane for lane in policy.order(ls) if (lane.agent, lane.priority) in has_work)
        counts[lane.agent, lane.priority] += 1
    return counts


AGENT_COUNTS = [1, 2, 3, 4, 5, 6, 10]  # 2, 4, 5, 6 and 10 share a factor with the fair period 10


def test_top_priority_comes_first_on_ordinary_sweeps() -> None:
    policy = DispatchPolicy(fair_share=0.1)
    for _ in range(9):
        order = policy.order(lanes(["a"]))
        assert [lane.priority for lane in order] == [0, 1, 2, 3, 4]


def test_every_tenth_sweep_starts_lower_and_rotates_over_the_lower_levels() -> None:
    policy = DispatchPolicy(fair_share=0.1)
    firsts = [policy.order(lanes(["a"]))[0].priority for _ in range(80)]
    share = collections.Counter(firsts)
    assert share[0] == 72  # 9 of every 10 sweeps
    assert share[1] == share[2] == share[3] == share[4] == 2  # 8 fair sweeps, rotated


def test_fair_sweep_still_falls_back_to_higher_levels_after_the_lower_ones() -> None:
    policy = DispatchPolicy(fair_share=0.5)
    policy.order(lanes(["a"]))
    order = [lane.priority for lane in policy.order(lanes(["a"]))]
    assert order[0] != 0 and sorted(order) == [0, 1, 2, 3, 4]


def test_agents_within_a_level_take_turns() -> None:
    policy = DispatchPolicy(fair_share=0)
    firsts = [policy.order(lanes(["a", "b", "c"], range(1)))[0].agent for _ in range(6)]
    assert collections.Counter(firsts) == {"a": 2, "b": 2, "c": 2}


def test_lanes_without_room_are_skipped() -> None:
    policy = DispatchPolicy()
    ls = lanes(["a"], range(2))
    ls[0].in_flight, ls[0].limit = 3, 3
    assert [lane.priority for lane in policy.order(ls)] == [1]
    ls[1].in_flight, ls[1].limit = 1, 1
    assert policy.order(ls) == []


def test_an_agent_budget_holds_across_its_priority_lanes() -> None:
    policy = DispatchPolicy()
    budget = Budget(2)
    ls = [Lane("a", p, None, limit=10, budget=budget) for p in range(3)] + [Lane("b", 0, None, limit=10)]
    ls[0].started()
    ls[2].started()
    assert [lane.room for lane in ls] == [0, 0, 0, 10]  # two in flight on a's lanes: a is full
    assert [lane.agent for lane in policy.order(ls)] == ["b"]
    ls[2].finished()
    assert [lane.room for lane in ls[:3]] == [1, 1, 1] and budget.in_flight == 1
    assert ls[0].in_flight == 1 and ls[2].in_flight == 0


def test_fair_share_is_bounded() -> None:
    with pytest.raises(ValueError):
        DispatchPolicy(fair_share=0.9)


@pytest.mark.parametrize("n", AGENT_COUNTS)
@pytest.mark.parametrize("fair_share", [0.1, 0.25])
def test_every_agents_lower_levels_get_their_share_under_critical_load(n: int, fair_share: float) -> None:
    agents = [f"agent{i}" for i in range(n)]
    every = round(1 / fair_share)
    sweeps = every * 4 * n * 5  # whole rounds over the 4 lower levels and the n agents
    counts = served(DispatchPolicy(fair_share), agents, {(a, p) for a in agents for p in range(5)}, sweeps)
    # Each (agent, lower level) pair: fair_share / (levels - 1), spread over the agents.
    lower_share = sweeps * fair_share / 4 / n
    for agent in agents:
        assert [counts[agent, p] for p in range(1, 5)] == [lower_share] * 4, (agent, counts)
        # ... and CRITICAL keeps the rest, the agents taking turns.
        assert counts[agent, 0] == sweeps * (1 - fair_share) / n, (agent, counts)


@pytest.mark.parametrize("n", AGENT_COUNTS)
def test_every_agents_background_gets_its_share_when_the_levels_between_are_empty(n: int) -> None:
    # The case of issue 18: CRITICAL and BACKGROUND work only. The turns of the
    # empty levels 1-3 pass down to BACKGROUND, so it gets every fair sweep.
    agents = [f"agent{i}" for i in range(n)]
    sweeps = 10 * 4 * n * 25
    has_work = {(a, p) for a in agents for p in (0, 4)}
    counts = served(DispatchPolicy(0.1), agents, has_work, sweeps)
    for agent in agents:
        assert counts[agent, 4] == sweeps // 10 // n, counts
        assert counts[agent, 0] == sweeps * 9 // 10 // n, counts


def test_an_empty_lanes_fair_turn_goes_to_an_agent_with_work_at_that_level() -> None:
    agents = ["a", "b", "c"]
    has_work = {(a, 0) for a in agents} | {("c", 4)}
    counts = served(DispatchPolicy(0.1), agents, has_work, 1200)
    assert counts["c", 4] == 120  # every fair sweep, not a third of them


@pytest.mark.parametrize("n", AGENT_COUNTS)
def test_ordinary_sweeps_keep_strict_priority(n: int) -> None:
    policy = DispatchPolicy(fair_share=0.1)
    ls = lanes([f"agent{i}" for i in range(n)])
    for sweep in range(1, 201):
        order = policy.order(ls)
        if sweep % 10:
            assert [lane.priority for lane in order] == sorted(lane.priority for lane in ls)
        else:
            assert order[0].priority > 0


def test_a_full_concurrency_quota_leaves_its_lanes_no_room_and_a_partial_one_caps_the_pull() -> None:
    lane: Lane[None] = Lane("a", 0, None, limit=8)
    assert lane.room == 8
    lane.quota_room = 3
    assert lane.room == 3 and lane.has_room
    lane.quota_room = 0
    assert lane.room == 0 and not lane.has_room
    assert not lane.closed  # full, not closed: what it holds unstarted stays
    assert DispatchPolicy().order([lane]) == []
