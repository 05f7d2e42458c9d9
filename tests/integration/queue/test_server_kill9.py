"""kill -9 of nats-server (no shutdown, no flush) and a restart on the same store:
acknowledged enqueues survive, and every accepted task finishes exactly once.

The writes JetStream acknowledged are in the OS page cache when the process
dies, so they survive a process kill at any ``sync_interval``; an OS crash or
power loss is another matter (docs/durability.md). Each test owns its server.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.provision import provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import unique

from .test_faults import finished_events, wait_all


@dataclass
class Mesh:
    server: NatsServer
    nc: Client
    js: JetStreamContext


@pytest.fixture
async def own_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    nc = await connect(server.url, name="kill9-test")
    try:
        js = await jetstream(nc)
        await provision(js)
        yield Mesh(server, nc, js)
    finally:
        await nc.close()
        server.stop()


async def crash_and_restart(server: NatsServer) -> None:
    """SIGKILL, then start again on the same store dir and port."""
    server.kill()
    await asyncio.to_thread(server.start)


async def drained(js: JetStreamContext, agent: str, priority: int, timeout: float = 30) -> None:
    """Until the lane has nothing waiting and nothing unacked: no later delivery can
    add an event after the count."""
    async with asyncio.timeout(timeout):
        while True:
            info = await js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, priority))
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.1)


async def test_kill_9_during_enqueue_keeps_every_accepted_task_and_one_run_per_key(own_mesh: Mesh) -> None:
    server, js = own_mesh.server, own_mesh.js
    agent = unique("kill9-enq")
    total, clients = 1000, 4
    conns = [await connect(server.url, name=f"client-{i}") for i in range(clients)]
    queues = [TaskQueue(nc, await jetstream(nc)) for nc in conns]
    for q in queues:
        await q.start()
    run_of: dict[int, str] = {}
    failures = 0
    # Three crashes: a crash hits a stored task whose PubAck is lost (the case
    # that needs the dedup by run id) only sometimes; three make it likely.
    crash_after = {total * k // 4: asyncio.Event() for k in (1, 2, 3)}

    async def submit(i: int) -> None:
        nonlocal failures
        queue = queues[i % clients]
        while True:  # a client that retries until its task is accepted
            try:
                queued = await queue.enqueue(TaskSpec(agent, {"i": i}, idempotency_key=f"k{i}"))
            except Exception:
                failures += 1
                await asyncio.sleep(0.05)
                continue
            run_of[i] = queued.run_id
            for count, reached in crash_after.items():
                if len(run_of) >= count:
                    reached.set()
            return

    async def crash_midway() -> list[int]:
        accepted = []
        for reached in crash_after.values():
            await reached.wait()
            accepted.append(len(run_of))
            await crash_and_restart(server)
        return accepted

    gate = asyncio.Semaphore(200)

    async def limited(i: int) -> None:
        async with gate:
            await submit(i)

    worker: TaskWorker | None = None
    crash = asyncio.create_task(crash_midway())
    try:
        async with asyncio.timeout(45):
            await asyncio.gather(*(limited(i) for i in range(total)))
            accepted_at_crashes = await crash
        # The crashes came mid-way, and hit enqueues in flight.
        assert accepted_at_crashes[-1] < total and failures > 0
        # Every key maps to one run: a retry returns the run the key already has.
        for i in range(total):
            again = await queues[i % clients].enqueue(TaskSpec(agent, {"i": i}, idempotency_key=f"k{i}"))
            assert (again.run_id, again.duplicate) == (run_of[i], True)
        runs = set(run_of.values())
        assert len(runs) == total
        # Every accepted task is stored, once, and has its queued record.
        info = await js.stream_info(names.STREAM_TASKS, subjects_filter=names.task_subject(agent, 2))
        assert info.state.subjects == {names.task_subject(agent, 2): total}
        for run_id in runs:
            state = await get_run(js, run_id)
            assert state is not None and state.status == RunStatus.QUEUED, run_id

        executed: collections.Counter[str] = collections.Counter()

        async def handler(ctx: TaskContext) -> Any:
            executed[ctx.run_id] += 1

        cfg = AgentQueueConfig(agent, ack_wait_s=5.0, priorities=(2,))
        worker = TaskWorker(own_mesh.nc, js, {agent: (cfg, handler)}, concurrency=64)
        await worker.start()
        await wait_all(js, sorted(runs), RunStatus.SUCCEEDED, timeout=30)
        await drained(js, agent, 2)
        assert set(executed) == runs and set(executed.values()) == {1}
        events = await finished_events(js, agent)
        assert set(events) == runs and set(events.values()) == {1}
    finally:
        crash.cancel()
        if worker is not None:
            await worker.stop(5)
        for q in queues:
            await q.stop()
        for nc in conns:
            await nc.close()


async def test_kill_9_during_work_finishes_every_task_with_one_outcome(own_mesh: Mesh) -> None:
    server, js = own_mesh.server, own_mesh.js
    agent = unique("kill9-work")
    total, concurrency = 120, 8
    starts: collections.Counter[str] = collections.Counter()
    running = 0
    busy = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        nonlocal running
        starts[ctx.run_id] += 1
        running += 1
        if sum(starts.values()) >= 2 * concurrency:
            busy.set()
        try:
            await asyncio.sleep(0.2)
        finally:
            running -= 1
        return "ok"

    # A short ack wait: a task whose ack died with the server comes back soon.
    cfg = AgentQueueConfig(agent, ack_wait_s=2.0, priorities=(2,))
    worker = TaskWorker(own_mesh.nc, js, {agent: (cfg, handler)}, concurrency=concurrency, idle_poll_s=0.3)
    async with TaskQueue(own_mesh.nc, js) as queue:
        runs = {(await queue.enqueue(TaskSpec(agent, {"i": i}))).run_id for i in range(total)}
    await worker.start()
    try:
        await asyncio.wait_for(busy.wait(), 20)
        mid_handler, started = running, len(starts)
        await crash_and_restart(server)
        # The crash hit tasks inside their handler, with others still waiting.
        assert mid_handler > 0 and started < total
        await wait_all(js, sorted(runs), RunStatus.SUCCEEDED, timeout=40)
        await drained(js, agent, 2)
        assert set(starts) == runs  # nothing lost
        events = await finished_events(js, agent)
        assert set(events) == runs and set(events.values()) == {1}  # one outcome each
    finally:
        await worker.stop(5)
