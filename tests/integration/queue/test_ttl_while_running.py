"""A task's TTL bounds how long it may *wait*. One a worker took before its TTL
passed runs to its outcome, though the server removes the message at the TTL
(it does, delivered or not): the reaper must not call it expired, and an
outcome that comes after an expiry is recorded, not deduplicated away."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import dlq, names
from mesh.envelope import new_id, utcnow
from mesh.maintenance import expire_overdue
from mesh.queue import TaskQueue, TaskSpec
from mesh.runs import RunState, RunStatus, get_run, put_run
from mesh.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker
from tests.helpers import unique

from .test_worker_basics import wait_for_run


async def _gone(js: JetStreamContext, agent: str) -> None:
    """Until the server has removed the agent's tasks (their TTL passed)."""
    async with asyncio.timeout(10):
        while (
            await js.stream_info(names.STREAM_TASKS, subjects_filter=f"af.tasks.{agent}.>")
        ).state.subjects:
            await asyncio.sleep(0.05)


class _Gate:
    """A handler that says it started, then waits to be let through."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.started, self.proceed = asyncio.Event(), asyncio.Event()

    async def handler(self, ctx: TaskContext) -> Any:
        self.started.set()
        await self.proceed.wait()
        return self.result


async def test_a_task_still_running_when_its_ttl_passes_is_claimed_and_not_expired(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("ttl-run")
    gate = _Gate({"done": True})
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), gate.handler)}, claim_interval_s=0.1)
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
        await asyncio.wait_for(gate.started.wait(), 10)
        await _gone(mesh_js, agent)  # the TTL passed while the handler runs
        claimed = await wait_for_run(mesh_js, queued.run_id, RunStatus.RUNNING)
        assert claimed.lease_until is not None and claimed.lease_until > utcnow()
        assert await expire_overdue(mesh_js, grace_s=0) == []
        gate.proceed.set()
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        gate.proceed.set()
        await worker.stop()
    assert state.result == {"done": True}


async def test_an_outcome_after_an_expiry_is_recorded_not_deduplicated(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    # A worker too stalled to claim in time (claims off here): the reaper expires
    # the run, then the handler finishes; the real outcome must still land.
    agent = unique("ttl-late")
    gate = _Gate({"late": True})
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), gate.handler)}, claim_interval_s=None)
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
        await asyncio.wait_for(gate.started.wait(), 10)
        await _gone(mesh_js, agent)
        async with asyncio.timeout(10):
            while queued.run_id not in await expire_overdue(mesh_js, grace_s=0):
                await asyncio.sleep(0.1)
        gate.proceed.set()
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        gate.proceed.set()
        await worker.stop()
    assert state.result == {"late": True}


async def test_a_claimed_run_whose_worker_is_lost_is_expired_after_its_lease(
    mesh_js: JetStreamContext,
) -> None:
    agent, run_id = unique("ttl-lost"), new_id()
    now = utcnow()
    await put_run(
        mesh_js,
        RunState(
            run_id=run_id, agent=agent, status=RunStatus.RUNNING, attempts=1, enqueued_at=now,
            started_at=now, expires_at=now - timedelta(seconds=40), lease_until=now - timedelta(seconds=1),
        ),
    )  # fmt: skip
    assert run_id in await expire_overdue(mesh_js, grace_s=0)
    state = await get_run(mesh_js, run_id)
    assert state is not None and state.status == RunStatus.EXPIRED
    assert "worker" in (state.error or "")


async def test_a_replayed_dead_letter_may_wait_its_ttl_again(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("ttl-replay")
    healthy = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        if not healthy.is_set():
            raise PermanentError("bad input, for now")
        return {"replay": ctx.envelope.payload.get("replay")}

    cfg = AgentQueueConfig(agent, priorities=(2,))
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
        failed = await wait_for_run(mesh_js, queued.run_id, RunStatus.FAILED)
    finally:
        await worker.stop(2)
    async with asyncio.timeout(10):
        while utcnow() <= failed.enqueued_at + timedelta(seconds=1):  # the first TTL window is over
            await asyncio.sleep(0.05)
    (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
    await dlq.replay(mesh_js, letter.seq)
    waiting = await get_run(mesh_js, queued.run_id)
    assert waiting is not None and waiting.status == RunStatus.QUEUED and waiting.replay == 1
    assert waiting.expires_at is not None and waiting.expires_at > utcnow()
    assert queued.run_id not in await expire_overdue(mesh_js, grace_s=0)
    healthy.set()
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        done = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop(2)
    assert done.result == {"replay": 1}
