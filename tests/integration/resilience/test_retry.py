"""Retry classes: the block decides whether a failure retries; the queue does the
retrying (a delayed nak with the lane's backoff), never the worker."""

from __future__ import annotations

import itertools
import time

from nats.js import JetStreamContext

from agents.contract import RunContext
from agents.resilience import Resilience, RetryPolicy
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from tests.helpers import eventually
from tests.integration.resilience.conftest import In, Out, Serve, finished, make_agent


async def test_a_retryable_exception_is_retried_by_the_queue_with_backoff_and_succeeds_on_attempt_3(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    starts: list[tuple[int, float]] = []

    async def flaky(input: In, ctx: RunContext) -> Out:
        starts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt < 3:
            raise ConnectionError(f"upstream refused (attempt {ctx.attempt})")
        return Out(i=input.i)

    retry = RetryPolicy(
        max_attempts=4, backoff_base_s=0.5, backoff_max_s=5, jitter=0, on=("builtins.ConnectionError",)
    )
    agent = make_agent("retry", Resilience(retry=retry), flaky)
    worker = await serve(agent)
    queued = await queue.enqueue(TaskSpec(agent=agent.key, input={"i": 7}))

    # Between attempts the task is back in the stream (a delayed nak), not held by the worker.
    async def waiting_in_the_queue() -> bool:
        state = await get_run(mesh_js, queued.run_id)
        return len(starts) == 1 and worker.in_flight == 0 and state is not None and len(state.errors) == 1

    await eventually(waiting_in_the_queue, 5, "attempt 1 failed and handed back to the queue")
    state = await finished(mesh_js, queued.run_id)
    assert state.status == RunStatus.SUCCEEDED, state.error
    assert state.result == {"i": 7, "by": ""}
    assert [a for a, _ in starts] == [1, 2, 3] and state.attempts == 3
    assert [(e.error_type, e.retryable) for e in state.errors] == [("ConnectionError", True)] * 2
    # jitter 0: base * 2 ** (n - 1) before attempt n + 1, from the block, not the queue's defaults
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(starts)]
    assert 0.49 <= gaps[0] < 0.9 and 0.99 <= gaps[1] < 1.5, gaps


async def test_an_exception_not_in_retry_on_fails_the_run_at_once_with_one_attempt(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[int] = []

    async def buggy(input: In, ctx: RunContext) -> Out:
        calls.append(ctx.attempt)
        raise ValueError("division by the wrong factor")

    retry = RetryPolicy(max_attempts=5, backoff_base_s=0.05, on=("builtins.ConnectionError", "timeout"))
    agent = make_agent("noretry", Resilience(retry=retry), buggy)
    await serve(agent)
    queued = await queue.enqueue(TaskSpec(agent=agent.key, input={}))
    state = await finished(mesh_js, queued.run_id)
    assert state.status == RunStatus.FAILED
    assert calls == [1] and state.attempts == 1
    [error] = state.errors
    assert error.retryable is False and error.error_type == "NotRetryable"
    assert "[internal_error] ValueError: division by the wrong factor" in error.error


async def test_a_category_in_retry_on_retries_every_exception_of_that_category(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[int] = []

    async def unreachable(input: In, ctx: RunContext) -> Out:
        calls.append(ctx.attempt)
        raise ConnectionResetError("peer reset")  # a ConnectionError: dependency_failure

    retry = RetryPolicy(max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.05, on=("dependency_failure",))
    agent = make_agent("category", Resilience(retry=retry), unreachable)
    await serve(agent)
    queued = await queue.enqueue(TaskSpec(agent=agent.key, input={}))
    state = await finished(mesh_js, queued.run_id)
    assert state.status == RunStatus.FAILED and calls == [1, 2]
    assert [e.retryable for e in state.errors] == [True, True]
