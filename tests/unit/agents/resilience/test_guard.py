"""What cannot be checked when the block is declared is checked when a worker is
built: the worker refuses to start, naming the agent and what is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.registry import Registry
from agents.resilience import Fallback, Resilience, ResilienceConfigError, RetryPolicy
from agents.resilience.guard import check, describe_resilience
from agents.runtime import agent_handler


class Io(BaseModel):
    value: float


def _agent(key: str, block: Resilience) -> Agent[Io, Io]:
    class Declared(Agent[Io, Io]):
        Input, Output = Io, Io
        resilience = block

        async def run(self, input: Io, ctx: RunContext) -> Io:
            return input

    Declared.key = key
    return Declared()


@pytest.mark.parametrize(
    ("block", "says"),
    [
        (Resilience(fallback=Fallback(agents=("elsewhere",))), "'elsewhere' is not registered"),
        (Resilience(fallback=Fallback(agents=("primary",))), "names itself as its fallback"),
        (Resilience(fallback=Fallback(default={"value": "lots"})), "default does not fit its Output"),
        (Resilience(retry=RetryPolicy(on=("no_such_pkg.Error",))), "does not import"),
    ],
)
def test_a_block_that_cannot_apply_stops_the_worker_at_start(block: Resilience, says: str) -> None:
    agent = _agent("primary", block)
    with pytest.raises(ResilienceConfigError, match=says):
        agent_handler(agent, Registry([agent]))
    problem = check(agent, Registry([agent]))
    assert problem is not None and says in problem


def test_a_block_that_applies_has_no_problem_and_describes_its_queue_settings() -> None:
    backup = _agent("backup", Resilience())
    agent = _agent("primary", Resilience(fallback=Fallback(agents=("backup",), default={"value": 0})))
    described: dict[str, Any] = describe_resilience(agent, Registry([agent, backup]))
    assert described["problem"] is None and described["enforced_in_handler"] is True
    assert described["queue"]["max_attempts"] == 3 and described["queue"]["concurrency"] is None
    assert described["block"]["fallback"] == {"agents": ["backup"], "default": {"value": 0}}
