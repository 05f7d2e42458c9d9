"""The stream processors in the run's trace and in ``AF_LOGS`` (issue 25): a run through
the queue, its worker and a processor each a process of their own, as ``up`` runs them.

The processors read every finished event of their server from its start: each test
has a nats-server of its own (as the processor tests do)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.cli import cli
from mesh.embedded import NatsServer
from mesh.provision import provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.wire.connection import connect, jetstream
from tests.helpers import eventually
from tests.integration.observability.otlp import CONSUMER, Collector, Span, from_sdk, one, process

WORKER = ["-m", "gateway.cli", "worker", "--name", "traced-worker", "--agents", "noop", "--no-sandbox",
          "--drain-timeout", "2"]  # fmt: skip
BREAKER = ["-m", "gateway.cli", "processors", "--only", "breaker", "--session-timeout", "2"]


@pytest.fixture
async def own_nc(own_nats: NatsServer) -> AsyncIterator[Client]:
    nc = await connect(own_nats.url)
    await provision(await jetstream(nc))
    yield nc
    await nc.close()


async def test_a_processors_handling_of_a_finished_run_is_a_consumer_span_of_the_runs_trace(
    own_nats: NatsServer, own_nc: Client, tmp_path: Path,
    collector: tuple[Collector, str], spans: InMemorySpanExporter,
) -> None:  # fmt: skip
    received, endpoint = collector
    with (
        process(WORKER, own_nats.url, endpoint, tmp_path / "worker.log"),
        process(BREAKER, own_nats.url, endpoint, tmp_path / "breaker.log"),
    ):
        async with TaskQueue(own_nc, await jetstream(own_nc)) as queue:
            run_id = (await queue.enqueue(TaskSpec("noop", {}, tenant="acme"))).run_id

        def handled() -> list[Span]:
            return [s for s in received.spans if s["name"] == "breaker noop"
                    and s["attributes"].get("af.run_id") == run_id]  # fmt: skip

        await eventually(handled, 45, "the breaker's span of the run at the collector", every=0.2)
    enqueue = one([from_sdk(s) for s in spans.get_finished_spans()], "enqueue noop")
    tid = enqueue["trace_id"]
    run = [s for s in received.spans if s["trace_id"] == tid]
    outcome, handling = one(run, "outcome.write"), one(run, "breaker noop")
    assert outcome["process"] == "traced-worker" and handling["process"] == "processor-breaker"
    assert handling["parent"] == outcome["span_id"]  # the event's producer: the worker's write
    assert handling["kind"] == CONSUMER
    assert handling["attributes"] == {"af.agent": "noop", "af.tenant": "acme", "af.run_id": run_id,
                                      "af.processor": "breaker"}  # fmt: skip


def _logs(nats_url: str, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["logs", *args, "-o", "json"], env={"AF_NATS_URL": nats_url})
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


async def test_a_processors_log_lines_are_read_by_agent_factory_logs_process(
    own_nats: NatsServer, own_nc: Client, tmp_path: Path, collector: tuple[Collector, str]
) -> None:
    _, endpoint = collector
    log = tmp_path / "breaker.log"
    env = {"AF_LOG_STREAM": "true", "AF_LOG_FORMAT": "json"}
    with process(BREAKER, own_nats.url, endpoint, log, env=env):

        async def found() -> list[dict[str, Any]]:
            return await asyncio.to_thread(_logs, own_nats.url, "--process", "processor-breaker")

        lines = await eventually(found, 60, "a line of processor-breaker in AF_LOGS", every=0.5)
    assert all(line["process"] == "processor-breaker" for line in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    # stderr: the same records, JSON (AF_LOG_FORMAT), not Faust's own format.
    said = [json.loads(text) for text in log.read_text().splitlines() if text.startswith("{")]
    assert said and all(line["process"] == "processor-breaker" for line in said)
