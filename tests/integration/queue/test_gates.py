"""Dispatch gates (mesh.queue.gates) on a real nats-server: a worker takes no
task of an agent whose gate is closed, hands back at once what it holds
unstarted when the gate closes (not as attempts), lets running tasks finish
unless the gate says stop, and serves the agent again when it opens."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from mesh import names
from mesh.provision import provision
from mesh.queue.gates import Gate, GateWatch, clear_gate, read_gates, write_gate
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.stats import queue_stats
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import eventually, unique

CLOSED = Gate(open=False, state="draining", reason="test")


async def _lane(js: JetStreamContext, agent: str) -> tuple[int, int]:
    """(waiting, in flight) of the agent's NORMAL lane, as the server counts."""
    info = await js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, 2))
    return info.num_pending or 0, info.num_ack_pending or 0


async def test_a_closed_gate_takes_nothing_and_an_open_one_serves_everything(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent, other = unique("gated"), unique("free")
    ran: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.agent)
        return {}

    await write_gate(mesh_js, agent, CLOSED)
    worker = TaskWorker(
        nc, mesh_js, {a: (AgentQueueConfig(a), handler) for a in (agent, other)}, idle_poll_s=0.2
    )
    await worker.start()
    try:
        gated = [await queue.enqueue(TaskSpec(agent, {"i": i})) for i in range(10)]
        free = [await queue.enqueue(TaskSpec(other, {"i": i})) for i in range(10)]
        # The open agent is served meanwhile: the worker is sweeping, and skips the closed one.
        await eventually(lambda: ran.count(other) == 10, 10, "the open agent's tasks run")
        for _ in range(5):  # several idle sweeps (idle_poll_s 0.2) later, still nothing taken
            assert await _lane(mesh_js, agent) == (10, 0)
            await asyncio.sleep(0.2)
        assert agent not in ran

        stats = await queue_stats(mesh_js, update_metrics=False)
        assert {lane.gate for lane in stats.for_agent(agent)} == {"closed (draining: test)"}
        assert {lane.gate for lane in stats.for_agent(other)} == {"open"}

        await clear_gate(mesh_js, agent)
        await eventually(lambda: ran.count(agent) == 10, 10, "the agent's tasks run once its gate opens")
    finally:
        await worker.stop()
    for queued in gated + free:
        state = await get_run(mesh_js, queued.run_id)
        assert state is not None and state.status == RunStatus.SUCCEEDED and state.attempts == 1


