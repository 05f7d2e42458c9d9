"""A task's TTL bounds how long it may *wait* for its first start, never how
long it may run: tasks carry no server TTL (the server would delete a task
under its running worker), the worker refuses a first start past the
deadline, and the reaper expires (and deletes) only tasks that never started.
A started run whose worker is lost comes back after the ack wait, whatever
its TTL."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.envelope import utcnow
from mesh.queue import dlq
from mesh.queue.maintenance import expire_overdue
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker
from tests.helpers import unique

from .test_faults import Starts, spawn_worker
from .test_worker_basics import wait_for_run


async def _waiting(js: JetStreamContext, agent: str) -> int:
    info = await js.stream_info(names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.{agent}.>")
    return sum((info.state.subjects or {}).values())


class _Gate:
    """A handler that says it started, then waits to be let through."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.started, self.proceed = asyncio.Event(), asyncio.Event()

    async def handler(self, ctx: TaskContext) -> Any:
        self.started.set()
        await self.proceed.wait()
        return self.result


async def _past(deadline_s: float, since: Any) -> None:
    async with asyncio.timeout(deadline_s + 10):
        while utcnow() <= since + timedelta(seconds=deadline_s):
            await asyncio.sleep(0.05)


async def test_a_task_still_running_when_its_ttl_passes_is_claimed_kept_and_not_expired(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("ttl-run")
    gate = _Gate({"done": True})
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), gate.handler)}, claim_interval_s=0.1)
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
        await asyncio.wait_for(gate.started.wait(), 10)
        claimed = await wait_for_run(mesh_js, queued.run_id, RunStatus.RUNNING)
        assert claimed.expires_at is None  # started: no wait deadline any more
        waiting = await get_run(mesh_js, queued.run_id)
        assert waiting is not None
        await _past(1.0, waiting.enqueued_at)
        assert await expire_overdue(mesh_js, grace_s=0, agent=agent) == []
        assert await _waiting(mesh_js, agent) == 1  # the running task is still there: not deleted under it
        gate.proceed.set()
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        gate.proceed.set()
        await worker.stop()
    assert state.result == {"done": True}
    assert await _waiting(mesh_js, agent) == 0


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
        async with asyncio.timeout(10):
            while queued.run_id not in await expire_overdue(mesh_js, grace_s=0, agent=agent):
                await asyncio.sleep(0.1)
        assert (await wait_for_run(mesh_js, queued.run_id, RunStatus.EXPIRED)).status == RunStatus.EXPIRED
        gate.proceed.set()
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        gate.proceed.set()
        await worker.stop()
    assert state.result == {"late": True}


async def test_a_first_start_past_the_deadline_is_expired_not_run(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("ttl-late-start")
    ran: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.run_id)

    queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
    fresh = await queue.enqueue(TaskSpec(agent, {}, ttl_s=3600))
    record = await get_run(mesh_js, queued.run_id)
    assert record is not None
    await _past(1.0, record.enqueued_at)  # no worker yet, no reaper: it is still in the stream
    assert await _waiting(mesh_js, agent) == 2
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)})
    await worker.start()
    try:
        expired = await wait_for_run(mesh_js, queued.run_id, RunStatus.EXPIRED)
        await wait_for_run(mesh_js, fresh.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    assert ran == [fresh.run_id] and "before a worker started it" in (expired.error or "")
    assert await _waiting(mesh_js, agent) == 0


async def test_a_worker_killed_after_reporting_progress_is_replaced_even_with_a_short_ttl(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, nats_url: str
) -> None:
    # ttl (1 s) < ack wait (2 s): the task must survive its worker's death past
    # the TTL and be run again, not stay "running" forever or be called expired.
    agent = unique("ttl-lost")
    starts = Starts()
    sub = await nc.subscribe(f"test.started.{agent}", cb=starts.on_msg)
    first = await spawn_worker(nc, nats_url, agent, ack_wait=2.0, conc=1)
    second = None
    try:
        queued = await queue.enqueue(TaskSpec(agent, {"sleep": 60, "progress": 50}, ttl_s=1))
        await starts.until(1)
        running = await wait_for_run(mesh_js, queued.run_id, RunStatus.RUNNING)
        assert running.progress == 50
        first.send_signal(signal.SIGKILL)
        first.wait()
        await _past(1.0, running.enqueued_at)
        assert await expire_overdue(mesh_js, grace_s=0, agent=agent) == []
        second = await spawn_worker(nc, nats_url, agent, ack_wait=2.0, conc=1)
        await starts.until(2)
        assert starts.seen[1] == (queued.run_id, 2)
        again = await wait_for_run(mesh_js, queued.run_id, RunStatus.RUNNING)
        assert again.attempts == 2 and [e.error_type for e in again.errors] == ["WorkerLost"]
    finally:
        first.kill()
        if second is not None:
            second.kill()
            second.wait()
        await sub.unsubscribe()


async def test_a_replayed_dead_letter_waiting_for_its_retry_is_not_expired(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("ttl-replay")
    healthy = asyncio.Event()
    attempts: list[tuple[int, int]] = []

    async def handler(ctx: TaskContext) -> Any:
        attempts.append((ctx.envelope.payload.get("replay", 0), ctx.attempt))
        if not healthy.is_set():
            raise PermanentError("bad input, for now")
        if ctx.attempt == 1:
            raise RuntimeError("one more try")  # the retry waits 3 s: past the TTL
        return {"replay": ctx.envelope.payload.get("replay")}

    cfg = AgentQueueConfig(agent, priorities=(2,), backoff_base_s=3.0, backoff_max_s=3.0)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
        failed = await wait_for_run(mesh_js, queued.run_id, RunStatus.FAILED)
        await _past(1.0, failed.enqueued_at)  # the first TTL window is over
        (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
        healthy.set()
        await dlq.replay(mesh_js, letter.seq)
        retrying = await wait_for_run(mesh_js, queued.run_id, RunStatus.QUEUED)
        assert retrying.replay == 1
        async with asyncio.timeout(10):
            while len(attempts) < 2:
                await asyncio.sleep(0.05)
        # Waiting for its retry, past the replay's own TTL: the reaper leaves it alone.
        await _past(1.5, utcnow())
        assert await expire_overdue(mesh_js, grace_s=0, agent=agent) == []
        done = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop(2)
    assert done.result == {"replay": 1} and attempts == [(0, 1), (1, 1), (1, 2)]
