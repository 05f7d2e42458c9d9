"""What cannot be checked when the block is declared is checked when a worker is
built: the worker refuses to start, naming the agent and what is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.registry import Registry
from agents.resilience import (
    BreakerPolicy,
    Fallback,
    NotRetryable,
    Resilience,
    ResilienceConfigError,
    RetryPolicy,
)
from agents.resilience.guard import AgentGuard, check, describe_resilience
from agents.runtime import agent_handler
from mesh.queue.worker import TaskContext


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


class _Failed(Exception):
    """A failure that says its category, as a sandboxed run's does."""

    def __init__(self, category: str) -> None:
        super().__init__(f"{category} in the child")
        self.category = category


def _task(attempt: int = 1) -> Any:
    async def nothing(percent: float) -> None:
        return None

    return TaskContext(run_id="r", agent="primary", tenant="t", routing_key=None, attempt=attempt,
                       input={"value": 1}, envelope=None, _report=nothing)  # type: ignore[arg-type]  # fmt: skip


async def test_an_invocation_elsewhere_gets_the_same_retry_rule_breaker_and_fallback() -> None:
    outcomes: list[str] = []

    async def sandboxed(agent: Any, task: Any, ctx: RunContext) -> Any:
        category = outcomes.pop(0)
        if category == "ok":
            return {"value": 2.0}
        raise _Failed(category)

    breaker = BreakerPolicy(min_calls=3, failure_rate=0.5)
    block = Resilience(retry=RetryPolicy(on=("timeout",)), breaker=breaker)
    guard = AgentGuard(_agent("primary", block), None, invoke=sandboxed)
    ctx = RunContext(run_id="r")
    outcomes[:] = ["ok", "timeout", "internal_error"]
    assert await guard.call(_task(), None, ctx) == {"value": 2.0}
    with pytest.raises(_Failed):  # its category is in retry.on: raised as it is, for the queue to retry
        await guard.call(_task(), None, ctx)
    with pytest.raises(NotRetryable, match=r"\[internal_error\]"):
        await guard.call(_task(), None, ctx)
    assert guard.breaker is not None and guard.breaker.state == "open"  # 2 of 3 failed
    with_default = AgentGuard(
        _agent("primary", Resilience(fallback=Fallback(default={"value": 0}))), None, invoke=sandboxed
    )
    outcomes[:] = ["input_error"]
    answer = await with_default.call(_task(), None, ctx)
    assert answer["value"] == 0 and answer["_fallback"]["hops"][0]["category"] == "input_error"
