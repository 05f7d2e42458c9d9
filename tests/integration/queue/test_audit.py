"""A handler's measured cost (``TaskContext.audit``, what a sandboxed run records)
travels on the finished event — on success, on a retried success and on a
failure — and is kept with the execution in PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import ValidationError

from agents.store.executions import get_execution, record_executions
from agents.store.migrations import apply_migrations
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import ExecutionFinished, RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker
from tests.helpers import eventually, finished_event, unique


async def test_the_audit_a_handler_sets_is_on_the_finished_event_whatever_the_outcome(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("audited")

    async def handler(ctx: TaskContext) -> Any:
        ctx.audit = {"cpu_s": 0.01 * ctx.attempt, "category": None, "attempt": ctx.attempt}
        if ctx.input["fail"] == "always":
            ctx.audit["category"] = "input_error"
            raise PermanentError("bad input")
        if ctx.input["fail"] == "once" and ctx.attempt == 1:
            raise RuntimeError("transient")
        return {"ok": True}

    cfg = AgentQueueConfig(agent, backoff_base_s=0.05, backoff_max_s=0.1)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        runs = {
            how: await queue.enqueue(TaskSpec(agent, {"fail": how})) for how in ("never", "once", "always")
        }
        events = {
            how: await eventually(lambda q=q: finished_event(mesh_js, agent, q.run_id), 15, f"{how} finished")
            for how, q in runs.items()
        }
    finally:
        await worker.stop()
    assert events["never"]["audit"] == {"cpu_s": 0.01, "category": None, "attempt": 1}
    assert events["once"]["audit"]["attempt"] == 2  # the attempt that decided it
    assert events["always"]["status"] == "failed"
    assert events["always"]["audit"] == {"cpu_s": 0.01, "category": "input_error", "attempt": 1}
    state = await get_run(mesh_js, runs["once"].run_id)  # the run state is projected from the event
    assert (
        state is not None and state.status == RunStatus.SUCCEEDED and state.audit == events["once"]["audit"]
    )


async def test_the_version_and_the_model_tokens_reported_are_on_the_finished_event(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    """What metering prices and canary metrics split by: the version that ran the
    deciding attempt, and the tokens that attempt reported (not earlier attempts')."""
    agent = unique("tokens")

    async def handler(ctx: TaskContext) -> Any:
        ctx.report_usage("small-model", input_tokens=100 * ctx.attempt, output_tokens=7)
        if ctx.input["fail"] == "always":
            raise PermanentError("bad input")
        if ctx.input["fail"] == "once" and ctx.attempt == 1:
            raise RuntimeError("transient")
        ctx.report_usage("big-model", input_tokens=5)
        return {"ok": True}

    cfg = AgentQueueConfig(agent, backoff_base_s=0.05, backoff_max_s=0.1, version="2.1.0")
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        runs = {
            how: await queue.enqueue(TaskSpec(agent, {"fail": how})) for how in ("never", "once", "always")
        }
        events = {
            how: await eventually(lambda q=q: finished_event(mesh_js, agent, q.run_id), 15, f"{how} finished")
            for how, q in runs.items()
        }
    finally:
        await worker.stop()
    assert {how: e["version"] for how, e in events.items()} == dict.fromkeys(runs, "2.1.0")
    small = {"model": "small-model", "output_tokens": 7}
    big = {"model": "big-model", "input_tokens": 5, "output_tokens": 0}
    assert events["never"]["usage"] == [{**small, "input_tokens": 100}, big]
    assert events["once"]["usage"] == [{**small, "input_tokens": 200}, big]  # the deciding attempt's
    assert events["always"]["usage"] == [{**small, "input_tokens": 100}]


async def test_a_bad_token_report_is_refused_where_it_is_made(nc: Client) -> None:
    ctx = TaskContext("r", "a", "t", None, 1, None, None, _report=None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ctx.report_usage("m", input_tokens=-1)
    with pytest.raises(ValidationError):
        ctx.report_usage("", input_tokens=1)
    assert ctx.usage is None


async def test_the_audit_is_kept_with_the_execution(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        event = ExecutionFinished.model_validate({
            "run_id": unique("r"), "agent": "noop", "tenant": "t", "status": "succeeded", "attempts": 1,
            "enqueued_at": "2026-12-03T10:00:00Z", "finished_at": "2026-12-03T10:00:01Z",
            "audit": {"exit_status": 0, "peak_rss_kb": 51200, "category": None},
        })  # fmt: skip
        without = event.model_copy(update={"run_id": unique("r"), "audit": None})
        assert await record_executions(pool, [event, without]) == 0  # none had to be mended
        row = await get_execution(pool, event.run_id)
        assert row is not None and row["audit"] == {"exit_status": 0, "peak_rss_kb": 51200, "category": None}
        row = await get_execution(pool, without.run_id)
        assert row is not None and row["audit"] is None
    finally:
        await pool.close()
