"""Each queue guarantee attacked at the exact point where it could break.

Fault tests that kill at random moments almost never land between "outcome
written" and "ack"; these place the fault deterministically (a task taken by
a "worker" that never acks, an outcome written by hand, a stream that refuses
events, a duplicate window of one second so "past the window" takes one
second) and check what the guarantee promises. Tests that change a server's
limits run on a server of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.envelope import decode, utcnow
from mesh.errors import EnqueueOutcomeUnknown, PayloadTooLarge, QueueFull
from mesh.provision import ProvisionConfig
from mesh.queue import dlq
from mesh.queue.maintenance import expire_overdue, move_max_delivered
from mesh.queue.outcome import js_send, outcome_message, record_outcome
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunState, RunStatus, get_run, run_key
from mesh.queue.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker, ensure_lane
from mesh.wire.protocol import parse_headers
from mesh.wire.puller import Puller
from tests.helpers import unique

from .conftest import Own
from .test_faults import finished_events
from .test_worker_basics import wait_for_run

ONE_SECOND_WINDOW = ProvisionConfig(duplicate_window_s=1.0)


async def put_run(js: JetStreamContext, state: RunState) -> None:
    """Overwrite a run's record, as a lagging or foreign writer would."""
    await js.publish(run_key(state.run_id), state.model_dump_json().encode())


