"""What `get` shows of a run a worker is running: a long attempt is shown running, with
its worker and start, without a state write for short ones."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import unique

from .test_worker_basics import wait_for_run


async def test_an_attempt_running_past_a_second_is_shown_running_with_its_worker(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("long-run")
    release, running = asyncio.Event(), asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        running.set()
        await release.wait()
        return {"done": True}

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)}, name="w-long")
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {"n": 1}))
        async with asyncio.timeout(10):
            await running.wait()
        assert (await get_run(mesh_js, queued.run_id)).status == RunStatus.QUEUED  # type: ignore[union-attr]
        shown = await wait_for_run(mesh_js, queued.run_id, RunStatus.RUNNING, timeout=5)
        assert shown.worker is not None and shown.worker.startswith("w-long@")
        assert shown.started_at is not None and shown.first_started_at == shown.started_at
        assert shown.attempts == 1
        release.set()
        done = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        release.set()
        await worker.stop()
    assert done.worker == shown.worker and done.first_started_at == shown.started_at
