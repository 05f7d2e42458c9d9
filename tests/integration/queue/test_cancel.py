"""Cancel: a queued, retrying or running run stops for good, and exactly one of the
cancel and the worker's own outcome is recorded, whichever comes first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.envelope import decode
from mesh.errors import RunAlreadyFinished
from mesh.queue import dlq
from mesh.queue.cancel import cancel_run
from mesh.queue.outcome import js_send, outcome_message, record_outcome, stored_outcome
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker, ensure_lane
from tests.helpers import eventually, unique

from .test_faults import finished_events
from .test_guarantees import _lane_count, _take
from .test_worker_basics import wait_for_run


async def test_a_queued_run_cancelled_is_removed_and_never_starts(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("cancel-queued")
    started: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        started.append(ctx.run_id)
        return {"ok": True}

    doomed = await queue.enqueue(TaskSpec(agent, {"n": 1}))
    state = await cancel_run(nc, mesh_js, doomed.run_id, reason="changed my mind")
    assert state is not None and state.status == RunStatus.CANCELLED
    assert await _lane_count(mesh_js, agent) == 0  # the task is gone from its lane
    stored = await stored_outcome(mesh_js, agent, doomed.run_id)
    assert stored is not None and stored.msg_id == f"cancelled-{doomed.run_id}-0"
    recorded = await wait_for_run(mesh_js, doomed.run_id, RunStatus.CANCELLED)
    assert recorded.error == "cancelled: changed my mind" and recorded.input == {"n": 1}
    with pytest.raises(RunAlreadyFinished, match="cancelled"):
        await cancel_run(nc, mesh_js, doomed.run_id)  # once is enough: the second says so

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        later = await queue.enqueue(TaskSpec(agent, {"n": 2}))
        await wait_for_run(mesh_js, later.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    assert started == [later.run_id]  # the cancelled one never ran


async def test_a_running_run_cancelled_stops_its_handler_and_its_task_is_done(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("cancel-running")
    running, stopped = asyncio.Event(), asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        running.set()
        try:
            await asyncio.Event().wait()  # a long job
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {"never": True}

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent, ack_wait_s=30), handler)})
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {"n": 1}))
        async with asyncio.timeout(10):
            await running.wait()
        state = await cancel_run(nc, mesh_js, queued.run_id)
        assert state is not None and state.status == RunStatus.CANCELLED
        async with asyncio.timeout(10):
            await stopped.wait()  # told over NATS, the worker stopped the handler

        async def settled() -> bool:
            info = await mesh_js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, 2))
            return worker.in_flight == 0 and info.num_ack_pending == 0

        await eventually(settled, 10, "the task settled")
    finally:
        await worker.stop()
    assert await _lane_count(mesh_js, agent) == 0
    assert (await finished_events(mesh_js, agent))[queued.run_id] == 1
    assert (await get_run(mesh_js, queued.run_id)).status == RunStatus.CANCELLED  # type: ignore[union-attr]
    assert await dlq.list_dead_letters(mesh_js, name=agent) == []


async def test_a_run_waiting_for_its_retry_is_cancelled_before_it_runs_again(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("cancel-retry")
    attempts: list[tuple[int, int]] = []

    async def handler(ctx: TaskContext) -> Any:
        attempts.append((ctx.input["n"], ctx.attempt))
        if ctx.input["n"] == 1:
            raise RuntimeError("flaky")
        return {"ok": True}

    cfg = AgentQueueConfig(agent, max_attempts=3, backoff_base_s=1.0, backoff_max_s=1.0)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {"n": 1}))

        async def retry_written() -> bool:
            state = await get_run(mesh_js, queued.run_id)
            return state is not None and len(state.errors) == 1

        await eventually(retry_written, 10, "the first attempt's error")
        nak_by = asyncio.get_running_loop().time()
        state = await cancel_run(nc, mesh_js, queued.run_id)
        assert state is not None and [e.error for e in state.errors] == ["flaky"]  # history kept
        assert await _lane_count(mesh_js, agent) == 0
        # Wall time is the point: the retry's backoff (at most 1 s) must pass; a task left in
        # its lane would be redelivered by then. A probe that succeeds proves the worker is up.
        while asyncio.get_running_loop().time() < nak_by + 1.5:
            await asyncio.sleep(0.1)
        probe = await queue.enqueue(TaskSpec(agent, {"n": 2}))
        await wait_for_run(mesh_js, probe.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    assert attempts == [(1, 1), (2, 1)]  # the cancelled run never ran its attempt 2
    assert (await get_run(mesh_js, queued.run_id)).status == RunStatus.CANCELLED  # type: ignore[union-attr]


async def test_the_first_recorded_of_a_cancel_and_a_worker_outcome_wins(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("cancel-race")
    await ensure_lane(mesh_js, AgentQueueConfig(agent), 2)
    # Cancel first: the worker that held the task (stalled) finishes after it and is not recorded.
    first = await queue.enqueue(TaskSpec(agent, {"n": 1}))
    msg = await _take(nc, agent)  # a stalled worker holds it
    await cancel_run(nc, mesh_js, first.run_id)
    state = await get_run(mesh_js, first.run_id)
    assert state is not None
    task = decode(msg.data)
    state.status, state.result = RunStatus.SUCCEEDED, {"late": True}
    late = outcome_message(task, state)
    assert not await record_outcome(
        mesh_js, js_send(mesh_js), late, agent=agent, run_id=first.run_id, generation=0
    )
    assert (await finished_events(mesh_js, agent))[first.run_id] == 1
    assert (await wait_for_run(mesh_js, first.run_id, RunStatus.CANCELLED)).result is None

    # The worker first: a cancel after the outcome is refused with the run's status.
    second = await queue.enqueue(TaskSpec(agent, {"n": 2}))
    msg = await _take(nc, agent)
    task = decode(msg.data)
    done = await get_run(mesh_js, second.run_id)
    assert done is not None
    done.status, done.result = RunStatus.SUCCEEDED, {"ok": 1}
    assert await record_outcome(
        mesh_js, js_send(mesh_js), outcome_message(task, done), agent=agent, run_id=second.run_id,
        generation=0,
    )  # fmt: skip
    with pytest.raises(RunAlreadyFinished, match="succeeded"):
        await cancel_run(nc, mesh_js, second.run_id)
    assert (await finished_events(mesh_js, agent))[second.run_id] == 1
    await msg.ack()
