"""An agent calls another through the task queue (``ctx.call``; agents/calls.py), on a real
nats-server with real workers: the answer composed, one trace, one run of the callee per
call however often the caller runs, and the refusals (unknown agent, too deep a chain)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.calls import MAX_CALL_DEPTH
from agents.contract import Agent
from agents.registry import Registry
from agents.runtime import worker_for
from agents.sandbox import Sandbox, SandboxLimits
from agents.sandboxed import sandbox_config
from mesh import names, trace
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.results import await_outcome
from mesh.queue.runs import ExecutionFinished, RunStatus
from mesh.queue.worker import TaskWorker
from tests.helpers import eventually, terminate, unique
from tests.integration.observability.conftest import collector  # noqa: F401  (a fixture)
from tests.integration.observability.otlp import Collector, Span, from_sdk, one, process
from tests.integration.queue.call_agents import (
    CallsFromSandbox,
    Chain,
    KillA,
    KillB,
    ProcA,
    ProcB,
    ProcC,
    chain,
)

Serve = Callable[..., Awaitable[TaskWorker]]


@pytest.fixture
async def serve(nc: Client, mesh_js: JetStreamContext) -> AsyncIterator[Serve]:
    """Start a worker (in this process) serving ``agents``; stopped after the test."""
    workers: list[TaskWorker] = []

    async def start(*agents: Agent[object, object], **options: object) -> TaskWorker:  # type: ignore[type-var]
        worker = worker_for(nc, mesh_js, Registry(agents), idle_poll_s=0.2, config_watch=False, **options)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop(drain_timeout=2.0)


async def run_to_end(nc: Client, js: JetStreamContext, queue: TaskQueue, agent: str, input: object,
                     tenant: str = "default") -> ExecutionFinished:  # fmt: skip
    queued = await queue.enqueue(TaskSpec(agent, input, tenant=tenant, correlation_id="corr-calls"))
    return await await_outcome(nc, js, agent, queued.run_id, timeout_s=30)


async def lane_count(js: JetStreamContext, agent: str) -> int:
    info = await js.stream_info(names.STREAM_TASKS, subjects_filter=f"af.tasks.{agent}.>")
    return sum((info.state.subjects or {}).values())


async def test_a_calling_b_calling_c_through_the_queue_answers_c_composed(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    a, b, c = unique("call-a"), unique("call-b"), unique("call-c")
    top, middle, leaf = chain(a, b), chain(b, c), chain(c)
    await serve(top, middle, leaf)
    outcome = await run_to_end(nc, mesh_js, queue, a, {"x": 0}, tenant="acme")
    assert outcome.status is RunStatus.SUCCEEDED, outcome.errors
    assert outcome.result == {"answer": 22, "path": [a, b, c]}  # c: 2 * 10, b: + 1, a: + 1
    assert len(middle.starts) == len(leaf.starts) == 1
    callee = await await_outcome(nc, mesh_js, b, middle.starts[0], timeout_s=5)
    assert callee.tenant == "acme" and callee.idempotency_key == f"af-call:{outcome.run_id}:1"


async def test_the_chain_is_one_trace_each_run_a_child_of_its_callers_attempt(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve,
    spans: InMemorySpanExporter,
) -> None:  # fmt: skip
    a, b, c = unique("call-a"), unique("call-b"), unique("call-c")
    await serve(chain(a, b), chain(b, c), chain(c))
    outcome = await run_to_end(nc, mesh_js, queue, a, {"x": 0})
    assert outcome.status is RunStatus.SUCCEEDED, outcome.errors

    def ended() -> list[dict[str, object]]:  # an attempt's span ends just after its outcome is stored
        found = [from_sdk(s) for s in spans.get_finished_spans()]
        return found if {f"attempt {k}" for k in (a, b, c)} <= {s["name"] for s in found} else []

    spans = await eventually(ended, 5, "the three attempts' spans ended", every=0.02)

    def named(name: str) -> dict[str, object]:
        found = [s for s in spans if s["name"] == name]
        assert len(found) == 1, (name, [s["name"] for s in spans])
        return found[0]

    enqueue_a, attempt_a = named(f"enqueue {a}"), named(f"attempt {a}")
    enqueue_b, attempt_b = named(f"enqueue {b}"), named(f"attempt {b}")
    enqueue_c, attempt_c = named(f"enqueue {c}"), named(f"attempt {c}")
    chain_spans = [enqueue_a, attempt_a, enqueue_b, attempt_b, enqueue_c, attempt_c]
    assert len({s["trace_id"] for s in chain_spans}) == 1
    assert attempt_a["parent"] == enqueue_a["span_id"]
    assert enqueue_b["parent"] == attempt_a["span_id"]
    assert attempt_b["parent"] == enqueue_b["span_id"]
    assert enqueue_c["parent"] == attempt_b["span_id"]
    assert attempt_c["parent"] == enqueue_c["span_id"]
    for attempt in (attempt_b, attempt_c):  # the caller's correlation id travels down the chain
        assert attempt["attributes"]["af.correlation_id"] == "corr-calls"  # type: ignore[index]


async def test_a_caller_retried_after_its_call_does_not_run_the_callee_twice(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    a, b = unique("call-a"), unique("call-b")
    top, callee = chain(a, b, fail_first_attempt_after_call=True), chain(b)
    await serve(top, callee)
    outcome = await run_to_end(nc, mesh_js, queue, a, {"x": 4})
    assert outcome.status is RunStatus.SUCCEEDED, outcome.errors
    assert outcome.attempts == 2 and outcome.result == {"answer": 51, "path": [a, b]}
    assert len(top.starts) == 2
    assert len(callee.starts) == 1, f"the callee ran {len(callee.starts)} times for one call"


async def test_a_call_that_times_out_is_retried_and_waits_for_the_same_callee_run(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    a, b = unique("call-a"), unique("call-b")
    top, callee = chain(a, b, call_timeout_s=0.5), chain(b, hold=asyncio.Event())
    await serve(top, callee)
    queued = await queue.enqueue(TaskSpec(a, {"x": 1}))
    await eventually(lambda: len(top.starts) >= 2, 10, "the caller retried after its call timed out")
    assert callee.hold is not None
    callee.hold.set()
    outcome = await await_outcome(nc, mesh_js, a, queued.run_id, timeout_s=30)
    assert outcome.status is RunStatus.SUCCEEDED, outcome.errors
    assert outcome.result == {"answer": 21, "path": [a, b]}
    assert (
        "AgentCallTimedOut" in outcome.errors[0].error_type
        and "no outcome after 0.5 s" in outcome.errors[0].error
    )
    assert len(callee.starts) == 1, f"the callee ran {len(callee.starts)} times for one call"


async def test_a_submit_retried_answers_the_same_callee_run_and_runs_it_once(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    a, b = unique("call-a"), unique("call-b")
    callee = chain(b)
    await serve(chain(a, b, submit_only=True, fail_first_attempt_after_call=True), callee)
    outcome = await run_to_end(nc, mesh_js, queue, a, {"x": 1})
    assert outcome.status is RunStatus.SUCCEEDED and outcome.attempts == 2, outcome.errors
    submitted = outcome.result["path"][0]
    finished = await await_outcome(nc, mesh_js, b, submitted, timeout_s=10)
    assert finished.status is RunStatus.SUCCEEDED and finished.result == {"answer": 20, "path": [b]}
    assert callee.starts == [submitted]


async def test_a_callee_this_worker_does_not_know_is_called_when_another_worker_serves_it(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    a, b = unique("call-a"), unique("call-b")
    await serve(chain(a, b))  # its registry holds a alone (an installed package's worker)
    await serve(chain(b))
    outcome = await run_to_end(nc, mesh_js, queue, a, {"x": 1})
    assert outcome.status is RunStatus.SUCCEEDED, outcome.errors
    assert outcome.result == {"answer": 21, "path": [a, b]}


async def test_a_call_to_an_unknown_agent_fails_the_caller_once_and_enqueues_nothing(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    a, missing = unique("call-a"), unique("call-missing")
    await serve(chain(a, missing))
    outcome = await run_to_end(nc, mesh_js, queue, a, {"x": 0})
    assert outcome.status is RunStatus.FAILED and outcome.attempts == 1  # permanent: no retry
    assert f"no agent named {missing!r}" in (outcome.error or "")
    assert await lane_count(mesh_js, missing) == 0


async def test_an_agent_calling_itself_is_stopped_at_the_depth_limit(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    key = unique("call-loop")
    loop = chain(key, key)
    await serve(loop)
    outcome = await run_to_end(nc, mesh_js, queue, key, {"x": 0})
    assert outcome.status is RunStatus.FAILED and outcome.attempts == 1
    assert f"would nest {MAX_CALL_DEPTH + 1} agent calls deep" in (outcome.error or "")
    assert len(loop.starts) == MAX_CALL_DEPTH + 1  # depths 0 to 8, each run once


@pytest.fixture
async def sandboxed_caller(nc: Client, mesh_js: JetStreamContext, serve: Serve) -> AsyncIterator[Chain]:
    """A worker running :class:`CallsFromSandbox` in its sandbox, and the leaf it calls in process."""
    leaf = chain(unique("call-leaf"))
    caller = CallsFromSandbox()
    config = sandbox_config([caller], sys_path=[os.getcwd()], limits=SandboxLimits(timeout_s=30), slots=2)
    await serve(caller, leaf, agents=[caller.key], sandbox=Sandbox(config))
    await serve(leaf)
    yield leaf


async def test_a_sandboxed_run_calls_through_its_worker_once_per_call_in_its_trace(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, sandboxed_caller: Chain,
    spans: InMemorySpanExporter,
) -> None:  # fmt: skip
    leaf = sandboxed_caller
    asked = {"to": leaf.key, "x": 3, "fail_first_attempt_after_call": True}
    outcome = await run_to_end(nc, mesh_js, queue, CallsFromSandbox.key, asked)
    assert outcome.status is RunStatus.SUCCEEDED, outcome.errors
    assert outcome.attempts == 2
    assert outcome.result == {"answer": 31, "path": [CallsFromSandbox.key, leaf.key]}
    assert outcome.audit is not None  # it ran in the sandbox
    assert len(leaf.starts) == 1, f"the callee ran {len(leaf.starts)} times for one call"

    def ended() -> list[dict[str, object]]:
        found = [from_sdk(s) for s in spans.get_finished_spans()]
        return found if f"attempt {leaf.key}" in {s["name"] for s in found} else []

    spans = await eventually(ended, 5, "the callee's attempt span ended", every=0.02)
    attempts = [s for s in spans if s["name"] == f"attempt {CallsFromSandbox.key}"]
    enqueue = next(s for s in spans if s["name"] == f"enqueue {leaf.key}")
    assert enqueue["parent"] in {a["span_id"] for a in attempts}  # the first attempt's: it made the call
    assert enqueue["trace_id"] == attempts[0]["trace_id"]


async def test_a_sandboxed_call_to_an_unknown_agent_fails_the_run_once(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, sandboxed_caller: Chain
) -> None:
    missing = unique("call-missing")
    outcome = await run_to_end(nc, mesh_js, queue, CallsFromSandbox.key, {"to": missing})
    assert outcome.status is RunStatus.FAILED and outcome.attempts == 1, outcome.errors
    assert f"no agent named {missing!r}" in (outcome.error or "")
    assert await lane_count(mesh_js, missing) == 0


_MODULE = "tests.integration.queue.call_agents"


def worker_process(nats_url: str, agents: str, log: Path, name: str) -> subprocess.Popen[bytes]:
    """``agent-factory worker`` serving ``agents`` (its registry: every agent of call_agents)."""
    every = ",".join(f"{_MODULE}:{c}" for c in ("ProcA", "ProcB", "ProcC", "KillA", "KillB"))
    env = {**os.environ, "AF_NATS_URL": nats_url, "AF_DATA_DIR": str(log.parent), "AF_LOG_STREAM": "false",
           "AF_AGENTS": every}  # fmt: skip
    argv = [sys.executable, "-m", "gateway.cli", "worker", "--name", name, "--agents", agents, "--no-sandbox",
            "--drain-timeout", "2"]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_a_caller_whose_worker_is_killed_mid_call_is_redelivered_and_waits_for_the_same_run(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve, nats_url: str, tmp_path: Path
) -> None:
    KillB.hold, KillB.starts = asyncio.Event(), []
    await serve(KillB())
    first = worker_process(nats_url, KillA.key, tmp_path / "a.log", "call-a-1")
    second = None
    try:
        queued = await queue.enqueue(TaskSpec(KillA.key, {"x": 1}))
        await eventually(lambda: KillB.starts, 60, "the callee started (the caller is waiting for it)")
        first.kill()  # SIGKILL: the caller's attempt is lost mid-call
        first.wait()
        second = worker_process(nats_url, KillA.key, tmp_path / "a.log", "call-a-2")
        KillB.hold.set()
        outcome = await await_outcome(nc, mesh_js, KillA.key, queued.run_id, timeout_s=60)
    finally:
        KillB.hold = None
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                terminate(proc)
    assert outcome.status is RunStatus.SUCCEEDED, (outcome.errors, (tmp_path / "a.log").read_text()[-2000:])
    assert outcome.attempts == 2 and outcome.result == {"answer": 21, "path": [KillA.key, KillB.key]}
    assert len(KillB.starts) == 1, f"the callee ran {len(KillB.starts)} times for one call"


async def test_a_chain_across_worker_processes_is_one_trace_with_each_parent(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, nats_url: str, tmp_path: Path,
    collector: tuple[Collector, str], spans: InMemorySpanExporter,  # noqa: F811
) -> None:  # fmt: skip
    received, endpoint = collector
    agents = ",".join(f"{_MODULE}:{c}" for c in ("ProcA", "ProcB", "ProcC"))
    argv = ["-m", "gateway.cli", "worker", "--no-sandbox", "--drain-timeout", "2"]
    with (
        process([*argv, "--name", "call-ac", "--agents", "call-proc-a,call-proc-c"], nats_url, endpoint,
                tmp_path / "ac.log", {"AF_AGENTS": agents}),
        process([*argv, "--name", "call-b", "--agents", "call-proc-b"], nats_url, endpoint,
                tmp_path / "b.log", {"AF_AGENTS": agents}),
    ):  # fmt: skip
        with trace.tracer().start_as_current_span("submit") as root:
            queued = await queue.enqueue(TaskSpec(ProcA.key, {"x": 0}))
        outcome = await await_outcome(nc, mesh_js, ProcA.key, queued.run_id, timeout_s=60)
        assert outcome.status is RunStatus.SUCCEEDED, outcome.errors
        assert outcome.result == {"answer": 22, "path": [ProcA.key, ProcB.key, ProcC.key]}
        tid = f"{root.get_span_context().trace_id:032x}"

        def chain_spans() -> list[Span]:
            mine = [s for s in received.spans if s["trace_id"] == tid]
            return mine if {f"attempt {k}" for k in (ProcA.key, ProcB.key, ProcC.key)} <= {
                s["name"] for s in mine} else []  # fmt: skip

        exported = await eventually(chain_spans, 15, "the three attempts at the collector", every=0.1)
    enqueue_a = from_sdk(next(s for s in spans.get_finished_spans() if s.name == f"enqueue {ProcA.key}"))
    attempt_a, enqueue_b = one(exported, f"attempt {ProcA.key}"), one(exported, f"enqueue {ProcB.key}")
    attempt_b, enqueue_c = one(exported, f"attempt {ProcB.key}"), one(exported, f"enqueue {ProcC.key}")
    attempt_c = one(exported, f"attempt {ProcC.key}")
    assert attempt_a["parent"] == enqueue_a["span_id"] and attempt_a["process"] == "call-ac"
    assert enqueue_b["parent"] == attempt_a["span_id"] and enqueue_b["process"] == "call-ac"
    assert attempt_b["parent"] == enqueue_b["span_id"] and attempt_b["process"] == "call-b"
    assert enqueue_c["parent"] == attempt_b["span_id"] and enqueue_c["process"] == "call-b"
    assert attempt_c["parent"] == enqueue_c["span_id"] and attempt_c["process"] == "call-ac"
