"""The local circuit breaker on a real worker: it opens at the failure rate,
fails fast (the agent is not called), and half-opens after ``open_s``."""

from __future__ import annotations

import time

from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from agents.contract import RunContext
from agents.resilience import BreakerPolicy, Fallback, Resilience, RetryPolicy
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunState, RunStatus
from tests.helpers import eventually
from tests.integration.resilience.conftest import Behaviour, In, Out, Serve, finished, make_agent

OPEN_S = 1.0
BREAKER = BreakerPolicy(window_s=60, min_calls=4, failure_rate=0.5, open_s=OPEN_S, half_open_calls=1)


def _gauge(agent: str) -> float | None:
    return REGISTRY.get_sample_value("af_breaker_state", {"agent": agent})


def _moved(agent: str, a: str, b: str) -> float:
    labels = {"agent": agent, "from_state": a, "to_state": b}
    return REGISTRY.get_sample_value("af_breaker_transitions_total", labels) or 0.0


def _flaky(calls: list[int]) -> Behaviour:
    async def run(input: In, ctx: RunContext) -> Out:
        calls.append(input.i)
        if input.i < 0:
            raise ConnectionError("upstream down")
        return Out(i=input.i)

    return run


async def _run(js: JetStreamContext, queue: TaskQueue, agent: str, i: int) -> RunState:
    queued = await queue.enqueue(TaskSpec(agent=agent, input={"i": i}))
    return await finished(js, queued.run_id)


async def test_the_breaker_opens_at_its_failure_rate_fails_fast_and_half_opens_after_its_duration(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[int] = []
    agent = make_agent(
        "breaker", Resilience(retry=RetryPolicy(max_attempts=1), breaker=BREAKER), _flaky(calls)
    )
    await serve(agent)
    key = agent.key
    for i in (1, -1, -2):
        await _run(mesh_js, queue, key, i)
    assert _gauge(key) == 0  # 2 of 3 failed, but under min_calls
    opened = time.monotonic()  # no later than the breaker opens
    assert (await _run(mesh_js, queue, key, -3)).status == RunStatus.FAILED
    assert _gauge(key) == 2 and _moved(key, "closed", "open") == 1

    refused = await _run(mesh_js, queue, key, 4)  # would succeed, but is not even called
    assert refused.status == RunStatus.FAILED and 4 not in calls
    [error] = refused.errors
    assert error.error_type == "BreakerOpen" and error.retryable is True

    async def probe_answers() -> bool:
        return (await _run(mesh_js, queue, key, 5)).status == RunStatus.SUCCEEDED

    await eventually(probe_answers, 5, "a probe run after open_s", every=0.1)
    assert time.monotonic() - opened >= OPEN_S
    assert calls.count(5) == 1  # the probe is the first call the breaker let through
    assert _moved(key, "open", "half_open") == 1 and _moved(key, "half_open", "closed") == 1
    assert _gauge(key) == 0


async def test_an_open_breaker_with_a_fallback_answers_from_the_fallback_without_calling_the_agent(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[int] = []
    block = Resilience(
        retry=RetryPolicy(max_attempts=1), breaker=BREAKER.model_copy(update={"open_s": 600}),
        fallback=Fallback(default={"i": 0, "by": "default"}),
    )  # fmt: skip
    agent = make_agent("breakfall", block, _flaky(calls))
    await serve(agent)
    for i in (-1, -2, -3, -4):
        assert (await _run(mesh_js, queue, agent.key, i)).result["_fallback"]["answered_by"] == "default"
    assert _gauge(agent.key) == 2
    state = await _run(mesh_js, queue, agent.key, 9)
    assert state.status == RunStatus.SUCCEEDED and 9 not in calls
    [primary, default] = state.result["_fallback"]["hops"]
    assert primary["error"].startswith("BreakerOpen: [breaker_open]") and default["hop"] == "default"
