"""The execution timeout: a hanging attempt is cancelled at its limit and recorded
as a timeout; a timeout is retried like any failure of its category."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from agents.contract import RunContext
from agents.resilience import Resilience, RetryPolicy
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus
from tests.integration.resilience.conftest import In, Out, Serve, finished, make_agent


async def test_a_hanging_agent_is_cut_at_its_timeout_and_the_run_records_the_timeout(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    cancelled: list[int] = []

    async def hangs(input: In, ctx: RunContext) -> Out:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.append(ctx.attempt)
            raise
        raise AssertionError("unreachable")

    agent = make_agent("hang", Resilience(retry=RetryPolicy(max_attempts=1), timeout_s=0.3), hangs)
    await serve(agent)
    queued = await queue.enqueue(TaskSpec(agent=agent.key, input={}))
    state = await finished(mesh_js, queued.run_id, timeout=5)
    assert state.status == RunStatus.FAILED and state.attempts == 1
    [error] = state.errors
    assert error.error_type == "AgentTimeout" and error.error.startswith("[timeout]"), error
    assert cancelled == [1]  # the agent's run was cancelled, not left running
    assert state.started_at is not None and state.finished_at is not None
    took = (state.finished_at - state.started_at).total_seconds()
    assert 0.3 <= took < 2.0, took


async def test_a_timed_out_attempt_is_retried_and_the_next_one_answers(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    async def slow_once(input: In, ctx: RunContext) -> Out:
        if ctx.attempt == 1:
            await asyncio.Event().wait()
        return Out(i=ctx.attempt)

    retry = RetryPolicy(max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.05, on=("timeout",))
    agent = make_agent("slowonce", Resilience(retry=retry, timeout_s=0.2), slow_once)
    await serve(agent)
    queued = await queue.enqueue(TaskSpec(agent=agent.key, input={}))
    state = await finished(mesh_js, queued.run_id, timeout=5)
    assert state.status == RunStatus.SUCCEEDED and state.result == {"i": 2, "by": ""}
    assert [(e.error_type, e.retryable) for e in state.errors] == [("AgentTimeout", True)]
