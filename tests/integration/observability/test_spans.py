"""The spans of one process's runs, in the SDK's in-memory exporter: an attempt's
children when the sandbox runs it, its status and error category from its outcome."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agents.registry import Registry, load_agent
from agents.sandbox import Sandbox
from agents.sandboxed import sandbox_config, sandboxed_handler
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.worker import AgentQueueConfig, TaskWorker
from tests.helpers import eventually, finished_event

SPECS = ["agents.examples.noop:NoOp", "agents.examples.fuel_combustion:FuelCombustion"]


@pytest.fixture
async def sandboxed(
    nc: Client, mesh_js: JetStreamContext, spans: InMemorySpanExporter
) -> AsyncIterator[None]:
    agents = [load_agent(spec) for spec in SPECS]
    async with Sandbox(sandbox_config(agents, sys_path=[os.getcwd()], slots=2)) as sandbox:
        handlers = {a.key: (AgentQueueConfig(a.key, version=a.version), sandboxed_handler(a, sandbox))
                    for a in Registry(agents)}  # fmt: skip
        worker = TaskWorker(nc, mesh_js, handlers, idle_poll_s=0.2)
        await worker.start()
        yield
        await worker.stop()


def _of(spans: InMemorySpanExporter, run_id: str) -> dict[str, ReadableSpan]:
    """The spans of the trace whose enqueue named ``run_id``, by name."""
    enqueue = next(s for s in spans.get_finished_spans() if (s.attributes or {}).get("af.run_id") == run_id)
    assert enqueue.context is not None
    tid = enqueue.context.trace_id
    return {s.name: s for s in spans.get_finished_spans() if s.context and s.context.trace_id == tid}


async def test_a_sandboxed_attempt_has_the_sandbox_start_run_and_outcome_as_children(
    sandboxed: None, spans: InMemorySpanExporter, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    ok = await queue.enqueue(TaskSpec("noop", {"echo": "hi"}, tenant="acme"))
    await eventually(lambda: finished_event(mesh_js, "noop", ok.run_id), 15, "noop finished")
    found = await eventually(lambda: len(_of(spans, ok.run_id)) == 6 and _of(spans, ok.run_id), 5, "6 spans")
    attempt = found["attempt noop"]
    assert attempt.context is not None and attempt.status.status_code is StatusCode.OK
    for child in ("sandbox.start", "sandbox.run", "outcome.write"):
        parent = found[child].parent
        assert parent is not None and parent.span_id == attempt.context.span_id, child
    start, run = found["sandbox.start"], found["sandbox.run"]
    assert start.end_time is not None and run.start_time is not None and start.end_time <= run.start_time
    labels = dict(attempt.attributes or {})
    assert (
        labels | {"af.agent": "noop", "af.tenant": "acme", "af.run_id": ok.run_id, "af.attempt": 1} == labels
    )
    assert "af.version" in labels


async def test_a_failed_attempt_is_an_error_span_with_its_category(
    sandboxed: None, spans: InMemorySpanExporter, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    bad = await queue.enqueue(
        TaskSpec("fuel-combustion", {"fuel": "unobtainium", "quantity": 1, "unit": "L"})
    )
    await eventually(lambda: finished_event(mesh_js, "fuel-combustion", bad.run_id), 15, "refused")
    found = await eventually(
        lambda: "outcome.write" in _of(spans, bad.run_id) and _of(spans, bad.run_id), 5, ""
    )
    attempt = found["attempt fuel-combustion"]
    assert attempt.status.status_code is StatusCode.ERROR
    assert (attempt.attributes or {})["af.error.category"] == "permanent"
    assert (attempt.attributes or {})["af.retry"] is False
    assert (found["sandbox.run"].attributes or {})["af.error.category"] == "input_error"
