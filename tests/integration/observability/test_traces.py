"""One trace per agent chain, across real processes (issue 25, part 1).

The test's process is the gateway (spans in the SDK's in-memory exporter); the
worker and the chained agents are processes of their own that export over
OTLP/HTTP to a small receiver served here. Their samplers are set to 0: they
record only because the caller's sampled ``traceparent`` says so (parent-based).
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.registry import example_registry
from gateway.app import Gateway, Parts
from gateway.settings import Settings
from mesh import trace
from mesh.channels.messaging import Mesh
from tests.helpers import eventually
from tests.integration.gateway.conftest import served
from tests.integration.observability.otlp import Collector, Span, from_sdk, one, process


async def test_an_api_request_its_enqueue_and_its_run_in_a_worker_process_are_one_trace(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str, tmp_path: Path,
    collector: tuple[Collector, str], spans: InMemorySpanExporter, nats_url: str,
) -> None:  # fmt: skip
    received, endpoint = collector
    argv = ["-m", "gateway.cli", "worker", "--name", "traced-worker", "--agents", "noop", "--no-sandbox",
            "--drain-timeout", "2"]  # fmt: skip
    parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2, worker=None, dedicated=False)
    gateway = Gateway(Settings(max_payload_bytes=64 * 1024), example_registry(), parts)
    with process(argv, nats_url, endpoint, tmp_path / "worker.log"):
        async with served(gateway, nc, database_url) as api:
            resp = await api.post("/api/v1/agents/noop/runs", json={"input": {}, "tenant": "acme"})
            assert resp.status == 202, await resp.text()
            run_id = (await resp.json())["run_id"]

            async def finished() -> bool:
                return (await (await api.get(f"/api/v1/runs/{run_id}")).json())["status"] == "succeeded"

            await eventually(finished, 30, "the run succeeded in the worker process", every=0.1)

            def worker_spans() -> list[Span]:
                ours = [s for s in received.spans if s["attributes"].get("af.run_id") == run_id]
                names = {s["name"] for s in received.spans}
                return received.spans if ours and "outcome.write" in names else []

            await eventually(worker_spans, 15, "the worker's spans at the collector", every=0.1)
    gateway_spans = [from_sdk(s) for s in spans.get_finished_spans()]
    request = one(gateway_spans, "POST /api/v1/agents/{key}/runs")
    enqueue = one(gateway_spans, "enqueue noop")
    tid = request["trace_id"]
    worker = [s for s in received.spans if s["trace_id"] == tid]
    wait, attempt, outcome = (one(worker, n) for n in ("queue.wait", "attempt noop", "outcome.write"))
    assert request["parent"] is None
    assert enqueue["trace_id"] == tid and enqueue["parent"] == request["span_id"]
    assert wait["parent"] == enqueue["span_id"] and attempt["parent"] == enqueue["span_id"]
    assert outcome["parent"] == attempt["span_id"]
    assert {s["process"] for s in worker} == {"traced-worker"}
    assert enqueue["attributes"]["af.run_id"] == run_id
    assert attempt["attributes"] | {"af.agent": "noop", "af.tenant": "acme", "af.run_id": run_id,
                                    "af.attempt": 1} == attempt["attributes"]  # fmt: skip
    assert attempt["status"] == 1  # OK


async def test_agent_a_calling_b_calling_c_across_processes_is_one_trace_with_each_parent(
    nc: Client, mesh_js: JetStreamContext, tmp_path: Path,
    collector: tuple[Collector, str], spans: InMemorySpanExporter, nats_url: str,
) -> None:  # fmt: skip
    received, endpoint = collector
    chain = ["-m", "tests.integration.observability.chain_agent"]
    ready = await nc.subscribe("af.test.ready.*")
    with (
        process([*chain, "trace-c"], nats_url, endpoint, tmp_path / "c.log"),
        process([*chain, "trace-b", "trace-c"], nats_url, endpoint, tmp_path / "b.log"),
    ):
        said = {(await ready.next_msg(timeout=30)).subject for _ in range(2)}
        assert said == {"af.test.ready.trace-b", "af.test.ready.trace-c"}
        async with Mesh(nc, agent="trace-a") as mesh:
            with trace.tracer().start_as_current_span("agent trace-a") as root:
                reply = await mesh.request("trace-b", {"from": "a"}, timeout=10)
        assert reply.payload == {"path": ["trace-b", "trace-c"]}
        tid = f"{root.get_span_context().trace_id:032x}"

        def both() -> list[Span]:
            mine = [s for s in received.spans if s["trace_id"] == tid]
            return mine if {s["process"] for s in mine} == {"trace-b", "trace-c"} else []

        exported = await eventually(both, 15, "spans of b and c at the collector", every=0.1)
    a = from_sdk(next(s for s in spans.get_finished_spans() if s.name == "agent trace-a"))
    b = next(s for s in exported if s["process"] == "trace-b" and s["parent"] == a["span_id"])
    c = next(s for s in exported if s["process"] == "trace-c")
    assert c["parent"] == b["span_id"], (b, c)