async def _lane_count(js: JetStreamContext, agent: str) -> int:
    info = await js.stream_info(names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.{agent}.>")
    return sum((info.state.subjects or {}).values())


async def _take(nc: Client, agent: str, priority: int = 2) -> Any:
    """A "worker" that takes one task and never acks it."""
    puller = Puller(nc, names.STREAM_TASKS, names.task_consumer(agent, priority))
    await puller.start()
    async with asyncio.timeout(10):
        while not (msgs := await puller.take(1)):
            await asyncio.sleep(0.05)
    await puller.close()
    return msgs[0]


async def _past_window(seconds: float = 1.2) -> None:
    """Wall time is the point here: the server's duplicate window must pass."""
    until = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < until:
        await asyncio.sleep(0.1)


# ---- sizes: nothing the queue accepts can poison it ------------------------------


async def test_a_task_over_half_the_max_payload_is_refused_at_enqueue(
    mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("big-in")
    with pytest.raises(PayloadTooLarge, match="limit is 524288 bytes"):
        await queue.enqueue(TaskSpec(agent, {"blob": "x" * 1_000_000}))
    assert await _lane_count(mesh_js, agent) == 0


async def test_a_result_too_large_to_record_fails_the_run_once_with_a_clear_error(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("big-out")
    runs: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        runs.append(ctx.attempt)
        return {"blob": "y" * 600_000}

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent, max_attempts=3), handler)})
    await worker.start()
    try:
        # A task near its own limit (~500 kB) and a result over its own (256 kB).
        queued = await queue.enqueue(TaskSpec(agent, {"blob": "x" * 500_000}))
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.FAILED)
    finally:
        await worker.stop()
    assert runs == [1]  # never rerun because its outcome could not be written
    assert "ResultTooLarge" in (state.error or "") and "limit is 262144 bytes" in (state.error or "")
    (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
    assert decode(letter.entry.payload).payload["input"]["blob"] == "x" * 500_000  # the task, whole
    assert await _lane_count(mesh_js, agent) == 0


async def test_a_max_size_task_failing_every_attempt_with_long_errors_is_dead_lettered_and_replays(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("big-fail")
    healthy = asyncio.Event()
    runs: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        runs.append(ctx.attempt)
        if not healthy.is_set():
            raise RuntimeError("é" * 8000)  # 16 kB of error text per attempt
        return {"size": len(ctx.input["blob"])}

    # 25 attempts x 16 kB of error next to a max-size task: untrimmed, no dead letter would fit.
    cfg = AgentQueueConfig(agent, max_attempts=25, backoff_base_s=0.05, backoff_max_s=0.05)
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        blob = "x" * (queue.max_task_bytes - 1_000)
        queued = await queue.enqueue(TaskSpec(agent, {"blob": blob}))
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.FAILED, timeout=30)
        assert runs == list(range(1, 26)) and len(state.errors) == 25
        (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
        assert [e.attempt for e in letter.entry.errors] == list(range(1, 26))
        assert all(e.error.startswith("ééé") for e in letter.entry.errors)  # trimmed, not dropped
        healthy.set()
        await dlq.replay(mesh_js, letter.seq)
        done = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    assert done.result == {"size": len(blob)}


# ---- outcomes: written before the ack, once, never overwritten ---------------


async def test_a_task_is_not_acked_while_its_outcome_cannot_be_stored(own: Own) -> None:
    agent, js = unique("no-ack"), own.js
    runs: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        runs.append(ctx.attempt)
        return {"ok": True}

    events = await js.stream_info(names.STREAM_EVENTS)
    await js.update_stream(
        dataclasses.replace(events.config, max_msg_size=16)
    )  # every finished event is now refused
    cfg = AgentQueueConfig(agent, max_attempts=5, priorities=(2,))
    worker = TaskWorker(own.nc, js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        async with TaskQueue(own.nc, js) as queue:
            queued = await queue.enqueue(TaskSpec(agent, {}))
            async with asyncio.timeout(15):
                while len(runs) < 2:  # ran, could not record, handed back, ran again
                    await asyncio.sleep(0.05)
            assert await _lane_count(js, agent) == 1  # never acked without its outcome
            await js.update_stream(events.config)
            state = await wait_for_run(js, queued.run_id, RunStatus.SUCCEEDED, timeout=15)
    finally:
        await worker.stop()
    assert state.result == {"ok": True} and (await finished_events(js, agent))[queued.run_id] == 1
    assert await _lane_count(js, agent) == 0


async def test_a_redelivered_task_whose_outcome_is_stored_is_acked_without_running(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("redeliver")
    cfg = AgentQueueConfig(agent, ack_wait_s=1.0, priorities=(2,))
    await ensure_lane(mesh_js, cfg, 2)
    queued = await queue.enqueue(TaskSpec(agent, {}))
    msg = await _take(nc, agent)  # the first "worker" writes its outcome and dies before acking
    task = decode(msg.data)
    state = await get_run(mesh_js, queued.run_id)
    assert state is not None
    state.status, state.attempts, state.result, state.finished_at = RunStatus.SUCCEEDED, 1, "first", utcnow()
    assert await record_outcome(
        mesh_js, js_send(mesh_js), outcome_message(task, state), agent=agent, run_id=task.id, generation=0
    )
    ran: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.run_id)

    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        async with asyncio.timeout(15):  # the redelivery comes after the ack wait, and is acked
            while await _lane_count(mesh_js, agent):
                await asyncio.sleep(0.1)
    finally:
        await worker.stop()
    assert ran == []
    final = await get_run(mesh_js, queued.run_id)
    assert final is not None and final.result == "first"


@pytest.mark.parametrize("own", [ONE_SECOND_WINDOW], indirect=True)
async def test_a_second_outcome_is_refused_even_past_the_duplicate_window(own: Own) -> None:
    agent, js = unique("twice"), own.js
    async with TaskQueue(own.nc, js) as queue:
        await ensure_lane(js, AgentQueueConfig(agent, priorities=(2,)), 2)
        queued = await queue.enqueue(TaskSpec(agent, {}))
        task = decode((await _take(own.nc, agent)).data)
    state = await get_run(js, queued.run_id)
    assert state is not None
    state.status, state.attempts, state.finished_at = RunStatus.SUCCEEDED, 1, utcnow()
    first = outcome_message(task, state.model_copy(update={"result": "first"}))
    kw: dict[str, Any] = {"agent": agent, "run_id": task.id, "generation": 0}
    assert await record_outcome(js, js_send(js), first, **kw, expect=0)
    await _past_window()
    second = outcome_message(task, state.model_copy(update={"result": "second"}))
    assert not await record_outcome(js, js_send(js), second, **kw, expect=0)  # its CAS fails, then it looks
    assert (await finished_events(js, agent))[task.id] == 1
    assert (await wait_for_run(js, task.id, RunStatus.SUCCEEDED)).result == "first"


async def test_a_state_write_never_lands_on_a_final_state(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    # A copy of the run that finished elsewhere: its progress report arrives late.
    agent = unique("late-progress")
    proceed, reported = asyncio.Event(), asyncio.Event()
    started = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        await ctx.report_progress(25)  # the worker now knows the record's revision
        started.set()
        await proceed.wait()
        await ctx.report_progress(50)  # compare-and-set against a revision that is gone
        reported.set()
        return "stale"

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent, priorities=(2,)), handler)})
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}))
        await asyncio.wait_for(started.wait(), 10)
        task = decode(
            (await mesh_js.get_msg(names.STREAM_TASKS, (await get_run(mesh_js, queued.run_id)).seq)).data
        )  # type: ignore[union-attr]
        state = await get_run(mesh_js, queued.run_id)
        assert state is not None
        state.status, state.attempts, state.result, state.finished_at = (
            RunStatus.SUCCEEDED,
            1,
            "real",
            utcnow(),
        )
        assert await record_outcome(
            mesh_js, js_send(mesh_js), outcome_message(task, state), agent=agent, run_id=task.id, generation=0
        )
        await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
        proceed.set()
        await asyncio.wait_for(reported.wait(), 10)
        async with asyncio.timeout(10):  # the stale copy acks (its outcome is refused)
            while await _lane_count(mesh_js, agent):
                await asyncio.sleep(0.05)
    finally:
        proceed.set()
        await worker.stop()
    final = await get_run(mesh_js, queued.run_id)
    assert final is not None and final.status == RunStatus.SUCCEEDED and final.result == "real"
    assert (await finished_events(mesh_js, agent))[queued.run_id] == 1


