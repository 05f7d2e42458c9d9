"""Atomic batch enqueue: all or nothing, idempotent by batch key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.errors import BatchRejected, PayloadTooLarge, QueueFull
from mesh.provision import ProvisionConfig, provision
from mesh.queue.producer import MAX_BATCH, TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import unique


async def depth(js: JetStreamContext, agent: str) -> int:
    info = await js.stream_info(names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.{agent}.>")
    return sum((info.state.subjects or {}).values())


async def test_a_batch_of_1000_is_stored_and_every_task_runs_once(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("batch")
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        seen.append(ctx.input["i"])
        if len(seen) == MAX_BATCH:
            done.set()

    queued = await queue.enqueue_batch([TaskSpec(agent, {"i": i}) for i in range(MAX_BATCH)])
    assert len({q.run_id for q in queued}) == MAX_BATCH
    assert await depth(mesh_js, agent) == MAX_BATCH
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)}, concurrency=64)
    await worker.start()
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await worker.stop(5)
    assert sorted(seen) == list(range(MAX_BATCH))


async def test_a_batch_with_one_bad_task_stores_nothing(mesh_js: JetStreamContext, queue: TaskQueue) -> None:
    agent = unique("atomic")
    specs = [TaskSpec(agent, {"i": i}) for i in range(5)]
    specs.append(TaskSpec("Not A Key!", {}))
    with pytest.raises(Exception, match="invalid agent key"):
        await queue.enqueue_batch(specs)
    with pytest.raises(BatchRejected, match="1 to 1000"):
        await queue.enqueue_batch([TaskSpec(agent, {})] * (MAX_BATCH + 1))
    with pytest.raises(BatchRejected, match="idempotency"):
        await queue.enqueue_batch([TaskSpec(agent, {}, idempotency_key="k")])
    assert await depth(mesh_js, agent) == 0


async def test_oversized_task_is_rejected_before_publish(nc: Client, mesh_js: JetStreamContext) -> None:
    agent = unique("big")
    async with TaskQueue(nc, mesh_js, max_payload=10_000) as small:
        # Half the max payload: its dead letter (base64) and its outcome must fit too.
        with pytest.raises(PayloadTooLarge, match=r"task is 6\d+ bytes, the limit is 5000 bytes"):
            await small.enqueue(TaskSpec(agent, {"blob": "x" * 6_000}))
        with pytest.raises(PayloadTooLarge):
            await small.enqueue_batch([TaskSpec(agent, {}), TaskSpec(agent, {"b": "x" * 20_000})])
    assert await depth(mesh_js, agent) == 0


async def test_retried_batch_with_the_same_key_returns_the_same_runs(
    mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("bkey")
    specs = [TaskSpec(agent, {"i": i}) for i in range(10)]
    first = await queue.enqueue_batch(specs, batch_key="upload-42")
    again = await queue.enqueue_batch(specs, batch_key="upload-42")
    assert [q.run_id for q in again] == [q.run_id for q in first]
    assert all(q.duplicate for q in again)
    assert await depth(mesh_js, agent) == 10
    state = await get_run(mesh_js, first[0].run_id)
    assert state is not None and state.status == RunStatus.QUEUED


async def test_full_queue_rejects_at_publish_time(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        nc = await connect(server.url)
        js = await jetstream(nc)
        await provision(js, ProvisionConfig(max_queue_depth=5))
        async with TaskQueue(nc, js) as q:
            for i in range(5):
                await q.enqueue(TaskSpec("full", {"i": i}))
            with pytest.raises(QueueFull, match="full") as caught:
                await q.enqueue(TaskSpec("full", {"i": 5}))
            assert caught.value.status == 429 and caught.value.limit == 5  # the server's limit
            with pytest.raises(QueueFull):
                await q.enqueue_batch([TaskSpec("full", {"i": 6}), TaskSpec("full", {"i": 7})])
        assert await depth(js, "full") == 5
        await nc.drain()
    finally:
        server.stop()
