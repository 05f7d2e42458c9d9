"""The lifecycle state machine as a table: every pair of states, allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from agents.lifecycle.states import TRANSITIONS, IllegalTransition, State, check_transition

S = State
ALLOWED = {
    (S.CREATED, S.VALIDATING),
    (S.VALIDATING, S.VALIDATED), (S.VALIDATING, S.FAILED),
    (S.VALIDATED, S.DEPLOYING), (S.VALIDATED, S.RETIRED),
    (S.DEPLOYING, S.WARMING_UP), (S.DEPLOYING, S.FAILED),
    (S.WARMING_UP, S.RUNNING), (S.WARMING_UP, S.FAILED),
    (S.RUNNING, S.DEGRADED), (S.RUNNING, S.DRAINING), (S.RUNNING, S.FAILED),
    (S.DEGRADED, S.RUNNING), (S.DEGRADED, S.DRAINING), (S.DEGRADED, S.FAILED),
    (S.DRAINING, S.RETIRED), (S.DRAINING, S.FORCE_STOPPED),
    (S.FAILED, S.DEPLOYING), (S.FAILED, S.RETIRED),
    (S.FORCE_STOPPED, S.DEPLOYING), (S.FORCE_STOPPED, S.RETIRED),
}  # fmt: skip


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(State, State)))
def test_every_pair_of_states_is_allowed_or_refused_as_the_table_says(current: State, wanted: State) -> None:
    if (current, wanted) in ALLOWED:
        assert check_transition(current, wanted) is wanted
        return
    with pytest.raises(IllegalTransition) as refused:
        check_transition(current, wanted)
    assert refused.value.status == 409
    assert refused.value.current is current and refused.value.wanted is wanted
    assert f"from {current.value} to {wanted.value}" in str(refused.value)
    for allowed in TRANSITIONS[current]:
        assert allowed.value in str(refused.value)  # the refusal names what may come next


def test_the_happy_path_from_created_to_retired_is_one_walk() -> None:
    path = [S.CREATED, S.VALIDATING, S.VALIDATED, S.DEPLOYING, S.WARMING_UP, S.RUNNING, S.DRAINING, S.RETIRED]
    for current, wanted in itertools.pairwise(path):
        check_transition(current, wanted)


def test_retired_is_final_and_says_so() -> None:
    with pytest.raises(IllegalTransition, match="it is final: nothing follows"):
        check_transition(S.RETIRED, S.DEPLOYING)


def test_no_state_is_a_dead_end() -> None:
    """No state is a dead end: each reaches RETIRED through allowed steps."""
    for start in State:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert S.RETIRED in seen, start