async def test_closing_a_gate_lets_running_tasks_finish_and_hands_back_the_rest_at_once(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("drain")
    release = asyncio.Event()
    started: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        started.append(ctx.run_id)
        await release.wait()
        return {}

    # Concurrency 2: two run, and the lingering pull of an idle lane may hold more.
    # A 300 s ack wait: only a hand-back brings a held task back within the test.
    cfg = AgentQueueConfig(agent, concurrency=2, ack_wait_s=300)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        runs = [await queue.enqueue(TaskSpec(agent, {"i": i})) for i in range(6)]
        await eventually(lambda: len(started) == 2, 10, "two tasks running")
        await write_gate(mesh_js, agent, CLOSED)
        await eventually(lambda: all(lane.gated for lane in worker.lanes), 5, "the worker sees the gate")
        release.set()
        # The two running ones finish; nothing else is held (left to its ack wait).
        await eventually(lambda: worker.in_flight == 0 and not _held(worker), 10, "nothing held")
        assert len(started) == 2
        await clear_gate(mesh_js, agent)
        await eventually(lambda: len(started) == 6, 10, "the rest run once the gate opens")
    finally:
        release.set()
        await worker.stop()
    for queued in runs:
        state = await get_run(mesh_js, queued.run_id)
        assert state is not None and state.status == RunStatus.SUCCEEDED
        assert state.attempts == 1, "a task handed back by a closing gate is not an attempt"


async def test_a_stop_gate_cancels_running_tasks_and_hands_them_back_at_once(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("force")
    hang = asyncio.Event()
    attempts: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        attempts.append(ctx.attempt)
        if len(attempts) <= 3:
            await hang.wait()  # ignores everything but cancellation
        return {"attempt": ctx.attempt}

    # One attempt each: a force-stop must not use it up (no dead letter). A 300 s
    # ack wait: only a hand-back brings them back within the test.
    cfg = AgentQueueConfig(agent, ack_wait_s=300, max_attempts=1)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        runs = [await queue.enqueue(TaskSpec(agent, {"i": i})) for i in range(3)]
        await eventually(lambda: len(attempts) == 3, 10, "three tasks running")
        await write_gate(mesh_js, agent, Gate(open=False, stop=True, state="force_stopped"))
        # Cancelled, and handed back: a pull still out may bring them back to this
        # worker for a moment, which hands them back again until it ends.
        await eventually(lambda: worker.in_flight == 0 and not _held(worker), 5, "the three handed back")
        assert worker.in_flight == 0
        await write_gate(mesh_js, agent, Gate())
        for queued in runs:
            await eventually(lambda q=queued: _succeeded(mesh_js, q.run_id), 10, "run again")
    finally:
        hang.set()
        await worker.stop()
    assert sorted(attempts) == [1, 1, 1, 1, 1, 1], "a force-stopped run is handed back, not an attempt"


async def test_a_task_delivered_to_a_pull_made_before_the_gate_closed_is_handed_back(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("late")
    ran: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.attempt)
        return {}

    cfg = AgentQueueConfig(agent, ack_wait_s=300, priorities=(2,))
    # An idle worker keeps a lingering pull open for idle_poll_s: 3 s here.
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=3.0)
    await worker.start()
    try:
        await eventually(lambda: worker.lanes[0].source.outstanding, 5, "a lingering pull out")
        await write_gate(mesh_js, agent, CLOSED)
        await eventually(lambda: worker.lanes[0].gated, 5, "the worker sees the gate")
        queued = await queue.enqueue(TaskSpec(agent, {}))

        async def delivered() -> bool:
            info = await mesh_js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, 2))
            return bool(info.delivered.consumer_seq)

        await eventually(delivered, 5, "the task delivered to the pull made before the gate closed")
        # Handed back, not held until its 300 s ack wait: once the pull is over, nothing is held.
        await eventually(
            lambda: not _held(worker) and not worker.lanes[0].source.outstanding, 8, "nothing held"
        )
        assert ran == []
        await clear_gate(mesh_js, agent)
        await eventually(lambda: _succeeded(mesh_js, queued.run_id), 10, "it runs once the gate opens")
    finally:
        await worker.stop()
    assert ran == [1], "a hand-back is not an attempt"


async def test_gates_are_listed_and_an_unreadable_one_counts_as_closed(
    nc: Client, mesh_js: JetStreamContext
) -> None:
    agent, broken = unique("listed"), unique("broken")
    await write_gate(mesh_js, agent, CLOSED)
    kv = await mesh_js.key_value(names.BUCKET_CONFIG)
    await kv.put(f"dispatch.gate.{broken}", b"not json")
    gates = await read_gates(mesh_js)
    assert gates[agent] == CLOSED
    assert gates[broken].open is False and gates[broken].reason == "unreadable gate value"
    await clear_gate(mesh_js, agent)
    await clear_gate(mesh_js, broken)
    assert agent not in await read_gates(mesh_js)


def _held(worker: TaskWorker) -> int:
    """Deliveries the worker holds unstarted (a lingering pull's answers)."""
    return sum(len(lane.source.ready) for lane in worker.lanes)


async def _succeeded(js: JetStreamContext, run_id: str) -> bool:
    state = await get_run(js, run_id)
    return state is not None and state.status == RunStatus.SUCCEEDED


async def test_provision_turns_on_direct_gets_for_a_config_bucket_made_before(own: Any) -> None:
    """Gates are read by key (what an agent's credentials may be allowed); a bucket
    from before that is given direct gets by the next provision."""
    info = await own.js.stream_info(names.kv_stream(names.BUCKET_CONFIG))
    assert info.config.allow_direct  # made by this provision: direct from the start
    await own.js.delete_key_value(names.BUCKET_CONFIG)
    await own.js.create_key_value(KeyValueConfig(bucket=names.BUCKET_CONFIG, history=10))
    assert not (await own.js.stream_info(names.kv_stream(names.BUCKET_CONFIG))).config.allow_direct
    await provision(own.js)
    assert (await own.js.stream_info(names.kv_stream(names.BUCKET_CONFIG))).config.allow_direct
    await write_gate(own.js, "old-bucket", CLOSED)
    seen: list[tuple[str, Gate]] = []
    watch = GateWatch(own.nc, own.js, ["old-bucket"], lambda agent, gate: seen.append((agent, gate)))
    await watch.start()
    await watch.stop()
    assert seen == [("old-bucket", CLOSED)]