async def test_a_task_buffered_in_a_busy_worker_is_heartbeated_not_redelivered(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("buffered")
    cfg = AgentQueueConfig(agent, ack_wait_s=1.5)
    gate, first_started = asyncio.Event(), asyncio.Event()
    runs: list[tuple[str, str]] = []

    def handler_of(name: str) -> Any:
        async def handler(ctx: TaskContext) -> Any:
            runs.append((name, ctx.input["n"]))
            first_started.set()
            await gate.wait()

        return handler

    # Idle with a lingering pull on every lane (they stay open for idle_poll_s).
    busy = TaskWorker(nc, mesh_js, {agent: (cfg, handler_of("busy"))}, concurrency=1, idle_poll_s=30)
    await busy.start()
    other: TaskWorker | None = None
    try:
        async with asyncio.timeout(10):
            while sum(lane.source.outstanding for lane in busy.lanes) < 5:
                await asyncio.sleep(0.02)
        await queue.enqueue(TaskSpec(agent, {"n": "first"}))  # takes the only slot
        await asyncio.wait_for(first_started.wait(), 10)
        await queue.enqueue(TaskSpec(agent, {"n": "second"}, priority=4))  # lands in a still-open pull
        async with asyncio.timeout(10):
            while not any(lane.source.ready for lane in busy.lanes):
                await asyncio.sleep(0.02)
        other = TaskWorker(nc, mesh_js, {agent: (cfg, handler_of("other"))}, idle_poll_s=0.2)
        await other.start()
        # Three ack waits while the buffered task waits for the busy worker's slot.
        until = asyncio.get_running_loop().time() + 3 * cfg.ack_wait_s
        while asyncio.get_running_loop().time() < until:
            await asyncio.sleep(0.1)
        assert runs == [("busy", "first")]  # nothing redelivered to the other worker
        gate.set()
        async with asyncio.timeout(10):
            while await _lane_count(mesh_js, agent):
                await asyncio.sleep(0.05)
    finally:
        gate.set()
        await busy.stop(2)
        if other is not None:
            await other.stop(2)
    assert runs == [("busy", "first"), ("busy", "second")]


# ---- attempts count runs, not deliveries --------------------------------------


async def _enqueue_into_a_drain(leaving: TaskWorker, queue: TaskQueue, agent: str) -> Any:
    """Enqueue a task while ``leaving`` drains: it lands in the lingering pull the
    worker still has open, so the worker holds it without ever starting it."""
    await leaving.start()
    async with asyncio.timeout(10):
        while not leaving.lanes[0].source.outstanding:
            await asyncio.sleep(0.02)
    stopping = asyncio.create_task(leaving.stop(1))
    async with asyncio.timeout(10):  # the dispatcher is gone; the lingering pull is still open
        while not leaving._stopping.is_set():
            await asyncio.sleep(0.01)
    queued = await queue.enqueue(TaskSpec(agent, {}))
    await stopping
    return queued


async def test_a_drain_with_one_attempt_left_hands_tasks_back_without_using_it(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("drain-one")
    cfg = AgentQueueConfig(agent, ack_wait_s=60.0, max_attempts=1, priorities=(2,))
    ran: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.attempt)
        return "ran"

    queued = await _enqueue_into_a_drain(
        TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=5.0), queue, agent
    )
    handed = await get_run(mesh_js, queued.run_id)
    assert handed is not None and handed.returned == 1 and handed.status == RunStatus.QUEUED
    assert ran == []
    staying = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await staying.start()
    try:
        # Handed back with a nak: taken at once, far inside the 60 s ack wait.
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED, timeout=10)
    finally:
        await staying.stop()
    assert ran == [1] and state.result == "ran" and not await dlq.list_dead_letters(mesh_js, name=agent)


