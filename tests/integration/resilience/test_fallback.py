"""The fallback chain: primary → secondary agents in order → static default, each
hop recorded in the run's result (``_fallback``) so ``agent-factory get`` shows it."""

from __future__ import annotations

from nats.js import JetStreamContext

from agents.contract import RunContext
from agents.resilience import Fallback, Resilience, RetryPolicy
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus
from tests.integration.resilience.conftest import Behaviour, In, Out, Serve, finished, make_agent

ONCE = RetryPolicy(max_attempts=1)


def _answers(by: str, calls: list[str]) -> Behaviour:
    async def answer(input: In, ctx: RunContext) -> Out:
        calls.append(by)
        return Out(i=input.i, by=by)

    return answer


def _fails(by: str, calls: list[str], exc: Exception) -> Behaviour:
    async def fail(input: In, ctx: RunContext) -> Out:
        calls.append(by)
        raise exc

    return fail


async def test_primary_fails_and_the_first_secondary_that_answers_is_the_result(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[str] = []
    broken = make_agent("second", Resilience(), _fails("second", calls, ConnectionError("down too")))
    working = make_agent("third", Resilience(), _answers("third", calls))
    unused = make_agent("fourth", Resilience(), _answers("fourth", calls))
    chain = Fallback(agents=(broken.key, working.key, unused.key), default={"i": -1, "by": "default"})
    primary = make_agent(
        "primary",
        Resilience(retry=ONCE, fallback=chain),
        _fails("primary", calls, RuntimeError("model offline")),
    )
    await serve(primary, broken, working, unused)
    queued = await queue.enqueue(TaskSpec(agent=primary.key, input={"i": 5}))
    state = await finished(mesh_js, queued.run_id)
    assert state.status == RunStatus.SUCCEEDED
    assert calls == ["primary", "second", "third"]  # in order, and no further than the first answer
    chain_seen = state.result.pop("_fallback")
    assert state.result == {"i": 5, "by": "third"}
    assert chain_seen["answered_by"] == "secondary" and chain_seen["agent"] == working.key
    assert [(h["hop"], h["agent"], h["answered"]) for h in chain_seen["hops"]] == [
        ("primary", primary.key, False), ("secondary", broken.key, False), ("secondary", working.key, True),
    ]  # fmt: skip
    assert chain_seen["hops"][0]["error"] == "RuntimeError: model offline"
    assert chain_seen["hops"][1]["category"] == "dependency_failure"


async def test_when_every_agent_fails_the_static_default_answers(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[str] = []
    secondary = make_agent("second", Resilience(), _fails("second", calls, ValueError("no data")))
    chain = Fallback(agents=(secondary.key,), default={"i": -1, "by": "default"})
    primary = make_agent(
        "primary", Resilience(retry=ONCE, fallback=chain), _fails("primary", calls, KeyError("x"))
    )
    await serve(primary, secondary)
    queued = await queue.enqueue(TaskSpec(agent=primary.key, input={"i": 5}))
    state = await finished(mesh_js, queued.run_id)
    assert state.status == RunStatus.SUCCEEDED and calls == ["primary", "second"]
    chain_seen = state.result.pop("_fallback")
    assert state.result == {"i": -1, "by": "default"}
    assert chain_seen["answered_by"] == "default"
    assert [(h["hop"], h["answered"]) for h in chain_seen["hops"]] == [
        ("primary", False), ("secondary", False), ("default", True),
    ]  # fmt: skip
    assert chain_seen["hops"][1]["error"] == "ValueError: no data"


async def test_the_fallback_waits_for_the_last_attempt_of_a_retryable_failure(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[str] = []
    retry = RetryPolicy(max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.05)
    chain = Fallback(default={"i": 0, "by": "default"})
    primary = make_agent(
        "primary", Resilience(retry=retry, fallback=chain), _fails("primary", calls, OSError("io"))
    )
    await serve(primary)
    queued = await queue.enqueue(TaskSpec(agent=primary.key, input={}))
    state = await finished(mesh_js, queued.run_id)
    assert state.status == RunStatus.SUCCEEDED and calls == ["primary", "primary"]
    assert state.attempts == 2 and [e.error_type for e in state.errors] == ["OSError"]
    assert state.result["_fallback"]["answered_by"] == "default"


async def test_a_secondary_gets_the_input_validated_by_its_own_model_and_without_a_default_the_run_fails(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    calls: list[str] = []
    strict = make_agent("strict", Resilience(), _answers("strict", calls))
    strict.Input = type("Strict", (In,), {"__annotations__": {"needed": str}})  # type: ignore[misc]
    primary = make_agent(
        "primary", Resilience(retry=ONCE, fallback=Fallback(agents=(strict.key,))),
        _fails("primary", calls, RuntimeError("down")),
    )  # fmt: skip
    await serve(primary, strict)
    queued = await queue.enqueue(TaskSpec(agent=primary.key, input={"i": 1}))
    state = await finished(mesh_js, queued.run_id)
    assert state.status == RunStatus.FAILED and calls == ["primary"]  # its input did not fit: never called
    [error] = state.errors
    assert error.error_type == "FallbackExhausted"  # its last attempt: to the DLQ
    assert f"secondary {strict.key}: ValidationError" in error.error and "primary" in error.error
