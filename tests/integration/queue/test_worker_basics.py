"""Enqueue → worker → outcome recorded → ack, against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.envelope import Priority
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunState, RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker
from tests.helpers import unique


async def wait_for_run(
    js: JetStreamContext, run_id: str, status: RunStatus, timeout: float = 10.0
) -> RunState:
    async with asyncio.timeout(timeout):
        while True:
            state = await get_run(js, run_id)
            if state is not None and state.status == status:
                return state
            await asyncio.sleep(0.02)


async def test_enqueued_task_runs_once_and_its_result_is_recorded(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("echo")
    calls: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        calls.append(ctx.run_id)
        return {"doubled": ctx.input["x"] * 2, "tenant": ctx.tenant, "key": ctx.routing_key}

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)})
    await worker.start()
    try:
        spec = TaskSpec(agent=agent, input={"x": 21}, tenant="acme", routing_key="site-7")
        queued = await queue.enqueue(spec)
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    assert state.result == {"doubled": 42, "tenant": "acme", "key": "site-7"}
    assert calls == [queued.run_id]
    info = await mesh_js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, 2))
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_same_idempotency_key_yields_one_run(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("idem")
    spec = TaskSpec(agent=agent, input={}, idempotency_key="invoice-2026-001")
    first = await queue.enqueue(spec)
    again = await asyncio.gather(*(queue.enqueue(spec) for _ in range(5)))
    assert {e.run_id for e in again} == {first.run_id}
    assert all(e.duplicate for e in again) and not first.duplicate
    info = await mesh_js.stream_info(names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.{agent}.>")
    assert info.state.subjects == {names.task_subject(agent, 2): 1}


async def test_failing_task_is_retried_then_dead_lettered_with_every_error(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("poison")
    attempts: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"boom {ctx.attempt}")

    cfg = AgentQueueConfig(agent, max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.1)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)})
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent=agent, input={"n": 1}))
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.FAILED)
    finally:
        await worker.stop()
    assert attempts == [1, 2, 3]
    assert [e.error for e in state.errors] == ["boom 1", "boom 2", "boom 3"]
    dead = await mesh_js.get_last_msg(names.STREAM_DLQ, names.dlq_subject("tasks", agent))
    assert dead.data is not None and queued.run_id.encode() in dead.data


async def test_permanent_error_skips_retries(nc: Client, mesh_js: JetStreamContext, queue: TaskQueue) -> None:
    agent = unique("perm")
    attempts: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        attempts.append(ctx.attempt)
        raise PermanentError("input can never work")

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)})
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent=agent, input={}))
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.FAILED)
    finally:
        await worker.stop()
    assert attempts == [1]
    assert state.errors[0].retryable is False


async def test_critical_work_is_taken_before_background_work(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("prio")
    order: list[int] = []
    all_done = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        order.append(ctx.input["p"])
        if len(order) == 15:
            all_done.set()

    for p in (Priority.BACKGROUND, Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL):
        for _ in range(3):
            await queue.enqueue(TaskSpec(agent=agent, input={"p": int(p)}, priority=p))
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)}, concurrency=1)
    await worker.start()
    try:
        await asyncio.wait_for(all_done.wait(), 10)
    finally:
        await worker.stop()
    # With fair_share 0.1 over 15 sweeps one sweep may start lower; CRITICAL still comes first.
    assert order[:3] == [0, 0, 0]
    assert sorted(order) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


async def test_a_lane_never_asks_for_more_than_its_consumer_lets_be_unacked(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("capped")
    tracker = _Peak(60)
    cfg = AgentQueueConfig(agent, max_ack_pending=8, priorities=(2,))
    await asyncio.gather(*(queue.enqueue(TaskSpec(agent, {"i": i})) for i in range(60)))
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, tracker.handler)}, concurrency=64)
    await worker.start()
    try:
        assert [lane.limit for lane in worker.lanes] == [8]
        await asyncio.wait_for(tracker.done.wait(), 20)
    finally:
        await worker.stop()
    assert tracker.peak == 8  # the consumer's limit is used in full, never exceeded


async def test_an_agents_concurrency_holds_across_its_priorities(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("limited")
    tracker = _Peak(20, hold_s=0.02)
    for i in range(10):
        for priority in (Priority.HIGH, Priority.NORMAL):
            await queue.enqueue(TaskSpec(agent, {"i": i}, priority=priority))
    cfg = AgentQueueConfig(agent, concurrency=1, priorities=(1, 2))
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, tracker.handler)}, concurrency=16)
    await worker.start()
    try:
        await asyncio.wait_for(tracker.done.wait(), 20)
    finally:
        await worker.stop()
    assert tracker.peak == 1  # one at a time over both priority lanes


async def test_a_full_agent_is_served_again_as_soon_as_a_task_finishes(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("one-by-one")
    tracker = _Peak(100, hold_s=0)
    await asyncio.gather(*(queue.enqueue(TaskSpec(agent, {"i": i})) for i in range(100)))
    cfg = AgentQueueConfig(agent, concurrency=1, priorities=(2,))
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, tracker.handler)}, concurrency=16)
    await worker.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(tracker.done.wait(), 20)
        elapsed = loop.time() - start
    finally:
        await worker.stop()
    # A finishing task wakes the dispatcher. Before, a worker with room whose
    # only agent was full polled every 10 ms: 100 tasks took at least 1 s.
    # Here each costs a pull round trip (about 1 ms).
    assert elapsed < 0.7, f"100 tasks one at a time took {elapsed:.2f} s"


async def test_a_busy_full_agent_does_not_pile_up_pulls_on_an_idle_one(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    busy, idle = unique("busy"), unique("idle")
    tracker = _Peak(200, hold_s=0)
    await asyncio.gather(*(queue.enqueue(TaskSpec(busy, {"i": i})) for i in range(200)))
    handlers = {
        busy: (AgentQueueConfig(busy, concurrency=1, priorities=(2,)), tracker.handler),
        idle: (AgentQueueConfig(idle, priorities=(2,)), tracker.handler),
    }
    worker = TaskWorker(nc, mesh_js, handlers, concurrency=16, idle_poll_s=2.0)
    await worker.start()
    waiting: list[int] = []
    try:
        async with asyncio.timeout(20):
            while not tracker.done.is_set():
                info = await mesh_js.consumer_info(names.STREAM_TASKS, names.task_consumer(idle, 2))
                waiting.append(info.num_waiting)
                await asyncio.sleep(0.02)
    finally:
        await worker.stop()
    # Every time a busy task finished, the dispatcher woke; it must keep the idle
    # lane's one lingering pull, not add another (each would live for 2 s).
    assert max(waiting) <= 1, f"pulls waiting on the idle lane: {sorted(waiting)[-5:]}"


async def test_a_worker_serving_many_agents_pulls_only_where_tasks_are(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agents = [unique("many") for _ in range(30)]  # 150 lanes
    busy = agents[17]
    tracker = _Peak(41, hold_s=0)
    worker = TaskWorker(
        nc,
        mesh_js,
        {a: (AgentQueueConfig(a), tracker.handler) for a in agents},
        concurrency=4,
        idle_poll_s=2.0,
    )
    await worker.start()
    try:
        await asyncio.gather(*(queue.enqueue(TaskSpec(busy, {"i": i})) for i in range(40)))
        async with asyncio.timeout(20):
            while tracker.finished < 40:
                await asyncio.sleep(0.01)
        # Idle now: one more task is noticed when it is published, not by polling.
        loop = asyncio.get_running_loop()
        start = loop.time()
        await queue.enqueue(TaskSpec(agents[3], {}, priority=Priority.LOW))
        await asyncio.wait_for(tracker.done.wait(), 1.5)  # well inside idle_poll_s
        picked_up = loop.time() - start
        lanes = list(worker.lanes)
    finally:
        await worker.stop()
    pulls = sum(next(lane.source._ids) - 1 for lane in lanes)
    # Asking each of the 150 lanes in turn took 50-80 empty pulls per sweep.
    assert pulls < 150, f"{pulls} pull requests for 41 tasks"
    assert picked_up < 1.0


class _Peak:
    """A handler that records how many of its calls ran at once."""

    def __init__(self, total: int, hold_s: float = 0.005) -> None:
        self.total, self.hold_s = total, hold_s
        self.running = self.peak = self.finished = 0
        self.done = asyncio.Event()

    async def handler(self, ctx: TaskContext) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(self.hold_s)
        self.running -= 1
        self.finished += 1
        if self.finished == self.total:
            self.done.set()
