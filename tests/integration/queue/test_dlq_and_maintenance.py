"""DLQ operations, the max-deliveries mover, TTL expiry and stats, on a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from mesh import names
from mesh.envelope import decode
from mesh.queue import dlq, metrics
from mesh.queue.maintenance import expire_overdue, move_max_delivered
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.stats import queue_stats
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker, ensure_lane
from mesh.wire.puller import Puller
from tests.helpers import unique

from .conftest import Own
from .test_worker_basics import wait_for_run


async def test_dead_letters_can_be_listed_inspected_and_replayed(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("dlq")
    healthy = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        if not healthy.is_set():
            raise RuntimeError("downstream unavailable")
        return {"ok": ctx.input["n"]}

    cfg = AgentQueueConfig(agent, max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.05)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        runs = [(await queue.enqueue(TaskSpec(agent, {"n": n}))).run_id for n in range(3)]
        for run_id in runs:
            await wait_for_run(mesh_js, run_id, RunStatus.FAILED)
        listed = await dlq.list_dead_letters(mesh_js, name=agent)
        assert sorted(v.entry.run_id or "" for v in listed) == sorted(runs)
        shown = await dlq.get_dead_letter(mesh_js, listed[0].seq)
        assert [e.attempt for e in shown.entry.errors] == [1, 2]
        assert shown.entry.errors[0].error == "downstream unavailable"
        assert shown.entry.headers["AF-Tenant"] == "default"

        healthy.set()
        replayed = await dlq.replay(mesh_js, listed[0].seq)
        state = await wait_for_run(mesh_js, replayed, RunStatus.SUCCEEDED)
        # The replayed run ran the dead letter's own input (the n it was enqueued with).
        assert state.result == {"ok": runs.index(replayed)}
        assert decode(shown.entry.payload).payload["input"] == {"n": runs.index(replayed)}
        assert await dlq.count(mesh_js, origin="tasks", name=agent) == 2

        report = await dlq.replay_all(mesh_js, name=agent)
        assert sorted(report.replayed) == sorted(r for r in runs if r != replayed) and not report.failed
        for run_id in report.replayed:
            state = await wait_for_run(mesh_js, run_id, RunStatus.SUCCEEDED)
            assert state.result == {"ok": runs.index(run_id)}
        assert await dlq.count(mesh_js, origin="tasks", name=agent) == 0
    finally:
        await worker.stop(2)


async def test_purge_removes_one_or_all_dead_letters(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("purge")

    async def handler(ctx: TaskContext) -> Any:
        raise RuntimeError("always")

    cfg = AgentQueueConfig(agent, max_attempts=1)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        runs = [(await queue.enqueue(TaskSpec(agent, {}))).run_id for _ in range(3)]
        for run_id in runs:
            await wait_for_run(mesh_js, run_id, RunStatus.FAILED)
    finally:
        await worker.stop(2)
    first = (await dlq.list_dead_letters(mesh_js, name=agent))[0]
    await queue_stats(mesh_js)
    assert metrics.DLQ_SIZE.labels(agent)._value.get() == 3
    assert await dlq.purge(mesh_js, seq=first.seq) == 1
    assert await dlq.count(mesh_js, origin="tasks", name=agent) == 2
    assert await dlq.purge(mesh_js, origin="tasks", name=agent) == 2
    assert await dlq.list_dead_letters(mesh_js, name=agent) == []
    await queue_stats(mesh_js)
    assert metrics.DLQ_SIZE.labels(agent)._value.get() == 0  # the gauge follows a purge


async def test_task_whose_worker_died_on_the_last_attempt_is_dead_lettered(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("crash")
    # The server's backstop (max_deliver) reached at once: one delivery allowed.
    await mesh_js.add_consumer(
        names.STREAM_TASKS,
        ConsumerConfig(
            durable_name=names.task_consumer(agent, 2), filter_subject=names.task_subject(agent, 2),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0, max_deliver=1,
        ),
    )  # fmt: skip
    queued = await queue.enqueue(TaskSpec(agent, {"x": 1}))
    # A "worker" takes the task and dies: it never acks.
    dead_worker = Puller(nc, names.STREAM_TASKS, names.task_consumer(agent, 2))
    await dead_worker.start()
    assert len(await dead_worker.take(1)) == 1
    # The advisory is only sent while a pull waits on the consumer.
    waiting = Puller(nc, names.STREAM_TASKS, names.task_consumer(agent, 2))
    await waiting.start()
    # Advisories are also plain NATS messages; AF_ADVISORIES keeps them for the mover.
    subject = names.MAX_DELIVERIES_ADVISORY.replace(">", names.task_consumer(agent, 2))
    advisories = await nc.subscribe(subject)
    found = None
    async with asyncio.timeout(15):
        while found is None:
            await waiting.wait(1, 0.5)
            try:
                found = await advisories.next_msg(timeout=0.2)
            except TimeoutError:
                continue
    assert await move_max_delivered(mesh_js, found.data) == queued.run_id
    state = await get_run(mesh_js, queued.run_id)
    assert state is not None and state.status == RunStatus.FAILED
    assert state.errors[-1].error_type == "MaxDeliveries"
    [dead] = await dlq.list_dead_letters(mesh_js, name=agent)
    assert dead.entry.run_id == queued.run_id and dead.entry.reason == "max deliveries reached"
    info = await mesh_js.stream_info(names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.{agent}.>")
    assert not info.state.subjects  # the original is gone: no zombie redelivery
    # Moving the same advisory again changes nothing.
    assert await move_max_delivered(mesh_js, found.data) is None
    assert await dlq.count(mesh_js, origin="tasks", name=agent) == 1
    await dead_worker.close()
    await waiting.close()
    await advisories.unsubscribe()


async def test_a_task_waiting_past_its_ttl_is_recorded_expired_and_removed(
    mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("ttl")
    queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
    kept = await queue.enqueue(TaskSpec(agent, {}, ttl_s=3600))
    assert await expire_overdue(mesh_js, grace_s=0, agent=agent) == []  # not overdue yet
    async with asyncio.timeout(10):
        while queued.run_id not in await expire_overdue(mesh_js, grace_s=0, agent=agent):
            await asyncio.sleep(0.2)
    state = await get_run(mesh_js, queued.run_id)
    assert state is not None and state.status == RunStatus.EXPIRED
    assert "TTL passed" in (state.error or "")
    event = await mesh_js.get_last_msg(names.STREAM_EVENTS, names.finished_subject(agent, queued.run_id))
    assert event.data is not None and b'"expired"' in event.data
    # The reaper deleted the expired task (no server TTL does it), and only that one.
    info = await mesh_js.stream_info(names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.{agent}.>")
    assert sum((info.state.subjects or {}).values()) == 1
    still = await get_run(mesh_js, kept.run_id)
    assert still is not None and still.status == RunStatus.QUEUED


async def test_stats_show_depth_per_lane_and_dead_letters(
    mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("stats")
    cfg = AgentQueueConfig(agent)
    for p in cfg.priorities:
        await ensure_lane(mesh_js, cfg, p)
    for _ in range(3):
        await queue.enqueue(TaskSpec(agent, {}))
    stats = await queue_stats(mesh_js)
    lanes = {lane.priority: lane for lane in stats.for_agent(agent)}
    assert lanes[2].waiting == 3 and lanes[0].waiting == 0
    assert not lanes[2].stalled and lanes[2].max_in_flight == cfg.max_ack_pending


async def test_stats_see_every_lane_of_a_fleet_past_the_servers_256_consumer_page(own: Own) -> None:
    # 100 agents, 3 lanes each: more consumers than the server lists in one answer.
    agents = [f"fleet-{i:03d}" for i in range(100)]
    await asyncio.gather(*(ensure_lane(own.js, AgentQueueConfig(a), p) for a in agents for p in (0, 1, 2)))
    stats = await queue_stats(own.js)
    seen = {(lane.agent, lane.priority) for lane in stats.lanes}
    assert seen >= {(a, p) for a in agents for p in (0, 1, 2)}, f"{300 - len(seen)} lanes missing"


async def test_maintenance_service_records_expiry_and_refreshes_gauges(own: Own) -> None:
    # On a server of its own: the service reaps every run it finds.
    from mesh.queue.maintenance import QueueMaintenance

    nc, js = own.nc, own.js
    agent, busy = unique("svc"), unique("gauge")
    async with TaskQueue(nc, js) as queue:
        queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
        await ensure_lane(js, AgentQueueConfig(busy), 2)
        for _ in range(2):
            await queue.enqueue(TaskSpec(busy, {}))
    service = QueueMaintenance(nc, js, expiry_interval_s=0.5, stats_interval_s=0.2, poll_s=0.2)
    await service.start()
    try:
        async with asyncio.timeout(10):
            while metrics.QUEUE_DEPTH.labels(busy, "2")._value.get() != 2:
                await asyncio.sleep(0.05)
        async with asyncio.timeout(20):
            while True:
                state = await get_run(js, queued.run_id)
                if state is not None and state.status == RunStatus.EXPIRED:
                    break
                await asyncio.sleep(0.1)
    finally:
        await service.stop()
