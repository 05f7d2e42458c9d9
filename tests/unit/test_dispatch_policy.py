"""The dispatch policy: strict priority, rotation within a level, a guaranteed share below."""

from __future__ import annotations

import collections

import pytest

from mesh.dispatch import Budget, DispatchPolicy, Lane


def lanes(agents: list[str], priorities: range = range(5)) -> list[Lane[None]]:
    return [Lane(agent, p, None) for agent in agents for p in priorities]


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
