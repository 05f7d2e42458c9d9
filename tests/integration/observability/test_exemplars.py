"""Exemplars: a traced run's latency observations carry its trace id, on the worker's
own /metrics and through the gateway's merge, in OpenMetrics only; the text format
stays as it was, and an untraced run has none (docs/observability.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gateway.worker_metrics import OPENMETRICS, merged_metrics, serve_worker_metrics
from mesh import trace
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import unique
from tests.integration.queue.test_worker_basics import wait_for_run

POOL = "worker-exemplars"


@pytest.fixture
async def pool_metrics(tmp_path: Path) -> AsyncIterator[tuple[Path, str]]:
    """This process's registry served as a pool's, named in a data dir as `up`'s pools do."""
    async with serve_worker_metrics(tmp_path, POOL) as url:
        yield tmp_path, url


async def _run(nc: Client, js: JetStreamContext, queue: TaskQueue, agent: str) -> str:
    async def handler(ctx: TaskContext) -> Any:
        return {"ok": True}

    worker = TaskWorker(nc, js, {agent: (AgentQueueConfig(agent, version="3.1.0"), handler)})
    await worker.start()
    try:
        run = await queue.enqueue(TaskSpec(agent, {}, tenant="acme"))
        await wait_for_run(js, run.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    return run.run_id


async def _get(url: str, accept: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": accept}) as response:
        return response.content_type, await response.text()


def _exemplars(text: str, histogram: str, agent: str, worker: str | None = None) -> set[str]:
    """The trace ids of ``histogram``'s bucket exemplars of ``agent`` (of one merged pool's samples)."""
    found = set()
    for family in parse_openmetrics(text):
        for s in family.samples:
            ours = s.labels.get("agent") == agent and (worker is None or s.labels.get("worker") == worker)
            if s.name == f"{histogram}_bucket" and ours and s.exemplar is not None:
                found.add(s.exemplar.labels["trace_id"])
    return found


async def test_a_traced_run_leaves_its_trace_id_as_exemplar_on_the_pool_and_through_the_merge(
    spans: InMemorySpanExporter, nc: Client, mesh_js: JetStreamContext, queue: TaskQueue,
    pool_metrics: tuple[Path, str],
) -> None:  # fmt: skip
    data_dir, url = pool_metrics
    agent = unique("exemplar")
    run_id = await _run(nc, mesh_js, queue, agent)
    (attempt,) = [s for s in spans.get_finished_spans() if s.name == f"attempt {agent}"]
    assert attempt.context is not None and (attempt.attributes or {})["af.run_id"] == run_id
    trace_id = f"{attempt.context.trace_id:032x}"

    content_type, own = await _get(url, f"{OPENMETRICS}; version=1.0.0")
    assert content_type == OPENMETRICS
    assert _exemplars(own, "af_task_run_seconds", agent) == {trace_id}
    assert _exemplars(own, "af_task_wait_seconds", agent) == {trace_id}

    # The gateway's merge: the pool's samples (labelled worker=...) keep their exemplars.
    merged = (await merged_metrics(data_dir, openmetrics=True)).decode()
    assert _exemplars(merged, "af_task_run_seconds", agent, worker=POOL) == {trace_id}
    assert _exemplars(merged, "af_task_wait_seconds", agent, worker=POOL) == {trace_id}

    # The text format has no exemplars, and still parses, merged or not.
    content_type, plain = await _get(url, "text/plain")
    assert content_type == "text/plain" and trace_id not in plain
    merged_text = (await merged_metrics(data_dir)).decode()
    assert trace_id not in merged_text
    runs = [s for f in parse_text(merged_text) for s in f.samples
            if s.name == "af_task_run_seconds_count" and s.labels["agent"] == agent]  # fmt: skip
    assert {s.labels.get("worker", "") for s in runs} == {"", POOL}


async def test_an_untraced_run_has_no_exemplar(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, pool_metrics: tuple[Path, str]
) -> None:
    assert not trace.recording()
    agent = unique("plain")
    await _run(nc, mesh_js, queue, agent)
    _, own = await _get(pool_metrics[1], OPENMETRICS)
    assert _exemplars(own, "af_task_run_seconds", agent) == set()
    counts = [s for f in parse_openmetrics(own) for s in f.samples
              if s.name == "af_task_run_seconds_count" and s.labels["agent"] == agent]  # fmt: skip
    assert [s.value for s in counts] == [1.0]
