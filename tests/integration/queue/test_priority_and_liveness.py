"""Anti-starvation under sustained CRITICAL load, heartbeats, progress."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.envelope import Priority
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import unique

from .test_worker_basics import wait_for_run


async def test_background_work_moves_under_sustained_critical_load(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("starve")
    done: list[int] = []
    background_done = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        done.append(ctx.input["p"])
        if ctx.input["p"] == Priority.BACKGROUND and done.count(4) == 5:
            background_done.set()

    await queue.enqueue_batch([TaskSpec(agent, {"p": 4}, priority=Priority.BACKGROUND)] * 5)
    await queue.enqueue_batch([TaskSpec(agent, {"p": 0}, priority=Priority.CRITICAL)] * 1000)
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)}, concurrency=1)
    await worker.start()
    try:
        await asyncio.wait_for(background_done.wait(), 30)
    finally:
        await worker.stop(2)
    # All 5 BACKGROUND tasks ran while CRITICAL work was still waiting, and
    # CRITICAL kept its share: one sweep in ten starts lower (fair_share 0.1).
    critical = done.count(0)
    assert 5 * 8 <= critical <= 5 * 10, done


async def test_heartbeats_keep_a_long_task_from_being_redelivered(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("long")
    starts: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        starts.append(ctx.attempt)
        await asyncio.sleep(3.5)  # more than three times the ack wait
        return "done"

    cfg = AgentQueueConfig(agent, ack_wait_s=1.0)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, concurrency=4)
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}))
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED, timeout=15)
    finally:
        await worker.stop(2)
    assert starts == [1] and state.attempts == 1


async def test_progress_reported_by_a_running_task_is_visible(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("progress")
    halfway = asyncio.Event()
    proceed = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        await ctx.report_progress(50)
        halfway.set()
        await proceed.wait()
        return "done"

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)})
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}))
        await asyncio.wait_for(halfway.wait(), 10)
        state = await get_run(mesh_js, queued.run_id)
        assert state is not None and state.status == RunStatus.RUNNING and state.progress == 50
        proceed.set()
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
        assert state.progress == 100
    finally:
        await worker.stop(2)