async def test_a_handed_back_task_keeps_all_its_attempts_through_retries(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("drain-retry")
    cfg = AgentQueueConfig(agent, max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.05, priorities=(2,))
    attempts: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "second"

    queued = await _enqueue_into_a_drain(
        TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=5.0), queue, agent
    )
    staying = TaskWorker(nc, mesh_js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await staying.start()
    try:
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED, timeout=10)
    finally:
        await staying.stop()
    # Delivery 3 is attempt 2: the hand-back is remembered across the retry's state write.
    assert attempts == [1, 2] and state.result == "second" and state.attempts == 2


async def test_the_mover_does_not_dead_letter_a_task_whose_outcome_is_recorded(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    # A success whose ack was lost on the last delivery the server allows.
    agent = unique("mover-done")
    await ensure_lane(mesh_js, AgentQueueConfig(agent, priorities=(2,)), 2)
    queued = await queue.enqueue(TaskSpec(agent, {}))
    msg = await _take(nc, agent)
    task = decode(msg.data)
    state = await get_run(mesh_js, queued.run_id)
    assert state is not None
    state.status, state.attempts, state.result, state.finished_at = RunStatus.SUCCEEDED, 1, "done", utcnow()
    assert await record_outcome(
        mesh_js, js_send(mesh_js), outcome_message(task, state), agent=agent, run_id=task.id, generation=0
    )
    advisory = json.dumps({"stream_seq": msg.metadata.sequence.stream, "deliveries": 1}).encode()
    assert await move_max_delivered(mesh_js, advisory) is None
    assert not await dlq.list_dead_letters(mesh_js, name=agent)
    assert await _lane_count(mesh_js, agent) == 0  # removed: it is done
    final = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    assert final.result == "done"


async def test_a_last_attempt_that_stalls_then_succeeds_is_recorded_succeeded_and_not_replayed(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("stall-last")
    gate, started = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        runs.append(ctx.attempt)
        started.set()
        await gate.wait()
        return "late but real"

    cfg = AgentQueueConfig(agent, max_attempts=1, priorities=(2,))
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, handler)})
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(agent, {}))
        await asyncio.wait_for(started.wait(), 10)
        record = await get_run(mesh_js, queued.run_id)
        assert record is not None and record.seq is not None
        # The server gave up on it (as if the worker stalled past its last ack wait).
        advisory = json.dumps({"stream_seq": record.seq, "deliveries": 1}).encode()
        assert await move_max_delivered(mesh_js, advisory) == queued.run_id
        await wait_for_run(mesh_js, queued.run_id, RunStatus.FAILED)
        gate.set()
        state = await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    finally:
        gate.set()
        await worker.stop()
    assert state.result == "late but real" and runs == [1]
    (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
    with pytest.raises(dlq.StaleDeadLetter, match="succeeded after it was dead-lettered"):
        await dlq.replay(mesh_js, letter.seq)
    assert runs == [1] and await _lane_count(mesh_js, agent) == 0


# ---- replay --------------------------------------------------------------------


async def test_dead_lettered_batch_tasks_replay(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("batch-replay")
    healthy = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        if not healthy.is_set():
            raise PermanentError("not yet")
        return ctx.input["i"]

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent), handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        queued = await queue.enqueue_batch(
            [TaskSpec(agent, {"i": i}) for i in range(3)], batch_key=unique("b")
        )
        for q in queued:
            await wait_for_run(mesh_js, q.run_id, RunStatus.FAILED)
        healthy.set()
        report = await dlq.replay_all(mesh_js, name=agent)
        assert sorted(report.replayed) == sorted(q.run_id for q in queued) and report.failed == []
        results = [(await wait_for_run(mesh_js, q.run_id, RunStatus.SUCCEEDED)).result for q in queued]
    finally:
        await worker.stop()
    assert results == [0, 1, 2] and await dlq.count(mesh_js, origin="tasks", name=agent) == 0


@pytest.mark.parametrize("own", [ProvisionConfig(max_queue_depth=1)], indirect=True)
async def test_a_replay_that_cannot_republish_keeps_the_dead_letter(own: Own) -> None:
    agent, js = unique("replay-full"), own.js

    async def handler(ctx: TaskContext) -> Any:
        raise PermanentError("dead")

    worker = TaskWorker(own.nc, js, {agent: (AgentQueueConfig(agent, priorities=(2,)), handler)})
    async with TaskQueue(own.nc, js) as queue:
        await worker.start()
        try:
            dead = await queue.enqueue(TaskSpec(agent, {}))
            await wait_for_run(js, dead.run_id, RunStatus.FAILED)
        finally:
            await worker.stop()
        await queue.enqueue(TaskSpec(agent, {}))  # the lane is full now (depth 1)
        with pytest.raises(QueueFull):
            await queue.enqueue(TaskSpec(agent, {}))
    (letter,) = await dlq.list_dead_letters(js, name=agent)
    report = await dlq.replay_all(js, name=agent)
    assert report.replayed == [] and [f["seq"] for f in report.failed] == [letter.seq]
    assert [v.seq for v in await dlq.list_dead_letters(js, name=agent)] == [letter.seq]  # still there
    assert (await get_run(js, dead.run_id)).status == RunStatus.FAILED  # type: ignore[union-attr]


# ---- enqueue: accepted = stored, one run per key --------------------------------


@pytest.mark.parametrize("own", [ONE_SECOND_WINDOW], indirect=True)
async def test_an_idempotent_retry_past_the_duplicate_window_does_not_store_the_task_twice(own: Own) -> None:
    agent, js = unique("idem-late"), own.js
    spec = TaskSpec(agent, {"x": 1}, idempotency_key="invoice-7")
    async with TaskQueue(own.nc, js) as queue:
        # The first caller claims the key, stores the task, and dies before its record.
        from mesh.queue.producer import task_message

        run_id = "first-caller-run"
        assert await queue._claim_key(spec.tenant, "invoice-7", run_id.encode()) is None
        message = task_message(spec, run_id, dedup=True)
        await js.publish(names.task_subject(agent, 2), message.data, headers=parse_headers(message.headers))
        await _past_window()
        again = await queue.enqueue(spec)
    assert again.run_id == run_id and again.duplicate
    assert await _lane_count(js, agent) == 1
    record = await get_run(js, run_id)
    assert record is not None and record.status == RunStatus.QUEUED  # the missing marker, written


@pytest.mark.parametrize("own", [ONE_SECOND_WINDOW], indirect=True)
async def test_a_batch_committed_but_unconfirmed_is_unknown_not_rejected_and_its_retry_stores_it_once(
    own: Own, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, js = unique("batch-late"), own.js
    specs = [TaskSpec(agent, {"i": i}) for i in range(3)]
    async with TaskQueue(own.nc, js) as queue:
        real = queue.pipeline.request

        async def reply_lost(subject: str, data: bytes, headers: Any = None) -> Any:
            sent = await real(subject, data, headers)
            if headers is not None and b"Nats-Batch-Commit" in headers:

                async def lost() -> Any:
                    await sent  # the server committed it; its answer never arrives
                    raise TimeoutError("no reply from NATS in time")

                return asyncio.ensure_future(lost())
            return sent

        monkeypatch.setattr(queue.pipeline, "request", reply_lost)
        with pytest.raises(EnqueueOutcomeUnknown, match="may or may not be stored"):
            await queue.enqueue_batch(specs, batch_key="nightly")
        monkeypatch.setattr(queue.pipeline, "request", real)
        assert await _lane_count(js, agent) == 3  # it was committed after all
        await _past_window()
        retried = await queue.enqueue_batch(specs, batch_key="nightly")
    assert all(r.duplicate for r in retried) and len({r.run_id for r in retried}) == 3
    assert await _lane_count(js, agent) == 3  # not stored again


@pytest.mark.parametrize("own", [ProvisionConfig(max_queue_depth=1)], indirect=True)
async def test_a_refused_task_leaves_no_queued_record(own: Own, monkeypatch: pytest.MonkeyPatch) -> None:
    agent, js = unique("refused"), own.js
    async with TaskQueue(own.nc, js) as queue:
        await queue.enqueue(TaskSpec(agent, {}))
        monkeypatch.setattr("mesh.queue.producer.new_id", lambda: "refused-run")
        with pytest.raises(QueueFull):
            await queue.enqueue(TaskSpec(agent, {}))
    assert await get_run(js, "refused-run") is None  # the record is written only after the task is stored


async def test_the_queued_record_never_overwrites_a_later_state(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("create-only")
    run_id = unique("run")
    now = utcnow()
    await put_run(mesh_js, RunState(run_id=run_id, agent=agent, status=RunStatus.RUNNING, enqueued_at=now))
    record = RunState(run_id=run_id, agent=agent, enqueued_at=now).model_dump_json().encode()
    await queue._create_record(run_id, record)
    state = await get_run(mesh_js, run_id)
    assert state is not None and state.status == RunStatus.RUNNING


async def test_idempotency_keys_are_scoped_per_tenant(mesh_js: JetStreamContext, queue: TaskQueue) -> None:
    agent = unique("tenants")
    acme = await queue.enqueue(TaskSpec(agent, {}, tenant="acme", idempotency_key="k-1"))
    globex = await queue.enqueue(TaskSpec(agent, {}, tenant="globex", idempotency_key="k-1"))
    again = await queue.enqueue(TaskSpec(agent, {}, tenant="acme", idempotency_key="k-1"))
    assert acme.run_id != globex.run_id and not globex.duplicate
    assert again.run_id == acme.run_id and again.duplicate
    assert await _lane_count(mesh_js, agent) == 2


# ---- the reaper ------------------------------------------------------------------


async def test_the_reaper_never_expires_a_run_whose_outcome_is_stored(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("reaper-check")
    await ensure_lane(mesh_js, AgentQueueConfig(agent, priorities=(2,)), 2)
    queued = await queue.enqueue(TaskSpec(agent, {}, ttl_s=1))
    task = decode((await _take(nc, agent)).data)
    state = await get_run(mesh_js, queued.run_id)
    assert state is not None and state.expires_at is not None
    done = state.model_copy(update={"status": RunStatus.SUCCEEDED, "attempts": 1, "finished_at": utcnow()})
    assert await record_outcome(
        mesh_js, js_send(mesh_js), outcome_message(task, done), agent=agent, run_id=task.id, generation=0
    )
    await wait_for_run(mesh_js, queued.run_id, RunStatus.SUCCEEDED)
    await put_run(mesh_js, state)  # a projection that lags: the record still says queued, past its TTL
    async with asyncio.timeout(10):
        while utcnow() <= state.expires_at:
            await asyncio.sleep(0.05)
    assert await expire_overdue(mesh_js, grace_s=0, agent=agent) == []


# ---- the wire contract --------------------------------------------------------


async def test_an_undecodable_task_is_dead_lettered_and_its_run_is_findable_with_every_error(
    nc: Client, mesh_js: JetStreamContext
) -> None:
    agent = unique("foreign")
    ran: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.run_id)

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent, priorities=(2,)), handler)})
    await worker.start()
    try:
        # A task written by hand, three mistakes in it.
        run_id = unique("my-own-run")
        body = {"id": run_id, "message_type": "task", "type": "task.run", "metadata": {"priority": 9},
                "created_at": "yesterday", "payload": {"input": {"x": 1}}}  # fmt: skip
        await mesh_js.publish(names.task_subject(agent, 2), json.dumps(body).encode())
        state = await wait_for_run(mesh_js, run_id, RunStatus.FAILED)
    finally:
        await worker.stop()
    assert ran == []
    error = state.error or ""
    assert "3 error(s)" in error
    assert all(field in error for field in ("message_type", "metadata.priority", "created_at"))
    (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
    assert letter.entry.run_id == run_id and letter.entry.reason.startswith("undecodable")


async def test_a_task_that_is_not_json_but_names_its_run_in_its_header_is_findable(
    nc: Client, mesh_js: JetStreamContext
) -> None:
    agent = unique("foreign-bytes")

    async def handler(ctx: TaskContext) -> Any:
        raise AssertionError("an undecodable task must not run")

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent, priorities=(2,)), handler)})
    await worker.start()
    try:
        run_id = unique("bytes-run")
        await mesh_js.publish(
            names.task_subject(agent, 2), b"\x00not json", headers={"Nats-Msg-Id": f"run-{run_id}"}
        )
        state = await wait_for_run(mesh_js, run_id, RunStatus.FAILED)
    finally:
        await worker.stop()
    assert "undecodable task" in (state.error or "")
    (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
    assert letter.entry.run_id == run_id


async def test_the_mover_names_the_run_of_an_unreadable_task_it_dead_letters(
    mesh_js: JetStreamContext,
) -> None:
    agent = unique("mover-bytes")
    run_id = unique("bytes-run")
    ack = await mesh_js.publish(
        names.task_subject(agent, 2), b"\x00not json", headers={"Nats-Msg-Id": f"run-{run_id}"}
    )
    advisory = json.dumps({"stream_seq": ack.seq, "deliveries": 13}).encode()
    assert await move_max_delivered(mesh_js, advisory) == run_id
    (letter,) = await dlq.list_dead_letters(mesh_js, name=agent)
    assert letter.entry.run_id == run_id and letter.entry.payload == b"\x00not json"
